#!/usr/bin/env bash
# Nightly retraining wrapper for cron or systemd: resume an interrupted run if there is one, otherwise train
# only if the dataset or config changed; log one JSON line per night. Exit codes are vgg's (README):
#   0 trained and promoted, or nothing to do     3 trained, kept, not promoted
#   75 another run holds the lock / interrupted   65/66/74/78 data, missing input, disk, config problems
#
#   VGG=/opt/vgg/.venv/bin/vgg CONFIG=/etc/vgg/prod.yaml LOG=/var/log/vgg/retrain.jsonl vgg-retrain.sh
set -uo pipefail
VGG="${VGG:-vgg}"
CONFIG="${CONFIG:?set CONFIG to your YAML config}"
LOG="${LOG:-/dev/stdout}"

# An interrupted run (power cut, SIGKILL, reboot) is finished first; "no unfinished run" (66) is the normal case.
"$VGG" train --config "$CONFIG" --resume --json >>"$LOG"
rc=$?
if [ "$rc" -ne 66 ]; then
    exit "$rc"
fi
"$VGG" train --config "$CONFIG" --if-changed --json >>"$LOG"
