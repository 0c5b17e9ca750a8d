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
forget() {
  local keep=() p q
  for p in "${PIDS[@]}"; do
    for q in "$@"; do [ "$p" != "$q" ] || continue 2; done
    keep+=("$p")
  done
  PIDS=("${keep[@]}")
}
stop() {
  kill "$@" 2> /dev/null || true
  for p in "$@"; do wait "$p" 2> /dev/null || true; done
  forget "$@"
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
  timeout 10 "$BIN/$t" --help | grep -q -- "--token-file" || fail "$t --help lacks --token-file"
  timeout 10 "$BIN/$t" --help | grep -q -- "H2REV_TOKEN" || fail "$t --help lacks H2REV_TOKEN"
done
ok "--token-file and H2REV_TOKEN on both tools (--token first, then --token-file, then H2REV_TOKEN); not in argv"
