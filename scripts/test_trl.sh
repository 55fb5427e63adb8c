#!/usr/bin/env bash
# tests/test_trl.py against another TRL release than the pinned 1.16 (run after `bash scripts/dev.sh setup`):
#
#   bash scripts/test_trl.sh 1.14 [PYTEST ARGS...]   TRL 1.14.1 with transformers 5.20.1 (axolotl 0.21's pins)
#   bash scripts/test_trl.sh 1.15 [PYTEST ARGS...]   TRL 1.15.0 with .venv's transformers
#
# The release is installed (without dependencies: the rest is .venv's) into target/trl-RELEASE,
# which goes first on PYTHONPATH for pytest and the test's worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:-}
shift || true
case "$release" in
    1.14) packages=(trl==1.14.1 transformers==5.20.1) ;;
    1.15) packages=(trl==1.15.0) ;;
    *) echo "usage: bash scripts/test_trl.sh {1.14|1.15} [PYTEST ARGS...]" >&2; exit 2 ;;
esac
# shellcheck disable=SC1091
source .venv/bin/activate
overlay=target/trl-$release
stamp="$overlay/.simper-rs-packages"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
    rm -rf "$overlay"
    python -m pip install --quiet --disable-pip-version-check --no-deps --target "$overlay" "${packages[@]}"
    echo "${packages[*]}" >"$stamp"
fi
export PYTHONPATH="$PWD/$overlay${PYTHONPATH:+:$PYTHONPATH}"
python -c "import trl, transformers; print('tests/test_trl.py with TRL', trl.__version__, 'and transformers', transformers.__version__)"
python -m pytest -q tests/test_trl.py "$@"
