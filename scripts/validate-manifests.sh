#!/usr/bin/env bash
# Validates deploy/ offline: Kubernetes manifests against the Kubernetes JSON schemas
# (kubernetes-validate, strict), deploy/compose.yaml against the committed Compose
# schema (check-jsonschema), then the deployment rules of docs/deploy.md.
# Tools come from PyPI, pinned by hash (deploy/schemas/requirements.txt), into a venv
# cached under $TV_TOOLS_DIR (default ~/.cache/token-vendor). See deploy/schemas/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
    printf '\n[validate-manifests] ERROR: %s\n' "$*" >&2
    if [ "${CI:-}" = true ]; then printf '[validate-manifests] (CI=true: this is fatal)\n' >&2; fi
    exit 1
}
log() { printf '[validate-manifests] %s\n' "$*" >&2; }

req=deploy/schemas/requirements.txt
tools="${TV_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/token-vendor}"
venv="$tools/validate-$(sha256sum "$req" | cut -c1-12)"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/check-jsonschema" ]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is needed"
    log "installing the validators (PyPI, pinned by hash) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "cannot create a virtualenv (Debian: python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$req" \
        || { rm -rf "$venv"; die "cannot install the validators from PyPI"; }
fi

k8s_files=(deploy/kubernetes/*.yaml)
for version in 1.32.0 1.37.0; do
    log "Kubernetes $version (strict): ${k8s_files[*]}"
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${k8s_files[@]}"
done
log "Compose: deploy/compose.yaml"
"$venv/bin/check-jsonschema" --schemafile deploy/schemas/compose-spec.json deploy/compose.yaml

# A validator that accepts anything proves nothing: each must refuse a typo.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
sed 's/readOnlyRootFilesystem:/readOnlyRootFilesystm:/' deploy/kubernetes/deployment.yaml >"$scratch/deployment.yaml"
if "$venv/bin/kubernetes-validate" --strict --quiet -k 1.37.0 "$scratch/deployment.yaml" >/dev/null 2>&1; then
    die "kubernetes-validate accepted a misspelt field"
fi
sed 's/read_only:/read_onIy:/' deploy/compose.yaml >"$scratch/compose.yaml"
if "$venv/bin/check-jsonschema" --schemafile deploy/schemas/compose-spec.json "$scratch/compose.yaml" >/dev/null 2>&1; then
    die "check-jsonschema accepted a misspelt compose key"
fi
log "a misspelt field is refused by both validators"

"$venv/bin/python" scripts/manifest_rules.py
log "ok"
