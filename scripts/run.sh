#!/usr/bin/env bash
# The main job: set up (install, build), then generate a video with the bundled default model.
# Extra arguments are passed to `memoreel generate` and override the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
mkdir -p out
exec build/memoreel generate --model configs/models/memoreel-tiny.json \
  --prompt "a green striped fox walks into a red room" --frames 33 --seed 1 --out out/sample.mp4 "$@"
