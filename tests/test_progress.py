"""Progress outside the epochs: the feature pass reports count and rate (plain lines off a terminal)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.conftest import SIZE, make_colour_dataset, run_cli


def test_plain_lines_are_throttled_and_carry_count_and_rate():
    from vgg_cli.progress import PLAIN_EVERY_S, Progress

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.records: list[logging.LogRecord] = []

        def emit(self, record):
            self.records.append(record)

    now, seen = [0.0], Lines()
    log = logging.getLogger("vgg")
    level = log.level
    log.setLevel(logging.INFO)  # setLevel, not .level =: it clears the logger's isEnabledFor cache
    log.addHandler(seen)
    try:
        with Progress(100, "computing features", tty=False, clock=lambda: now[0]) as p:
            for _ in range(10):
                now[0] += PLAIN_EVERY_S / 4
                p.update(10)
    finally:
        log.removeHandler(seen)
        log.setLevel(level)
    lines = [r.getMessage() for r in seen.records]
    # 10 updates of 10 images, a quarter of the interval apart: a line after the 4th and the 8th, none at 100/100
    # (the caller's "features computed in" line says that); 40 images in 15 s = 2.7 img/s
    assert lines == ["computing features: 40/100 img (2.7 img/s, about 22s left)",
                     "computing features: 80/100 img (2.7 img/s, about 8s left)"]


@pytest.mark.slow
def test_the_feature_pass_of_a_run_shows_its_progress(tmp_path, monkeypatch):
    import vgg_cli.progress

    monkeypatch.setattr(vgg_cli.progress, "PLAIN_EVERY_S", 0.0)  # every batch, so a tiny run shows lines
    data = make_colour_dataset(tmp_path / "photos", per_class=8, seed=4)
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={tmp_path / 'runs'}",
                              f"data.image_size={SIZE}", "model.weights=none", "train.epochs=1",
                              "train.batch_size=8", "promote.min_accuracy=0", "output.tensorboard=false"])
    assert code == 0, err
    counts = [int(m.group(1)) for m in re.finditer(r"^computing features: (\d+)/24 img \(\d+\.\d img/s", err, re.M)]
    assert counts == [8, 16], err  # 24 images in batches of 8: after the 1st and 2nd (the 3rd ends the pass)
    assert "\r" not in err  # no bar control characters off a terminal


def test_epochs_off_a_terminal_print_a_plain_line_at_least_every_15_seconds(caplog):
    """Each line says the epoch, the batch count, the rate and the time left; none at the epoch's last batch (its
    own epoch line follows) and none on a terminal (the bar shows it there)."""
    import logging

    from vgg_cli.training.callbacks import ProgressBar

    now = [0.0]
    bar = ProgressBar(epochs=3, steps=10, batch_size=8, tty=False, clock=lambda: now[0], val_steps=4)
    with caplog.at_level(logging.INFO, logger="vgg"):
        bar.on_epoch_begin(1)
        for batch in range(10):
            now[0] += 6.0  # 6 s a batch: a line every third batch (>= 15 s since the last)
            bar.on_train_batch_end(batch, {"loss": 0.5, "accuracy": 0.75})
        bar.on_test_begin()
        for batch in range(4):
            now[0] += 6.0
            bar.on_test_batch_end(batch)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "epoch 2/3: batch 3/10, 1.3 img/s, loss 0.5000  accuracy 0.7500  about 42s left in the epoch"
    assert [line.split(",")[0] for line in lines] == ["epoch 2/3: batch 3/10", "epoch 2/3: batch 6/10",
                                                      "epoch 2/3: batch 9/10", "epoch 2/3: validating"]


@pytest.mark.slow
def test_a_cron_log_shows_progress_inside_epochs(tmp_path, monkeypatch):
    monkeypatch.setenv("VGG_HEARTBEAT_S", "0")  # every batch, so a tiny run shows lines
    data = make_colour_dataset(tmp_path / "photos", per_class=8, seed=4)
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", f"data.image_size={SIZE}",
                              "model.weights=none", "train.epochs=2", "train.batch_size=4",
                              "model.freeze_blocks=[1,2,3]", "promote.min_accuracy=0", "output.report=false"])
    assert code == 0, err
    beats = re.findall(r"^epoch 2/2: batch (\d+)/5, [\d.]+ img/s, .*about \d+s left in the epoch$", err, re.M)
    assert beats == ["1", "2", "3", "4"], err
    log = (Path(out.strip()) / "train.log").read_text()
    assert "epoch 2/2: batch 4/5" in log and "\r" not in err
