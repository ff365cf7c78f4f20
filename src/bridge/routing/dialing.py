"""Where desk phones may call (toll-fraud rules; docs/sip.md, "Dial rules"), pure: the dialled
digits, the directory's `dialing` plan and the user in, a decision out.

- **To E.164**: `+` kept; the international prefix (`011`, `00`) becomes `+`; a national
  number (with or without the national prefix) gets the country code. Emergency numbers are
  left as dialled.
- **Classes**: emergency (always allowed), premium (the plan's E.164 prefixes), national (the
  plan's country code), international (anything else). Internal calls (extensions) are
  decided before numbers are.
- **Who**: the user's own `dial` list, else their role's (`dialing.allow`), else internal,
  emergency and national: international and premium are blocked unless allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.directory.model import DialClass, DialPlan, User


@dataclass(frozen=True, slots=True)
class Dialled:
    number: str  # E.164 (or the emergency number as dialled)
    kind: DialClass


@dataclass(frozen=True, slots=True)
class DialDecision:
    dialled: Dialled
    allowed: bool
    reason: str | None = None  # why not, in words for the 403's reason phrase

    @property
    def kind_is_emergency(self) -> bool:
        return self.dialled.kind is DialClass.EMERGENCY


def classify(digits: str, plan: DialPlan) -> Dialled:
    """`digits` as dialled (digits, an optional leading +)."""
    raw = "".join(ch for ch in digits if "0" <= ch <= "9" or ch == "+")
    if raw in plan.emergency:
        return Dialled(raw, DialClass.EMERGENCY)
    if raw.startswith("+"):
        number = "+" + raw[1:].replace("+", "")
    elif plan.international_prefix and raw.startswith(plan.international_prefix):
        number = "+" + raw[len(plan.international_prefix) :]
    else:
        national = raw
        if plan.national_prefix and national.startswith(plan.national_prefix):
            national = national[len(plan.national_prefix) :]
        number = f"+{plan.country_code}{national}"
    if any(number.startswith(prefix) for prefix in plan.premium):
        return Dialled(number, DialClass.PREMIUM)
    if number.startswith("+" + plan.country_code):
        return Dialled(number, DialClass.NATIONAL)
    return Dialled(number, DialClass.INTERNATIONAL)


def decide(user: User, digits: str, plan: DialPlan, calls_out: int) -> DialDecision:
    """May `user` call `digits` now, with `calls_out` calls out already live?"""
    dialled = classify(digits, plan)
    if dialled.kind is DialClass.EMERGENCY:
        return DialDecision(dialled, True)
    if dialled.kind not in plan.allowed(user):
        return DialDecision(dialled, False, f"{dialled.kind.value} calls are not allowed")
    limit = plan.max_outbound_per_user
    if limit and calls_out >= limit:
        return DialDecision(dialled, False, f"at most {limit} calls out at once")
    return DialDecision(dialled, True)
