"""The mix matrix (who hears whom) and the 20 ms frame mixer of a call's clocked media path.

A relayed call with no control active never comes here (DESIGN.md, "Media": the blind relay).
While a monitor, a recording or a prompt is active, the engine decodes each input once a tick
(after the jitter buffer), calls `Mixer.mix`, and encodes each output for its leg.

Who hears whom (`plan_for`), with one caller, the agent (the answered leg) and any number of
supervisors, each in their own mode:

- the caller hears the agent and every barging supervisor;
- the agent hears the caller, every whispering and every barging supervisor;
- every supervisor, whatever their mode, hears the conversation: the caller, the agent and every
  *other* barging supervisor. So `listen` hears caller + agent and is heard by nobody;
  `whisper` hears the same and is heard by the agent only; `barge` is heard by everybody.
- A whispering supervisor is heard by the agent alone: not by the caller, not by other
  supervisors (a whisper is private coaching), not in the recording. A barging supervisor is
  part of the conversation, so a listening supervisor hears them too (otherwise the listener
  would hear the agent answer someone they cannot hear).
- Recording tap (`record=True`): `TAP_LEFT` is the caller, `TAP_RIGHT` the other side *as the
  caller hears it*: the agent plus barging supervisors. Whispers are not recorded: the recording
  is the conversation the customer took part in, and that is what a dispute is about.

Switching a supervisor's mode is a new plan (`Mixer.set_plan`), effective from the next frame:
no leg is renegotiated.

How the mix stays cheap (measured here: `audioop.add` of two 20 ms frames ~0.85 µs, the
negation for a subtraction ~1.1 µs, a peak `audioop.max` ~0.4 µs): `set_plan` compiles the plan
into a straight-line list of saturating adds, once, and `mix` only runs that list.

- An output that hears one input gets that input's frame itself; one that hears nobody gets the
  shared silence frame. A bridged call with a recording costs no addition at all.
- Each distinct input set is summed once, however many outputs hear it (two listening
  supervisors, or the caller and the recording's right channel, share one sum), and a set is
  built on the largest set already summed inside it (a listener hearing caller + agent + a
  barger reuses the caller's agent + barger sum).
- Mix-minus: when everybody hears everybody else (`MIX_MINUS_FROM` parties or more),
  the total is summed once and each output is the total minus its own input, instead of each
  output summing the others. With saturating 16-bit adds the subtraction is exact only if the
  total never clipped, so it is taken only on frames whose input peaks sum to at most 32767
  (ordinary speech levels); other frames run the plain per-output sums. Both give the same
  samples whenever the mix does not clip. Below `MIX_MINUS_FROM` inputs the shared plain sums
  are the cheaper (3 barging parties: 3 adds, against 2 adds + 3 subtractions + 3 peaks); a
  call with a caller, an agent and one supervisor never takes the mix-minus path.

Sums saturate (`audioop.add` clips at -32768/32767) rather than wrap around: two loud voices
distort instead of turning into full-scale noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from bridge.media.g711 import FRAME_BYTES, LINEAR_SILENCE, audioop

__all__ = [
    "MIX_MINUS_FROM",
    "TAP_LEFT",
    "TAP_RIGHT",
    "MixPlan",
    "Mixer",
    "Monitor",
    "PlanError",
    "plan_for",
]

TAP_LEFT: Final = "recording:left"
"""Output name of the recording's left channel (the caller)."""
TAP_RIGHT: Final = "recording:right"
"""Output name of the recording's right channel (the other side, as the caller hears it)."""

MIX_MINUS_FROM: Final = 9
"""Inputs from which total-minus-own beats the shared per-set sums. Measured here with
speech-level frames: 3 barging parties mix in ~2.3 µs with plain sums (6 µs with mix-minus),
8 in ~13.5 µs either way, 9 in 17.3 µs plain against 15.8 µs mix-minus, 10 in 20.7 against
17.5. The shared sums make plain mixing cheaper than the textbook count (N * (N - 2) adds)."""

_MAX_SAMPLE: Final = 32767


class Monitor(StrEnum):
    """A supervisor's mode on a call (the `mode` of `POST /api/v1/calls/{id}/monitor`)."""

    LISTEN = "listen"
    WHISPER = "whisper"
    BARGE = "barge"


class PlanError(ValueError):
    """A mix plan that cannot be: a party named twice, a party hearing itself, an unknown mode."""


@dataclass(frozen=True, slots=True)
class MixPlan:
    """Which inputs each output hears: `hears[output] = {input, ...}`.

    Outputs and inputs are party ids (plus the recording taps and any extra source such as a
    prompt, see `adding`). Nobody hears their own input (no echo). Build the standard plans
    with `plan_for`; the mapping is read-only.
    """

    hears: Mapping[str, frozenset[str]]
    inputs: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        hears = {out: frozenset(ins) for out, ins in self.hears.items()}
        for out, ins in hears.items():
            if out in ins:
                raise PlanError(f"{out!r} would hear itself")
        object.__setattr__(self, "hears", MappingProxyType(hears))
        object.__setattr__(self, "inputs", frozenset().union(*hears.values()))

    def adding(self, source: str, listeners: Iterable[str]) -> MixPlan:
        """This plan with one more input, `source` (a prompt, a beep), heard by `listeners`.

        A listener that is not an output yet becomes one.
        """
        hears = dict(self.hears)
        for listener in listeners:
            hears[listener] = hears.get(listener, frozenset()) | {source}
        return MixPlan(hears)


def plan_for(
    caller: str,
    agent: str | None,
    supervisors: Mapping[str, Monitor | str] | None = None,
    *,
    record: bool = False,
) -> MixPlan:
    """The mix of a call: caller, agent (None before anyone answered), supervisors by mode.

    No supervisors is the plain bridged call (caller <-> agent). The rules are the module's
    docstring's; `record` adds the recording taps `TAP_LEFT` / `TAP_RIGHT`.
    """
    modes: dict[str, Monitor] = {}
    for sid, mode in (supervisors or {}).items():
        try:
            modes[sid] = Monitor(mode)
        except ValueError:
            raise PlanError(f"supervisor {sid!r}: unknown mode {mode!r}") from None
    parties = [caller, *([agent] if agent is not None else []), *modes]
    if len(set(parties)) != len(parties):
        raise PlanError(f"a party is named twice in {parties}")
    if {TAP_LEFT, TAP_RIGHT} & set(parties):
        raise PlanError(f"{TAP_LEFT!r} and {TAP_RIGHT!r} name the recording taps")

    barging = {sid for sid, mode in modes.items() if mode is Monitor.BARGE}
    whispering = {sid for sid, mode in modes.items() if mode is Monitor.WHISPER}
    agent_side = ({agent} if agent is not None else set()) | barging
    hears: dict[str, set[str]] = {caller: set(agent_side)}
    if agent is not None:
        hears[agent] = {caller} | barging | whispering
    for sid in modes:
        hears[sid] = ({caller} | agent_side) - {sid}
    if record:
        hears[TAP_LEFT] = {caller}
        hears[TAP_RIGHT] = set(agent_side)
    return MixPlan({out: frozenset(ins) for out, ins in hears.items()})


# One step of a compiled plan: (subtract, destination slot, slot a, slot b) meaning
# slots[d] = a + b, or a - b when `subtract`, saturating.
_Op = tuple[bool, int, int, int]


@dataclass(frozen=True, slots=True)
class _Program:
    ops: tuple[_Op, ...]
    slots: int
    outputs: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class _Programs:
    direct: _Program
    mix_minus: _Program | None


def _sum_sets(
    targets: Iterable[frozenset[str]], known: dict[frozenset[str], int], next_slot: int
) -> tuple[list[_Op], int]:
    """Adds that sum each target set, each built on the largest set already summed within it.

    `known` maps summed sets to their slot and is extended with every set summed on the way.
    """
    ops: list[_Op] = []
    for target in sorted(targets, key=lambda s: (len(s), sorted(s))):
        if target in known:
            continue
        base = max((s for s in known if s <= target), key=len)
        slot = known[base]
        for name in sorted(target - base):
            ops.append((False, next_slot, slot, known[frozenset((name,))]))
            base = base | {name}
            slot = known[base] = next_slot
            next_slot += 1
    return ops, next_slot


def _compile(plan: MixPlan, inputs: tuple[str, ...], mix_minus_from: int) -> _Programs:
    # slot 0 is silence, slots 1..n the inputs in `inputs` order, then the sums
    singles: dict[frozenset[str], int] = {frozenset(): 0}
    singles.update({frozenset((name,)): i for i, name in enumerate(inputs, 1)})
    wanted = set(plan.hears.values())

    known = dict(singles)
    ops, slots = _sum_sets(wanted, known, len(inputs) + 1)
    direct = _Program(tuple(ops), slots, tuple((o, known[s]) for o, s in plan.hears.items()))

    everyone = frozenset(inputs)
    minus = [s for s in wanted if len(s) == len(everyone) - 1]
    if len(everyone) < mix_minus_from or len(minus) < 2:
        return _Programs(direct, None)
    known = dict(singles)
    ops, slots = _sum_sets([everyone], known, len(inputs) + 1)
    for others in sorted(minus, key=sorted):
        if others in known:  # already summed on the way to the total
            continue
        (own,) = everyone - others
        ops.append((True, slots, known[everyone], known[frozenset((own,))]))
        known[others] = slots
        slots += 1
    more, slots = _sum_sets(wanted - set(minus), known, slots)
    fast = _Program(tuple(ops + more), slots, tuple((o, known[s]) for o, s in plan.hears.items()))
    return _Programs(direct, fast)


def _fit(frame: bytes | None) -> bytes:
    """A missing input is silence; a frame of the wrong size is padded or cut to 20 ms (other
    packet times are to be re-framed before the mixer; this only keeps one odd packet from
    stopping the mix)."""
    if frame is None:
        return LINEAR_SILENCE
    return frame[:FRAME_BYTES].ljust(FRAME_BYTES, b"\x00")


_add = audioop.add
_mul = audioop.mul
_peak = audioop.max


class Mixer:
    """Mixes one 20 ms tick of a call: linear frames in, one linear frame per output out.

    Sans-I/O: the engine's clock calls `mix` every 20 ms with what each jitter buffer gave.
    """

    __slots__ = ("_inputs", "_plan", "_programs", "mix_minus_from")

    def __init__(self, plan: MixPlan, *, mix_minus_from: int = MIX_MINUS_FROM) -> None:
        self.mix_minus_from = mix_minus_from
        self.set_plan(plan)

    @property
    def plan(self) -> MixPlan:
        return self._plan

    @property
    def additions(self) -> int:
        """Saturating adds a frame costs with the plain per-set sums (what the plan costs)."""
        return len(self._programs.direct.ops)

    def set_plan(self, plan: MixPlan) -> None:
        """Use `plan` from the next `mix` on (a mode switch, a supervisor joining or leaving)."""
        self._inputs = tuple(sorted(plan.inputs))
        self._programs = _compile(plan, self._inputs, self.mix_minus_from)
        self._plan = plan

    def mix(self, frames: Mapping[str, bytes | None]) -> dict[str, bytes]:
        """Each output of the plan -> the saturating sum of the 20 ms frames it hears.

        `frames` maps party ids to 320-byte 16-bit linear frames; a party that is absent or
        None (lost packet, nothing received yet) is silence. Inputs the plan does not name
        are ignored. Outputs may be the very input frame (an output hearing one party) or the
        shared silence frame: treat them as read-only.
        """
        slots: list[bytes] = [LINEAR_SILENCE]
        for name in self._inputs:
            frame = frames.get(name)
            slots.append(frame if frame is not None and len(frame) == FRAME_BYTES else _fit(frame))
        program = self._programs.direct
        fast = self._programs.mix_minus
        if fast is not None and sum(_peak(f, 2) for f in slots) <= _MAX_SAMPLE:
            program = fast
        slots.extend([LINEAR_SILENCE] * (program.slots - len(slots)))
        for subtract, dest, a, b in program.ops:
            slots[dest] = (
                _add(slots[a], _mul(slots[b], 2, -1), 2)
                if subtract
                else _add(slots[a], slots[b], 2)
            )
        return {name: slots[slot] for name, slot in program.outputs}
