"""The mixer, checked by ear: the caller plays 440 Hz, the agent 1 kHz, supervisors 2 kHz and
3 kHz, and an FFT of each output says who heard whom in each mode, across live mode switches,
with several supervisors, on the recording taps, and that loud sums clip instead of wrapping."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from bridge.media import g711
from bridge.media.mixer import (
    TAP_LEFT,
    TAP_RIGHT,
    Mixer,
    MixPlan,
    Monitor,
    PlanError,
    plan_for,
)

from .audio import FRAME_BYTES, SILENT, frames, level_at, rms_db, samples, tone, tones_in

CALLER, AGENT, SUP, SUP2 = "caller", "agent", "sup", "sup2"
VOICE = {CALLER: 440, AGENT: 1000, SUP: 2000, SUP2: 3000}
ALL_TONES = tuple(VOICE.values())
SECONDS = 0.5
TICKS = int(SECONDS / 0.02)


def voices(parties: list[str], seconds: float = SECONDS) -> dict[str, list[bytes]]:
    """Each party's tone, cut in 20 ms frames."""
    return {p: list(frames(tone(VOICE[p], seconds))) for p in parties}


def mix_ticks(
    mixer: Mixer,
    inputs: Mapping[str, list[bytes | None]],
    ticks: int = TICKS,
    before_tick: Callable[[int], None] | None = None,
) -> list[dict[str, bytes]]:
    """Mix `ticks` frames: what each output got, tick by tick."""
    result = []
    for i in range(ticks):
        if before_tick is not None:
            before_tick(i)
        out = mixer.mix({p: f[i] for p, f in inputs.items()})
        assert all(len(frame) == FRAME_BYTES for frame in out.values())
        result.append(out)
    return result


def joined(ticks: list[dict[str, bytes]]) -> dict[str, bytes]:
    """Each output's frames over `ticks`, joined into one signal."""
    return {name: b"".join(t[name] for t in ticks) for name in ticks[0]}


def run(
    mixer: Mixer, inputs: Mapping[str, list[bytes | None]], ticks: int = TICKS
) -> dict[str, bytes]:
    return joined(mix_ticks(mixer, inputs, ticks))


def heard_by(out: Mapping[str, bytes]) -> dict[str, set[float]]:
    """Which of the cast's tones each output holds, and a check that the others are absent."""
    result = {}
    for name, pcm in out.items():
        present = tones_in(pcm, ALL_TONES)
        for freq in set(ALL_TONES) - present:
            assert level_at(pcm, freq) < SILENT, f"{name} half-hears {freq} Hz"
        result[name] = present
    return result


def test_a_bridged_call_caller_and_agent_hear_each_other() -> None:
    mixer = Mixer(plan_for(CALLER, AGENT))
    out = run(mixer, voices([CALLER, AGENT]))
    assert heard_by(out) == {CALLER: {1000}, AGENT: {440}}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # listen: the supervisor hears both, nobody hears the supervisor
        (Monitor.LISTEN, {CALLER: {1000}, AGENT: {440}, SUP: {440, 1000}}),
        # whisper: the agent hears caller + supervisor, the caller only the agent
        (Monitor.WHISPER, {CALLER: {1000}, AGENT: {440, 2000}, SUP: {440, 1000}}),
        # barge: everybody hears everybody else
        (Monitor.BARGE, {CALLER: {1000, 2000}, AGENT: {440, 2000}, SUP: {440, 1000}}),
    ],
)
def test_who_hears_whom(mode: Monitor, expected: dict[str, set[int]]) -> None:
    mixer = Mixer(plan_for(CALLER, AGENT, {SUP: mode}))
    out = run(mixer, voices([CALLER, AGENT, SUP]))
    assert heard_by(out) == expected


@pytest.mark.parametrize(
    ("mode", "right"),
    [(None, {1000}), ("listen", {1000}), ("whisper", {1000}), ("barge", {1000, 2000})],
)
def test_the_recording_tap_is_the_caller_left_and_what_the_caller_hears_right(
    mode: str | None, right: set[int]
) -> None:
    supervisors = {SUP: mode} if mode else {}
    mixer = Mixer(plan_for(CALLER, AGENT, supervisors, record=True))
    out = run(mixer, voices([CALLER, AGENT, SUP]))
    heard = heard_by(out)
    assert heard[TAP_LEFT] == {440}
    assert heard[TAP_RIGHT] == right == heard[CALLER]


def test_live_mode_switches_take_effect_at_the_next_frame() -> None:
    modes = [None, Monitor.LISTEN, Monitor.WHISPER, Monitor.BARGE, Monitor.LISTEN, None]
    per = TICKS
    mixer = Mixer(plan_for(CALLER, AGENT))

    def switch(tick: int) -> None:
        if tick % per == 0:
            mode = modes[tick // per]
            mixer.set_plan(plan_for(CALLER, AGENT, {SUP: mode} if mode else {}))

    inputs = voices([CALLER, AGENT, SUP], SECONDS * len(modes))
    ticks = mix_ticks(mixer, inputs, per * len(modes), switch)
    expected = {
        None: {CALLER: {1000}, AGENT: {440}},
        Monitor.LISTEN: {CALLER: {1000}, AGENT: {440}, SUP: {440, 1000}},
        Monitor.WHISPER: {CALLER: {1000}, AGENT: {440, 2000}, SUP: {440, 1000}},
        Monitor.BARGE: {CALLER: {1000, 2000}, AGENT: {440, 2000}, SUP: {440, 1000}},
    }
    for i, mode in enumerate(modes):
        segment = ticks[i * per : (i + 1) * per]
        assert heard_by(joined(segment)) == expected[mode], f"segment {i} ({mode})"


def test_the_switch_is_exact_to_the_frame() -> None:
    mixer = Mixer(plan_for(CALLER, AGENT, {SUP: "listen"}))
    inputs = voices([CALLER, AGENT, SUP])
    before = mixer.mix({p: f[0] for p, f in inputs.items()})
    mixer.set_plan(plan_for(CALLER, AGENT, {SUP: "barge"}))
    after = mixer.mix({p: f[1] for p, f in inputs.items()})
    assert before[CALLER] == inputs[AGENT][0]
    expected = samples(inputs[AGENT][1]) + samples(inputs[SUP][1])
    assert np.array_equal(samples(after[CALLER]), expected)


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (
            {SUP: "listen", SUP2: "listen"},
            {CALLER: {1000}, AGENT: {440}, SUP: {440, 1000}, SUP2: {440, 1000}},
        ),
        (
            # a whisper is for the agent only: the other supervisor does not hear it
            {SUP: "whisper", SUP2: "listen"},
            {CALLER: {1000}, AGENT: {440, 2000}, SUP: {440, 1000}, SUP2: {440, 1000}},
        ),
        (
            # a barging supervisor is in the conversation: the listener hears them too
            {SUP: "listen", SUP2: "barge"},
            {
                CALLER: {1000, 3000},
                AGENT: {440, 3000},
                SUP: {440, 1000, 3000},
                SUP2: {440, 1000},
            },
        ),
        (
            {SUP: "whisper", SUP2: "barge"},
            {
                CALLER: {1000, 3000},
                AGENT: {440, 2000, 3000},
                SUP: {440, 1000, 3000},
                SUP2: {440, 1000},
            },
        ),
        (
            {SUP: "barge", SUP2: "barge"},
            {
                CALLER: {1000, 2000, 3000},
                AGENT: {440, 2000, 3000},
                SUP: {440, 1000, 3000},
                SUP2: {440, 1000, 2000},
            },
        ),
        (
            {SUP: "whisper", SUP2: "whisper"},
            {CALLER: {1000}, AGENT: {440, 2000, 3000}, SUP: {440, 1000}, SUP2: {440, 1000}},
        ),
    ],
)
def test_several_supervisors_each_in_their_own_mode(
    modes: dict[str, str], expected: dict[str, set[int]]
) -> None:
    mixer = Mixer(plan_for(CALLER, AGENT, modes))
    out = run(mixer, voices([CALLER, AGENT, SUP, SUP2]))
    assert heard_by(out) == expected


def test_a_missing_or_absent_input_is_silence() -> None:
    mixer = Mixer(plan_for(CALLER, AGENT, {SUP: "barge"}))
    inputs: dict[str, list[bytes | None]] = dict(voices([CALLER, SUP]))
    # the agent's frames are lost every other tick
    inputs[AGENT] = [f if i % 2 else None for i, f in enumerate(voices([AGENT])[AGENT])]
    ticks = mix_ticks(mixer, inputs)
    assert heard_by(joined(ticks[0::2]))[CALLER] == {2000}
    assert heard_by(joined(ticks[1::2]))[CALLER] == {1000, 2000}
    # a party absent from the tick's frames is silence too
    out = mixer.mix({CALLER: inputs[CALLER][0]})
    assert out[AGENT] == out[SUP] == inputs[CALLER][0]
    assert out[CALLER] == g711.LINEAR_SILENCE
    nobody = Mixer(plan_for(CALLER, AGENT)).mix({})
    assert nobody == {CALLER: g711.LINEAR_SILENCE, AGENT: g711.LINEAR_SILENCE}
    assert rms_db(nobody[CALLER]) < -150


def test_a_frame_of_the_wrong_size_is_fitted_not_fatal() -> None:
    mixer = Mixer(plan_for(CALLER, AGENT, {SUP: "listen"}))
    out = mixer.mix({CALLER: b"\x01\x00" * 100, AGENT: b"\x01\x00" * 200})
    assert len(out[SUP]) == len(out[CALLER]) == len(out[AGENT]) == FRAME_BYTES
    assert samples(out[SUP])[:100].tolist() == [2] * 100
    assert samples(out[SUP])[100:].tolist() == [1] * 60


def test_loud_sums_clip_instead_of_wrapping_around() -> None:
    loud_a = tone(440, SECONDS, amplitude=30000)
    loud_b = tone(440, SECONDS, amplitude=25000)  # in phase: peaks add to 55000
    mixer = Mixer(plan_for(CALLER, AGENT, {SUP: "listen"}))
    out = run(mixer, {CALLER: list(frames(loud_a)), AGENT: list(frames(loud_b))})
    exact = samples(loud_a) + samples(loud_b)
    mixed = samples(out[SUP])
    assert exact.max() > 50000  # the exact sum would wrap in 16 bits
    assert np.array_equal(mixed, np.clip(exact, -32768, 32767))
    assert mixed.max() == 32767 and mixed.min() == -32768
    # clipped, the tone is still the dominant sound, at (nearly) full scale
    assert tones_in(out[SUP], ALL_TONES) == {440}
    assert level_at(out[SUP], 440) > -2


def test_each_distinct_input_set_is_summed_once() -> None:
    # a bridged call with a recording: every output is one party's own frame, no addition
    plain = Mixer(plan_for(CALLER, AGENT, record=True))
    assert plain.additions == 0
    inputs = {CALLER: bytes([1]) * FRAME_BYTES, AGENT: bytes([2]) * FRAME_BYTES}
    out = plain.mix(inputs)
    assert out[CALLER] is inputs[AGENT] and out[TAP_RIGHT] is inputs[AGENT]
    assert out[AGENT] is inputs[CALLER] and out[TAP_LEFT] is inputs[CALLER]
    # two listeners hear the same caller + agent sum
    assert Mixer(plan_for(CALLER, AGENT, {SUP: "listen", SUP2: "listen"})).additions == 1
    # listener hears caller + agent + barger, built on the caller's agent + barger sum
    assert (
        Mixer(plan_for(CALLER, AGENT, {SUP: "listen", SUP2: "barge"}, record=True)).additions == 4
    )
    assert Mixer(plan_for(CALLER, AGENT, {SUP: "barge"}, record=True)).additions == 3


def _quiet(parties: list[str]) -> dict[str, bytes]:
    """Random frames at a level where even ten of them summed cannot clip."""
    rng = np.random.default_rng(7)
    return {p: rng.integers(-3000, 3001, 160).astype("<i2").tobytes() for p in parties}


@pytest.mark.parametrize("count", [3, 5, 10])
def test_mix_minus_gives_the_same_samples_as_plain_sums(count: int) -> None:
    names = [CALLER, AGENT, *(f"s{i}" for i in range(count - 2))]
    plan = plan_for(CALLER, AGENT, {n: "barge" for n in names[2:]}, record=True)
    plain = Mixer(plan, mix_minus_from=1000)
    minus = Mixer(plan, mix_minus_from=2)
    quiet = _quiet(names)
    exact = {n: samples(f) for n, f in quiet.items()}
    out = minus.mix(quiet)
    assert out == plain.mix(quiet)
    for n in names:
        assert np.array_equal(samples(out[n]), sum(exact[m] for m in names if m != n))
    # frames loud enough to clip take the plain sums: still no wrap-around
    loud = {n: os.urandom(FRAME_BYTES) for n in names}
    assert minus.mix(loud) == plain.mix(loud)


def test_mix_minus_outputs_are_heard_by_ear() -> None:
    plan = plan_for(CALLER, AGENT, {SUP: "barge", SUP2: "barge"})
    out = run(Mixer(plan, mix_minus_from=2), voices([CALLER, AGENT, SUP, SUP2]))
    assert heard_by(out) == {
        CALLER: {1000, 2000, 3000},
        AGENT: {440, 2000, 3000},
        SUP: {440, 1000, 3000},
        SUP2: {440, 1000, 2000},
    }


def test_a_prompt_is_an_extra_source() -> None:
    plan = plan_for(CALLER, AGENT).adding("prompt", [CALLER])
    inputs = voices([CALLER, AGENT])
    inputs_with_prompt: dict[str, list[bytes | None]] = {
        **inputs,
        "prompt": list(frames(tone(2000, SECONDS))),
    }
    out = run(Mixer(plan), inputs_with_prompt)
    assert heard_by(out) == {CALLER: {1000, 2000}, AGENT: {440}}
    # before anyone answers: the caller alone with a prompt
    alone = plan_for(CALLER, None).adding("prompt", [CALLER])
    assert alone.hears == {CALLER: frozenset({"prompt"})}


def test_through_g711_both_ways() -> None:
    """Decode each leg's payload, mix, encode: the tones survive with PCMU and PCMA mixed."""
    laws = {CALLER: g711.PCMU, AGENT: g711.PCMA, SUP: g711.PCMU}
    mixer = Mixer(plan_for(CALLER, AGENT, {SUP: "whisper"}))
    sent = {p: [g711.encode(f, laws[p]) for f in fs] for p, fs in voices(list(laws)).items()}
    received: dict[str, list[bytes]] = {p: [] for p in laws}
    for i in range(TICKS):
        out = mixer.mix({p: g711.decode(sent[p][i], laws[p]) for p in laws})
        for p in laws:
            received[p].append(g711.decode(g711.encode(out[p], laws[p]), laws[p]))
    heard = heard_by({p: b"".join(fs) for p, fs in received.items()})
    assert heard == {CALLER: {1000}, AGENT: {440, 2000}, SUP: {440, 1000}}


def test_plans_that_cannot_be() -> None:
    with pytest.raises(PlanError):
        plan_for(CALLER, CALLER)
    with pytest.raises(PlanError):
        plan_for(CALLER, AGENT, {AGENT: "listen"})
    with pytest.raises(PlanError, match="unknown mode"):
        plan_for(CALLER, AGENT, {SUP: "shout"})
    with pytest.raises(PlanError):
        plan_for(TAP_LEFT, AGENT)
    with pytest.raises(PlanError, match="hear itself"):
        MixPlan({CALLER: frozenset({CALLER})})
    assert isinstance(PlanError("x"), ValueError)


def test_plans_are_read_only_and_name_their_inputs() -> None:
    plan = plan_for(CALLER, AGENT, {SUP: "whisper"}, record=True)
    assert plan.inputs == {CALLER, AGENT, SUP}
    assert set(plan.hears) == {CALLER, AGENT, SUP, TAP_LEFT, TAP_RIGHT}
    with pytest.raises(TypeError):
        plan.hears[CALLER] = frozenset()  # type: ignore[index]
    assert plan == plan_for(CALLER, AGENT, {SUP: Monitor.WHISPER}, record=True)
