#!/usr/bin/env bash
# Crash rounds (issue 8): the RELEASE service under concurrent vends, kill -9 at random
# moments, restarted on the same audit database; after every round each token a client
# received must have its audit event (by fingerprint) and `audit verify` must pass.
# SQLite and PostgreSQL (a scratch database on TEST_DATABASE_URL; the database server is
# never stopped). Zero lost is the only pass.
#
#   scripts/crash-rounds.sh                       # CI: 10 rounds per database
#   scripts/crash-rounds.sh --rounds 50           # full mode: more rounds
#   scripts/crash-rounds.sh --db sqlite --rounds 20 --clients 32
#
# Builds the release binary with `cargo build --release --locked` (a no-op when it is
# up to date) and the load driver (examples/crash_rounds.rs, debug profile: `cargo test`
# has built it already). Under CI=true a missing TEST_DATABASE_URL fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked --bin token-vendor
cargo build --locked --example crash_rounds
exec "$target_dir/debug/examples/crash_rounds" --bin "$target_dir/release/token-vendor" "$@"
