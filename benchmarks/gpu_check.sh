#!/usr/bin/env bash
# Every GPU check, in one go, on a fresh NVIDIA machine with no network (the self-check is capped
# at 3 minutes, the tests at 4 and the benchmark at 5): the kernel's self-check (simper-rs doctor
# and its cost), the CUDA tests and the GPU benchmark (the logits kernel, and the fused-linear
# op against TRL and Liger), against the prebuilt package given as $1.
#
# That machine has its own Python and torch and nothing can be fetched there, so build the
# matching package here first and bring it along, e.g. for Python 3.12 + torch 2.11, with the
# wheels of the benchmark's fused-linear peers (TRL, Liger-Kernel), which its image lacks:
#     bash scripts/build_torch211.sh                  # -> dist/torch-2.11-cp312/simper_rs
#     bash scripts/gpu_wheels.sh                      # -> .whl/ (installed below, if present)
#     bash benchmarks/gpu_check.sh dist/torch-2.11-cp312
# With no argument the installed simper_rs is used. Logs go to $OUT (default /tmp/simper-rs-gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${1:-}" ]; then
    export PYTHONPATH="$(cd "$1" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
OUT=${OUT:-/tmp/simper-rs-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
status=0
if compgen -G ".whl/*.whl" >/dev/null; then
    site=/tmp/simper-rs-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$site" \
        || echo "the carried wheels in .whl/ did not install: the peers they hold will be skipped rows" >&2
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import sys, torch, simper_rs; print('python', sys.version.split()[0], '| torch', torch.__version__, '| simper_rs', simper_rs.__version__, 'built for torch', simper_rs._core.TORCH_VERSION, '|', simper_rs.__file__)" \
    || { echo "simper_rs does not import: nothing else can run" >&2; exit 1; }

echo "== the kernel's self-check on every GPU (simper-rs doctor), and what it costs"
timeout 120 "$PY" -c "from simper_rs.cli import doctor; raise SystemExit(doctor.run('cuda'))" 2>&1 | tee "$OUT/doctor.log" || status=1
timeout 60 "$PY" benchmarks/cuda_check.py --json "$OUT/cuda_check.json" 2>&1 | tee "$OUT/cuda_check.log" || status=1

echo "== CUDA tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_cuda_compile.py tests/test_cuda_check.py 2>&1 | tee "$OUT/tests.log" || status=1

echo "== GPU benchmark"
timeout 300 "$PY" benchmarks/gpu.py --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/bench.log" || status=1

echo "== done (status $status); logs in $OUT"
exit $status
