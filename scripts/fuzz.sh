#!/usr/bin/env bash
# Short fuzz runs of every cargo-fuzz target, starting from the committed seed corpus in
# fuzz/corpus (new inputs go to a temporary directory, not into the repository).
# FUZZ_SECONDS sets the time per target (default 10). Runs on stable with `-s none`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-10}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
total=0
for target in $(cargo fuzz list); do
    work="$(mktemp -d)"
    log="$(mktemp)"
    if ! cargo fuzz run -s none "$target" "$work" "fuzz/corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $target failed"
        exit 1
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
    echo "fuzz $target: $runs executions in ${seconds}s, no crash"
    total=$((total + runs))
    rm -rf "$work" "$log"
done
echo "fuzz: $total executions in all"
