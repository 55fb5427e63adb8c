#!/usr/bin/env bash
# Install simper_rs as a user would (run after `bash scripts/dev.sh setup`, from which it takes
# the pinned versions):
#   1. the torch 2.13 wheel (built by the build backend, `pip wheel .`), into a clean venv that has
#      only torch 2.13, with no Rust toolchain on PATH;
#   2. `pip install <checkout>` into the same venv, with pip's default build isolation;
#   3. for each release in TORCH_RELEASES (default: 2.15), a fresh venv that already has that
#      torch, installed from PyPI with its CUDA wheels as a user has it: `pip install <checkout>`
#      there must build against it and leave it exactly as it was (same version, same files).
# Each is followed by scripts/smoke_test.py, run outside the checkout.
#
#   bash scripts/check_install.sh                 all of it (CI)
#   bash scripts/check_install.sh --torch 2.14    only 3., for the releases named
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
fail() { echo "$*" >&2; exit 1; }

# The torch 2.13 builds reuse scripts/dev.sh's Cargo folder (same torch release); another
# release builds in the backend's target/torch-2.N.
export CARGO_TARGET_DIR="$repo/target"
only_other_torch=0
if [ "${1:-}" = "--torch" ]; then
    shift
    only_other_torch=1
    TORCH_RELEASES="$*"
fi

if [ $only_other_torch = 0 ]; then
run "building the torch 2.13 wheel (pip wheel . through the build backend)" python -m pip wheel --no-deps --wheel-dir "$work/wheels" .
wheel=$(ls "$work"/wheels/simper_rs-*.whl)
torch_pin=$(python -m zipfile -e "$wheel" "$work/unpacked" && grep '^Requires-Dist: torch' "$work"/unpacked/simper_rs-*.dist-info/METADATA)
echo "wheel $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB), $torch_pin"
[[ $(basename "$wheel") == simper_rs-*+torch2.13-*.whl ]] || fail "the wheel's name does not carry +torch2.13"
[[ $torch_pin == "Requires-Dist: torch==2.13.*" ]] || fail "the wheel does not pin torch 2.13"
if find "$work/unpacked" -name 'libtorch*' | grep -q .; then fail "the wheel bundles libtorch"; fi

run "creating a clean venv with torch only" python3 -m venv "$work/venv"
user_python="$work/venv/bin/python"
run "installing torch and numpy into it" "$user_python" -m pip install torch numpy

# PATH without any folder that holds cargo or rustc: the wheel must not need them.
no_rust=""
IFS=: read -ra dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
    [[ -x $dir/cargo || -x $dir/rustc ]] || no_rust="${no_rust:+$no_rust:}$dir"
done
if PATH=$no_rust command -v cargo >/dev/null; then fail "could not hide cargo"; fi
run "installing the wheel (with [train]) with no Rust toolchain on PATH" env PATH="$no_rust" "$user_python" -m pip install "$wheel[train]"
(cd "$work" && PATH=$no_rust "$user_python" "$repo/scripts/smoke_test.py")

run "pip install <checkout> (default build isolation)" "$user_python" -m pip install --force-reinstall --no-deps "$repo"
(cd "$work" && "$user_python" "$repo/scripts/smoke_test.py")
rm -rf "$work/venv"
unset CARGO_TARGET_DIR
fi

# The torch stack a user of another release has: everything pinned except torch and its own
# CUDA / triton wheels, which come with that torch from PyPI.
grep -v -E '^(torch|triton|nvidia-.*|cuda-.*)==' scripts/constraints.txt >"$work/constraints-other-torch.txt"
torch_state() {  # version, location and the hash of torch's RECORD (which lists every file pip installed)
    "$1" -c "import hashlib, importlib.metadata as m, os, torch; d = m.distribution('torch'); print(torch.__version__, os.path.dirname(torch.__file__), hashlib.sha256(d.read_text('RECORD').encode()).hexdigest())"
}
for release in ${TORCH_RELEASES:-2.15}; do
    venv="$work/venv-torch$release"
    run "creating a fresh venv with torch $release (from PyPI, with its CUDA wheels)" python3 -m venv "$venv"
    run "installing torch $release and numpy into it" env PIP_CONSTRAINT="$work/constraints-other-torch.txt" \
        "$venv/bin/python" -m pip install "torch==$release.*" numpy
    before=$(torch_state "$venv/bin/python")
    run "pip install <checkout>[train] into it (default build isolation, with dependencies)" env PIP_CONSTRAINT="$work/constraints-other-torch.txt" \
        "$venv/bin/python" -m pip install "$repo[train]"
    after=$(torch_state "$venv/bin/python")
    [[ $before == "$after" ]] || fail "pip install <checkout> changed torch: before '$before', after '$after'"
    echo "torch $release kept: ${after%% *}"
    built_for=$(cd "$work" && "$venv/bin/python" -c "import simper_rs; print(simper_rs._core.TORCH_VERSION)")
    [[ $built_for == "${after%% *}" ]] || fail "simper_rs was built for torch $built_for, not the venv's ${after%% *}"
    (cd "$work" && "$venv/bin/python" "$repo/scripts/smoke_test.py")
    rm -rf "$venv"
done
