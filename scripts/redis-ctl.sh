#!/usr/bin/env bash
# Stop/start the throwaway test Redis (same port, same URL), for tests that take the
# shared rate-limit store away and bring it back:
#
#     scripts/redis-ctl.sh stop
#     scripts/redis-ctl.sh start     # waits for PING; prints the URL on stdout
#     scripts/redis-ctl.sh status    # exit 0 when running, 3 when not
#
# Uses the same TV_SERVICES_DIR and REDIS_PORT (default 56379) as redis-start.sh.
set -euo pipefail
TV_SCRIPT=redis-ctl
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

case "${1:-}" in
start) exec "$here/redis-start.sh" ;;
stop) exec "$here/redis-stop.sh" ;;
restart)
    "$here/redis-stop.sh"
    exec "$here/redis-start.sh"
    ;;
status)
    if pid=$(tv_redis_running_pid); then
        tv_log "running (pid $pid) on 127.0.0.1:$REDIS_PORT"
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
