#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL cluster for token-vendor's tests.
#
#   scripts/pg-start.sh            -> last stdout line: postgres://token_vendor:PW@127.0.0.1:PORT/token_vendor
#                                     (also written to $TV_SERVICES_DIR/postgres.url)
#
# - Cluster owned and run by the system user `tvpg` (PostgreSQL refuses root),
#   data in $TV_SERVICES_DIR/postgres/data (default /tmp/token-vendor-services),
#   listening on 127.0.0.1:$PG_PORT (default 55432) only; Unix socket in
#   $TV_SERVICES_DIR/postgres/run (peer auth for `tvpg`), TCP needs a password (SCRAM).
# - Role `token_vendor` (LOGIN CREATEDB, so tests may create scratch databases)
#   owning database `token_vendor`. Its password is generated afresh whenever the
#   server is (re)started by this script; when the server is already running and the
#   saved URL still works, that URL is reused unchanged.
# - PG_FRESH=1 wipes the data directory first (CI does this).
# - All diagnostics go to stderr; stdout carries only the URL.
#
# Stop / start the SAME server (e.g. tests checking recovery after the audit store
# comes back; keeps data, port and password):
#     scripts/pg-ctl.sh stop      # pg_ctl stop -m fast
#     scripts/pg-ctl.sh start     # waits until it accepts connections
#     scripts/pg-ctl.sh status    # exit 0 when running
# Stop for good:  scripts/pg-stop.sh
set -euo pipefail
TV_SCRIPT=pg-start
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

exec 3>&1 1>&2 # keep the real stdout on fd 3 for the URL; everything else -> stderr

[ "$(id -u)" -eq 0 ] || [ "$(id -un)" = "$TV_PG_USER" ] ||
    tv_die "run as root (the cluster is run as user $TV_PG_USER via runuser)"

tv_pg_require_bin
command -v pg_isready >/dev/null 2>&1 || PATH="$TV_PG_BIN:$PATH"
command -v psql >/dev/null 2>&1 || PATH="$TV_PG_BIN:$PATH"
pg_version=$("$TV_PG_BIN/postgres" --version | awk '{print $3}')
pg_major=${pg_version%%.*}
tv_log "PostgreSQL $pg_version from $TV_PG_BIN"

tv_pg_ensure_user
tv_ensure_services_dir
mkdir -p "$TV_PG_ROOT" "$TV_PG_SOCKDIR"
chown "$TV_PG_USER:" "$TV_PG_ROOT" "$TV_PG_SOCKDIR"
chmod 0700 "$TV_PG_ROOT"
chmod 0755 "$TV_PG_SOCKDIR"
if ! runuser -u "$TV_PG_USER" -- test -w "$TV_PG_ROOT" 2>/dev/null && [ "$(id -u)" -eq 0 ]; then
    tv_die "user $TV_PG_USER cannot write $TV_PG_ROOT: choose a TV_SERVICES_DIR every user can traverse (e.g. under /tmp)"
fi
if [ "${#TV_PG_SOCKDIR}" -gt 90 ]; then
    tv_die "TV_SERVICES_DIR is too long for a Unix socket path ($TV_PG_SOCKDIR); use a shorter one"
fi

was_running=false
if tv_pg_running_pid >/dev/null; then was_running=true; fi

# Fresh cluster on request, or when the data directory is unusable.
if [ "${PG_FRESH:-0}" = 1 ] && [ -d "$TV_PG_DATA" ]; then
    tv_log "PG_FRESH=1: discarding the old cluster"
    tv_pg_stop_server
    rm -rf "$TV_PG_DATA"
    was_running=false
fi
if [ -d "$TV_PG_DATA" ] && [ "$(cat "$TV_PG_DATA/PG_VERSION" 2>/dev/null)" != "$pg_major" ]; then
    tv_log "data directory $TV_PG_DATA is not a PostgreSQL $pg_major cluster; re-creating it"
    if $was_running; then tv_pg_stop_server || true; fi
    rm -rf "$TV_PG_DATA"
    was_running=false
fi

if [ ! -d "$TV_PG_DATA" ]; then
    tv_log "initdb $TV_PG_DATA"
    tv_as_pg "$TV_PG_BIN/initdb" -D "$TV_PG_DATA" -U "$TV_PG_USER" -E UTF8 --no-locale \
        --auth-local=peer --auth-host=scram-sha-256 >"$TV_PG_ROOT/initdb.log" 2>&1 || {
        cat "$TV_PG_ROOT/initdb.log" >&2
        tv_die "initdb failed"
    }
fi

# Our settings live in tv.conf, included from postgresql.conf, so that a plain
# `pg_ctl start` (scripts/pg-ctl.sh) gets the same port/address/socket.
tv_as_pg tee "$TV_PG_DATA/tv.conf" >/dev/null <<EOF
# written by scripts/pg-start.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TV_PG_SOCKDIR'
max_connections = 200
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
EOF
if ! grep -q "^include_if_exists = 'tv.conf'" "$TV_PG_DATA/postgresql.conf"; then
    printf "\ninclude_if_exists = 'tv.conf'\n" | tv_as_pg tee -a "$TV_PG_DATA/postgresql.conf" >/dev/null
fi

if $was_running; then
    running_port=$(tv_pg_running_port)
    if [ "$running_port" != "$PG_PORT" ]; then
        tv_log "running cluster listens on port $running_port, wanted $PG_PORT: restarting"
        tv_pg_stop_server
        was_running=false
        tv_pg_start_server
    else
        tv_log "PostgreSQL already running (pid $(tv_pg_running_pid)) on 127.0.0.1:$PG_PORT: reusing it"
        tv_pg_wait_ready || tv_die "the running PostgreSQL does not answer"
    fi
else
    tv_pg_start_server
fi

psql_admin() {
    tv_as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$TV_PG_SOCKDIR" -p "$PG_PORT" -U "$TV_PG_USER" "$@"
}

# Keep the existing URL when the server was already up and the URL still works.
url=
if $was_running && [ -s "$TV_PG_URL_FILE" ]; then
    old_url=$(cat "$TV_PG_URL_FILE")
    case "$old_url" in
    "postgres://token_vendor:"*"@127.0.0.1:$PG_PORT/token_vendor")
        if psql -X -q "$old_url" -tAc 'select 1' >/dev/null 2>&1; then
            url=$old_url
            tv_log "reusing the password of the running server"
        fi
        ;;
    esac
fi

if [ -z "$url" ]; then
    password=$(tv_random_hex)
    psql_admin -d postgres -v pw="$password" <<'SQL'
SELECT 'CREATE ROLE token_vendor LOGIN'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'token_vendor') \gexec
ALTER ROLE token_vendor WITH LOGIN CREATEDB PASSWORD :'pw';
SELECT 'CREATE DATABASE token_vendor OWNER token_vendor'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'token_vendor') \gexec
SQL
    url="postgres://token_vendor:$password@127.0.0.1:$PG_PORT/token_vendor"
fi

# Prove the URL works over TCP with the password before handing it out.
psql -X -q "$url" -tAc 'select 1' >/dev/null ||
    tv_die "cannot connect with the generated URL (see $TV_PG_LOG)"

umask 077
printf '%s\n' "$url" >"$TV_PG_URL_FILE.tmp"
mv -f "$TV_PG_URL_FILE.tmp" "$TV_PG_URL_FILE"
tv_log "PostgreSQL ready; URL written to $TV_PG_URL_FILE"
tv_log "stop/start this same server: scripts/pg-ctl.sh stop|start   (stop for good: scripts/pg-stop.sh)"
printf '%s\n' "$url" >&3
