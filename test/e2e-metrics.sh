# The dialer's operator outputs: --access-log (one logfmt line per finished request, escaped
# and bounded) and --metrics (/metrics in the Prometheus text format, /healthz), checked against
# each other and against the requests sent.
source "$(dirname "$0")/e2elib.sh"
command -v curl > /dev/null || { echo "skip: curl not found"; exit 77; }

MPORT=$(free_port)
ALOG="$WORK/access.log"
start_upstream
start_dialer --access-log "$ALOG" --metrics "127.0.0.1:$MPORT"
start_listener m1
wait_for tcurl -f "$(tunnel m1)/index.html" || fail "no answer through the tunnel"
wait_for curl -sf "http://127.0.0.1:$MPORT/healthz" || fail "no /healthz on the metrics port"

code=$(tcurl --http1.1 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$DIALER_PORT/nope")
[ "$code" = 404 ] || fail "/nope -> $code"
code=$(tcurl --http2 -o /dev/null -w '%{http_code}' "$(tunnel nobody)/x")
[ "$code" = 502 ] || fail "unknown id -> $code"
body=$(tcurl --http2 "$(tunnel m1)/index.html?mark=1")
[ "$body" = "hello through the tunnel" ] || fail "proxied body: $body"
# A long path with a quote and a backslash: escaped, cut at the limit with the marker.
long=$(printf 'a%.0s' $(seq 1 2000))
tcurl --http1.1 --path-as-is -o /dev/null "https://127.0.0.1:$DIALER_PORT/nope/q\"b\\$long" || true

curl -sf "http://127.0.0.1:$MPORT/metrics" > "$WORK/metrics.txt" || fail "no /metrics"
# Every line is a comment (# HELP / # TYPE) or `name{labels} value`.
python3 - "$WORK/metrics.txt" << 'PY' || fail "/metrics does not parse: $(head -c 2000 "$WORK/metrics.txt")"
import re, sys
sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})? [-+]?([0-9.]+([eE][-+]?[0-9]+)?|Inf|NaN)$')
n = 0
for line in open(sys.argv[1]):
    line = line.rstrip('\n')
    if re.match(r'^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$', line):
        continue
    if not sample.match(line):
        print("bad line:", repr(line)); sys.exit(1)
    n += 1
sys.exit(0 if n > 20 else 1)
PY
ok "/metrics parses (Prometheus text format), /healthz answers"

m() { grep -E "^$1 " "$WORK/metrics.txt" | awk '{print $NF}'; }
[ "$(m h2rev_listeners)" = 1 ] || fail "h2rev_listeners: $(m h2rev_listeners)"
[ "$(m 'h2rev_dials_total\{result="no_listener"\}')" -ge 1 ] || fail "no failed dial counted"
[ "$(m 'h2rev_dials_total\{result="ok"\}')" -ge 1 ] || fail "no dial counted"
[ "$(m h2rev_http_connections)" -ge 1 ] || fail "h2rev_http_connections: $(m h2rev_http_connections)"
[ "$(m 'h2rev_http_requests_total\{proto="http2",code="5xx"\}')" -ge 1 ] || fail "no HTTP/2 5xx"
[ "$(m 'h2rev_http_requests_total\{proto="http1",code="4xx"\}')" = 2 ] || fail "HTTP/1.1 4xx"
total=$(grep -E '^h2rev_http_requests_total\{' "$WORK/metrics.txt" | awk '{s+=$NF} END {print s}')
[ "$(m 'h2rev_http_request_duration_seconds_count')" = "$total" ] || fail "histogram count"
[ "$(m 'h2rev_http_request_duration_seconds_bucket\{le="\+Inf"\}')" = "$total" ] ||
  fail "+Inf bucket"
ok "metrics: listeners, dials by result, requests by protocol and class ($total), histogram"

# The log is complete once the dialer has stopped (buffered lines are written at exit).
stop "$DIALER_PID"
[ "$(wc -l < "$ALOG")" = "$total" ] || fail "$(wc -l < "$ALOG") log lines for $total requests"
re='^time=[0-9T:.-]+Z peer=[^ ]+ method="[A-Z]+" path="([^"\\]|\\.)*" proto=HTTP/(1\.[01]|2) '
re+='status=[0-9]+ bytes=[0-9]+ in=[0-9]+ ms=[0-9]+\.[0-9]{3} result=[a-zA-Z_]+ listener="[^"]*"$'
bad=$(grep -cvE "$re" "$ALOG" || true)
[ "$bad" = 0 ] || fail "$bad log lines not in the documented format: $(grep -vE "$re" "$ALOG" | head -3)"
grep -E 'path="/nope" proto=HTTP/1.1 status=404 bytes=10 ' "$ALOG" | grep -q 'listener=""' ||
  fail "404 line: $(grep '/nope"' "$ALOG")"
grep -qE 'path="/proxy/nobody/x" proto=HTTP/2 status=502 .* listener="nobody"$' "$ALOG" ||
  fail "502 line: $(grep nobody "$ALOG")"
grep -qE 'path="/proxy/m1/index.html\?mark=1" proto=HTTP/2 status=200 bytes=25 .*result=ok listener="m1"$' \
  "$ALOG" || fail "proxied 200 line: $(grep mark= "$ALOG")"
line=$(grep 'q\\"b' "$ALOG") || fail "no line for the long path"
echo "$line" | grep -qF 'path="/nope/q\"b\\aaaa' || fail "quote and backslash not escaped: ${line:0:100}"
echo "$line" | grep -qF 'a\..." proto=HTTP/1.1 status=404' || fail "long path not cut: ${line:0:100}"
[ "${#line}" -lt 1024 ] || fail "a line of ${#line} bytes"
ok "access log: $total lines, one per request, in the documented format, escaped and bounded"
