#!/usr/bin/env bash
# The project's lints, with its own settings (pyproject.toml [tool.ruff], rustfmt.toml, mkdocs.yml):
# ruff (lint and format) on the Python, rustfmt and clippy on the Rust, and the docs site built in
# strict mode (a broken link or a page left out of the navigation fails it). Needs the venv that
# scripts/dev.sh sets up (ruff and mkdocs come with the dev extra); CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source .venv/bin/activate
status=0
check() {  # check NAME COMMAND...: run it, keep going, remember a failure
    echo "-- $1"
    shift
    if ! "$@"; then
        status=1
    fi
}
check "ruff check" ruff check .
check "ruff format --check" ruff format --check .
check "cargo fmt --check" cargo fmt --all --check
# --release: the profile `cargo test --release` and maturin built, so libtorch's C++ bindings are
# not compiled a second time.
check "cargo clippy" cargo clippy --release --workspace --all-targets --quiet -- -D warnings
check "mkdocs build --strict" mkdocs build --strict --quiet --site-dir target/site
if [ "$status" -ne 0 ]; then
    echo "lint failed: see the messages above" >&2
fi
exit "$status"
