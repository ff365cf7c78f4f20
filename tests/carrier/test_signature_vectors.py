"""Webhook signatures: the published test vectors through our validator wrapper."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.carriers.twilio.errors import BadSignature
from bridge.carriers.twilio.signature import WebhookValidator
from tests.conftest import SHARED

VECTORS = SHARED / "corpora" / "twilio" / "signature_vectors.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
SIGNED_KINDS = {"compute_signature", "validate"}
HASH_KINDS = {"compute_body_hash", "validate_body_hash"}


def _params(case: dict[str, Any]) -> Any:
    if "body" in case:
        return case["body"]  # a JSON body: signed through the bodySHA256 in its URL
    params = case.get("params", {})
    return [tuple(pair) for pair in params] if isinstance(params, list) else params


def test_the_corpus_is_all_there() -> None:
    kinds = {case["kind"] for case in CASES}
    assert kinds <= SIGNED_KINDS | HASH_KINDS, kinds
    assert len(CASES) >= 35
    assert any(not case.get("expected_valid", True) for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_signature_vector(case: dict[str, Any]) -> None:
    expected = case.get("expected_valid", True)
    if case["kind"] in HASH_KINDS:
        matches = WebhookValidator("unused").body_hash(case["body"]) == case["sha256_hex"]
        assert matches is expected
        return
    validator = WebhookValidator(case["auth_token"])
    assert validator.is_valid(case["url"], _params(case), case["signature"]) is expected


def test_check_names_what_is_wrong() -> None:
    validator = WebhookValidator("12345")
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    with pytest.raises(BadSignature, match="missing X-Twilio-Signature"):
        validator.check(url, {}, None)
    with pytest.raises(BadSignature, match="does not match"):
        validator.check(url, {"CallSid": "CA1"}, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    with pytest.raises(BadSignature, match="unsupported signature algorithm"):
        validator.check(url, {}, "x", "key=k1,algorithm=HMAC_MD5")
