# Shared helpers for the end-to-end scripts (sourced, not run).
set -euo pipefail
BIN=${H2REV_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../build/bin" && pwd)}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/h2rev-e2e.XXXXXX)
PIDS=()

cleanup() {
  local rc=$?
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The tools run under the sanitizers in CI's second pass: what they report, up to their
  # exit after SIGTERM, is in their logs.
  local san
  san=$(grep -l -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$WORK"/*.log 2>/dev/null || true)
  if [ -n "$san" ]; then
    echo "FAIL: sanitizer report in $san" >&2
    E2E_FAILED=1 rc=1
  fi
  if [ "${E2E_FAILED:-0}" = 1 ]; then
    for f in "$WORK"/*.log; do echo "== $f"; tail -n 30 "$f"; done >&2
  fi
  # E2E_KEEP=1 keeps the logs of a failed run for a look.
  [ -n "${E2E_KEEP:-}" ] && [ "${E2E_FAILED:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
fail() { E2E_FAILED=1; echo "FAIL: $*" >&2; exit 1; }

# forget PID...: reaped processes leave PIDS (their numbers may be reused).
forget() {
  local keep=() p q
  for p in "${PIDS[@]}"; do
    for q in "$@"; do [ "$p" != "$q" ] || continue 2; done
    keep+=("$p")
  done
  PIDS=("${keep[@]}")
}
# stop PID...: SIGTERM, reaped, forgotten.
stop() {
  kill "$@" 2> /dev/null || true
  for p in "$@"; do wait "$p" 2> /dev/null || true; done
  forget "$@"
}
ok() { echo "ok: $*"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for CMD...: retries for up to 10 s
wait_for() {
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# start_upstream [upstream.py flags, e.g. --echo]
start_upstream() {
  mkdir -p "$WORK/www"
  echo "hello through the tunnel" > "$WORK/www/index.html"
  python3 "$SRC/test/upstream.py" --dir "$WORK/www" --port-file "$WORK/upstream.port" "$@" \
    2> "$WORK/upstream.log" &
  PIDS+=($!)
  wait_for test -s "$WORK/upstream.port" || fail "upstream did not start"
  UPSTREAM_PORT=$(cat "$WORK/upstream.port")
}

# DIALER_STATE: whether the dialer started last still runs, or how it ended (run in
# this shell, not in $(...): only this shell can wait for its child).
dialer_state() {
  if kill -0 "$DIALER_PID" 2> /dev/null; then
    DIALER_STATE="running"
  else
    local rc=0
    wait "$DIALER_PID" || rc=$?
    DIALER_STATE="exited with status $rc"
  fi
}

# start_dialer [extra flags]: TLS with a self-signed certificate in $WORK
start_dialer() {
  DIALER_PORT=$(free_port)
  "$BIN/h2rev-dialer" --listen "127.0.0.1:$DIALER_PORT" --self-signed-dir "$WORK" "$@" \
    2>> "$WORK/dialer.log" &
  DIALER_PID=$!
  PIDS+=($DIALER_PID)
  wait_for curl -sf --cacert "$WORK/h2rev-dialer.crt" "https://127.0.0.1:$DIALER_PORT/healthz" ||
    { dialer_state; fail "dialer did not start (port $DIALER_PORT, $DIALER_STATE): $(curl -sS -f --max-time 5 --cacert "$WORK/h2rev-dialer.crt" \
      "https://127.0.0.1:$DIALER_PORT/healthz" 2>&1 | tail -n 1); $(ss -Htlnp "sport = :$DIALER_PORT" 2>&1 | head -n 3)"; }
}

# start_listener ID [extra flags]
start_listener() {
  local id=$1
  shift
  "$BIN/h2rev-listener" --url "https://127.0.0.1:$DIALER_PORT" --id "$id" \
    --ca "$WORK/h2rev-dialer.crt" --upstream "http://127.0.0.1:$UPSTREAM_PORT" "$@" \
    2>> "$WORK/listener-$id.log" &
  LISTENER_PID=$!
  PIDS+=($LISTENER_PID)
}

tunnel() { echo "https://127.0.0.1:$DIALER_PORT/proxy/$1"; }
tcurl() { curl -sS --cacert "$WORK/h2rev-dialer.crt" "$@"; }
# concurrent ID N UNIT: N requests at once through listener ID, for /bytes/UNIT, /bytes/2*UNIT,
# ... /bytes/N*UNIT; fails unless every answer has its size.
concurrent() {
  seq 1 "$2" | xargs -P "$2" -I{} sh -c \
    "curl -sSf --cacert '$WORK/h2rev-dialer.crt' '$(tunnel "$1")/bytes/'\$(({} * $3)) | wc -c" \
    >"$WORK/sizes.txt"
  local got
  got=$(sort -n "$WORK/sizes.txt" | tr '\n' ' ')
  [ "$got" = "$(seq "$3" "$3" $(($2 * $3)) | tr '\n' ' ')" ] || fail "$2 concurrent requests: $got"
}
