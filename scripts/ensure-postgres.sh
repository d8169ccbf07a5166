#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and lets user `postgres` in
# without a password (the tests' server; each test makes a database of its own). Uses the
# one running; otherwise installs Debian's postgresql and starts its cluster (needs root).
# Either way the server must offer TLS (the tests connect with each `sslmode`): one that
# does not is given a self-signed certificate for `localhost`, as Debian's own cluster has.
set -euo pipefail

sql() { psql -q -At -h 127.0.0.1 -p 5432 -U postgres -d postgres -c "$1"; }
can_connect() { sql 'SELECT 1' >/dev/null 2>&1; }

ensure_tls() {
    [ "$(sql 'SHOW ssl')" = on ] && return 0
    echo "== turning TLS on in PostgreSQL (a self-signed certificate for localhost)"
    local dir owner
    dir="$(sql 'SHOW data_directory')"
    owner="$(stat -c %U "$dir")"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
        -keyout "$dir/hookline-test.key" -out "$dir/hookline-test.crt" 2>/dev/null \
        -config <(printf '[req]\ndistinguished_name=dn\nx509_extensions=ext\nprompt=no\n[dn]\nCN=localhost\n[ext]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\n')
    chown "$owner" "$dir/hookline-test.key" "$dir/hookline-test.crt"
    chmod 600 "$dir/hookline-test.key"
    sql "ALTER SYSTEM SET ssl_cert_file = '$dir/hookline-test.crt'"
    sql "ALTER SYSTEM SET ssl_key_file = '$dir/hookline-test.key'"
    sql "ALTER SYSTEM SET ssl = on"
    sql 'SELECT pg_reload_conf()' >/dev/null
    for _ in $(seq 1 50); do
        [ "$(sql 'SHOW ssl')" = on ] && return 0
        sleep 0.2
    done
    echo "PostgreSQL did not turn TLS on" >&2
    exit 1
}

if command -v psql >/dev/null && can_connect; then
    ensure_tls
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
    can_connect && ensure_tls && exit 0
    sleep 0.2
done
echo "PostgreSQL did not start on 127.0.0.1:5432" >&2
exit 1
