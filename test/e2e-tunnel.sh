# End to end: curl -> h2rev-dialer -> tunnel -> h2rev-listener -> python upstream.
source "$(dirname "$0")/e2elib.sh"

start_upstream
start_dialer
start_listener e2e
wait_for tcurl -f "$(tunnel e2e)/index.html" || fail "no answer through the tunnel"

body=$(tcurl --http2 "$(tunnel e2e)/index.html")
[ "$body" = "hello through the tunnel" ] || fail "body: $body"
ok "small GET over HTTP/2"

out=$(timeout 20 nghttp -s "$(tunnel e2e)/index.html" 2>&1 || true)
echo "$out" | grep -q "hello through the tunnel" || fail "nghttp: $out"
ok "nghttp client"

# 100 MiB download, checked byte for byte against what the upstream sends.
python3 -c 'import sys; b=bytes(range(256))*256; n=100<<20; o=sys.stdout.buffer
while n>0: k=min(n,len(b)); o.write(b[:k]); n-=k' > "$WORK/want.bin"
tcurl -f "$(tunnel e2e)/bytes/$((100 << 20))" -o "$WORK/got.bin"
cmp "$WORK/want.bin" "$WORK/got.bin" || fail "download differs"
ok "100 MiB download"

tcurl -f "$(tunnel e2e)/chunked/300000" -o "$WORK/chunked.bin"
[ "$(stat -c %s "$WORK/chunked.bin")" = 300000 ] || fail "chunked response length"
ok "chunked response"

# 100 MiB upload, POST and PUT: the upstream answers the length and SHA-256 it saw.
head -c $((100 << 20)) /dev/urandom > "$WORK/up.bin"
want="$(stat -c %s "$WORK/up.bin") $(sha256sum "$WORK/up.bin" | cut -d' ' -f1)"
for m in POST PUT; do
  got=$(tcurl -f -X "$m" --data-binary "@$WORK/up.bin" "$(tunnel e2e)/sha")
  [ "$got" = "$want" ] || fail "$m upload: got '$got' want '$want'"
  # Without a length: the body goes chunked through the tunnel.
  got=$(cat "$WORK/up.bin" | tcurl -f -X "$m" -T - "$(tunnel e2e)/sha")
  [ "$got" = "$want" ] || fail "$m chunked upload: got '$got' want '$want'"
done
ok "uploads (POST, PUT, with and without Content-Length)"

hdrs=$(tcurl -f "$(tunnel e2e)/headers?a=1&b=%2F")
echo "$hdrs" | grep -q '^GET /headers?a=1&b=%2F HTTP/1.1$' || fail "query not preserved: $hdrs"
echo "$hdrs" | grep -qi '^X-Forwarded-Prefix: /proxy/e2e$' || fail "no X-Forwarded-Prefix: $hdrs"
echo "$hdrs" | grep -qi '^X-Forwarded-For: 127.0.0.1$' || fail "no X-Forwarded-For: $hdrs"
hdrs=$(tcurl -f "$(tunnel e2e)/headers/a%20b/%C3%A9?q=%26x")
echo "$hdrs" | grep -q '^GET /headers/a%20b/%C3%A9?q=%26x HTTP/1.1$' || fail "percent-encoding: $hdrs"
ok "path, query, percent-encoding and X-Forwarded-* headers"

code=$(tcurl -o /dev/null -w '%{http_code}' "$(tunnel e2e)/status/204")
[ "$code" = 204 ] || fail "204 -> $code"
code=$(tcurl -o /dev/null -w '%{http_code}' -I "$(tunnel e2e)/bytes/1000")
[ "$code" = 200 ] || fail "HEAD -> $code"
ok "204 and HEAD"

code=$(tcurl -o /dev/null -w '%{http_code}' "$(tunnel nobody)/x")
[ "$code" = 502 ] || fail "unknown id -> $code"
ok "unknown id is 502"

# 100 concurrent requests through one listener.
concurrent e2e 100 1000
ok "100 concurrent requests"

# The listener dies in the middle of a download: the client must see an error.
set +e
tcurl -f "$(tunnel e2e)/bytes/$((1 << 30))" -o /dev/null --limit-rate 20M &
c=$!
sleep 1
kill -9 "$LISTENER_PID"
wait "$c"
rc=$?
set -e
[ "$rc" != 0 ] || fail "a cut download looked complete"
ok "listener killed mid-download: client error $rc"
body=$(tcurl "$(tunnel e2e)/index.html" || true)
code=$(tcurl -o /dev/null -w '%{http_code}' "$(tunnel e2e)/index.html")
[ "$code" = 502 ] || fail "after the listener died: $code"
ok "dialer still serving (502 for the gone listener)"
