"""Cases a-c and m of scripts/bench.py: vgg against the keras.io transfer-learning recipe (fresh processes, the same
JPEGs and backbone weights), and vgg's peak memory on a dataset and on one --scale times larger."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench_common import CHECK, ENV, measure, read_run, steady

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


# vgg's work after training that no case measures: left out by --check (random weights, no calibration process,
# and this) and always by case k
NO_FINISH = ("output.report=false", "calibration.temperature=false", "calibration.ood=off")


def backbone_weights(work: Path, data: Path, size: int) -> tuple[str, str]:
    """(path, description): Keras' cached ImageNet file if present, else a random He-normal VGG16 whose pooled
    features are brought to unit scale on the bench images, saved once. --check: ``none``."""
    if CHECK["on"]:
        return "none", "none (random, --check)"
    from vgg_cli.platform.backend import load_frameworks

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
if weights != "none":  # (bench.py --check: random weights, no calibration)
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
    cache = work / f"feature-cache-{case['name']}{tag}"  # every case starts cold: no reuse between cases
    for folder in (runs, cache):
        shutil.rmtree(folder, ignore_errors=True)
    args = [f"data.train_dir={data}", f"data.image_size={size}", f"model.weights={weights}",
            f"model.freeze_blocks={case['vgg_freeze']}", "model.head.pooling=avg", "model.head.dense=[]",
            "model.head.dropout=0.2", f"train.epochs={case['epochs']}", "train.batch_size=32",
            f"train.optimizer.learning_rate={case['lr']}", "train.early_stopping_patience=0", "data.val_split=0.2",
            f"output.dir={runs}", "output.name=run", f"cache.dir={cache}"]
    if case["augment"]:
        args += ["augment.flip=horizontal", "augment.rotation=0.1"]
    if CHECK["on"]:
        args += NO_FINISH
    m = measure([sys.executable, "-m", "vgg_cli", "train", *args, *extra], work / f"vgg-{case['name']}{tag}.log")
    shutil.rmtree(cache, ignore_errors=True)
    run = read_run(runs / "run")
    summary, rows = run["summary"], run["rows"]
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
                     "later_s": steady(x["epoch_s"]), "img_s": x["n_train"] / steady(x["epoch_s"]),
                     "rss_mib": x["rss_mib"], "val_acc": x["val_accuracy"]})
    if case["name"] == "b":
        ratio, what, target = rows[0]["later_s"] / rows[1]["later_s"], "epochs after the first", 1.4
    else:
        ratio, what, target = r["wall_s"] / v["wall_s"], "wall", 10.0 if case["name"] == "a" else 0.95
    rows[1]["ratio"] = ratio
    rows[1]["target"] = (f"{what} {ratio:.2f}x (target >= {target}x) {'MET' if ratio >= target else 'MISSED'}"
                         f"{seeds_note}")
    rows[1]["note"] = v["input"].get("description", "")
    return rows


def memory_case(data_small: Path, data_big: Path, size: int, weights: str, work: Path, ram_mb: int,
                small: dict | None = None) -> list[dict]:
    """Case (b)'s settings: block-3 features are large (256 KiB per image at 128 px), so anything that grew with
    the dataset would show. ``small``: the run on ``data_small`` when one was made already (--check: case k's)."""
    case = dict(CASES["b"], epochs=2)
    rows = []
    for data, tag in ((data_small, "-1x"), (data_big, "-big")):
        if small is not None and tag == "-1x":
            v = small
        else:
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
