#!/usr/bin/env bash
# Stop the throwaway PostgreSQL and Redis started by scripts/services-up.sh.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rc=0
"$here/redis-stop.sh" || rc=1
"$here/pg-stop.sh" || rc=1
exit $rc
