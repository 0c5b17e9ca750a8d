# The dialer in front of hostile clients: requests abandoned mid-dial and
# requests llhttp rejects after their head, over TLS and cleartext, with and
# without a listener for the id. The dialer must stay up and clean (CI runs
# this under ASan+UBSan; e2elib fails on any sanitizer report in the logs).
source "$(dirname "$0")/e2elib.sh"

N=${H2REV_ABORT_N:-1000}
start_upstream
start_dialer
start_listener app
wait_for tcurl -f "$(tunnel app)/index.html" || fail "listener did not attach"

for id in app nosuch; do
  python3 "$SRC/test/hostile.py" abort 127.0.0.1 "$DIALER_PORT" "$WORK/h2rev-dialer.crt" "$id" "$N" \
    > /dev/null || fail "abort ($id, TLS): the dialer stopped answering"
  kill -0 "$DIALER_PID" || fail "abort ($id, TLS): the dialer died"
done
[ "$(tcurl "$(tunnel app)/index.html")" = "hello through the tunnel" ] ||
  fail "after the abort floods: no answer"
ok "$N abandoned and malformed requests per id over TLS: the dialer serves on"

CP=$(free_port)
"$BIN/h2rev-dialer" --listen "127.0.0.1:$CP" --cleartext 2>> "$WORK/dialer-clear.log" &
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
