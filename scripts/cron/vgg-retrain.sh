#!/usr/bin/env bash
# Nightly retraining for cron or systemd: one `vgg train --if-changed`, which first finishes a run of the same
# job that was interrupted (power cut, SIGKILL, reboot), else trains only if the dataset or config changed, and
# promotes the new model only if it beats production. One JSON line per night goes to $LOG; the human log to stderr.
# Exit codes are vgg's (README):
#   0 trained and promoted, or nothing to do     3 trained, kept, not promoted (e.g. not better than guessing)
#   4 training diverged (NaN): run kept, never promoted; lower the learning rate
#   75 another run holds the lock / interrupted   65/66/74/78 data, missing input, disk, config problems
# A night killed while it was deciding promotion is finished (decided once) by the next night's run.
#
#   VGG=/srv/vgg/.venv/bin/vgg CONFIG=/srv/vgg/prod.yaml LOG=/srv/vgg/retrain.jsonl vgg-retrain.sh
set -uo pipefail
VGG="${VGG:-vgg}"
CONFIG="${CONFIG:?set CONFIG to your YAML config}"
LOG="${LOG:-/dev/stdout}"
exec "$VGG" train --config "$CONFIG" --if-changed --json >>"$LOG"
