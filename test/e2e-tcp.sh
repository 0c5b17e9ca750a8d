# End to end, raw TCP: client -> h2rev-dialer --tcp PORT=ID -> tunnel -> h2rev-listener
# --upstream tcp://... -> a TCP server: sshd (ssh and scp), and the servers of tcppeer.py.
# Without sshd (Debian: openssh-server) the rest runs and the script exits 77 at the end.
source "$(dirname "$0")/e2elib.sh"
PEER="python3 $SRC/test/tcppeer.py"
# The memory checks below measure RSS: ASan's quarantine of freed memory (256 MiB by default)
# would hide what the splices hold.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=8"

# serve NAME MODE: a tcppeer.py server; its port in ${NAME}_PORT
serve() {
  $PEER serve "$2" --port-file "$WORK/$1.port" --log "$WORK/$1.events" 2>>"$WORK/peer-$1.log" &
  PIDS+=($!)
  wait_for test -s "$WORK/$1.port" || fail "$1 server did not start"
  printf -v "${1}_PORT" %s "$(cat "$WORK/$1.port")"
}
# tcp_listener ID UPSTREAM_PORT [flags]: a listener splicing to 127.0.0.1:UPSTREAM_PORT
tcp_listener() {
  local id=$1 port=$2
  shift 2
  "$BIN/h2rev-listener" --url "https://127.0.0.1:$DIALER_PORT" --id "$id" \
    --ca "$WORK/h2rev-dialer.crt" --upstream "tcp://127.0.0.1:$port" "$@" \
    2>>"$WORK/listener-$id.log" &
  PIDS+=($!)
  printf -v "PID_$id" %s $!
}
attached() { grep -q "listener $1 attached" "$WORK/dialer.log"; }
kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ------------------------------------------------------------------ setup
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
HAVE_SSHD=0
if [ -x "$SSHD" ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; then
  HAVE_SSHD=1
  # As root, sshd wants its privilege separation directory (the package's service makes it).
  if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then mkdir -p -m 0755 /run/sshd 2>/dev/null || HAVE_SSHD=0; fi
fi
if [ "$HAVE_SSHD" = 1 ]; then
  mkdir -m 0700 "$WORK/ssh"
  ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/id"
  cp "$WORK/ssh/id.pub" "$WORK/ssh/authorized_keys"
  SSHD_PORT=$(free_port)
  # No system configuration: every setting it needs is here.
  "$SSHD" -D -e -f /dev/null -h "$WORK/ssh/host_key" -p "$SSHD_PORT" -o ListenAddress=127.0.0.1 \
    -o AuthorizedKeysFile="$WORK/ssh/authorized_keys" -o StrictModes=no -o PidFile=none \
    -o UsePAM=no -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
    -o PermitRootLogin=prohibit-password -o Subsystem="sftp internal-sftp" \
    2>>"$WORK/sshd.log" &
  PIDS+=($!)
  wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $SSHD_PORT))" ||
    fail "sshd did not start"
fi

serve echo echo
serve answer answer
serve reset reset
serve fire firehose
serve stall stall
DEAD_PORT=$(free_port) # nothing listens there

for n in ssh echo answer reset dead fire stall none; do printf -v "T_$n" %s "$(free_port)"; done
start_dialer --tcp-max-conns 600 \
  --tcp "127.0.0.1:$T_ssh=ssh" --tcp "127.0.0.1:$T_echo=echo" --tcp "127.0.0.1:$T_answer=answer" \
  --tcp "127.0.0.1:$T_reset=reset" --tcp "127.0.0.1:$T_dead=dead" --tcp "127.0.0.1:$T_fire=fire" \
  --tcp "127.0.0.1:$T_stall=stall" --tcp "127.0.0.1:$T_none=nobody"

[ "$HAVE_SSHD" = 1 ] && tcp_listener ssh "$SSHD_PORT"
tcp_listener echo "$echo_PORT"
tcp_listener answer "$answer_PORT"
tcp_listener reset "$reset_PORT"
tcp_listener dead "$DEAD_PORT"
tcp_listener fire "$fire_PORT"
tcp_listener stall "$stall_PORT"
for n in echo answer reset dead fire stall; do wait_for attached "$n" || fail "listener $n did not attach"; done
ok "dialer with 8 --tcp ports, 6 listeners with --upstream tcp://"

# ------------------------------------------------------------------ ssh
if [ "$HAVE_SSHD" = 1 ]; then
  wait_for attached ssh || fail "listener ssh did not attach"
  SSHO=(-F /dev/null -i "$WORK/ssh/id" -o IdentitiesOnly=yes -o BatchMode=yes
    -o StrictHostKeyChecking=no -o UserKnownHostsFile="$WORK/ssh/known_hosts" -o LogLevel=ERROR
    -o ConnectTimeout=20)
  out=$(timeout 60 ssh "${SSHO[@]}" -p "$T_ssh" 127.0.0.1 'echo "hello from $(whoami)"' 2>"$WORK/ssh.err") ||
    fail "ssh through --tcp: $(cat "$WORK/ssh.err")"
  [ "$out" = "hello from $(id -un)" ] || fail "ssh command output: $out"
  ok "ssh through --tcp runs a command"

  head -c $((64 << 20)) /dev/urandom >"$WORK/ssh/big.bin"
  timeout 120 scp "${SSHO[@]}" -P "$T_ssh" "$WORK/ssh/big.bin" "127.0.0.1:$WORK/ssh/up.bin" 2>"$WORK/scp.err" ||
    fail "scp upload: $(cat "$WORK/scp.err")"
  timeout 120 scp "${SSHO[@]}" -P "$T_ssh" "127.0.0.1:$WORK/ssh/big.bin" "$WORK/ssh/down.bin" 2>"$WORK/scp.err" ||
    fail "scp download: $(cat "$WORK/scp.err")"
  want=$(sha256sum <"$WORK/ssh/big.bin")
  [ "$(sha256sum <"$WORK/ssh/up.bin")" = "$want" ] || fail "scp upload: checksum differs"
  [ "$(sha256sum <"$WORK/ssh/down.bin")" = "$want" ] || fail "scp download: checksum differs"
  got=$(timeout 120 ssh "${SSHO[@]}" -p "$T_ssh" 127.0.0.1 "cat '$WORK/ssh/big.bin'" | sha256sum)
  [ "$got" = "$want" ] || fail "ssh cat of 64 MiB: checksum differs"
  ok "64 MiB through ssh both ways (scp up, scp down, ssh cat), checksums equal"
else
  echo "skip: no sshd (Debian: openssh-server): the ssh part does not run"
fi

# ------------------------------------------------------------------ half-close, aborts
timeout 60 $PEER halfclose "$T_answer" || fail "half-close"
ok "a client that shuts down its write side receives the whole answer (4 MiB after 2 MiB)"

timeout 30 $PEER expect-closed "$T_dead" || fail "refusing upstream"
wait_for grep -q "cannot connect: connection refused: reverse connection reset" "$WORK/listener-dead.log" ||
  fail "the listener did not log the refused upstream"
# A refusing upstream is tried again with a doubling delay (250 ms to 5 s, a few spares a
# round), not once per round trip to the dialer (hundreds a second on loopback).
sleep 3
n=$(grep -c "cannot connect" "$WORK/listener-dead.log" || true)
[ "$n" -le 100 ] || fail "$n refused connects logged in about 3 s (no backoff)"
ok "an upstream that refuses: the client's connection ends at once, logged ($n attempts in ~3 s)"

timeout 30 $PEER expect-reset "$T_reset" || fail "upstream reset mid-transfer"
ok "an upstream that resets mid-transfer: the client sees a reset, not a clean end"

timeout 30 $PEER expect-closed "$T_none" || fail "no listener"
wait_for grep -q "no listener attached as nobody" "$WORK/dialer.log" || fail "no log line for the missing listener"
ok "an id without a listener: the connection is closed, logged"

before=$(grep -c . "$WORK/echo.events" 2>/dev/null || true)
timeout 30 $PEER vanish "$T_echo" || fail "vanishing client"
wait_for test "$(grep -c error "$WORK/echo.events" 2>/dev/null || echo 0)" -ge 1 ||
  fail "the upstream connection outlived a vanished client ($(cat "$WORK/echo.events" 2>/dev/null))"
ok "a client that vanishes (RST): the upstream's connection is reset too"

# ------------------------------------------------------------------ load
timeout 180 $PEER concurrent "$T_echo" 250 $((256 << 10)) || fail "250 concurrent connections"
ok "250 concurrent TCP connections through one listener, 256 KiB echoed on each"

# ------------------------------------------------------------------ memory
# A reader of 1 KiB/s on a firehose, and a writer into an upstream that reads nothing: the
# splices pause the other side (HTTP/2 window, TCP buffers) instead of buffering.
bound() { # bound NAME SECONDS PID... : the max RSS sum (KiB) of PIDs while the client runs
  local name=$1 secs=$2 c max=0 s p
  shift 2
  sleep 1
  for _ in $(seq 1 "$secs"); do
    s=0
    for p in "$@"; do s=$((s + $(kib "$p"))); done
    [ "$s" -gt "$max" ] && max=$s
    sleep 1
  done
  echo "$max"
}
# Under ASan the freed chunks sit in its quarantine (set small for this script, above) and its
# shadow memory grows with them: a wider bound, still far below what a splice buffering at
# loopback speed would reach (gigabytes in these seconds).
LIMIT=16384
grep -q __asan_init "$BIN/h2rev-dialer" && LIMIT=65536
b=$(($(kib "$DIALER_PID") + $(kib "$PID_fire")))
timeout 60 $PEER slow-read "$T_fire" 10 &
c=$!
m=$(bound slow 8 "$DIALER_PID" "$PID_fire")
wait "$c" || fail "slow reader: the stream ended early"
[ "$m" -le $((b + LIMIT)) ] || fail "slow reader: dialer + listener RSS $b -> $m KiB"
ok "slow reader of a firehose: dialer + listener RSS $b -> max $m KiB"

b=$(($(kib "$DIALER_PID") + $(kib "$PID_stall")))
timeout 60 $PEER fast-write "$T_stall" 10 &
c=$!
m=$(bound fast 8 "$DIALER_PID" "$PID_stall")
wait "$c" || fail "fast writer"
[ "$m" -le $((b + LIMIT)) ] || fail "upstream that does not read: dialer + listener RSS $b -> $m KiB"
ok "upstream that reads nothing: dialer + listener RSS $b -> max $m KiB"

# ------------------------------------------------------------------ limit
L_PORT=$(free_port)
L_DIALER=$(free_port)
mkdir "$WORK/lim"
"$BIN/h2rev-dialer" --listen "127.0.0.1:$L_DIALER" --self-signed-dir "$WORK/lim" --tcp-max-conns 3 \
  --tcp "127.0.0.1:$L_PORT=lim" 2>>"$WORK/dialer-lim.log" &
PIDS+=($!)
wait_for curl -sf --cacert "$WORK/lim/h2rev-dialer.crt" "https://127.0.0.1:$L_DIALER/healthz" ||
  fail "second dialer did not start"
"$BIN/h2rev-listener" --url "https://127.0.0.1:$L_DIALER" --id lim --ca "$WORK/lim/h2rev-dialer.crt" \
  --upstream "tcp://127.0.0.1:$stall_PORT" 2>>"$WORK/listener-lim.log" &
PIDS+=($!)
wait_for grep -q "listener lim attached" "$WORK/dialer-lim.log" || fail "listener lim did not attach"
timeout 30 python3 - "$L_PORT" <<'EOF' || fail "--tcp-max-conns"
import socket, sys, time
port = int(sys.argv[1])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
for s in held:
    s.sendall(b"x")
time.sleep(1)
extra = socket.create_connection(("127.0.0.1", port), timeout=10)
try:
    if extra.recv(1) != b"":
        sys.exit("the 4th connection got bytes")
except ConnectionResetError:
    pass
for s in held:  # still open: not closed by the limit
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            sys.exit("a held connection was closed")
    except BlockingIOError:
        pass
EOF
grep -q "3 connections open (--tcp-max-conns): new one closed" "$WORK/dialer-lim.log" ||
  fail "no log line for the limit"
ok "--tcp-max-conns 3: the 4th connection is closed at once, logged; the 3 others stay"

# ------------------------------------------------------------------ drain
stop "$DIALER_PID"
grep -q ' stopped' "$WORK/dialer.log" || fail "dialer did not stop cleanly"
ok "dialer drains and stops with the --tcp ports"

[ "$HAVE_SSHD" = 1 ] || exit 77
