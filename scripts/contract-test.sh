#!/usr/bin/env bash
# Contract test: schemathesis (pinned, from PyPI, in its own venv) runs every phase and
# every check of openapi.yaml against a running `token-vendor dev` with its printed
# session token (a user holding the audit reader role).
#
#   scripts/contract-test.sh            # builds nothing: uses TOKEN_VENDOR_BIN or target/debug
#
# Settings: TOKEN_VENDOR_BIN (binary), SCHEMATHESIS_VENV (where the venv lives),
# CONTRACT_MAX_EXAMPLES (per operation and phase, default 200). Extra arguments go to
# `schemathesis run` (e.g. `--seed 7`, `--max-failures 1`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
bin=${TOKEN_VENDOR_BIN:-$target_dir/debug/token-vendor}
venv=${SCHEMATHESIS_VENV:-$target_dir/schemathesis-venv}
max_examples=${CONTRACT_MAX_EXAMPLES:-200}

TV_SCRIPT=contract-test
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fail() { tv_die "$*"; }
[ -x "$bin" ] || fail "no token-vendor binary at $bin (cargo build first, or set TOKEN_VENDOR_BIN)"

# python3 with venv: from Debian when missing (as root), else a loud failure.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    tv_apt_install python3 python3-venv || fail "python3 with venv is required (apt-get install python3 python3-venv)"
fi
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "version $SCHEMATHESIS_VERSION"; then
    tv_log "installing schemathesis==$SCHEMATHESIS_VERSION (PyPI) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || fail "python3 -m venv failed (apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
        || fail "pip could not install schemathesis==$SCHEMATHESIS_VERSION from PyPI"
fi

work=$(mktemp -d)
dev_pid=
cleanup() {
    if [ -n "$dev_pid" ]; then kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# A free port for dev (it prints its address; the port must be known to read it).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RATE_LIMIT_PER_USER=100000/second RATE_LIMIT_PER_IP=100000/second \
    ALLOWED_ORIGINS=https://app.example.test LISTEN_ADDR="127.0.0.1:$port" DATABASE_URL="sqlite://$work/audit.db" RUST_LOG=warn \
    "$bin" dev >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
session=
for _ in $(seq 1 300); do
    session=$(grep -A1 'session token' "$work/dev.out" 2>/dev/null | tail -n 1 | tr -d ' ' || true)
    case "$session" in eyJ*) break ;; esac
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.err" >&2; fail "token-vendor dev exited"; }
    sleep 0.2
done
case "$session" in eyJ*) ;; *) cat "$work/dev.out" "$work/dev.err" >&2; fail "dev printed no session token" ;; esac

echo "schemathesis $SCHEMATHESIS_VERSION against token-vendor dev on 127.0.0.1:$port (all checks, all phases)"
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run openapi.yaml \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $session" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$max_examples" \
    --workers 1 \
    --seed "${CONTRACT_SEED:-1}" \
    "$@"
