"""The import rules of docs/architecture.md, read from the source with `ast`.

- routing and the SIP protocol core import no socket nor event loop and read no clock: time
  and I/O are passed in (so every timer is testable with a fake clock);
- `calls/` imports no adapter; `control/` imports no carrier module; `control/` and `ws/`
  import nothing from `api/`;
- handlers find what they need in what their plugin gave them, never in a context bag hung on
  the application (`request.app.state.ctx`);
- no import cycle between the modules of `src/bridge/` (imports made only for type checking,
  under `if TYPE_CHECKING:`, do not count: they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "bridge"

# Sans-I/O: bytes, values and `now` in; actions out.
PURE_MODULES = (
    "bridge.routing.engine",
    "bridge.routing.explain",
    "bridge.routing.fixed",
    "bridge.routing.model",
    "bridge.calls.machine",
    "bridge.calls.events",
    "bridge.sip.grammar",
    "bridge.sip.parser",
    "bridge.sip.model",
    "bridge.sip.transaction",
    "bridge.sip.dialog",
    "bridge.sip.digest",
    "bridge.sip.bindings",
    "bridge.sip.registrar",
    "bridge.sip.ban",
    "bridge.sip.session_timers",
    "bridge.sip.addressing",
)
IO_MODULES = ("socket", "asyncio", "selectors", "ssl", "uvloop", "threading")
# Attribute calls that read a clock (`time.time()`, `datetime.now()`, `loop.time()`, ...).
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("time", "time_ns"),
    ("time", "monotonic_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}
ADAPTERS = ("sip", "carriers", "ws", "control", "api", "console", "daemon", "cli", "context")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except what sits under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not _type_checking_only(child):
                stack.append(child)


def imports_of(name: str, path: Path) -> set[str]:
    """The modules `name` imports at run time (absolute names; `from x import y` gives x.y
    when x.y is a module, else x)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return found


def clock_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if (owner_name, node.func.attr) in CLOCK_CALLS:
                reads.append(f"{path.name}:{node.lineno} {owner_name}.{node.func.attr}()")
            elif node.func.attr == "time" and owner_name in ("loop", "_loop"):
                reads.append(f"{path.name}:{node.lineno} {owner_name}.time()")
    return reads


@cache
def graph() -> dict[str, set[str]]:
    found = modules()
    return {
        name: {i for i in imports_of(name, path) if i in found and i != name}
        for name, path in found.items()
    }


def test_the_rules_see_the_source() -> None:
    """The checks below would pass on an empty tree: make sure they read ours."""
    g = graph()
    assert "bridge.sip.b2bua" in g and "bridge.calls.runner" in g["bridge.sip.b2bua"]
    assert "bridge.calls.machine" in g["bridge.calls.runner"]
    assert any("datetime.now()" in r for r in clock_reads(PACKAGE / "presence" / "service.py"))


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_modules_do_no_io_and_read_no_clock(name: str) -> None:
    path = modules()[name]
    io = sorted(i for i in imports_of(name, path) if i.split(".")[0] in IO_MODULES or i == "time")
    assert io == [], f"{name} imports {io}: pass I/O and time in instead"
    assert clock_reads(path) == [], f"{name} reads a clock"


def _imports_under(prefix: str) -> dict[str, set[str]]:
    return {name: deps for name, deps in graph().items() if name.startswith(prefix)}


def test_calls_imports_no_adapter() -> None:
    bad = {
        name: sorted(d for d in deps if d.split(".")[1] in ADAPTERS)
        for name, deps in _imports_under("bridge.calls").items()
    }
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("feature", ["bridge.control", "bridge.ws"])
def test_control_and_ws_import_nothing_from_api(feature: str) -> None:
    bad = {
        name: sorted(d for d in deps if d.startswith("bridge.api"))
        for name, deps in _imports_under(feature).items()
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_control_imports_no_carrier() -> None:
    bad = {
        name: sorted(d for d in deps if d.startswith("bridge.carriers"))
        for name, deps in _imports_under("bridge.control").items()
    }
    assert {k: v for k, v in bad.items() if v} == {}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(g):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_src() -> None:
    # A package's __init__ re-exporting its modules is not a cycle of the design: drop the
    # edges from a package to its own submodules.
    g = {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph().items()}
    assert find_cycle(g) is None, " -> ".join(find_cycle(g) or [])


def test_no_handler_digs_in_the_application_state() -> None:
    """Routes are built by their feature's plugin with their service passed in."""
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "state"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "app"
            ):
                found.append(f"{name}:{node.lineno}")
    assert found == []
