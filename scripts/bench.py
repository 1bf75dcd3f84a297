#!/usr/bin/env python3
"""vgg against the keras.io transfer-learning recipe and against bare-Keras ceilings, on the same data, in one
invocation.

    python scripts/bench.py                         # ~300 JPEGs around 500x375, 224 px, all cases (~40 min, 2 cores)
    python scripts/bench.py --images 80 --image-size 96 --cases a,d     # a quick look
    python scripts/bench.py --cases k --ceiling 32:160:4,64:160:3       # vgg vs bare Keras at 32 and 64 px only
    python scripts/bench.py --markdown              # print the table as Markdown too (for the README)
    python scripts/bench.py --gpu                   # vgg on JAX vs PyTorch programs on a GPU (scripts/bench_gpu.py)

Cases (the issue's targets are checked and printed with each row):
  a  all conv blocks frozen, no augmentation, 10 epochs            target: vgg >= 10x faster (wall)
  b  blocks 1-3 frozen, no augmentation, 5 epochs                   target: epochs after the first >= 1.4x faster
  c  blocks 1-3 frozen, augmentation (flip + rotation), 3 epochs   target: vgg >= 0.95x the recipe (wall)
  d  predict 500 images: `vgg predict DIR` vs a per-image loop vs model.predict on preloaded arrays
                                                                    target: vgg >= 0.9x model.predict (img/s)
     one image (a --one-image-size model): `vgg predict one.jpg` vs a minimal Keras script
                                                                    target: <= 2 s wall and >= 2.3x faster
  m  memory: case b (2 epochs, block-3 features on disk beyond a small cache.ram_mb) on the dataset and on one
     --scale times larger: peak RSS must not grow with the dataset
  k  every training path (whole network; blocks 4-5 on cached block-3 activations; head only with flip
     augmentation) against a minimal Keras model.fit of the same model on the same images preloaded as arrays,
     at each --ceiling size (scripts/bench_ceiling.py)           target: vgg >= 0.9x the ceiling (steady img/s)
  q  what it learns: vgg against Ultralytics' `yolo classify` (when installed; --peer) on digit scans, whole network
     from scratch, head only on a random backbone, and a transfer from digits 0-4 to 5-9 (scripts/bench_quality.py)
                                                                    target: held-out accuracy >= the peer's, faster
  n  a cron night with nothing to do (`vgg train --if-changed`, unchanged data and config) against a bare
     `import tensorflow` (scripts/bench_nightly.py)              target: the night <= 0.25x the import (wall)

The recipe is written below as close to https://keras.io/guides/transfer_learning/ as a folder dataset allows:
image_dataset_from_directory -> .cache().prefetch(10) -> frozen VGG16 (training=False) -> GlobalAveragePooling2D ->
Dropout(0.2) -> Dense(classes), Adam, SparseCategoricalCrossentropy(from_logits=True), model.fit. vgg gets the
same settings (avg pooling, no hidden layer, dropout 0.2, Adam at the same rate, batch 32, 20% held out, no early
stopping). Both start from the same backbone weights: Keras' cached ImageNet file when it is there, otherwise one
random (He-normal) VGG16, scaled to unit-size pooled features on the bench images, saved once and loaded by both
(this machine cannot download ImageNet weights).
Every measured program is a fresh process: wall time and peak RSS (os.wait4) include Python and TensorFlow start-up.
--check (for tests/test_bench.py) runs every case with the least work and fewer processes; its numbers are not
measurements.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import CHECK, cpu_name, load_note, make_dataset, measured_note, platform_note, publish  # noqa: E402,E501

PREDICT_IMAGES = 500
CASE_LETTERS = "abcdmknq"


def format_tables(train_rows, predict_rows, mem_rows, header: str, ceiling_rows=(), nightly_rows=(),
                  quality_rows=()) -> str:
    from bench_ceiling import format_ceiling
    from bench_nightly import format_nightly
    from bench_quality import format_quality

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
    if ceiling_rows:
        lines += format_ceiling(list(ceiling_rows))
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
    lines += format_nightly(list(nightly_rows))
    lines += format_quality(list(quality_rows))
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    from bench_ceiling import DEFAULT_SPEC, PATHS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="training images (default 300; --gpu: 2048)")
    ap.add_argument("--image-size", type=int, default=224, help="model input size (default 224)")
    ap.add_argument("--predict-images", type=int, default=PREDICT_IMAGES)
    ap.add_argument("--one-image-size", type=int, default=224,
                    help="case d: the input size of the model `vgg predict one.jpg` is timed on (default 224; a "
                         "1-epoch model is trained at it when it is not --image-size)")
    ap.add_argument("--cases", default=",".join(CASE_LETTERS), help="comma-separated subset of a,b,c,d,m,k,n,q")
    ap.add_argument("--scale", type=int, default=4, help="dataset size factor for the memory case (default 4)")
    ap.add_argument("--ram-mb", type=int, default=16, help="cache.ram_mb for the memory case (default 16)")
    ap.add_argument("--ceiling", default=DEFAULT_SPEC, metavar="SIZE:IMAGES:EPOCHS,...",
                    help=f"case k: image sizes, with the images and epochs at each (default {DEFAULT_SPEC})")
    ap.add_argument("--ceiling-paths", default=",".join(PATHS), help=f"case k: subset of {','.join(PATHS)}")
    ap.add_argument("--peer", default=None, metavar="PYTHON",
                    help="case q: a Python with ultralytics installed (default: this one, when it has it; none: vgg only)")
    ap.add_argument("--work", type=Path, default=Path("bench-work"), help="scratch folder (default ./bench-work)")
    ap.add_argument("--markdown", action="store_true", help="also write the tables to WORK/bench.md")
    ap.add_argument("--repeats", type=int, default=3, choices=range(1, 10), metavar="N",
                    help="one-image predictions timed N times each (median) and case (a) trained with N seeds "
                         "(default 3; 1 checks the script)")
    ap.add_argument("--check", action="store_true",
                    help="check the script, not speed (tests): fewer processes (case k's ceilings of one size in "
                         "one; --gpu: no warm-cache or torch-backend rerun of vgg)")
    gpu = ap.add_argument_group("GPU mode (scripts/bench_gpu.py: vgg on JAX against PyTorch programs)")
    gpu.add_argument("--gpu", action="store_true", help="run the GPU mode instead of cases a-k")
    gpu.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    gpu.add_argument("--epochs", type=int, default=3, help="epochs of the whole-network rows (default 3)")
    gpu.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
                     help="DataLoader worker processes of the PyTorch script (default cores - 2, at most 14)")
    gpu.add_argument("--no-torch-compile", action="store_true",
                     help="leave out the torch.compile row (minutes of compiling on a CPU)")
    args = ap.parse_args()
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in args.case_list if c not in CASE_LETTERS]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {','.join(CASE_LETTERS)}")
    args.paths = [p.strip() for p in args.ceiling_paths.split(",") if p.strip()]
    if not args.paths or any(p not in PATHS for p in args.paths):
        ap.error(f"--ceiling-paths: choose from {','.join(PATHS)}")
    try:
        from bench_ceiling import parse_spec

        args.ceiling_spec = parse_spec(args.ceiling)
    except ValueError as e:
        ap.error(f"--ceiling: {e}")
    return args


def run_cases(args, work: Path, data: Path) -> dict:
    """Every chosen case's rows: {"train": [...], "ceiling": [...], "predict": [...], "memory": [...]}. --check runs
    the independent groups (a-c then d; k then m) side by side."""
    import bench_cases

    out: dict = {"train": [], "ceiling": [], "predict": [], "memory": [], "nightly": [], "quality": [], "weights": ""}
    if "q" in args.case_list:
        from bench_quality import quality_case

        out["quality"] = quality_case(work, args.peer)
    if "n" in args.case_list:
        from bench_nightly import nightly_case

        out["nightly"] = nightly_case(data, work, args.repeats)
    weights = None
    if any(c in args.case_list for c in "abcdm"):
        weights, out["weights"] = bench_cases.backbone_weights(work, data, args.image_size)
    if not args.check:
        _recipe_and_predict(args, work, data, weights, out)
        _ceiling(args, work, data, out)
        _memory(args, work, data, weights, out)
        return out
    # --check: two at a time; case m's run on the dataset is case k's blocks-4-5 run when that has its settings
    from concurrent.futures import ThreadPoolExecutor

    runs: dict = {}
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(_recipe_and_predict, args, work, data, weights, out),
                pool.submit(lambda: (_ceiling(args, work, data, out, runs),
                                     _memory(args, work, data, weights, out, runs)))]
        for job in jobs:
            job.result()
    return out


def _recipe_and_predict(args, work: Path, data: Path, weights: str, out: dict) -> None:
    from bench_cases import CASES, run_vgg, train_case

    cases, size = args.case_list, args.image_size
    model_for_predict = None
    for c in cases:
        if c in CASES:
            out["train"] += train_case(CASES[c], data, size, weights, work, args.repeats)
            if c == "a":
                model_for_predict = work / "runs-a" / "run" / "model" / "best.keras"
    if "d" in cases:
        from bench_predict import predict_case

        if model_for_predict is None or not model_for_predict.is_file():
            print("  (d) training a model to predict with (case a settings, 1 epoch) ...", flush=True)
            v = run_vgg(dict(CASES["a"], epochs=1, name="d-model"), data, size, weights, work)
            model_for_predict = v["run"] / "model" / "best.keras"
        one_model = model_for_predict
        if args.one_image_size != size:
            print(f"  (d) training a {args.one_image_size} px model for one-image predict (1 epoch) ...", flush=True)
            v = run_vgg(dict(CASES["a"], epochs=1, name="d-one-model"), data, args.one_image_size, weights, work)
            one_model = v["run"] / "model" / "best.keras"
        folder = make_dataset(work / "predict-data", args.predict_images, seed=1)
        print(f"  (d) predict {args.predict_images} images ...", flush=True)
        out["predict"] = predict_case(model_for_predict, folder, work, args.repeats, one_model)


def _ceiling(args, work: Path, data: Path, out: dict, runs: dict | None = None) -> None:
    if "k" in args.case_list:
        from bench_ceiling import ceiling_case, dataset_for

        extra = {"cut": (f"cache.ram_mb={args.ram_mb}",)} if runs is not None and "m" in args.case_list else None
        out["ceiling"] = ceiling_case(args.ceiling_spec, args.paths, work, dataset_for(work, args.images, data),
                                      extra, runs)


def _memory(args, work: Path, data: Path, weights: str, out: dict, runs: dict | None = None) -> None:
    if "m" in args.case_list:
        from bench_cases import memory_case

        big = make_dataset(work / "data-big", args.images * args.scale, seed=2)
        small = (runs or {}).get((args.image_size, args.images, 2, "cut"))
        out["memory"] = memory_case(data, big, args.image_size, weights, work, args.ram_mb, small)


def main() -> int:
    args = parse_args()
    CHECK["on"] = args.check
    if args.gpu:
        from bench_gpu import main_gpu

        args.images = args.images or 2048
        return main_gpu(args)
    args.images = args.images or 300
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = None
    if set(args.case_list) - {"q"}:  # case q makes its own folders (digit scans)
        print(f"bench: generating {args.images} JPEGs in {work / 'data'} ...", flush=True)
        data = make_dataset(work / "data", args.images, seed=0)
    rows = run_cases(args, work, data)
    about = (f"{args.images} JPEGs ~500x375 in 4 classes at {args.image_size} px, batch 32; backbone weights: "
             f"{rows['weights'] or 'none (case k: random, model.weights=none)'}" if data is not None else
             "case q only (its data below)")
    header = (f"vgg bench, {date.today().isoformat()}: {os.cpu_count()} CPU cores ({cpu_name()}), "
              f"{platform_note('tensorflow')}; {about}; "
              f"total bench time {(time.perf_counter() - t0) / 60:.1f} min ({measured_note()}); {load_note()}; "
              f"command: {' '.join(['python', 'scripts/bench.py', *sys.argv[1:]])}")
    publish(format_tables(rows["train"], rows["predict"], rows["memory"], header, rows["ceiling"], rows["nightly"],
                          rows["quality"]),
            work / "bench.md" if args.markdown else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
