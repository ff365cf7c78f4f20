"""docs/ws-protocol.md describes the protocol the code speaks."""

from __future__ import annotations

import re
from typing import get_args

from bridge.ws.exceptions import CloseCode, ErrorCode
from bridge.ws.schemas import CLIENT_TYPES, ServerFrame, render_doc
from tests.conftest import REPO

DOC = REPO / "docs" / "ws-protocol.md"


def test_the_json_schemas_are_generated_from_the_models() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert render_doc(text) == text, "run: python -m bridge.ws docs/ws-protocol.md"


def test_every_frame_type_close_code_and_error_code_is_described() -> None:
    text = DOC.read_text(encoding="utf-8")
    union = get_args(ServerFrame)[0]
    server_types = {model.model_fields["type"].default for model in get_args(union)}
    rows = set(re.findall(r"^\| `([a-z._]+)` \|", text, re.MULTILINE))
    assert rows >= CLIENT_TYPES
    assert server_types <= rows
    assert {code.value for code in ErrorCode} <= rows
    codes = set(re.findall(r"^\| `(\d{4})` \|", text, re.MULTILINE))
    assert {str(int(code)) for code in CloseCode} == codes
