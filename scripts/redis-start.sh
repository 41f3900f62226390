#!/usr/bin/env bash
# Start (or reuse) a throwaway Redis for token-vendor's tests.
#
#   scripts/redis-start.sh   -> last stdout line: redis://127.0.0.1:PORT
#                               (also written to $TV_SERVICES_DIR/redis.url)
#
# - Installs Debian's redis-server if missing (apt-get update at most once per run;
#   under CI=true a failed install is fatal).
# - Daemonized redis-server bound to 127.0.0.1:$REDIS_PORT (default 56379) only,
#   protected mode on, no persistence (--save '' --appendonly no); pidfile, logfile
#   and working dir in $TV_SERVICES_DIR/redis (default /tmp/token-vendor-services).
# - Reuses a server of ours already answering PING on that port.
# Stop / start the same server from tests:  scripts/redis-ctl.sh stop|start
# Stop for good:                             scripts/redis-stop.sh
set -euo pipefail
TV_SCRIPT=redis-start
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

exec 3>&1 1>&2 # real stdout on fd 3 for the URL; everything else -> stderr

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    tv_log "redis-server not found; installing Debian's redis-server"
    if ! tv_apt_install redis-server redis-tools; then
        tv_die "could not install redis-server.
    Install it with:  apt-get update && apt-get install -y --no-install-recommends redis-server"
    fi
    command -v redis-server >/dev/null 2>&1 || tv_die "redis-server still missing after apt-get install"
fi
tv_log "$(redis-server --version)"

tv_ensure_services_dir
mkdir -p "$TV_REDIS_DIR"
chmod 0700 "$TV_REDIS_DIR"

ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

if pid=$(tv_redis_running_pid) && ping; then
    tv_log "Redis already running (pid $pid) on 127.0.0.1:$REDIS_PORT: reusing it"
else
    if pid=$(tv_redis_running_pid); then
        # Ours, but not answering on the wanted port: stop it and start cleanly.
        tv_log "Redis pid $pid is not answering on port $REDIS_PORT: stopping it"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$TV_REDIS_PID"
    if tv_port_in_use "$REDIS_PORT"; then
        tv_die "port 127.0.0.1:$REDIS_PORT is already in use by another process; set REDIS_PORT to a free port"
    fi
    tv_log "starting redis-server on 127.0.0.1:$REDIS_PORT (no persistence), log $TV_REDIS_LOG"
    : >"$TV_REDIS_LOG"
    tv_spawn_daemon redis-server \
        --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --daemonize yes --pidfile "$TV_REDIS_PID" --logfile "$TV_REDIS_LOG" \
        --dir "$TV_REDIS_DIR" --save '' --appendonly no \
        --databases 16 ||
        {
            tail -n 30 "$TV_REDIS_LOG" >&2 || true
            tv_die "redis-server failed to start"
        }
fi

ok=false
for _ in $(seq 1 100); do
    if ping; then ok=true; break; fi
    sleep 0.1
done
if ! $ok; then
    tail -n 30 "$TV_REDIS_LOG" >&2 || true
    tv_die "Redis did not answer PING on 127.0.0.1:$REDIS_PORT"
fi

url="redis://127.0.0.1:$REDIS_PORT"
printf '%s\n' "$url" >"$TV_REDIS_URL_FILE.tmp"
mv -f "$TV_REDIS_URL_FILE.tmp" "$TV_REDIS_URL_FILE"
tv_log "Redis ready; URL written to $TV_REDIS_URL_FILE"
printf '%s\n' "$url" >&3
