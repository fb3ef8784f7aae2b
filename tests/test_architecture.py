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


# --------------------------------------------------------------------------- what docs/architecture.md claims


def _code_strings(path):
    """The string constants of a module's code (docstrings left out), with their lines."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


#: The modules docs/architecture.md says a command line or a notebook meets without torch, Lightning or timm.
LIGHT = ("cli", "config", "encoders", "runs", "data", "evaluation", "experiments")
#: ... except these, named there as torch code (datasets, inference, explanations).
HEAVY = ("data.dataset", "data.datamodule", "data.transforms", "evaluation.inference", "evaluation.explain",
         "cli.__main__")


def test_the_modules_the_docs_call_light_import_no_torch():
    import subprocess
    import sys

    root = REPO / "src" / "mammobench"
    modules = []
    for path in sorted(root.rglob("*.py")):
        dotted = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if dotted.split(".")[0] in LIGHT and dotted not in HEAVY:
            modules.append(f"mammobench.{dotted}")
    assert len(modules) > 40
    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
            "print(sorted(k for k in ('torch', 'lightning', 'timm', 'optuna', 'gradio') if k in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, check=True)
    if done.stdout.strip() != "[]":  # which one: each alone
        culprits = [m for m in modules if subprocess.run([sys.executable, "-c", code, m], capture_output=True,
                                                         text=True).stdout.strip() != "[]"]
        raise AssertionError(f"{done.stdout.strip()} imported by {culprits}")


def test_a_state_dict_meets_a_model_in_models_loading_only():
    import ast

    root = REPO / "src" / "mammobench"
    calls = [f"{path.relative_to(root)}:{node.lineno}" for path in root.rglob("*.py")
             if path.relative_to(root).as_posix() != "models/loading.py"
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load_state_dict"]
    assert calls == [], calls


#: A run folder's own files: named in runs.py (RunDir) and nowhere else.
RUN_FILES = ("model.json", "run.json", "split.csv", "history.csv", "curves.png", "calibration.json", "fingerprints.csv",
             "last.ckpt", "best.ckpt")


def test_a_run_folder_layout_is_named_in_runs_py_only():
    root = REPO / "src" / "mammobench"
    named = [f"{path.relative_to(root)}:{line} {value!r}" for path in root.rglob("*.py") if path.name != "runs.py"
             for value, line in _code_strings(path) if any(value.endswith(name) for name in RUN_FILES)]
    assert named == [], named
    assert all(f'"{name}"' in (root / "runs.py").read_text() for name in RUN_FILES)


def test_no_function_outside_the_command_line_is_longer_than_60_lines():
    """Orchestrators read top to bottom: a function's body (its docstring aside) fits on a screen."""
    import ast

    root = REPO / "src" / "mammobench"
    long = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                documented = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(node.body) > 1
                start = node.body[1].lineno if documented else first.lineno
                if node.end_lineno - start + 1 > 60:
                    long.append(f"{path.relative_to(root)}:{node.name} ({node.end_lineno - start + 1} lines)")
    assert long == [], long
