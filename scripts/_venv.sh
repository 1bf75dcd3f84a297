# Sourced by scripts/demo.sh and scripts/test.sh: make (or reuse) the virtualenv $VENV (default .venv) and install
# this checkout into it with the extras given as arguments, e.g. `install_vgg test`.
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

install_vgg() {
    local spec="."
    if [ "$#" -gt 0 ]; then spec=".[$(IFS=,; echo "$*")]"; fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
}
