#!/usr/bin/env bash
# Runs every test: sets up (installs, builds) first, then CTest. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh build
# Reference data some tests compare against (fetched from Debian packages, cached under data/).
scripts/fetch_media.sh ssim
# The browser test's Chromium and playwright-core (Debian package, pinned npm dependency).
scripts/setup_web.sh
built=$(date +%s)
echo "[test] setup+build took $((built - start)) s"
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 900
echo "[test] tests took $(( $(date +%s) - built )) s"
