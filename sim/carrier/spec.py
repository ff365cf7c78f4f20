"""Twilio's published OpenAPI description of the 2010 API, turned into a request checker.

Nothing here is written per endpoint: every rule (which paths exist, which methods, which form
and query parameters, which are required, their types, patterns and enums) is read from
`twilio_api_v2010.json` once. The fake carrier asks `TwilioSpec.check` about every request it
receives, so a bridge that sends a misspelled or undocumented parameter fails its test instead of
failing in production against the real carrier.

One addition on top of the machine-readable schema: many string parameters carry their allowed
values only in prose ("Can be: `skip` or `silence`", e.g. `PauseBehavior`). Those lists are
extracted from the descriptions with one regular expression (`documented_values`) and enforced
too, because a typo there is exactly the kind of bug this fake exists to catch. Pass
`documented_enums=False` to check only the formal `enum`s.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The spec lives next to the repository (../shared), never copied into it.
REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = (REPO_ROOT / ".." / "shared" / "specs" / "twilio" / "twilio_api_v2010.json").resolve()

FORM = "application/x-www-form-urlencoded"

# "Can be: `a`, `b`, and `c`" / "Can be `GET` or `POST`": the prose form of an enum.
_CAN_BE = re.compile(r"Can be:?\s*(`[^`]+`(?:\s*,?\s*(?:or|and)?\s*`[^`]+`)*)")
_TICKED = re.compile(r"`([^`]+)`")
_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z0-9_]+)\}")


@dataclass(frozen=True)
class Violation:
    """One way a request departed from the published description."""

    method: str
    path: str
    operation_id: str | None
    parameter: str | None
    message: str

    def __str__(self) -> str:
        where = self.operation_id or "no operation"
        return f"{self.method} {self.path} ({where}): {self.message}"


class SpecError(Exception):
    """The request cannot be served as described; carries the HTTP status to answer with."""

    def __init__(self, status: int, violations: list[Violation]) -> None:
        super().__init__("; ".join(v.message for v in violations))
        self.status = status
        self.violations = violations


@dataclass(frozen=True)
class Operation:
    """One (path template, method) of the spec, with its parameters resolved."""

    operation_id: str
    method: str
    template: str
    path_params: Mapping[str, Mapping[str, Any]]
    query_params: Mapping[str, Mapping[str, Any]]
    required_query: frozenset[str]
    form_params: Mapping[str, Mapping[str, Any]]
    required_form: frozenset[str]
    success_status: int
    response_schema: Mapping[str, Any] | None


@dataclass
class _Route:
    template: str
    regex: re.Pattern[str]
    literal_chars: int
    operations: dict[str, Operation] = field(default_factory=dict)


def documented_values(schema: Mapping[str, Any]) -> list[str] | None:
    """The allowed values stated in a parameter's description, when it lists them."""
    match = _CAN_BE.search(schema.get("description", "") or "")
    return _TICKED.findall(match.group(1)) if match else None


class TwilioSpec:
    """The operations of the 2010 API, indexed for matching and checking requests."""

    def __init__(self, path: Path = SPEC_PATH, *, documented_enums: bool = True) -> None:
        with path.open(encoding="utf-8") as f:
            self._doc: dict[str, Any] = json.load(f)
        self._schemas: dict[str, Any] = self._doc["components"]["schemas"]
        self.documented_enums = documented_enums
        self._routes: list[_Route] = []
        self._by_id: dict[str, Operation] = {}
        for template, item in self._doc["paths"].items():
            route = _Route(template, _compile(template), len(_TEMPLATE_PARAM.sub("", template)))
            for method, raw in item.items():
                if method not in ("get", "post", "put", "delete", "patch"):
                    continue
                op = self._operation(template, method.upper(), raw)
                route.operations[op.method] = op
                self._by_id[op.operation_id] = op
            self._routes.append(route)
        # A literal segment beats a parameter ("Calls/FeedbackSummary.json" vs "Calls/{Sid}.json").
        self._routes.sort(key=lambda r: -r.literal_chars)

    # -- building -------------------------------------------------------------------------------

    def resolve(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """Follow `$ref`s to a component schema, keeping the referring description."""
        out = dict(schema)
        while "$ref" in out:
            ref = out.pop("$ref")
            target = self._schemas[ref.rsplit("/", 1)[-1]]
            out = {**target, **out}
        if out.get("type") == "array" and "items" in out:
            out["items"] = self.resolve(out["items"])
        return out

    def component(self, name: str) -> dict[str, Any]:
        return self.resolve({"$ref": f"#/components/schemas/{name}"})

    def _operation(self, template: str, method: str, raw: Mapping[str, Any]) -> Operation:
        path_params: dict[str, Mapping[str, Any]] = {}
        query_params: dict[str, Mapping[str, Any]] = {}
        required_query: set[str] = set()
        for p in raw.get("parameters", []):
            schema = self.resolve({**p.get("schema", {}), "description": p.get("description", "")})
            if p["in"] == "path":
                path_params[p["name"]] = schema
            elif p["in"] == "query":
                query_params[p["name"]] = schema
                if p.get("required"):
                    required_query.add(p["name"])
        form_params: dict[str, Mapping[str, Any]] = {}
        required_form: frozenset[str] = frozenset()
        body = raw.get("requestBody", {}).get("content", {}).get(FORM)
        if body:
            schema = self.resolve(body["schema"])
            form_params = {k: self.resolve(v) for k, v in schema.get("properties", {}).items()}
            required_form = frozenset(schema.get("required", []))
        success = sorted(int(c) for c in raw.get("responses", {}) if c.startswith("2"))
        status = 201 if 201 in success else (success[0] if success else 200)
        content = raw.get("responses", {}).get(str(status), {}).get("content", {})
        response = content.get("application/json", {}).get("schema")
        return Operation(
            operation_id=raw.get("operationId", f"{method} {template}"),
            method=method,
            template=template,
            path_params=path_params,
            query_params=query_params,
            required_query=frozenset(required_query),
            form_params=form_params,
            required_form=required_form,
            success_status=status,
            response_schema=self.resolve(response) if response else None,
        )

    # -- checking -------------------------------------------------------------------------------

    def operation(self, operation_id: str) -> Operation:
        return self._by_id[operation_id]

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        """The operation a request addresses; SpecError(404/405) when the spec has none."""
        for route in self._routes:
            m = route.regex.fullmatch(path)
            if not m:
                continue
            op = route.operations.get(method.upper())
            if op is None:
                allowed = ", ".join(sorted(route.operations)) or "none"
                raise SpecError(
                    405,
                    [
                        Violation(
                            method,
                            path,
                            None,
                            None,
                            f"method {method} is not described for {route.template}"
                            f" (described: {allowed})",
                        )
                    ],
                )
            return op, m.groupdict()
        raise SpecError(
            404, [Violation(method, path, None, None, "path matches no path of the spec")]
        )

    def check(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        form: Iterable[tuple[str, str]] | None,
        content_type: str | None,
    ) -> tuple[Operation, dict[str, str], list[Violation]]:
        """Match the request and list every way its parameters depart from the spec."""
        op, path_args = self.match(method, path)
        bad: list[Violation] = []

        def add(param: str | None, message: str) -> None:
            bad.append(Violation(method, path, op.operation_id, param, message))

        for name, value in path_args.items():
            schema = op.path_params.get(name)
            if schema is not None:
                error = self._value_error(value, schema, documented=False)
                if error:
                    add(name, f"path parameter {name}={value!r}: {error}")

        self._check_params(op.query_params, op.required_query, list(query), "query", add)

        form_items = list(form or [])
        if op.form_params or op.required_form:
            if form_items and content_type and not content_type.startswith(FORM):
                add(None, f"body must be {FORM}, not {content_type}")
            self._check_params(op.form_params, op.required_form, form_items, "form", add)
        elif form_items:
            names = ", ".join(sorted({k for k, _ in form_items}))
            add(names, f"{op.operation_id} takes no body parameters, got {names}")
        return op, path_args, bad

    def _check_params(
        self,
        declared: Mapping[str, Mapping[str, Any]],
        required: frozenset[str],
        items: list[tuple[str, str]],
        where: str,
        add: Callable[[str | None, str], None],
    ) -> None:
        seen: dict[str, list[str]] = {}
        for name, value in items:
            seen.setdefault(name, []).append(value)
        for name, values in seen.items():
            schema = declared.get(name)
            if schema is None:
                close = _close_names(name, declared)
                hint = f" (did you mean {close}?)" if close else ""
                add(name, f"unknown {where} parameter {name!r}{hint}")
                continue
            if schema.get("type") != "array" and len(values) > 1:
                add(name, f"{where} parameter {name!r} given {len(values)} times")
            for value in values:
                error = self._value_error(value, schema, documented=self.documented_enums)
                if error:
                    add(name, f"{where} parameter {name}={value!r}: {error}")
        for name in sorted(required - seen.keys()):
            add(name, f"required {where} parameter {name!r} is missing")

    def _value_error(
        self, value: str, schema: Mapping[str, Any], *, documented: bool
    ) -> str | None:
        kind = schema.get("type")
        if kind == "array":
            items = schema.get("items", {})
            # Twilio takes list values repeated or space-separated ("initiated ringing").
            for part in value.split() or [value]:
                error = self._value_error(
                    part,
                    {**items, "description": schema.get("description", "")},
                    documented=documented,
                )
                if error:
                    return error
            return None
        if kind == "boolean":
            return None if value.lower() in ("true", "false") else "not a boolean (true|false)"
        if kind in ("integer", "number"):
            try:
                number = int(value) if kind == "integer" else float(value)
            except ValueError:
                return f"not an {kind}"
            if "minimum" in schema and number < schema["minimum"]:
                return f"below the minimum {schema['minimum']}"
            if "maximum" in schema and number > schema["maximum"]:
                return f"above the maximum {schema['maximum']}"
            return None
        if "enum" in schema:
            if value not in schema["enum"]:
                return f"not one of {schema['enum']}"
        elif documented:
            allowed = documented_values(schema)
            if allowed and value not in allowed:
                return f"not one of the documented values {allowed}"
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"longer than {schema['maxLength']} characters"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"does not match {schema['pattern']}"
        if schema.get("format") == "uri":
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                return "not an absolute http(s) URL"
        return None


def _compile(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _TEMPLATE_PARAM.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        # Lazy so that "{Sid}.json" leaves ".json" to the literal.
        out.append(f"(?P<{m.group(1)}>[^/]+?)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def _close_names(name: str, declared: Iterable[str]) -> str:
    import difflib

    return ", ".join(difflib.get_close_matches(name, list(declared), n=2, cutoff=0.75))


@functools.cache
def load_spec(path: Path = SPEC_PATH, documented_enums: bool = True) -> TwilioSpec:
    """The spec, parsed once per process (it is 1.8 MB of JSON)."""
    return TwilioSpec(path, documented_enums=documented_enums)
