"""The directory store: the current snapshot, changes applied whole or not at all.

Readers take `store.current` (an immutable `Directory`) and keep it for as long as they need;
a change builds a complete new document, validates it like a file load, writes the YAML file
atomically, then swaps the snapshot. A failed validation or write leaves everything as it was.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from bridge.directory.loader import DirectoryError, build_directory, load_directory, save_directory
from bridge.directory.model import Directory

log = structlog.get_logger("bridge.directory")

Document = dict[str, Any]
Listener = Callable[[Directory, Directory | None], None]


class DirectoryStore:
    def __init__(self, directory: Directory, path: Path | None = None) -> None:
        self._current = directory
        self._path = path
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @classmethod
    def from_file(cls, path: Path) -> DirectoryStore:
        return cls(load_directory(path, version=1), path)

    @property
    def current(self) -> Directory:
        return self._current

    @property
    def path(self) -> Path | None:
        return self._path

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(new, old)` after every accepted change (and once now, with old=None)."""
        self._listeners.append(listener)
        listener(self._current, None)

    def change(self, edit: Callable[[Document], Document | None]) -> Directory:
        """Apply `edit` to a deep copy of the current document; validate, persist, swap.

        `edit` may mutate the copy in place or return a new document. Raises DirectoryError
        (nothing changed) when the result is not a valid directory."""
        with self._lock:
            old = self._current
            document = copy.deepcopy(old.to_document())
            edited = edit(document)
            if edited is not None:
                document = edited
            new = build_directory(document, version=old.version + 1)
            if self._path is not None:
                save_directory(new, self._path)
            self._swap(new, old)
            return new

    def reload(self) -> Directory:
        """Re-read the file. A bad file raises DirectoryError and the current snapshot stays."""
        if self._path is None:
            raise DirectoryError([])
        with self._lock:
            old = self._current
            new = load_directory(self._path, version=old.version + 1)
            self._swap(new, old)
            return new

    def _swap(self, new: Directory, old: Directory) -> None:
        self._current = new
        log.info(
            "directory_changed",
            version=new.version,
            users=len(new.users),
            ring_groups=len(new.ring_groups),
            lines=len(new.lines),
        )
        for listener in self._listeners:
            listener(new, old)
