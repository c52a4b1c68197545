# Shared by the server's script tests: start `memoreel serve` with the micro model on a free port and wait
# until it is ready. Usage: source tests/server_helpers.sh; start_server STATE_DIR LOG; ... ; stop_server
# Sets SERVER_PID and PORT.
MEMOREEL_BIN=${MEMOREEL_BIN:-build/memoreel}

start_server() {
  local state=$1 log=$2
  "$MEMOREEL_BIN" serve --port 0 --state-dir "$state" --model tests/data/micro-model.json --web-root web \
    >"$log" 2>&1 &
  SERVER_PID=$!
  PORT=""
  for _ in $(seq 1 300); do
    PORT=$(sed -n 's|.*serves .* on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$log" | head -1)
    if [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "the server died:"; cat "$log"; return 1; fi
    sleep 0.1
  done
  echo "the server did not become ready:"; cat "$log"; return 1
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "${1:--TERM}" "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}

# json FILE_OR_- EXPR: a field of a JSON document (python3 is part of Debian's base system).
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
