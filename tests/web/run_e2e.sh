#!/usr/bin/env bash
# The browser end-to-end test against a real server: `memoreel serve` with the micro model on a free port,
# then tests/web/e2e.mjs drives Debian's Chromium through the web client (start, playback, a prompt applied
# mid-stream, download, the memory inspector, stop). Run from the repository root (CTest does).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/server_helpers.sh
work=$(mktemp -d)
trap 'stop_server; rm -rf "$work"' EXIT
start_server "$work/state" "$work/server.log"
out=${E2E_OUT:-$work/out}
if ! node tests/web/e2e.mjs --url "http://127.0.0.1:$PORT" --out "$out" --seconds 6 --inspect; then
  echo "--- server log"; tail -50 "$work/server.log"; exit 1
fi
