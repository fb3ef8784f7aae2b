"""The codebase's shape: the layers import only downwards and no module imports itself round a circle."""

from __future__ import annotations

from .conftest import REPO


def test_the_layers_import_only_downwards():
    """The README's promise: data never imports training (or anything above it); models never import data."""
    import ast

    root = REPO / "src" / "mammobench"
    rules = {"data": ("training", "models", "evaluation", "serving", "experiments", "cli"),
             "models": ("data", "training", "evaluation", "serving", "experiments", "cli")}
    wrong = []
    for package, banned in rules.items():
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
                if module.startswith("mammobench.") and module.split(".")[1] in banned:
                    wrong.append(f"{path.relative_to(root)} imports {module}")
    assert not wrong, wrong


#: Each layer may import the ones with a lower rank (and itself); experiments and serving are siblings on top of
#: evaluation, and the command line sits above everything. The encoder catalogue is plain data the config reads.
#: docs/architecture.md draws the same picture.
LAYERS = {"base": 0, "data": 1, "encoders": 1.5, "config": 2, "models": 3, "runs": 4, "training": 5, "evaluation": 6,
          "experiments": 7,
          "serving": 7, "cli": 8, "__main__": 9}
#: The modules every layer may use: atomic writes and errors, number formatting, figures, the package's version.
BASE = ("runtime", "formatting", "figures")


def _imports() -> dict[str, set[str]]:
    """``{module: the mammobench modules it imports}``, counting imports inside functions too."""
    import ast

    root = REPO / "src" / "mammobench"
    modules = {".".join(("mammobench", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mammobench"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("mammobench")]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return "base" if len(parts) == 1 or parts[1] in BASE else parts[1]


def test_every_layer_imports_only_downwards():
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            mine, theirs = _layer(module), _layer(target)
            assert mine in LAYERS and theirs in LAYERS, f"{module} or {target}: a layer docs/architecture.md lacks"
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_module_imports_itself_round_a_circle():
    graph = _imports()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
