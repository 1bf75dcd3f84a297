"""The train job opened once (vgg_cli/training/session.py, vgg_cli/job/): one runs folder per command, and one
feature-cache decision that the writer (training's input plan) and every reader of a finished run (calibration,
the validation evaluation, promotion's comparisons, the label-issue search: all through ``open_frozen``) share."""

from __future__ import annotations

import collections
import json
import traceback
from pathlib import Path

import pytest

from tests.conftest import TRAIN_ARGS, make_colour_dataset, run_cli

SIZE = 32


@pytest.fixture(scope="module")
def little_data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("session") / "data", per_class=4, seed=5)


# (model.freeze_blocks, cache.features, finetune: (epochs, unfreeze_blocks) or None, augmentation on)
VARIANTS = [
    ("[1,2,3,4,5]", "auto", None, False),  # head only: the cut after block 5
    ("[1,2,3]", "auto", None, False),
    ("[1,2,3]", "off", None, False),  # the cache off: neither writes nor reads
    ("[2,3]", "auto", None, False),  # block 1 trains: nothing to cut
    ("[1,2,3,4,5]", "auto", (1, "[4,5]"), False),  # fine-tuning unfreezes 4-5: the finished model is cut after 3
    ("[1,2,3,4,5]", "auto", (1, "[1,2,3,4,5]"), False),  # everything unfrozen at the end
    ("[1,2,3,4,5]", "auto", None, True),  # augmentation: images every epoch, no cache to read
]


@pytest.mark.parametrize("freeze, features, finetune, augment", VARIANTS)
def test_the_writer_and_every_reader_agree_on_the_feature_cache(tmp_path, little_data, freeze, features, finetune,
                                                                augment):
    from vgg_cli.config.schema import load_config
    from vgg_cli.evaluation.frozen import open_frozen
    from vgg_cli.runs.root import RunsRoot
    from vgg_cli.runs.rundir import RunDir
    from vgg_cli.training.inputs import input_plan
    from vgg_cli.training.session import open_session

    overrides = [f"data.train_dir={little_data}", f"output.dir={tmp_path / 'runs'}", f"data.image_size={SIZE}",
                 "model.weights=none", "model.head.dense=[8]", f"model.freeze_blocks={freeze}",
                 f"cache.features={features}"]
    if finetune:
        overrides += [f"finetune.epochs={finetune[0]}", f"finetune.unfreeze_blocks={finetune[1]}"]
    if augment:
        overrides += ["augment.flip=horizontal"]
    cfg = load_config(None, overrides)
    runs = RunsRoot.of(cfg)
    session = open_session(cfg, runs)
    last = session.plan.phases[-1]  # the phase whose frozen blocks the finished model keeps
    model, _ = session.build(last)
    written = input_plan(session, model, lambda: None, last.frozen_blocks)
    try:
        run = RunDir(runs.path / "finished")
        for reader_runs in (runs, None):  # handed the job's runs folder, or finding it from the run's place
            frozen = open_frozen(model, session.cfg, run, reader_runs)
            if written.info["path"] == "features":
                assert frozen is not None, written.info
                assert str(frozen.store.dir) == written.info["cache_dir"]
                assert frozen.blocks == written.info["frozen_prefix_blocks"]
                assert all(frozen.store.valid(e.sha1) for e in session.index.files)  # the entries it will read
            else:
                assert frozen is None, (written.info, frozen and frozen.store.dir)
    finally:
        written.source.close()
    expected = {"[1,2,3,4,5]": 5, "[1,2,3]": 3}.get(freeze, 0)
    if finetune:
        expected = 3 if finetune[1] == "[4,5]" else 0
    cached = written.info["path"] == "features"
    assert cached == (features == "auto" and not augment and expected > 0), written.info
    if cached:
        assert written.info["frozen_prefix_blocks"] == expected


def _counting_runs_roots(monkeypatch) -> collections.Counter:
    """Count every RunsRoot made, by the line that made it."""
    from vgg_cli.runs import root

    made: collections.Counter = collections.Counter()
    init = root.RunsRoot.__init__

    def counted(self, path):
        init(self, path)
        caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if not f.filename.endswith("root.py"))
        made[f"{Path(caller.filename).name}:{caller.lineno}"] += 1

    monkeypatch.setattr(root.RunsRoot, "__init__", counted)
    return made


@pytest.mark.slow
def test_the_runs_folder_is_built_once_per_command(tmp_path, little_data, monkeypatch):
    made = _counting_runs_roots(monkeypatch)
    runs = tmp_path / "runs"
    args = ["train", f"data.train_dir={little_data}", f"output.dir={runs}", *TRAIN_ARGS, "train.epochs=1",
            "promote.min_accuracy=0", "--json"]
    for what, extra in (("a first run", []), ("a run judged against production", []),
                        ("a night with nothing to do", ["--if-changed"])):
        made.clear()
        code, out, err = run_cli([*args, *extra])
        assert code in (0, 3), err
        assert sum(made.values()) == 1, (what, dict(made))
    assert json.loads(out)["status"] == "nothing_to_do"
    first, second = sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != ".")
    assert json.loads((second / "summary.json").read_text())["promotion"]["production_run"] == first.name
    made.clear()
    code, out, err = run_cli(["lr-find", f"data.train_dir={little_data}", f"output.dir={runs}",
                              f"data.image_size={SIZE}", "model.weights=none", "--steps", "10", "--json"])
    assert code == 0, err
    assert sum(made.values()) == 1, dict(made)
