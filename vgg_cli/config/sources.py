"""Reading configuration sources: the documented defaults, a user's YAML file and ``key=value`` overrides, merged
with one error rule (an unknown key gets a did-you-mean, a malformed file one line). Validation of the merged tree
is ``vgg_cli.config.schema``'s. Nothing here imports TensorFlow."""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import logging
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vgg_cli.config.habits import habit_hint
from vgg_cli.errors import ConfigError, NoInputError

log = logging.getLogger("vgg")


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false are booleans. Under YAML 1.1 (PyYAML's default) yes/no/on/off
    are too, so ``output.name=on`` or ``mixed_precision: off`` would silently become True/False."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are unique: PyYAML keeps the last of two equal keys without a word, so a config with
    ``epochs: 3`` twice in a section would silently use one of them."""
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) or key is None:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (a key may appear once per section)", key_node.start_mark)
            seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                        lambda loader, node: _mapping_without_duplicates(loader, node, deep=True))

LONGEST_NUMBER = 400  # characters of an integer read exactly: every key's range ends far below, Python's at 4300
MAX_ALIAS_VALUES = 100_000  # values YAML aliases may repeat in one document (a "billion laughs" repeats 10**9)
MAX_DEPTH = 100  # levels of nested [ ] and { } in one document, brackets in quotes counted too
SHOWN = 200  # characters of a value quoted in an error line


class LongNumber(int):
    """An integer literal longer than LONGEST_NUMBER characters (PyYAML raises at 4300 digits): a stand-in beyond
    every key's range and a float's, with its sign, shown by its first digits and length; validation reports it."""

    def __new__(cls, text: str) -> LongNumber:
        self = super().__new__(cls, (-1 if text.startswith("-") else 1) * 10 ** LONGEST_NUMBER)
        self.text = text
        return self

    def __repr__(self) -> str:
        return f"{self.text[:24]}... (a number {len(self.text)} characters long)"

    __str__ = __repr__


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    if len(node.value) > LONGEST_NUMBER:
        return LongNumber(node.value.replace("_", ""))
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class RefusedYAML(yaml.MarkedYAMLError):
    """YAML that parses but is refused before it is built: aliases that repeat too much, nesting too deep."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int], busy: set[int]) -> int:
    """How many values ``node`` stands for once every alias is written out (each node is counted once: linear)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in busy:
        raise RefusedYAML(problem="an alias refers to the value that contains it", problem_mark=node.start_mark)
    busy.add(id(node))
    children = ([] if isinstance(node, yaml.ScalarNode)
                else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value)
    sizes[id(node)] = 1 + sum(_expanded_size(child, sizes, busy) for child in children)
    busy.discard(id(node))
    return sizes[id(node)]


def _check_aliases(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    total = _expanded_size(root, sizes, set())
    if total - len(sizes) <= MAX_ALIAS_VALUES:
        return
    node, path = root, []  # down to the key whose value repeats too much, for the message
    while isinstance(node, yaml.MappingNode):
        big = [(k, v) for k, v in node.value if sizes[id(v)] - 1 > MAX_ALIAS_VALUES]
        if not big:
            break
        path.append(str(big[0][0].value))
        node = big[0][1]
    raise RefusedYAML(problem=f"{cut('.'.join(path)) or 'the document'}: its aliases (*name) stand for "
                              f"{sizes[id(node)]} values, more than {MAX_ALIAS_VALUES} repeated; write the values "
                              f"out instead of nesting aliases", problem_mark=node.start_mark)


def yaml_load(text: str) -> Any:
    """YAML 1.2 booleans, no duplicate keys; alias bombs and too deep nesting refused (RefusedYAML) before anything
    is built from them."""
    depth = max(itertools.accumulate(1 if m[0] in "[{" else -1 for m in re.finditer(r"[][{}]", text)), default=0)
    if depth > MAX_DEPTH:  # counted before parsing: PyYAML's scanner takes seconds over thousands of open brackets
        raise RefusedYAML(problem=f"values nested {depth} levels deep ([ and {{), more than {MAX_DEPTH}")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    except RecursionError:
        raise RefusedYAML(problem="values nested too deeply (lists or mappings inside each other)") from None
    finally:
        loader.dispose()


def shown(value: Any, limit: int = SHOWN) -> str:
    """``repr(value)`` for an error line, cut after ``limit`` characters with "...": built piece by piece and stopped
    there, so a value of a billion items (YAML aliases) costs no more to quote than a short one."""
    out, size = [], 0
    for piece in _pieces(value, limit):
        out.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(out)[:limit] + "..."
    return "".join(out)


def cut(text: str, limit: int = SHOWN) -> str:
    """Text written into an error line as it is (a key, a path to copy), cut after ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


def _pieces(value: Any, limit: int):
    if isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield ", " if i else ""
            yield from _pieces(k, limit)
            yield ": "
            yield from _pieces(v, limit)
        yield "}"
    elif isinstance(value, (list, tuple)):
        yield "["
        for i, v in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(v, limit)
        yield "]"
    elif isinstance(value, str):
        yield repr(value[:limit + 1])  # longer than the limit once quoted: shown() cuts it
    elif isinstance(value, int) and not isinstance(value, (bool, LongNumber)) and value.bit_length() > 4 * limit:
        yield f"<a number of about {int(value.bit_length() * 0.30103)} digits>"
    else:
        yield repr(value)


def default_dict() -> dict[str, Any]:
    return yaml_load(resources.files("vgg_cli.config").joinpath("default.yaml").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _shape() -> dict[str, Any]:
    """The defaults, read once, for looking up which keys exist and which are sections (never changed)."""
    return default_dict()


def _read_yaml(path: Path) -> dict[str, Any]:
    name = f"config file {shown(str(path))}"
    if not path.is_file():
        raise NoInputError(f"{name} not found; check the --config path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8") from None
    except OSError as e:
        raise NoInputError(f"{name} cannot be read ({e.strerror}); check its permissions") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, RefusedYAML):
            raise ConfigError(f"{name}{where}: refused: {problem}") from None
        raise ConfigError(f"{name}{where}: invalid YAML ({cut(problem)}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a YAML mapping of sections (data:, model:, ...), "
                          f"got a {type(data).__name__}")
    return data


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, dict):
            out += _dotted_keys(v, f"{prefix}{k}.")
    return out


# Names people carry over from other tools.
_ALIASES = {"lr": "learning_rate", "bs": "batch_size", "batch": "batch_size", "img_size": "image_size",
            "imgsz": "image_size", "size": "image_size", "epoch": "epochs", "freeze": "freeze_blocks",
            "backbone": "arch", "patience": "early_stopping_patience", "data_dir": "train_dir"}


def _suggest(key: str, choices: list[str]) -> str:
    head, _, leaf = key.rpartition(".")
    alias = _ALIASES.get(leaf)
    if alias is not None:
        key = f"{head}.{alias}" if head else alias
        if key in choices:
            return f" (did you mean {key!r}?)"
    # A key given in the wrong section (epochs=3 for train.epochs=3, train.learning_rate for
    # train.optimizer.learning_rate) is found by its last part before any look-alike in the section.
    everywhere = _dotted_keys(_shape())
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in everywhere if k.rsplit(".", 1)[-1] == leaf and k != key]
    same_leaf.sort(key=lambda k: (not k.startswith(head + "."), k.count(".")))
    close = (same_leaf or difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
             or difflib.get_close_matches(key, everywhere, n=1, cutoff=0.75))
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(sorted(choices))}"


# Config keys renamed or removed since they were released. Old config files, old overrides in crontabs and, above
# all, the config.yaml of every older run (read by --resume, --if-changed and model.weights=RUN) keep working: a
# renamed key's value moves to its new name, a removed key is dropped; both with a warning naming the fix. Never
# delete an entry: a run directory written before the change may be resumed years later. (None yet: every key
# vgg ever released still exists.)
RENAMED: dict[str, str] = {}  # "old.dotted.key": "new.dotted.key"
REMOVED: dict[str, str] = {}  # "old.dotted.key": what replaced it, for the warning


def upgrade_keys(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """``tree`` with RENAMED keys moved to their new names and REMOVED keys dropped (in place; also returned)."""
    for old, new in RENAMED.items():
        found, value = _pop(tree, old.split("."))
        if not found:
            continue
        if _pop(copy.deepcopy(tree), new.split("."))[0]:
            raise ConfigError(f"{source} sets both {old!r} and its new name {new!r}; keep only {new!r}")
        _merge_plain(tree, _nest(new.split("."), value))
        log.warning("%s: config key %r is now %r; its value was moved (rename it there to silence this)",
                    source, old, new)
    for old, why in REMOVED.items():
        if _pop(tree, old.split("."))[0]:
            log.warning("%s: config key %r was removed and is ignored (%s)", source, old, why)
    return tree


def _pop(tree: Any, path: list[str]) -> tuple[bool, Any]:
    for part in path[:-1]:
        tree = tree.get(part) if isinstance(tree, dict) else None
    if isinstance(tree, dict) and path[-1] in tree:
        return True, tree.pop(path[-1])
    return False, None


def _merge_plain(base: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_plain(base[key], value)
        else:
            base[key] = value


def _merge(base: dict[str, Any], over: dict[str, Any], source: str, sources: dict[str, str] | None = None,
           prefix: str = "", shape: dict[str, Any] | None = None) -> None:
    """Deep-merge ``over`` into ``base`` in place, section by section of ``shape`` (the defaults: what is a section
    is theirs to say, not what an earlier source wrote), rejecting keys they lack; each leaf's ``source`` goes into
    ``sources`` under its dotted key."""
    shape = _shape() if shape is None else shape
    sources = {} if sources is None else sources
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in shape:
            full = [f"{prefix}{k}" for k in shape]
            hint = habit_hint(str(dotted), value) or _suggest(str(dotted), full)
            raise ConfigError(f"unknown config key {shown(dotted)} in {source}{hint}")
        if isinstance(shape[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} in {source} is a section and needs a mapping of keys "
                                  f"({', '.join(shape[key])}), got {shown(value)}{habit_hint(dotted, value)}")
            _merge(base[key], value, source, sources, dotted + ".", shape[key])
        else:
            _set_leaf(base, key, value, source, sources, dotted)


def _set_leaf(base: dict[str, Any], key: str, value: Any, source: str, sources: dict[str, str], dotted: str) -> None:
    """A leaf is replaced, and blamed on ``source``; a mapping given to a leaf that already holds one (a
    ``{class: weight}`` from the file, one class from an override) is merged one level, and blamed on both."""
    old = base.get(key)
    if isinstance(value, dict) and isinstance(old, dict) and dotted in sources:
        base[key] = {**old, **value}
        if not (sources[dotted] == source or sources[dotted].endswith(f" and {source}")):
            sources[dotted] = f"{sources[dotted]} and {source}"
    else:
        base[key] = value
        sources[dotted] = source


def key_and_value(tree: dict[str, Any], loc: tuple) -> tuple[str, Any]:
    """The config key a pydantic error location is in (its leading parts that are keys of the defaults, without a
    list index or a union member's name) and the value the merged tree holds there."""
    shape, parts = _shape(), []
    for part in loc:
        if not isinstance(shape, dict) or part not in shape:
            break
        shape = shape[part]
        parts.append(str(part))
    value: Any = tree
    for part in parts:
        value = value.get(part) if isinstance(value, dict) else None
    return ".".join(parts), value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.epochs=3'`` -> (['train', 'epochs'], 3); the value is parsed as YAML (1.2 booleans)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        if os.sep in text or os.path.exists(os.path.expanduser(text)):
            raise ConfigError(f"override {shown(text)} is not key=value; for a dataset folder write "
                              f"data.train_dir={cut(text)} (or pass an existing folder first: vgg train DIR ...)")
        raise ConfigError(f"override {shown(text)} is not key=value; write e.g. train.epochs=3")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except RefusedYAML as e:
        raise ConfigError(f"override {shown(text)}: refused: {e.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"override {shown(text)}: value {shown(raw)} is not valid YAML; quote it, e.g. "
                          f"{cut(key)}='{cut(raw, 80)}'") from None
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def _empty_override(parts: list[str], value: Any, raw_empty: bool) -> Any:
    """``KEY=`` (an unset shell variable) is null where the key's default is null, and the empty text where the
    default is text, which every such key refuses: ``model.weights=`` must not quietly mean random weights."""
    default: Any = _shape()
    for part in parts:
        default = default.get(part) if isinstance(default, dict) else None
    return "" if raw_empty and isinstance(default, str) else value


def resolve_dict(config_path: str | os.PathLike | None = None,
                 overrides: tuple[str, ...] | list[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults <- user file <- overrides, merged but not yet validated. Returns (tree, dotted leaf -> the source
    that set it; a leaf left out is the defaults')."""
    tree = copy.deepcopy(default_dict())
    sources: dict[str, str] = {}
    if config_path is not None:
        path = Path(os.path.expanduser(str(config_path)))
        name = f"config file {shown(str(path))}"
        _merge(tree, upgrade_keys(_read_yaml(path), name), name, sources)
    for text in overrides:
        parts, value = parse_override(text)
        value = _empty_override(parts, value, not text.partition("=")[2].strip())
        name = f"override {shown(text)}"
        over = _nest(parts, value)
        if ".".join(parts) in RENAMED or ".".join(parts) in REMOVED:
            over = upgrade_keys(over, name)
        _merge(tree, over, name, sources)
    return tree, sources
