#!/usr/bin/env bash
# Relay-mode benchmark: N real-time audio streams through token-vendor's relay, through
# nginx as a plain WebSocket proxy (the anchor) and straight to the upstream (the floor),
# same load generator, same upstream, back to back in the same run. See bench/README.md.
#
#   bench/relay.sh            full run (100 and 1,000 streams, about 5 min); puts its
#                             table at the top of bench/RESULTS.md
#   bench/relay.sh --smoke    seconds-long run (CI), debug build unless BENCH_RELEASE=1;
#                             asserts no speed, fails when a stream fails or a frame is
#                             lost; writes $BENCH_WORK/RESULTS-relay.md and prints it
#
# Environment knobs (defaults in brackets; smoke in braces):
#   RELAY_STREAMS        stream counts to run               [100 1000] {20}
#   RELAY_WARMUP         seconds of sending before measuring [5] {1}
#   RELAY_MEASURE        seconds measured                    [30] {2}
#   RELAY_DRAIN          seconds allowed for the last answers [5]
#   UPSTREAM_LATENCY_MS  latency of the Keycloak-shaped token endpoint (the vend at
#                        each relay upgrade; not on the frames)            [20]
#   BENCH_BIN_DIR        directory holding token-vendor and examples/bench_support and
#                        examples/relay_bench; when set nothing is built  [unset: cargo build]
#   BENCH_OUT            results file          [bench/RESULTS.md; smoke: work dir]
#   BENCH_WORK           scratch dir (kept with --keep)      [mktemp under /tmp]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SMOKE=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
    --smoke) SMOKE=1 ;;
    --keep) KEEP=1 ;;
    -h | --help)
        sed -n '2,23p' "$0"
        exit 0
        ;;
    *)
        echo "bench/relay.sh: unknown argument $arg" >&2
        exit 2
        ;;
    esac
done

if [ "$SMOKE" = 1 ]; then
    : "${RELAY_STREAMS:=20}" "${RELAY_WARMUP:=1}" "${RELAY_MEASURE:=2}"
else
    : "${RELAY_STREAMS:=100 1000}" "${RELAY_WARMUP:=5}" "${RELAY_MEASURE:=30}"
fi
: "${RELAY_DRAIN:=5}"
: "${UPSTREAM_LATENCY_MS:=20}"

log() { printf '[relay-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- tools -------------------------------------------------------------------------------
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tool nginx nginx-light
need_tool curl curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -n "${BENCH_BIN_DIR:-}" ]; then
    BUILD=$(basename "$BENCH_BIN_DIR")
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    if [ "$SMOKE" = 1 ] && [ "${BENCH_RELEASE:-0}" != 1 ]; then
        BUILD=debug
        BUILD_FLAGS=()
    else
        BUILD=release
        BUILD_FLAGS=(--release)
    fi
    log "cargo build ${BUILD_FLAGS[*]} (token-vendor, examples bench_support and relay_bench)"
    cargo build "${BUILD_FLAGS[@]}" --bin token-vendor --example bench_support --example relay_bench >&2
    BENCH_BIN_DIR=$CARGO_TARGET_DIR/$BUILD
fi
BIN="$BENCH_BIN_DIR/token-vendor"
SUPPORT="$BENCH_BIN_DIR/examples/bench_support"
RELAY_BENCH="$BENCH_BIN_DIR/examples/relay_bench"

# --- scratch and clean-up ----------------------------------------------------------------
W=${BENCH_WORK:-$(mktemp -d /tmp/tv-relay-bench.XXXXXX)}
mkdir -p "$W"
if [ "$SMOKE" = 1 ]; then OUT=${BENCH_OUT:-$W/RESULTS-relay.md}; else OUT=${BENCH_OUT:-$ROOT/bench/RESULTS.md}; fi
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$rc" != 0 ]; then
        log "failed; scratch kept in $W"
    elif [ "$KEEP" = 0 ] && [ -z "${BENCH_WORK:-}" ]; then
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT

# Each stream holds a socket in the load generator, two in the proxy and one in the
# upstream; every process started from here inherits this limit.
max_streams=0
for n in $RELAY_STREAMS; do [ "$n" -le "$max_streams" ] || max_streams=$n; done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge $((2 * max_streams + 256)) ] ||
    die "open-file limit $(ulimit -n) is too low for $max_streams streams (ulimit -n)"

CLIENT_ID=bench-client
CLIENT_SECRET=$(hex 16)
SESSION_SECRET=$(hex 32)
AUDIT_KEY=$(hex 32)
HZ=$(getconf CLK_TCK)

# --- upstreams ---------------------------------------------------------------------------
# The token endpoint (each relay upgrade vends a token) and the speech socket.
start_upstream "$UPSTREAM_LATENCY_MS"
log "starting the speech upstream (echo per frame)"
"$RELAY_BENCH" upstream --port-file "$W/speech.port" 2>"$W/speech.log" &
SPEECH_PID=$!
PIDS+=("$SPEECH_PID")
for _ in $(seq 100); do [ -s "$W/speech.port" ] && break; sleep 0.1; done
[ -s "$W/speech.port" ] || die "the speech upstream did not start (see $W/speech.log)"
SPEECH_PORT=$(cat "$W/speech.port")
CORTI_API_URL="ws://127.0.0.1:$SPEECH_PORT"
SPEECH_PATH="/audio-bridge/v2/transcribe?tenant-name=base&token=Bearer%20bench"

# One user per stream: a user may hold only a few streams (RELAY_MAX_STREAMS_PER_USER).
"$SUPPORT" sessions --secret "$SESSION_SECRET" --prefix relay --count "$max_streams" --files 1 --out "$W/relay"

# --- nginx as a plain WebSocket proxy ----------------------------------------------------
NGINX_PID=
start_nginx() { # start_nginx NAME
    local dir=$W/nginx-$1 port
    port=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
# nginx as a plain WebSocket proxy to the speech upstream: the anchor.
worker_processes auto;
worker_rlimit_nofile $(ulimit -n);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://127.0.0.1:$SPEECH_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
EOF
    "$NGINX" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/stderr.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    NGINX_URL="ws://127.0.0.1:$port"
    for _ in $(seq 50); do
        [ -n "$(pgrep -P "$NGINX_PID" 2>/dev/null || true)" ] && curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
        sleep 0.1
    done
    die "nginx did not start (see $dir)"
}
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# --- runs --------------------------------------------------------------------------------
# run_load NAME URL PIDS... -> LAST (the RESULT line)
LAST=
run_load() {
    local name=$1 url=$2 n=$3 out load0 load1
    shift 3
    local pid_args=()
    for p in "$@"; do pid_args+=(--pid "$p"); done
    load0=$(cut -d' ' -f1 /proc/loadavg)
    out=$("$RELAY_BENCH" load --url "$url" --sessions "$W/relay.0" --streams "$n" \
        --warmup "$RELAY_WARMUP" --measure "$RELAY_MEASURE" --drain "$RELAY_DRAIN" \
        --hz "$HZ" --target "$name" "${pid_args[@]}" 2>"$W/load-$name-$n.log") ||
        die "the load generator failed for $name ($n streams): $(tail -n 5 "$W/load-$name-$n.log")"
    load1=$(cut -d' ' -f1 /proc/loadavg)
    LAST="$(grep '^RESULT ' <<<"$out" | tail -n 1) loadavg=$load0→$load1"
    [ -n "$LAST" ] || die "no RESULT from the load generator for $name"
    log "$name $n: $LAST"
    if [ "$(field opened)" != "$n" ] || [ "$(field broke)" != 0 ] || [ "$(field lost)" != 0 ] ||
        [ "$(field sent)" != "$(field expected)" ]; then
        cat "$W/load-$name-$n.log" >&2 || true
        if [ "$SMOKE" = 1 ]; then die "$name: streams failed or frames lost: $LAST"; fi
        log "WARNING: $name ($n streams): streams failed or frames lost"
    fi
}
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$LAST"; }
calc() { awk "BEGIN {printf \"$1\", ($2)}"; }

ROWS=()
SUMMARY=()
for n in $RELAY_STREAMS; do
    # the floor: straight to the upstream
    run_load direct "$CORTI_API_URL$SPEECH_PATH" "$n"
    d50=$(field p50_ms) d99=$(field p99_ms)
    ROWS+=("| $n | direct (floor) | $(field opened) | $(field sent)/$(field expected) | $(field lost) | $d50 | $d99 | $(field p999_ms) | - | - | - | - | - | $(field loadavg) |")

    # the anchor: nginx, a fresh one for each stream count
    start_nginx "$n"
    # shellcheck disable=SC2046
    run_load nginx "$NGINX_URL$SPEECH_PATH" "$n" "$NGINX_PID" $(pgrep -P "$NGINX_PID")
    stop_pid "$NGINX_PID"
    n_cpu=$(calc %.4f "$(field cpu_s) / ($n * $(field window_s) / 60)")
    n_rss=$(calc %.1f "($(field rss_kib) - $(field rss_idle_kib)) / $n")
    ROWS+=("| $n | $("$NGINX" -v 2>&1 | sed 's/.*: //; s|/| |') | $(field opened) | $(field sent)/$(field expected) | $(field lost) | $(field p50_ms) | $(field p99_ms) | $(field p999_ms) | $(calc %+.3f "$(field p50_ms) - $d50") | $(calc %+.3f "$(field p99_ms) - $d99") | $n_cpu | $n_rss | $(calc %.1f "$(field rss_kib) / 1024") | $(field loadavg) |")

    # token-vendor's relay, a fresh replica for each stream count
    RELAY_MAX_STREAMS=$n
    start_service "sqlite://$W/audit-$n.db" "$W/service-$n.log"
    run_load token-vendor "${SERVICE_URL/http:/ws:}/v1/relay/transcribe" "$n" "$SERVICE_PID"
    stop_pid "$SERVICE_PID"
    t_cpu=$(calc %.4f "$(field cpu_s) / ($n * $(field window_s) / 60)")
    t_rss=$(calc %.1f "($(field rss_kib) - $(field rss_idle_kib)) / $n")
    t_add99=$(calc %.3f "$(field p99_ms) - $d99")
    ROWS+=("| $n | token-vendor relay ($BUILD) | $(field opened) | $(field sent)/$(field expected) | $(field lost) | $(field p50_ms) | $(field p99_ms) | $(field p999_ms) | $(calc %+.3f "$(field p50_ms) - $d50") | $(calc %+.3f "$(field p99_ms) - $d99") | $t_cpu | $t_rss | $(calc %.1f "$(field rss_kib) / 1024") | $(field loadavg) |")
    held=$([ "$(field opened)" = "$n" ] && [ "$(field broke)" = 0 ] && [ "$(field lost)" = 0 ] && [ "$(field sent)" = "$(field expected)" ] && echo met || echo "NOT met")
    SUMMARY+=("- $n streams: all held, no frame lost: **$held**; p99 added over direct $t_add99 ms (target <= 2): **$(calc %s "$t_add99 <= 2 ? \"met\" : \"NOT met\"")**; CPU per stream-minute $(calc %.2f "$n_cpu > 0 ? $t_cpu / $n_cpu : 0")x nginx's, RSS per stream $(calc %.2f "$n_rss > 0 ? $t_rss / $n_rss : 0")x nginx's (target <= 1.5 each)")
done

# --- results -----------------------------------------------------------------------------
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
mem_total=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo " (+ uncommitted changes)" || true)
section=$(
    echo '<!-- relay-bench:begin (bench/relay.sh writes this section; bench/run.sh keeps it) -->'
    echo "# Relay mode: real-time audio streams"
    echo
    if [ "$SMOKE" = 1 ]; then echo "**Smoke run: seconds-long, the figures mean nothing.**"; echo; fi
    echo "- Command: \`bench/relay.sh$([ "$SMOKE" = 1 ] && echo ' --smoke' || true)\` with" \
        "RELAY_STREAMS=\"$RELAY_STREAMS\" RELAY_WARMUP=$RELAY_WARMUP RELAY_MEASURE=$RELAY_MEASURE" \
        "RELAY_DRAIN=$RELAY_DRAIN UPSTREAM_LATENCY_MS=$UPSTREAM_LATENCY_MS"
    echo "- Date: $(date -u +%Y-%m-%dT%H:%MZ); commit $commit$dirty"
    echo "- Machine: nproc $(nproc), $mem_total RAM, $cpu_model, kernel $(uname -r);" \
        "shared with other work (1-min load average before→after each run in the last column)"
    echo "- Load: \`examples/relay_bench load\` (bench/relay.rs): per stream one WebSocket, the" \
        "config, then a 3,200-byte binary frame (100 ms of 16 kHz 16-bit PCM) every 100 ms," \
        "streams' ticks spread over the 100 ms; ${RELAY_WARMUP} s warm-up, ${RELAY_MEASURE} s measured"
    echo "- Upstream: \`examples/relay_bench upstream\`, answers the config CONFIG_ACCEPTED and each" \
        "frame at once with a small JSON text message carrying the frame's send time"
    echo "- Service: $BUILD build, \`token-vendor serve\`, SQLite audit (WAL, synchronous=FULL)," \
        "RELAY_MAX_STREAMS = the stream count, one user per stream; a fresh replica, and a fresh" \
        "nginx (worker_processes auto), per stream count"
    echo
    echo "Latency = a frame's round trip (sent → its answer back at the load generator), over" \
        "the frames sent in the measured window; \"added\" = that percentile minus direct's, so" \
        "it holds both directions through the proxy. CPU = user+system seconds of the proxy" \
        "(nginx: master+workers) over the window per stream-minute. RSS/stream = (VmRSS with" \
        "the streams open − VmRSS before they opened) / streams; RSS = with the streams open."
    echo
    echo "| streams | path | opened | frames sent/expected | lost | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | CPU s/stream-min | RSS KiB/stream | RSS MiB | load avg |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Targets (token-vendor vs the same run's direct and nginx rows):"
    echo
    printf '%s\n' "${SUMMARY[@]}"
    echo '<!-- relay-bench:end -->'
)
# The section goes at the top of the results file, replacing an earlier one.
rest=
if [ -f "$OUT" ]; then
    rest=$(sed '/^<!-- relay-bench:begin/,/^<!-- relay-bench:end -->/d' "$OUT")
fi
{
    echo "$section"
    if [ -n "$rest" ]; then
        echo
        echo "$rest"
    fi
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "results written to $OUT"
if [ "$SMOKE" = 1 ]; then cat "$OUT"; fi
