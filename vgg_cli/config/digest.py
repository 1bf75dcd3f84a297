"""What makes two trainings the same job (``--if-changed`` compares it): a digest of the resolved config, less what
does not change the result. The exclusions are declared next to the fields, in ``vgg_cli.config.schema``: a
section marked ``NOT_IN_DIGEST`` (where things are written, caches) and keys marked ``Since(old)``, added after
runs existed, which at ``old`` (the value that means what runs before them did) are left out, so those runs keep
their digest; a section that is then empty is left out too."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from vgg_cli.config.schema import NOT_IN_DIGEST, Config, Since


def _markers(model: type[BaseModel], name: str) -> list[Any]:
    return list(model.model_fields[name].metadata)


def digest_tree(cfg: Config) -> dict[str, Any]:
    """The config as the digest sees it."""
    tree = cfg.to_dict()
    for name in list(tree):
        if NOT_IN_DIGEST in _markers(Config, name):
            tree.pop(name)
            continue
        _drop_old(getattr(cfg, name), tree[name])
        if not tree[name]:
            tree.pop(name)
    return tree


def _drop_old(section: BaseModel, tree: dict[str, Any]) -> None:
    """Leave out of ``tree`` (``section`` as a dict) the keys at their ``Since`` old value, in nested sections too
    (``model.head.norm``); a nested section keeps its place even when emptied."""
    for key in list(tree):
        value = getattr(section, key)
        if isinstance(value, BaseModel):
            _drop_old(value, tree[key])
            continue
        since = [m for m in _markers(type(section), key) if isinstance(m, Since)]
        if since and tree[key] == since[0].old:
            tree.pop(key)


def config_digest(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(digest_tree(cfg), sort_keys=True).encode()).hexdigest()
