"""`confirm_answer` in the directory: on users and lines, off by default, validated, kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bridge.directory.loader import DirectoryError, build_directory, load_directory, save_directory
from tests.carrier.conftest import DIRECTORY


def test_off_by_default() -> None:
    directory = build_directory(
        {
            "users": [{"id": "u", "name": "U", "answer_by": "phone_number"}],
            "lines": [{"number": "+15550100", "name": "L", "route_to": {"user": "u"}}],
        }
    )
    assert directory.users[0].confirm_answer is False
    assert directory.lines[0].confirm_answer is False
    # Defaults are left out of the saved file.
    document = directory.to_document()
    assert "confirm_answer" not in document["users"][0]
    assert "confirm_answer" not in document["lines"][0]


def test_round_trips_through_the_file(tmp_path: Path) -> None:
    directory = build_directory(DIRECTORY)
    path = tmp_path / "directory.yaml"
    save_directory(directory, path)
    saved = yaml.safe_load(path.read_text())
    assert next(u for u in saved["users"] if u["id"] == "dee")["confirm_answer"] is True
    assert next(n for n in saved["lines"] if n["number"] == "+15550106")["confirm_answer"] is True
    again = load_directory(path)
    assert again.user("dee") is not None and again.user("dee").confirm_answer is True  # type: ignore[union-attr]
    assert again.line("+15550106") is not None
    assert again.line("+15550106").confirm_answer is True  # type: ignore[union-attr]
    assert again.to_document() == directory.to_document()


@pytest.mark.parametrize(
    ("where", "path"),
    [("users", "users[0].confirm_answer"), ("lines", "lines[0].confirm_answer")],
)
def test_must_be_a_boolean(where: str, path: str) -> None:
    document = {
        "users": [{"id": "u", "name": "U"}],
        "lines": [{"number": "+15550100", "name": "L", "route_to": {"user": "u"}}],
    }
    document[where][0]["confirm_answer"] = "perhaps"
    with pytest.raises(DirectoryError) as caught:
        build_directory(document)
    assert [p.path for p in caught.value.problems] == [path]
