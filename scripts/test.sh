#!/usr/bin/env bash
# Install vgg with its test extra into a virtualenv and run the whole test suite.
#   scripts/test.sh [pytest args...]        (VENV=path to use another virtualenv; default .venv)
# Exits non-zero when any test fails, and also when pytest collects no tests (its exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
install_vgg test
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests; that is a failure, not a pass" >&2
    exit 1
fi
exit "$rc"
