# The tools as an operator runs them (issue 16): certificates that work on
# another address, secrets outside argv, reload on SIGHUP, what public
# clients see of internal errors, messages that say what is wrong, backoff.
source "$(dirname "$0")/e2elib.sh"
command -v openssl > /dev/null || { echo "skip: openssl missing"; exit 77; }
# The dialer on a loopback address of its own, as on another machine.
H=127.0.0.2
bash -c "exec 3<>/dev/tcp/$H/1" 2> /dev/null ||
  python3 -c "import socket; s=socket.socket(); s.bind(('$H',0))" 2> /dev/null ||
  { echo "skip: cannot use $H"; exit 77; }

# dialer NAME [flags]: an h2rev-dialer on $H:DP (a free port unless KEEP_PORT=1),
# pid DPID, log dialer-NAME.log, self-signed certificate in $WORK/NAME unless --cert.
dialer() {
  local name=$1
  shift
  [ "${KEEP_PORT:-0}" = 1 ] || DP=$(free_port)
  mkdir -p "$WORK/$name"
  "$BIN/h2rev-dialer" --listen "$H:$DP" --self-signed-dir "$WORK/$name" "$@" \
    2>> "$WORK/dialer-$name.log" &
  DPID=$!
  PIDS+=($DPID)
  wait_for bash -c "exec 3<>/dev/tcp/$H/$DP" || fail "dialer $name did not start"
}
# listener NAME ID CA [flags]: an h2rev-listener to https://$H:$DP, pid LPID.
listener() {
  local name=$1 id=$2 ca=$3
  shift 3
  "$BIN/h2rev-listener" --url "https://$H:$DP" --id "$id" --ca "$ca" \
    --upstream "http://127.0.0.1:$UPSTREAM_PORT" "$@" 2>> "$WORK/listener-$name.log" &
  LPID=$!
  PIDS+=($LPID)
}
tun() { echo "https://$H:$DP/proxy/$1"; }
# get CA URL [curl flags]: the body, through a client that trusts CA only
get() {
  local ca=$1 url=$2
  shift 2
  curl -sS --cacert "$ca" "$@" "$url"
}
# sans CERT: its subjectAltName, one line
sans() { openssl x509 -in "$1" -noout -ext subjectAltName | tail -n +2 | tr -d ' '; }
bad() { # bad TOOL ARGS...: exit status 2 and exactly one line on stderr
  local tool=$1
  shift
  set +e
  timeout 10 "$BIN/$tool" "$@" > "$WORK/out" 2> "$WORK/err"
  local rc=$?
  set -e
  [ "$rc" = 2 ] || fail "$tool $*: exit $rc, want 2 ($(cat "$WORK/err"))"
  [ "$(wc -l < "$WORK/err")" = 1 ] || fail "$tool $*: stderr is not one line: $(cat "$WORK/err")"
}
cd "$WORK"
start_upstream

# ---------------------- 1. the self-signed certificate names this machine
# The README's two machines on loopback: the dialer on $H with the default
# certificate, the listener told only --ca and the URL.
dialer ss
crt=$WORK/ss/h2rev-dialer.crt
listener ss app1 "$crt"
wait_for get "$crt" "$(tun app1)/index.html" -f ||
  fail "listener to https://$H:$DP with --ca: not attached ($(tail -n 3 "$WORK/listener-ss.log"))"
grep -q "attached as app1" "$WORK/listener-ss.log" || fail "listener did not log its attachment"
! grep -q "verify failed" "$WORK/listener-ss.log" || fail "certificate refused by the listener"
host=$(hostname)
s=$(sans "$crt")
for n in "IPAddress:$H" "DNS:localhost" "IPAddress:127.0.0.1"; do
  [[ ",$s," == *",$n,"* ]] || fail "self-signed certificate lacks $n: $s"
done
if [[ $host =~ ^[A-Za-z0-9.-]+$ ]]; then
  [[ ",$s," == *",DNS:$host,"* ]] || fail "self-signed certificate lacks the host name $host: $s"
  # A client that reaches the dialer by the host name verifies it too.
  get "$crt" "https://$host:$DP/healthz" --resolve "$host:$DP:$H" -f > /dev/null ||
    fail "https://$host:$DP/ does not verify"
fi
ok "self-signed certificate names $H and the host name: a listener on https://$H attaches with --ca"
stop "$DPID" "$LPID"

# Restarted with more names: the old certificate does not name them, a new one is made.
KEEP_PORT=1 dialer ss --self-signed-names relay.test,192.0.2.7,'*.apps.test'
grep -q "replaced: the one there did not name relay.test" "$WORK/dialer-ss.log" ||
  fail "certificate without relay.test reused ($(tail -n 2 "$WORK/dialer-ss.log"))"
s=$(sans "$crt")
for n in DNS:relay.test IPAddress:192.0.2.7 'DNS:*.apps.test' "IPAddress:$H"; do
  [[ ",$s," == *",$n,"* ]] || fail "--self-signed-names: certificate lacks $n: $s"
done
for n in relay.test x.apps.test; do
  [ "$(get "$crt" "https://$n:$DP/healthz" --resolve "$n:$DP:$H")" = ok ] ||
    fail "https://$n:$DP/healthz does not verify"
done
stop "$DPID"
# The same names again (in the defaults now or not): reused, not replaced.
KEEP_PORT=1 dialer ss --self-signed-names relay.test
[ "$(grep -c "reused from" "$WORK/dialer-ss.log")" = 1 ] || fail "certificate naming everything not reused"
stop "$DPID"
bad h2rev-dialer --self-signed-names 'bad_name!' --self-signed-dir "$WORK"
grep -q 'bad_name!' "$WORK/err" || fail "bad name not quoted: $(cat "$WORK/err")"
ok "--self-signed-names adds DNS names (wildcards too) and IP addresses; a certificate lacking one is replaced"

# ----------------------------------------------- 8. secrets outside argv
unset H2REV_TOKEN
secret=tok-$RANDOM$RANDOM-s3cret
printf '%s\n' "$secret" > "$WORK/token"
chmod 600 "$WORK/token"
printf '  %s \r\n# not the token\n' "$secret" > "$WORK/token-crlf"
dialer tok --token-file "$WORK/token"
crt=$WORK/tok/h2rev-dialer.crt
listener tfile tfile "$crt" --token-file "$WORK/token"
L1=$LPID
H2REV_TOKEN=$secret listener tenv tenv "$crt"
L2=$LPID
listener tcrlf tcrlf "$crt" --token-file "$WORK/token-crlf"
L3=$LPID
# The flag wins over the environment.
H2REV_TOKEN=wrong listener tflag tflag "$crt" --token "$secret"
L4=$LPID
H2REV_TOKEN=wrong listener twrong twrong "$crt"
L5=$LPID
for id in tfile tenv tcrlf tflag; do
  wait_for get "$crt" "$(tun $id)/index.html" -f || fail "token from a file or H2REV_TOKEN: $id not attached"
done
wait_for grep -q 'refused (403) for id "twrong"' "$WORK/dialer-tok.log" ||
  fail "a wrong H2REV_TOKEN was not refused"
for p in "$DPID" "$L1" "$L2" "$L3"; do
  ! tr '\0' ' ' < "/proc/$p/cmdline" | grep -q -- "$secret" || fail "the token is in pid $p's argv"
done
grep -q "token of --token-file" "$WORK/dialer-tok.log" || fail "dialer did not say where its token is from"
! grep -q -- "$secret" "$WORK"/*.log || fail "a token was logged"
stop "$DPID" "$L1" "$L2" "$L3" "$L4" "$L5"
H2REV_TOKEN=$secret dialer tokenv
crt=$WORK/tokenv/h2rev-dialer.crt
listener tenv2 tenv2 "$crt" --token-file "$WORK/token"
L1=$LPID
listener tnone tnone "$crt"
L2=$LPID
wait_for get "$crt" "$(tun tenv2)/index.html" -f || fail "dialer with H2REV_TOKEN: tenv2 not attached"
wait_for grep -q 'refused (403) for id "tnone"' "$WORK/dialer-tokenv.log" ||
  fail "dialer with H2REV_TOKEN let a listener without a token attach"
stop "$DPID" "$L1" "$L2"
: > "$WORK/empty"
for t in h2rev-dialer h2rev-listener; do
  args=(--self-signed-dir "$WORK")
  [ $t = h2rev-dialer ] || args=(--url "https://$H:1" --upstream http://127.0.0.1:1 --id x)
  bad $t "${args[@]}" --token-file /nonexistent/token
  grep -q "/nonexistent/token" "$WORK/err" || fail "$t: unreadable token file not named"
  bad $t "${args[@]}" --token-file "$WORK/empty"
  bad $t "${args[@]}" --token x --token-file "$WORK/token"
  H2REV_TOKEN='two words' bad $t "${args[@]}"
  grep -q "H2REV_TOKEN" "$WORK/err" || fail "$t: a bad H2REV_TOKEN not named: $(cat "$WORK/err")"
  timeout 10 "$BIN/$t" --help | grep -- "--token-file" > /dev/null || fail "$t --help lacks --token-file"
  timeout 10 "$BIN/$t" --help | grep -- "H2REV_TOKEN" > /dev/null || fail "$t --help lacks H2REV_TOKEN"
done
ok "--token-file and H2REV_TOKEN on both tools (--token first, then --token-file, then H2REV_TOKEN); not in argv"

# ------------------------------------------------- 9. SIGHUP on the dialer
# Two CAs, each with a server certificate for $H.
(
  cd "$WORK"
  echo "subjectAltName=IP:$H" > san.ext
  for n in 1 2; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=reload CA $n" -keyout ca$n.key -out ca$n.pem
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=relay $n" \
      -keyout srv$n.key -out srv$n.csr
    openssl x509 -req -in srv$n.csr -CA ca$n.pem -CAkey ca$n.key -CAcreateserial -days 2 \
      -extfile san.ext -out srv$n.crt
  done
) > "$WORK/openssl.log" 2>&1 || fail "openssl: $(cat "$WORK/openssl.log")"
mkdir -p "$WORK/live"
cp "$WORK/srv1.crt" "$WORK/live/cert.pem"
cp "$WORK/srv1.key" "$WORK/live/key.pem"
printf 'alpha tokA\n' > "$WORK/live/ids.tokens"
echo shared1 > "$WORK/live/token"
dialer rl --cert "$WORK/live/cert.pem" --key "$WORK/live/key.pem" \
  --tokens-file "$WORK/live/ids.tokens" --token-file "$WORK/live/token"
listener alpha alpha "$WORK/ca1.pem" --token tokA
A_LPID=$LPID
wait_for get "$WORK/ca1.pem" "$(tun alpha)/index.html" -f || fail "reload: alpha not attached"
# A download on a connection opened before the reload.
N=8000000
python3 -c 'import sys; b=bytes(range(256))*256; n='$N'; o=sys.stdout.buffer
while n>0: k=min(n,len(b)); o.write(b[:k]); n-=k' > "$WORK/want.bin"
curl -sS -f --cacert "$WORK/ca1.pem" --limit-rate 2M "$(tun alpha)/bytes/$N" \
  -o "$WORK/got.bin" 2> "$WORK/curl-reload.log" &
C=$!
sleep 1
cp "$WORK/srv2.crt" "$WORK/live/cert.pem"
cp "$WORK/srv2.key" "$WORK/live/key.pem"
printf 'alpha tokA\nbeta tokB\n' > "$WORK/live/ids.tokens"
echo shared2 > "$WORK/live/token"
kill -HUP "$DPID"
wait_for grep -q "reload: certificate" "$WORK/dialer-rl.log" || fail "no reload logged"
grep -q "reload: 2 tokens" "$WORK/dialer-rl.log" || fail "tokens file not reloaded"
kill -0 "$DPID" || fail "SIGHUP ended the dialer"
[ "$(get "$WORK/ca2.pem" "https://$H:$DP/healthz")" = ok ] ||
  fail "a new handshake after SIGHUP: not the new certificate"
! get "$WORK/ca1.pem" "https://$H:$DP/healthz" 2> /dev/null || fail "the old certificate still served"
openssl s_client -connect "$H:$DP" < /dev/null 2> /dev/null | openssl x509 -noout -subject |
  grep -q "relay 2" || fail "s_client does not see the new certificate"
set +e
wait "$C"
crc=$?
set -e
[ "$crc" = 0 ] || fail "a download open across SIGHUP was cut (curl $crc: $(cat "$WORK/curl-reload.log"))"
cmp -s "$WORK/want.bin" "$WORK/got.bin" || fail "a download open across SIGHUP differs"
# The listener's connection predates the reload (it trusts CA 1 only): still attached.
[ "$(get "$WORK/ca2.pem" "$(tun alpha)/index.html")" = "hello through the tunnel" ] ||
  fail "alpha lost by the reload"
[ "$(grep -c "attached as alpha" "$WORK/listener-alpha.log")" = 1 ] || fail "alpha reattached"
listener beta beta "$WORK/ca2.pem" --token tokB
B_LPID=$LPID
wait_for get "$WORK/ca2.pem" "$(tun beta)/index.html" -f || fail "a token added by the reload is refused"
listener gamma gamma "$WORK/ca2.pem" --token shared2
C_LPID=$LPID
listener delta delta "$WORK/ca2.pem" --token shared1
D_LPID=$LPID
wait_for get "$WORK/ca2.pem" "$(tun gamma)/index.html" -f || fail "the reloaded --token-file is refused"
wait_for grep -q 'refused (403) for id "delta"' "$WORK/dialer-rl.log" ||
  fail "the token replaced by the reload still accepted"
stop "$C_LPID" "$D_LPID"
ok "SIGHUP: new certificate for new handshakes, a download and the attached listener go on, new tokens (file and tokens file)"

# Bad files: each keeps what it would replace, and the log says why.
echo "not a certificate" > "$WORK/live/cert.pem"
printf 'alpha tokA\nbeta\n' > "$WORK/live/ids.tokens"
kill -HUP "$DPID"
wait_for grep -q "certificate in use is kept" "$WORK/dialer-rl.log" ||
  fail "a bad certificate: no reason logged"
grep "certificate in use is kept" "$WORK/dialer-rl.log" | grep -q "live/cert.pem" ||
  fail "the reason does not name the file: $(grep kept "$WORK/dialer-rl.log")"
grep -q "ids.tokens:2.*the 2 tokens in use are kept" "$WORK/dialer-rl.log" ||
  fail "a bad tokens file: no reason logged ($(tail -n 3 "$WORK/dialer-rl.log"))"
[ "$(get "$WORK/ca2.pem" "https://$H:$DP/healthz")" = ok ] ||
  fail "a bad certificate file replaced the good one"
stop "$B_LPID"
listener beta2 beta "$WORK/ca2.pem" --token tokB
B_LPID=$LPID
wait_for get "$WORK/ca2.pem" "$(tun beta)/index.html" -f || fail "a bad tokens file dropped the tokens"
kill -HUP "$A_LPID"
sleep 0.5
kill -0 "$A_LPID" || fail "SIGHUP ended the listener"
grep -q "reload: CA $WORK/ca1.pem: for the next connection" "$WORK/listener-alpha.log" ||
  fail "the listener did not log its reload"
set +e
kill -TERM "$DPID"
wait "$DPID"
drc=$?
set -e
forget "$DPID"
[ "$drc" = 0 ] || fail "dialer exit $drc after reloads"
ok "SIGHUP with bad files: the certificate and tokens in use are kept, the reason logged"
stop "$A_LPID" "$B_LPID"

# ------------------------------- 7. error bodies carry no internal detail
dialer pub --response-timeout 1500
crt=$WORK/pub/h2rev-dialer.crt
listener pub pub "$crt"
P1=$LPID
# An https upstream the listener does not trust: the dialer itself.
"$BIN/h2rev-listener" --url "https://$H:$DP" --id untrusted --ca "$crt" \
  --upstream "https://$H:$DP" 2>> "$WORK/listener-untrusted.log" &
P2=$!
PIDS+=($P2)
wait_for get "$crt" "$(tun pub)/index.html" -f || fail "pub not attached"
wait_for grep -q "attached as untrusted" "$WORK/listener-untrusted.log" || fail "untrusted not attached"
# check URL STATUS BODY: what a public client gets
check() {
  local out code
  out=$(get "$crt" "$1" -w '\n%{http_code}' 2>&1 || true)
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  out=${out%$'\n'}
  [ "$code" = "$2" ] || fail "$1: status $code, want $2 ($out)"
  [ "$out" = "$3" ] || fail "$1: body \"$out\", want \"$3\""
}
check "$(tun untrusted)/index.html" 502 "upstream unavailable"
grep -q "certificate verify failed" "$WORK/listener-untrusted.log" ||
  fail "the listener's log lacks the upstream's certificate error"
check "$(tun nobody)/index.html" 502 "listener unavailable"
grep -q "proxy nobody: 502 listener nobody: no listener attached" "$WORK/dialer-pub.log" ||
  fail "the dialer's log lacks the reason of the 502"
check "$(tun pub)/sleep/4000" 504 "listener did not answer in time"
stop "$DPID" "$P1" "$P2"
ok "502/504 bodies: a generic reason (listener or upstream unavailable, no answer in time); details in the logs"

# ----------------------------------------- 12. messages that say what to do
"$BIN/h2rev-dialer" --listen "$H:0" --cleartext --base-path /reverse/ 2>> "$WORK/dialer-zero.log" &
DPID=$!
PIDS+=($DPID)
wait_for grep -q "serving" "$WORK/dialer-zero.log" || fail "dialer on port 0 did not start"
line=$(grep serving "$WORK/dialer-zero.log")
[[ $line =~ on\ $H:([0-9]+): ]] || fail "--listen $H:0: no address in \"$line\""
DP=${BASH_REMATCH[1]}
[ "$DP" != 0 ] || fail "--listen $H:0 logged port 0"
[[ $line == *" /reverse/revdial?id=ID and /reverse/proxy/ID/PATH"* ]] ||
  fail "--base-path /reverse/ logged as: $line"
"$BIN/h2rev-listener" --url "http://$H:$DP/reverse/" --id zero \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>> "$WORK/listener-zero.log" &
LPID=$!
PIDS+=($LPID)
wait_for curl -sf --http2-prior-knowledge "http://$H:$DP/reverse/proxy/zero/index.html" ||
  fail "the logged port and base path do not work"
stop "$DPID" "$LPID"
bad h2rev-dialer --listen "$H:0" --self-signed-dir /nonexistent
grep -q "/nonexistent: No such file or directory" "$WORK/err" || fail "--self-signed-dir: $(cat "$WORK/err")"
mkdir -p "$WORK/ro"
chmod 500 "$WORK/ro"
if [ ! -w "$WORK/ro" ]; then # root writes anywhere
  bad h2rev-dialer --listen "$H:0" --self-signed-dir "$WORK/ro"
  grep -q "Permission denied" "$WORK/err" || fail "--self-signed-dir read-only: $(cat "$WORK/err")"
fi
L=(--upstream http://127.0.0.1:1)
bad h2rev-listener "${L[@]}" --id x --url ftp://relay
grep -q -- '--url: "ftp://relay" .*https://HOST\[:PORT\]' "$WORK/err" || fail "bad --url: $(cat "$WORK/err")"
bad h2rev-listener "${L[@]}" --id x --url https://
grep -q -- '--url' "$WORK/err" || fail "bad --url: $(cat "$WORK/err")"
bad h2rev-listener "${L[@]}" --url https://relay --id 'a/b'
grep -q -- '--id: "a/b" is not a valid id: expected' "$WORK/err" || fail "bad --id: $(cat "$WORK/err")"
bad h2rev-listener --url https://relay --id x --upstream http://
grep -q -- '--upstream: "http://" .*http://HOST' "$WORK/err" || fail "bad --upstream: $(cat "$WORK/err")"
ok "--listen :0 logs the bound port, --base-path /reverse/ no double slash, reasons for bad flags"

# bin/demo.sh: refuses a port in use instead of proxying what is there.
busy=$(free_port)
python3 -m http.server "$busy" --bind 127.0.0.1 > /dev/null 2>&1 &
B=$!
PIDS+=($B)
wait_for curl -sf "http://127.0.0.1:$busy/" || fail "busy server"
set +e
H2REV_BIN=$BIN H2REV_DEMO_PORT=$(free_port) H2REV_DEMO_UPSTREAM_PORT=$busy \
  timeout 30 bash "$SRC/bin/demo.sh" --check > "$WORK/demo.out" 2> "$WORK/demo.err"
rc=$?
set -e
[ "$rc" = 1 ] || fail "demo.sh with its upstream port in use: exit $rc ($(cat "$WORK/demo.out"))"
grep -q "already listens on 127.0.0.1:$busy" "$WORK/demo.err" || fail "demo.sh: $(cat "$WORK/demo.err")"
set +e
H2REV_BIN=$BIN H2REV_DEMO_PORT=$busy H2REV_DEMO_UPSTREAM_PORT=$(free_port) \
  timeout 30 bash "$SRC/bin/demo.sh" --check > "$WORK/demo.out" 2> "$WORK/demo.err"
rc=$?
set -e
[ "$rc" = 1 ] || fail "demo.sh with its port in use: exit $rc"
H2REV_BIN=$BIN H2REV_DEMO_PORT=$(free_port) H2REV_DEMO_UPSTREAM_PORT=$(free_port) \
  timeout 30 bash "$SRC/bin/demo.sh" --check > "$WORK/demo.out" 2> "$WORK/demo.err" ||
  fail "demo.sh --check on free ports: $(cat "$WORK/demo.err")"
grep -q "tunnel is up: Hello from behind the NAT" "$WORK/demo.out" || fail "demo.sh: $(cat "$WORK/demo.out")"
stop "$B"
ok "demo.sh refuses ports in use and works on free ones"

# ------------------------------------- 10. --max-backoff after an outage
dialer bo
crt=$WORK/bo/h2rev-dialer.crt
# At debug level: each attempt logs its delay (a repeated failure is logged once at info).
listener bo bo "$crt" --max-backoff 1000 --log-level debug
B_LPID=$LPID
wait_for get "$crt" "$(tun bo)/index.html" -f || fail "bo not attached"
stop "$DPID"
sleep 6 # about 7 attempts; without the flag the delays would reach 8 s
KEEP_PORT=1 dialer bo
t0=$(date +%s%3N)
wait_for get "$crt" "$(tun bo)/index.html" -f || fail "bo did not come back"
t1=$(date +%s%3N)
delays=$(grep -o "retrying in [0-9.]* s" "$WORK/listener-bo.log" | awk '{print $3}')
[ "$(echo "$delays" | wc -l)" -ge 4 ] || fail "--max-backoff: few retries: $delays"
echo "$delays" | awk '$1 > 1.0 {exit 1}' || fail "--max-backoff 1000: delays $(echo $delays)"
[ $((t1 - t0)) -lt 5000 ] || fail "--max-backoff 1000: back $((t1 - t0)) ms after the dialer"
stop "$DPID" "$B_LPID"
bad h2rev-listener --url https://relay --id x --upstream http://127.0.0.1:1 --max-backoff 0
bad h2rev-listener --url https://relay --id x --upstream http://127.0.0.1:1 \
  --min-backoff 2000 --max-backoff 1000
ok "--max-backoff 1000: retries at most 1 s apart, back $((t1 - t0)) ms after the dialer"

# --------------------- 2. mTLS for listeners, none for the public clients
(
  cd "$WORK"
  for n in m other; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=$n CA" -keyout $n-ca.key -out $n-ca.pem
  done
  for c in good:m stranger:other; do
    id=${c%%:*} ca=${c##*:}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$id" \
      -keyout $id.key -out $id.csr
    openssl x509 -req -in $id.csr -CA $ca-ca.pem -CAkey $ca-ca.key -CAcreateserial -days 2 \
      -out $id.crt
  done
) > "$WORK/openssl.log" 2>&1 || fail "openssl: $(cat "$WORK/openssl.log")"
dialer mtls --client-ca "$WORK/m-ca.pem"
crt=$WORK/mtls/h2rev-dialer.crt
listener mgood good "$crt" --cert "$WORK/good.crt" --key "$WORK/good.key"
G=$LPID
listener mnone nocert "$crt"
N=$LPID
listener mstranger stranger "$crt" --cert "$WORK/stranger.crt" --key "$WORK/stranger.key"
S=$LPID
# Public clients present no certificate.
wait_for get "$crt" "$(tun good)/index.html" -f || fail "mTLS: a client without a certificate is refused"
[ "$(get "$crt" "$(tun good)/index.html" --http1.1)" = "hello through the tunnel" ] ||
  fail "mTLS: an HTTP/1.1 client without a certificate"
[ "$(get "$crt" "https://$H:$DP/healthz")" = ok ] || fail "mTLS: /healthz needs a certificate"
wait_for grep -q 'refused (403) for id "nocert": no client certificate' "$WORK/dialer-mtls.log" ||
  fail "mTLS: a listener without a certificate was not refused"
! grep -q "attached as nocert" "$WORK/listener-mnone.log" || fail "mTLS: attached without a certificate"
wait_for grep -q "refused" "$WORK/listener-mnone.log" || fail "mTLS: the listener did not log its refusal"
# A certificate from another CA fails the handshake, for a listener and a client alike.
wait_for grep -q "refused the client certificate (.*): give one its --client-ca signs" \
  "$WORK/listener-mstranger.log" || fail "mTLS: the stranger's failure not logged"
! grep -q "attached as stranger" "$WORK/listener-mstranger.log" || fail "mTLS: a stranger's certificate attached"
! get "$crt" "https://$H:$DP/healthz" --cert "$WORK/stranger.crt" --key "$WORK/stranger.key" \
  2> /dev/null || fail "mTLS: a client certificate from another CA accepted"
[ "$(get "$crt" "$(tun nocert)/index.html" -o /dev/null -w '%{http_code}')" = 502 ] ||
  fail "mTLS: /proxy/nocert is not 502"
stop "$DPID" "$G" "$N" "$S"
ok "--client-ca: listeners need a certificate (403 without, handshake failure with another CA's); /proxy/ and /healthz need none"
