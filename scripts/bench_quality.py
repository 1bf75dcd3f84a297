"""Case q of scripts/bench.py: what vgg learns against Ultralytics' `yolo classify` (the peer, when installed) on
the same folders: scikit-learn's digit scans at 64 px in train/val/test folders (scripts/make_sample_data.py), the
programs alternated, each a fresh process; held-out (test folder) accuracy and wall time per run.

  q1  whole network from random weights, 3 epochs, batch 32        target: vgg >= the peer's accuracy, and faster
  q2  head only on a frozen random backbone, 10 epochs              target: vgg >= 0.95 held-out, and faster
  q3  digits 0-4 -> 5-9: a backbone vgg trained on 0-4 (whole network, 3 epochs), then on 5-9 head only and blocks
      4-5 (10 epochs each)                                          target: head only >= 0.757 (vgg before issue 37)

vgg runs with its defaults except what the row names (model.weights=none, the freeze, epochs, batch 32, no early
stopping). The peer: `YOLO(<TorchVision vgg16 YAML>).train(...)` with torchvision's own random initialisation (weights
null in the YAML; `pretrained=False` is left out: it re-initialises that backbone to a constant output), `freeze=1`
for head only, its defaults otherwise (optimizer auto, warm-up, augmentation), then `.val(split="test")`. q3 has no
peer row: its backbone would have to be carried into torchvision. Ultralytics is not a dependency of vgg: --peer
PYTHON names a Python that has it (default: this one when it imports ultralytics; `none`: vgg's rows only).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench_common import CHECK, ENV, measure

HERE = Path(__file__).resolve().parent
HEAD_ONLY_TARGET = 0.95
TRANSFER_BEFORE = 0.757  # head only, digits 0-4 -> 5-9, vgg at 2026-12-07 before issue 37 (README)
PEER_YAML = """# torchvision's VGG16 conv blocks (random init) + Ultralytics' Classify head
nc: 10
backbone:
  - [-1, 1, TorchVision, [512, vgg16, null, True, 2]]
head:
  - [-1, 1, Classify, [nc]]
"""
PEER_SCRIPT = """
import json, sys
from ultralytics import YOLO
yaml, data, epochs, freeze, out, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5]), sys.argv[5], int(sys.argv[6])
m = YOLO(yaml, task="classify")
m.train(data=data, epochs=epochs, imgsz=size, batch=32, device="cpu", workers=2, freeze=freeze or None, plots=False,
        project=out, name="run", exist_ok=True, seed=0, amp=False, verbose=False)
r = m.val(data=data, split="test", imgsz=size, batch=32, device="cpu", plots=False, project=out, name="test")
print("PEER_RESULT " + json.dumps({"test_accuracy": float(r.top1)}))
"""


def peer_python(given: str | None) -> str | None:
    """A Python that imports ultralytics: ``given``, else this one if it can; None when there is none (or ``given`` is
    "none": vgg's rows only)."""
    if given == "none":
        return None
    for python in ([given] if given else [sys.executable]):
        ok = subprocess.run([python, "-c", "import ultralytics"], capture_output=True, env=ENV).returncode == 0
        if ok:
            return python
        if given:
            raise SystemExit(f"bench: --peer {given} cannot import ultralytics (pip install ultralytics there)")
    return None


def size() -> int:
    return 32 if CHECK["on"] else 64


def digits(work: Path) -> dict[str, Path]:
    """{"all": 10 classes, "0-4": digits 0-4, "5-9": digits 5-9}, each a folder with train/val/test."""
    root = work / "digits"
    if not (root / "test").is_dir():
        few = ["--per-class", "4"] if CHECK["on"] else []  # --check: the script, not the numbers
        subprocess.run([sys.executable, str(HERE / "make_sample_data.py"), str(root), "--kind", "digits", "--layout",
                        "splits", "--size", str(size()), *few], check=True, capture_output=True)
    out = {"all": root}
    for name, classes in (("0-4", "01234"), ("5-9", "56789")):
        part = work / f"digits{name}"
        if not part.is_dir():
            for split in ("train", "val", "test"):
                for c in classes:
                    shutil.copytree(root / split / c, part / split / c)
        out[name] = part
    return out


def vgg_run(data: Path, work: Path, name: str, overrides: list[str]) -> dict:
    runs = work / "runs-q" / name  # a runs folder each: no promotion across these unrelated runs
    shutil.rmtree(runs, ignore_errors=True)
    cmd = [sys.executable, "-m", "vgg_cli", "train", str(data), "model.weights=none", f"data.image_size={size()}",
           "train.batch_size=32",
           "train.early_stopping_patience=0", "output.report=false", "output.tensorboard=false", f"output.dir={runs}",
           *overrides, "--json"]
    log = work / f"q-{name}.log"
    m = measure(cmd, log)
    result = json.loads([line for line in log.read_text().splitlines() if line.startswith("{")][-1])
    return {"who": "vgg", "wall_s": m["wall_s"], "test_accuracy": result["results"]["test"]["accuracy"],
            "run": result["run"]}


def peer_run(python: str, data: Path, work: Path, name: str, epochs: int, freeze: int) -> dict:
    yaml = work / "vgg16-cls.yaml"
    yaml.write_text(PEER_YAML)
    out = work / f"peer-{name}"
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"q-peer-{name}.log"
    m = measure([python, "-c", PEER_SCRIPT, str(yaml), str(data), str(epochs), str(freeze), str(out), str(size())], log)
    line = [x for x in log.read_text().splitlines() if x.startswith("PEER_RESULT ")][-1]
    return {"who": "Ultralytics", "wall_s": m["wall_s"], **json.loads(line[len("PEER_RESULT "):])}


def quality_case(work: Path, peer: str | None) -> list[dict]:
    """Rows {"case", "who", "wall_s", "test_accuracy"} of q1-q3, vgg and the peer alternated."""
    python = peer_python(peer)
    data = digits(work)
    counts = {split: sum(1 for f in (data["all"] / split).rglob("*.png")) for split in ("train", "val", "test")}
    about = (f"scikit-learn's digit scans at {size()} px: {counts['train']} train / {counts['val']} val / "
             f"{counts['test']} test (held-out) images in 10 classes, {data['all']}")
    ep = (lambda n: 1) if CHECK["on"] else (lambda n: n)
    rows = []
    runs = [("q1 whole network, random init, 3 epochs", data["all"], "whole", ep(3), ["model.freeze_blocks=[]"], 0),
            ("q2 head only, random backbone, 10 epochs", data["all"], "head", ep(10), [], 1)]
    for case, folder, name, epochs, extra, freeze in runs:
        print(f"  (q) {case} ...", flush=True)
        rows.append({"case": case, "data": about, **vgg_run(folder, work, name, [f"train.epochs={epochs}", *extra])})
        if python:
            rows.append({"case": case, "data": about, **peer_run(python, folder, work, name, epochs, freeze)})
    print("  (q) q3 the 0-4 backbone (whole network, 3 epochs) ...", flush=True)
    base = vgg_run(data["0-4"], work, "base04", [f"train.epochs={ep(3)}", "model.freeze_blocks=[]"])
    for case, name, freeze in (("q3 0-4 -> 5-9, head only, 10 epochs", "t-head", "[1,2,3,4,5]"),
                               ("q3 0-4 -> 5-9, blocks 4-5, 10 epochs", "t-blocks45", "[1,2,3]")):
        print(f"  (q) {case} ...", flush=True)
        rows.append({"case": case, "data": about, **vgg_run(data["5-9"], work, name, [
            f"model.weights={base['run']}", f"model.freeze_blocks={freeze}", f"train.epochs={ep(10)}"])})
    return rows


def format_quality(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"case q data: {rows[0]['data']}", "", "| case q | program | held-out accuracy | wall s |",
             "|---|---|---:|---:|"]
    lines += [f"| {r['case']} | {r['who']} | {r['test_accuracy']:.3f} | {r['wall_s']:.0f} |" for r in rows]
    by = {(r["case"], r["who"]): r for r in rows}
    for case in dict.fromkeys(r["case"] for r in rows):
        ours, peer = by.get((case, "vgg")), by.get((case, "Ultralytics"))
        goal = []
        if case.startswith("q2"):
            goal.append(f">= {HEAD_ONLY_TARGET}: {'met' if ours['test_accuracy'] >= HEAD_ONLY_TARGET else 'NOT met'}")
        if case.startswith("q3") and "head only" in case:
            goal.append(f">= {TRANSFER_BEFORE} (before): "
                        f"{'met' if ours['test_accuracy'] >= TRANSFER_BEFORE else 'NOT met'}")
        if peer:
            goal.append(f"accuracy vs peer {ours['test_accuracy']:.3f} / {peer['test_accuracy']:.3f}: "
                        f"{'met' if ours['test_accuracy'] >= peer['test_accuracy'] else 'NOT met'}")
            goal.append(f"{peer['wall_s'] / ours['wall_s']:.1f}x faster: "
                        f"{'met' if ours['wall_s'] < peer['wall_s'] else 'NOT met'}")
        if goal:
            lines.append(f"- {case}: " + "; ".join(goal))
    return lines
