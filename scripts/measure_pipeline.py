"""Do vgg's two batch pipelines train at the same speed on the TensorFlow backend? tf.data (what TensorFlow runs
today) against the Python generator with a background thread (``BackgroundBatches``, what JAX and PyTorch run),
both forced on TensorFlow; the same runs alternated, in one process (TensorFlow loaded once).

    python scripts/measure_pipeline.py [--images 240] [--size 64] [--epochs 4] [--repeats 3] [--work DIR]

Two paths each: head-only on cached features (the pipeline feeds small arrays; its overhead shows) and the whole
network on images (decoding and the network dominate). Prints each run's epoch seconds (summary.json
timings.epochs_s) and the median ratio generator / tf.data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _train(data: Path, runs: Path, size: int, epochs: int, extra: list[str]) -> float:
    from tests.conftest import run_cli

    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", f"data.image_size={size}",
                              "model.weights=none", f"train.epochs={epochs}", "train.early_stopping_patience=0",
                              "output.report=false", "calibration.ood=off", "calibration.temperature=false",
                              "output.tensorboard=false", "--json", *extra])
    if code not in (0, 3):
        raise SystemExit(err[-2000:])
    return json.loads((Path(json.loads(out)["run"]) / "summary.json").read_text())["timings"]["epochs_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    from tests.conftest import make_colour_dataset
    from vgg_cli.data import pipeline
    from vgg_cli.platform.backend import load_frameworks

    load_frameworks("tensorflow")
    work = a.work or Path(tempfile.mkdtemp(prefix="vgg-pipeline-"))
    data = make_colour_dataset(work / "data", per_class=a.images // 3, seed=1)
    real = pipeline.uses_tf_data
    paths = {"head-only, cached features": ["model.freeze_blocks=[1,2,3,4,5]"],
             "whole network, images": ["model.freeze_blocks=[]", "cache.features=off"]}
    for name, extra in paths.items():
        times: dict[str, list[float]] = {"tf.data": [], "generator": []}
        for i in range(a.repeats):
            for kind in times:
                pipeline.uses_tf_data = real if kind == "tf.data" else (lambda: False)
                times[kind].append(_train(data, work / f"runs-{kind}-{i}-{len(name)}", a.size, a.epochs, extra))
        pipeline.uses_tf_data = real
        ratio = statistics.median(g / t for g, t in zip(times["generator"], times["tf.data"]))
        print(f"{name}: tf.data {times['tf.data']} s, generator {times['generator']} s; generator / tf.data "
              f"{ratio:.2f} (median of {a.repeats})")


if __name__ == "__main__":
    main()
