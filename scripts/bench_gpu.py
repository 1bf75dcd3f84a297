#!/usr/bin/env python3
"""GPU mode of scripts/bench.py: vgg (Keras on JAX) against the PyTorch programs people write instead.

    python scripts/bench.py --gpu                          # 2,048 JPEGs, 224 px, batch 64, 3 epochs (a GPU)
    python scripts/bench.py --gpu --images 24 --image-size 32 --batch 8 --epochs 2    # end to end on a CPU

Same generated JPEGs (bench.py's generator, ~500x375, 4 texture classes), same model (VGG16 conv blocks from a
random init, average pooling, dense 256, dropout 0.5), Adam at 1e-4, 80/20 split, batch --batch, --epochs epochs
(10 for the all-frozen row). Every program is a fresh process; "wall" includes Python and framework start-up.

vgg rows (train.backend=jax, which is what runs on the GPU machines; TensorFlow is not needed):
  whole network + flip augmentation, a cold compile cache; the same again with the cache warm (the nightly
  retrain); the same on KERAS_BACKEND=torch (when torch is installed); blocks 1-3 frozen (cached block-3
  features); all blocks frozen (cached features), 10 epochs. --check leaves out the warm-cache rerun and the
  all-frozen row (tests/test_backends.py runs both programs).
PyTorch rows (when torch is installed; torchvision's VGG16 layers when it is there, the same layers written out
otherwise): a DataLoader script (PIL decode + resize in --workers processes, random flip, bf16 autocast and
channels_last on CUDA); the same with every image decoded once into device memory (the eager compute ceiling);
that + torch.compile; backbone frozen (the conv layers run forward every epoch).

"steady img/s" = training images / mean seconds of epochs 2.. (each epoch includes its validation pass, as vgg's
do). Checks printed under the table: a warm-cache vgg run vs the DataLoader script (wall), vgg's steady state vs
eager PyTorch on preloaded images.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

TORCH_TRAIN = r'''
import json, sys, time
t_start = time.perf_counter()
import numpy as np, torch, torch.nn as nn
from PIL import Image
mode, listing, size, epochs, batch, workers, out = sys.argv[1:8]
size, epochs, batch, workers = int(size), int(epochs), int(batch), int(workers)
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
cuda = dev.type == "cuda"
torch.manual_seed(0)
torch.backends.cudnn.benchmark = True
items = json.load(open(listing))
train_items, val_items, classes = items["train"], items["val"], items["classes"]
CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

def conv_layers():
    try:
        import torchvision
        return torchvision.models.vgg16(weights=None).features, "torchvision"
    except Exception:  # torchvision missing or not matching this torch: the same layers
        layers, c = [], 3
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        return nn.Sequential(*layers), "torch.nn"

features, source = conv_layers()
model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(512, 256),
                      nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, len(classes))).to(dev)
if cuda:
    model = model.to(memory_format=torch.channels_last)
if mode == "frozen":
    for p in features.parameters():
        p.requires_grad = False
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
loss_fn = nn.CrossEntropyLoss()
mean = torch.tensor([123.68, 116.78, 103.94], device=dev).view(1, 3, 1, 1)
std = torch.tensor([58.4, 57.1, 57.4], device=dev).view(1, 3, 1, 1)

def load(path):
    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.uint8)

class Folder(torch.utils.data.Dataset):
    def __init__(self, entries, flip):
        self.entries, self.flip = entries, flip
    def __len__(self):
        return len(self.entries)
    def __getitem__(self, i):
        path, label = self.entries[i]
        a = load(path)
        if self.flip and np.random.random() < 0.5:
            a = a[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1), label

def prepare(x):
    x = (x.to(dev, non_blocking=True).float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if cuda else x

if mode in ("preloaded", "compiled"):
    def preload(entries):
        x = torch.from_numpy(np.stack([load(p) for p, _ in entries])).permute(0, 3, 1, 2).contiguous().to(dev)
        return x, torch.tensor([l for _, l in entries], device=dev)
    (xt, yt), (xv, yv) = preload(train_items), preload(val_items)
    def train_batches():
        order = torch.randperm(len(yt), device=dev)
        for s in range(0, len(yt), batch):
            i = order[s:s + batch]
            x = xt[i]
            flip = torch.rand(len(i), 1, 1, 1, device=dev) < 0.5
            yield torch.where(flip, x.flip(3), x), yt[i]
    def val_batches():
        for s in range(0, len(yv), batch):
            yield xv[s:s + batch], yv[s:s + batch]
else:
    kw = dict(batch_size=batch, num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(Folder(train_items, True), shuffle=True, drop_last=False, **kw)
    val_loader = torch.utils.data.DataLoader(Folder(val_items, False), shuffle=False, **kw)
    train_batches, val_batches = (lambda: iter(train_loader)), (lambda: iter(val_loader))

step_model = torch.compile(model) if mode == "compiled" else model
autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else (lambda: torch.autocast("cpu", enabled=False))
rows = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    model.train()
    if mode == "frozen":
        features.eval()
    for x, y in train_batches():
        x, y = prepare(x), y.to(dev)
        with autocast():
            loss = loss_fn(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    right = total = 0
    with torch.no_grad(), autocast():
        for x, y in val_batches():
            pred = step_model(prepare(x)).argmax(1).cpu()
            right += int((pred == y.cpu()).sum()); total += len(y)
    if cuda:
        torch.cuda.synchronize()
    rows.append({"epoch": epoch + 1, "seconds": time.perf_counter() - t0, "val_accuracy": right / max(total, 1)})
json.dump({"rows": rows, "n_train": len(train_items), "total_s": time.perf_counter() - t_start, "layers": source,
           "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}, open(out, "w"))
'''


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def split_listing(data: Path, out: Path, seed: int = 0) -> dict:
    """The PyTorch programs' 80/20 split of the generated folder (vgg splits by its own stable hash)."""
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    files = [(str(f), i) for i, c in enumerate(classes) for f in sorted((data / c).glob("*.jpg"))]
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = round(len(files) * 0.2)
    listing = {"classes": classes, "val": [files[i] for i in order[:n_val]],
               "train": [files[i] for i in order[n_val:]]}
    out.write_text(json.dumps(listing))
    return listing


def run_torch(modes: list[str], listing: Path, args, work: Path) -> dict[str, dict]:
    """Each mode of the PyTorch script, a fresh process each (--check: one process for all)."""
    from bench_common import measure_scripts

    jobs = [(TORCH_TRAIN, [mode, str(listing), str(args.image_size), str(args.epochs), str(args.batch),
                           str(args.workers), str(work / f"torch-{mode}.json")], work / f"torch-{mode}.log")
            for mode in modes]
    got = {}
    for mode, m in zip(modes, measure_scripts(jobs)):
        r = json.loads((work / f"torch-{mode}.json").read_text())
        got[mode] = {**m, "epoch_s": [x["seconds"] for x in r["rows"]], "val_accuracy": r["rows"][-1]["val_accuracy"],
                     "n_train": r["n_train"], "note": f"{r['layers']} layers, {r['device']}, torch {r['torch']}"}
    return got


def run_vgg(tag: str, data: Path, args, work: Path, runs: Path, freeze: str, epochs: int, augment: bool,
            backend: str = "jax") -> dict:
    from bench_cases import NO_FINISH
    from bench_common import CHECK, measure, read_run

    name = f"run-{tag}"
    shutil.rmtree(runs / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "vgg_cli", "train", f"data.train_dir={data}", f"data.image_size={args.image_size}",
           "model.weights=none", f"model.freeze_blocks={freeze}", "model.head.pooling=avg", "model.head.dense=[256]",
           "model.head.dropout=0.5", f"train.epochs={epochs}", f"train.batch_size={args.batch}",
           "train.optimizer.learning_rate=0.0001", "train.early_stopping_patience=0", "data.val_split=0.2",
           "promote.min_accuracy=0", "output.tensorboard=false", f"train.backend={backend}", f"output.dir={runs}",
           f"output.name={name}", f"cache.dir={work / 'feature-cache'}"]
    if augment:
        cmd.append("augment.flip=horizontal")
    if CHECK["on"]:
        cmd += NO_FINISH
    m = measure(cmd, work / f"vgg-{tag}.log")
    got = read_run(runs / name)
    summary, rows = got["summary"], got["rows"]
    cache = (summary.get("device") or {}).get("compile_cache") or {}
    inp = summary.get("input") or {}
    note = f"{summary['device']['backend']}, precision {summary['device']['precision']}"
    if cache:
        note += f"; compile cache {cache.get('hits')} hits, {cache.get('misses')} misses, XLA {cache.get('compile_s')} s"
    if inp.get("path") == "features":
        note += f"; features {inp.get('seconds')} s"
    timings = summary.get("timings") or {}
    if "build_s" in timings:
        note += f"; scan {timings.get('scan_s')} s, build {timings.get('build_s')} s"
    return {**m, "epoch_s": [float(r["seconds"]) for r in rows], "val_accuracy": float(rows[-1]["val_accuracy"]),
            "n_train": summary["images"]["train"], "note": note, "extra_s": float(inp.get("seconds", 0.0))}


def _steady(epoch_s: list[float]) -> float:
    return float(np.mean(epoch_s[1:])) if len(epoch_s) > 1 else epoch_s[0]


def _row(program: str, r: dict) -> dict:
    return {"program": program, "img_s": r["n_train"] / _steady(r["epoch_s"]),
            "epoch1_s": r["epoch_s"][0] + r.get("extra_s", 0.0), "wall_s": r["wall_s"], "epochs": len(r["epoch_s"]),
            "val_acc": r["val_accuracy"], "note": r["note"]}


def _header(args) -> str:
    from bench_common import SUMMARIES, cpu_name, platform_note

    keras_v = next((x["versions"].get("keras") for x in SUMMARIES if x.get("versions")), "?")
    return (f"vgg GPU bench, {date.today().isoformat()}: {platform_note('jax')}, Keras {keras_v}, {os.cpu_count()} CPU "
            f"cores ({cpu_name()}); {args.images} JPEGs ~500x375 in 4 classes at {args.image_size} px, batch "
            f"{args.batch}, {args.epochs} epochs, random VGG16 init")


def format_table(rows: list[dict], checks: list[str], header: str) -> str:
    lines = [header, "", "| program | steady img/s (epochs 2+) | first epoch s | whole run s (wall) | val acc | notes |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        rate = f"{r['img_s']:.0f}" if r["img_s"] >= 100 else f"{r['img_s']:.3g}"  # tiny runs: not "0"
        lines.append(f"| {r['program']} | {rate} | {r['epoch1_s']:.1f} | {r['wall_s']:.1f} "
                     f"({r['epochs']} ep) | {r['val_acc']:.3f} | {r['note']} |")
    return "\n".join(lines + [""] + [f"- {c}" for c in checks])


def _checks(by: dict) -> list[str]:
    out = []
    warm, loader, ceiling = by.get("warm"), by.get("loader"), by.get("preloaded")
    which = "warm-cache vgg run" if warm else "cold-cache vgg run (no warm rerun: --check)"
    warm = warm or by.get("cold")
    if warm and loader:
        ok = warm["wall_s"] <= loader["wall_s"]
        out.append(f"{which} {warm['wall_s']:.1f} s vs the DataLoader script {loader['wall_s']:.1f} s "
                   f"(target: no slower) {'MET' if ok else 'MISSED'}")
    if warm and ceiling:
        ok = warm["img_s"] >= ceiling["img_s"]
        out.append(f"vgg steady {warm['img_s']:.0f} img/s vs eager PyTorch on preloaded images "
                   f"{ceiling['img_s']:.0f} img/s (target: >=) {'MET' if ok else 'MISSED'}")
    if not loader:
        out.append("PyTorch rows skipped: torch is not installed in this Python")
    return out


def main_gpu(args) -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_common import load_note, make_dataset, measured_note, publish

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"bench --gpu: generating {args.images} JPEGs in {work / 'data'} ...", flush=True)
    data = make_dataset(work / "data", args.images, seed=0)
    runs = work / "gpu-runs"
    shutil.rmtree(runs, ignore_errors=True)  # the first run starts with an empty compile cache
    shutil.rmtree(work / "feature-cache", ignore_errors=True)
    by: dict = {}
    plan = [("cold", "vgg, whole network + flip aug (cold compile cache)", "[]", args.epochs, True, "jax")]
    if not args.check:  # --check: a rerun of the same program (tests/test_backends.py tests the compile cache)
        plan.append(("warm", "same, second run (compile cache warm)", "[]", args.epochs, True, "jax"))
    has_torch = _torch_available()
    if has_torch:  # kept by --check: the suite's only training of vgg on KERAS_BACKEND=torch
        plan.append(("torch-backend", "same, KERAS_BACKEND=torch", "[]", args.epochs, True, "torch"))
    plan.append(("b3", "vgg, blocks 1-3 frozen (cached block-3 features)", "[1,2,3]", args.epochs, False, "jax"))
    if not args.check:  # --check: tests/test_backends.py trains head-only on cached features on JAX
        plan.append(("all", "vgg, all blocks frozen (cached features), 10 ep", "[1,2,3,4,5]", 10, False, "jax"))
    rows = []
    for tag, title, freeze, epochs, augment, backend in plan:
        print(f"  {title} ...", flush=True)
        by[tag] = _row(title, run_vgg(tag, data, args, work, runs, freeze, epochs, augment, backend))
        rows.append(by[tag])
    if has_torch:
        listing = work / "torch-split.json"
        split_listing(data, listing)
        modes = [("loader", f"PyTorch: DataLoader({args.workers} workers), bf16 autocast + channels_last on CUDA"),
                 ("preloaded", "PyTorch: images preloaded on the device (eager ceiling)"),
                 ("compiled", "PyTorch: preloaded + torch.compile"),
                 ("frozen", "PyTorch: backbone frozen (forward every epoch)")]
        modes = [(mode, title) for mode, title in modes if not (mode == "compiled" and args.no_torch_compile)]
        print(f"  {', '.join(title for _, title in modes)} ...", flush=True)
        for mode, r in run_torch([mode for mode, _ in modes], listing, args, work).items():
            by[mode] = _row(dict(modes)[mode], r)
            rows.append(by[mode])
    text = format_table(rows, _checks(by), _header(args) + f"; bench time {(time.perf_counter() - t0) / 60:.1f} min "
                                     f"({measured_note()}); {load_note()}")
    publish(text, work / "bench-gpu.md" if args.markdown else None)
    return 0
