#!/usr/bin/env bash
# Restart test (issue 5): kill the server with SIGKILL in the middle of a session, start it again on the same
# state folder, and check that the session continues where it was, with its memory: the section count and
# the memory keep growing from their values before the kill, and the downloaded MP4 holds every frame of
# every section without a gap. Run from the repository root (CTest does).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/server_helpers.sh
work=$(mktemp -d)
trap 'stop_server -KILL; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; echo "--- server log"; tail -40 "$work/server.log"; exit 1; }

start_server "$work/state" "$work/server.log"
created=$(curl -sf -X POST "http://127.0.0.1:$PORT/v1/sessions" \
  -d '{"storyboard": {"prompts": [{"time": 0, "prompt": "a red fox in a green room"}, {"time": 2, "prompt": "cut to the beach"}]}, "seconds": 40, "seed": 5}')
id=$(echo "$created" | json 'd["id"]')
token=$(echo "$created" | json 'd["token"]')
status() { curl -sf -H "X-Session-Token: $token" "http://127.0.0.1:$PORT/v1/sessions/$id"; }
for _ in $(seq 1 600); do
  [ "$(status | json 'd["sections"]')" -ge 4 ] && break
  sleep 0.1
done
before=$(status)
sections_before=$(echo "$before" | json 'd["sections"]')
memory_before=$(echo "$before" | json 'd["memory_tokens"]')
[ "$sections_before" -ge 4 ] || fail "no 4 sections before the kill: $before"
[ "$memory_before" -gt 0 ] || fail "no memory before the kill: $before"
stop_server -KILL
echo "killed the server at section $sections_before with $memory_before memory tokens"

start_server "$work/state" "$work/server.log.2"
after=$(status) || fail "the session is gone after the restart"
sections_after=$(echo "$after" | json 'd["sections"]')
[ "$(echo "$after" | json 'd["status"]')" = running ] || fail "not running after the restart: $after"
[ "$sections_after" -ge "$sections_before" ] || fail "sections went back from $sections_before to $sections_after"
for _ in $(seq 1 600); do
  [ "$(status | json 'd["sections"]')" -ge $((sections_before + 3)) ] && break
  sleep 0.1
done
later=$(status)
sections_later=$(echo "$later" | json 'd["sections"]')
memory_later=$(echo "$later" | json 'd["memory_tokens"]')
[ "$sections_later" -ge $((sections_before + 3)) ] || fail "the session did not continue: $later"
[ "$memory_later" -gt "$memory_before" ] || fail "the memory did not grow from $memory_before: $later"
# Every section's frames are in the download: 13 for the first, 16 for each later one (at 16 fps).
curl -sf -H "X-Session-Token: $token" -o "$work/video.mp4" "http://127.0.0.1:$PORT/v1/sessions/$id/video.mp4"
stop_server
sections_final=$(python3 -c "import json; print(len(json.load(open('$work/state/sessions/$id/session.json'))['sections']))")
frames=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$work/video.mp4")
# The download was taken before the last sections finished: at least every frame up to sections_later.
want=$((13 + 16 * (sections_later - 1)))
[ "$frames" -ge "$want" ] || fail "the MP4 has $frames frames, want at least $want"
echo "ok: continued from section $sections_before to $sections_later (final $sections_final), memory $memory_before -> $memory_later tokens, $frames frames decoded"
