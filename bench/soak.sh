#!/usr/bin/env bash
# token-vendor memory soak (issue 15: "<= 100 MiB RSS after 1,000,000 users, flat over a
# 10-minute soak"). CI runs a 2-minute version (.ci/run). See bench/README.md.
#
#   bench/soak.sh        about 15 min with the defaults; prints a summary, writes the RSS
#                        samples to $SOAK_WORK/rss.csv and the summary to $SOAK_WORK/summary.md
#
# It starts the Keycloak-shaped upstream (examples/bench_support.rs) and `token-vendor serve`
# with durable audit (SQLite WAL synchronous=FULL by default), then:
#   1. mint: SOAK_USERS distinct users, each once (wrk, bench/vend.lua stream mode), until
#      the upstream has answered SOAK_USERS token calls (one per new user); RSS is read
#      2 s after the phase ends;
#   2. soak, SOAK_SECONDS: reuse of a rotating window of SOAK_REUSE_USERS of those users
#      (wrk -t2 -cSOAK_REUSE_CONNS, vend.lua cycle mode, the window moves on every
#      SOAK_CHUNK seconds), plus a trickle of about SOAK_NEW_PER_S new users a second
#      (bench/vend.lua in stream mode with a pause before each request, one connection).
# From the service's start, VmRSS, VmHWM and VmRSS's parts RssAnon/RssFile/RssShmem
# (/proc/PID/status) are sampled every SOAK_SAMPLE seconds into rss.csv. The summary gives the RSS after the mint phase,
# min/max/last RSS during the soak, the least-squares slope (MiB/min) over the soak
# samples (for VmRSS, and for its anonymous and file-backed parts), smaps_rollup (anonymous vs file-backed) after each phase, and PASS/FAIL against
# "<= SOAK_MAX_MIB after SOAK_USERS users" and "flat: slope < SOAK_MAX_SLOPE MiB/min".
# Any non-2xx answer or socket error (counted by wrk) fails the run (exit 1); exit 1 also
# when a target is missed.
#
# Environment knobs (defaults in brackets):
#   SOAK_DB              sqlite | postgres (the script's own cluster, as bench/run.sh) [sqlite]
#   SOAK_USERS           distinct users minted in phase 1                       [1000000]
#   SOAK_MINT_CONNS      wrk connections for phase 1                            [256]
#   SOAK_MINT_BUDGET     seconds allowed for phase 1 (fails when exceeded)       [1200]
#   SOAK_SECONDS         length of the soak                                     [600]
#   SOAK_REUSE_USERS / SOAK_REUSE_CONNS / SOAK_CHUNK   rotating reuse window    [10000/64/60]
#   SOAK_NEW_PER_S       new users a second during the soak (about)             [20]
#   SOAK_SAMPLE          sampling interval, seconds                             [10]
#   SOAK_UPSTREAM_LATENCY_MS  the upstream's latency (0: phase 1 takes minutes)  [0]
#   SOAK_WARMUP          seconds of the soak left out of the slope (caches filling) [60]
#   SOAK_MAX_MIB / SOAK_MAX_SLOPE   the targets (slope: MiB/min after the warm-up) [100/0.5]
#   BENCH_BIN_DIR        directory holding token-vendor and examples/bench_support of a
#                        release build; when set nothing is built    [unset: cargo build --release]
#   SOAK_WORK            scratch dir (kept)                         [mktemp under /tmp]
#   BENCH_PG_PORT        first port tried for the own PostgreSQL     [25642]
#   SOAK_HEAPTRACK       1: heap-profile the soak phase with heaptrack (attached after
#                        phase 1), all: both phases; written to $SOAK_WORK at the end   [0]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
case "${1:-}" in
-h | --help)
    sed -n '2,42p' "$0"
    exit 0
    ;;
"") ;;
*)
    echo "bench/soak.sh: unknown argument $1" >&2
    exit 2
    ;;
esac

: "${SOAK_DB:=sqlite}" "${SOAK_USERS:=1000000}" "${SOAK_MINT_CONNS:=256}" "${SOAK_MINT_BUDGET:=1200}"
: "${SOAK_SECONDS:=600}" "${SOAK_REUSE_USERS:=10000}" "${SOAK_REUSE_CONNS:=64}" "${SOAK_CHUNK:=60}"
: "${SOAK_NEW_PER_S:=20}" "${SOAK_SAMPLE:=10}" "${SOAK_UPSTREAM_LATENCY_MS:=0}"
: "${SOAK_MAX_MIB:=100}" "${SOAK_MAX_SLOPE:=0.5}" "${SOAK_WARMUP:=60}" "${BENCH_PG_PORT:=25642}"
case "$SOAK_DB" in sqlite | postgres) ;; *)
    echo "SOAK_DB must be sqlite or postgres" >&2
    exit 2
    ;;
esac
[ $((SOAK_REUSE_USERS % 2)) = 0 ] && [ "$SOAK_REUSE_USERS" -le "$SOAK_USERS" ] ||
    { echo "SOAK_REUSE_USERS must be even and <= SOAK_USERS" >&2; exit 2; }

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tool wrk wrk
need_tool curl curl

if [ -n "${BENCH_BIN_DIR:-}" ]; then
    BIN="$BENCH_BIN_DIR/token-vendor"
    SUPPORT="$BENCH_BIN_DIR/examples/bench_support"
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    log "cargo build --release (token-vendor, example bench_support)"
    cargo build --release --bin token-vendor --example bench_support >&2
    BIN="$CARGO_TARGET_DIR/release/token-vendor"
    SUPPORT="$CARGO_TARGET_DIR/release/examples/bench_support"
fi
[ -x "$BIN" ] && [ -x "$SUPPORT" ] || die "missing $BIN or $SUPPORT"

W=${SOAK_WORK:-$(mktemp -d /tmp/tv-soak.XXXXXX)}
mkdir -p "$W"
chmod 0755 "$W" # the own PostgreSQL runs as another user and must traverse it
PIDS=()
PG_STARTED=0
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$PG_STARTED" = 1 ]; then
        TV_SERVICES_DIR="$W/services" PG_PORT=$BENCH_PG_PORT "$ROOT/scripts/pg-stop.sh" >/dev/null 2>&1 || true
    fi
    log "scratch (rss.csv, summary.md, logs) in $W"
    exit "$rc"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

CLIENT_ID=soak-client
CLIENT_SECRET=$(hex 16)
SESSION_SECRET=$(hex 32)
AUDIT_KEY=$(hex 32)

# --- upstream ------------------------------------------------------------------------------
start_upstream "$SOAK_UPSTREAM_LATENCY_MS"

# --- session JWTs (users i are dealt round-robin: user i is line i/2+1 of FILE.(i%2)) ------
NEW_USERS=$((SOAK_NEW_PER_S * SOAK_SECONDS * 2 + 1000))
log "pre-signing session JWTs ($SOAK_USERS users, $NEW_USERS for the trickle)"
"$SUPPORT" sessions --secret "$SESSION_SECRET" --prefix soak --count "$SOAK_USERS" --files 2 --out "$W/users"
"$SUPPORT" sessions --secret "$SESSION_SECRET" --prefix new --count "$NEW_USERS" --files 1 --out "$W/new"

# --- the service ---------------------------------------------------------------------------
case "$SOAK_DB" in
sqlite) DB_URL="sqlite://$W/audit.db" ;;
postgres)
    start_own_pg
    DB_URL=$OWN_PG_URL
    ;;
esac
start_service "$DB_URL" "$W/service.log"
SVC=$SERVICE_PID
URL=$SERVICE_URL
alive() { kill -0 "$SVC" 2>/dev/null || die "the service exited (see $W/service.log)"; }

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$SVC/status"; }
mib() { awk -v k="${1:-0}" 'BEGIN {printf "%.1f", k / 1024}'; }
smaps() { # anonymous vs file-backed resident memory, and the biggest file mappings
    awk '$1 ~ /^(Rss|Anonymous|Pss_Anon|Pss_File|Pss_Shmem|Shared_Clean|Private_Clean|Private_Dirty):$/ {printf "%s %.1f MiB; ", $1, $2 / 1024}' \
        "/proc/$SVC/smaps_rollup"
    echo
    awk '/^[0-9a-f]+-[0-9a-f]+ / {name = $6 ? $6 : "[anon]"} $1 == "Rss:" {rss[name] += $2}
         END {for (n in rss) printf "%d %s\n", rss[n], n}' "/proc/$SVC/smaps" |
        sort -rn | head -n 6 | awk '{printf "  %s: %.1f MiB\n", $2, $1 / 1024}'
}

# A heap profile: heaptrack attaches to the running service and writes
# $W/heaptrack.zst when it exits (read it with heaptrack_print; -M for a timeline).
heap_profile() {
    command -v heaptrack >/dev/null 2>&1 || die "SOAK_HEAPTRACK needs heaptrack (Debian: heaptrack)"
    heaptrack -o "$W/heaptrack" -p "$SVC" >"$W/heaptrack.log" 2>&1 &
    PIDS+=("$!")
    sleep 3
    log "heaptrack attached to $SVC (log: $W/heaptrack.log)"
}
if [ "${SOAK_HEAPTRACK:-0}" = all ]; then heap_profile; fi

# --- sampler: every SOAK_SAMPLE s from the start, phase read from a file ------------------
T0=$(date +%s)
echo mint >"$W/phase"
echo "elapsed_s,phase,upstream_calls,vmrss_kib,vmhwm_kib,rssanon_kib,rssfile_kib,rssshmem_kib" >"$W/rss.csv"
status_row() { # VmRSS,VmHWM,RssAnon,RssFile,RssShmem in KiB
    awk '$1 ~ /^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):$/ {v[$1] = $2}
        END {printf "%s,%s,%s,%s,%s", v["VmRSS:"], v["VmHWM:"], v["RssAnon:"], v["RssFile:"], v["RssShmem:"]}' \
        "/proc/$SVC/status"
}
(
    while kill -0 "$SVC" 2>/dev/null; do
        r=$(status_row 2>/dev/null) || break
        c=$(upstream_calls 2>/dev/null || echo -)
        echo "$(($(date +%s) - T0)),$(cat "$W/phase"),$c,$r" >>"$W/rss.csv"
        sleep "$SOAK_SAMPLE"
    done
) &
PIDS+=("$!")

# --- wrk results ---------------------------------------------------------------------------
NON2XX=0
ERRORS=0
REQS=0
WRAPPED=0
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }
account() { # account NAME OUTPUT_FILE -> RESULT line on stdout, totals updated
    local line
    line=$(grep '^RESULT ' "$2" | tail -n 1) || true
    [ -n "$line" ] || die "no RESULT from wrk for $1: $(cat "$2")"
    NON2XX=$((NON2XX + $(field non2xx "$line")))
    ERRORS=$((ERRORS + $(field errors "$line")))
    REQS=$((REQS + $(field requests "$line")))
    log "$1: $line"
    if [ "$(field non2xx "$line")" != 0 ] || [ "$(field errors "$line")" != 0 ]; then
        log "ERROR: $1 had non-2xx answers or socket errors: $line"
    fi
    RESULT=$line
}

# --- phase 1: SOAK_USERS distinct users ------------------------------------------------------
rss_idle=$(kib VmRSS)
calls0=$(upstream_calls)
log "phase 1: minting $SOAK_USERS distinct users (-t2 -c$SOAK_MINT_CONNS, budget ${SOAK_MINT_BUDGET}s)"
t1=$(date +%s)
wrk -t2 -c"$SOAK_MINT_CONNS" -d"${SOAK_MINT_BUDGET}s" --timeout 10s -s bench/vend.lua "$URL" -- "$W/users" stream \
    >"$W/wrk-mint.out" 2>&1 &
WRK=$!
PIDS+=("$WRK")
minted=0
while kill -0 "$WRK" 2>/dev/null; do
    minted=$(($(upstream_calls) - calls0))
    [ "$minted" -ge "$SOAK_USERS" ] && break
    alive
    sleep 1
done
kill -INT "$WRK" 2>/dev/null || true # wrk prints its summary on SIGINT
wait "$WRK" || die "wrk failed in phase 1: $(cat "$W/wrk-mint.out")"
mint_secs=$(($(date +%s) - t1))
account "phase 1 (mint)" "$W/wrk-mint.out"
MINT_RESULT=$RESULT
minted=$(($(upstream_calls) - calls0))
[ "$minted" -ge "$SOAK_USERS" ] || die "only $minted of $SOAK_USERS users minted within ${SOAK_MINT_BUDGET}s"
[ "$NON2XX" = 0 ] && [ "$ERRORS" = 0 ] || die "phase 1: $NON2XX non-2xx answers, $ERRORS socket errors"
sleep 2
alive
rss_1m=$(kib VmRSS)
hwm_1m=$(kib VmHWM)
smaps_1m=$(smaps)
log "after $minted users (${mint_secs}s): VmRSS $(mib "$rss_1m") MiB, VmHWM $(mib "$hwm_1m") MiB"
log "smaps: $smaps_1m"
echo "$(($(date +%s) - T0)),after-mint,$(upstream_calls),$(status_row)" >>"$W/rss.csv"

# --- phase 2: the soak ------------------------------------------------------------------------
if [ "${SOAK_HEAPTRACK:-0}" = 1 ]; then heap_profile; fi
echo soak >"$W/phase"
soak_t0=$(($(date +%s) - T0))
calls_soak0=$(upstream_calls)
trickle_delay=$((1000 / SOAK_NEW_PER_S))
log "phase 2: soak ${SOAK_SECONDS}s: reuse of a rotating window of $SOAK_REUSE_USERS users (-t2 -c$SOAK_REUSE_CONNS), ~$SOAK_NEW_PER_S new users/s"
wrk -t1 -c1 -d"${SOAK_SECONDS}s" --timeout 10s -s bench/vend.lua "$URL" -- "$W/new" stream "$trickle_delay" \
    >"$W/wrk-trickle.out" 2>&1 &
TRICKLE=$!
PIDS+=("$TRICKLE")
end=$(($(date +%s) + SOAK_SECONDS))
start=0 # first user of the window
chunks=0
half=$((SOAK_REUSE_USERS / 2))
while :; do
    left=$((end - $(date +%s)))
    [ "$left" -ge 1 ] || break
    secs=$((left < SOAK_CHUNK ? left : SOAK_CHUNK))
    [ $((start + SOAK_REUSE_USERS)) -le "$SOAK_USERS" ] || start=0
    first=$((start / 2 + 1))
    for f in 0 1; do sed -n "${first},$((first + half - 1))p;$((first + half - 1))q" "$W/users.$f" >"$W/window.$f"; done
    wrk -t2 -c"$SOAK_REUSE_CONNS" -d"${secs}s" --timeout 10s -s bench/vend.lua "$URL" -- "$W/window" cycle \
        >"$W/wrk-reuse.out" 2>&1 || die "wrk failed in the soak: $(cat "$W/wrk-reuse.out")"
    account "soak users $start..$((start + SOAK_REUSE_USERS - 1)) (${secs}s)" "$W/wrk-reuse.out"
    alive
    chunks=$((chunks + 1))
    start=$((start + SOAK_REUSE_USERS))
done
wait "$TRICKLE" || die "wrk (trickle) failed: $(cat "$W/wrk-trickle.out")"
account "soak trickle of new users" "$W/wrk-trickle.out"
TRICKLE_RESULT=$RESULT
sleep 1
alive
rss_end=$(kib VmRSS)
hwm_end=$(kib VmHWM)
smaps_end=$(smaps)
echo "$(($(date +%s) - T0)),end,$(upstream_calls),$(status_row)" >>"$W/rss.csv"
soak_calls=$(($(upstream_calls) - calls_soak0))

# --- summary --------------------------------------------------------------------------------
# Soak samples: the sampler's rows in phase "soak" after the warm-up, plus the final reading.
soak_stats() { # soak_stats CSV_COLUMN -> "samples min max last slope" in MiB, MiB/min
    awk -F, -v t0="$soak_t0" -v w="$SOAK_WARMUP" -v c="$1" '($2 == "soak" && $1 - t0 >= w) || $2 == "end" {
        x = ($1 - t0) / 60; y = $c / 1024; n++; sx += x; sy += y; sxx += x * x; sxy += x * y
        if (n == 1 || y < min) min = y; if (n == 1 || y > max) max = y; last = y }
    END {
        d = n * sxx - sx * sx; slope = (n > 1 && d != 0) ? (n * sxy - sx * sy) / d : 0
        printf "%d %.1f %.1f %.1f %.3f", n, min, max, last, slope }' "$W/rss.csv"
}
read -r n_samples soak_min soak_max soak_last slope <<<"$(soak_stats 4)"
read -r _ anon_min anon_max anon_last anon_slope <<<"$(soak_stats 6)"
read -r _ file_min file_max file_last file_slope <<<"$(soak_stats 7)"
verdict_size=$(awk -v r="$(mib "$rss_1m")" -v m="$SOAK_MAX_MIB" 'BEGIN {print (r <= m) ? "PASS" : "FAIL"}')
verdict_flat=$(awk -v s="$slope" -v m="$SOAK_MAX_SLOPE" 'BEGIN {print (s < m) ? "PASS" : "FAIL"}')
[ "$n_samples" -ge 3 ] || verdict_flat="FAIL (only $n_samples samples)"
verdict_errors=PASS
[ "$NON2XX" = 0 ] && [ "$ERRORS" = 0 ] || verdict_errors=FAIL
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo "- Command: \`$([ -n "${BENCH_BIN_DIR:-}" ] && echo "BENCH_BIN_DIR=$BENCH_BIN_DIR ")bench/soak.sh\`" \
        "(SOAK_DB=$SOAK_DB SOAK_USERS=$SOAK_USERS SOAK_SECONDS=$SOAK_SECONDS SOAK_REUSE_USERS=$SOAK_REUSE_USERS" \
        "SOAK_REUSE_CONNS=$SOAK_REUSE_CONNS SOAK_CHUNK=$SOAK_CHUNK SOAK_NEW_PER_S=$SOAK_NEW_PER_S" \
        "SOAK_MINT_CONNS=$SOAK_MINT_CONNS SOAK_UPSTREAM_LATENCY_MS=$SOAK_UPSTREAM_LATENCY_MS SOAK_SAMPLE=$SOAK_SAMPLE" \
        "SOAK_WARMUP=$SOAK_WARMUP)"
    echo "- Date: $(date -u +%Y-%m-%dT%H:%MZ); commit $commit; machine: nproc $(nproc)," \
        "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, shared"
    echo "- Phase 1: $minted distinct users minted in ${mint_secs}s ($(field rps "$MINT_RESULT") vends/s," \
        "p99 $(field p99_ms "$MINT_RESULT") ms, wrapped $(field wrapped "$MINT_RESULT")); RSS idle $(mib "$rss_idle") MiB ->" \
        "**$(mib "$rss_1m") MiB after $minted users** (VmHWM $(mib "$hwm_1m") MiB)"
    echo "- Memory after phase 1 (smaps_rollup): $smaps_1m"
    echo "- Phase 2 (soak, ${SOAK_SECONDS}s, $chunks windows of $SOAK_REUSE_USERS users + trickle):" \
        "$REQS requests in all phases; trickle $(field requests "$TRICKLE_RESULT") new-user requests" \
        "(wrapped $(field wrapped "$TRICKLE_RESULT")); $soak_calls upstream calls during the soak"
    echo "- RSS during the soak after its first ${SOAK_WARMUP}s ($n_samples samples every ${SOAK_SAMPLE}s): min $soak_min, max $soak_max," \
        "last $soak_last MiB; VmHWM at the end $(mib "$hwm_end") MiB; **slope $slope MiB/min** (least squares)"
    echo "- Of which anonymous (RssAnon): min $anon_min, max $anon_max, last $anon_last MiB, slope $anon_slope MiB/min;" \
        "file-backed (RssFile): min $file_min, max $file_max, last $file_last MiB, slope $file_slope MiB/min"
    echo "- Memory at the end (smaps_rollup): $smaps_end"
    echo "- non-2xx answers: $NON2XX, socket errors: $ERRORS ($verdict_errors)"
    echo "- **$verdict_size**: <= $SOAK_MAX_MIB MiB after $SOAK_USERS users ($(mib "$rss_1m") MiB)"
    echo "- **$verdict_flat**: flat, slope < $SOAK_MAX_SLOPE MiB/min ($slope MiB/min)"
} >"$W/summary.md"
echo
cat "$W/summary.md"
echo
[ "$verdict_errors" = PASS ] || die "$NON2XX non-2xx answers, $ERRORS socket errors"
[ "$verdict_size" = PASS ] && [ "$verdict_flat" = PASS ] || die "a target was missed (see above)"
log "PASS"
