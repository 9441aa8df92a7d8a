"""The package's layers: between subpackages (`evf.cache`, `evf.datamodules`, ...) and top-level modules
(`evf.batch`, `evf.model`, ...), every import -- at module level or inside a function, all but those
under ``if TYPE_CHECKING`` -- reaches a strictly lower layer of `LAYERS`, so the graph has no cycle
(docs/architecture.md, "Layers"). A new unit gets a layer here before it lands."""

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


LAYERS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (name, frozenset(f"evf.{unit}" for unit in units.split()))
    for name, units in (
        (
            "foundations",
            "assets checkpoint errors io lightning_compat lora losses metrics open_clip_compat preprocessing "
            "prompts registry results run_summary sam2_compat",
        ),
        ("parts", "paths encoders sam_backends"),
        ("model", "model cache"),
        ("batch", "batch optim pretrained run_checkpoint sweep"),
        ("decode", "decode inputs visualize"),
        ("interactive, evaluation and deployment", "predictor evaluation deploy"),
        ("files and folders", "prediction"),
        ("training, data and video", "module datamodules video"),
        ("commands and the demo", "cli demo"),
        ("the server", "serve"),
        ("tools", "tools"),
    )
)
"""Bottom first; a unit may import only units of lower layers."""


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes |= {id(n) for n in ast.walk(node)}
    return nodes


def _imports(path: Path) -> dict[str, int]:
    """evf modules imported anywhere in ``path`` (module level and inside functions; not under
    ``if TYPE_CHECKING``), each with the line of its first import."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            if name == "evf" or name.startswith("evf."):
                found.setdefault(name, node.lineno)
    return found


def _edges() -> list[tuple[str, str, str]]:
    """``(source unit, target unit, "file:line")`` for every import between two units."""
    edges = []
    for path in sorted(ROOT.rglob("*.py")):
        source = _unit(_module_name(path))
        if source == "evf":
            continue  # the package root re-exports the public API
        for module, line in _imports(path).items():
            target = _unit(module)
            if target not in (source, "evf"):
                edges.append((source, target, f"{path.relative_to(ROOT.parent)}:{line}"))
    return edges


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for source, target, _ in _edges():
        graph.setdefault(source, set()).add(target)
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


def _layer_of() -> dict[str, int]:
    return {unit: level for level, (_, units) in enumerate(LAYERS) for unit in units}


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(path)) for path in ROOT.rglob("*.py")} - {"evf"}
    assert units - set(_layer_of()) == set(), "give these a layer in LAYERS"
    assert set(_layer_of()) - units == set(), "these units no longer exist"


def test_every_import_reaches_a_lower_layer():
    layer = _layer_of()
    upward = [
        f"{where}: {source} ({LAYERS[layer[source]][0]}) imports {target} ({LAYERS[layer[target]][0]})"
        for source, target, where in _edges()
        if layer[target] >= layer[source]
    ]
    assert upward == []


def test_imports_inside_functions_are_seen(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import evf.cli\n"
        "def f():\n    from evf.predictor import Predictor\n"
    )
    assert _imports(module) == {"evf.predictor": 5}


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
