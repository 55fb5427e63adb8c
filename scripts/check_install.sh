#!/usr/bin/env bash
# Install simper_rs as a user would, into a clean venv that has only torch (run after
# `bash scripts/dev.sh setup`, from which it takes maturin and the pinned versions):
#   1. the wheel of `maturin build --release`, with no Rust toolchain on PATH;
#   2. `pip install <checkout>` with pip's default build isolation;
# each followed by scripts/smoke_test.py, run outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck disable=SC1091
source .venv/bin/activate
export PIP_CONSTRAINT="$repo/scripts/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=target/check_install.log
: >"$log"
run() {  # one progress line per step; the full output in $log
    local what=$1 t0=$SECONDS
    shift
    printf '%s ... ' "$what"
    if "$@" >>"$log" 2>&1; then printf 'done (%d s)\n' $((SECONDS - t0)); else printf 'FAILED\n'; tail -n 30 "$log" >&2; echo "full log: $log" >&2; exit 1; fi
}

run "building the wheel (maturin build --release)" maturin build --release --out "$work/wheels"
wheel=$(ls "$work"/wheels/simper_rs-*.whl)
torch_pin=$(python -m zipfile -e "$wheel" "$work/unpacked" && grep '^Requires-Dist: torch' "$work"/unpacked/simper_rs-*.dist-info/METADATA)
echo "wheel $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB), $torch_pin"
[[ $torch_pin == "Requires-Dist: torch==2.13.*" ]] || { echo "the wheel does not pin torch 2.13" >&2; exit 1; }
if find "$work/unpacked" -name 'libtorch*' | grep -q .; then echo "the wheel bundles libtorch" >&2; exit 1; fi

run "creating a clean venv with torch only" python3 -m venv "$work/venv"
user_python="$work/venv/bin/python"
run "installing torch and numpy into it" "$user_python" -m pip install torch numpy

# PATH without any folder that holds cargo or rustc: the wheel must not need them.
no_rust=""
IFS=: read -ra dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
    [[ -x $dir/cargo || -x $dir/rustc ]] || no_rust="${no_rust:+$no_rust:}$dir"
done
if PATH=$no_rust command -v cargo >/dev/null; then echo "could not hide cargo" >&2; exit 1; fi
run "installing the wheel (with [train]) with no Rust toolchain on PATH" env PATH="$no_rust" "$user_python" -m pip install "$wheel[train]"
(cd "$work" && PATH=$no_rust "$user_python" "$repo/scripts/smoke_test.py")

run "pip install <checkout> (default build isolation)" "$user_python" -m pip install --force-reinstall --no-deps "$repo"
(cd "$work" && "$user_python" "$repo/scripts/smoke_test.py")
