#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and lets user `postgres` in
# without a password (the tests' server; each test makes a database of its own). Uses the
# one running; otherwise installs Debian's postgresql and starts its cluster (needs root).
set -euo pipefail

can_connect() { psql -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; }

if command -v psql >/dev/null && can_connect; then
    exit 0
fi
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "== installing postgresql"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
fi
hba="/etc/postgresql/$version/main/pg_hba.conf"
if ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    # Test machines only: loopback connections as `postgres` need no password.
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
fi
echo "== starting PostgreSQL $version"
pg_ctlcluster --skip-systemctl-redirect "$version" main restart || pg_ctlcluster --skip-systemctl-redirect "$version" main start
for _ in $(seq 1 100); do
    can_connect && exit 0
    sleep 0.2
done
echo "PostgreSQL did not start on 127.0.0.1:5432" >&2
exit 1
