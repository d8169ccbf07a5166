#!/usr/bin/env bash
# The whole test suite: Rust unit, conformance, property and integration tests, the
# real-binary fault tests, short fuzz runs, and the Svix SDK acceptance test in Python.
# Installs what it needs on a fresh machine (python3-venv, the Python libraries, cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "== installing python3-venv"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt

echo "== cargo test"
cargo test --workspace --locked

echo "== fuzzing (short runs from the seed corpus)"
./scripts/fuzz.sh

echo "== Svix SDK acceptance test"
# `cargo test` built the binary already (the real-binary tests use it).
test -x target/debug/hookline || cargo build --locked -p hookline
HOOKLINE_BIN=target/debug/hookline .venv/bin/python -m pytest -q tests/sdk
