# The operators' side of both tools: the listener's --metrics (/metrics, /healthz, /readyz) and
# --access-log, the dialer's /readyz and /listeners, --log-format json on both access logs
# (each line one JSON object), and the access logs opened again on SIGHUP (logrotate without
# copytruncate). /metrics is read with a real Prometheus parser (python3-prometheus-client).
source "$(dirname "$0")/e2elib.sh"
# Checks for wait_for, which runs its command again each time (a $(...) in its
# arguments would be evaluated once, before the first try).
lines_ge() { [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ]; }
code_is() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = "$2" ]; }
command -v curl > /dev/null || { echo "skip: curl not found"; exit 77; }
PROM=
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import prometheus_client.parser' 2> /dev/null; then PROM=$py; break; fi
done
[ -n "$PROM" ] || { echo "skip: python3-prometheus-client not found"; exit 77; }

# prom FILE NAME [LABEL=VALUE...]: the value of that sample, parsed by the Prometheus parser
# (which fails on any malformed line); "missing" when there is none.
prom() {
  "$PROM" - "$@" << 'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
path, name, *want = sys.argv[1:]
want = dict(w.split("=", 1) for w in want)
text = open(path).read()
found = "missing"
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in want.items()):
            found = s.value
print(int(found) if isinstance(found, float) and found == int(found) else found)
PY
}

LMPORT=$(free_port)
DMPORT=$(free_port)
start_upstream
start_dialer --metrics "127.0.0.1:$DMPORT" --access-log "$WORK/dialer-access.log" \
  --log-format json
# Before the listener is up: the dialer is ready, no listener attached.
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DMPORT/readyz")" = 200 ] ||
  fail "dialer /readyz before any listener"
[ "$(curl -sf "http://127.0.0.1:$DMPORT/listeners")" = "[]" ] || fail "/listeners not []"

ID='app_1.x~y:z@w-v'
start_listener "$ID" --metrics "127.0.0.1:$LMPORT" --access-log "$WORK/listener-access.log"
wait_for curl -sf "http://127.0.0.1:$LMPORT/healthz" || fail "no /healthz on the listener's --metrics"
wait_for curl -sf "http://127.0.0.1:$LMPORT/readyz" || fail "listener /readyz never 200 (attached)"
ok "listener: /healthz, /readyz 200 once attached"

body=$(tcurl "$(tunnel "$ID")/index.html")
[ "$body" = "hello through the tunnel" ] || fail "proxied body: $body"
code=$(tcurl -o /dev/null -w '%{http_code}' "$(tunnel "$ID")/status/404")
[ "$code" = 404 ] || fail "/status/404 -> $code"
tcurl -o /dev/null --data-binary "0123456789" "$(tunnel "$ID")/sha" || fail "POST /sha"
# A path with a quote, a backslash and bytes outside ASCII (raw: curl would escape them).
line=$(printf 'GET /proxy/%s/q"b\\c/\xc3\xa9/nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n' "$ID" |
  timeout 20 python3 "$SRC/test/rawhttp.py" 127.0.0.1 "$DIALER_PORT" "$WORK/h2rev-dialer.crt" -)
echo "$line" | grep -q ' 404 ' || fail "raw request: $line"

curl -sf "http://127.0.0.1:$LMPORT/metrics" > "$WORK/lm.txt" || fail "no listener /metrics"
m() { prom "$WORK/lm.txt" "$@"; }
[ "$(m h2rev_listener_state state=attached)" = 1 ] || fail "state: $(grep state "$WORK/lm.txt")"
[ "$(m h2rev_listener_state state=retrying)" = 0 ] || fail "state retrying"
[ "$(m h2rev_listener_attachments_total)" = 1 ] || fail "attachments: $(m h2rev_listener_attachments_total)"
[ "$(m h2rev_listener_attempts_total)" = 1 ] || fail "attempts: $(m h2rev_listener_attempts_total)"
[ "$(m h2rev_listener_last_error class=none)" = 0 ] || fail "last error: $(grep last_error "$WORK/lm.txt")"
[ "$(m h2rev_upstream_requests_total code=2xx)" = 2 ] || fail "2xx: $(m h2rev_upstream_requests_total code=2xx)"
[ "$(m h2rev_upstream_requests_total code=4xx)" = 2 ] || fail "4xx: $(m h2rev_upstream_requests_total code=4xx)"
[ "$(m h2rev_upstream_request_duration_seconds_count)" = 4 ] || fail "histogram count"
[ "$(m h2rev_upstream_request_bytes_total)" = 10 ] || fail "request bytes: $(m h2rev_upstream_request_bytes_total)"
[ "$(m h2rev_reverse_connections_accepted_total)" -ge 1 ] || fail "accepted"
[ "$(m h2rev_upstream_errors_total)" = 0 ] || fail "upstream errors"
ok "listener /metrics parses (Prometheus parser): attached, 1 attempt, 2 2xx, 2 4xx, 10 bytes up"

# The dialer's list of attached ids, as JSON.
curl -sf "http://127.0.0.1:$DMPORT/listeners" > "$WORK/listeners.json" || fail "no /listeners"
python3 - "$WORK/listeners.json" "$ID" << 'PY' || fail "/listeners: $(cat "$WORK/listeners.json")"
import json, sys, time
v = json.load(open(sys.argv[1]))
assert isinstance(v, list) and len(v) == 1, v
l = v[0]
assert l["id"] == sys.argv[2], l
assert l["peer"].startswith("127.0.0.1:"), l
assert abs(l["attached_since"] - time.time()) < 120, l
assert l["streams"] >= 0 and l["spares"] >= 0 and l["pending"] == 0, l
PY
ok "dialer /listeners: one entry, id, peer, attached since, streams"

# The listener's access log: one line per request, once flushed (within a second).
wait_for lines_ge "$WORK/listener-access.log" 4 || fail "listener access log: $(cat "$WORK/listener-access.log")"
re='^time=[0-9T:.-]+Z method="[A-Z]+" path="([^"\\]|\\.)*" status=[0-9]+ by=(upstream|listener) '
re+='bytes=[0-9]+ in=[0-9]+ ms=[0-9]+\.[0-9]{3} ttfb_ms=[0-9]+\.[0-9]{3} result=[a-zA-Z_]+$'
bad=$(grep -cvE "$re" "$WORK/listener-access.log" || true)
[ "$bad" = 0 ] || fail "listener log lines not in the documented format: $(grep -vE "$re" "$WORK/listener-access.log")"
grep -qE 'method="GET" path="/index.html" status=200 by=upstream bytes=[0-9]+ in=0 .*result=ok$' \
  "$WORK/listener-access.log" || fail "200 line: $(cat "$WORK/listener-access.log")"
grep -qE 'method="POST" path="/sha" status=200 by=upstream bytes=[0-9]+ in=10 ' \
  "$WORK/listener-access.log" || fail "POST line: $(grep sha "$WORK/listener-access.log")"
grep -qF 'path="/q\"b\\c/\xc3\xa9/nope" status=404' "$WORK/listener-access.log" ||
  fail "escaped path: $(grep nope "$WORK/listener-access.log")"
ok "listener access log: 4 lines, status, bytes, durations, escaped path"

# The dialer's log in JSON: every line an object with the documented fields.
wait_for lines_ge "$WORK/dialer-access.log" 4 || fail "dialer access log"
python3 - "$WORK/dialer-access.log" "$ID" << 'PY' || fail "dialer JSON log: $(cat "$WORK/dialer-access.log")"
import json, sys
lines = open(sys.argv[1], "rb").read().split(b"\n")
assert lines[-1] == b"", "no final newline"
objs = [json.loads(l) for l in lines[:-1]]
keys = {"time", "peer", "method", "path", "proto", "status", "bytes", "in", "ms", "result", "listener"}
for o in objs:
    assert keys <= set(o), o
    assert isinstance(o["status"], int) and isinstance(o["ms"], float), o
odd = [o for o in objs if "nope" in o["path"]]
assert len(odd) == 1, objs
# Bytes outside ASCII are \u00XX, one per byte: the path's bytes come back as code points.
assert odd[0]["path"].encode("latin-1") == ("/proxy/%s/q\"b\\c/" % sys.argv[2]).encode() + b"\xc3\xa9/nope", odd
assert odd[0]["listener"] == sys.argv[2] and odd[0]["status"] == 404, odd
assert any(o["path"].endswith("/sha") and o["in"] == 10 for o in objs), objs
PY
ok "dialer access log in JSON: one object a line, escaped path, numbers as numbers"

# The listener's log in JSON too (a second listener).
L1_PID=$LISTENER_PID
start_listener j2 --access-log "$WORK/j2-access.log" --log-format json
J2_PID=$LISTENER_PID
LISTENER_PID=$L1_PID
wait_for tcurl -f "$(tunnel j2)/index.html" || fail "no answer through j2"
tcurl -o /dev/null "$(tunnel j2)/status/503" || true
stop "$J2_PID"
python3 - "$WORK/j2-access.log" << 'PY' || fail "listener JSON log: $(cat "$WORK/j2-access.log")"
import json, sys
objs = [json.loads(l) for l in open(sys.argv[1], "rb").read().splitlines()]
keys = {"time", "method", "path", "status", "by", "bytes", "in", "ms", "ttfb_ms", "result"}
assert all(keys <= set(o) for o in objs), objs
st = sorted(o["status"] for o in objs if o["path"] in ("/index.html", "/status/503"))
assert st[-2:] == [200, 503] and all(o["by"] == "upstream" for o in objs), objs
PY
ok "listener access log in JSON"

# An upstream that is not there: the listener's own 502, logged and counted as such.
DOWN_PORT=$(free_port)
D3M=$(free_port)
"$BIN/h2rev-listener" --url "https://127.0.0.1:$DIALER_PORT" --id down --ca "$WORK/h2rev-dialer.crt" \
  --upstream "http://127.0.0.1:$DOWN_PORT" --access-log "$WORK/down-access.log" \
  --metrics "127.0.0.1:$D3M" 2>> "$WORK/listener-down.log" &
D3_PID=$!
PIDS+=($D3_PID)
wait_for curl -sf "http://127.0.0.1:$D3M/readyz" || fail "listener down not attached"
code=$(tcurl -o /dev/null -w '%{http_code}' "$(tunnel down)/x")
[ "$code" = 502 ] || fail "upstream down -> $code"
curl -sf "http://127.0.0.1:$D3M/metrics" > "$WORK/d3.txt" || fail "no /metrics (down)"
[ "$(prom "$WORK/d3.txt" h2rev_upstream_errors_total)" = 1 ] || fail "errors: $(grep errors "$WORK/d3.txt")"
[ "$(prom "$WORK/d3.txt" h2rev_upstream_requests_total code=5xx)" = 1 ] || fail "5xx (down)"
stop "$D3_PID"
grep -qE 'path="/x" status=502 by=listener .* result=ECONNREFUSED$' "$WORK/down-access.log" ||
  fail "502 line: $(cat "$WORK/down-access.log")"
ok "upstream down: the listener's 502 logged by=listener with the reason, counted as an error"

# Rotation: the file moved away, SIGHUP, the next lines go to a new file by the old name.
mv "$WORK/listener-access.log" "$WORK/listener-access.log.1"
mv "$WORK/dialer-access.log" "$WORK/dialer-access.log.1"
kill -HUP "$LISTENER_PID" "$DIALER_PID"
wait_for grep -q "access log .* opened again" "$WORK/listener-$ID.log" || fail "listener did not reopen"
wait_for grep -q "access log .* opened again" "$WORK/dialer.log" || fail "dialer did not reopen"
tcurl -o /dev/null "$(tunnel "$ID")/index.html?after=1" || fail "request after the reload"
wait_for test -s "$WORK/listener-access.log" || fail "no new listener access log"
wait_for test -s "$WORK/dialer-access.log" || fail "no new dialer access log"
sleep 1.2
[ "$(wc -l < "$WORK/listener-access.log")" = 1 ] && grep -q 'after=1' "$WORK/listener-access.log" ||
  fail "new listener log: $(cat "$WORK/listener-access.log")"
[ "$(wc -l < "$WORK/listener-access.log.1")" = 4 ] || fail "rotated listener log changed"
[ "$(wc -l < "$WORK/dialer-access.log")" = 1 ] && grep -q 'after=1' "$WORK/dialer-access.log" ||
  fail "new dialer log: $(cat "$WORK/dialer-access.log")"
ok "SIGHUP opens both access logs again: new lines in the new files, the rotated ones kept"

# Readiness: a listener whose dialer is gone is not ready; a draining dialer is not.
LPID=$LISTENER_PID
kill -STOP "$LPID" # a request in flight, unanswered while it is stopped, holds the drain
tcurl -o /dev/null "$(tunnel "$ID")/index.html?held=1" &
CURL_PID=$!
PIDS+=($CURL_PID)
sleep 0.5
kill -TERM "$DIALER_PID"
wait_for code_is "http://127.0.0.1:$DMPORT/readyz" 503 ||
  fail "draining dialer /readyz: $(curl -s "http://127.0.0.1:$DMPORT/readyz")"
curl -s "http://127.0.0.1:$DMPORT/readyz" | grep -q draining || fail "/readyz does not say draining"
kill -CONT "$LPID"
wait "$CURL_PID" || fail "the request in flight during the drain failed"
forget "$CURL_PID"
wait "$DIALER_PID" 2> /dev/null || true
forget "$DIALER_PID"
wait_for code_is "http://127.0.0.1:$LMPORT/readyz" 503 ||
  fail "listener /readyz with no dialer"
curl -sf "http://127.0.0.1:$LMPORT/metrics" > "$WORK/lm2.txt" || fail "no listener /metrics"
[ "$(prom "$WORK/lm2.txt" h2rev_listener_state state=attached)" = 0 ] || fail "still attached"
[ "$(prom "$WORK/lm2.txt" h2rev_listener_failures_total)" -ge 1 ] || fail "no failure counted"
ok "/readyz: 503 on a draining dialer and on a listener whose dialer is gone"
