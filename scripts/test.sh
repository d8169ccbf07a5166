#!/usr/bin/env bash
# The whole test suite: Rust unit, conformance, property and integration tests on SQLite and
# on PostgreSQL, the real-binary fault and cluster tests, short fuzz runs, and the Svix SDK
# acceptance test in Python on both backends, the dashboard in a real Chromium on both
# backends, and the queue tests against real Redis, RabbitMQ and NATS. Installs what it
# needs on a fresh machine (PostgreSQL, the brokers, Chromium, python3-venv, the Python
# libraries, cargo-fuzz).
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

./scripts/ensure-postgres.sh
# Debian's Chromium for the dashboard's browser tests (Playwright drives it; it never
# downloads a browser of its own).
if ! command -v chromium >/dev/null; then
    echo "== installing chromium"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
# Redis, RabbitMQ and NATS for the queue tests (each run uses streams, queues and subjects
# of its own; see crates/cli/tests/queues.rs).
./scripts/ensure-brokers.sh
# Each test makes its own database on this server (see crates/store/src/postgres/scratch.rs).
export HOOKLINE_TEST_PG_URL="${HOOKLINE_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

echo "== cargo test"
cargo test --workspace --locked

echo "== the server suite again, on PostgreSQL"
HOOKLINE_TEST_BACKEND=postgres cargo test --locked -p hookline-server --test it

echo "== fuzzing (short runs from the seed corpus)"
./scripts/fuzz.sh

echo "== Svix SDK acceptance test, the README's walkthroughs (run as printed), the dashboard in Chromium, and schemathesis"
echo "   against the OpenAPI document (every check, ${HOOKLINE_SCHEMATHESIS_SECONDS:-120} s)"
# `cargo test` built the binary already (the real-binary tests use it).
test -x target/debug/hookline || cargo build --locked -p hookline
HOOKLINE_BIN=target/debug/hookline .venv/bin/python -m pytest -q tests/sdk tests/readme tests/dashboard tests/openapi

echo "== Svix SDK acceptance test, the README's walkthroughs and the dashboard, on PostgreSQL"
sdk_db="hookline_sdk_$$"
# Text ordered by language (ICU English), as most servers order it, where the server can.
psql -q "$HOOKLINE_TEST_PG_URL" -c "CREATE DATABASE $sdk_db TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'" 2>/dev/null \
  || psql -q "$HOOKLINE_TEST_PG_URL" -c "CREATE DATABASE $sdk_db"
trap 'psql -q "$HOOKLINE_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $sdk_db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
HOOKLINE_DATABASE_URL="${HOOKLINE_TEST_PG_URL%/*}/$sdk_db" \
HOOKLINE_SECURITY_SECRET_KEY="$(head -c 32 /dev/urandom | base64)" \
HOOKLINE_BIN=target/debug/hookline .venv/bin/python -m pytest -q tests/sdk tests/readme tests/dashboard
