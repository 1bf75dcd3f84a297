"""The package's layout rules, checked on its source (no import of TensorFlow or Keras).

The folders are the layers: a module's layer is the package it sits in (the modules at the top of ``vgg_cli/`` are
the base). A module may import its own package or a package of a lower layer, never a higher one and never a
sibling package of its own layer; lazy imports inside functions and relative imports count. Modules stay under
400 lines and functions under 60. The README's "Development" section draws the same map.
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vgg_cli"

# Lowest first: (layer, its packages). "" is the package's top level (errors, fsio, progress).
LAYERS = [
    ("base", {""}),
    ("config", {"config"}),
    ("platform", {"platform"}),
    ("runs", {"runs"}),
    ("data", {"data"}),
    ("model", {"model"}),
    ("reporting", {"reporting"}),
    ("training", {"training"}),
    ("inference", {"inference"}),
    ("readers", {"evaluation", "export"}),
    ("promotion", {"promotion"}),
    ("face", {"cli"}),
]
RANK = {pkg: i for i, (_, pkgs) in enumerate(LAYERS) for pkg in pkgs}
TOP_LEVEL = {"__init__", "__main__", "errors", "fsio", "progress"}  # the base, and the `python -m vgg_cli` door


@functools.lru_cache(maxsize=None)
def _parse(source: str) -> ast.Module:
    """A module's syntax tree, parsed once per text: the planted-import tests check copies of the whole package."""
    return ast.parse(source)


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, ast.Module]]:
    """Dotted module name inside the package (``training.fit``, ``errors``) -> (file, syntax tree)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts)
        out[name] = (p, _parse(p.read_text(encoding="utf-8")))
    return out


def package_of(module: str) -> str:
    """The folder a module sits in: "" for the top level. ``__main__`` is the face (it only calls cli.main)."""
    if module == "__main__":
        return "cli"
    return module.split(".")[0] if "." in module else ""


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The dotted name (inside vgg_cli, "" for the package itself) that a relative import names."""
    here = module.split(".")[:-1]  # a module's (or an __init__'s) relative imports start at its package
    base = here[: len(here) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(module: str, tree: ast.Module) -> set[str]:
    """Every vgg_cli module or package a module imports, as a dotted name inside vgg_cli ("" for vgg_cli)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:
                target = _absolute(module, node)
            elif node.module and (node.module == "vgg_cli" or node.module.startswith("vgg_cli.")):
                target = node.module.removeprefix("vgg_cli").lstrip(".")
            else:
                continue
            # `from vgg_cli.training import fit` imports the module training.fit
            found |= {f"{target}.{a.name}".lstrip(".") for a in node.names}
            found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("vgg_cli").lstrip(".") for a in node.names
                      if a.name == "vgg_cli" or a.name.startswith("vgg_cli.")}
    return found


@functools.lru_cache(maxsize=None)
def _scan(module: str, tree: ast.Module) -> tuple[frozenset[str], tuple[int, ...]]:
    """A module's vgg_cli imports and the lines of its relative imports (once per module and text: walking every
    tree is most of this file's time)."""
    relative = tuple(node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0)
    return frozenset(imports(module, tree)), relative


def _package_of_target(target: str, known: set[str]) -> str | None:
    """The package an imported name belongs to, or None for a name that is no module (an attribute)."""
    if target in known:
        return package_of(target)
    if target == "":
        return ""
    if f"{target}.__init__" in known:
        return target.split(".")[0]
    return None


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import that goes up a layer or sideways into another package of the same layer, and every module
    in a folder that has no layer."""
    mods = modules(root)
    known = set(mods)
    bad = []
    for name, (path, tree) in mods.items():
        pkg = package_of(name)
        if pkg not in RANK:
            bad.append(f"{name}: the folder {pkg!r} has no layer (add it to LAYERS and the README's map)")
            continue
        if pkg == "" and name not in TOP_LEVEL:
            bad.append(f"{name}: only {sorted(TOP_LEVEL)} belong at the top level; file it in a layer's folder")
        targets, relative = _scan(name, tree)
        for lineno in relative:
            bad.append(f"{name}:{lineno} relative import (use `from vgg_cli.… import …`, so the layer "
                       f"shows in the line)")
        for target in targets:
            dep = _package_of_target(target, known)
            if dep is None or dep == pkg or dep not in RANK:
                continue
            if RANK[dep] > RANK[pkg]:
                bad.append(f"{name} ({LAYERS[RANK[pkg]][0]}) imports {target} ({LAYERS[RANK[dep]][0]}): upward")
            elif RANK[dep] == RANK[pkg]:
                bad.append(f"{name} ({pkg}) imports {target} ({dep}): sideways within the layer "
                           f"{LAYERS[RANK[pkg]][0]}")
    return bad


def test_imports_go_one_way_and_every_folder_has_a_layer():
    assert violations() == []


@pytest.mark.parametrize("line", [
    "from vgg_cli.promotion.decide import judge\n",
    "from vgg_cli.promotion import decide\n",
    "import vgg_cli.inference.predict\n",
    "from ..promotion.decide import judge\n",
    "from .. import promotion\n",
    "def later():\n    from vgg_cli.cli.common import emit\n",
    "from vgg_cli.export import formats\n",
])
def test_a_planted_upward_or_relative_import_is_found(tmp_path, line):
    copy = tmp_path / "vgg_cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(copy) == []
    with (copy / "training" / "fit.py").open("a", encoding="utf-8") as f:
        f.write("\n" + line)
    found = violations(copy)
    assert found and all(v.startswith("training.fit") for v in found), found


def test_a_sideways_import_and_a_folder_without_a_layer_are_found(tmp_path):
    copy = tmp_path / "vgg_cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "evaluation" / "evaluate.py").open("a", encoding="utf-8") as f:
        f.write("\nfrom vgg_cli.export.formats import export_model\n")
    (copy / "extras").mkdir()
    (copy / "extras" / "__init__.py").write_text("")
    (copy / "stray.py").write_text("")
    found = violations(copy)
    assert any("sideways" in v and v.startswith("evaluation.evaluate") for v in found), found
    assert any(v.startswith("extras.__init__") and "no layer" in v for v in found), found
    assert any(v.startswith("stray") and "top level" in v for v in found), found


def test_modules_and_functions_stay_small():
    too_long = []
    for name, (path, tree) in modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > 400:
            too_long.append(f"module {name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_the_readme_map_names_every_folder():
    text = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    dev = text[text.index("## Development"):]
    missing = [pkg for pkg in RANK if pkg and f"{pkg}/" not in dev]
    assert missing == []
