# shellcheck shell=bash
# Shared helpers for the service-provisioning scripts in scripts/.
# Sourced, not executed. Every human/diagnostic message goes to stderr so that
# the scripts' stdout carries only their machine-readable result.
#
# Environment knobs (all optional):
#   TV_SERVICES_DIR   where throwaway service state lives (default /tmp/token-vendor-services)
#   PG_PORT           PostgreSQL port on 127.0.0.1      (default 55432)
#   REDIS_PORT        Redis port on 127.0.0.1           (default 56379)
#   PG_BIN            directory holding initdb/pg_ctl/postgres (default: newest /usr/lib/postgresql/*/bin)
#   CI=true           any install failure is fatal, with a loud message

: "${TV_SERVICES_DIR:=/tmp/token-vendor-services}"
: "${PG_PORT:=55432}"
: "${REDIS_PORT:=56379}"
export TV_SERVICES_DIR PG_PORT REDIS_PORT

# shellcheck disable=SC2034 # used by the scripts that source this file
{
TV_PG_USER=tvpg
TV_PG_ROOT="$TV_SERVICES_DIR/postgres"
TV_PG_DATA="$TV_PG_ROOT/data"
TV_PG_SOCKDIR="$TV_PG_ROOT/run"
TV_PG_LOG="$TV_PG_ROOT/postgres.log"
TV_PG_URL_FILE="$TV_SERVICES_DIR/postgres.url"
TV_REDIS_DIR="$TV_SERVICES_DIR/redis"
TV_REDIS_PID="$TV_REDIS_DIR/redis.pid"
TV_REDIS_LOG="$TV_REDIS_DIR/redis.log"
TV_REDIS_URL_FILE="$TV_SERVICES_DIR/redis.url"
TV_APT_MARKER="$TV_SERVICES_DIR/.apt-updated"
}

tv_log() { printf '[%s] %s\n' "${TV_SCRIPT:-${0##*/}}" "$*" >&2; }

tv_die() {
    {
        printf '\n[%s] ERROR: %s\n' "${TV_SCRIPT:-${0##*/}}" "$*"
        if [ "${CI:-}" = true ]; then
            printf '[%s] (CI=true: this is fatal)\n\n' "${TV_SCRIPT:-${0##*/}}"
        fi
    } >&2
    exit 1
}

tv_is_ci() { [ "${CI:-}" = true ]; }

tv_ensure_services_dir() {
    mkdir -p "$TV_SERVICES_DIR"
    # The unprivileged PostgreSQL user must be able to traverse it.
    chmod 0755 "$TV_SERVICES_DIR" 2>/dev/null || true
}

# True when something accepts TCP connections on 127.0.0.1:$1.
tv_port_in_use() {
    (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Run `apt-get update` at most once per CI run / once a day locally.
# .ci/run removes the marker at its start, so each CI run updates at most once.
tv_apt_update_once() {
    tv_ensure_services_dir
    if [ -f "$TV_APT_MARKER" ] && [ -z "$(find "$TV_APT_MARKER" -mmin +1440 2>/dev/null)" ]; then
        return 0
    fi
    tv_log "apt-get update (once per run; marker $TV_APT_MARKER)"
    if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q update >&2; then
        date -u +%FT%TZ >"$TV_APT_MARKER"
    else
        return 1
    fi
}

# tv_apt_install PKG... : install Debian packages without recommends.
tv_apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        tv_log "not root: cannot apt-get install $*"
        return 1
    fi
    tv_apt_update_once || return 1
    tv_log "apt-get install -y --no-install-recommends $*"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q install -y \
        --no-install-recommends "$@" >&2
}

# Run a command that leaves a daemon behind, with every file descriptor above 2
# closed, so the daemon holds no pipe of its caller open (a `$(...)` or a test
# harness reading our output would otherwise wait for the daemon to exit).
tv_spawn_daemon() {
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        "$@"
    )
}

# 32 hex characters from the kernel CSPRNG (URL-safe, no quoting needed).
tv_random_hex() {
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

# ---------------------------------------------------------------- PostgreSQL

# Locate the PostgreSQL server binaries; sets TV_PG_BIN. Returns 1 if absent.
tv_pg_find_bin() {
    local d
    if [ -n "${PG_BIN:-}" ]; then
        [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || return 1
        TV_PG_BIN=$PG_BIN
        return 0
    fi
    # Newest major version first.
    local dirs=()
    mapfile -t dirs < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5nr)
    for d in "${dirs[@]}"; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            TV_PG_BIN=$d
            return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        TV_PG_BIN=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
        return 0
    fi
    return 1
}

tv_pg_require_bin() {
    tv_pg_find_bin && return 0
    tv_log "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; trying apt-get install postgresql"
    if tv_apt_install postgresql postgresql-client && tv_pg_find_bin; then
        return 0
    fi
    tv_die "PostgreSQL server binaries are missing and could not be installed.
    Install them with:  apt-get update && apt-get install -y postgresql
    (or set PG_BIN to a directory holding initdb, pg_ctl and postgres)"
}

# Create the dedicated system user that owns and runs the throwaway cluster.
tv_pg_ensure_user() {
    if id -u "$TV_PG_USER" >/dev/null 2>&1; then
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || tv_die "user $TV_PG_USER does not exist and we are not root to create it"
    tv_log "creating system user $TV_PG_USER"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment 'token-vendor test PostgreSQL' "$TV_PG_USER" >&2 ||
        id -u "$TV_PG_USER" >/dev/null 2>&1 || tv_die "could not create user $TV_PG_USER"
}

# Run a command as the cluster owner (PostgreSQL refuses to run as root).
tv_as_pg() {
    if [ "$(id -un)" = "$TV_PG_USER" ]; then
        (cd "$TV_PG_ROOT" && "$@")
    elif [ "$(id -u)" -eq 0 ]; then
        (cd "$TV_PG_ROOT" && runuser -u "$TV_PG_USER" -- "$@")
    else
        tv_die "must run as root or as $TV_PG_USER to control the test PostgreSQL"
    fi
}

# PID of our running postmaster, or nothing. Ignores a stale postmaster.pid
# whose PID now belongs to some other process (e.g. after a machine restart).
tv_pg_running_pid() {
    local pid exe
    [ -f "$TV_PG_DATA/postmaster.pid" ] || return 1
    pid=$(head -n1 "$TV_PG_DATA/postmaster.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -d "/proc/$pid" ] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || exe=
    case "$exe" in
    */postgres | */postgres\ \(deleted\)) ;;
    *) [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1 ;;
    esac
    echo "$pid"
}

# Port the running postmaster listens on (line 4 of postmaster.pid).
tv_pg_running_port() {
    sed -n 4p "$TV_PG_DATA/postmaster.pid" 2>/dev/null
}

tv_pg_clear_stale_pidfile() {
    if [ -f "$TV_PG_DATA/postmaster.pid" ] && ! tv_pg_running_pid >/dev/null; then
        tv_log "removing stale $TV_PG_DATA/postmaster.pid"
        rm -f "$TV_PG_DATA/postmaster.pid"
        rm -f "$TV_PG_SOCKDIR"/.s.PGSQL.*
    fi
}

tv_pg_wait_ready() {
    for _ in $(seq 1 120); do
        if pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    tv_log "PostgreSQL did not become ready on 127.0.0.1:$PG_PORT; last log lines:"
    tail -n 40 "$TV_PG_LOG" >&2 2>/dev/null || true
    return 1
}

# Start the (already initialised) cluster and wait until it accepts connections.
tv_pg_start_server() {
    tv_pg_clear_stale_pidfile
    if tv_port_in_use "$PG_PORT"; then
        tv_die "port 127.0.0.1:$PG_PORT is already in use by another process; set PG_PORT to a free port"
    fi
    tv_log "starting PostgreSQL ($TV_PG_BIN) on 127.0.0.1:$PG_PORT, data $TV_PG_DATA"
    if ! tv_spawn_daemon tv_as_pg "$TV_PG_BIN/pg_ctl" start -w -t 60 -D "$TV_PG_DATA" -l "$TV_PG_LOG" >&2; then
        tv_log "pg_ctl start failed; last log lines:"
        tail -n 40 "$TV_PG_LOG" >&2 2>/dev/null || true
        tv_die "could not start PostgreSQL"
    fi
    tv_pg_wait_ready || tv_die "PostgreSQL is not accepting connections"
}

tv_pg_stop_server() {
    if tv_pg_running_pid >/dev/null; then
        tv_log "stopping PostgreSQL (fast) data $TV_PG_DATA"
        tv_as_pg "$TV_PG_BIN/pg_ctl" stop -m fast -w -t 60 -D "$TV_PG_DATA" >&2 ||
            tv_as_pg "$TV_PG_BIN/pg_ctl" stop -m immediate -w -t 30 -D "$TV_PG_DATA" >&2
    else
        tv_log "PostgreSQL is not running (data $TV_PG_DATA)"
        tv_pg_clear_stale_pidfile
    fi
}

# --------------------------------------------------------------------- Redis

tv_redis_running_pid() {
    local pid
    [ -f "$TV_REDIS_PID" ] || return 1
    pid=$(head -n1 "$TV_REDIS_PID" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -d "/proc/$pid" ] || return 1
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
    redis-server*) echo "$pid" ;;
    *) return 1 ;;
    esac
}
