# The two tools end to end: flags, TLS, tokens, tokens file, mTLS, start order,
# dialer restart, and graceful drain on SIGTERM (dialer and listener).
source "$(dirname "$0")/e2elib.sh"

# dialer NAME [flags]: an h2rev-dialer on a free port (DP), pid DPID, log dialer-NAME.log.
# With DP already set and KEEP_PORT=1, it reuses that port.
dialer() {
  local name=$1
  shift
  [ "${KEEP_PORT:-0}" = 1 ] || DP=$(free_port)
  "$BIN/h2rev-dialer" --listen "127.0.0.1:$DP" --self-signed-dir "$WORK" "$@" \
    2>> "$WORK/dialer-$name.log" &
  DPID=$!
  PIDS+=($DPID)
  wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$DP" || fail "dialer $name did not start"
}

# listener NAME ID [flags]: an h2rev-listener to https://127.0.0.1:$DP, pid LPID,
# log listener-NAME.log.
listener() {
  local name=$1 id=$2
  shift 2
  "$BIN/h2rev-listener" --url "https://127.0.0.1:$DP" --id "$id" --ca "$WORK/h2rev-dialer.crt" \
    --upstream "http://127.0.0.1:$UPSTREAM_PORT" "$@" 2>> "$WORK/listener-$name.log" &
  LPID=$!
  PIDS+=($LPID)
}

tun() { echo "https://127.0.0.1:$DP/proxy/$1"; }
code_of() { tcurl -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true; }
# lines FILE PATTERN: how many lines of FILE match
lines() { grep -c -- "$2" "$1" 2>/dev/null || true; }
now_ms() { date +%s%3N; }

# ------------------------------------------------------------------ flags
cd "$WORK"
bad() { # bad TOOL ARGS...: exit status 2 and exactly one line on stderr
  local tool=$1
  shift
  set +e
  timeout 10 "$BIN/$tool" "$@" > "$WORK/out" 2> "$WORK/err"
  local rc=$?
  set -e
  [ "$rc" = 2 ] || fail "$tool $*: exit $rc, want 2 ($(cat "$WORK/err"))"
  [ "$(wc -l < "$WORK/err")" = 1 ] || fail "$tool $*: stderr is not one line: $(cat "$WORK/err")"
  [ ! -s "$WORK/out" ] || fail "$tool $*: wrote to stdout"
}
printf '# ids and tokens\n\nalpha tokA\nbeta\n' > "$WORK/malformed.tokens"
echo "not a certificate" > "$WORK/junk.pem"
bad h2rev-dialer --bogus
bad h2rev-dialer --listen nonsense
bad h2rev-dialer --listen 127.0.0.1:99999
bad h2rev-dialer --cert /nonexistent --key /nonexistent
bad h2rev-dialer --cert "$WORK/junk.pem" --key "$WORK/junk.pem"
bad h2rev-dialer --cert "$WORK/junk.pem"
bad h2rev-dialer --client-ca /nonexistent
bad h2rev-dialer --tokens-file /nonexistent
grep -q "/nonexistent" "$WORK/err" || fail "unreadable tokens file not named: $(cat "$WORK/err")"
bad h2rev-dialer --tokens-file "$WORK/malformed.tokens"
grep -q "malformed.tokens:4" "$WORK/err" || fail "malformed line not named: $(cat "$WORK/err")"
bad h2rev-dialer --tokens-file "$WORK"
bad h2rev-dialer --drain-timeout soon
bad h2rev-dialer --dial-timeout 10x
bad h2rev-dialer --log-level loud
bad h2rev-dialer --base-path relative
bad h2rev-dialer --listen
bad h2rev-listener --bogus
bad h2rev-listener --upstream http://127.0.0.1:1
bad h2rev-listener --url https://127.0.0.1:1
bad h2rev-listener --url ftp://127.0.0.1:1 --upstream http://127.0.0.1:1 --id x
bad h2rev-listener --url https://127.0.0.1:1 --upstream ftp://127.0.0.1:1 --id x
grep -q "is not an http://, https:// or tcp:// URL" "$WORK/err" || fail "ftp upstream: $(cat "$WORK/err")"
bad h2rev-listener --url https://127.0.0.1:1 --upstream https://127.0.0.1:1 --id x \
  --upstream-ca /nonexistent
bad h2rev-listener --url https://127.0.0.1:1 --upstream http://127.0.0.1:1 --id 'bad id'
bad h2rev-listener --url https://127.0.0.1:1 --upstream http://127.0.0.1:1 --id x \
  --cert /nonexistent --key /nonexistent
bad h2rev-listener --url https://127.0.0.1:1 --upstream http://127.0.0.1:1 --id x \
  --ca "$WORK/junk.pem"
bad h2rev-listener --url https://127.0.0.1:1 --upstream http://127.0.0.1:1 --id x \
  --drain-timeout -1
# grep reads it all (not -q): a help longer than the pipe's 4 KiB buffer, written in two
# parts, would get SIGPIPE for the second when grep -q stops at the first match.
for t in h2rev-dialer h2rev-listener; do
  timeout 10 "$BIN/$t" --help | grep -- "--drain-timeout" > /dev/null || fail "$t --help"
  timeout 10 "$BIN/$t" --version | grep -q "^$t [0-9]" || fail "$t --version"
done
timeout 10 "$BIN/h2rev-dialer" --help | grep -- "--tokens-file" > /dev/null || fail "dialer --help"
ok "bad flags: exit 2 with one line; --help and --version exit 0"

# -------------------------------------------------------------------- TLS
start_upstream
dialer tls
listener tls e2e
wait_for tcurl -f "$(tun e2e)/index.html" || fail "no answer through the tunnel"
[ "$(tcurl --http2 "$(tun e2e)/index.html")" = "hello through the tunnel" ] || fail "TLS body"
ok "curl over TLS with the self-signed certificate"
T_LPID=$LPID

# Restart: killed, started again on the same port with the same certificate
# directory (the certificate is reused): the listener comes back by itself.
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
forget "$DPID"
KEEP_PORT=1 dialer tls
grep -q "reused from" "$WORK/dialer-tls.log" || fail "self-signed certificate not reused"
for _ in $(seq 1 200); do tcurl -f "$(tun e2e)/index.html" > /dev/null 2>&1 && break; sleep 0.1; done
[ "$(tcurl "$(tun e2e)/index.html")" = "hello through the tunnel" ] ||
  fail "listener did not come back after a dialer restart"
ok "dialer restarted on the same port: the listener reattached"
stop "$DPID" "$T_LPID"

# ------------------------------------------------------------------ token
dialer token --token s3cret
listener good good --token s3cret
G_LPID=$LPID
listener wrong wrong --token nope
W_LPID=$LPID
listener none none
N_LPID=$LPID
wait_for tcurl -f "$(tun good)/index.html" || fail "listener with the right token not attached"
wait_for grep -q 'refused (403) for id "wrong"' "$WORK/dialer-token.log" ||
  fail "dialer did not log the 403 for the wrong token"
wait_for grep -q 'refused (403) for id "none"' "$WORK/dialer-token.log" ||
  fail "dialer did not log the 403 without a token"
wait_for grep -q refused "$WORK/listener-wrong.log" || fail "listener did not log the refusal"
# A permanent failure: it stays up and tries again after --max-backoff, not
# at once (e2e-errors counts the attempts).
grep -q "refused id wrong (403: not authorized): check the token.*; retrying in" \
  "$WORK/listener-wrong.log" || fail "the refusal says neither why nor what to do: $(cat "$WORK/listener-wrong.log")"
kill -0 "$W_LPID" || fail "refused listener exited"
[ "$(code_of "$(tun wrong)/index.html")" = 502 ] || fail "/proxy/wrong is not 502"
[ "$(code_of "$(tun none)/index.html")" = 502 ] || fail "/proxy/none is not 502"
ok "--token: right token proxies, wrong or no token refused (403, retried later, 502)"
stop "$DPID" "$G_LPID" "$W_LPID" "$N_LPID"

# ------------------------------------------------------------ tokens file
cat > "$WORK/ids.tokens" << 'EOF'
# id    token
alpha   tokA

beta	tokB
  # indented comment
beta    tokB2
EOF
dialer tf --tokens-file "$WORK/ids.tokens" --token global
listener alpha alpha --token tokA
A_LPID=$LPID
listener beta beta --token tokB2
B_LPID=$LPID
listener gamma gamma --token global
C_LPID=$LPID
listener alphab alphab --token tokA
X_LPID=$LPID
listener betaw beta2 --token tokA
Y_LPID=$LPID
for id in alpha beta gamma; do
  wait_for tcurl -f "$(tun $id)/index.html" || fail "tokens file: $id not attached"
done
wait_for grep -q 'refused (403) for id "alphab"' "$WORK/dialer-tf.log" || fail "alphab not refused"
wait_for grep -q 'refused (403) for id "beta2"' "$WORK/dialer-tf.log" || fail "beta2 not refused"
wait_for grep -q refused "$WORK/listener-alphab.log" || fail "alphab: no refusal logged"
[ "$(code_of "$(tun alphab)/index.html")" = 502 ] || fail "/proxy/alphab is not 502"
[ "$(code_of "$(tun beta2)/index.html")" = 502 ] || fail "/proxy/beta2 is not 502"
ok "--tokens-file: per-id tokens (several per id), --token also accepted, others refused"
stop "$DPID" "$A_LPID" "$B_LPID" "$C_LPID" "$X_LPID" "$Y_LPID"

# ------------------------------------------------------------ long tokens
# Tokens of any length up to the tools' limit (16384 characters) go whole
# from the listener's file or flag to the dialer's file: none is cut on the
# way (a token differing in its last character only is refused).
long() { printf '%s%s' "$(head -c "$(($1 - 1))" /dev/zero | tr '\0' "$2")" "$3"; }
t200=$(long 200 a A)
t5000=$(long 5000 b B)
tmax=$(long 16384 c C)
printf '%s\n' "$t5000" > "$WORK/token-5000"
printf '%s\n' "$tmax" > "$WORK/token-max"
printf '%s\n' "$(long 16385 d D)" > "$WORK/token-over"
printf 'short %s\nmax %s\n' "$t200" "$tmax" > "$WORK/long.tokens"
printf 'over %s\n' "$(long 16385 d D)" > "$WORK/over.tokens"
dialer long --token-file "$WORK/token-5000" --tokens-file "$WORK/long.tokens"
listener l5000 l5000 --token-file "$WORK/token-5000"
L1=$LPID
listener short short --token "$t200"
L2=$LPID
listener max max --token-file "$WORK/token-max"
L3=$LPID
listener cut cut --token "$(long 5000 b X)"
L4=$LPID
for id in l5000 short max; do
  wait_for tcurl -f "$(tun $id)/index.html" || fail "long tokens: $id not attached"
done
wait_for grep -q 'refused (403) for id "cut"' "$WORK/dialer-long.log" ||
  fail "a 5000-character token differing in its last character was not refused"
stop "$DPID" "$L1" "$L2" "$L3" "$L4"
bad h2rev-listener --url https://127.0.0.1:1 --upstream http://127.0.0.1:1 --id x \
  --token-file "$WORK/token-over"
grep -q "16384" "$WORK/err" || fail "a token over the limit: the limit not named: $(cat "$WORK/err")"
bad h2rev-dialer --tokens-file "$WORK/over.tokens"
grep -q "over.tokens:1: a token is at most 16384" "$WORK/err" ||
  fail "a tokens file's token over the limit: $(cat "$WORK/err")"
ok "tokens of 200, 5000 and 16384 characters (flag, file, tokens file) accepted whole; longer ones refused"

# ------------------------------------------------------------------- mTLS
(
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=h2rev test CA" -keyout ca.key -out ca.pem
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=good" \
    -keyout good.key -out good.csr
  openssl x509 -req -in good.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out good.crt
) > "$WORK/openssl.log" 2>&1 || fail "openssl: $(cat "$WORK/openssl.log")"
dialer mtls --client-ca "$WORK/ca.pem"
listener mgood good --cert "$WORK/good.crt" --key "$WORK/good.key"
G_LPID=$LPID
listener mother other --cert "$WORK/good.crt" --key "$WORK/good.key"
O_LPID=$LPID
listener mnone nocert
N_LPID=$LPID
# A client may present a certificate from the CA (none is needed: e2e-ops).
mcurl() { tcurl --cert "$WORK/good.crt" --key "$WORK/good.key" "$@"; }
wait_for mcurl -f "$(tun good)/index.html" || fail "mTLS: good not attached"
wait_for grep -q 'refused (403) for id "other"' "$WORK/dialer-mtls.log" ||
  fail "mTLS: a certificate for another id was not refused"
wait_for grep -q refused "$WORK/listener-mother.log" || fail "mTLS: other: no refusal logged"
wait_for grep -q "refused id nocert (403: no client certificate)" "$WORK/listener-mnone.log" ||
  fail "mTLS: no failure without a certificate: $(cat "$WORK/listener-mnone.log")"
! grep -q "attached as" "$WORK/listener-mnone.log" || fail "mTLS: attached without a certificate"
[ "$(mcurl -o /dev/null -w '%{http_code}' "$(tun other)/index.html")" = 502 ] ||
  fail "/proxy/other is not 502"
[ "$(mcurl -o /dev/null -w '%{http_code}' "$(tun nocert)/index.html")" = 502 ] ||
  fail "/proxy/nocert is not 502"
ok "--client-ca: certificate CN=good attaches as good, not as other; no certificate refused"
stop "$DPID" "$G_LPID" "$O_LPID" "$N_LPID"

# ------------------------------------------------ listener before dialer
DP=$(free_port)
listener early early
E_LPID=$LPID
sleep 1
KEEP_PORT=1 dialer early
wait_for tcurl -f "$(tun early)/index.html" || fail "listener started first did not attach in 10 s"
ok "listener started before the dialer attaches once it is up"

# ------------------------------------------------- SIGTERM to the dialer
N=16000000
python3 -c 'import sys; b=bytes(range(256))*256; n='$N'; o=sys.stdout.buffer
while n>0: k=min(n,len(b)); o.write(b[:k]); n-=k' > "$WORK/want.bin"
stop "$DPID"
KEEP_PORT=1 dialer drain --drain-timeout 20000
wait_for tcurl -f "$(tun early)/index.html" || fail "drain: listener not back"
timeout 60 curl -sS --cacert "$WORK/h2rev-dialer.crt" -f --limit-rate 2M \
  "$(tun early)/bytes/$N" -o "$WORK/got1.bin" &
C=$!
sleep 1
t0=$(now_ms)
kill -TERM "$DPID"
sleep 0.3
# No longer listening: new clients are refused at once.
set +e
tcurl -f "$(tun early)/index.html" -o /dev/null 2> /dev/null
rc=$?
timeout 30 tail -s 0.1 --pid="$DPID" -f /dev/null
wait "$DPID"
drc=$?
forget "$DPID"
t1=$(now_ms)
wait "$C"
crc=$?
set -e
[ "$rc" = 7 ] || fail "a new client during the drain: curl exit $rc, want 7 (refused)"
[ "$drc" = 0 ] || fail "dialer exit status $drc after SIGTERM"
[ $((t1 - t0)) -lt 21000 ] || fail "dialer took $((t1 - t0)) ms to drain"
[ "$crc" = 0 ] || fail "download cut by the dialer's drain (curl $crc)"
cmp "$WORK/want.bin" "$WORK/got1.bin" || fail "download differs after the dialer's drain"
grep -q "drained" "$WORK/dialer-drain.log" || fail "dialer did not log the drain"
ok "SIGTERM to the dialer: download completed intact, exit 0 after $((t1 - t0)) ms"

# ----------------------------------------------- SIGTERM to the listener
KEEP_PORT=1 dialer after
stop "$E_LPID"
listener ldrain ld --drain-timeout 20000
L1=$LPID
wait_for tcurl -f "$(tun ld)/index.html" || fail "ldrain: not attached"
timeout 60 curl -sS --cacert "$WORK/h2rev-dialer.crt" -f --limit-rate 2M \
  "$(tun ld)/bytes/$N" -o "$WORK/got2.bin" &
C=$!
sleep 1
t0=$(now_ms)
kill -TERM "$L1"
# Detached at once: the id is free, a replacement attaches while the first drains.
listener lnext ld
L2=$LPID
wait_for grep -q "attached as ld" "$WORK/listener-lnext.log" || fail "replacement did not attach"
[ "$(tcurl "$(tun ld)/index.html")" = "hello through the tunnel" ] || fail "replacement serves"
set +e
timeout 30 tail -s 0.1 --pid="$L1" -f /dev/null
wait "$L1"
lrc=$?
forget "$L1"
t1=$(now_ms)
wait "$C"
crc=$?
set -e
[ "$lrc" = 0 ] || fail "listener exit status $lrc after SIGTERM"
[ $((t1 - t0)) -lt 21000 ] || fail "listener took $((t1 - t0)) ms to drain"
[ "$crc" = 0 ] || fail "download cut by the listener's drain (curl $crc)"
cmp "$WORK/want.bin" "$WORK/got2.bin" || fail "download differs after the listener's drain"
ok "SIGTERM to the listener: detached at once (replacement attached), download completed intact, exit 0 after $((t1 - t0)) ms"

# Drain timeout: a download longer than --drain-timeout is cut, exit still 0.
stop "$L2"
listener lshort ls --drain-timeout 500
L3=$LPID
wait_for tcurl -f "$(tun ls)/index.html" || fail "lshort: not attached"
set +e
timeout 60 curl -sS --cacert "$WORK/h2rev-dialer.crt" -f --limit-rate 1M \
  "$(tun ls)/bytes/$((64 << 20))" -o /dev/null 2> /dev/null &
C=$!
sleep 1
t0=$(now_ms)
kill -TERM "$L3"
timeout 30 tail -s 0.1 --pid="$L3" -f /dev/null
wait "$L3"
lrc=$?
forget "$L3"
t1=$(now_ms)
wait "$C"
crc=$?
set -e
[ "$lrc" = 0 ] || fail "listener exit status $lrc after its drain timeout"
[ $((t1 - t0)) -lt 5000 ] || fail "listener took $((t1 - t0)) ms with --drain-timeout 500"
[ "$crc" != 0 ] || fail "a download longer than the drain timeout looked complete"
ok "listener drain timeout: cut after $((t1 - t0)) ms, exit 0"
stop "$DPID"

# ---------------------------- cleartext, base path, the remaining flags
DP=$(free_port)
"$BIN/h2rev-dialer" --listen "localhost:$DP" --cleartext --base-path /rev/ --dial-timeout 3000 \
  --log-level debug 2>> "$WORK/dialer-clear.log" &
DPID=$!
PIDS+=($DPID)
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$DP" || fail "cleartext dialer did not start"
"$BIN/h2rev-listener" --url "http://127.0.0.1:$DP/rev" --id=clear \
  --upstream="http://127.0.0.1:$UPSTREAM_PORT/" --log-level warn 2>> "$WORK/listener-clear.log" &
L4=$!
PIDS+=($L4)
clear_url="http://127.0.0.1:$DP/rev/proxy/clear/index.html"
wait_for curl -sf --http2-prior-knowledge "$clear_url" || fail "cleartext: no answer"
[ "$(curl -sS --http2-prior-knowledge "$clear_url")" = "hello through the tunnel" ] ||
  fail "cleartext body"
grep -q debug "$WORK/dialer-clear.log" || fail "--log-level debug logged nothing at debug"
! grep -q " info: " "$WORK/listener-clear.log" || fail "--log-level warn logged info lines"
ok "--cleartext, --base-path, --id=, --upstream=, --log-level"
stop "$DPID" "$L4"
# --insecure: a dialer certificate the listener does not know.
DP=$(free_port)
mkdir -p "$WORK/other"
"$BIN/h2rev-dialer" --listen "127.0.0.1:$DP" --self-signed-dir "$WORK/other" \
  2>> "$WORK/dialer-insecure.log" &
DPID=$!
PIDS+=($DPID)
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$DP" || fail "dialer (other certificate) did not start"
[ "$(stat -c %a "$WORK/other/h2rev-dialer.key")" = 600 ] || fail "self-signed key is not 0600"
"$BIN/h2rev-listener" --url "https://127.0.0.1:$DP" --id insecure --insecure \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>> "$WORK/listener-insecure.log" &
L5=$!
PIDS+=($L5)
wait_for curl -sfk "https://127.0.0.1:$DP/proxy/insecure/index.html" || fail "--insecure: no answer"
ok "--self-signed-dir (key 0600) and --insecure"
stop "$DPID" "$L5"

# Every tool stopped by SIGTERM (drain) exits 0, and the sanitizers (in an
# ASan build) found nothing in any of them.
set +e
for p in "${PIDS[@]}"; do
  kill -TERM "$p" 2> /dev/null || continue
  for _ in $(seq 1 250); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
  kill -9 "$p" 2> /dev/null && E2E_FAILED=1 && echo "FAIL: pid $p ignored SIGTERM" >&2
  wait "$p"
done
PIDS=()
set -e
[ "${E2E_FAILED:-0}" = 0 ] || fail "a process ignored SIGTERM"
! grep -l -E "Sanitizer|runtime error:" "$WORK"/*.log || fail "sanitizer reports (above)"
ok "no sanitizer report"
