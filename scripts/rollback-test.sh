#!/usr/bin/env bash
# Rollback test (issue 21, item 12): the previous release's binary runs against an audit
# database this tree's binary migrated and wrote to (tests/process/rollback.rs).
#
#   scripts/rollback-test.sh           build the previous release if needed, run the test
#   scripts/rollback-test.sh --build   only build it; the last line printed is its path
#
# The previous release is PREVIOUS_REF (a commit or tag; bump it when releasing). It is
# exported with `git archive` into a temporary directory (removed afterwards) and built
# in release mode into its own target directory,
# ${TV_PREVIOUS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/previous-release}, which is kept:
# a second run for the same commit reuses the binary. The first build takes 6-9 min on
# 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The wave-3 base: the release before hardening round 2.
PREVIOUS_REF="${PREVIOUS_REF:-955b45c}"
build_only=false
case "${1:-}" in
    --build) build_only=true ;;
    "") ;;
    *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac

repo_root=$PWD
target_root="${CARGO_TARGET_DIR:-$repo_root/target}"
previous_target="${TV_PREVIOUS_TARGET_DIR:-$target_root/previous-release}"

if ! commit=$(git rev-parse --verify --quiet "${PREVIOUS_REF}^{commit}"); then
    if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
        echo "PREVIOUS_REF=$PREVIOUS_REF is not in this shallow clone; fetching the history" >&2
        git fetch --quiet --unshallow
    fi
    commit=$(git rev-parse --verify "${PREVIOUS_REF}^{commit}") || {
        echo "PREVIOUS_REF=$PREVIOUS_REF names no commit of this repository" >&2
        exit 1
    }
fi

bin="$previous_target/release/token-vendor"
stamp="$previous_target/built-from"
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$commit" ]; then
    echo "previous release ${commit:0:12}: reusing $bin" >&2
else
    source_dir=$(mktemp -d "${TMPDIR:-/tmp}/tv-previous-release-XXXXXX")
    trap 'rm -rf "$source_dir"' EXIT
    git archive "$commit" | tar -x -C "$source_dir"
    mkdir -p "$previous_target"
    started=$SECONDS
    echo "building the previous release ${commit:0:12} (release) into $previous_target" >&2
    (cd "$source_dir" && CARGO_TARGET_DIR="$previous_target" TOKEN_VENDOR_COMMIT="$commit" \
        cargo build --release --locked --bin token-vendor) >&2
    echo "$commit" >"$stamp"
    echo "built the previous release in $((SECONDS - started)) s" >&2
    rm -rf "$source_dir"
    trap - EXIT
fi

if $build_only; then
    echo "$bin"
    exit 0
fi

started=$SECONDS
TV_PREVIOUS_BIN="$bin" cargo test --test process rollback:: -- --test-threads=2
echo "rollback test: $((SECONDS - started)) s (previous release ${commit:0:12})" >&2
