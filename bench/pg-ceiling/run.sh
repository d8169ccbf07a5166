#!/usr/bin/env bash
# PostgreSQL's own ceiling for the rows an `e2e` delivery writes, with no gateway, no HTTP
# and perfect batching: each pgbench transaction pair publishes :n messages with their
# deliveries (one synced commit), then marks :n deliveries delivered and records their
# attempts (one commit with synchronous_commit off), on Hookline's table and index layout.
# Deliveries/s = pgbench's tps x n (an upper bound: SKIP LOCKED may claim fewer than n). Usage: bench/pg-ceiling/run.sh [postgres-url-without-db]
set -euo pipefail
cd "$(dirname "$0")"
base=${1:-postgres://postgres@127.0.0.1:5432}
psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS hookline_pg_ceiling" -c "CREATE DATABASE hookline_pg_ceiling"
for run in 1 2 3; do
    for shape in "3 16" "8 16" "16 16" "64 4" "256 2"; do
        set -- $shape
        PGOPTIONS='-c client_min_messages=warning' psql -q -v ON_ERROR_STOP=1 "$base/hookline_pg_ceiling" -f schema.sql
        tps=$(pgbench -n -c "$2" -j 2 -T 8 -D n="$1" -f cycle.sql "$base/hookline_pg_ceiling" | awk '/^tps/ {print $3}')
        echo "run $run: $1 deliveries per commit, $2 clients: $(echo "$tps * $1 / 1" | bc) deliveries/s"
    done
done
psql -q "$base/postgres" -c "DROP DATABASE hookline_pg_ceiling"
