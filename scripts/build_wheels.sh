#!/usr/bin/env bash
# One wheel per torch release, into dist/wheels/: simper_rs-<version>+torch2.N-cpXY-cpXY-linux_x86_64.whl,
# each requiring torch==2.N.* (the build backend, build_backend/simper_rs_build.py, labels and pins it).
#
#   bash scripts/build_wheels.sh              torch 2.13, 2.14 and 2.15
#   bash scripts/build_wheels.sh 2.15         only the named releases
#
# Each wheel is built by `pip wheel .` in an environment that has that torch: .venv (torch 2.13,
# `bash scripts/dev.sh setup`), or .venv-torch214 / .venv-torch215 made by scripts/build_torch.sh
# (torch without its CUDA wheels, borrowed from .venv). The first build of each release compiles
# tch's C++ part (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=dist/wheels
mkdir -p "$OUT"
series=("$@")
[ ${#series[@]} -gt 0 ] || series=(2.13 2.14 2.15)
for s in "${series[@]}"; do
    case "$s" in
        2.13) python=.venv/bin/python ;;
        2.14|2.15) bash scripts/build_torch.sh "$s" --venv; python=.venv-torch${s/./}/bin/python ;;
        *) echo "simper_rs builds wheels for torch 2.13, 2.14 and 2.15, not $s" >&2; exit 2 ;;
    esac
    [ -x "$python" ] || { echo "run 'bash scripts/dev.sh setup' first" >&2; exit 2; }
    rm -f "$OUT"/simper_rs-*+torch"$s"-*.whl
    t0=$SECONDS
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$OUT" . >target/build_wheels-$s.log 2>&1 \
        || { tail -n 30 target/build_wheels-$s.log >&2; echo "the torch $s wheel failed; full log: target/build_wheels-$s.log" >&2; exit 1; }
    wheel=$(ls "$OUT"/simper_rs-*+torch"$s"-*.whl)
    echo "$wheel ($(du -k "$wheel" | cut -f1) KiB, $((SECONDS - t0)) s): $("$python" -c "import sys, zipfile; w = zipfile.ZipFile(sys.argv[1]); m = next(n for n in w.namelist() if n.endswith('.dist-info/METADATA')); print(*[l for l in w.read(m).decode().splitlines() if l.startswith('Requires-Dist: torch')])" "$wheel")"
done
