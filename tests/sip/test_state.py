"""Registrations kept across a restart (bridge.sip.state): what is written, what is read back
(not expired, UDP only, times moved from the wall clock onto the monotonic one), and a state
file that cannot be written or read is logged without stopping anything."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from bridge.sip.ban import FailureTracker
from bridge.sip.bindings import Binding, BindingStore, Flow
from bridge.sip.state import BindingJournal


def binding(user: str, uri: str, expires_at: float, transport: str = "udp") -> Binding:
    return Binding(user, uri, expires_at, f"cid-{user}", 3, Flow(transport, "192.0.2.7", 5062))


def test_written_and_read_back_on_another_clock(tmp_path: Path) -> None:
    journal = BindingJournal(tmp_path / "var" / "sip-state.sqlite")
    kept = [
        binding("ana", "sip:201@192.0.2.7:5062", 1000.0 + 300),  # 300 s left
        binding("bob", "sip:202@192.0.2.8:5062", 1000.0 + 5),  # 5 s left
        binding("cy", "sip:203@192.0.2.9:5062", 1000.0 + 300, transport="tcp"),
    ]
    bans = [("198.51.100.7", 1000.0 + 600), ("198.51.100.8", 1000.0 + 5)]
    journal.save(kept, bans, 7, wall_now=1_700_000_000.0, mono_now=1000.0)
    assert journal.saved_version == 7
    # 10 s later, after a restart: the monotonic clock started again from 50.
    back, banned = journal.load(wall_now=1_700_000_010.0, mono_now=50.0)
    assert [(s, round(u, 3)) for s, u in banned] == [("198.51.100.7", 640.0)]  # 590 s left
    assert [(b.user_id, b.uri, round(b.expires_at, 3)) for b in back] == [
        ("ana", "sip:201@192.0.2.7:5062", 340.0)  # 290 s left; bob expired; cy was TCP
    ]
    assert back[0].flow == Flow("udp", "192.0.2.7", 5062) and back[0].cseq == 3
    store = BindingStore()
    assert store.restore(back, now=50.0) == back and len(store) == 1
    assert store.bindings("ana", 50.0) == tuple(back)
    version = store.version
    assert store.restore(back, now=50.0) == [] and store.version == version  # kept already
    tracker = FailureTracker(max_failures=3, window_seconds=60, ban_seconds=600)
    tracker.restore_bans(banned, now=50.0)
    assert tracker.is_banned("198.51.100.7", 600.0) and not tracker.is_banned("198.51.100.7", 641.0)


def test_a_state_file_that_cannot_be_written_is_logged_once(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    journal = BindingJournal(blocker / "sip-state.sqlite")
    with capture_logs() as logs:
        journal.save([binding("ana", "sip:201@h", 10.0)], [], 1, 0.0, 0.0)
        journal.save([binding("ana", "sip:201@h", 10.0)], [], 2, 0.0, 0.0)
        assert journal.load(0.0, 0.0) == ([], [])
    assert [e["event"] for e in logs].count("sip_state_not_written") == 1
    assert "sip_state_unreadable" in [e["event"] for e in logs]
    assert journal.saved_version == -1 and journal.problem


def test_a_binding_with_text_that_is_not_utf8_is_written_with_replacement_characters(
    tmp_path: Path,
) -> None:
    """A REGISTER's Call-ID (or contact) with bytes that are not UTF-8 is kept by the parser
    as lone surrogates, which SQLite refuses: the state is written with U+FFFD in their place,
    and the other bindings with it (the save used to raise, and its loop to end for good)."""
    journal = BindingJournal(tmp_path / "sip-state.sqlite")
    odd = Binding(
        "ana",
        "sip:201@192.0.2.7:5062",
        1300.0,
        b"cid-\xff".decode("utf-8", "surrogateescape"),
        3,
        Flow("udp", "192.0.2.7", 5062),
    )
    journal.save([odd, binding("bob", "sip:202@h", 1300.0)], [], 1, 1_700_000_000.0, 1000.0)
    assert journal.saved_version == 1 and journal.problem is None
    back, _ = journal.load(wall_now=1_700_000_000.0, mono_now=1000.0)
    assert sorted((b.user_id, b.call_id) for b in back) == [
        ("ana", "cid-\ufffd"),
        ("bob", "cid-bob"),
    ]
