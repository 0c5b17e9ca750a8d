# What the upstream sees of a client's request, with real clients through the two tools
# (issue 12, 5 and 6): X-Forwarded-Host, -Proto and -Prefix are the dialer's; the path
# loses exactly <base>/proxy/<id>; what a server behind could read another way is refused
# or normalised; the header-count limits agree end to end; an HTTP/2 upload with trailers
# ends; the Bearer scheme is case-insensitive. The upstream echoes what it received.
source "$(dirname "$0")/e2elib.sh"

start_upstream --echo
start_dialer --token s3cret
start_listener app --token s3cret
wait_for tcurl -f "$(tunnel app)/ready" || fail "no answer through the tunnel"

# raw TEXT: TEXT (printf escapes) sent over TLS with ALPN http/1.1; prints the whole answer.
raw() {
  printf "$1" | RAWHTTP_ALL=1 timeout 20 python3 "$SRC/test/rawhttp.py" 127.0.0.1 "$DIALER_PORT" \
    "$WORK/h2rev-dialer.crt" - 2>&1
}
# has TEXT LINE: TEXT has exactly that line; count TEXT PATTERN: lines matching (grep -ci)
has() { grep -qixF -- "$2" <<< "$1"; } # field names arrive in lower case
count() { grep -ci -- "$2" <<< "$1" || true; }
status() { head -n 1 <<< "$1" | cut -d' ' -f2; }

# ------------------------------------------------- X-Forwarded-* are the dialer's
forged=(-H 'X-Forwarded-Host: evil.example' -H 'X-Forwarded-Proto: gopher'
  -H 'X-Forwarded-Prefix: /admin' -H 'X-Forwarded-For: 10.0.0.1' -H 'X-Forwarded-For: 10.0.0.2')
for mode in --http2 --http1.1; do
  seen=$(tcurl -f "$mode" "${forged[@]}" "$(tunnel app)/admin/x")
  has "$seen" "GET /admin/x HTTP/1.1" || fail "$mode: path: $seen"
  for h in Host Proto Prefix; do
    [ "$(count "$seen" "^X-Forwarded-$h:")" = 1 ] || fail "$mode: not one X-Forwarded-$h: $seen"
  done
  has "$seen" "X-Forwarded-Host: 127.0.0.1:$DIALER_PORT" || fail "$mode: X-Forwarded-Host: $seen"
  has "$seen" "X-Forwarded-Proto: https" || fail "$mode: X-Forwarded-Proto: $seen"
  has "$seen" "X-Forwarded-Prefix: /proxy/app" || fail "$mode: X-Forwarded-Prefix: $seen"
  has "$seen" "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 127.0.0.1" || fail "$mode: X-Forwarded-For: $seen"
done
seen=$(tcurl -f -H 'X-Forwarded-Prefix: /a' "$(tunnel app)/a")
has "$seen" "GET /a HTTP/1.1" || fail "X-Forwarded-Prefix: /a stripped /a: $seen"
ok "a client's X-Forwarded-Host, -Proto, -Prefix dropped, X-Forwarded-For appended to"

# ------------------------------------------------- the path loses the prefix only
seen=$(tcurl -f "$(tunnel app)/public/x/proxy/app/admin")
has "$seen" "GET /public/x/proxy/app/admin HTTP/1.1" || fail "a later /proxy/app stripped: $seen"
seen=$(tcurl -f "$(tunnel app)/proxy/app/admin?q=/proxy/app/b")
has "$seen" "GET /proxy/app/admin?q=/proxy/app/b HTTP/1.1" || fail "stripped twice: $seen"
seen=$(tcurl -f "$(tunnel app)?q=1")
has "$seen" "GET /?q=1 HTTP/1.1" || fail "query only: $seen"
ok "the path loses <base>/proxy/<id> once, nothing found later in it"

# ------------------------------------------------- dot segments refused, // kept
for p in /a/../b /a/%2e%2E/b /.. /a/. /a/..%2fb '/a/..;x/b' '/a/.%5cb'; do
  for mode in --http2 --http1.1; do
    code=$(tcurl "$mode" --path-as-is -o /dev/null -w '%{http_code}' "$(tunnel app)$p")
    [ "$code" = 400 ] || fail "$mode $p: $code, want 400"
  done
done
seen=$(tcurl -f --path-as-is "$(tunnel app)/a//b/...?x=/../")
has "$seen" "GET /a//b/...?x=/../ HTTP/1.1" || fail "// or ... or a query changed: $seen"
ok "paths with dot segments (also %2e, %2f, %5c, ;) refused (400); //, ... and the query pass"

# ------------------------------------------------- HTTP/1.1 heads
for bad in 'Foo Bar: 1\r\n' 'X Transfer-Encoding: chunked\r\n' 'Foo : 1\r\n' 'Host: y\r\n'; do
  out=$(raw "GET /proxy/app/h HTTP/1.1\r\nHost: x\r\n${bad}Connection: close\r\n\r\n")
  [ "$(status "$out")" = 400 ] || fail "field ${bad%\\r\\n}: $(head -n 1 <<< "$out")"
done
out=$(raw 'GET /proxy/app/h HTTP/1.1\r\nConnection: close\r\n\r\n')
[ "$(status "$out")" = 400 ] || fail "HTTP/1.1 without Host: $(head -n 1 <<< "$out")"
out=$(raw 'GET /proxy/app/h HTTP/1.0\r\n\r\n')
[ "$(status "$out")" = 200 ] || fail "HTTP/1.0 without Host: $(head -n 1 <<< "$out")"
out=$(raw 'CONNECT /proxy/app/a HTTP/1.1\r\nHost: x\r\n\r\n')
[ "$(status "$out")" = 405 ] || fail "CONNECT: $(head -n 1 <<< "$out")"
out=$(raw 'POST /proxy/app/cl HTTP/1.1\r\nHost: x\r\nContent-Length: 0005\r\nConnection: close\r\n\r\nhello')
has "$out" "Content-Length: 5" || fail "Content-Length: 0005 not made 5: $out"
has "$out" "body: 5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" || fail "body: $out"
out=$(raw 'GET /proxy/app/h2c HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /proxy/app/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
has "$out" "GET /h2c HTTP/1.1" || fail "h2c upgrade not served as a plain request: $out"
[ "$(count "$out" '^upgrade:\|^http2-settings:\|^connection: upgrade')" = 0 ] || fail "h2c passed on: $out"
has "$out" "GET /next HTTP/1.1" || fail "the request after an h2c offer: $out"
ok "HTTP/1.1: bad field names, no or two Host (400), CONNECT (405), Content-Length 0005 (made 5), Upgrade: h2c (ignored)"

# ------------------------------------------------- header counts agree end to end
# Fields of a request (Host included) up to H2R_MAX_HEADERS (128) reach the upstream, with
# the dialer's own; more get 431 at the dialer; never a 502 from the listener.
for n in 120 125 127 128 129 130; do
  req="GET /proxy/app/many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
  for i in $(seq 3 "$n"); do req+="X-N$i: v\r\n"; done
  out=$(raw "$req\r\n")
  if [ "$n" -le 128 ]; then
    [ "$(status "$out")" = 200 ] || fail "HTTP/1.1, $n fields: $(head -n 1 <<< "$out")"
    [ "$(count "$out" '^X-N')" = $((n - 2)) ] || fail "HTTP/1.1, $n fields: not all reached the upstream"
  else
    [ "$(status "$out")" = 431 ] || fail "HTTP/1.1, $n fields: $(head -n 1 <<< "$out"), want 431"
  fi
  args=()
  for i in $(seq 3 "$n"); do args+=(-H "x-n$i: v"); done # and curl's user-agent and accept
  code=$(tcurl --http2 -o "$WORK/many" -w '%{http_code}' "${args[@]}" "$(tunnel app)/many")
  if [ "$n" -le 128 ]; then
    [ "$code" = 200 ] || fail "HTTP/2, $n fields: $code"
    [ "$(grep -ci '^x-n' "$WORK/many")" = $((n - 2)) ] || fail "HTTP/2, $n fields: not all reached"
  else
    [ "$code" = 431 ] || fail "HTTP/2, $n fields: $code, want 431"
  fi
done
ok "120 to 128 header fields reach the upstream, 129 and 130 get 431, over HTTP/1.1 and HTTP/2"
# Bytes likewise: a head at the dialer's limit (64 KiB of target, names and values) goes on
# with the dialer's fields.
big=$(head -c 65497 /dev/zero | tr '\0' a)
out=$(raw "GET /proxy/app/big HTTP/1.1\r\nHost: x\r\nX-Big: $big\r\nConnection: close\r\n\r\n")
[ "$(status "$out")" = 200 ] || fail "a head of 64 KiB: $(head -n 1 <<< "$out")"
has "$out" "X-Big: $big" || fail "a head of 64 KiB: X-Big did not reach the upstream"
out=$(raw "GET /proxy/app/big HTTP/1.1\r\nHost: x\r\nX-Big: ${big}a\r\nConnection: close\r\n\r\n")
[ "$(status "$out")" = 431 ] || fail "a head over 64 KiB: $(head -n 1 <<< "$out"), want 431"
ok "a head of 64 KiB reaches the upstream, one byte more gets 431"

# ------------------------------------------------- HTTP/2 trailers end the body
if command -v nghttp > /dev/null; then
  printf hello > "$WORK/five"
  out=$(timeout 15 nghttp --no-content-length -d "$WORK/five" --trailer 'x-trail: 1' \
    "$(tunnel app)/trailers" 2> /dev/null) || fail "an upload with trailers got no answer"
  has "$out" "body: 5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" ||
    fail "upload with trailers: $out"
  ok "an HTTP/2 upload with trailers reaches the upstream whole (trailers dropped)"
else
  echo "skip: no nghttp for the trailers case"
fi

# ------------------------------------------------- the Bearer scheme, any case
# A listener's first /revdial stream, its body left open: the dialer answers 200 at once
# when it authorizes (h2status.py prints the status as it comes; curl shows it only once
# its upload ends).
revdial() {
  timeout 20 python3 "$SRC/test/h2status.py" 127.0.0.1 "$DIALER_PORT" "$WORK/h2rev-dialer.crt" \
    "/revdial?id=$1" "authorization: $2"
}
for a in 'Bearer s3cret' 'bearer s3cret' 'BEARER  s3cret'; do
  got=$(revdial "tok$RANDOM" "$a")
  [ "$got" = 200 ] || fail "Authorization: $a: $got"
done
for a in 'bearer nope' 'Basic s3cret'; do
  got=$(revdial badtok "$a")
  [ "$got" != 200 ] || fail "Authorization: $a accepted"
done
wait_for grep -q 'refused (403) for id "badtok"' "$WORK/dialer.log" || fail "no 403 for a wrong token"
ok "Authorization: Bearer, bearer, BEARER accepted; a wrong token or scheme still refused"
