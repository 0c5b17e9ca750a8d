# Interoperability with the Go h2rev2 under load, both ways:
#   A: client -> revsrv (the Go dialer) -> h2rev-listener -> upstream
#   B: client -> h2rev-dialer -> revcli (the Go listener) -> upstream
# The upstream is nginx for files, in front of test/upstream.py for /sha and /bytes/
# (python alone without nginx: slower, and the load tests take longer).
# Each: 10,000 small GETs at h2load -c 16 -m 10, all 2xx; 100 concurrent 1 MiB downloads
# and 100 concurrent 1 MiB uploads, checked by SHA-256; the Go side restarted with
# requests in flight (they fail, none hangs or ends as a short 200) and requests after
# its return answered. The Go binaries are ../shared/interop/{revsrv,revcli} (README there).
source "$(dirname "$0")/e2elib.sh"

GO=$SRC/../shared/interop
for t in "$GO/revsrv" "$GO/revcli"; do
  [ -x "$t" ] || { echo "skip: $t not found (the Go reference binaries)"; exit 77; }
done
command -v h2load > /dev/null || { echo "skip: h2load not found (nghttp2-client)"; exit 77; }

N_GET=10000
N_XFER=100
MIB=$((1 << 20))
N_INFLIGHT=20

# A certificate for revsrv, trusted by h2rev-listener and curl.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$WORK/go.key" -out "$WORK/go.crt" 2> /dev/null

start_upstream
head -c 100 /dev/urandom > "$WORK/www/small.bin"
head -c "$MIB" /dev/urandom > "$WORK/www/one.bin"
head -c "$MIB" /dev/urandom > "$WORK/up.bin"
WANT_UP="$MIB $(sha256sum < "$WORK/up.bin" | cut -d' ' -f1)"
WANT_DOWN=$(sha256sum < "$WORK/www/one.bin" | cut -d' ' -f1)
UP=$UPSTREAM_PORT
if command -v nginx > /dev/null; then
  UP=$(free_port)
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx.conf" << EOF
user $(id -un) $(id -gn);
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  upstream py { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$UP;
    root $WORK/www;
    location ~ ^/(sha|bytes/) {
      proxy_pass http://py;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
      client_max_body_size 0;
    }
  }
}
EOF
  nginx -p "$WORK/nginx/" -c "$WORK/nginx.conf" -e "$WORK/nginx.log" 2>> "$WORK/nginx.log" &
  PIDS+=($!)
  wait_for curl -sf -o /dev/null "http://127.0.0.1:$UP/small.bin" || fail "nginx did not start"
fi

kill9() {
  kill -9 "$1" 2> /dev/null || true
  wait "$1" 2> /dev/null || true
  forget "$1"
}
alive() { kill -0 "$1" 2> /dev/null || fail "$2 is gone (see its log)"; }

# h2load_all NAME URL: N_GET GETs at -c 16 -m 10, every one answered 2xx.
h2load_all() {
  local out ok
  out=$(timeout 150 h2load -c 16 -m 10 -n "$N_GET" "$2" 2>&1 || true)
  ok=$(awk '/^status codes:/ {print $3}' <<< "$out")
  [ "${ok:-0}" = "$N_GET" ] ||
    fail "$1: ${ok:-0} of $N_GET answered 2xx: $(grep -E '^(requests|status codes):' <<< "$out" | tr '\n' ' ')"
  ok "$1: $N_GET of $N_GET GETs 2xx ($(awk '/^finished in/ {print $4, $5}' <<< "$out" | tr -d ,))"
}

# transfers NAME URL CURLFLAGS...: N_XFER downloads of 1 MiB and N_XFER uploads of 1 MiB,
# all at once (one curl, its transfers multiplexed: a hundred curl processes would
# measure process start-up on a loaded machine), each checked by its SHA-256.
transfers() {
  local name=$1 url=$2 got i
  shift 2
  local args=()
  for i in $(seq 1 "$N_XFER"); do args+=(-o "$WORK/x/down$i" "$url/one.bin"); done
  rm -rf "$WORK/x" && mkdir "$WORK/x"
  timeout 120 curl -sS -f --max-time 60 -Z --parallel-max "$N_XFER" "$@" "${args[@]}" 2> /dev/null || true
  for i in $(seq 1 "$N_XFER"); do sha256sum < "$WORK/x/down$i" 2> /dev/null | cut -d' ' -f1; done > "$WORK/down.txt"
  got=$(grep -c -x "$WANT_DOWN" "$WORK/down.txt" || true)
  [ "$got" = "$N_XFER" ] || fail "$name: $got of $N_XFER concurrent 1 MiB downloads intact"
  args=()
  for i in $(seq 1 "$N_XFER"); do args+=(-T "$WORK/up.bin" -o "$WORK/x/up$i" "$url/sha"); done
  timeout 120 curl -sS -f --max-time 60 -Z --parallel-max "$N_XFER" "$@" "${args[@]}" 2> /dev/null || true
  got=$(cat "$WORK"/x/up* 2> /dev/null | grep -c -x "$WANT_UP" || true)
  [ "$got" = "$N_XFER" ] || fail "$name: $got of $N_XFER concurrent 1 MiB uploads intact"
  ok "$name: $N_XFER concurrent 1 MiB downloads and $N_XFER uploads, checksums match"
}

# inflight URL CURLFLAGS...: N_INFLIGHT slow downloads of SLOW bytes in the background
# (far more than the windows on the way hold: curl's own HTTP/2 window takes up to
# 32 MiB at once, and sees the reset only after reading them at its rate), each
# writing "<curl exit> <status> <bytes>" to $WORK/inflight.txt.
SLOW=$((256 * MIB))
inflight() {
  local url=$1
  shift
  : > "$WORK/inflight.txt"
  for _ in $(seq 1 "$N_INFLIGHT"); do
    (
      set +e
      out=$(curl -sS --max-time 30 --limit-rate 4m -o /dev/null -w '%{http_code} %{size_download}' \
        "$@" "$url/bytes/$SLOW" 2> /dev/null)
      echo "$? $out" >> "$WORK/inflight.txt"
    ) &
    INFLIGHT_PIDS+=($!)
  done
}
# inflight_failed NAME: every request in flight ended in time as a failure: a curl
# error or a non-200 answer, none as a 200 shorter than its body, none timed out.
inflight_failed() {
  local p
  for p in "${INFLIGHT_PIDS[@]}"; do wait "$p" || true; done
  INFLIGHT_PIDS=()
  local total failed truncated hung
  total=$(wc -l < "$WORK/inflight.txt")
  failed=$(awk '$1 != 0 || $2 != 200' "$WORK/inflight.txt" | wc -l)
  hung=$(awk '$1 == 28' "$WORK/inflight.txt" | wc -l)
  truncated=$(awk -v n="$SLOW" '$1 == 0 && $2 == 200 && $3 != n' "$WORK/inflight.txt" | wc -l)
  [ "$total" = "$N_INFLIGHT" ] || fail "$1: $total of $N_INFLIGHT requests in flight reported"
  [ "$truncated" = 0 ] || fail "$1: $truncated requests in flight ended as a short 200"
  [ "$hung" = 0 ] || fail "$1: $hung requests in flight hung until curl's timeout"
  [ "$failed" = "$N_INFLIGHT" ] ||
    fail "$1: only $failed of $N_INFLIGHT requests in flight failed: $(sort "$WORK/inflight.txt" | uniq -c | tr '\n' ';')"
}
INFLIGHT_PIDS=()

# ---------------------------------------------- A: h2rev-listener behind the Go dialer
SP=$(free_port)
start_revsrv() {
  "$GO/revsrv" -addr "127.0.0.1:$SP" -cert "$WORK/go.crt" -key "$WORK/go.key" \
    >> "$WORK/revsrv.log" 2>&1 &
  SPID=$!
  PIDS+=($SPID)
  wait_for curl -s -o /dev/null --cacert "$WORK/go.crt" "https://127.0.0.1:$SP/" ||
    fail "revsrv did not start"
}
start_revsrv
"$BIN/h2rev-listener" --url "https://127.0.0.1:$SP" --id cl --ca "$WORK/go.crt" \
  --upstream "http://127.0.0.1:$UP" 2>> "$WORK/listener.log" &
LPID=$!
PIDS+=($LPID)
GA=https://127.0.0.1:$SP/proxy/cl
acurl() { curl -sS --cacert "$WORK/go.crt" "$@"; }
wait_for acurl -f "$GA/small.bin" || fail "A: no answer through revsrv"
cmp -s <(acurl -f "$GA/small.bin") "$WORK/www/small.bin" || fail "A: small.bin differs"

h2load_all "A (Go dialer, h2rev-listener)" "$GA/small.bin"
transfers "A" "$GA" --cacert "$WORK/go.crt"

inflight "$GA" --cacert "$WORK/go.crt"
sleep 2 # every one under way
kill9 "$SPID"
inflight_failed "A, revsrv killed"
start_revsrv
for _ in $(seq 1 300); do acurl -f -o /dev/null "$GA/small.bin" 2> /dev/null && break; sleep 0.1; done
acurl -f -o /dev/null "$GA/small.bin" || fail "A: no answer after revsrv came back"
[ "$(grep -c "attached as cl" "$WORK/listener.log")" -ge 2 ] || fail "A: the listener did not attach again"
out=$(timeout 60 h2load -c 4 -m 10 -n 200 "$GA/small.bin" 2>&1 || true)
grep -q '^status codes: 200 2xx' <<< "$out" || fail "A, after the restart: $(grep '^status codes' <<< "$out")"
alive "$LPID" h2rev-listener
ok "A: revsrv killed with $N_INFLIGHT downloads in flight: all failed, none hung; after it came back, 200 of 200"

# ---------------------------------------------- B: the Go listener behind h2rev-dialer
start_dialer
start_revcli() {
  "$GO/revcli" -url "https://127.0.0.1:$DIALER_PORT/" -ca "$WORK/h2rev-dialer.crt" -id gg \
    -upstream "http://127.0.0.1:$UP" >> "$WORK/revcli.log" 2>&1 &
  CPID=$!
  PIDS+=($CPID)
}
start_revcli
GB=$(tunnel gg)
wait_for tcurl -f -o /dev/null "$GB/small.bin" || fail "B: no answer through revcli"
cmp -s <(tcurl -f "$GB/small.bin") "$WORK/www/small.bin" || fail "B: small.bin differs"

h2load_all "B (h2rev-dialer, Go listener)" "$GB/small.bin"
transfers "B" "$GB" --cacert "$WORK/h2rev-dialer.crt"

inflight "$GB" --cacert "$WORK/h2rev-dialer.crt"
sleep 2 # every one under way
kill9 "$CPID"
inflight_failed "B, revcli killed"
code=$(tcurl -o /dev/null -w '%{http_code}' "$GB/small.bin" || true)
[ "$code" = 502 ] || fail "B: with revcli gone: $code, want 502"
start_revcli
for _ in $(seq 1 300); do tcurl -f -o /dev/null "$GB/small.bin" 2> /dev/null && break; sleep 0.1; done
tcurl -f -o /dev/null "$GB/small.bin" || fail "B: no answer after revcli came back"
out=$(timeout 60 h2load -c 4 -m 10 -n 200 "$GB/small.bin" 2>&1 || true)
grep -q '^status codes: 200 2xx' <<< "$out" || fail "B, after the restart: $(grep '^status codes' <<< "$out")"
alive "$DIALER_PID" h2rev-dialer
ok "B: revcli killed with $N_INFLIGHT downloads in flight: all failed, none hung; 502 while gone; after it came back, 200 of 200"
