#!/usr/bin/env bash
# Fails when the Rust toolchain the image builds with is older than what the code needs.
#
# The image's toolchain is chosen once, by `ARG RUST_VERSION=` in the Dockerfile (the
# build stage is `FROM rust:${RUST_VERSION}-slim-bookworm`). This check requires:
#   - the Dockerfile's build stage uses that ARG (no second, hard-coded rust tag);
#   - Cargo.toml's `rust-version` >= the highest `rust-version` any locked package
#     declares (so the claim in Cargo.toml is true);
#   - RUST_VERSION >= both of those;
#   - the local toolchain >= Cargo.toml's `rust-version` (what CI builds with).
# Clippy's `incompatible_msrv` lint (on under `-D warnings`) keeps the crate's own code
# within `rust-version`.
#
# Usage: scripts/check-toolchain.sh        (DOCKERFILE=... overrides the file checked)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dockerfile="${DOCKERFILE:-Dockerfile}"

command -v python3 >/dev/null 2>&1 || {
    echo "check-toolchain: python3 is needed" >&2
    exit 1
}
metadata=$(mktemp)
trap 'rm -f "$metadata"' EXIT
cargo metadata --locked --format-version 1 >"$metadata"
rustc_version=$(rustc --version)

METADATA="$metadata" DOCKERFILE_PATH="$dockerfile" RUSTC_VERSION="$rustc_version" python3 - <<'PY'
import json, os, re, sys

def ver(s):
    parts = [int(x) for x in s.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

def show(v):
    return ".".join(map(str, v))

errors = []
meta = json.load(open(os.environ["METADATA"]))
root = next(p for p in meta["packages"] if p["id"] in meta["workspace_members"])
declared = [(ver(p["rust_version"]), p["name"], p["version"])
            for p in meta["packages"]
            if p.get("rust_version") and p["id"] not in meta["workspace_members"]]
need, need_name, need_version = max(declared)
crate = ver(root["rust_version"]) if root.get("rust_version") else None

text = open(os.environ["DOCKERFILE_PATH"]).read()
arg = re.search(r"^ARG RUST_VERSION=(\d+\.\d+(?:\.\d+)?)\s*$", text, re.M)
froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
rust_froms = [f for f in froms if f.startswith("rust:")]
if not arg:
    errors.append("the Dockerfile has no `ARG RUST_VERSION=X.Y.Z` (the one place the toolchain is chosen)")
if rust_froms != ["rust:${RUST_VERSION}-slim-bookworm"]:
    errors.append(f"the build stage must be FROM rust:${{RUST_VERSION}}-slim-bookworm, found {rust_froms}")
image = ver(arg.group(1)) if arg else None

print(f"locked dependencies need Rust {show(need)} (highest: {need_name} {need_version})")
print("Cargo.toml rust-version:", show(crate) if crate else "(none)")
print("Dockerfile RUST_VERSION:", show(image) if image else "(none)")
print("local toolchain:", os.environ["RUSTC_VERSION"])
if crate is None:
    errors.append("Cargo.toml declares no rust-version")
elif crate < need:
    errors.append(f"Cargo.toml rust-version {show(crate)} is older than {need_name} {need_version} needs ({show(need)})")
if image is not None:
    for what, v in [("the locked dependencies", need), ("Cargo.toml rust-version", crate)]:
        if v is not None and image < v:
            errors.append(f"Dockerfile RUST_VERSION {show(image)} is older than {what} ({show(v)})")
local = re.search(r"rustc (\d+\.\d+\.\d+)", os.environ["RUSTC_VERSION"])
if crate is not None and local and ver(local.group(1)) < crate:
    errors.append(f"the local toolchain {local.group(1)} is older than rust-version {show(crate)}")
for e in errors:
    print(f"check-toolchain: FAIL: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
echo "check-toolchain: ok"
