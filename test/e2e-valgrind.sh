# The main paths under valgrind's memcheck: both tools serve GETs over HTTP/2 and HTTP/1.1,
# a download, uploads with and without Content-Length and a burst of concurrent requests,
# then stop on SIGTERM; neither may report an error (invalid access, uninitialised value,
# definite leak). valgrind sees what the sanitizers cannot: accesses made inside libuv,
# nghttp2 and OpenSSL, which are not instrumented.
source "$(dirname "$0")/e2elib.sh"

command -v valgrind > /dev/null || { echo "skipped: no valgrind"; exit 77; }
libs=$(ldd "$BIN/h2rev-dialer") # whole, before grep (pipefail: grep -q may cut ldd off)
if grep -q 'libasan\|libubsan' <<< "$libs"; then
  echo "skipped: a sanitizer build (valgrind cannot run it)"
  exit 77
fi

VG=(valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite
  --show-leak-kinds=definite)

start_upstream
head -c $((4 << 20)) /dev/urandom > "$WORK/www/four.bin"
DIALER_PORT=$(free_port)
"${VG[@]}" "$BIN/h2rev-dialer" --listen "127.0.0.1:$DIALER_PORT" --self-signed-dir "$WORK" \
  --log-level warn 2>> "$WORK/dialer.log" &
DVG=$!
PIDS+=($DVG)
wait_for curl -sf --cacert "$WORK/h2rev-dialer.crt" "https://127.0.0.1:$DIALER_PORT/healthz" ||
  wait_for curl -sf --cacert "$WORK/h2rev-dialer.crt" "https://127.0.0.1:$DIALER_PORT/healthz" ||
  fail "dialer did not start under valgrind"
"${VG[@]}" "$BIN/h2rev-listener" --url "https://127.0.0.1:$DIALER_PORT" --id vg \
  --ca "$WORK/h2rev-dialer.crt" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
  --log-level warn 2>> "$WORK/listener.log" &
LVG=$!
PIDS+=($LVG)
wait_for tcurl -f "$(tunnel vg)/index.html" || wait_for tcurl -f "$(tunnel vg)/index.html" ||
  fail "no answer through the tunnel under valgrind"

[ "$(tcurl -f "$(tunnel vg)/index.html")" = "hello through the tunnel" ] || fail "GET over HTTP/2"
[ "$(tcurl -f --http1.1 "$(tunnel vg)/index.html")" = "hello through the tunnel" ] ||
  fail "GET over HTTP/1.1"
tcurl -f "$(tunnel vg)/four.bin" | cmp -s - "$WORK/www/four.bin" || fail "4 MiB download"
want="$((4 << 20)) $(sha256sum "$WORK/www/four.bin" | cut -d' ' -f1)"
[ "$(tcurl -f -X PUT --data-binary "@$WORK/www/four.bin" "$(tunnel vg)/sha")" = "$want" ] ||
  fail "4 MiB upload"
[ "$(tcurl -f --http1.1 -H 'Transfer-Encoding: chunked' --data-binary "@$WORK/www/four.bin" \
  "$(tunnel vg)/sha")" = "$want" ] || fail "4 MiB chunked upload"
concurrent vg 20 100
ok "requests through both tools under valgrind"

# SIGTERM: the listener drains and exits first, then the dialer; valgrind's exit status
# says whether it saw an error.
kill "$LVG"
wait "$LVG" && lrc=0 || lrc=$?
kill "$DVG"
wait "$DVG" && drc=0 || drc=$?
grep -q "ERROR SUMMARY: 0 errors" "$WORK/listener.log" || fail "listener: valgrind reported errors (exit $lrc)"
grep -q "ERROR SUMMARY: 0 errors" "$WORK/dialer.log" || fail "dialer: valgrind reported errors (exit $drc)"
[ "$lrc" = 0 ] && [ "$drc" = 0 ] || fail "exit status under valgrind: listener $lrc, dialer $drc"
ok "no valgrind errors in either tool, both exit 0 after SIGTERM"
