"""YAML read safely for configs and overrides (YAML 1.2 booleans, no duplicate keys, huge numbers, alias bombs
and deep nesting refused before anything is built), and values shown in error lines (``shown``, ``cut``)."""

from __future__ import annotations

import itertools
import re
from typing import Any

import yaml


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
