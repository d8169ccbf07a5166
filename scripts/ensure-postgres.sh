#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and lets user `postgres` in
# without a password (the tests' server; each test makes a database of its own). Uses the
# one running; otherwise installs Debian's postgresql and starts its cluster (needs root).
# Either way the server should offer TLS (the tests connect with each `sslmode`): a local one
# that does not is given a self-signed certificate for `localhost`, as Debian's own cluster
# has; one this script cannot change is left as it is (the TLS test then checks it so).
set -euo pipefail

sql() { psql -q -At -h 127.0.0.1 -p 5432 -U postgres -d postgres -c "$1"; }
can_connect() { sql 'SELECT 1' >/dev/null 2>&1; }

ensure_tls() {
    [ "$(sql 'SHOW ssl')" = on ] && return 0
    local dir owner key crt
    dir="$(sql 'SHOW data_directory')"
    # Checked step by step: `set -e` does not hold in a function called from `&&`.
    if [ ! -w "$dir" ] || ! command -v openssl >/dev/null; then
        echo "== PostgreSQL offers no TLS and cannot be given a certificate from here (its data directory $dir is not writable here, or openssl is missing): the tests check a server without TLS" >&2
        return 0
    fi
    echo "== turning TLS on in PostgreSQL (a self-signed certificate for localhost)"
    owner="$(stat -c %U "$dir")"
    key="$dir/hookline-test.key"
    crt="$dir/hookline-test.crt"
    if ! openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout "$key" -out "$crt" \
        -config <(printf '[req]\ndistinguished_name=dn\nx509_extensions=ext\nprompt=no\n[dn]\nCN=localhost\n[ext]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\n') \
        >/dev/null 2>&1 || ! chown "$owner" "$key" "$crt" || ! chmod 600 "$key"; then
        echo "could not make a certificate for PostgreSQL in $dir: the tests check a server without TLS" >&2
        return 0
    fi
    sql "ALTER SYSTEM SET ssl_cert_file = '$crt'" && sql "ALTER SYSTEM SET ssl_key_file = '$key'" \
        && sql "ALTER SYSTEM SET ssl = on" && sql 'SELECT pg_reload_conf()' >/dev/null || return 1
    for _ in $(seq 1 50); do
        [ "$(sql 'SHOW ssl')" = on ] && return 0
        sleep 0.2
    done
    echo "PostgreSQL did not turn TLS on" >&2
    return 1
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
