#!/usr/bin/env bash
# cargo deny: licences, bans (incl. duplicate crates) and sources, per deny.toml.
# Installs cargo-deny from crates.io when the pinned version is missing (cached in
# ~/.cargo/bin afterwards). The advisory check needs the RustSec database from the
# network, which CI does not have; run it where the network is available:
#   cargo deny check advisories
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"

die() {
    printf '\n[supply-chain] ERROR: %s\n' "$*" >&2
    if [ "${CI:-}" = true ]; then printf '[supply-chain] (CI=true: this is fatal)\n' >&2; fi
    exit 1
}

if ! cargo deny --version 2>/dev/null | grep -qxF "cargo-deny $CARGO_DENY_VERSION"; then
    printf '[supply-chain] installing cargo-deny %s from crates.io (takes minutes once)\n' "$CARGO_DENY_VERSION" >&2
    cargo install --locked --no-default-features cargo-deny --version "$CARGO_DENY_VERSION" \
        || die "cannot install cargo-deny $CARGO_DENY_VERSION from crates.io"
fi
cargo deny --locked check licenses bans sources
