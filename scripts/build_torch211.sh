#!/usr/bin/env bash
# Build simper_rs against torch 2.11 (variants/torch-2.11: tch 0.24) for CPython 3.12, and pack
# it with the Python sources into dist/torch-2.11-cp312/ (ready for PYTHONPATH on a machine that
# has Python 3.12 and torch 2.11 of its own, such as the GPU machine of benchmarks/gpu_check.sh).
#
#   bash scripts/build_torch211.sh           build and pack
#   bash scripts/build_torch211.sh --check   only compile the variant (what CI runs)
#
# torch 2.11 is fetched from PyPI into .venv-torch211 (without its CUDA wheels: libtorch's
# headers and libraries are all the build needs; the CUDA libraries, which `import torch` wants,
# are borrowed from .venv's torch 2.13, which `scripts/dev.sh setup` creates). The work is done by
# scripts/build_torch.sh, which builds the other torch releases the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
export PY_VERSION=${PY_VERSION:-3.12}
[ -n "${TORCH211_VENV:-}" ] && export TORCH_VENV=$TORCH211_VENV
exec bash scripts/build_torch.sh 2.11 "$@"
