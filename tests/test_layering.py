"""The package's import graph has no cycles: between subpackages (`evf.cache`, `evf.datamodules`, ...)
and top-level modules (`evf.batch`, `evf.model`, ...), counting module-level imports."""

import ast
from pathlib import Path

import evf

ROOT = Path(evf.__file__).parent


def _unit(module: str) -> str:
    """``evf.cache.store`` -> ``evf.cache``; ``evf.model`` -> ``evf.model``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions, not under ``if TYPE_CHECKING``)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "evf" or n.startswith("evf.")}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        source = _unit(_module_name(path))
        if source == "evf":
            continue  # the package root re-exports the public API
        targets = {_unit(m) for m in _top_level_imports(path)} - {source, "evf"}
        graph.setdefault(source, set()).update(targets)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages_and_modules():
    graph = _graph()
    assert {"evf.cache", "evf.datamodules", "evf.batch", "evf.decode", "evf.model"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_training_module_does_not_import_prediction_outputs():
    graph = _graph()
    assert "evf.prediction" not in graph["evf.module"] and "evf.datamodules" not in graph["evf.module"]


def test_import_evf_does_not_load_lightning():
    import subprocess
    import sys

    code = (
        "import sys, evf\n"
        "print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
