#!/usr/bin/env bash
# Fetch, as wheels into .whl/ (ignored by git), the Python packages that benchmarks/gpu_check.sh
# needs and the GPU machine's image lacks: TRL (its ChunkedLogProbFunction, a fused-linear peer in
# benchmarks/gpu.py) and Liger-Kernel (LigerFusedLinearSimPOLoss), at the versions pinned in
# scripts/constraints.txt. Both are pure Python, and everything they import there (torch, triton,
# transformers, accelerate) is in the image, so no dependency travels with them.
#
#   bash scripts/gpu_wheels.sh        # then carry .whl with the build; gpu_check.sh installs it
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
pins=()
for name in trl liger_kernel; do
    pin=$(grep -i "^${name}==" scripts/constraints.txt) || { echo "no pin for $name in scripts/constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "${pins[@]}"
ls .whl
