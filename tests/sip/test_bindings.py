"""Registrar bindings (RFC 3261 §10.3) driven with a fake `now`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.bindings import (
    BindingStore,
    ContactRequest,
    Flow,
    RegisterError,
    RegistrarSettings,
    contact_key,
)

UDP = Flow("udp", "192.0.2.10", 5060)
TCP = Flow("tcp", "192.0.2.11", 40000)
DESK = "sip:102@192.0.2.10:5060"
SOFT = "sip:102@192.0.2.11:40000;transport=tcp"


def store(**kw: int) -> BindingStore:
    return BindingStore(RegistrarSettings(**kw))


def test_register_refresh_and_expire() -> None:
    s = store()
    result = s.register("bob", [ContactRequest(DESK)], 600, "call-1", 1, UDP, now=0)
    assert result.error is None
    assert [b.uri for b in result.added] == [DESK]
    assert result.bindings[0].expires_in(0) == 600
    # A refresh is not a new endpoint.
    result = s.register("bob", [ContactRequest(DESK)], 600, "call-1", 2, UDP, now=300)
    assert result.added == () and result.bindings[0].expires_at == 900
    assert s.expire(899) == []
    gone = s.expire(900)
    assert [b.uri for b in gone] == [DESK] and gone[0].reachable
    assert s.bindings("bob", 900) == () and len(s) == 0


def test_two_contacts_per_user_and_per_contact_expires() -> None:
    s = store()
    s.register("bob", [ContactRequest(DESK, expires=120)], 3600, "a", 1, UDP, now=0)
    result = s.register("bob", [ContactRequest(SOFT)], 300, "b", 1, TCP, now=10)
    assert {b.uri for b in result.bindings} == {DESK, SOFT}
    expiry = {b.uri: b.expires_in(10) for b in result.bindings}
    assert expiry == {DESK: 110, SOFT: 300}
    assert s.next_expiry() == 120


def test_default_min_and_max_expires() -> None:
    s = store(min_expires=60, max_expires=1800, default_expires=900)
    assert (
        s.register("bob", [ContactRequest(DESK)], None, "a", 1, UDP, 0).bindings[0].expires_at
        == 900
    )
    capped = s.register("bob", [ContactRequest(DESK)], 99999, "a", 2, UDP, 0)
    assert capped.bindings[0].expires_at == 1800
    brief = s.register("bob", [ContactRequest(SOFT, expires=30)], 3600, "a", 3, UDP, 0)
    assert brief.error is RegisterError.INTERVAL_TOO_BRIEF and brief.min_expires == 60
    # Nothing applied on an error: the desk phone binding is untouched, no soft phone.
    assert [b.uri for b in s.bindings("bob", 0)] == [DESK]


def test_expires_zero_and_wildcard_unregister() -> None:
    s = store()
    s.register("bob", [ContactRequest(DESK), ContactRequest(SOFT)], 600, "a", 1, UDP, 0)
    one = s.register("bob", [ContactRequest(DESK, expires=0)], None, "a", 2, UDP, 1)
    assert [b.uri for b in one.removed] == [DESK]
    assert [b.uri for b in one.bindings] == [SOFT]
    bad = s.register("bob", "*", 600, "a", 3, UDP, 2)
    assert bad.error is RegisterError.BAD_WILDCARD
    everything = s.register("bob", "*", 0, "z", 1, UDP, 2)
    assert everything.error is None and [b.uri for b in everything.removed] == [SOFT]
    assert len(s) == 0


def test_query_returns_bindings_without_change() -> None:
    s = store()
    s.register("bob", [ContactRequest(DESK)], 600, "a", 1, UDP, 0)
    query = s.register("bob", [], None, "q", 1, UDP, 100)
    assert [b.uri for b in query.bindings] == [DESK]
    assert query.added == () and query.removed == ()
    assert query.bindings[0].expires_in(100) == 500


def test_same_call_id_needs_a_higher_cseq() -> None:
    s = store()
    s.register("bob", [ContactRequest(DESK)], 600, "a", 5, UDP, 0)
    stale = s.register("bob", [ContactRequest(DESK, expires=0)], None, "a", 5, UDP, 1)
    assert stale.error is RegisterError.OUT_OF_ORDER
    assert len(s) == 1
    # Another Call-ID (the phone rebooted) may update regardless of CSeq.
    assert s.register("bob", [ContactRequest(DESK)], 600, "b", 1, UDP, 2).error is None


def test_dead_flow_makes_bindings_unreachable_until_reregistered() -> None:
    s = store()
    s.register("bob", [ContactRequest(DESK)], 600, "a", 1, UDP, 0)
    s.register("erin", [ContactRequest("sip:105@192.0.2.10:5060")], 600, "c", 1, UDP, 0)
    changed = s.set_flow_reachable(UDP, False)
    assert {b.user_id for b in changed} == {"bob", "erin"}
    assert s.reachable_bindings("bob", 1) == () and len(s.bindings("bob", 1)) == 1
    assert s.set_flow_reachable(UDP, False) == []  # no change, nothing reported twice
    again = s.register("bob", [ContactRequest(DESK)], 600, "a", 2, UDP, 5)
    assert [b.uri for b in again.added] == [DESK]  # reachable again: up once more
    assert s.reachable_bindings("bob", 5)


def test_contact_comparison_ignores_scheme_and_host_case() -> None:
    assert contact_key("SIP:102@Phone.Example.COM:5060") == contact_key(
        "sip:102@phone.example.com:5060"
    )
    assert contact_key("sip:Bob@h") != contact_key("sip:bob@h")  # the user part is case-sensitive


def test_remove_user() -> None:
    s = store()
    s.register("bob", [ContactRequest(DESK), ContactRequest(SOFT)], 600, "a", 1, UDP, 0)
    assert {b.uri for b in s.remove_user("bob")} == {DESK, SOFT}
    assert len(s) == 0 and s.remove_user("bob") == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["bob", "erin"]),
            st.sampled_from([DESK, SOFT, "sip:x@192.0.2.9"]),
            st.one_of(st.none(), st.integers(0, 5000)),
            st.integers(0, 100),
            st.sampled_from(["register", "expire", "dead", "alive"]),
        ),
        max_size=40,
    )
)
def test_reachable_endpoint_count_matches_the_store(steps: list[tuple]) -> None:
    """Following the documented up/down rule keeps a presence-style counter equal to the
    number of stored reachable bindings, whatever happens."""
    s = store(min_expires=0)
    counts: dict[str, int] = {}
    now = 0.0
    for cseq, (user, uri, expires, advance, action) in enumerate(steps, start=1):
        now += advance
        if action == "register":
            result = s.register(
                user, [ContactRequest(uri, expires=expires)], None, "cid", cseq, UDP, now
            )
            for b in result.added:
                counts[b.user_id] = counts.get(b.user_id, 0) + 1
            for b in result.removed:
                if b.reachable:
                    counts[b.user_id] -= 1
        elif action == "expire":
            for b in s.expire(now):
                if b.reachable:
                    counts[b.user_id] -= 1
        else:
            for b in s.set_flow_reachable(UDP, action == "alive"):
                counts[b.user_id] = counts.get(b.user_id, 0) + (1 if b.reachable else -1)
        for name in ("bob", "erin"):
            stored = sum(1 for b in s.bindings(name, -1) if b.reachable)
            assert counts.get(name, 0) == stored


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["register", "unregister", "wildcard", "expire", "remove"]),
        st.sampled_from(["ann", "bob"]),
        st.sampled_from([DESK, SOFT]),
        st.integers(min_value=0, max_value=2000),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(_OPS)
def test_binding_count_follows_every_change(ops: list[tuple[str, str, str, int]]) -> None:
    # len() is a running count (the gauge reads it on every REGISTER): it must always equal
    # the bindings actually stored, whatever sequence of changes ran.
    s = store()
    now = 0
    for cseq, (op, user, uri, step) in enumerate(ops, start=1):
        now += step
        if op == "register":
            s.register(user, [ContactRequest(uri)], 600, f"c-{user}", cseq, UDP, now)
        elif op == "unregister":
            s.register(user, [ContactRequest(uri)], 0, f"c-{user}", cseq, UDP, now)
        elif op == "wildcard":
            s.register(user, "*", 0, f"c-{user}", cseq, UDP, now)
        elif op == "expire":
            s.expire(now)
        else:
            s.remove_user(user)
        stored = sum(len(u.by_uri) for u in s._users.values())
        assert len(s) == stored
