"""The package's layout rules, checked on its source (no import of TensorFlow or Keras): data flows one way through
the layers the README's "Development" section draws, modules stay under 400 lines and functions under 60."""

from __future__ import annotations

import ast
from pathlib import Path



PACKAGE = Path(__file__).resolve().parent.parent / "vgg_cli"

# Lowest first. A module may import modules of its own layer or lower ones, never higher ones (lazy imports inside
# functions included). The README's "Development" section shows the same map.
LAYERS = [
    ("base", {"__init__", "errors", "fsio", "rundir", "config_sources", "config", "progress", "data.__init__"}),
    ("platform", {"backend", "compile_cache", "distribute", "device", "fast_init", "keras_fixes", "metrics", "plots",
                  "health"}),
    ("data", {"data.images", "data.checks", "data.scan", "data.pipeline", "data.features"}),
    ("model", {"layers", "optim", "model_io", "weights", "model"}),
    ("training", {"callbacks", "checkpoints", "phases", "inputs", "fit", "prepare", "run_summary", "runs", "train",
                  "lrfind"}),
    ("reading runs back", {"predict", "gradcam", "gallery", "report", "evaluate", "export", "quantize", "promote",
                           "finish", "check"}),
    ("the train job", {"job"}),
    ("command line", {"cli", "cli_common", "cli_train", "cli_models", "cli_runs", "__main__"}),
]
RANK = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        out[name] = ast.parse(p.read_text(encoding="utf-8"), str(p))
    return out


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vgg_cli"):
            mod = node.module.removeprefix("vgg_cli").lstrip(".")
            found |= {f"{mod}.{a.name}".lstrip(".") for a in node.names} if mod in ("", "data") else {mod}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("vgg_cli.") for a in node.names if a.name.startswith("vgg_cli.")}
    return {m if m in RANK else "__init__" if m == "__version__" else m for m in found}


def test_every_module_has_a_layer():
    assert set(_modules()) == set(RANK), "add new modules to LAYERS (and to the README's map)"


def test_imports_go_one_way():
    upward = []
    for name, tree in _modules().items():
        for dep in _imports(tree):
            if dep in RANK and RANK[dep] > RANK[name]:
                upward.append(f"{name} ({LAYERS[RANK[name]][0]}) imports {dep} ({LAYERS[RANK[dep]][0]})")
    assert upward == []


def test_training_reads_nothing_of_promotion_or_prediction():
    training = LAYERS[RANK["train"]][1]
    modules = _modules()
    for name in training:
        assert not _imports(modules[name]) & {"promote", "predict", "finish", "evaluate", "job"}, name


def test_modules_and_functions_stay_small():
    too_long = []
    for name, tree in _modules().items():
        lines = len((PACKAGE / Path(*name.split("."))).with_suffix(".py").read_text(encoding="utf-8").splitlines())
        if lines > 400:
            too_long.append(f"module {name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []
