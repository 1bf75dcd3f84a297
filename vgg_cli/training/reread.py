"""Reading an unfinished run back to resume it: its config where the run is now (``moved``), its summary (or None
when damaged: state.json decides), its run.json (rebuilt when damaged) and its dataset index (its images must all
still be there)."""

from __future__ import annotations

import logging
from pathlib import Path

from vgg_cli.config.digest import config_digest
from vgg_cli.config.schema import Config, validate
from vgg_cli.config.sources import parse_override
from vgg_cli.data.index import DatasetIndex, index_from_manifest
from vgg_cli.errors import ConfigError, DataError, NoInputError, VggError
from vgg_cli.fsio import write_json
from vgg_cli.runs.rundir import RunDir
from vgg_cli.runs.summary import Summary
from vgg_cli.training import RESUME_OVERRIDES

log = logging.getLogger("vgg")



def moved(cfg: Config, root: Path, overrides: tuple[str, ...] = ()) -> Config:
    """A run's config where the run is now (``output.dir`` = its folder's parent: a run directory copied
    elsewhere writes there, never into the folder it came from), with ``overrides`` applied."""
    tree = cfg.to_dict()
    tree["output"]["dir"] = str(Path(root).resolve().parent)
    sources = {"output.dir": f"the run's place {str(Path(root).resolve().parent)[:200]!r}"}
    for text in overrides:
        keys, value = parse_override(text)
        if ".".join(keys) not in RESUME_OVERRIDES:
            raise ConfigError(f"--resume takes only {', '.join(RESUME_OVERRIDES)} as KEY=VALUE (where things are "
                              f"written), not {text[:80]!r}: a run continues with its own config.yaml")
        section = tree
        for k in keys[:-1]:
            section = section[k]
        section[keys[-1]] = value
        sources[".".join(keys)] = f"override {text[:200]!r}"
    return validate(tree, sources)


def readable_summary(paths: RunDir) -> Summary | None:
    """summary.json, or None when there is none yet or it is damaged (then state.json, the commit point, decides
    what is left to do, and the summary is written again)."""
    if not paths.summary.is_file():
        return None
    try:
        return paths.read_summary()
    except (DataError, NoInputError) as e:
        log.warning("%s; continuing from state.json and writing it again", e)
        return None


def run_info_of(cfg: Config, paths: RunDir) -> dict:
    """run.json (start time, weights, config digest), rebuilt with what is known when it is damaged."""
    try:
        info = paths.read_info()
        if isinstance(info.get("resumed"), list):
            return info
        log.warning("run info %s is not what vgg writes; rebuilding it", paths.info)
    except (DataError, NoInputError) as e:
        log.warning("%s; rebuilding it", e)
    return {"started": None, "weights": "unknown (run.json was damaged)", "config_digest": config_digest(cfg),
            "timings": {}, "resumed": []}


def load_index(paths: RunDir) -> DatasetIndex:
    """The run's dataset index from its manifest (data.json); its images must all still be there. A damaged or
    different classes.json is written again from it (predict and promotion read it)."""
    manifest = paths.read_manifest()
    try:
        index = index_from_manifest(manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"run manifest {str(paths.data)!r} is damaged ({type(e).__name__}: {e}); the run cannot be "
                        f"resumed: start a new run") from None
    missing = [e.path for e in index.files if not (index.root_of(e) / e.path).is_file()]
    if missing:
        raise DataError(f"cannot resume {paths.root.name}: {len(missing)} of its images are gone "
                        f"(e.g. {missing[0]!r}); start a new run instead")
    try:
        same = paths.read_classes() == index.classes
    except VggError:
        same = False
    if not same:
        log.warning("%s is damaged or differs from the run's manifest; writing it again from data.json",
                    paths.classes)
        write_json(paths.classes, index.classes)
    return index
