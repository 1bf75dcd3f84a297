#!/usr/bin/env bash
# Install vgg with its test extra into a virtualenv and run the whole test suite.
#   scripts/test.sh [pytest args...]        (VENV=path to use another virtualenv; default .venv)
# Exits non-zero when any test fails, and also when pytest collects no tests (its exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
install_vgg test
# The report tests load report.html in a real headless browser: Debian's chromium package.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "installing chromium (the headless browser the report tests use) with apt-get..." >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || {
        $SUDO apt-get update -qq >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    }
fi
# The suite runs on several processes (pytest-xdist), one test file at a time per process, so that one file's
# module fixtures are built once; most of a test's time is Python, TensorFlow or JAX starting in a subprocess,
# which a second process overlaps. VGG_TEST_WORKERS=1 runs in one process; -n on the command line wins.
workers="${VGG_TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
[ "$workers" -le 4 ] || workers=4
parallel=()
case " $* " in
    *" -n "* | *" -n"[0-9a]* | *" --numprocesses"* | *" -p no:xdist "*) ;;
    *) [ "$workers" -le 1 ] || parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder) ;;
esac
set +e
"$VENV/bin/python" -m pytest "${parallel[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests; that is a failure, not a pass" >&2
    exit 1
fi
exit "$rc"
