#!/usr/bin/env bash
# Runs a command with a throw-away PostgreSQL cluster: a new data directory in /tmp, listening on 127.0.0.1 on a
# free port (and a Unix socket inside that directory), trust authentication, fsync off. The command sees its
# address in SWITCHBOARD_TEST_POSTGRES (postgres://switchboard@127.0.0.1:PORT/postgres?sslmode=disable: the cluster
# has no TLS, and asking for it would make every client load the system's CA bundle first). The cluster is stopped
# and deleted when the command ends, whether it passed or not.
#
# Usage: Scripts/with-postgres.sh COMMAND [ARGUMENT]...
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "with-postgres: PostgreSQL's server programs are not installed (Debian package postgresql)" >&2
    exit 1
fi

directory=$(mktemp -d /tmp/switchboard-postgres.XXXXXX)
as_owner=()
if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root; the Debian package's postgres user owns the cluster instead.
    chown postgres: "$directory"
    as_owner=(runuser -u postgres --)
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$directory/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$directory"
}
trap stop EXIT

"${as_owner[@]}" "$bindir/initdb" -D "$directory/data" -U switchboard --auth=trust -E UTF8 >"$directory/initdb.log" 2>&1 \
    || { cat "$directory/initdb.log" >&2; exit 1; }
"${as_owner[@]}" "$bindir/pg_ctl" -D "$directory/data" -l "$directory/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $directory -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$directory/server.log" >&2; exit 1; }

echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
export SWITCHBOARD_TEST_POSTGRES="postgres://switchboard@127.0.0.1:$port/postgres?sslmode=disable"
"$@"
