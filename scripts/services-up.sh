#!/usr/bin/env bash
# Start the throwaway PostgreSQL and Redis that the test suite needs and print
# shell `export` lines for them, for:
#
#     eval "$(scripts/services-up.sh)"        # interactive use
#     env=$(scripts/services-up.sh); eval "$env"   # under `set -e` (catches failures)
#
# Prints: TEST_DATABASE_URL, TEST_REDIS_URL, TV_SERVICES_DIR, and the absolute paths
# TEST_PG_CTL / TEST_REDIS_CTL of the stop|start wrappers. All diagnostics go to stderr.
# Stop everything:  scripts/services-down.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

last_line() { printf '%s\n' "$1" | tail -n 1; }

pg_out=$("$here/pg-start.sh")
redis_out=$("$here/redis-start.sh")
pg_url=$(last_line "$pg_out")
redis_url=$(last_line "$redis_out")
case "$pg_url" in postgres://*) ;; *) echo "services-up: bad PostgreSQL URL from pg-start.sh" >&2; exit 1 ;; esac
case "$redis_url" in redis://*) ;; *) echo "services-up: bad Redis URL from redis-start.sh" >&2; exit 1 ;; esac

printf 'export TEST_DATABASE_URL=%q\n' "$pg_url"
printf 'export TEST_REDIS_URL=%q\n' "$redis_url"
printf 'export TV_SERVICES_DIR=%q\n' "$TV_SERVICES_DIR"
printf 'export TEST_PG_CTL=%q\n' "$here/pg-ctl.sh"
printf 'export TEST_REDIS_CTL=%q\n' "$here/redis-ctl.sh"
