"""Progress outside the epochs: the feature pass reports count and rate (plain lines off a terminal)."""

from __future__ import annotations

import logging
import re

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
    level, log.level = log.level, logging.INFO
    log.addHandler(seen)
    try:
        with Progress(100, "computing features", tty=False, clock=lambda: now[0]) as p:
            for _ in range(10):
                now[0] += PLAIN_EVERY_S / 4
                p.update(10)
    finally:
        log.removeHandler(seen)
        log.level = level
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
