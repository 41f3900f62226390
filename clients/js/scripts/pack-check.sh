#!/usr/bin/env bash
# Packs @token-vendor/client as npm would publish it, installs the tarball into an empty
# project (offline: it has no runtime dependencies) and imports it from there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tgz=$(npm pack --silent --pack-destination "$tmp" | tail -n 1)
files=$(tar -tzf "$tmp/$tgz" | sort | tr '\n' ' ')
expected="package/README.md package/index.d.ts package/index.js package/package.json "
if [ "$files" != "$expected" ]; then
    echo "pack-check: the tarball holds [$files], expected [$expected]" >&2
    exit 1
fi

mkdir "$tmp/app"
cd "$tmp/app"
printf '{"name":"pack-check-app","version":"0.0.0","private":true,"type":"module"}\n' > package.json
npm install --offline --no-audit --no-fund --silent "$tmp/$tgz"
installed=$(ls node_modules | tr '\n' ' ')
if [ "$installed" != "@token-vendor " ]; then
    echo "pack-check: installing pulled in [$installed]; the package must have no runtime dependencies" >&2
    exit 1
fi
node --input-type=module -e '
import * as client from "@token-vendor/client";
import fs from "node:fs";
const want = ["createTokenSource", "connectSpeechSocket", "openTranscribeSocket", "openStreamSocket",
  "TokenVendorError", "UnauthenticatedError", "ForbiddenError", "SocketError"];
const missing = want.filter((n) => typeof client[n] !== "function");
if (missing.length) throw new Error(`missing exports: ${missing}`);
const types = fs.readFileSync("node_modules/@token-vendor/client/index.d.ts", "utf8");
for (const n of want) if (!types.includes(` ${n}`)) throw new Error(`index.d.ts does not declare ${n}`);
console.log(`pack-check: installed and imported @token-vendor/client (${want.length} exports, typed)`);
'
echo "pack-check: ok ($tgz)"
