# The dialer in front of hostile clients: requests abandoned mid-dial and
# requests llhttp rejects after their head, over TLS and cleartext, with and
# without a listener for the id; raw HTTP/2 frame floods (test/h2flood.py). The dialer must stay up and clean (CI runs
# this under ASan+UBSan; e2elib fails on any sanitizer report in the logs).
source "$(dirname "$0")/e2elib.sh"

# 5 variants: N=5000 is 1000 repetitions of each, per id, per transport.
N=${H2REV_ABORT_N:-5000}
now_ms() { date +%s%3N; }
start_upstream
start_dialer
start_listener app
wait_for tcurl -f "$(tunnel app)/index.html" || fail "listener did not attach"

t_flood=$(date +%s)
for id in app nosuch; do
  python3 "$SRC/test/hostile.py" abort 127.0.0.1 "$DIALER_PORT" "$WORK/h2rev-dialer.crt" "$id" "$N" \
    > /dev/null || fail "abort ($id, TLS): the dialer stopped answering"
  kill -0 "$DIALER_PID" || fail "abort ($id, TLS): the dialer died"
done
[ "$(tcurl "$(tunnel app)/index.html")" = "hello through the tunnel" ] ||
  fail "after the abort floods: no answer"
ok "$N abandoned and malformed requests per id over TLS: the dialer serves on"
# Lines clients cause at will are rate-limited (20 a second per source: the
# HTTP/1.1 server and the proxy; the rest counted).
secs=$(($(date +%s) - t_flood + 1))
loglines=$(wc -l < "$WORK/dialer.log")
[ "$loglines" -le $((40 * secs + 50)) ] ||
  fail "$((2 * N)) hostile requests in $secs s: $loglines log lines"
grep -q "such lines not logged" "$WORK/dialer.log" || [ "$N" -lt 100 ] ||
  fail "no count of the lines not logged"
ok "the dialer's log took $loglines lines for $((2 * N)) hostile requests in $secs s"

CP=$(free_port)
"$BIN/h2rev-dialer" --listen "127.0.0.1:$CP" --cleartext --send-timeout 1500 \
  2>> "$WORK/dialer-clear.log" &
CPID=$!
PIDS+=($CPID)
"$BIN/h2rev-listener" --url "http://127.0.0.1:$CP" --id app \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>> "$WORK/listener-clear.log" &
PIDS+=($!)
wait_for curl -sf "http://127.0.0.1:$CP/proxy/app/index.html" || fail "cleartext: no answer"
for id in app nosuch; do
  python3 "$SRC/test/hostile.py" abort 127.0.0.1 "$CP" - "$id" "$N" > /dev/null ||
    fail "abort ($id, cleartext): the dialer stopped answering"
  kill -0 "$CPID" || fail "abort ($id, cleartext): the dialer died"
done
[ "$(curl -sS "http://127.0.0.1:$CP/proxy/app/index.html")" = "hello through the tunnel" ] ||
  fail "cleartext, after the abort floods: no answer"
ok "$N abandoned and malformed requests per id in cleartext: the dialer serves on"

# Raw HTTP/2 floods no client library sends: each connection must be closed by the
# dialer, long before the 5 s the script would go on for.
for sc in continuation ping settings empty-data padded-data priority window-update reset-frames; do
  got=$(python3 "$SRC/test/h2flood.py" "$sc" 127.0.0.1 "$CP" /proxy/app/index.html 5)
  case "$got" in
    "$sc closed "*) ;;
    *) fail "HTTP/2 flood: $got (want the dialer to close the connection)" ;;
  esac
  kill -0 "$CPID" || fail "HTTP/2 flood $sc: the dialer died"
done
[ "$(curl -sS --http2-prior-knowledge "http://127.0.0.1:$CP/proxy/app/index.html")" = \
  "hello through the tunnel" ] || fail "after the HTTP/2 floods: no answer"
# Not a flood: WINDOW_UPDATEs are counted against the DATA sent, so a client that
# returns the window of a 20 MB download in 1 KiB pieces (two updates per KiB) is served.
got=$(python3 "$SRC/test/h2flood.py" window-download 127.0.0.1 "$CP" /proxy/app/bytes/20000000 30)
case "$got" in
  "window-download done 20000000 "*) ;;
  *) fail "a download whose window returns in 1 KiB pieces: $got (want 20000000 bytes)" ;;
esac
ok "a 20 MB download with $(echo "$got" | cut -d' ' -f4) WINDOW_UPDATEs from its client: whole"
# A client that asks for 50 large responses and leaves its window at 0: each would
# hold a reverse connection and an upstream connection for ever.
got=$(python3 "$SRC/test/h2flood.py" slow-read 127.0.0.1 "$CP" /proxy/app/bytes/1000000 10)
case "$got" in
  "slow-read reset 50 "*) ;;
  *) fail "a client that never opens its window: $got (want its 50 streams cut, --send-timeout 1500)" ;;
esac
ok "HTTP/2 floods (CONTINUATION, PING, SETTINGS, empty and padding-only DATA, PRIORITY, WINDOW_UPDATE, RST_STREAM): each connection closed; a window left at 0: cut after --send-timeout ($got s); the dialer serves on"

# ------------------------------------------------------------ the limits
# A third dialer with small limits, its own listener.
LP=$(free_port)
"$BIN/h2rev-dialer" --listen "127.0.0.1:$LP" --cleartext --max-client-streams 4 \
  --body-timeout 1000 --response-timeout 1500 --max-connections 3 \
  2>> "$WORK/dialer-limits.log" &
LIMPID=$!
PIDS+=($LIMPID)
"$BIN/h2rev-listener" --url "http://127.0.0.1:$LP" --id lim \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>> "$WORK/listener-limits.log" &
LIMLPID=$!
PIDS+=($LIMLPID)
LURL="http://127.0.0.1:$LP/proxy/lim"
wait_for curl -sf "$LURL/index.html" || fail "limits: no answer"

if command -v h2load > /dev/null; then
  # 10 requests at once on one connection, 4 allowed: the others get 429.
  h2load -n 10 -c 1 -m 10 "$LURL/sleep/800" > "$WORK/h2load.txt" 2>&1 || true
  grep -q "status codes: 4 2xx, 0 3xx, 6 4xx, 0 5xx" "$WORK/h2load.txt" ||
    fail "per-connection limit: $(grep 'status codes' "$WORK/h2load.txt")"
  ok "one client connection gets 4 proxied streams at once, then 429"
fi
hdrs=$( (for _ in 1 2 3 4 5 6; do
  curl -sS --http2-prior-knowledge -o /dev/null -D - "$LURL/sleep/800" &
done; wait) | tr -d '\r')
echo "$hdrs" | grep -q "^retry-after: 1" && fail "six connections of one stream each were refused" || true
ok "the limit is per connection: six connections of one request each are served"

# --max-streams 2 (the control stream and one reverse connection) and --max-pending-dials 1:
# of four requests at once one is served, one waits for that reverse connection (recycled
# once the first is answered: it waited for a new one that could not open, 504 after the
# dial timeout), two are refused at once.
DLP=$(free_port)
"$BIN/h2rev-dialer" --listen "127.0.0.1:$DLP" --cleartext --max-streams 2 --max-pending-dials 1 \
  2>> "$WORK/dialer-dials.log" &
PIDS+=($!)
"$BIN/h2rev-listener" --url "http://127.0.0.1:$DLP" --id dl \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>> "$WORK/listener-dials.log" &
PIDS+=($!)
wait_for curl -sf "http://127.0.0.1:$DLP/proxy/dl/index.html" || fail "dial limits: no answer"
sleep 1 # the listener's spare reconnection in place after the check's request
codes=$( (for _ in 1 2 3 4; do
  curl -s -o /dev/null -w '%{http_code}\n' --max-time 8 "http://127.0.0.1:$DLP/proxy/dl/sleep/800" &
done; wait) | sort | tr '\n' ' ')
[ "$codes" = "200 200 503 503 " ] ||
  fail "--max-streams 2 --max-pending-dials 1, four requests at once: $codes (want 200 200 503 503: the queue is full, come back)"
ok "--max-streams and --max-pending-dials: one served, one waiting for its reverse connection, two refused"

got=$(python3 "$SRC/test/hostile.py" silent-body 127.0.0.1 "$LP" - /proxy/lim/post)
case "$got" in
  "HTTP/1.1 408 "*) ;;
  *) fail "a body announced and never sent: $got" ;;
esac
secs=${got##* }
[ "${secs%.*}" -lt 5 ] || fail "408 after $secs s (--body-timeout 1000)"
ok "a request body that never starts: $got s"

kill -STOP "$LIMLPID"
# A stopped process ignores SIGTERM; the script's status goes on to cleanup (which exits with
# the $? it finds: a successful kill -CONT before it turned every failure below into a pass).
trap 'e2e_rc=$?; kill -CONT "$LIMLPID" 2> /dev/null; (exit $e2e_rc); cleanup' EXIT
t0=$(now_ms)
code=$(curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code}' --max-time 20 \
  "$LURL/index.html" || true)
t1=$(now_ms)
kill -CONT "$LIMLPID"
[ "$code" = 504 ] || fail "listener stopped: got $code, want 504"
[ $((t1 - t0)) -lt 8000 ] || fail "504 after $((t1 - t0)) ms (--response-timeout 1500)"
ok "a listener that stops answering: 504 in $((t1 - t0)) ms"

# --max-connections 3: the listener holds one; two idle clients take the rest.
exec 7<>"/dev/tcp/127.0.0.1/$LP" 8<>"/dev/tcp/127.0.0.1/$LP"
sleep 0.3
code=$(curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code}' --max-time 2 \
  "$LURL/index.html" 2>/dev/null || true)
[ "$code" != 200 ] || fail "--max-connections 3: a fourth connection was served"
exec 7>&- 8>&-
code=$(curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code}' --max-time 5 \
  "$LURL/index.html" || true)
[ "$code" = 200 ] || fail "--max-connections: no service once connections closed ($code)"
grep -q "connections open (the limit)" "$WORK/dialer-limits.log" ||
  fail "--max-connections: nothing logged at the limit"
ok "--max-connections: new connections wait at the limit, served once one closes"
kill -0 "$LIMPID" || fail "the limits' dialer died"

# A client that stops reading a large response, then resets its connection:
# nothing of that exchange may be left holding the dialer's drain.
curl -sS --http2-prior-knowledge --limit-rate 1k -o /dev/null \
  "http://127.0.0.1:$CP/proxy/app/bytes/20000000" 2> /dev/null &
SLOWC=$!
sleep 2
kill -9 "$SLOWC" 2> /dev/null || true
wait "$SLOWC" 2> /dev/null || true
sleep 0.5
t0=$(now_ms)
kill -TERM "$CPID"
wait "$CPID" || fail "the cleartext dialer exited $? after a client reset mid-response"
t1=$(now_ms)
# The abort floods above left a client session open for every answer whose write failed
# (the client's FIN came first): this drain then took the whole --drain-timeout.
[ $((t1 - t0)) -lt 5000 ] || fail "drain took $((t1 - t0)) ms after the floods and a client reset"
ok "abort floods and a client reset in the middle of a large response: the dialer drains in $((t1 - t0)) ms"
grep -q "did not finish" "$WORK/dialer-clear.log" && fail "drain did not finish" || true

# The TLS dialer took the same floods at the start.
t0=$(now_ms)
kill -TERM "$DIALER_PID"
wait "$DIALER_PID" || fail "the TLS dialer exited $? after the abort floods"
t1=$(now_ms)
[ $((t1 - t0)) -lt 5000 ] || fail "TLS: drain took $((t1 - t0)) ms after the abort floods"
ok "abort floods over TLS: the dialer drains in $((t1 - t0)) ms"
