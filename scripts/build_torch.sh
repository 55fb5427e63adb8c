#!/usr/bin/env bash
# Build simper_rs against another torch release than .venv's 2.13, and pack it with the Python
# sources into dist/torch-SERIES-cpXY/ (for PYTHONPATH; `import simper_rs` there checks the torch).
#
#   bash scripts/build_torch.sh SERIES           build (release) and pack; SERIES: 2.11, 2.13, 2.14, 2.15
#   bash scripts/build_torch.sh SERIES --check   only compile (a debug build; what CI runs for 2.14 and 2.11)
#   bash scripts/build_torch.sh SERIES --test [PYTEST ARGS...]
#                                                build for this Python, pack, and run pytest under that torch
#   bash scripts/build_torch.sh SERIES --venv    only make the venv with that torch (scripts/build_wheels.sh)
#
# 2.13 to 2.15 build the main manifest (tch 0.26 with patches/), each in its own target folder
# (target/torch-SERIES: torch-sys's C++ is compiled against one torch's headers); 2.11 builds
# variants/torch-2.11 (tch 0.24). PY_VERSION (default: this .venv's Python) picks the CPython the
# extension is for. The torch is fetched from PyPI into .venv-torchNNN (e.g. .venv-torch215)
# without most of its CUDA wheels: `import torch` needs their libraries, which are borrowed, with
# every other Python package, from .venv (`bash scripts/dev.sh setup` makes it), except the
# nvidia-* wheels this torch pins at other versions than .venv has (installed here). A user's
# environment has its own CUDA wheels; this is the cheap way to build and test several torch
# releases here (scripts/check_install.sh installs torch 2.15 as a user does).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SERIES=${1:-}
shift || true
MODE=${1:-build}
[ $# -gt 0 ] && shift
case "$SERIES" in
    2.11) MANIFEST=variants/torch-2.11/Cargo.toml TARGET=variants/torch-2.11/target FEATURES=() ;;
    # maturin passes this feature for the main manifest (the variant's manifest turns it on itself)
    2.13|2.14|2.15) MANIFEST=Cargo.toml TARGET=target/torch-$SERIES FEATURES=(--features pyo3/extension-module) ;;
    *) echo "usage: bash scripts/build_torch.sh {2.11|2.13|2.14|2.15} [--check | --test [PYTEST ARGS...]]" >&2; exit 2 ;;
esac
MAIN_VENV=${MAIN_VENV:-.venv}
VENV=${TORCH_VENV:-.venv-torch${SERIES/./}}
if [ ! -x "$MAIN_VENV/bin/python" ]; then
    echo "run 'bash scripts/dev.sh setup' first (this build borrows .venv's CUDA libraries and packages)" >&2
    exit 2
fi
PY_VERSION=${PY_VERSION:-$("$MAIN_VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
if [ "$MODE" = "--test" ] && [ "$PY_VERSION" != "$("$MAIN_VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ]; then
    echo "--test runs this machine's Python: leave PY_VERSION unset" >&2
    exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$MAIN_VENV/bin/python" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$SERIES.'))" 2>/dev/null; then
    echo "fetching torch $SERIES into $VENV (its CUDA libraries borrowed from $MAIN_VENV where the versions agree)"
    # torch's own pure-Python needs first, then torch alone (no CUDA wheels: see above).
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check typing_extensions sympy filelock networkx jinja2 fsspec
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "torch==$SERIES.*"
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
    main_site=$("$MAIN_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
    # Appended after the venv's own packages: this torch stays first, the nvidia/* CUDA libraries
    # (same CUDA 13 sonames) and everything else come from the main venv.
    echo "$main_site" > "$site/zz_cuda_libraries_from_main_venv.pth"
    # The CUDA libraries this torch pins exactly (nvidia-*==X) at another version than the main
    # venv's go into this venv itself: torch 2.15's libtorch_nvshmem, for one, does not load with
    # 2.13's NVSHMEM. (The cuda-toolkit wheels, CUDA 13.x, are borrowed as they are.)
    pins=""
    if [ "$SERIES" != 2.11 ]; then  # the variant has always loaded with the main venv's libraries
        pins=$("$VENV/bin/python" - "$main_site" <<'PY'
import importlib.metadata as m, re, sys
main = {f"{d.metadata['Name'].lower().replace('_', '-')}=={d.version}" for d in m.distributions(path=[sys.argv[1]])}
for req in m.requires("torch") or []:
    pin = re.match(r"(nvidia-[A-Za-z0-9_.-]+)==([0-9.]+)\s*(;|$)", req)
    if pin and "extra ==" not in req and f"{pin.group(1).lower().replace('_', '-')}=={pin.group(2)}" not in main:
        print(f"{pin.group(1)}=={pin.group(2)}")
PY
)
    fi
    if [ -n "$pins" ]; then
        echo "installing the CUDA libraries torch $SERIES pins at other versions: $pins" | tr '\n' ' '; echo
        # shellcheck disable=SC2086
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps $pins
    fi
fi
if [ "$MODE" = "--venv" ]; then
    exit 0
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

if [ "$MANIFEST" = Cargo.toml ]; then
    "$MAIN_VENV/bin/python" patches/apply.py
fi
VENV=$(cd "$VENV" && pwd)
torch_lib=$("$VENV/bin/python" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
# SIMPER_RS_TORCH_LIB: build.rs records this torch's version (simper_rs._core.TORCH_VERSION).
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" LIBTORCH_USE_PYTORCH=1 SIMPER_RS_TORCH_LIB="$torch_lib"
export PYO3_CONFIG_FILE="$ROOT/target/pyo3-cp${PY_VERSION/./}.txt" CARGO_TARGET_DIR="$ROOT/$TARGET"
if [ "$MODE" = "--check" ]; then
    cargo build --quiet --lib --manifest-path "$MANIFEST" "${FEATURES[@]}"
    echo "simper_rs compiles against torch $SERIES"
    exit 0
fi
cargo build --quiet --release --lib --manifest-path "$MANIFEST" "${FEATURES[@]}"
OUT=dist/torch-$SERIES-cp${PY_VERSION/./}
rm -rf "$OUT" && mkdir -p "$OUT"
cp -r python/simper_rs "$OUT/"
find "$OUT" -name "__pycache__" -prune -exec rm -rf {} + -o -name "_core*.so" -exec rm -f {} +
cp "$TARGET/release/libsimper_rs.so" "$OUT/simper_rs/_core.cpython-${PY_VERSION/./}-x86_64-linux-gnu.so"
echo "packed $OUT (torch $SERIES, CPython $PY_VERSION): PYTHONPATH=$OUT python3 -c 'import simper_rs'"
if [ "$MODE" = "--test" ]; then
    PYTHONPATH="$ROOT/$OUT" "$VENV/bin/python" -c "import simper_rs, torch; print('testing simper_rs built for torch', simper_rs._core.TORCH_VERSION, 'under torch', torch.__version__)"
    # the build's variables stay out of the tests (some build or inspect the build themselves)
    # (.venv's bin/ after this venv's: tools that tests run, such as DeepSpeed's ninja, come from there)
    env -u CARGO_TARGET_DIR -u SIMPER_RS_TORCH_LIB -u PYO3_CONFIG_FILE PATH="$VENV/bin:$(cd "$MAIN_VENV" && pwd)/bin:$PATH" \
        PYTHONPATH="$ROOT/$OUT" "$VENV/bin/python" -m pytest -q "$@"
fi
