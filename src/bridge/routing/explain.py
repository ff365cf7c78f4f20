"""Test Routing for people: a plan (as `RoutePlan.to_dict()` or the API's JSON) as a table.

It renders the dict form so that offline plans and the daemon's live answer print alike."""

from __future__ import annotations

from typing import Any


def _fallback_lines(step: dict[str, Any], indent: str) -> list[str]:
    target = step.get("number") or step.get("ring_group") or ""
    lines = [f"{indent}then: {step['action']}{' ' + target if target else ''} ({step['why']})"]
    if step.get("prompt"):
        lines.append(f"{indent}  prompt: {step['prompt']}")
    if step.get("plan"):
        lines += render_dict(step["plan"], indent + "    ", header=False)
    return lines


def _verdict(member: dict[str, Any]) -> str:
    if member["can_receive_calls"]:
        return f"yes (via {member['via']})"
    return f"no - {member['reason']} ({member['reason_text']})"


def render_dict(plan: dict[str, Any], indent: str = "", *, header: bool = True) -> list[str]:
    out: list[str] = []
    if header:
        if plan.get("line"):
            out.append(f"{indent}Line {plan['line']} ({plan['line_name']}) at {plan['at']}")
        else:
            out.append(f"{indent}Call {plan['call_id']} at {plan['at']}")
        if plan["outcome"] == "no_route":
            out.append(f"{indent}no such line or user: the call is refused")
            return out
        out.append(f"{indent}open: {'yes' if plan['open'] else 'no (outside business hours)'}")
    target = plan.get("target") or {}
    if target.get("kind"):
        out.append(f"{indent}routes to {target['kind']} {target['id']} ({target['name']})")
    for layer in plan["layers"]:
        how = (
            "all at once"
            if layer["simultaneous"]
            else f"one at a time, {layer['ring_each_seconds']}s each"
        )
        out.append(
            f"{indent}Layer {layer['index'] + 1}: {layer['strategy']}, {how}, "
            f"timeout {layer['timeout_seconds']}s"
        )
        width = max([len("member"), *(len(m["name"]) for m in layer["members"])])
        out.append(f"{indent}  {'member':<{width}}  {'answers by':<15}  can receive calls?")
        for member in layer["members"]:
            name, answer_by = member["name"], member["answer_by"]
            out.append(f"{indent}  {name:<{width}}  {answer_by:<15}  {_verdict(member)}")
        order = ", ".join(t["user_id"] for t in layer["ring"]) or "nobody"
        out.append(f"{indent}  rings: {order}")
    if plan.get("fallback"):
        out += _fallback_lines(plan["fallback"], indent)
    return out
