#!/usr/bin/env bash
# The container image's build steps, in one place.
#
# The Dockerfile's build stage RUNs the first three; CI runs the fourth, which replays
# the Dockerfile outside Docker (no Docker engine runs on CI):
#
#   scripts/image-build.sh tools      install cargo-auditable (CARGO_AUDITABLE_VERSION)
#   scripts/image-build.sh deps       build the locked dependencies against a stand-in
#                                     crate (the Dockerfile's cached dependency layer)
#   scripts/image-build.sh app OUT    build token-vendor; OUT/token-vendor (stripped) and
#                                     an empty OUT/data for the runtime stage
#   scripts/image-build.sh selftest   prove the replay catches a missing COPY (the
#                                     Dockerfile without `COPY openapi.yaml` must fail)
#   scripts/image-build.sh check      replay the Dockerfile: copy exactly what its build
#                                     stage COPYs into an empty directory, run its RUN
#                                     steps there, then run the binary as the runtime
#                                     stage would (its USER, ENV, WORKDIR) and require its
#                                     HEALTHCHECK, /readyz and a clean SIGTERM stop
#
# The build uses `cargo auditable build --release --locked`, so the binary carries its
# dependency list (`cargo audit bin`, `rust-audit-info` read it).
# Target directory: $CARGO_TARGET_DIR, else ./target of the directory built in. `check`
# builds into ${CARGO_TARGET_DIR:-<repo>/target}, so CI's release binary ends up at
# ${CARGO_TARGET_DIR:-<repo>/target}/release/token-vendor (unstripped).
set -euo pipefail

die() {
    printf '\n[image-build] ERROR: %s\n' "$*" >&2
    if [ "${CI:-}" = true ]; then printf '[image-build] (CI=true: this is fatal)\n' >&2; fi
    exit 1
}
log() { printf '[image-build] %s\n' "$*" >&2; }

target_dir() { printf '%s' "${CARGO_TARGET_DIR:-$PWD/target}"; }

cargo_build() {
    cargo auditable build --release --locked
}

cmd_tools() {
    local want="${CARGO_AUDITABLE_VERSION:-0.7.7}"
    if cargo install --list 2>/dev/null | grep -qxF "cargo-auditable v$want:"; then
        log "cargo-auditable $want already installed"
        return
    fi
    log "installing cargo-auditable $want from crates.io"
    cargo install --locked cargo-auditable --version "$want" \
        || die "cannot install cargo-auditable $want (crates.io)"
}

cmd_deps() {
    [ -f Cargo.toml ] && [ -f Cargo.lock ] || die "deps: run where Cargo.toml and Cargo.lock are"
    [ ! -e src ] || die "deps: src/ already exists; this step builds a stand-in crate before the sources are copied"
    mkdir src
    echo 'fn main() {}' >src/main.rs
    : >src/lib.rs
    cargo_build
    rm -rf src
    # Forget the stand-in crate so the real sources always rebuild, whatever their mtimes.
    local t
    t=$(target_dir)
    rm -rf "$t"/release/.fingerprint/token-vendor-* "$t"/release/deps/token_vendor-* \
        "$t"/release/deps/libtoken_vendor-* "$t"/release/token-vendor "$t"/release/libtoken_vendor.*
}

cmd_app() {
    local out="${1:?usage: image-build.sh app OUT}"
    touch src/main.rs src/lib.rs
    cargo_build
    local bin
    bin="$(target_dir)/release/token-vendor"
    mkdir -p "$out/data"
    install -m 0755 "$bin" "$out/token-vendor"
    if command -v strip >/dev/null 2>&1; then
        strip "$out/token-vendor"
    fi
    "$out/token-vendor" --version >&2
}

cmd_check() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    command -v python3 >/dev/null 2>&1 || die "check needs python3"
    command -v objcopy >/dev/null 2>&1 || die "check needs objcopy (Debian: binutils)"
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}" \
        exec python3 "$repo/scripts/image_replay.py" "$repo" "$repo/scripts/image-build.sh"
}

cmd_selftest() {
    local repo scratch
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    scratch=$(mktemp -d)
    grep -q '^COPY openapi.yaml' "$repo/Dockerfile" || die "selftest: the Dockerfile has no 'COPY openapi.yaml' line to drop"
    grep -v '^COPY openapi.yaml' "$repo/Dockerfile" >"$scratch/Dockerfile"
    log "selftest: replaying the Dockerfile without 'COPY openapi.yaml' (must fail)"
    if DOCKERFILE="$scratch/Dockerfile" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}" \
        python3 "$repo/scripts/image_replay.py" "$repo" >"$scratch/out" 2>&1; then
        cat "$scratch/out" >&2
        die "selftest: a Dockerfile missing a COPY was replayed without error"
    fi
    if ! grep -q 'openapi.yaml' "$scratch/out"; then
        cat "$scratch/out" >&2
        die "selftest: the replay failed, but not because openapi.yaml was missing"
    fi
    grep -m1 -B1 -A3 'openapi.yaml' "$scratch/out" >&2 || true
    rm -rf "$scratch"
    log "selftest: ok, the missing COPY failed the build"
}

case "${1:-}" in
    tools) cmd_tools ;;
    deps) cmd_deps ;;
    app) shift; cmd_app "$@" ;;
    check) cmd_check ;;
    selftest) cmd_selftest ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
        exit 2
        ;;
esac
