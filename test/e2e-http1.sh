# HTTP/1.1 clients through the tunnel, WebSocket, and hostile input.
source "$(dirname "$0")/e2elib.sh"

start_upstream
start_dialer
start_listener h1
wait_for tcurl -f "$(tunnel h1)/index.html" || fail "no answer through the tunnel"
CA="$WORK/h2rev-dialer.crt"

body=$(tcurl --http1.1 "$(tunnel h1)/index.html")
[ "$body" = "hello through the tunnel" ] || fail "HTTP/1.1 body: $body"
ok "GET over HTTP/1.1"

# Keep-alive: two requests, one connection.
n=$(tcurl --http1.1 -o /dev/null -o /dev/null -w '%{num_connects}\n' \
  "$(tunnel h1)/bytes/10" "$(tunnel h1)/bytes/20" | tr '\n' ' ')
[ "$n" = "1 0 " ] || fail "keep-alive: connects $n"
ok "keep-alive"

head -c $((24 << 20)) /dev/urandom > "$WORK/up.bin"
want="$(stat -c %s "$WORK/up.bin") $(sha256sum "$WORK/up.bin" | cut -d' ' -f1)"
got=$(tcurl --http1.1 -f -X POST --data-binary "@$WORK/up.bin" "$(tunnel h1)/sha")
[ "$got" = "$want" ] || fail "POST: $got"
got=$(cat "$WORK/up.bin" | tcurl --http1.1 -f -X PUT -T - "$(tunnel h1)/sha")
[ "$got" = "$want" ] || fail "chunked PUT: $got"
ok "uploads over HTTP/1.1 (Content-Length and chunked)"

# curl asks leave to send a body over 1 MiB (Expect: 100-continue) and waits a
# second for it: the dialer answers at once.
t0=$(date +%s%3N)
out=$(tcurl --http1.1 -f -v -X POST --data-binary "@$WORK/up.bin" "$(tunnel h1)/sha" 2>&1)
t1=$(date +%s%3N)
echo "$out" | grep -q "< HTTP/1.1 100 Continue" || fail "no 100 Continue"
echo "$out" | grep -q "Done waiting for 100-continue" && fail "curl waited for 100-continue"
echo "$out" | grep -q "$want" || fail "upload after 100-continue: $(echo "$out" | tail -n 3)"
ok "Expect: 100-continue answered at once ($((t1 - t0)) ms for 24 MiB)"

tcurl --http1.1 -f "$(tunnel h1)/chunked/250000" -o "$WORK/c.bin"
[ "$(stat -c %s "$WORK/c.bin")" = 250000 ] || fail "chunked download"
code=$(tcurl --http1.1 -o /dev/null -w '%{http_code}' "$(tunnel h1)/status/304")
[ "$code" = 304 ] || fail "304 -> $code"
ok "chunked response and 304 over HTTP/1.1"

python3 "$SRC/test/wsclient.py" "wss://127.0.0.1:$DIALER_PORT/proxy/h1/ws" "$CA" 20 ||
  fail "websocket"
ok "WebSocket echo through the tunnel"

raw() { python3 "$SRC/test/rawhttp.py" 127.0.0.1 "$DIALER_PORT" "$CA" - "$@"; }
line=$(printf 'POST /proxy/h1/sha HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab' | raw)
[[ "$line" == "HTTP/1.1 400"* ]] || fail "conflicting Content-Length: $line"
line=$(printf 'POST /proxy/h1/sha HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' | raw)
[[ "$line" == "HTTP/1.1 400"* ]] || fail "Content-Length with Transfer-Encoding: $line"
line=$(printf 'GET /proxy/h1/x HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n' "$(head -c 70000 /dev/zero | tr '\0' a)" | raw)
[[ "$line" == "HTTP/1.1 431"* ]] || fail "oversized header: $line"
line=$(python3 -c 'import sys; sys.stdout.write("GET /proxy/h1/" + "a" * (1 << 20) + " HTTP/1.1\r\nHost: a\r\n\r\n")' | raw)
[[ "$line" == "HTTP/1.1 431"* ]] || fail "1 MiB request line: $line"
line=$(printf 'GARBAGE\x00\x01\r\n\r\n' | raw)
[[ "$line" == "HTTP/1.1 400"* ]] || fail "garbage: $line"
ok "smuggling and oversized input refused (400, 431)"
grep -q "HTTP/1.1 request refused (431)" "$WORK/dialer.log" || fail "no log line for the 431"

# A client that sends its head one byte a second is cut off (10 s limit).
line=$(printf 'GET /proxy/h1/index.html HTTP/1.1\r\nHost: a\r\nX-Slow: 1234567890\r\n\r\n' | timeout 30 python3 "$SRC/test/rawhttp.py" 127.0.0.1 "$DIALER_PORT" "$CA" - 1)
[[ "$line" == "HTTP/1.1 408"* || "$line" == "(closed)" ]] || fail "slow head: $line"
ok "slow header sender cut off ($line)"

# HTTP/2 clients: Transfer-Encoding, and CR/LF or control bytes in a header,
# are refused (stream reset) before anything reaches the tunnel.
for h in 'transfer-encoding: chunked' $'x-a: b\r\nGET /evil HTTP/1.1' $'x-a: b\x01c'; do
  out=$(timeout 10 nghttp -v -H "$h" "$(tunnel h1)/headers" 2>&1 || true)
  echo "$out" | grep -q "RST_STREAM" || fail "HTTP/2 header accepted: $(echo "$h" | od -c | head -2)"
  echo "$out" | grep -q "^GET /headers" && fail "smuggled header reached the upstream"
done
ok "HTTP/2 Transfer-Encoding and CR/LF/control bytes in headers refused"

# An upstream that does not know its prefix: its redirects and cookie paths
# get /proxy/<id> in front (nginx's proxy_redirect default); one that wrote
# the prefix already, another host's URL and a protocol-relative one stay.
hdr() { tcurl "$1" -s -D - -o /dev/null "$(tunnel h1)/redirect?$2" | tr -d '\r' | grep -i "^$3:" | cut -d' ' -f2-; }
for proto in --http1.1 --http2; do
  [ "$(hdr $proto /sub/ location)" = "/proxy/h1/sub/" ] || fail "$proto Location: $(hdr $proto /sub/ location)"
  [ "$(hdr $proto /sub/ set-cookie)" = "s=1; Path=/proxy/h1/sub/; HttpOnly" ] ||
    fail "$proto Set-Cookie: $(hdr $proto /sub/ set-cookie)"
  [ "$(hdr $proto http://h1/a?b location)" = "/proxy/h1/a?b" ] || fail "$proto absolute Location to the id"
  [ "$(hdr $proto /proxy/h1/x location)" = "/proxy/h1/x" ] || fail "$proto already prefixed"
  [ "$(hdr $proto https://example.com/z location)" = "https://example.com/z" ] || fail "$proto other host"
  [ "$(hdr $proto //example.com/z location)" = "//example.com/z" ] || fail "$proto protocol-relative"
done
ok "Location and Set-Cookie paths of the upstream's root get /proxy/<id> in front (HTTP/1.1 and HTTP/2)"

body=$(tcurl --http1.1 "$(tunnel h1)/index.html")
[ "$body" = "hello through the tunnel" ] || fail "still serving"
ok "still serving after all that"

# Everything above is over, the WebSocket session among it: nothing holds the
# drain (an upgraded stream the upstream had ended stayed half-open: SIGTERM
# took the whole drain timeout and the dialer exited 1).
t0=$(date +%s%3N)
kill -TERM "$DIALER_PID"
rc=0
wait "$DIALER_PID" || rc=$?
t1=$(date +%s%3N)
[ "$rc" = 0 ] || fail "dialer exited $rc on SIGTERM"
[ $((t1 - t0)) -lt 5000 ] || fail "dialer took $((t1 - t0)) ms to drain"
ok "SIGTERM after it all: drained in $((t1 - t0)) ms, exit 0"
