"""Case d of scripts/bench.py: `vgg predict DIR` against a per-image loop and model.predict on preloaded arrays,
and one image: `vgg predict one.jpg` against a minimal Keras script (each a fresh process)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from bench_common import CHECK, measure, measure_scripts


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


def predict_case(model_file: Path, folder: Path, work: Path, repeats: int = 3) -> list[dict]:
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    n = len(files)
    first, vgg_dir = _vgg_dir_row(model_file, folder, work)
    rows = [first]
    programs = (("per-image loop (load_img + predict)", PER_IMAGE_LOOP, "loop"),
                ("model.predict on preloaded arrays", PRELOADED, "preloaded"))
    jobs = [(script, [str(model_file), str(work / f"predict-{tag}.json"), *files], work / f"predict-{tag}.log")
            for _, script, tag in programs]
    minimal = (MINIMAL_ONE, [str(model_file), files[0]], work / "one-minimal.log")
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
    return rows + _one_image_rows(model_file, files[0], work, repeats, (vgg_dir, measured[2]) if CHECK["on"] else None)


def _vgg_dir_row(model_file: Path, folder: Path, work: Path) -> tuple[dict, dict]:
    log = work / "predict-vgg.log"
    m = measure([sys.executable, "-m", "vgg_cli", "predict", str(folder), "--model", str(model_file), "--format",
                 "csv", "-v"], log)
    timing = next(line for line in log.read_text().splitlines() if line.startswith("timings:"))
    found = re.match(r"timings: import ([\d.]+)s, model load ([\d.]+)s .*, predict ([\d.]+)s", timing)
    return {"who": "vgg predict DIR", "wall_s": m["wall_s"], "startup_s": float(found[1]) + float(found[2]),
            "predict_s": float(found[3]), "rss_mib": m["rss_mib"]}, m


def _one_image_rows(model_file: Path, one: str, work: Path, repeats: int, check: tuple | None) -> list[dict]:
    """`vgg predict one.jpg` and the minimal script, alternately ``repeats`` times. ``check``: --check's runs
    (vgg predict DIR, the same program; the script, run with the others), measured already."""
    if check is not None:
        a, b, note = [check[0]], [check[1]], ", --check: vgg predict DIR's run"
    else:
        a, b, note = [], [], ""
        for _ in range(repeats):  # alternate, and take the median: start-up time is noisy
            a.append(measure([sys.executable, "-m", "vgg_cli", "predict", one, "--model", str(model_file)],
                             work / "one-vgg.log"))
            b.append(measure([sys.executable, "-c", MINIMAL_ONE, str(model_file), one], work / "one-minimal.log"))
    wa = float(np.median([x["wall_s"] for x in a]))
    wb = float(np.median([x["wall_s"] for x in b]))
    return [{"who": f"one image: vgg predict one.jpg (median of {len(a)}{note})", "wall_s": wa,
             "rss_mib": a[0]["rss_mib"]},
            {"who": f"one image: minimal Keras script (median of {len(b)})", "wall_s": wb, "rss_mib": b[0]["rss_mib"],
             "target": f"vgg {wa:.2f}s vs script {wb:.2f}s: {wa / wb:.2f}x "
                       f"{'MET' if wa <= wb * 1.05 else 'MISSED'} (target: no more than the script, 5% noise)"}]
