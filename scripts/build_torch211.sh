#!/usr/bin/env bash
# Build simper_rs against torch 2.11 (variants/torch-2.11: tch 0.24) for CPython 3.12, and pack
# it with the Python sources into dist/torch-2.11/ (ready for PYTHONPATH on a machine that has
# Python 3.12 and torch 2.11 of its own, such as the GPU machine of benchmarks/gpu_check.sh).
#
#   bash scripts/build_torch211.sh           build and pack
#   bash scripts/build_torch211.sh --check   only compile the variant (what CI runs)
#
# torch 2.11 is fetched from PyPI into .venv-torch211 (without its CUDA wheels: libtorch's
# headers and libraries are all the build needs; the CUDA libraries, which `import torch` wants,
# are borrowed from .venv's torch 2.13, which `scripts/dev.sh setup` creates).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${TORCH211_VENV:-.venv-torch211}
MAIN_VENV=${MAIN_VENV:-.venv}
PY_VERSION=${PY_VERSION:-3.12}

if [ ! -x "$MAIN_VENV/bin/python" ]; then
    echo "run 'bash scripts/dev.sh setup' first (this build borrows .venv's CUDA libraries)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.11.')" 2>/dev/null; then
    # torch's own pure-Python needs first, then torch alone (no CUDA wheels: see above).
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check typing_extensions sympy filelock networkx jinja2 fsspec
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "torch==2.11.0"
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
    main_site=$("$MAIN_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
    # Appended after the venv's own packages: torch 2.11 stays first, the nvidia/* CUDA
    # libraries (same CUDA 13 sonames) come from the main venv.
    echo "$main_site" > "$site/zz_cuda_libraries_from_main_venv.pth"
fi
"$VENV/bin/python" -c "import torch; print('building against torch', torch.__version__)"

# pyo3 for CPython $PY_VERSION without that interpreter here (an extension module never links
# libpython on Linux, so the version is all pyo3 needs).
mkdir -p target
cat > target/pyo3-cp${PY_VERSION/./}.txt <<CONFIG
implementation=CPython
version=$PY_VERSION
shared=true
abi3=false
lib_name=python$PY_VERSION
pointer_width=64
build_flags=
suppress_build_script_link_lines=false
CONFIG

VENV=$(cd "$VENV" && pwd)
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" LIBTORCH_USE_PYTORCH=1
export PYO3_CONFIG_FILE="$ROOT/target/pyo3-cp${PY_VERSION/./}.txt"
MANIFEST=variants/torch-2.11/Cargo.toml
if [ "${1:-}" = "--check" ]; then
    cargo build --quiet --manifest-path "$MANIFEST"
    echo "torch 2.11 variant compiles"
    exit 0
fi
cargo build --quiet --release --manifest-path "$MANIFEST"
OUT=dist/torch-2.11-cp${PY_VERSION/./}
rm -rf "$OUT" && mkdir -p "$OUT"
cp -r python/simper_rs "$OUT/"
find "$OUT" -name "__pycache__" -prune -exec rm -rf {} + -o -name "_core*.so" -exec rm -f {} +
cp variants/torch-2.11/target/release/libsimper_rs.so "$OUT/simper_rs/_core.cpython-${PY_VERSION/./}-x86_64-linux-gnu.so"
echo "packed $OUT (torch 2.11, CPython $PY_VERSION): PYTHONPATH=$OUT python3 -c 'import simper_rs'"
