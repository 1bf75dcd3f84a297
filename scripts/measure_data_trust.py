"""Measure vgg's data checks on the digit scans with planted faults (docs/data-trust.md has the figures).

    python scripts/measure_data_trust.py duplicates WORK   near-duplicate recall and false pairs (no training)
    python scripts/measure_data_trust.py leakage WORK      validation accuracy with and without leaked copies
    python scripts/measure_data_trust.py labels WORK       flipped labels found by `vgg check --labels`

WORK is a scratch folder (made, and reused between steps). The digit scans need scikit-learn. Training runs are
small: 32 px and a random backbone (no ImageNet weights offline). The labels step trains head-only (its frozen
features are what the k-fold reads); the leakage step trains the whole network for 3 epochs (a head on random
features does not learn the digits, and a model that learns nothing is not flattered by copies); each step takes
minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
KINDS = ("resaved", "smaller", "larger", "jpeg")
TRAIN_ARGS = ["data.image_size=32", "model.weights=none", "model.head.dense=[64]", "train.epochs=6", "train.batch_size=32", "train.seed=0",
              "train.early_stopping_patience=0", "output.report=true"]


def digits(work: Path, part: str = "train") -> Path:
    out = work / f"digits-{part}"
    if not out.is_dir():
        subprocess.run([sys.executable, str(HERE / "make_sample_data.py"), str(out), "--kind", "digits", "--part",
                        part], check=True)
    return out


def planted_copy(src: Path, kind: str, dest_dir: Path) -> Path:
    img = Image.open(src).convert("RGB")
    w, h = img.size
    if kind == "resaved":
        out = dest_dir / f"copy-{kind}-{src.stem}.png"
        img.save(out, compress_level=1)
    elif kind in ("smaller", "larger"):
        f = 0.9 if kind == "smaller" else 1.1
        out = dest_dir / f"copy-{kind}-{src.stem}.png"
        img.resize((round(w * f), round(h * f)), Image.Resampling.BICUBIC).save(out)
    else:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=75)
        out = dest_dir / f"copy-{kind}-{src.stem}.jpg"
        out.write_bytes(buf.getvalue())
    return out


def plant(originals: Path, dest: Path, n: int, seed: int = 0, cross_class: bool = False) -> dict[str, str]:
    """A copy of ``originals`` with ``n`` images each copied in every KIND (in its own class folder, or the next
    one with ``cross_class``); planted relpath -> its original's relpath."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(originals, dest)
    files = sorted(p.relative_to(dest) for p in dest.glob("*/*.png"))
    rng = np.random.default_rng(seed)
    planted = {}
    for i in rng.choice(len(files), n, replace=False):
        rel = files[i]
        folder = dest / (str((int(rel.parent.name) + 1) % 10) if cross_class else rel.parent.name)
        for kind in KINDS:
            copy = planted_copy(dest / rel, kind, folder)
            planted[copy.relative_to(dest).as_posix()] = rel.as_posix()
    return planted


def vgg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgg_cli", *args], capture_output=True, text=True)


def check_json(data: Path, work: Path) -> dict:
    r = vgg("check", str(data), "--json", "data.image_size=32", f"output.dir={work / 'runs-check'}")
    return json.loads(r.stdout)


def duplicates(work: Path) -> dict:
    originals = digits(work)
    data = work / "planted"
    planted = plant(originals, data, 100)
    report = check_json(data, work)
    groups = [set(g["files"]) for g in report["duplicate_groups"]]
    found = sum(any({copy, orig} <= g for g in groups) for copy, orig in planted.items())
    by_kind = {k: [0, 0] for k in KINDS}
    for copy, orig in planted.items():
        kind = copy.split("copy-")[1].split("-")[0]
        by_kind[kind][1] += 1
        by_kind[kind][0] += any({copy, orig} <= g for g in groups)
    false_pairs = sum(len([f for f in g if "copy-" not in f]) - 1 for g in groups
                      if len([f for f in g if "copy-" not in f]) > 1)
    out = {"originals": sum(1 for _ in originals.glob("*/*.png")), "planted": len(planted), "found": found,
           "recall": round(found / len(planted), 4), "by_kind": {k: f"{a}/{b}" for k, (a, b) in by_kind.items()},
           "false_pairs_among_originals": false_pairs}
    clean = check_json(originals, work)
    out["groups_among_originals_alone"] = len(clean["duplicate_groups"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["duplicates", "leakage", "labels"])
    ap.add_argument("work", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"duplicates": duplicates, "leakage": leakage, "labels": labels}[args.step](args.work)
    print(json.dumps(result, indent=2))


def train(data: Path, runs: Path, *extra: str) -> Path:
    r = vgg("train", f"data.train_dir={data}", f"output.dir={runs}", *TRAIN_ARGS, *extra)
    if r.returncode not in (0, 3):
        raise SystemExit(r.stderr[-3000:])
    return Path(r.stdout.strip().splitlines()[-1])


def leakage(work: Path) -> dict:
    """Validation = the held-out digits plus copies (resized, re-compressed) of 100 training digits: the model is
    scored with the copies (what vgg did before) and without them (what promotion now judges)."""
    train_dir, val_dir = digits(work, "train"), work / "leak-val"
    if val_dir.exists():
        shutil.rmtree(val_dir)
    shutil.copytree(digits(work, "holdout"), val_dir)
    files = sorted(train_dir.glob("*/*.png"))
    rng = np.random.default_rng(1)
    for k, i in enumerate(rng.choice(len(files), 100, replace=False)):
        planted_copy(files[i], KINDS[k % len(KINDS)], val_dir / files[i].parent.name)
    shutil.rmtree(work / "runs-leak", ignore_errors=True)
    run = train(train_dir, work / "runs-leak", f"data.val_dir={val_dir}", "model.freeze_blocks=[]", "train.epochs=3",
                "train.optimizer.learning_rate=auto")
    judged = json.loads((run / "evaluation" / "val" / "report.json").read_text())
    everything = work / "leak-all"
    r = vgg("evaluate", "--run", str(run), str(val_dir), "--out", str(everything), "--json")
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    all_report = json.loads((everything / "report.json").read_text())
    leaked = json.loads((run / "data.json").read_text())["duplicates"]["leaked"]
    return {"validation_images": all_report["images"], "leaked_found": len(leaked),
            "accuracy_with_leaked": round(all_report["accuracy"], 4),
            "accuracy_without_leaked (judged)": round(judged["accuracy"], 4), "judged_images": judged["images"],
            "promotion": json.loads((run / "summary.json").read_text())["promotion"]["evaluated_on"]}


def labels(work: Path) -> dict:
    """5 % of the 1,442 training digits moved to another class folder; the run's label_issues.csv against them."""
    data = work / "flipped"
    if data.exists():
        shutil.rmtree(data)
    shutil.copytree(digits(work, "train"), data)
    files = sorted(data.glob("*/*.png"))
    rng = np.random.default_rng(2)
    flipped = set()
    for i in rng.choice(len(files), round(0.05 * len(files)), replace=False):
        src = files[i]
        to = data / str((int(src.parent.name) + int(rng.integers(1, 10))) % 10) / src.name
        shutil.move(src, to)
        flipped.add(to.relative_to(data).as_posix())
    shutil.rmtree(work / "runs-labels", ignore_errors=True)
    run = train(data, work / "runs-labels")
    with open(run / "label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    found = [Path(r["path"]).relative_to(data).as_posix() for r in rows]
    hits = [f for f in found if f in flipped]
    split = {f["path"]: f["split"] for f in json.loads((run / "data.json").read_text())["files"]}
    by_split = {s: {"flipped": sum(split[f] == s for f in flipped), "found": sum(split[f] == s for f in hits),
                    "suspects": sum(split[f] == s for f in found)} for s in ("train", "val")}
    return {"images": len(files), "flipped": len(flipped), "suspects": len(rows), "flipped_found": len(hits),
            "recall": round(len(hits) / len(flipped), 4), "precision": round(len(hits) / max(1, len(rows)), 4),
            "by_split": by_split, "best_val_accuracy": json.loads((run / "summary.json").read_text()).get("best")}


if __name__ == "__main__":
    main()
