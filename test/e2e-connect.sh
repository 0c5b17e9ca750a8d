# End to end, CONNECT: client -> HTTP/1.1 CONNECT <base>/proxy/<id> on h2rev-dialer -> tunnel
# -> h2rev-listener --upstream tcp://... -> a TCP server (an echo server, sshd); h2rev-connect
# as ssh's ProxyCommand and with --listen; what a CONNECT gets elsewhere (an http:// listener,
# an unknown id); HTTP/2 CONNECT, CONNECT id:port and WebSocket over HTTP/2. Without sshd the rest runs and the script exits 77 at the end.
source "$(dirname "$0")/e2elib.sh"
PEER="python3 $SRC/test/tcppeer.py"
CA="$WORK/h2rev-dialer.crt"
CONN=("$BIN/h2rev-connect" --ca "$CA")

# tcp_listener ID UPSTREAM_PORT: a listener splicing to 127.0.0.1:UPSTREAM_PORT
tcp_listener() {
  "$BIN/h2rev-listener" --url "$URL" --id "$1" \
    --ca "$CA" --upstream "tcp://127.0.0.1:$2" 2>>"$WORK/listener-$1.log" &
  PIDS+=($!)
}
attached() { grep -q "listener $1 attached" "$WORK/dialer.log"; }

SSHD=$(command -v sshd || echo /usr/sbin/sshd)
HAVE_SSHD=0
if [ -x "$SSHD" ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; then
  HAVE_SSHD=1
  if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then mkdir -p -m 0755 /run/sshd 2>/dev/null || HAVE_SSHD=0; fi
fi
if [ "$HAVE_SSHD" = 1 ]; then
  mkdir -m 0700 "$WORK/ssh"
  ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/id"
  cp "$WORK/ssh/id.pub" "$WORK/ssh/authorized_keys"
  SSHD_PORT=$(free_port)
  "$SSHD" -D -e -f /dev/null -h "$WORK/ssh/host_key" -p "$SSHD_PORT" -o ListenAddress=127.0.0.1 \
    -o AuthorizedKeysFile="$WORK/ssh/authorized_keys" -o StrictModes=no -o PidFile=none \
    -o UsePAM=no -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
    -o PermitRootLogin=prohibit-password 2>>"$WORK/sshd.log" &
  PIDS+=($!)
  wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $SSHD_PORT))" ||
    fail "sshd did not start"
fi

$PEER serve echo --port-file "$WORK/echo.port" --log "$WORK/echo.events" 2>>"$WORK/peer.log" &
PIDS+=($!)
wait_for test -s "$WORK/echo.port" || fail "echo server did not start"
ECHO_PORT=$(cat "$WORK/echo.port")
start_upstream
start_dialer --base-path /relay --access-log "$WORK/access.log"
URL="https://127.0.0.1:$DIALER_PORT/relay"
tcp_listener echo "$ECHO_PORT"
[ "$HAVE_SSHD" = 1 ] && tcp_listener ssh "$SSHD_PORT"
"$BIN/h2rev-listener" --url "$URL" --id web --ca "$CA" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
  2>>"$WORK/listener-web.log" &
PIDS+=($!)
for n in echo web; do wait_for attached "$n" || fail "listener $n did not attach"; done
ok "dialer, listeners echo (tcp://), web (http://)"

# ------------------------------------------------------------------ HTTP/1.1 CONNECT by hand
out=$(timeout 30 python3 "$SRC/test/rawconnect.py" 127.0.0.1 "$DIALER_PORT" "$CA" /relay/proxy/echo 1048576) ||
  fail "raw CONNECT: $out"
[ "$out" = "HTTP/1.1 200 OK" ] || fail "raw CONNECT status: $out"
ok "HTTP/1.1 CONNECT /relay/proxy/echo: 200, 1 MiB sent behind the head comes back whole"

out=$(timeout 30 python3 "$SRC/test/rawconnect.py" 127.0.0.1 "$DIALER_PORT" "$CA" /relay/proxy/nobody status)
case "$out" in "HTTP/1.1 502 "*) ;; *) fail "CONNECT to an unknown id: $out" ;; esac
out=$(timeout 30 python3 "$SRC/test/rawconnect.py" 127.0.0.1 "$DIALER_PORT" "$CA" /relay/proxy/echo/x status)
case "$out" in "HTTP/1.1 405 "*) ;; *) fail "CONNECT with a path after the id: $out" ;; esac
ok "CONNECT to an id without a listener: 502; with a path after the id: 405"

# ------------------------------------------------------------------ h2rev-connect
# 32 MiB: far more than the buffers between, so that a client that stops reading while it
# waits to write (the echo comes back as it sends) would hang here.
head -c $((32 << 20)) /dev/urandom >"$WORK/big"
got=$(timeout 120 "${CONN[@]}" "$URL" echo <"$WORK/big" | sha256sum) || fail "h2rev-connect to echo"
[ "$got" = "$(sha256sum <"$WORK/big")" ] || fail "h2rev-connect: 32 MiB echo checksum differs"
ok "h2rev-connect URL echo: 32 MiB through stdin/stdout, echoed whole after the end of stdin (half-close), checksum equal"
head -c $((4 << 20)) "$WORK/big" >"$WORK/blob"
want=$(sha256sum <"$WORK/blob")

if timeout 30 "${CONN[@]}" "$URL" nobody </dev/null 2>"$WORK/c.err"; then fail "h2rev-connect to nobody succeeded"; fi
grep -q "CONNECT refused: HTTP/1.1 502" "$WORK/c.err" || fail "h2rev-connect to nobody said: $(cat "$WORK/c.err")"
if timeout 30 "$BIN/h2rev-connect" "$URL" echo </dev/null 2>"$WORK/c.err"; then fail "h2rev-connect without the CA succeeded"; fi
grep -q "certificate" "$WORK/c.err" || fail "h2rev-connect without the CA said: $(cat "$WORK/c.err")"
out=$(echo hi | timeout 30 "$BIN/h2rev-connect" --insecure "$URL" echo) || fail "--insecure"
[ "$out" = hi ] || fail "--insecure: $out"
ok "h2rev-connect: an unknown id and an unverified dialer end with exit 1 and say why; --insecure connects"

# An http:// listener serves HTTP/1.1 on its reverse connections: the tunnel reaches that.
out=$(printf 'GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
  timeout 30 "${CONN[@]}" "$URL" web) || fail "h2rev-connect to web"
case "$out" in "HTTP/1.1 200"*"hello through the tunnel"*) ;; *) fail "tunnel to web: $out" ;; esac
out=$(printf 'SSH-2.0-OpenSSH_9.2\r\n' | timeout 30 "${CONN[@]}" "$URL" web | head -1) || true
case "$out" in "HTTP/1.1 "[45]*) ;; *) fail "non-HTTP bytes to web: $out" ;; esac
ok "CONNECT to an http:// listener: the tunnel speaks HTTP/1.1 to it (a GET works, other bytes get an HTTP error: $out)"

LPORT=$(free_port)
"${CONN[@]}" --listen "127.0.0.1:$LPORT" "$URL" echo 2>>"$WORK/connect-listen.log" &
PIDS+=($!)
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $LPORT))" || fail "--listen did not start"
timeout 60 $PEER concurrent "$LPORT" 20 200000 || fail "--listen: 20 concurrent echoes"
ok "h2rev-connect --listen: 20 concurrent connections echo 200 kB each"

# ------------------------------------------------------------------ a Go h2rev2 listener
GO=$SRC/../shared/interop
if [ -x "$GO/revcli" ]; then
  "$GO/revcli" -url "$URL/" -ca "$CA" -id gg -upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    >>"$WORK/revcli.log" 2>&1 &
  PIDS+=($!)
  wait_for attached gg || fail "the Go listener did not attach"
  # Go's HTTP server behind: ssh's greeting is no request; what matters is an end, not a hang.
  rc=0
  out=$( (printf 'SSH-2.0-OpenSSH_9.2\r\n'; sleep 1) | timeout 30 "${CONN[@]}" "$URL" gg 2>"$WORK/gg.err") || rc=$?
  [ "$rc" != 124 ] || fail "CONNECT to the Go listener hangs"
  [ "$rc" = 0 ] || grep -q "h2rev-connect: " "$WORK/gg.err" || fail "CONNECT to the Go listener: exit $rc, no message"
  ok "CONNECT to a Go h2rev2 listener: ends at once (exit $rc: ${out%%$'\r'*}$(head -1 "$WORK/gg.err"))"
else
  echo "skip: no ../shared/interop/revcli: the Go listener part did not run"
fi

# ------------------------------------------------------------------ HTTP/2
# curl (7.88: no --proxy-http2) and nghttp send no HTTP/2 CONNECT: h2rev-h2connect (test/h2connect.c)
# does, through libnghttp2.
H2C=("$BIN/h2rev-h2connect" --ca "$CA")
got=$(timeout 60 "${H2C[@]}" 127.0.0.1 "$DIALER_PORT" echo:22 <"$WORK/blob" 2>"$WORK/h2c.err" | sha256sum) ||
  fail "HTTP/2 CONNECT echo:22: $(cat "$WORK/h2c.err")"
[ "$got" = "$want" ] || fail "HTTP/2 CONNECT echo:22: 4 MiB echo checksum differs ($(cat "$WORK/h2c.err"))"
grep -q "^status 200" "$WORK/h2c.err" || fail "HTTP/2 CONNECT echo:22: $(cat "$WORK/h2c.err")"
ok "HTTP/2 CONNECT (RFC 9113 8.5) :authority echo:22: 200, 4 MiB echoed whole after END_STREAM (half-close), checksum equal"
rc=0
timeout 30 "${H2C[@]}" 127.0.0.1 "$DIALER_PORT" nobody:22 </dev/null >/dev/null 2>"$WORK/h2c.err" || rc=$?
[ "$rc" = 2 ] && grep -q "^status 502" "$WORK/h2c.err" || fail "HTTP/2 CONNECT nobody:22: exit $rc, $(cat "$WORK/h2c.err")"
rc=0
timeout 30 "${H2C[@]}" 127.0.0.1 "$DIALER_PORT" 'bad%id:22' </dev/null >/dev/null 2>"$WORK/h2c.err" || rc=$?
[ "$rc" = 2 ] && grep -q "^status 400" "$WORK/h2c.err" || fail "HTTP/2 CONNECT bad%id:22: exit $rc, $(cat "$WORK/h2c.err")"
ok "HTTP/2 CONNECT to an id without a listener: 502; to an invalid id: 400"
wait_for grep -q 'method="CONNECT" path="echo:22" proto=HTTP/2 status=200 .* result=ok listener="echo"' "$WORK/access.log" ||
  fail "access log of the HTTP/2 CONNECT: $(grep CONNECT "$WORK/access.log")"
ok "access log: method=\"CONNECT\" path=\"echo:22\" proto=HTTP/2 status=200 ... listener=\"echo\""

# The same routing in HTTP/1.1 (CONNECT host:port, authority form): curl --proxytunnel.
out=$(timeout 30 curl -sS -p --proxy "https://127.0.0.1:$DIALER_PORT" --proxy-cacert "$CA" \
  http://web:80/index.html 2>&1) || fail "curl -p through the dialer to web:80: $out"
[ "$out" = "hello through the tunnel" ] || fail "curl -p through the dialer to web:80: $out"
ok "curl --proxytunnel --proxy https://dialer http://web:80/: HTTP/1.1 CONNECT web:80 reaches listener web"

# Extended CONNECT (RFC 8441): WebSocket over HTTP/2 to the upstream's WebSocket echo, which
# refuses a handshake without a valid Sec-WebSocket-Key (an HTTP/2 client sends none).
timeout 60 python3 "$SRC/test/wsh2.py" 20 "${H2C[@]}" --protocol websocket \
  --path /relay/proxy/web/ws 127.0.0.1 "$DIALER_PORT" "127.0.0.1:$DIALER_PORT" 2>"$WORK/wsh2.err" ||
  fail "WebSocket over HTTP/2: $(cat "$WORK/wsh2.err")"
grep -q "^status 200" "$WORK/wsh2.err" || fail "WebSocket over HTTP/2: $(cat "$WORK/wsh2.err")"
ok "WebSocket over HTTP/2 (extended CONNECT :protocol websocket): 200, 20 messages up to 20 kB echoed, close handshake, clean end"
# The upstream's refusal of the upgrade reaches the client as an ordinary response.
rc=0
timeout 30 "${H2C[@]}" --protocol websocket --path /relay/proxy/web/nothing-here 127.0.0.1 "$DIALER_PORT" \
  "127.0.0.1:$DIALER_PORT" </dev/null >/dev/null 2>"$WORK/h2c.err" || rc=$?
[ "$rc" = 2 ] && grep -q "^status 404" "$WORK/h2c.err" || fail "extended CONNECT to a missing path: exit $rc, $(cat "$WORK/h2c.err")"
ok "extended CONNECT to a path the upstream does not upgrade: its 404 comes back, no tunnel"
python3 "$SRC/test/wsclient.py" "wss://127.0.0.1:$DIALER_PORT/relay/proxy/web/ws" "$CA" 5 ||
  fail "WebSocket over HTTP/1.1"
ok "WebSocket over HTTP/1.1 as before"

if command -v nghttp >/dev/null; then
  # nghttp sends :path and :scheme with a CONNECT but no :protocol, which RFC 9113 8.5
  # forbids: nghttp2 resets the stream.
  out=$(timeout 20 nghttp -v -H ':method: CONNECT' "$URL/proxy/echo" 2>&1 || true)
  echo "$out" | grep -q 'RST_STREAM.*' || fail "malformed HTTP/2 CONNECT: $out"
  echo "$out" | grep -q ':status: 200' && fail "malformed HTTP/2 CONNECT answered 200: $out"
  ok "a malformed HTTP/2 CONNECT (:path without :protocol): refused at once (stream reset)"
fi

# ------------------------------------------------------------------ ssh
if [ "$HAVE_SSHD" = 1 ]; then
  wait_for attached ssh || fail "listener ssh did not attach"
  PC="${CONN[*]} $URL ssh"
  SSHO=(-F /dev/null -i "$WORK/ssh/id" -o IdentitiesOnly=yes -o BatchMode=yes
    -o StrictHostKeyChecking=no -o UserKnownHostsFile="$WORK/ssh/known_hosts" -o LogLevel=ERROR
    -o ConnectTimeout=20 -o ProxyCommand="$PC")
  out=$(timeout 60 ssh "${SSHO[@]}" app1 'echo "hello from $(whoami)"' 2>"$WORK/ssh.err") ||
    fail "ssh through h2rev-connect: $(cat "$WORK/ssh.err")"
  [ "$out" = "hello from $(id -un)" ] || fail "ssh command output: $out"
  got=$(timeout 120 ssh "${SSHO[@]}" app1 "cat '$WORK/blob'" | sha256sum)
  [ "$got" = "$want" ] || fail "ssh cat of 4 MiB: checksum differs"
  got=$(timeout 120 ssh "${SSHO[@]}" app1 "sha256sum" <"$WORK/blob")
  [ "${got%% *}" = "${want%% *}" ] || fail "4 MiB into ssh: checksum differs"
  ok "ssh -o ProxyCommand='h2rev-connect URL ssh' runs a command, 4 MiB both ways with equal checksums"
else
  echo "skip: no sshd (Debian: openssh-server): the ssh part did not run"
  exit 77
fi
