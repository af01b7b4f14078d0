"""The package's shape (issue 20): imports point one way, with no cycle and no module reaching for another's
private names; no module over 600 lines but the game generator; commands are thin and independent; the
library finds nothing through the checkout's layout. Read from the source with `ast`: nothing is imported.

The demo application lives beside the package (`demo/`, run from the checkout); it is checked for cycles too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gcd_trl"
EXCLUDED = ()
MAX_LINES = 600
LONG_MODULES = {"gcd_trl.envs.alfworld_gen"}  # the ALFWorld game generator


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if not name.startswith(EXCLUDED):
            out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str, path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or "") of every gcd_trl import of a module, in functions too."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.startswith("gcd_trl")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.startswith("gcd_trl"):
                out += [(module, a.name) for a in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, imported in _imports(name, path):
            target = _resolve(f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module)
            if target and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_no_module_imports_another_modules_private_name():
    private = [
        f"{name} imports {module}.{imported}"
        for name, path in MODULES.items()
        for module, imported in _imports(name, path)
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert private == []


def test_imports_point_one_way():
    """envs uses nothing else of the package; gcd, eval, analysis and data never reach the trainers;
    a command imports no other command."""
    graph = _graph()
    bottom = {"gcd_trl.files", "gcd_trl"}  # the stdlib-only helpers every layer may use
    for name, targets in graph.items():
        if name.startswith("gcd_trl.envs"):
            assert all(t.startswith("gcd_trl.envs") or t in bottom for t in targets), (name, targets)
        if name.startswith(("gcd_trl.gcd", "gcd_trl.eval", "gcd_trl.analysis", "gcd_trl.data")):
            assert not any(t.startswith("gcd_trl.trainers") for t in targets), (name, targets)
        if name.startswith("gcd_trl.commands.") and name != "gcd_trl.commands._common":
            others = {
                t for t in targets if t.startswith("gcd_trl.commands.") and t != "gcd_trl.commands._common"
            }
            assert not others, (name, others)


def test_modules_stay_small():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES and name not in LONG_MODULES
    }
    assert long == {}


def test_the_library_finds_nothing_through_the_checkout():
    found = [str(path) for name, path in MODULES.items() if re.search(r"parents\[3\]", path.read_text())]
    assert found == []


def test_the_demo_application_has_no_import_cycle_and_is_not_imported_by_the_library():
    demo = SRC.parent / "demo"
    graph = {}
    for path in demo.glob("*.py"):
        name = "demo" if path.stem == "__init__" else f"demo.{path.stem}"
        tree = ast.parse(path.read_text())
        graph[name] = {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        } & {"demo", *(f"demo.{p.stem}" for p in demo.glob("*.py"))}
    assert graph and _cycles(graph) == []
    users = [
        name
        for name, path in MODULES.items()
        if re.search(r"^\s*(from|import) demo\b", path.read_text(), re.M)
    ]
    assert users == []
