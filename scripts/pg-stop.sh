#!/usr/bin/env bash
# Stop the throwaway test PostgreSQL started by scripts/pg-start.sh (pg_ctl stop -m fast).
# Its data stays in $TV_SERVICES_DIR/postgres/data; pg-start.sh reuses it (PG_FRESH=1 wipes it).
# Succeeds when nothing is running.
set -euo pipefail
TV_SCRIPT=pg-stop
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec 1>&2

if ! tv_pg_find_bin || [ ! -d "$TV_PG_DATA" ]; then
    tv_log "no test PostgreSQL to stop"
    exit 0
fi
tv_pg_stop_server
