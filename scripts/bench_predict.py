"""Case d of scripts/bench.py: `vgg predict DIR` against a per-image loop and model.predict on preloaded arrays,
and one image: `vgg predict one.jpg` (the NumPy engine, then --engine keras) against a minimal Keras script (each a
fresh process; the model at --one-image-size, default 224 px)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from bench_common import CHECK, measure, measure_scripts

TIMINGS = re.compile(r"timings: import ([\d.]+)s, model load ([\d.]+)s .*, predict ([\d.]+)s")
ONE_IMAGE_TARGET_S, ONE_IMAGE_TARGET_X = 2.0, 2.3  # issue 28: at most 2 s wall, at least 2.3x the minimal script


PER_IMAGE_LOOP = r'''
import sys, time, json
t0 = time.perf_counter()
import keras, numpy as np
from vgg_cli.model.load import load_model
model = load_model(sys.argv[1]); size = int(model.input_shape[1])
files = sys.argv[3:]
t1 = time.perf_counter()
for f in files:  # what a first script does: one image at a time
    x = keras.utils.img_to_array(keras.utils.load_img(f, target_size=(size, size)))
    model.predict(x[None], verbose=0)
t2 = time.perf_counter()
json.dump({"startup_s": t1 - t0, "predict_s": t2 - t1}, open(sys.argv[2], "w"))
'''

PRELOADED = r'''
import sys, time, json
t0 = time.perf_counter()
import numpy as np
from vgg_cli.model.load import load_model
from vgg_cli.data.images import load_image
model = load_model(sys.argv[1]); size = int(model.input_shape[1])
files = sys.argv[3:]
t1 = time.perf_counter()
arrays = np.stack([load_image(f, size) for f in files]).astype("float32")
t2 = time.perf_counter()
model.predict(arrays, batch_size=32, verbose=0)
t3 = time.perf_counter()
json.dump({"startup_s": t1 - t0, "preload_s": t2 - t1, "predict_s": t3 - t2}, open(sys.argv[2], "w"))
'''

MINIMAL_ONE = r'''
import sys, keras, numpy as np
import vgg_cli.model.build  # registers the model's two small custom layers (preprocessing, class names)
model = keras.saving.load_model(sys.argv[1], compile=False)
size = int(model.input_shape[1])
x = keras.utils.img_to_array(keras.utils.load_img(sys.argv[2], target_size=(size, size)))
print(model.predict(x[None], verbose=0).argmax())
'''


def predict_case(model_file: Path, folder: Path, work: Path, repeats: int = 3,
                 one_model: Path | None = None) -> list[dict]:
    """The DIR rows on ``model_file``; the one-image rows on ``one_model`` (default the same model)."""
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    n = len(files)
    first, vgg_dir = _vgg_dir_row(model_file, folder, work)
    rows = [first]
    programs = (("per-image loop (load_img + predict)", PER_IMAGE_LOOP, "loop"),
                ("model.predict on preloaded arrays", PRELOADED, "preloaded"))
    jobs = [(script, [str(model_file), str(work / f"predict-{tag}.json"), *files], work / f"predict-{tag}.log")
            for _, script, tag in programs]
    minimal = (MINIMAL_ONE, [str(one_model or model_file), files[0]], work / "one-minimal.log")
    measured = measure_scripts(jobs + [minimal] if CHECK["on"] else jobs)  # --check: the three in one process
    for (who, _, tag), m in zip(programs, measured):
        t = json.loads((work / f"predict-{tag}.json").read_text())
        rows.append({"who": who, "wall_s": m["wall_s"], "startup_s": t["startup_s"], "predict_s": t["predict_s"],
                     "rss_mib": m["rss_mib"], "preload_s": t.get("preload_s")})
    for r in rows:
        r["img_s"] = n / r["predict_s"]
    ratio = rows[0]["img_s"] / rows[2]["img_s"]
    rows[0]["target"] = (f"{ratio:.2f}x model.predict's img/s, decoding included (target >= 0.9x) "
                         f"{'MET' if ratio >= 0.9 else 'MISSED'}")
    check = (vgg_dir, measured[2]) if CHECK["on"] else None
    one = _one_image_rows(one_model or model_file, files[0], work, repeats, check)
    return rows + one


def _vgg_run(args: list[str], log: Path) -> dict:
    """`vgg predict ARGS -v` as a fresh process: wall, peak RSS, CPU and -v's import / load / predict split."""
    m = measure([sys.executable, "-m", "vgg_cli", "predict", *args, "-v"], log)
    text = log.read_text()
    found = TIMINGS.search(text)
    engine = re.search(r"engine: (\w+)", text)
    return {**m, "import_s": float(found[1]), "load_s": float(found[2]), "predict_s": float(found[3]),
            "engine": engine[1] if engine else "keras"}


def _vgg_dir_row(model_file: Path, folder: Path, work: Path) -> tuple[dict, dict]:
    """`vgg predict DIR` on Keras (what a folder of hundreds of images gets from --engine auto), and its run."""
    v = _vgg_run([str(folder), "--model", str(model_file), "--format", "csv", "--engine", "keras"],
                 work / "predict-vgg.log")
    return {"who": "vgg predict DIR", "wall_s": v["wall_s"], "startup_s": v["import_s"] + v["load_s"],
            "predict_s": v["predict_s"], "rss_mib": v["rss_mib"]}, v


def _one_image_rows(model_file: Path, one: str, work: Path, repeats: int, check: tuple | None) -> list[dict]:
    """`vgg predict one.jpg` (--engine auto, then --engine keras) and the minimal Keras script, alternately
    ``repeats`` times (medians: start-up time is noisy). ``check`` (--check): one auto run; the Keras engine's and
    the script's figures are those of `vgg predict DIR --engine keras` and of the run that held the script."""
    auto, keras, script = [], [], []
    for _ in range(1 if check is not None else repeats):
        auto.append(_vgg_run([one, "--model", str(model_file), "--engine", "auto"], work / "one-vgg.log"))
        if check is None:
            keras.append(_vgg_run([one, "--model", str(model_file), "--engine", "keras"], work / "one-vgg-keras.log"))
            script.append(measure([sys.executable, "-c", MINIMAL_ONE, str(model_file), one], work / "one-minimal.log"))
    if check is not None:
        keras, script = [check[0]], [check[1]]
    note = f"median of {len(auto)}"
    borrowed = note + (", --check: figures of other runs" if check is not None else "")  # the Keras rows

    def med(runs, key):
        return float(np.median([r[key] for r in runs]))

    rows = []
    for who, runs in ((f"one image: vgg predict one.jpg ({auto[0]['engine']} engine, {note})", auto),
                      (f"one image: vgg predict --engine keras one.jpg ({borrowed})", keras)):
        wall, imp, load, pred = (med(runs, k) for k in ("wall_s", "import_s", "load_s", "predict_s"))
        rows.append({"who": who, "wall_s": wall, "startup_s": wall - pred, "predict_s": pred,
                     "rss_mib": runs[0]["rss_mib"], "img_s": 1 / pred,
                     "split": f"Python + CLI {wall - imp - load - pred:.2f}s, imports {imp:.2f}s, model load "
                              f"{load:.2f}s, decode + compute {pred:.2f}s"})
    wa, wb = rows[0]["wall_s"], med(script, "wall_s")
    rows.append({"who": f"one image: minimal Keras script ({borrowed})", "wall_s": wb, "rss_mib": script[0]["rss_mib"]})
    met = wa <= ONE_IMAGE_TARGET_S and wb / wa >= ONE_IMAGE_TARGET_X
    rows[0]["target"] = (f"{wa:.2f}s wall, {wb / wa:.1f}x faster than the minimal Keras script ({wb:.2f}s) "
                         f"{'MET' if met else 'MISSED'} (target: <= {ONE_IMAGE_TARGET_S:.0f} s and >= "
                         f"{ONE_IMAGE_TARGET_X}x); {rows[0]['split']}")
    rows[1]["target"] = f"{rows[1]['split']} (TensorFlow imported)"
    return rows
