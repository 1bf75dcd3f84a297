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
    ("task", {"task"}),
    ("platform", {"platform"}),
    ("runs", {"runs"}),
    ("data", {"data"}),
    ("model", {"model"}),
    ("reporting", {"reporting"}),
    ("training", {"training"}),
    ("inference", {"inference"}),
    ("readers", {"evaluation", "export"}),
    ("promotion", {"promotion"}),
    ("job", {"job"}),
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
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            name = _literal_module(node)
            if name is not None and (name == "vgg_cli" or name.startswith("vgg_cli.")):
                found.add(name.removeprefix("vgg_cli").lstrip("."))
    return found


DYNAMIC = {"import_module", "__import__"}  # importlib.import_module, builtins.__import__


def _is_dynamic_import(node: ast.Call) -> bool:
    f = node.func
    return (isinstance(f, ast.Name) and f.id in DYNAMIC) or (isinstance(f, ast.Attribute) and f.attr in DYNAMIC)


def _literal_module(node: ast.Call) -> str | None:
    """The module name a dynamic import call names as a string literal, or None when it is computed."""
    arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


@functools.lru_cache(maxsize=None)
def _scan(module: str, tree: ast.Module) -> tuple[frozenset[str], tuple[int, ...]]:
    """A module's vgg_cli imports and the lines of its relative imports (once per module and text: walking every
    tree is most of this file's time)."""
    relative = tuple(node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0)
    computed = tuple(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and _is_dynamic_import(node) and _literal_module(node) is None)
    return frozenset(imports(module, tree)), relative + computed


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
            bad.append(f"{name}:{lineno} relative or computed import (use `from vgg_cli.… import …` or a literal "
                       f"module name, so the layer shows in the line)")
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


def _module_of(target: str, known: set[str]) -> str | None:
    """The module file an imported name is: itself, its package's __init__, or None (an attribute)."""
    if target in known:
        return target
    return f"{target}.__init__" if f"{target}.__init__" in known else None


def cycles(root: Path = PACKAGE) -> list[str]:
    """Every circle of imports among the modules of one package, lazy imports inside functions included: a
    package's modules must form layers of their own (strongly connected components of more than one module)."""
    mods = modules(root)
    known = set(mods)
    edges: dict[str, set[str]] = {}
    for name, (_, tree) in mods.items():
        targets, _ = _scan(name, tree)
        deps = {_module_of(x, known) for x in targets} - {None, name}
        edges[name] = {d for d in deps if package_of(d) == package_of(name) and package_of(name) != ""}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(f"{' <-> '.join(sorted(group))}: a circle of imports inside the package "
                             f"{package_of(v)!r} (move what both need into a module below them)")

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# What an import inside a function may defer: a framework that takes seconds or hundreds of MiB to import. Any other
# import inside a function says why on its line (`# deferred: ...`). The CLI's modules defer everything: `vgg --help`
# imports only Click (the before-stop hook and test_cli_train_predict check the time).
HEAVY = {"tensorflow", "keras", "jax", "jaxlib", "torch", "matplotlib", "tf2onnx", "onnx", "onnxruntime",
         "ai_edge_litert", "h5py", "sklearn", "scipy"}
DEFERS_EVERYTHING = {"cli"}


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """The import statements that run when the module is imported (not those inside functions or classes)."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            out += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return out


def _names(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        return []
    return [node.module] + [f"{node.module}.{a.name}" for a in node.names]


def heavy_modules(root: Path = PACKAGE) -> set[str]:
    """The modules of the package whose import (their module-level imports, followed) loads a HEAVY framework."""
    mods = modules(root)
    known = set(mods)
    direct, edges = {}, {}
    for name, (_, tree) in mods.items():
        names = [n for node in _top_level_imports(tree) for n in _names(node)]
        direct[name] = any(n.split(".")[0] in HEAVY for n in names)
        inside = [n.removeprefix("vgg_cli.") for n in names if n.startswith("vgg_cli.")]
        edges[name] = {_module_of(n, known) for n in inside} - {None}
        parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ first
        edges[name] |= {f"{'.'.join(parts[:i])}.__init__" for i in range(1, len(parts))} & known - {name}
    heavy = {m for m, d in direct.items() if d}
    grew = True
    while grew:
        more = {m for m in mods if m not in heavy and edges[m] & heavy}
        grew = bool(more)
        heavy |= more
    return heavy


def undeferred_imports(root: Path = PACKAGE) -> list[str]:
    """Imports inside functions that defer nothing heavy and give no reason: they belong at the top."""
    mods = modules(root)
    known, heavy = set(mods), heavy_modules(root)
    bad = []
    for name, (path, tree) in mods.items():
        if package_of(name) in DEFERS_EVERYTHING:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        top = {id(n) for n in _top_level_imports(tree)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in top:
                continue
            names = _names(node)
            if any(n.split(".")[0] in HEAVY for n in names) or "# deferred:" in lines[node.lineno - 1]:
                continue
            if any(_module_of(n.removeprefix("vgg_cli."), known) in heavy for n in names if n.startswith("vgg_cli.")):
                continue
            bad.append(f"{name}:{node.lineno} imports {names[0]} inside a function but defers nothing heavy: move "
                       f"it to the top (or say why on its line: # deferred: ...)")
    return bad


def test_imports_go_one_way_and_every_folder_has_a_layer():
    assert violations() == []


def test_no_circle_of_imports_inside_a_package():
    assert cycles() == []


def test_imports_inside_functions_defer_a_framework_or_say_why():
    assert undeferred_imports() == []


def _planted(tmp_path: Path, where: str, text: str) -> Path:
    """A copy of the package with ``text`` appended to the module file ``where`` (relative to the package)."""
    copy = tmp_path / "vgg_cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / where).open("a", encoding="utf-8") as f:
        f.write("\n" + text)
    return copy


@pytest.mark.parametrize("where, line", [
    ("fsio.py", "def later():\n    import importlib\n    return importlib.import_module(\"vgg_cli.cli.main\")\n"),
    ("fsio.py", "def later():\n    return __import__(\"vgg_cli.cli.main\")\n"),
    ("fsio.py", "def later(name):\n    import importlib\n    return importlib.import_module(name)\n"),
])
def test_a_planted_dynamic_import_is_found(tmp_path, where, line):
    found = violations(_planted(tmp_path, where, line))
    assert found and all(v.startswith("fsio") for v in found), found


def test_a_planted_circle_inside_a_package_is_found(tmp_path):
    assert cycles() == []
    copy = _planted(tmp_path, "data/images.py",  # data.scan imports data.images
                    "def later():\n    from vgg_cli.data.scan import scan\n    return scan\n")
    found = cycles(copy)
    assert len(found) == 1 and "data.images" in found[0] and "data.scan" in found[0], found
    assert violations(copy) == []  # the one-way rule between packages alone does not see it


def test_a_planted_undeferred_import_is_found(tmp_path):
    copy = _planted(tmp_path, "data/scan.py", "def later():\n    import json\n    from vgg_cli.fsio import write_json\n"
                    "    import keras  # a framework: deferring it is the point\n    return json, write_json, keras\n")
    found = undeferred_imports(copy)
    assert sorted((v.split(":")[0], v.split(" ")[2]) for v in found) == [("data.scan", "json"),
                                                                         ("data.scan", "vgg_cli.fsio")], found


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
    assert violations() == []
    found = violations(_planted(tmp_path, "training/fit.py", line))
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
