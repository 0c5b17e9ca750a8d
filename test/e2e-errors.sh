# The listener's error policy (issue 16, item 3) against real servers: a
# permanent failure (refused by the dialer, a certificate that does not
# verify, a server that is not an h2rev dialer: nginx speaking HTTP/2 in
# cleartext and over TLS, nginx over TLS without HTTP/2, python's
# http.server) is logged once with what to do and retried only after
# --max-backoff (default 30 s); a transient one backs off; --exit-on-permanent
# exits 1 with one line. SIGHUP re-reads --token-file and --ca and tries again
# at once (item "listener SIGHUP"); the attached connection keeps its token.
source "$(dirname "$0")/e2elib.sh"
command -v openssl > /dev/null || { echo "skip: openssl missing"; exit 77; }
command -v nginx > /dev/null || { echo "skip: nginx missing (nginx-light)"; exit 77; }
cd "$WORK"
start_upstream

# How long each listener runs before it is counted: a permanent failure is
# tried once in that time (the next attempt comes 15 to 30 s later).
WINDOW=6

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout ng.key -out ng.crt 2> /dev/null ||
  fail "openssl"

# nginx: HTTP/2 cleartext, HTTP/2 over TLS, TLS without HTTP/2. /revdial
# answers 200 with a text (a document, as an application would), anything
# else is nginx's 404 page.
NG_H2C=$(free_port)
NG_H2S=$(free_port)
NG_TLS=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" << EOF
user $(id -un) $(id -gn);
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx.log warn;
events { worker_connections 64; }
http {
  access_log $WORK/nginx-access.log;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  ssl_certificate $WORK/ng.crt;
  ssl_certificate_key $WORK/ng.key;
  root $WORK/www;
  server { listen 127.0.0.1:$NG_H2C http2; location = /revdial { return 200 "hello\n"; } }
  server { listen 127.0.0.1:$NG_H2S ssl http2; location = /revdial { return 200 "hello\n"; } }
  server { listen 127.0.0.1:$NG_TLS ssl; }
}
EOF
nginx -p "$WORK/nginx/" -c "$WORK/nginx.conf" -e "$WORK/nginx.log" 2>> "$WORK/nginx.log" &
PIDS+=($!)
wait_for curl -sf --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$NG_H2C/revdial" ||
  fail "nginx did not start"
PY=$(free_port)
python3 -m http.server "$PY" --bind 127.0.0.1 --directory "$WORK/www" > "$WORK/python.log" 2>&1 &
PIDS+=($!)
wait_for curl -sf -o /dev/null "http://127.0.0.1:$PY/index.html" || fail "python http.server"

# The h2rev dialers: TLS with a token, and cleartext.
DP=$(free_port)
"$BIN/h2rev-dialer" --listen "127.0.0.1:$DP" --self-signed-dir "$WORK" --token right \
  2>> "$WORK/dialer.log" &
DPID=$!
PIDS+=($DPID)
CA=$WORK/h2rev-dialer.crt
wait_for curl -sf --cacert "$CA" "https://127.0.0.1:$DP/healthz" || fail "dialer did not start"
CP=$(free_port)
"$BIN/h2rev-dialer" --listen "127.0.0.1:$CP" --cleartext 2>> "$WORK/dialer-clear.log" &
PIDS+=($!)
wait_for curl -sf --http2-prior-knowledge "http://127.0.0.1:$CP/healthz" || fail "cleartext dialer"

# run NAME ID URL [flags]: an h2rev-listener at debug level (every attempt is
# a "connecting to" line), pid in LP[NAME].
declare -A LP
run() {
  local name=$1 id=$2 url=$3
  shift 3
  "$BIN/h2rev-listener" --url "$url" --id "$id" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --log-level debug "$@" 2> "$WORK/l-$name.log" &
  LP[$name]=$!
  PIDS+=($!)
}
attempts() { grep -c "connecting to" "$WORK/l-$1.log" || true; }
# The lines an operator sees at the default level, those of the failures.
failures() { grep -c -E "h2rev-listener (warn|error): " "$WORK/l-$1.log" || true; }

run holder taken "https://127.0.0.1:$DP" --ca "$CA" --token right
wait_for grep -q "attached as taken" "$WORK/l-holder.log" || fail "the holder of id taken did not attach"
HOLDER=${LP[holder]}
unset 'LP[holder]'
t0=$(date +%s)
run ngh2c x "http://127.0.0.1:$NG_H2C"
run ngh2s x "https://127.0.0.1:$NG_H2S" --ca ng.crt
run ngtls x "https://127.0.0.1:$NG_TLS" --ca ng.crt
run ng404 x "http://127.0.0.1:$NG_H2C/reverse"
run py x "http://127.0.0.1:$PY"
run pys x "https://127.0.0.1:$PY"
run token x "https://127.0.0.1:$DP" --ca "$CA" --token wrong
run ca x "https://127.0.0.1:$DP" --ca ng.crt --token right
run idtaken taken "https://127.0.0.1:$DP" --ca "$CA" --token right
run scheme x "https://127.0.0.1:$CP"
run plain x "http://127.0.0.1:$DP" --token right
sleep "$WINDOW"
for n in "${!LP[@]}"; do kill -0 "${LP[$n]}" 2> /dev/null || fail "$n: the listener exited"; done
set +e
kill -TERM "${LP[@]}"
for n in "${!LP[@]}"; do
  wait "${LP[$n]}"
  rc=$?
  [ "$rc" = 0 ] || { set -e; fail "$n: exit $rc after SIGTERM"; }
done
set -e
t1=$(date +%s)
forget "${LP[@]}"
[ $((t1 - t0)) -lt 15 ] || fail "the window took $((t1 - t0)) s: its counts are meaningless"

# want NAME TEXT: one attempt, one line (an error), which says TEXT; never attached.
want() {
  local n=$1 text=$2 log=$WORK/l-$1.log
  [ "$(attempts "$n")" = 1 ] || fail "$n: $(attempts "$n") attempts in ${WINDOW} s, want 1: $(grep -E 'h2rev-listener (warn|error): ' "$log" | head -3)"
  [ "$(failures "$n")" = 1 ] || fail "$n: $(failures "$n") warn/error lines, want 1: $(grep -E 'h2rev-listener (warn|error): ' "$log")"
  grep "h2rev-listener error: " "$log" | grep -q -- "$text" || fail "$n: the line does not say \"$text\": $(grep 'h2rev-listener error: ' "$log")"
  grep "h2rev-listener error: " "$log" | grep -q "retrying in \(1[5-9]\|2[0-9]\|30\)\.[0-9] s" ||
    fail "$n: not retried after --max-backoff: $(grep 'h2rev-listener error: ' "$log")"
  ! grep -q "attached as" "$log" || fail "$n: reported attached"
}
want ngh2c "answered /revdial?id=x with a complete document.*not an h2rev dialer; check the URL"
want ngh2s "answered /revdial?id=x with a complete document.*not an h2rev dialer"
want ngtls "does not speak HTTP/2 over TLS (TLS alert no_application_protocol)"
want ng404 "has no /reverse/revdial?id=x (404).*--base-path"
want py "does not speak HTTP/2 (answered \"<!DOCTYPE HTML"
want pys "does not speak TLS (answered .*use http://"
want token "refused id x (403: not authorized): check the token"
want ca "its certificate does not verify (certificate verify failed: self-signed certificate): trust the CA"
want idtaken "refused id taken (409: id is attached by another connection): another listener holds this id"
want scheme "does not speak TLS (answered \"HTTP/1.1 400 Bad Request\"): for a cleartext dialer (--cleartext) use http://"
[ "$(grep -c 'refused (403) for id "x"' "$WORK/dialer.log")" = 1 ] ||
  fail "the dialer saw $(grep -c 'refused (403) for id "x"' "$WORK/dialer.log") attempts with the wrong token, want 1"
[ "$(grep -c 'GET /revdial?id=x' "$WORK/nginx-access.log")" = 2 ] ||
  fail "nginx saw $(grep -c 'GET /revdial?id=x' "$WORK/nginx-access.log") /revdial requests, want 2 (one per listener)"
ok "permanent failures (nginx h2c and TLS, nginx without h2, python http.server on http:// and https://, 403, 404, 409, wrong CA, https:// to a cleartext dialer): one attempt and one line each in ${WINDOW} s, saying what to do"
# A transient one: http:// to a TLS dialer closes without an answer. It backs
# off (at most 5 attempts in the window: 0.25-0.5, 0.5-1, 1-2, 2-4 s), one line.
n=plain
a=$(attempts $n)
[ "$a" -ge 2 ] && [ "$a" -le 5 ] || fail "$n: $a attempts in ${WINDOW} s, want 2 to 5"
[ "$(failures $n)" = 1 ] || fail "$n: $(failures $n) warn/error lines, want 1: $(grep -E 'h2rev-listener (warn|error): ' "$WORK/l-$n.log")"
grep "h2rev-listener warn: " "$WORK/l-$n.log" | grep -q "closed the connection without answering: if the dialer serves TLS, use https://" ||
  fail "$n: $(grep 'h2rev-listener warn: ' "$WORK/l-$n.log")"
ok "http:// to a TLS dialer: $a attempts backing off, one line (use https://)"
kill -0 "$HOLDER" || fail "the holder of id taken is gone"
stop "$HOLDER"

# --exit-on-permanent: exit 1 at once, one line at the default level.
for c in "ngh2c http://127.0.0.1:$NG_H2C" "token https://127.0.0.1:$DP --ca $CA --token wrong"; do
  set -- $c
  set +e
  timeout 10 "$BIN/h2rev-listener" --url "$2" --id x --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --exit-on-permanent "${@:3}" 2> "$WORK/exit-$1.log"
  rc=$?
  set -e
  [ "$rc" = 1 ] || fail "--exit-on-permanent ($1): exit $rc, want 1: $(cat "$WORK/exit-$1.log")"
  [ "$(grep -c -E 'h2rev-listener (warn|error): ' "$WORK/exit-$1.log")" = 1 ] ||
    fail "--exit-on-permanent ($1): $(cat "$WORK/exit-$1.log")"
  grep "h2rev-listener error: " "$WORK/exit-$1.log" | grep -q "; not retrying" || fail "--exit-on-permanent ($1): $(cat "$WORK/exit-$1.log")"
done
ok "--exit-on-permanent: exit 1 with one line"

# -------------------------------------------------------- SIGHUP reload
# A wrong token in --token-file and the wrong CA: fixed on disk, SIGHUP
# retries at once (not 15-30 s later).
echo wrong > "$WORK/token"
cp ng.crt "$WORK/ca.pem"
run hup hup "https://127.0.0.1:$DP" --ca "$WORK/ca.pem" --token-file "$WORK/token"
H=${LP[hup]}
wait_for grep -q "its certificate does not verify" "$WORK/l-hup.log" || fail "hup: no certificate failure"
cp "$CA" "$WORK/ca.pem"
kill -HUP "$H"
wait_for grep -q "refused id hup (403" "$WORK/l-hup.log" || fail "hup: the reloaded CA not used at once: $(tail -3 "$WORK/l-hup.log")"
grep -q "reload: CA $WORK/ca.pem" "$WORK/l-hup.log" || fail "hup: the CA reload not logged"
echo right > "$WORK/token"
t0=$(date +%s%3N)
kill -HUP "$H"
wait_for grep -q "attached as hup" "$WORK/l-hup.log" || fail "hup: not attached after the token's reload"
t1=$(date +%s%3N)
[ $((t1 - t0)) -lt 5000 ] || fail "hup: attached $((t1 - t0)) ms after SIGHUP"
grep -q "attached as hup to 127.0.0.1:$DP (after 2 failed attempts)" "$WORK/l-hup.log" ||
  fail "hup: $(grep attached "$WORK/l-hup.log")"
grep -q "reload: token from $WORK/token" "$WORK/l-hup.log" || fail "hup: the token reload not logged"
curl -sf --cacert "$CA" "https://127.0.0.1:$DP/proxy/hup/index.html" > /dev/null || fail "hup: not proxied"
# The attached connection keeps the token it attached with: its data streams
# are still accepted after the file changed (the dialer checks each).
echo other > "$WORK/token"
kill -HUP "$H"
reloads() { [ "$(grep -c 'reload: token' "$WORK/l-hup.log")" = "$1" ]; }
wait_for reloads 3 || fail "hup: the third reload not logged"
for i in 1 2 3 4 5 6; do
  curl -sf --cacert "$CA" "https://127.0.0.1:$DP/proxy/hup/bytes/$((i * 100000))" -o /dev/null ||
    fail "hup: request $i after the reload failed"
done
[ "$(grep -c "attached as hup" "$WORK/l-hup.log")" = 1 ] || fail "hup: reattached"
# A file that does not load keeps what is in use.
echo "not a certificate" > "$WORK/ca.pem"
: > "$WORK/token"
kill -HUP "$H"
wait_for grep -q "the CA and certificate in use are kept" "$WORK/l-hup.log" || fail "hup: a bad CA: $(tail -3 "$WORK/l-hup.log")"
grep -q "the CA and certificate in use are kept" "$WORK/l-hup.log" && grep "in use are kept" "$WORK/l-hup.log" | grep -q "ca.pem" ||
  fail "hup: the bad CA file not named"
grep -q "reload: --token-file: .*the token in use is kept" "$WORK/l-hup.log" || fail "hup: a bad token file"
kill -0 "$H" || fail "hup: SIGHUP ended the listener"
curl -sf --cacert "$CA" "https://127.0.0.1:$DP/proxy/hup/index.html" > /dev/null || fail "hup: not proxied after bad files"
set +e
kill -TERM "$H"
wait "$H"
rc=$?
set -e
forget "$H"
[ "$rc" = 0 ] || fail "hup: exit $rc"
ok "listener SIGHUP: --ca and --token-file re-read, retried at once (attached $((t1 - t0)) ms after), the attached connection keeps its token, bad files kept"
