"""SIP state that survives a restart: the registrar's bindings, in SQLite next to the event
outbox (`[sip] state_path`; README, "Restarts").

- **Written behind, never on the call path**: the SIP service looks at the binding store's
  `version` once a second; when it moved, a snapshot of the bindings is written in one
  transaction, in a thread. A REGISTER is answered before its binding is on disk; at worst
  a `kill -9` loses the last second of changes (a phone registered in it registers again
  at its next refresh, as without this).
- **Read at start**, before the listener opens: bindings not expired are restored with
  their flows, and their users are reachable again without any phone registering. Times
  are stored as wall-clock seconds (the registrar keeps monotonic ones) and converted back.
- **UDP only**: a TCP binding's connection died with the process (the phone opens a new one
  when it registers again), so TCP bindings are not restored.
- **Bans** for failed digests too (`sip.ban_seconds`): a source banned before the restart is
  still banned after it, until its time is up.
- **What needs no saving**: nonces are MAC-signed with a key derived from settings, so a
  challenge issued before the restart is still answered after it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import structlog

from bridge.sip.bindings import Binding, Flow
from bridge.text import valid_utf8

log = structlog.get_logger("bridge.sip")

SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (source TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    user_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    expires_at REAL NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    transport TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    q REAL,
    reachable INTEGER NOT NULL
);
"""


class BindingJournal:
    """See the module doc. `load` and `save` block (SQLite): call them in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_version: object = -1
        self.problem: str | None = None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        return db

    def load(
        self, wall_now: float, mono_now: float
    ) -> tuple[list[Binding], list[tuple[str, float]]]:
        """The UDP bindings not expired and the bans in force, their times moved onto the
        monotonic clock."""
        try:
            db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self.problem = str(exc)
            log.error("sip_state_unreadable", path=str(self.path), reason=str(exc))
            return [], []
        try:
            rows = db.execute(
                "SELECT user_id, uri, expires_at, call_id, cseq, transport, host, port, q,"
                " reachable FROM bindings WHERE expires_at > ? AND transport = 'udp'",
                (wall_now,),
            ).fetchall()
            bans = db.execute(
                "SELECT source, until FROM bans WHERE until > ?", (wall_now,)
            ).fetchall()
        except sqlite3.Error as exc:
            log.error("sip_state_unreadable", path=str(self.path), reason=str(exc))
            return [], []
        finally:
            db.close()
        kept = [
            Binding(
                user_id=row[0],
                uri=row[1],
                expires_at=row[2] - wall_now + mono_now,
                call_id=row[3],
                cseq=int(row[4]),
                flow=Flow(row[5], row[6], int(row[7])),
                q=row[8],
                reachable=bool(row[9]),
            )
            for row in rows
        ]
        return kept, [(source, until - wall_now + mono_now) for source, until in bans]

    def save(
        self,
        bindings: list[Binding],
        bans: list[tuple[str, float]],
        version: object,
        wall_now: float,
        mono_now: float,
    ) -> None:
        """One transaction: the bindings and bans as they stand (times as wall-clock seconds)."""
        rows = [
            (  # (a Call-ID or contact with bytes that are not UTF-8: SQLite takes only UTF-8)
                b.user_id,
                valid_utf8(b.uri),
                b.expires_at - mono_now + wall_now,
                valid_utf8(b.call_id),
                b.cseq,
                b.flow.transport,
                b.flow.host,
                b.flow.port,
                b.q,
                int(b.reachable),
            )
            for b in bindings
        ]
        try:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM bindings")
                db.executemany("INSERT INTO bindings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.execute("DELETE FROM bans")
                db.executemany(
                    "INSERT INTO bans VALUES (?, ?)",
                    [(source, until - mono_now + wall_now) for source, until in bans],
                )
                db.execute("COMMIT")
            finally:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
        except (sqlite3.Error, OSError) as exc:
            if self.problem is None:
                log.error("sip_state_not_written", path=str(self.path), reason=str(exc))
            self.problem = str(exc)
            return
        if self.problem is not None:
            log.info("sip_state_written_again", path=str(self.path))
        self.problem = None
        self.saved_version = version
