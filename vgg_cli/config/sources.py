"""Reading configuration sources: the documented defaults, a user's YAML file and ``key=value`` overrides, merged
with one error rule (an unknown key gets a did-you-mean, a malformed file one line). Validation of the merged tree
is ``vgg_cli.config.schema``'s. Nothing here imports TensorFlow."""

from __future__ import annotations

import copy
import difflib
import logging
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

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


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def default_dict() -> dict[str, Any]:
    text = resources.files("vgg_cli.config").joinpath("default.yaml").read_text(encoding="utf-8")
    return yaml_load(text)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NoInputError(f"config file {str(path)!r} not found; check the --config path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8") from None
    except OSError as e:
        raise NoInputError(f"config file {str(path)!r} cannot be read ({e.strerror}); check its permissions") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r}{where}: invalid YAML ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must be a YAML mapping of sections (data:, model:, ...), "
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
    everywhere = _dotted_keys(default_dict())
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


def _merge(base: dict[str, Any], over: dict[str, Any], source: str, prefix: str = "") -> None:
    """Deep-merge ``over`` into ``base`` in place, rejecting keys that ``base`` (the defaults) lacks."""
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in base:
            full = [f"{prefix}{k}" for k in base]
            raise ConfigError(f"unknown config key {dotted!r} in {source}{_suggest(dotted, full)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} in {source} is a section and needs a mapping of keys "
                                  f"({', '.join(base[key])}), got {value!r}")
            _merge(base[key], value, source, dotted + ".")
        else:
            base[key] = value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.epochs=3'`` -> (['train', 'epochs'], 3); the value is parsed as YAML (1.2 booleans)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        if os.sep in text or os.path.exists(os.path.expanduser(text)):
            raise ConfigError(f"override {text!r} is not key=value; for a dataset folder write "
                              f"data.train_dir={text} (or pass an existing folder first: vgg train DIR ...)")
        raise ConfigError(f"override {text!r} is not key=value; write e.g. train.epochs=3")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML; quote it, e.g. {key}='{raw}'") from None
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def _leaf_sources(tree: dict[str, Any], source: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        dotted = f"{prefix}{k}"
        out[dotted] = source
        if isinstance(v, dict):
            out.update(_leaf_sources(v, source, dotted + "."))
    return out


def resolve_dict(config_path: str | os.PathLike | None = None,
                 overrides: tuple[str, ...] | list[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults <- user file <- overrides, merged but not yet validated. Returns (tree, key -> source)."""
    tree = copy.deepcopy(default_dict())
    sources: dict[str, str] = {}
    if config_path is not None:
        path = Path(os.path.expanduser(str(config_path)))
        user = upgrade_keys(_read_yaml(path), f"config file {str(path)!r}")
        _merge(tree, user, f"config file {str(path)!r}")
        sources.update(_leaf_sources(user, f"config file {str(path)!r}"))
    for text in overrides:
        parts, value = parse_override(text)
        if ".".join(parts) in RENAMED or ".".join(parts) in REMOVED:
            over = upgrade_keys(_nest(parts, value), f"override {text!r}")
            _merge(tree, over, f"override {text!r}")
            sources.update(_leaf_sources(over, f"override {text!r}"))
            continue
        _merge(tree, _nest(parts, value), f"override {text!r}")
        sources[".".join(parts)] = f"override {text!r}"
    return tree, sources


