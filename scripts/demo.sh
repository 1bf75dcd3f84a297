#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install vgg into a virtualenv, generate the demo dataset offline,
# train on it with configs/demo.yaml, then label held-out images with the new run.
#   scripts/demo.sh                (VENV=path to use another virtualenv; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
install_vgg
VGG="$VENV/bin/vgg"

[ -d data/textures ] || "$VENV/bin/python" scripts/make_sample_data.py data/textures --per-class 60 --seed 0
[ -d data/textures-holdout ] || "$VENV/bin/python" scripts/make_sample_data.py data/textures-holdout --per-class 10 --seed 7

echo "== vgg train --config configs/demo.yaml" >&2
# Exit 3 means "trained and kept, but not promoted" (a rerun that did not beat the earlier demo run): fine here.
set +e
run_dir="$("$VGG" train --config configs/demo.yaml)"
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then exit "$rc"; fi
echo "== run directory: $run_dir" >&2

echo "== vgg predict data/textures-holdout (images the model never saw)" >&2
"$VGG" predict data/textures-holdout --run "$run_dir" --top-k 2
"$VGG" predict data/textures-holdout --run "$run_dir" --format csv 2>/dev/null | "$VENV/bin/python" -c '
import csv, sys
rows = list(csv.DictReader(sys.stdin))
right = sum(r["path"].replace("\\", "/").split("/")[-2] == r["label_1"] for r in rows)
print(f"== held-out accuracy: {right}/{len(rows)} = {right / len(rows):.0%} (chance: 25%), counting the best guess", file=sys.stderr)
unknown = [r for r in rows if r["answer"] == "unknown"]
if unknown:
    print(f"== {len(unknown)} of {len(rows)} answered unknown: their out-of-distribution score is beyond the threshold that "
          f"accepts 95% of the validation images of the run (calibration.acceptance; docs/calibration.md)", file=sys.stderr)'
echo "== report: $run_dir/report.html (open it in a browser)" >&2
