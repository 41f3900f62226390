#!/usr/bin/env bash
# Stop/start the throwaway test PostgreSQL that scripts/pg-start.sh created, keeping
# its data, port and password (so $TEST_DATABASE_URL stays valid across a restart).
# Meant for tests that take the audit store away and bring it back:
#
#     scripts/pg-ctl.sh stop       # pg_ctl stop -m fast (drops client connections)
#     scripts/pg-ctl.sh start      # pg_ctl start, then waits until it accepts connections
#     scripts/pg-ctl.sh restart
#     scripts/pg-ctl.sh status     # exit 0 when running, 3 when not
#
# Uses the same TV_SERVICES_DIR (default /tmp/token-vendor-services) and PG_PORT
# (default 55432) as pg-start.sh; run as root (it switches to user tvpg) or as tvpg.
# From Rust tests: Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-ctl.sh")).arg("stop")
set -euo pipefail
TV_SCRIPT=pg-ctl
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec 1>&2

tv_pg_find_bin || tv_die "PostgreSQL binaries not found (run scripts/pg-start.sh first)"
command -v pg_isready >/dev/null 2>&1 || PATH="$TV_PG_BIN:$PATH"
[ -f "$TV_PG_DATA/PG_VERSION" ] || tv_die "no cluster at $TV_PG_DATA: run scripts/pg-start.sh first"
# Follow the port the cluster was configured with by pg-start.sh.
conf_port=$(sed -n 's/^port = \([0-9]\+\)$/\1/p' "$TV_PG_DATA/tv.conf" 2>/dev/null || true)
PG_PORT=${conf_port:-$PG_PORT}

case "${1:-}" in
start)
    if tv_pg_running_pid >/dev/null; then
        tv_log "already running"
        tv_pg_wait_ready
    else
        tv_pg_start_server
    fi
    ;;
stop) tv_pg_stop_server ;;
restart)
    tv_pg_stop_server
    tv_pg_start_server
    ;;
status)
    if pid=$(tv_pg_running_pid); then
        tv_log "running (pid $pid) on 127.0.0.1:$PG_PORT"
    else
        tv_log "not running"
        exit 3
    fi
    ;;
*)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
