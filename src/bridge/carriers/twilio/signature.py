"""`X-Twilio-Signature` checks: the SDK's `RequestValidator`, plus the URL equivalences the
published test vectors (`../shared/corpora/twilio/signature_vectors.json`) require.

The HMAC itself is always the SDK's (`validate` / `compute_signature` / `compute_hash`); this
module only decides which spellings of the one URL the carrier may have signed:

- the URL with the default port added or any port removed (the SDK's `validate` does this);
- the URL exactly as given: the SDK re-serialises it through `urlparse`, which lowercases the
  scheme (`HTTP://` -> `http://`), so a URL whose scheme is not lowercase needs the raw form;
- `'` raw or percent-encoded as `%27`: the WHATWG URL serialisation (what twilio-node and the
  carrier use) encodes `'` in a query, so either spelling may have been signed.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import RequestValidator

from bridge.carriers.twilio.errors import BadSignature

try:  # Newer SDKs name the algorithm in X-Twilio-Webhooks-Signature-Settings.
    from twilio.request_validator import get_signature_algorithm
except ImportError:  # pragma: no cover - older SDKs only know HMAC-SHA1

    def get_signature_algorithm(signature_settings_header: str | None) -> str:
        return "HMAC_SHA1"


SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
_SUPPORTED = frozenset({"HMAC_SHA1", "HMAC_SHA256"})

Params = Mapping[str, str] | Iterable[tuple[str, str]]


class _MultiParams(dict[str, list[str]]):
    """Form parameters with repeated keys, as the SDK reads them (`getlist`): a plain dict would
    keep only one value of a repeated key, and the signature covers all of them."""

    def getlist(self, key: str) -> list[str]:
        return self[key]


def multi_params(params: Params) -> _MultiParams:
    pairs = params.items() if isinstance(params, Mapping) else params
    found = _MultiParams()
    for key, value in pairs:
        found.setdefault(key, []).append(value)
    return found


def _spellings(url: str) -> list[str]:
    """The URL as given, then with `'` and `%27` swapped both ways (distinct ones only)."""
    found = [url]
    for candidate in (
        url.replace("%27", "'"),
        url.replace("'", "%27"),
    ):
        if candidate not in found:
            found.append(candidate)
    return found


class WebhookValidator:
    """Checks one request's signature with the account's auth token."""

    def __init__(self, auth_token: str) -> None:
        self._sdk = RequestValidator(auth_token)

    def is_valid(
        self,
        url: str,
        params: Params | str,
        signature: str,
        algorithm: str | None = None,
    ) -> bool:
        """True when `signature` was computed over some spelling of `url` and `params` (a
        form) or over the URL whose `bodySHA256` matches `params` (a JSON body, as a str)."""
        body = params if isinstance(params, str) else None
        form = multi_params(params) if not isinstance(params, str) else _MultiParams()
        for spelling in _spellings(url):
            if body is not None and not self._body_matches(spelling, body):
                continue  # a JSON body is only signed through the bodySHA256 in its URL
            signed: _MultiParams | str = body if body is not None else form
            if self._sdk.validate(spelling, signed, signature, algorithm):
                return True
            # The URL exactly as given (the SDK lowercases the scheme when it adds/removes ports).
            computed = self._sdk.compute_signature(spelling, form, algorithm)
            if hmac.compare_digest(computed.encode(), signature.encode()):
                return True
        return False

    def body_hash(self, body: str) -> str:
        """The hex SHA-256 a JSON webhook's URL carries as `bodySHA256`."""
        return self._sdk.compute_hash(body)

    def _body_matches(self, url: str, body: str) -> bool:
        hashes = parse_qs(urlsplit(url).query).get("bodySHA256")
        if not hashes:
            return False  # a body without its hash in the signed URL proves nothing
        return hmac.compare_digest(self._sdk.compute_hash(body).encode(), hashes[0].encode())

    def check(
        self,
        url: str,
        params: Params | str,
        signature: str | None,
        settings_header: str | None = None,
    ) -> None:
        """Raise `BadSignature` with the reason unless the request is signed for `url`."""
        if not signature:
            raise BadSignature(f"missing {SIGNATURE_HEADER} header")
        algorithm = get_signature_algorithm(settings_header)
        if algorithm.upper() not in _SUPPORTED:
            raise BadSignature(f"unsupported signature algorithm {algorithm!r}")
        if not self.is_valid(url, params, signature, algorithm):
            raise BadSignature(f"{SIGNATURE_HEADER} does not match {url}")
