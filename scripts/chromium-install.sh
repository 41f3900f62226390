#!/usr/bin/env bash
# Ensure Debian's Chromium (/usr/bin/chromium) is installed for the browser tests.
# Prints the browser's path as the last stdout line. Under CI=true a failure is fatal.
# Extra Debian packages may be added with CHROMIUM_EXTRA_PACKAGES (e.g. chromium-driver).
# Launch it headless as root with: --headless --no-sandbox --disable-gpu --disable-quic
#   --no-first-run --disable-background-networking --disable-component-update --disable-sync
#   --user-data-dir=<fresh empty dir>   (the machine has no network but loopback + registries)
set -euo pipefail
TV_SCRIPT=chromium-install
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec 3>&1 1>&2

pkgs=()
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
for p in ${CHROMIUM_EXTRA_PACKAGES:-}; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
done
if [ "${#pkgs[@]}" -gt 0 ]; then
    tv_log "installing ${pkgs[*]} from Debian"
    tv_apt_install "${pkgs[@]}" || tv_die "could not install ${pkgs[*]}.
    Install it with:  apt-get update && apt-get install -y --no-install-recommends chromium"
fi
bin=$(command -v chromium) || tv_die "chromium is still missing after apt-get install"
version=$("$bin" --version 2>/dev/null) || tv_die "$bin does not run ($bin --version failed)"
tv_log "$version at $bin"
printf '%s\n' "$bin" >&3
