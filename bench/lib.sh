# Shared by bench/run.sh and bench/soak.sh (sourced, after each defines `log` and `die`
# and sets ROOT, W, PIDS, SUPPORT, BIN and the secrets CLIENT_ID, CLIENT_SECRET,
# SESSION_SECRET, AUDIT_KEY).

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

need_tool() { # need_tool COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [ -x "/usr/sbin/$1" ] && return 0
    log "$1 not found; installing the Debian package $2"
    tv_apt_install "$2" >&2 || true
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ||
        die "$1 is required (apt-get install $2)"
}

hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000))
}

# start_upstream LATENCY_MS: the Keycloak-shaped upstream; sets UPSTREAM_PID, UPSTREAM_URL.
start_upstream() {
    log "starting the Keycloak-shaped upstream ($1 ms latency)"
    "$SUPPORT" upstream --latency-ms "$1" --client-id "$CLIENT_ID" \
        --client-secret "$CLIENT_SECRET" --port-file "$W/upstream.port" 2>"$W/upstream.log" &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    for _ in $(seq 100); do [ -s "$W/upstream.port" ] && break; sleep 0.1; done
    [ -s "$W/upstream.port" ] || die "the upstream did not start (see $W/upstream.log)"
    UPSTREAM_URL="http://127.0.0.1:$(cat "$W/upstream.port")"
}
upstream_calls() { curl -fsS "$UPSTREAM_URL/_bench/calls"; }

# start_service DATABASE_URL LOG_FILE: `token-vendor serve` as benchmarked (reuse on,
# limits on but far above the load, durable audit) until ready; sets SERVICE_PID and
# SERVICE_URL. CORTI_API_URL and RELAY_MAX_STREAMS (relay mode) are passed when set.
# Audit lines go to stdout as JSON (formatted and written as in
# production), here to /dev/null so a 1M-user run does not fill the disk.
start_service() {
    local url=$1 logfile=$2 port
    port=$(free_port)
    # mimalloc's own options (MIMALLOC_PURGE_DELAY=0, ...) pass through, for experiments.
    local mimalloc_opts
    mapfile -t mimalloc_opts < <(env | grep '^MIMALLOC_' || true)
    env -i PATH="$PATH" HOME="$HOME" \
        LISTEN_ADDR="127.0.0.1:$port" \
        CORTI_ENVIRONMENT=eu \
        CORTI_AUTH_URL="$UPSTREAM_URL" \
        CORTI_CLIENT_ID="$CLIENT_ID" \
        CORTI_CLIENT_SECRET="$CLIENT_SECRET" \
        SESSION_JWT_SECRET="$SESSION_SECRET" \
        AUDIT_HMAC_KEY="$AUDIT_KEY" \
        AUDIT_ALLOW_UNSIGNED=true \
        DATABASE_URL="$url" \
        TOKEN_REUSE_MIN_TTL=60 \
        RATE_LIMIT_PER_USER=1000000/second \
        RATE_LIMIT_PER_IP=100000000/second \
        UPSTREAM_RATE_LIMIT=1000000/second \
        ${CORTI_API_URL:+CORTI_API_URL="$CORTI_API_URL"} \
        ${RELAY_MAX_STREAMS:+RELAY_MAX_STREAMS="$RELAY_MAX_STREAMS"} \
        ${TOKIO_WORKER_THREADS:+TOKIO_WORKER_THREADS="$TOKIO_WORKER_THREADS"} \
        ${MALLOC_ARENA_MAX:+MALLOC_ARENA_MAX="$MALLOC_ARENA_MAX"} \
        ${SERVICE_PRELOAD:+LD_PRELOAD="$SERVICE_PRELOAD"} \
        "${mimalloc_opts[@]}" \
        "$BIN" serve >/dev/null 2>"$logfile" &
    SERVICE_PID=$!
    PIDS+=("$SERVICE_PID")
    SERVICE_URL="http://127.0.0.1:$port"
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$SERVICE_URL/readyz" 2>/dev/null && return 0
        kill -0 "$SERVICE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "the service did not become ready (see $logfile)"
}

# start_own_pg: the script's own PostgreSQL (never the shared test one) in $W/services on
# the first free port from BENCH_PG_PORT; sets OWN_PG_URL and PG_STARTED=1 (the caller's
# clean-up stops it). Not for a command substitution: it sets variables.
start_own_pg() {
    for _ in $(seq 20); do tv_port_in_use "$BENCH_PG_PORT" || break; BENCH_PG_PORT=$((BENCH_PG_PORT + 1)); done
    log "starting the script's own PostgreSQL on port $BENCH_PG_PORT ($W/services)"
    PG_STARTED=1
    OWN_PG_URL=$(TV_SERVICES_DIR="$W/services" PG_PORT=$BENCH_PG_PORT PG_FRESH=1 "$ROOT/scripts/pg-start.sh" 2>"$W/pg-start.log" | tail -n 1) || true
    [ -n "$OWN_PG_URL" ] || {
        tail -n 20 "$W/pg-start.log" >&2
        die "PostgreSQL did not start (see $W/pg-start.log)"
    }
}
