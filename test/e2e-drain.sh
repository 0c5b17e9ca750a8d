# The listener's drain and upgraded connections (issue 16, item 4): an idle
# WebSocket through the tunnel does not hold SIGTERM to --drain-timeout (it
# ends once idle both ways for 1 s: exit 0 promptly), and one in use goes on
# until it falls idle, its messages all echoed.
source "$(dirname "$0")/e2elib.sh"
start_upstream
start_dialer
WS=$SRC/test/wshold.py

# ws NAME COUNT EVERY: a WebSocket through listener NAME; waits until it is upgraded.
ws() {
  python3 "$WS" "wss://127.0.0.1:$DIALER_PORT/proxy/$1/ws" "$WORK/h2rev-dialer.crt" "$2" "$3" 30 \
    > "$WORK/ws-$1.out" 2>&1 &
  WPID=$!
  PIDS+=($WPID)
  wait_for grep -q upgraded "$WORK/ws-$1.out" || fail "$1: no upgrade: $(cat "$WORK/ws-$1.out")"
}
# term PID: SIGTERM, waits; sets RC and MS (how long the exit took).
term() {
  local t0
  t0=$(date +%s%3N)
  set +e
  kill -TERM "$1"
  wait "$1"
  RC=$?
  set -e
  MS=$(($(date +%s%3N) - t0))
  forget "$1"
}

# An idle WebSocket: the drain ends it after 1 s idle, not at the 10 s timeout.
start_listener idle --drain-timeout 10000
wait_for tcurl -f "$(tunnel idle)/index.html" || fail "idle: not attached"
ws idle 1 0
wait_for grep -q "echoed 1" "$WORK/ws-idle.out" || fail "idle: no echo"
sleep 1.5
term "$LISTENER_PID"
[ "$RC" = 0 ] || fail "idle: listener exit $RC"
[ "$MS" -lt 4000 ] || fail "idle: the listener took $MS ms to drain with an idle WebSocket"
wait "$WPID" || true
forget "$WPID"
grep -q "closed after" "$WORK/ws-idle.out" || fail "idle: the WebSocket was not ended: $(cat "$WORK/ws-idle.out")"
! grep -q "drain timeout" "$WORK/listener-idle.log" || fail "idle: the drain timed out"
ok "SIGTERM with an idle WebSocket: listener exit 0 in $MS ms (drain timeout 10 s), the WebSocket ended"

# A WebSocket in use: 12 messages 250 ms apart (3 s) after SIGTERM, all
# echoed; then it falls idle and the drain ends a second later.
start_listener busy --drain-timeout 10000
wait_for tcurl -f "$(tunnel busy)/index.html" || fail "busy: not attached"
ws busy 12 0.25
term "$LISTENER_PID"
wait "$WPID" || true
forget "$WPID"
[ "$RC" = 0 ] || fail "busy: listener exit $RC"
grep -q "echoed 12" "$WORK/ws-busy.out" || fail "busy: a WebSocket in use was cut by the drain: $(cat "$WORK/ws-busy.out")"
[ "$MS" -ge 2500 ] || fail "busy: the drain ended after $MS ms, while the WebSocket was in use"
[ "$MS" -lt 7000 ] || fail "busy: the drain took $MS ms (the WebSocket was idle after about 3 s)"
grep -q "closed after" "$WORK/ws-busy.out" || fail "busy: $(cat "$WORK/ws-busy.out")"
ok "SIGTERM with a WebSocket in use: its 12 messages echoed, the drain ended $MS ms later, once it was idle"

# The dialer's drain likewise: an idle WebSocket through it ends after 1 s idle
# (the HTTP/1.1 client connection upgraded), the dialer exits 0 promptly.
start_listener dws --drain-timeout 10000
wait_for tcurl -f "$(tunnel dws)/index.html" || fail "dialer: not attached"
ws dws 1 0
wait_for grep -q "echoed 1" "$WORK/ws-dws.out" || fail "dialer: no echo"
sleep 1.5
term "$DIALER_PID"
[ "$RC" = 0 ] || fail "dialer: exit $RC"
[ "$MS" -lt 4000 ] || fail "dialer: took $MS ms to drain with an idle WebSocket"
wait "$WPID" || true
forget "$WPID"
! grep -q "drain timeout" "$WORK/dialer.log" || fail "dialer: the drain timed out"
ok "SIGTERM to the dialer with an idle WebSocket: exit 0 in $MS ms"
