"""What every part of scripts/bench.py shares: the generated JPEGs, measuring a fresh process, reading a vgg run's
epochs, the machine's name, printing the tables."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
MEASURED: list[dict] = []  # every program measure() ran
SUMMARIES: list[dict] = []  # every vgg run's summary.json read_run() read (versions and devices for the headers)


def make_dataset(out: Path, n: int, seed: int) -> Path:
    """n JPEGs in 4 texture classes, sizes around 500x375 (some portrait), quality 90. Reused when present."""
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


def measure(cmd: list[str], log: Path, cwd: Path | None = None) -> dict:
    """Run cmd as a child; wall seconds, its own peak RSS (MiB) and CPU seconds (user + system)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise SystemExit(f"bench: {' '.join(cmd[:4])}... failed with exit {code}; see {log}")
    m = {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}
    MEASURED.append({**m, "name": log.stem})
    return m


def measured_note() -> str:
    """How many programs this bench ran and their CPU time (user + system, children included)."""
    each = (": " + ", ".join(f"{m['name']} {m['cpu_s']:.0f}" for m in MEASURED)) if CHECK["on"] else ""
    return f"{len(MEASURED)} programs, {sum(m['cpu_s'] for m in MEASURED):.0f} CPU s{each}"


CHECK: dict = {"on": False}  # bench.py --check: check the script with the least work (see measure_scripts)

MULTI = r'''
import json, sys
for code, argv in json.loads(sys.argv[1]):  # bench.py --check: several programs in one interpreter
    sys.argv = ["-c", *argv]
    exec(compile(code, "<bench program>", "exec"), {"__name__": "__main__"})
'''


def measure_scripts(jobs: list[tuple[str, list[str], Path]]) -> list[dict]:
    """Each (Python source, its arguments, log) as a fresh ``python -c`` process, one after the other; with
    --check all of them in one process (one start-up; its figures then stand for every one of them)."""
    if not CHECK["on"] or len(jobs) < 2:
        return [measure([sys.executable, "-c", code, *args], log) for code, args, log in jobs]
    m = measure([sys.executable, "-c", MULTI, json.dumps([[code, args] for code, args, _ in jobs])], jobs[0][2])
    return [m] * len(jobs)


def read_run(run: Path) -> dict:
    """A finished vgg run's summary.json, its metrics.csv rows and the seconds between consecutive epochs' commits
    (train.log's ``epoch N/M`` lines, written after each commit: everything an epoch costs, checkpoint included)."""
    summary = json.loads((run / "summary.json").read_text())
    SUMMARIES.append(summary)
    lines = (run / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    rows = [dict(zip(head, line.split(","))) for line in lines[1:]]
    stamps = []
    log = run / "train.log"
    for line in (log.read_text().splitlines() if log.is_file() else []):
        parts = line.split(" ", 4)
        # "epoch 2/3  accuracy ...", not a progress line inside an epoch ("epoch 2/3: batch 5/9, ...")
        if len(parts) == 5 and parts[3] == "epoch" and re.fullmatch(r"\d+/\d+", parts[4].split(" ", 1)[0]):
            stamps.append(datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return {"summary": summary, "rows": rows, "cycle_s": list(np.diff(stamps)) if len(stamps) == len(rows) else []}


def platform_note(backend: str) -> str:
    """'<n> GPU, <Framework> <version>' from the vgg runs' summaries (no framework imported here)."""
    from importlib.metadata import PackageNotFoundError, version

    summary = next((s for s in SUMMARIES if (s.get("versions") or {}).get("backend") == backend), None)
    if summary is not None:
        gpus = (summary.get("device") or {}).get("gpus") or []
        found = summary["versions"].get(backend, "?")
    else:
        gpus = []
        try:
            found = version(backend)
        except PackageNotFoundError:
            found = "?"
    where = f"{len(gpus)} GPU ({gpus[0].get('name')})" if gpus else "no GPU"
    return f"{where}, {backend} {found}"


def steady(epoch_s: list[float]) -> float:
    """Mean seconds of the epochs after the first (the first alone when there is one)."""
    return float(np.mean(epoch_s[1:])) if len(epoch_s) > 1 else epoch_s[0]


def cpu_name() -> str:
    if Path("/proc/cpuinfo").exists():
        return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return platform.processor()


def load_note() -> str:
    """The machine's load average when the tables are printed (other jobs on the cores slow every program)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return ""
    return f"load average {one:.1f}/{five:.1f}/{fifteen:.1f} (1/5/15 min) at the end"


def publish(text: str, markdown: Path | None) -> None:
    """Print the tables; with --markdown also write them to ``markdown``."""
    print()
    print(text)
    if markdown is not None:
        markdown.write_text(text + "\n")
        print(f"\nwritten to {markdown}")
