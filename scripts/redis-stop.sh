#!/usr/bin/env bash
# Stop the throwaway test Redis started by scripts/redis-start.sh. Succeeds when none runs.
set -euo pipefail
TV_SCRIPT=redis-stop
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec 1>&2

if ! pid=$(tv_redis_running_pid); then
    tv_log "no test Redis running"
    rm -f "$TV_REDIS_PID"
    exit 0
fi
tv_log "stopping Redis (pid $pid)"
if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
fi
kill "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
done
if [ -d "/proc/$pid" ]; then
    tv_log "Redis did not exit in 10s: SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
fi
rm -f "$TV_REDIS_PID"
