"""Reading and writing the directory YAML file.

Every failure becomes a list of `Problem`s ("users[3].extension: duplicate ...") so the CLI,
the daemon's start-up, SIGHUP reloads and the API all report the same words.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridge.directory.model import Directory, Problem


class DirectoryError(Exception):
    """A directory that cannot be used; `problems` says where and why."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def location(loc: Iterable[Any]) -> str:
    """('users', 3, 'extension') -> 'users[3].extension'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems_from_validation(exc: ValidationError, prefix: str = "") -> list[Problem]:
    found = []
    for error in exc.errors(include_url=False):
        # Field validators raising ValueError read "Value error, <message>": keep the message.
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown field"
        path = location(error["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
        found.append(Problem(path=path or prefix or "directory", reason=reason))
    return found


def build_directory(document: Mapping[str, Any], version: int = 0) -> Directory:
    """Validate a YAML-shaped mapping completely, or raise DirectoryError with every problem."""
    try:
        directory = Directory.model_validate({**document, "version": version})
    except ValidationError as exc:
        raise DirectoryError(problems_from_validation(exc)) from None
    problems = directory.problems()
    if problems:
        raise DirectoryError(problems)
    return directory


def load_directory(path: Path, version: int = 1) -> Directory:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DirectoryError(
            [Problem(path="directory.path", reason=f"file not found: {path}")]
        ) from None
    except OSError as exc:
        raise DirectoryError(
            [Problem(path="directory.path", reason=f"cannot read {path}: {exc.strerror}")]
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DirectoryError(
            [Problem(path="directory", reason=f"not valid YAML{where}: {problem}")]
        ) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise DirectoryError([Problem(path="directory", reason="the file must hold a mapping")])
    return build_directory(document, version=version)


def save_directory(directory: Directory, path: Path) -> None:
    """Write atomically: a temp file in the same folder, fsync, rename, fsync the folder.

    A crash at any point leaves either the old file or the new one, never half of each."""
    text = "# Managed by bridge: API changes are written here. Comments are not kept.\n"
    text += yaml.safe_dump(directory.to_document(), sort_keys=False, allow_unicode=True)
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp_name, path.stat().st_mode & 0o777)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
