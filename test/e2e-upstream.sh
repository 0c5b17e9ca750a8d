# The listener's side of the proxy: Host rewriting, --keep-host, an https://
# upstream with its CA, and a path prefix on the upstream URL.
source "$(dirname "$0")/e2elib.sh"

start_upstream
start_dialer
start_listener up
wait_for tcurl -f "$(tunnel up)/index.html" || fail "no answer through the tunnel"

hdrs=$(tcurl -f "$(tunnel up)/headers")
echo "$hdrs" | grep -q "^Host: 127.0.0.1:$UPSTREAM_PORT$" || fail "Host not rewritten: $hdrs"
echo "$hdrs" | grep -q "^GET /headers HTTP/1.1$" || fail "path: $hdrs"
ok "Host rewritten to the upstream's"

# Keep-alive to the upstream: sequential requests reuse pooled connections.
before=$(tcurl -f "$(tunnel up)/conns")
for i in $(seq 1 20); do tcurl -f -o /dev/null "$(tunnel up)/bytes/$i$i"; done
after=$(tcurl -f "$(tunnel up)/conns")
[ $((after - before)) -le 3 ] || fail "21 requests opened $((after - before)) upstream connections"
ok "upstream connections reused ($((after - before)) new for 21 requests)"

# Concurrent requests: the pool keeps as many idle connections as the requests had in
# flight (256 by default), so a second wave like the first opens (next to) none. A pool of
# 32 would close the surplus after each wave and open it again for the next.
wave() {
  local out
  out=$(h2load -c 1 -m 80 -n 80 "$(tunnel up)/bytes/1000")
  grep -q ' 80 succeeded' <<< "$out" || fail "h2load wave: $(grep '^requests:' <<< "$out")"
}
c0=$(tcurl -f "$(tunnel up)/conns")
wave
c1=$(tcurl -f "$(tunnel up)/conns")
wave
wave
c2=$(tcurl -f "$(tunnel up)/conns")
wave
c3=$(tcurl -f "$(tunnel up)/conns")
[ $((c1 - c0)) -gt 32 ] || fail "80 concurrent requests had only $((c1 - c0)) upstream connections in flight: too few to tell"
[ $((c3 - c2)) -le 8 ] || fail "the fourth wave of 80 concurrent requests opened $((c3 - c2)) upstream connections (first wave: $((c1 - c0)))"
ok "concurrent waves reuse the pool: $((c1 - c0)) connections for the first wave of 80, $((c3 - c2)) new for the fourth"

# Keep-alive on the reverse connections: sequential requests ride the same
# data stream instead of a new one each.
start_listener reuse --log-level debug
wait_for tcurl -f "$(tunnel reuse)/index.html" || fail "reuse listener"
for i in $(seq 1 20); do
  [ "$(tcurl -f "$(tunnel reuse)/bytes/$i" | wc -c)" = "$i" ] || fail "request $i through reuse"
done
served=$(grep -c "on this reverse connection" "$WORK/listener-reuse.log")
fresh=$(grep -c "request 1 on this reverse connection" "$WORK/listener-reuse.log")
[ "$served" -ge 21 ] || fail "the listener logged $served requests, not 21"
[ "$fresh" -le 3 ] || fail "21 sequential requests used $fresh reverse connections"
ok "reverse connections reused: 21 requests on $fresh data stream(s)"

# A response that closes its connection ends the reverse connection too: each of these
# requests gets a data stream of its own, and all of them are answered.
before=$(grep -c "request 1 on this reverse connection" "$WORK/listener-reuse.log")
for i in $(seq 1 8); do
  [ "$(tcurl -f "$(tunnel reuse)/close/$i" | wc -c)" = "$i" ] || fail "Connection: close request $i"
done
after=$(grep -c "request 1 on this reverse connection" "$WORK/listener-reuse.log")
# (the first may ride the stream the requests above left alive; each one after it needs a new one)
[ $((after - before)) -ge 7 ] || fail "8 requests answered with Connection: close used $((after - before)) new streams"
[ "$(tcurl -f "$(tunnel reuse)/bytes/7" | wc -c)" = 7 ] || fail "a request after the closes"
ok "a response with Connection: close ends its reverse connection ($((after - before)) new streams for 8)"

# An upstream that closes a kept-alive connection as the next request arrives (its
# keep-alive timeout ran out): a request safe to repeat goes again on a new connection,
# one that is not (a POST) gets the 502 of the connection lost.
mkdir -p "$WORK/flaky"
python3 "$SRC/test/upstream.py" --dir "$WORK/www" --port-file "$WORK/flaky.port" --one-per-conn \
  2> "$WORK/flaky-upstream.log" &
PIDS+=($!)
wait_for test -s "$WORK/flaky.port" || fail "the flaky upstream did not start"
"$BIN/h2rev-listener" --url "https://127.0.0.1:$DIALER_PORT" --id flaky \
  --ca "$WORK/h2rev-dialer.crt" --upstream "http://127.0.0.1:$(cat "$WORK/flaky.port")" \
  --log-level debug 2>> "$WORK/listener-flaky.log" &
PIDS+=($!)
wait_for tcurl -f -o /dev/null "$(tunnel flaky)/index.html" || fail "flaky listener"
for i in $(seq 1 6); do
  [ "$(tcurl -f "$(tunnel flaky)/bytes/$i" | wc -c)" = "$i" ] ||
    fail "GET $i on a connection the upstream closes: not answered"
done
[ "$(tcurl -f -I -o /dev/null -w '%{http_code}' "$(tunnel flaky)/bytes/9")" = 200 ] ||
  fail "HEAD on a connection the upstream closes: not answered"
code=$(tcurl -o /dev/null -w '%{http_code}' -X POST -H 'Content-Length: 0' "$(tunnel flaky)/sha")
[ "$code" = 502 ] || fail "POST on a connection the upstream closes: $code, want 502 (not repeated)"
tcurl -f -o /dev/null "$(tunnel flaky)/bytes/1" || fail "GET after the POST" # a connection for the pool
[ "$(tcurl -f -X POST -H 'Idempotency-Key: k1' -H 'Content-Length: 0' "$(tunnel flaky)/sha" | cut -d' ' -f1)" = 0 ] ||
  fail "POST with an Idempotency-Key on a connection the upstream closes: not answered"
retries=$(grep -c "closed before the response: the request goes again" "$WORK/listener-flaky.log")
[ "$retries" = 8 ] || fail "8 requests safe to repeat on closed pooled connections: $retries retried"
ok "an upstream closing kept-alive connections: GET and HEAD ($retries retries) and a POST with an Idempotency-Key answered, a plain POST 502"

start_listener keep --keep-host
wait_for tcurl -f "$(tunnel keep)/index.html" || fail "keep-host listener"
hdrs=$(tcurl -f "$(tunnel keep)/headers")
echo "$hdrs" | grep -q "^Host: keep$" || fail "--keep-host: $hdrs"
ok "--keep-host passes the Host the dialer sent"

# An https:// upstream with its own CA (a certificate made here).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$WORK/up.key" -out "$WORK/up.crt" 2>/dev/null
mkdir -p "$WORK/tls"
python3 "$SRC/test/upstream.py" --dir "$WORK/www" --port-file "$WORK/tls.port" \
  --tls-cert "$WORK/up.crt" --tls-key "$WORK/up.key" 2> "$WORK/tls-upstream.log" &
PIDS+=($!)
wait_for test -s "$WORK/tls.port" || fail "TLS upstream did not start"
TLS_PORT=$(cat "$WORK/tls.port")
"$BIN/h2rev-listener" --url "https://127.0.0.1:$DIALER_PORT" --id secure \
  --ca "$WORK/h2rev-dialer.crt" --upstream "https://127.0.0.1:$TLS_PORT/bytes" \
  --upstream-ca "$WORK/up.crt" 2>> "$WORK/listener-secure.log" &
PIDS+=($!)
wait_for tcurl -f "$(tunnel secure)/100" || fail "https upstream"
[ "$(tcurl -f "$(tunnel secure)/123456" | wc -c)" = 123456 ] || fail "https upstream body"
ok "https:// upstream verified with --upstream-ca, with a path prefix"

# The same upstream without its CA: the listener answers 502 itself.
"$BIN/h2rev-listener" --url "https://127.0.0.1:$DIALER_PORT" --id untrusted \
  --ca "$WORK/h2rev-dialer.crt" --upstream "https://127.0.0.1:$TLS_PORT" \
  2>> "$WORK/listener-untrusted.log" &
PIDS+=($!)
wait_for grep -q "attached as untrusted" "$WORK/listener-untrusted.log" || fail "untrusted listener"
code=$(tcurl -o /dev/null -w '%{http_code}' "$(tunnel untrusted)/index.html")
[ "$code" = 502 ] || fail "untrusted upstream certificate: $code"
grep -q "certificate verify failed" "$WORK/listener-untrusted.log" ||
  fail "no log of the certificate failure"
ok "untrusted upstream certificate: 502 and a log line"
