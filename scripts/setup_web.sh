#!/usr/bin/env bash
# Installs what the browser end-to-end test (tests/web/e2e.mjs) needs: Debian's Chromium, Node.js and npm
# (only when `node`/`npm` are missing: a Node.js that is already there, Debian's or another, is kept), and
# tests/web's pinned npm dependencies. Idempotent: with everything present it does nothing.
# Usage: scripts/setup_web.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/debian_packages.sh
use_sudo setup_web
missing=()
if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
# Commands, not package names: a Node.js from another source ships npm inside its nodejs package, and
# Debian's npm package would conflict with it.
if ! command -v node >/dev/null; then missing+=(nodejs); fi
if ! command -v npm >/dev/null; then missing+=(npm); fi
apt_install setup_web "${missing[@]}"

# playwright-core 1.56 (tests/web/package.json) needs Node.js 18 or newer: Debian 12's own nodejs is enough.
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "[setup_web] Node.js $(node --version) is too old for playwright-core: 18 or newer is needed" >&2
  exit 1
fi

# npm ci when node_modules is missing or package-lock.json changed since the last install (its hash is kept
# inside node_modules, so deleting node_modules also forces a fresh install).
cd tests/web
stamp=node_modules/.package-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -d node_modules ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup_web] npm ci in tests/web"
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing by itself; kept as a guard anyway.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
  echo "$want" > "$stamp"
fi
