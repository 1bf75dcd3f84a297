#!/usr/bin/env python3
"""vgg against the keras.io transfer-learning recipe, on the same data, in one invocation.

    python scripts/bench.py                         # ~300 JPEGs around 500x375, 224 px, all cases (~20 min, 2 cores)
    python scripts/bench.py --images 80 --image-size 96 --cases a,d     # a quick look
    python scripts/bench.py --markdown              # print the table as Markdown too (for the README)
    python scripts/bench.py --gpu                   # vgg on JAX vs PyTorch programs on a GPU (scripts/bench_gpu.py)

Cases (the issue's targets are checked and printed with each row):
  a  all conv blocks frozen, no augmentation, 10 epochs            target: vgg >= 6x faster (wall)
  b  blocks 1-3 frozen, no augmentation, 5 epochs                   target: epochs after the first >= 1.4x faster
  c  blocks 1-3 frozen, augmentation (flip + rotation), 3 epochs   target: vgg >= 0.95x the recipe (wall)
  d  predict 500 images: `vgg predict DIR` vs a per-image loop vs model.predict on preloaded arrays
                                                                    target: vgg >= 0.9x model.predict (img/s)
  m  memory: case b (2 epochs, block-3 features on disk beyond a small cache.ram_mb) on the dataset and on one
     --scale times larger: peak RSS must not grow with the dataset

The recipe is written below as close to https://keras.io/guides/transfer_learning/ as a folder dataset allows:
image_dataset_from_directory -> .cache().prefetch(10) -> frozen VGG16 (training=False) -> GlobalAveragePooling2D ->
Dropout(0.2) -> Dense(classes), Adam, SparseCategoricalCrossentropy(from_logits=True), model.fit. vgg gets the
same settings (avg pooling, no hidden layer, dropout 0.2, Adam at the same rate, batch 32, 20% held out, no early
stopping). Both start from the same backbone weights: Keras' cached ImageNet file when it is there, otherwise one
random (He-normal) VGG16, scaled to unit-size pooled features on the bench images, saved once and loaded by both
(this machine cannot download ImageNet weights).
Every measured program is a fresh process: wall time and peak RSS (os.wait4) include Python and TensorFlow start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PREDICT_IMAGES = 500


# ------------------------------------------------------------------------------------------------ data


def make_dataset(out: Path, n: int, seed: int) -> Path:
    """n JPEGs in 4 texture classes, sizes around 500x375 (some portrait), quality 90. Reused when present."""
    from PIL import Image

    from make_sample_data import TEXTURES, texture

    marker = out / ".complete"
    if marker.is_file() and marker.read_text() == f"{n} {seed}":
        return out
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = TEXTURES[i % len(TEXTURES)]
        w, h = int(rng.integers(420, 640)), int(rng.integers(300, 480))
        if rng.random() < 0.25:
            w, h = h, w
        side = max(w, h)
        img = texture(kind, side, rng).crop((0, 0, w, h))
        (out / kind).mkdir(parents=True, exist_ok=True)
        img.save(out / kind / f"{kind}_{i:05d}.jpg", quality=90)
    marker.write_text(f"{n} {seed}")
    return out


CALIBRATE = r'''
import sys, glob, keras, numpy as np
from vgg_cli.model.build import build_backbone
from vgg_cli.model.weights import he_initialise
from vgg_cli.data.images import load_image
data, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(0)
b = build_backbone("vgg16", size)
he_initialise(b)
# ImageNet VGG16's average-pooled block-5 features are about unit scale; these random ones come out a few times
# larger (RMS ~2 on the bench images at 128 px). Scale the first kernel (biases are zero, ReLU and max pooling are
# positively homogeneous, so every later activation scales with it) to bring them to 1, so the head's learning
# rate means what it would with ImageNet weights.
files = sorted(glob.glob(f"{data}/*/*.jpg"))[:64]
x = keras.applications.vgg16.preprocess_input(np.stack([load_image(f, size) for f in files]).astype("float32"))
rms = float(np.sqrt(np.mean(np.square(np.asarray(b.predict(x, verbose=0)).mean(axis=(1, 2))))))
first = next(l for l in b.layers if isinstance(l, keras.layers.Conv2D))
first.kernel.assign(first.kernel / rms)
b.save_weights(out)
print(f"pooled-feature RMS {rms:.2f} -> 1")
'''


def backbone_weights(work: Path, data: Path, size: int) -> tuple[str, str]:
    """(path, description): Keras' cached ImageNet file if present, else a random He-normal VGG16 whose pooled
    features are brought to unit scale on the bench images, saved once."""
    from vgg_cli.cli.common import load_frameworks

    load_frameworks()  # quietly
    from vgg_cli.model.weights import keras_cache_file

    cached = keras_cache_file("vgg16")
    if cached.is_file():
        return str(cached), f"ImageNet ({cached.name})"
    path = work / f"vgg16-random-unit-{size}.weights.h5"
    if not path.is_file():
        subprocess.run([sys.executable, "-c", CALIBRATE, str(data), str(size), str(path)], check=True, env=ENV)
    return str(path), ("random He-normal VGG16 scaled to unit-size pooled features (no ImageNet weights offline), "
                       "the same file for both")


# ------------------------------------------------------------------------------------------------ measuring


def measure(cmd: list[str], log: Path, cwd: Path | None = None) -> dict:
    """Run cmd as a child; wall seconds and its own peak RSS (MiB)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise SystemExit(f"bench: {' '.join(cmd[:4])}... failed with exit {code}; see {log}")
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024}


RECIPE = r'''
import json, sys, time
t_start = time.perf_counter()
import keras, tensorflow as tf
data, size, epochs, freeze, augment, lr, weights, out, seed = sys.argv[1:10]
size, epochs, lr, augment = int(size), int(epochs), float(lr), augment == "1"
keras.utils.set_random_seed(int(seed))

# keras.io: load, resize, batch, .cache() and .prefetch(buffer_size=10).
train_ds, validation_ds = keras.utils.image_dataset_from_directory(
    data, validation_split=0.2, subset="both", seed=1337, image_size=(size, size), batch_size=32)
num_classes = len(train_ds.class_names)
train_ds = train_ds.cache().prefetch(buffer_size=10)
validation_ds = validation_ds.cache().prefetch(buffer_size=10)

data_augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])

base_model = keras.applications.VGG16(weights=None, input_shape=(size, size, 3), include_top=False)
base_model.load_weights(weights)
if freeze == "all":
    base_model.trainable = False
else:  # freeze blocks 1..k
    k = int(freeze)
    for layer in base_model.layers:
        layer.trainable = not (layer.name.startswith("block") and int(layer.name[5]) <= k)

inputs = keras.Input(shape=(size, size, 3))
x = data_augmentation(inputs) if augment else inputs
x = keras.applications.vgg16.preprocess_input(x)  # VGG16's own scaling, in place of the guide's Rescaling
x = base_model(x, training=False)
x = keras.layers.GlobalAveragePooling2D()(x)
x = keras.layers.Dropout(0.2)(x)
outputs = keras.layers.Dense(num_classes)(x)
model = keras.Model(inputs, outputs)
model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        rows.append({"epoch": epoch + 1, "seconds": time.perf_counter() - self.t, **{k: float(v) for k, v in logs.items()}})

rows = []
model.fit(train_ds, epochs=epochs, validation_data=validation_ds, callbacks=[EpochTimes()], verbose=0)
n_train = sum(int(y.shape[0]) for _, y in train_ds)
json.dump({"rows": rows, "n_train": n_train, "total_s": time.perf_counter() - t_start}, open(out, "w"))
'''


def run_recipe(case: dict, data: Path, size: int, weights: str, work: Path, seed: int = 0) -> dict:
    tag = f"-seed{seed}" if seed else ""
    out = work / f"recipe-{case['name']}{tag}.json"
    m = measure([sys.executable, "-c", RECIPE, str(data), str(size), str(case["epochs"]), case["recipe_freeze"],
                 "1" if case["augment"] else "0", str(case["lr"]), weights, str(out), str(seed)],
                work / f"recipe-{case['name']}{tag}.log")
    r = json.loads(out.read_text())
    rows = r["rows"]
    return {**m, "epoch_s": [x["seconds"] for x in rows], "val_accuracy": rows[-1]["val_accuracy"],
            "n_train": r["n_train"], "extra_s": 0.0}


def run_vgg(case: dict, data: Path, size: int, weights: str, work: Path, extra: tuple[str, ...] = (),
            tag: str = "") -> dict:
    runs = work / f"runs-{case['name']}{tag}"
    shutil.rmtree(runs, ignore_errors=True)
    args = [f"data.train_dir={data}", f"data.image_size={size}", f"model.weights={weights}",
            f"model.freeze_blocks={case['vgg_freeze']}", "model.head.pooling=avg", "model.head.dense=[]",
            "model.head.dropout=0.2", f"train.epochs={case['epochs']}", "train.batch_size=32",
            f"train.optimizer.learning_rate={case['lr']}", "train.early_stopping_patience=0", "data.val_split=0.2",
            f"output.dir={runs}", "output.name=run", f"cache.dir={work / 'feature-cache'}"]
    if case["augment"]:
        args += ["augment.flip=horizontal", "augment.rotation=0.1"]
    shutil.rmtree(work / "feature-cache", ignore_errors=True)  # every case starts cold: no reuse between cases
    m = measure([sys.executable, "-m", "vgg_cli", "train", *args, *extra], work / f"vgg-{case['name']}{tag}.log")
    summary = json.loads((runs / "run" / "summary.json").read_text())
    lines = (runs / "run" / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    rows = [dict(zip(head, line.split(","))) for line in lines[1:]]
    inp = summary.get("input") or {}
    return {**m, "epoch_s": [float(x["seconds"]) for x in rows], "val_accuracy": float(rows[-1]["val_accuracy"]),
            "n_train": summary["images"]["train"], "extra_s": float(inp.get("seconds", 0.0)), "input": inp,
            "run": runs / "run"}


CASES = {
    "a": {"name": "a", "title": "(a) all blocks frozen, no aug, 10 ep", "epochs": 10, "recipe_freeze": "all",
          "vgg_freeze": "[1,2,3,4,5]", "augment": False, "lr": 1e-3},
    "b": {"name": "b", "title": "(b) blocks 1-3 frozen, no aug, 5 ep", "epochs": 5, "recipe_freeze": "3",
          "vgg_freeze": "[1,2,3]", "augment": False, "lr": 1e-4},
    "c": {"name": "c", "title": "(c) blocks 1-3 frozen, aug, 3 ep", "epochs": 3, "recipe_freeze": "3",
          "vgg_freeze": "[1,2,3]", "augment": True, "lr": 1e-4},
}


def _later(epoch_s: list[float]) -> float:
    return float(np.mean(epoch_s[1:])) if len(epoch_s) > 1 else epoch_s[0]


def train_case(case: dict, data: Path, size: int, weights: str, work: Path, repeats: int = 3) -> list[dict]:
    print(f"  {case['title']}: recipe ...", flush=True)
    r = run_recipe(case, data, size, weights, work)
    print(f"  {case['title']}: vgg ...", flush=True)
    v = run_vgg(case, data, size, weights, work)
    seeds_note = ""
    if case["name"] == "a" and repeats > 1:  # cheap for vgg: how much the accuracy moves with the seed alone
        seeds = list(range(1, repeats))
        accs = [v["val_accuracy"]] + [run_vgg(case, data, size, weights, work, (f"train.seed={s}",), f"-seed{s}")
                                      ["val_accuracy"] for s in seeds]
        seeds_note = (f"; vgg val acc with seeds {'/'.join(map(str, [42, *seeds]))}: "
                      f"{', '.join(f'{a:.3f}' for a in accs)}")
    rows = []
    for who, x in (("keras.io recipe", r), ("vgg train", v)):
        rows.append({"case": case["title"], "who": who, "wall_s": x["wall_s"], "epoch1_s": x["epoch_s"][0] + x["extra_s"],
                     "later_s": _later(x["epoch_s"]), "img_s": x["n_train"] / _later(x["epoch_s"]),
                     "rss_mib": x["rss_mib"], "val_acc": x["val_accuracy"]})
    if case["name"] == "b":
        ratio, what, target = rows[0]["later_s"] / rows[1]["later_s"], "epochs after the first", 1.4
    else:
        ratio, what, target = r["wall_s"] / v["wall_s"], "wall", 6.0 if case["name"] == "a" else 0.95
    rows[1]["ratio"] = ratio
    rows[1]["target"] = (f"{what} {ratio:.2f}x (target >= {target}x) {'MET' if ratio >= target else 'MISSED'}"
                         f"{seeds_note}")
    rows[1]["note"] = v["input"].get("description", "")
    return rows


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
    rows = []
    log = work / "predict-vgg.log"
    m = measure([sys.executable, "-m", "vgg_cli", "predict", str(folder), "--model", str(model_file), "--format",
                 "csv", "-v"], log)
    timing = next(line for line in log.read_text().splitlines() if line.startswith("timings:"))
    found = re.match(r"timings: import ([\d.]+)s, model load ([\d.]+)s .*, predict ([\d.]+)s", timing)
    startup = float(found[1]) + float(found[2])
    vgg_predict = float(found[3])
    rows.append({"who": "vgg predict DIR", "wall_s": m["wall_s"], "startup_s": startup, "predict_s": vgg_predict,
                 "rss_mib": m["rss_mib"]})
    for who, script, tag in (("per-image loop (load_img + predict)", PER_IMAGE_LOOP, "loop"),
                             ("model.predict on preloaded arrays", PRELOADED, "preloaded")):
        out = work / f"predict-{tag}.json"
        m = measure([sys.executable, "-c", script, str(model_file), str(out), *files], work / f"predict-{tag}.log")
        t = json.loads(out.read_text())
        rows.append({"who": who, "wall_s": m["wall_s"], "startup_s": t["startup_s"], "predict_s": t["predict_s"],
                     "rss_mib": m["rss_mib"], "preload_s": t.get("preload_s")})
    for r in rows:
        r["img_s"] = n / r["predict_s"]
    ratio = rows[0]["img_s"] / rows[2]["img_s"]
    rows[0]["target"] = (f"{ratio:.2f}x model.predict's img/s, decoding included (target >= 0.9x) "
                         f"{'MET' if ratio >= 0.9 else 'MISSED'}")
    one = files[0]
    a, b = [], []
    for i in range(repeats):  # alternate, and take the median: start-up time is noisy
        a.append(measure([sys.executable, "-m", "vgg_cli", "predict", one, "--model", str(model_file)],
                         work / "one-vgg.log"))
        b.append(measure([sys.executable, "-c", MINIMAL_ONE, str(model_file), one], work / "one-minimal.log"))
    wa = float(np.median([x["wall_s"] for x in a]))
    wb = float(np.median([x["wall_s"] for x in b]))
    rows.append({"who": f"one image: vgg predict one.jpg (median of {repeats})", "wall_s": wa,
                 "rss_mib": a[0]["rss_mib"]})
    rows.append({"who": f"one image: minimal Keras script (median of {repeats})", "wall_s": wb, "rss_mib": b[0]["rss_mib"],
                 "target": f"vgg {wa:.2f}s vs script {wb:.2f}s: {wa / wb:.2f}x "
                           f"{'MET' if wa <= wb * 1.05 else 'MISSED'} (target: no more than the script, 5% noise)"})
    return rows


def memory_case(data_small: Path, data_big: Path, size: int, weights: str, work: Path, ram_mb: int) -> list[dict]:
    # Case (b)'s settings: block-3 features are large (256 KiB per image at 128 px), so anything that grew with
    # the dataset would show.
    case = dict(CASES["b"], epochs=2)
    rows = []
    for data, tag in ((data_small, "-1x"), (data_big, "-big")):
        print(f"  (m) memory, vgg on {data.name} ...", flush=True)
        v = run_vgg(dict(case, name="m"), data, size, weights, work, (f"cache.ram_mb={ram_mb}",), tag)
        inp = v["input"]
        rows.append({"who": f"vgg train, {inp['entries']} images, cache.ram_mb={ram_mb}", "wall_s": v["wall_s"],
                     "rss_mib": v["rss_mib"], "features_mib": inp["mib"], "in_ram": inp["in_ram"]})
    grow = rows[1]["rss_mib"] - rows[0]["rss_mib"]
    data_grow = rows[1]["features_mib"] - rows[0]["features_mib"]
    ok = grow < 32 + 0.1 * data_grow
    rows[1]["target"] = (f"{rows[1]['who'].split(',')[1].strip()} vs {rows[0]['who'].split(',')[1].strip()}: "
                         f"peak RSS grew {grow:+.0f} MiB while the cached features grew {data_grow:+.0f} MiB "
                         f"{'MET' if ok else 'MISSED'} (target: memory bounded by the cache, not the dataset)")
    return rows


# ------------------------------------------------------------------------------------------------ report


def format_tables(train_rows, predict_rows, mem_rows, header: str) -> str:
    lines = [header, ""]
    if train_rows:
        lines += ["| case | program | wall s | epoch 1 s | later epochs s | img/s (later) | peak RSS MiB | val acc |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in train_rows:
            lines.append(f"| {r['case']} | {r['who']} | {r['wall_s']:.1f} | {r['epoch1_s']:.1f} | {r['later_s']:.1f} | "
                         f"{r['img_s']:.1f} | {r['rss_mib']:.0f} | {r['val_acc']:.3f} |")
        lines.append("")
        for r in train_rows:
            if "target" in r:
                lines.append(f"- {r['case']}: vgg/recipe {r['target']}")
        lines.append("")
    if predict_rows:
        lines += ["| predict | wall s | start-up s | predict s | img/s | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
        for r in predict_rows:
            lines.append(f"| {r['who']} | {r['wall_s']:.1f} | {r.get('startup_s', float('nan')):.1f} | "
                         f"{r.get('predict_s', float('nan')):.1f} | {r.get('img_s', float('nan')):.1f} | "
                         f"{r['rss_mib']:.0f} |")
        lines.append("")
        lines += [f"- {r['who']}: {r['target']}" for r in predict_rows if "target" in r]
        lines.append("")
    if mem_rows:
        lines += ["| memory | wall s | peak RSS MiB | features MiB | in RAM |", "|---|---:|---:|---:|---:|"]
        for r in mem_rows:
            lines.append(f"| {r['who']} | {r['wall_s']:.1f} | {r['rss_mib']:.0f} | {r['features_mib']:.0f} | "
                         f"{r['in_ram']} |")
        lines.append("")
        lines += [f"- memory: {r['target']}" for r in mem_rows if "target" in r]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="training images (default 300; --gpu: 2048)")
    ap.add_argument("--image-size", type=int, default=224, help="model input size (default 224)")
    ap.add_argument("--predict-images", type=int, default=PREDICT_IMAGES)
    ap.add_argument("--cases", default="a,b,c,d,m", help="comma-separated subset of a,b,c,d,m")
    ap.add_argument("--scale", type=int, default=4, help="dataset size factor for the memory case (default 4)")
    ap.add_argument("--ram-mb", type=int, default=16, help="cache.ram_mb for the memory case (default 16)")
    ap.add_argument("--work", type=Path, default=Path("bench-work"), help="scratch folder (default ./bench-work)")
    ap.add_argument("--markdown", action="store_true", help="also write the tables to WORK/bench.md")
    ap.add_argument("--repeats", type=int, default=3, choices=range(1, 10), metavar="N",
                    help="one-image predictions timed N times each (median) and case (a) trained with N seeds "
                         "(default 3; 1 checks the script)")
    gpu = ap.add_argument_group("GPU mode (scripts/bench_gpu.py: vgg on JAX against PyTorch programs)")
    gpu.add_argument("--gpu", action="store_true", help="run the GPU mode instead of cases a-m")
    gpu.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    gpu.add_argument("--epochs", type=int, default=3, help="epochs of the whole-network rows (default 3)")
    gpu.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
                     help="DataLoader worker processes of the PyTorch script (default cores - 2, at most 14)")
    gpu.add_argument("--no-torch-compile", action="store_true",
                     help="leave out the torch.compile row (minutes of compiling on a CPU)")
    args = ap.parse_args()
    if args.gpu:
        from bench_gpu import main_gpu

        args.images = args.images or 2048
        return main_gpu(args)
    args.images = args.images or 300
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in "abcdm"]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from a,b,c,d,m")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    size = args.image_size
    t0 = time.perf_counter()
    print(f"bench: generating {args.images} JPEGs in {work / 'data'} ...", flush=True)
    data = make_dataset(work / "data", args.images, seed=0)
    weights, weights_desc = backbone_weights(work, data, size)
    train_rows, predict_rows, mem_rows = [], [], []
    model_for_predict = None
    for c in cases:
        if c in CASES:
            train_rows += train_case(CASES[c], data, size, weights, work, args.repeats)
            if c == "a":
                model_for_predict = work / "runs-a" / "run" / "model" / "best.keras"
    if "d" in cases:
        if model_for_predict is None or not model_for_predict.is_file():
            print("  (d) training a model to predict with (case a settings, 1 epoch) ...", flush=True)
            v = run_vgg(dict(CASES["a"], epochs=1, name="d-model"), data, size, weights, work)
            model_for_predict = v["run"] / "model" / "best.keras"
        folder = make_dataset(work / "predict-data", args.predict_images, seed=1)
        print(f"  (d) predict {args.predict_images} images ...", flush=True)
        predict_rows = predict_case(model_for_predict, folder, work, args.repeats)
    if "m" in cases:
        big = make_dataset(work / "data-big", args.images * args.scale, seed=2)
        mem_rows = memory_case(data, big, size, weights, work, args.ram_mb)
    import tensorflow as tf  # for the header only

    gpus = tf.config.list_physical_devices("GPU")
    header = (f"vgg bench, {date.today().isoformat()}: {os.cpu_count()} CPU cores ({cpu_name()}), {len(gpus) or 'no'} GPU, TensorFlow "
              f"{tf.__version__}; {args.images} JPEGs ~500x375 in 4 classes at {size} px, batch 32; backbone "
              f"weights: {weights_desc}; total bench time {(time.perf_counter() - t0) / 60:.1f} min")
    publish(format_tables(train_rows, predict_rows, mem_rows, header), work / "bench.md" if args.markdown else None)
    return 0


def cpu_name() -> str:
    if Path("/proc/cpuinfo").exists():
        return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return platform.processor()


def publish(text: str, markdown: Path | None) -> None:
    """Print the tables; with --markdown also write them to ``markdown``."""
    print()
    print(text)
    if markdown is not None:
        markdown.write_text(text + "\n")
        print(f"\nwritten to {markdown}")


if __name__ == "__main__":
    sys.exit(main())
