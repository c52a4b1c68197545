#!/usr/bin/env bash
# The main job: set up (install, build), then run the server with the bundled default model. Open the printed
# address in a browser to watch a story and steer it. Extra arguments go to `memoreel serve` (e.g. --port 9000,
# --address 0.0.0.0, --api-key KEY); the rest of its settings are in configs/server.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec build/memoreel serve --config configs/server.json "$@"
