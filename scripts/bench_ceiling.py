"""Case k of scripts/bench.py: each training path of vgg against a bare-Keras ceiling, a minimal ``model.fit`` of the
same model on the same images preloaded as NumPy arrays (no vgg code in it), at several image sizes.

Paths (vgg's settings; the ceiling builds the same layers from keras.applications):
  whole  every block trains (model.freeze_blocks=[]): the whole network runs forward and backward every epoch
  cut    blocks 1-3 frozen: vgg trains blocks 4-5 and the head on cached block-3 activations; the ceiling computes
         those activations once with blocks 1-3 (untimed, like vgg's feature pass) and fits the rest on them
  aug    every block frozen, augment.flip=horizontal: the whole network runs forward every epoch, the head trains

Both: random He-normal/Glorot backbone (model.weights=none; weights do not change the arithmetic), average
pooling, dropout 0.2, Dense(classes) on logits, Adam (1e-4 when a block trains, 1e-3 head-only), batch 32, the
same 80/20 split (the ceiling reads vgg's data.json), validation every epoch, no early stopping.
"steady img/s" = training images / mean seconds from one epoch's end to the next's (epochs 2..): for vgg the
commit of each epoch (train.log's epoch lines are written after it), so everything an epoch costs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from bench_cases import NO_FINISH
from bench_common import CHECK, make_dataset, measure, measure_scripts, read_run, steady

PATHS = {
    "whole": {"title": "whole network trains", "freeze": "[]", "lr": 1e-4, "extra": ()},
    "cut": {"title": "blocks 4-5 on cached block-3 activations", "freeze": "[1,2,3]", "lr": 1e-4, "extra": ()},
    "aug": {"title": "head only + augment.flip=horizontal", "freeze": "[1,2,3,4,5]", "lr": 1e-3,
            "extra": ("augment.flip=horizontal",)},
}
DEFAULT_SPEC = "32:300:4,64:200:3,224:40:2"
TARGET = 0.9  # vgg's steady img/s at least 90% of the ceiling's

CEILING = r'''
import json, sys, time
import numpy as np, keras
arrays, out, path, epochs, lr = sys.argv[1:6]
epochs, lr = int(epochs), float(lr)
keras.utils.set_random_seed(0)
d = np.load(arrays)
x, y, xv, yv = d["x_train"].astype("float32"), d["y_train"], d["x_val"].astype("float32"), d["y_val"]
size, classes = x.shape[1], int(max(y.max(), yv.max())) + 1
backbone = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
prep_s = 0.0
if path == "cut":  # blocks 1-3 once per image (as vgg's feature pass), then fit blocks 4-5 + head on them
    prefix = keras.Model(backbone.input, backbone.get_layer("block3_pool").output)
    t0 = time.perf_counter()
    x, xv = (prefix.predict(keras.applications.vgg16.preprocess_input(a), batch_size=32, verbose=0) for a in (x, xv))
    prep_s = time.perf_counter() - t0
    inputs = h = keras.Input(x.shape[1:])
    names = [l.name for l in backbone.layers]
    for layer in backbone.layers[names.index("block3_pool") + 1:]:
        h = layer(h)
else:
    inputs = h = keras.Input((size, size, 3))
    if path == "aug":
        h = keras.layers.RandomFlip("horizontal")(h)
    backbone.trainable = path == "whole"
    h = backbone(keras.applications.vgg16.preprocess_input(h), training=False)
h = keras.layers.GlobalAveragePooling2D()(h)
h = keras.layers.Dropout(0.2)(h)
model = keras.Model(inputs, keras.layers.Dense(classes)(h))
model.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

class Times(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []
    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.tv = time.perf_counter(), None
    def on_test_begin(self, logs=None):
        self.tv = self.tv or time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        t = time.perf_counter()
        self.rows.append({"begin": self.t0, "val_begin": self.tv or t, "end": t,
                          "val_accuracy": float(logs.get("val_accuracy", "nan"))})

times = Times()
model.fit(x, y, batch_size=32, epochs=epochs, validation_data=(xv, yv), callbacks=[times], verbose=0)
json.dump({"rows": times.rows, "n_train": len(y), "n_val": len(yv), "prep_s": prep_s}, open(out, "w"))
'''


def parse_spec(text: str) -> list[tuple[int, int, int]]:
    """'32:300:4,64:200:3' -> [(size, images, epochs), ...]; epochs at least 2 (the first is not steady)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        size, images, epochs = (int(v) for v in part.split(":"))
        if size < 32 or images < 8 or epochs < 2:
            raise ValueError(f"{part}: size >= 32 (VGG16's least), images >= 8, epochs >= 2")
        out.append((size, images, epochs))
    return out


def preload(run: Path, size: int, out: Path) -> Path:
    """The images of vgg's run as vgg decodes them (its own decoder), in its split: the ceiling's arrays."""
    from vgg_cli.data.images import load_image

    manifest = json.loads((run / "data.json").read_text())
    root = Path(manifest["train_dir"])
    parts = {}
    for split in ("train", "val"):
        files = [f for f in manifest["files"] if f["split"] == split]
        parts[f"x_{split}"] = np.stack([load_image(root / f["path"], size) for f in files])
        parts[f"y_{split}"] = np.asarray([f["label"] for f in files], np.int32)
    np.savez(out, **parts)
    return out


def run_vgg(path: str, data: Path, size: int, epochs: int, work: Path, extra: tuple[str, ...] = ()) -> dict:
    p = PATHS[path]
    runs = work / f"runs-k{size}-{path}"
    shutil.rmtree(runs, ignore_errors=True)
    cache = work / "feature-cache-k"  # its own: the other cases may run beside it (--check)
    shutil.rmtree(cache, ignore_errors=True)
    args = [f"data.train_dir={data}", f"data.image_size={size}", "model.weights=none",
            f"model.freeze_blocks={p['freeze']}", "model.head.pooling=avg", "model.head.dense=[]",
            "model.head.dropout=0.2", f"train.epochs={epochs}", "train.batch_size=32",
            f"train.optimizer.learning_rate={p['lr']}", "train.early_stopping_patience=0", "data.val_split=0.2",
            "promote.min_accuracy=0", f"output.dir={runs}", "output.name=run", f"cache.dir={cache}", *NO_FINISH,
            *p["extra"], *extra]
    m = measure([sys.executable, "-m", "vgg_cli", "train", *args], work / f"vgg-k{size}-{path}.log")
    shutil.rmtree(cache, ignore_errors=True)
    r = read_run(runs / "run")
    rows, n = r["rows"], r["summary"]["images"]["train"]
    cycle = float(np.mean(r["cycle_s"])) if r["cycle_s"] else float("nan")  # epochs 2..
    fit_s = [float(x["seconds"]) for x in rows]
    train_s = [n / float(x["images_per_sec"]) for x in rows]
    return {**m, "run": runs / "run", "n_train": n, "n_val": r["summary"]["images"].get("val", 0),
            "epoch_s": cycle, "train_s": steady(train_s), "val_s": steady(fit_s) - steady(train_s),
            "rest_s": cycle - steady(fit_s), "val_acc": float(rows[-1]["val_accuracy"]),
            "input": r["summary"].get("input") or {}}


def run_ceiling(paths: list[str], arrays: Path, size: int, epochs: int, work: Path) -> dict[str, dict]:
    """The ceiling of each path, a fresh process each (--check: one for all)."""
    outs = {p: work / f"ceiling-k{size}-{p}.json" for p in paths}
    jobs = [(CEILING, [str(arrays), str(outs[p]), p, str(epochs), str(PATHS[p]["lr"])],
             work / f"ceiling-k{size}-{p}.log") for p in paths]
    got = {}
    for path, m in zip(paths, measure_scripts(jobs)):
        r = json.loads(outs[path].read_text())
        rows = r["rows"]
        ends = [x["end"] for x in rows]
        got[path] = {**m, "n_train": r["n_train"], "n_val": r["n_val"], "epoch_s": float(np.mean(np.diff(ends))),
                     "train_s": steady([x["val_begin"] - x["begin"] for x in rows]),
                     "val_s": steady([x["end"] - x["val_begin"] for x in rows]),
                     "rest_s": float(np.mean([c - (x["end"] - x["begin"]) for c, x in zip(np.diff(ends), rows[1:])])),
                     "val_acc": rows[-1]["val_accuracy"], "input": "arrays"}
    return got


def _row(path: str, size: int, who: str, r: dict, epochs: int) -> dict:
    return {"path": PATHS[path]["title"], "size": size, "who": who, "images": f"{r['n_train']}/{r['n_val']}",
            "epochs": epochs, "epoch_s": r["epoch_s"], "img_s": r["n_train"] / r["epoch_s"], "train_s": r["train_s"],
            "val_s": r["val_s"], "rest_s": r["rest_s"], "wall_s": r["wall_s"], "val_acc": r["val_acc"]}


def ceiling_case(spec: list[tuple[int, int, int]], paths: list[str], work: Path, data_for,
                 extra: dict | None = None, runs: dict | None = None) -> list[dict]:
    """Rows for every (size, path): vgg train, then the ceiling; ``data_for(images)`` gives the dataset folder.
    With --check the ceiling programs of one size run in one process, after the first vgg run. ``extra``: more
    vgg settings by path; ``runs``: filled with vgg's results by (size, images, epochs, path)."""
    rows = []
    for size, images, epochs in spec:
        data = data_for(images)
        arrays, ceiling = None, {}
        for path in paths:
            print(f"  (k) {size} px, {PATHS[path]['title']}: vgg ...", flush=True)
            v = run_vgg(path, data, size, epochs, work, (extra or {}).get(path, ()))
            if runs is not None:
                runs[(size, images, epochs, path)] = v
            if arrays is None:
                arrays = preload(v["run"], size, work / f"ceiling-{size}px.npz")
            if path not in ceiling:
                todo = paths if CHECK["on"] else [path]
                print(f"  (k) {size} px, bare Keras fit of {', '.join(todo)} ...", flush=True)
                ceiling.update(run_ceiling(todo, arrays, size, epochs, work))
            c = ceiling[path]
            vrow, crow = _row(path, size, f"vgg train ({v['input'].get('path', '?')})", v, epochs), \
                _row(path, size, "bare Keras fit (ceiling)", c, epochs)
            ratio = vrow["img_s"] / crow["img_s"]
            vrow["ratio"] = ratio
            vrow["target"] = (f"{vrow['img_s']:.1f} vs {crow['img_s']:.1f} img/s: {ratio:.2f}x the ceiling "
                              f"(target >= {TARGET}x) {'MET' if ratio >= TARGET else 'MISSED'}")
            rows += [crow, vrow]
    return rows


def format_ceiling(rows: list[dict]) -> list[str]:
    lines = ["| path | px | program | train/val images | epochs | s/epoch (steady) | img/s | train s | val s "
             "| other s | vgg/ceiling | val acc |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        lines.append(f"| {r['path']} | {r['size']} | {r['who']} | {r['images']} | {r['epochs']} | {r['epoch_s']:.2f} "
                     f"| {r['img_s']:.3g} | {r['train_s']:.2f} | {r['val_s']:.2f} | {r['rest_s']:.2f} | {ratio} "
                     f"| {r['val_acc']:.3f} |")
    lines.append("")
    lines += [f"- {r['size']} px, {r['path']}: vgg {r['target']}" for r in rows if "target" in r]
    lines.append("")
    return lines


def dataset_for(work: Path, default_images: int, default_data: Path):
    def data_for(images: int) -> Path:
        if images == default_images:
            return default_data
        return make_dataset(work / f"data-{images}", images, seed=0)
    return data_for
