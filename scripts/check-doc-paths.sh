#!/usr/bin/env bash
# Every file a document names in backticks (`http/head_limit.rs`, `bench/run.sh`, …) must
# exist in the repository, so a map like docs/architecture.md cannot drift from the tree.
# A name may be relative to any folder (the module table names files under src/), so it
# passes when some tracked file's path ends with it. URLs and URL paths (`/openapi.yaml`)
# are not files and are skipped.
#
#   scripts/check-doc-paths.sh [DOC …]     (default: docs/*.md and README.md)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$#" -gt 0 ] || set -- docs/*.md README.md
files=$(git ls-files --cached --others --exclude-standard)
bad=0
for doc in "$@"; do
    names=$(grep -o '`[A-Za-z0-9_./-]*\.\(rs\|md\|sh\|yaml\|yml\|toml\|sql\|js\|mjs\|json\|html\|css\|lua\|py\)`' "$doc" | tr -d '`' | sort -u || true)
    for name in $names; do
        case "$name" in /* | http* | *://*) continue ;; esac
        # A here-string, not a pipe: `grep -q` stops at the first match, and under
        # pipefail the writer's SIGPIPE would fail the check at random.
        if ! grep -qE "(^|/)${name//./\\.}\$" <<<"$files"; then
            echo "$doc names $name, which is not in the repository" >&2
            bad=1
        fi
    done
done
[ "$bad" = 0 ] && echo "doc paths: every file named in $* exists"
exit "$bad"
