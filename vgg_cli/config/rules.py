"""Config rules that look at the file system: where vgg writes must not be inside the dataset it reads."""

from __future__ import annotations

import os

from vgg_cli.config.yamltext import cut, shown
from vgg_cli.errors import ConfigError


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it, after following links (neither needs to exist)."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def check_outputs_outside_data(cfg, sources: dict[str, str]) -> None:
    """vgg only reads a dataset: runs or caches written into it would change it, and the next scan would find them
    (a class folder named after output.dir)."""
    data = [("data.train_dir", cfg.data.train_dir)] + ([("data.val_dir", cfg.data.val_dir)] if cfg.data.val_dir else [])
    outputs = [("output.dir", cfg.output.dir)] + ([("cache.dir", cfg.cache.dir)] if cfg.cache.dir else [])
    for out_key, out in outputs:
        for data_key, folder in data:
            if _inside(out, folder):
                src = sources.get(out_key, "the defaults")
                raise ConfigError(f"config key {out_key!r} = {shown(out)} from {src} is invalid: it is inside "
                                  f"{data_key} {shown(folder)}, and vgg never writes into a dataset; choose a folder "
                                  f"outside it, e.g. {out_key}={cut(_beside(folder, 'runs'))}")


def _beside(folder: str, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.realpath(folder)), name)
