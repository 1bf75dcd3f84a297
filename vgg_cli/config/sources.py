"""Reading configuration sources: the documented defaults, a user's YAML file and ``key=value`` overrides, merged
with one error rule (an unknown key gets a did-you-mean, a malformed file one line). Validation of the merged tree
is ``vgg_cli.config.schema``'s. Nothing here imports TensorFlow."""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vgg_cli.config.habits import HABITS, habit_hint, together
from vgg_cli.config.yamltext import RefusedYAML, cut, shown, yaml_load
from vgg_cli.errors import ConfigError, NoInputError

log = logging.getLogger("vgg")


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


def leaf_keys(node: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """Every setting's dotted key (``train.epochs``, ...)."""
    node = _shape() if node is None else node
    out = []
    for key, value in node.items():
        out += leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]
    return out


def _is_key(dotted: str) -> bool:
    node: Any = _shape()
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.epochs=3'`` -> (['train', 'epochs'], 3); the value is parsed as YAML (1.2 booleans)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        if os.sep in text or os.path.exists(os.path.expanduser(text)):
            raise ConfigError(f"override {shown(text)} is not key=value; for a dataset folder write "
                              f"data.train_dir={cut(text)} (or pass an existing folder first: vgg train DIR ...)")
        habit = HABITS.get(key)
        example = f"{habit[0] if habit else key}=VALUE" if habit or _is_key(key) else "train.epochs=3"
        raise ConfigError(f"override {shown(text)} is not key=value; write e.g. {example}")
    if ("\n" in raw or "\r" in raw) and raw.lstrip()[:1] not in ("[", "{", '"', "'"):
        return key.split("."), raw  # a shell's $'...' with a line break: the text as given (YAML would fold it)
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


def _parsed(text: str) -> tuple[str, str | None, Any]:
    """(text, dotted key, value) of an override; key None when it does not parse."""
    try:
        parts, value = parse_override(text)
    except ConfigError:
        return text, None, None
    return text, ".".join(parts), value


def _merge_override(tree: dict[str, Any], text: str, sources: dict[str, str]) -> None:
    parts, value = parse_override(text)
    value = _empty_override(parts, value, not text.partition("=")[2].strip())
    name = f"override {shown(text)}"
    over = _nest(parts, value)
    if ".".join(parts) in RENAMED or ".".join(parts) in REMOVED:
        over = upgrade_keys(over, name)
    _merge(tree, over, name, sources)


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
    errors: list[str] = []
    for text in overrides:  # every wrong override in one error, not one per try
        try:
            _merge_override(tree, text, sources)
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else f"{len(errors)} overrides are wrong: " + "; ".join(
            f"({i}) {e}" for i, e in enumerate(errors, 1)) + together([_parsed(t) for t in overrides]))
    return tree, sources
