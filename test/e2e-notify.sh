# systemd's readiness protocol (Type=notify), with a python3 datagram socket standing in for
# systemd: each tool sends READY=1 once it serves (dialer) or has started (listener),
# RELOADING=1 (with MONOTONIC_USEC) then READY=1 around SIGHUP, STOPPING=1 when it drains,
# each from its main process (NotifyAccess=main); a path and an abstract (@) socket.
source "$(dirname "$0")/e2elib.sh"
# Checks for wait_for, which runs its command again each time (a $(...) in its
# arguments would be evaluated once, before the first try).
lines_ge() { [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ]; }
code_is() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = "$2" ]; }
command -v curl > /dev/null || { echo "skip: curl not found"; exit 77; }

# notify_socket NAME PATH: a stand-in for systemd at PATH, messages in $WORK/NAME.msgs
notify_socket() {
  python3 "$SRC/test/notifysock.py" "$2" "$WORK/$1.msgs" 2> "$WORK/$1-sock.log" &
  PIDS+=($!)
  wait_for test -e "$WORK/$1.msgs.ready" || fail "notify socket $2 did not start"
  touch "$WORK/$1.msgs"
}
# msgs NAME: the messages so far, one a line, without the sender's pid
msgs() { cut -d' ' -f2- "$WORK/$1.msgs"; }

start_upstream
notify_socket dialer "$WORK/notify.sock"
NOTIFY_SOCKET=$WORK/notify.sock start_dialer
wait_for grep -q 'READY=1' "$WORK/dialer.msgs" || fail "dialer sent no READY=1"
# READY=1 came once it served: the line that says so is logged before it is sent.
grep -q "serving h2 over TLS" "$WORK/dialer.log" || fail "READY=1 before serving"
[ "$(msgs dialer)" = "READY=1" ] || fail "dialer messages: $(msgs dialer)"
[ "$(cut -d' ' -f1 "$WORK/dialer.msgs")" = "$DIALER_PID" ] ||
  fail "sent by pid $(cut -d' ' -f1 "$WORK/dialer.msgs"), not the dialer's $DIALER_PID"
ok "dialer: READY=1 once serving, from its main process"

notify_socket listener "@h2rev-e2e-notify-$$"
NOTIFY_SOCKET="@h2rev-e2e-notify-$$" start_listener n1
wait_for grep -q 'READY=1' "$WORK/listener.msgs" || fail "listener sent no READY=1"
[ "$(cut -d' ' -f1 "$WORK/listener.msgs")" = "$LISTENER_PID" ] || fail "listener's sender pid"
wait_for tcurl -f "$(tunnel n1)/index.html" || fail "no answer through the tunnel"
ok "listener: READY=1 once started, on an abstract socket"

kill -HUP "$DIALER_PID" "$LISTENER_PID"
wait_for lines_ge "$WORK/dialer.msgs" 3 || fail "dialer reload: $(msgs dialer)"
wait_for lines_ge "$WORK/listener.msgs" 3 || fail "listener reload: $(msgs listener)"
for t in dialer listener; do
  sed -n 2p "$WORK/$t.msgs" | grep -qE '^[0-9]+ RELOADING=1 MONOTONIC_USEC=[0-9]+$' ||
    fail "$t: $(sed -n 2p "$WORK/$t.msgs")"
  [ "$(msgs $t | sed -n 3p)" = "READY=1" ] || fail "$t after the reload: $(msgs $t)"
done
# MONOTONIC_USEC is CLOCK_MONOTONIC, as systemd compares it with its own.
python3 - "$(sed -n 2p "$WORK/dialer.msgs" | grep -o '[0-9]*$')" << 'PY' || fail "MONOTONIC_USEC off"
import sys, time
assert abs(int(sys.argv[1]) / 1e6 - time.monotonic()) < 60
PY
ok "SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1, on both"

stop "$LISTENER_PID"
[ "$(msgs listener | tail -1)" = "STOPPING=1" ] || fail "listener at SIGTERM: $(msgs listener)"
stop "$DIALER_PID"
[ "$(msgs dialer | tail -1)" = "STOPPING=1" ] || fail "dialer at SIGTERM: $(msgs dialer)"
[ "$(wc -l < "$WORK/dialer.msgs")" = 4 ] || fail "dialer messages: $(msgs dialer)"
ok "SIGTERM: STOPPING=1 when the drain starts, on both"

# Without NOTIFY_SOCKET nothing is sent and nothing is said.
start_dialer
! grep -q NOTIFY "$WORK/dialer.log" || fail "the dialer talks of NOTIFY_SOCKET without one"
ok "no NOTIFY_SOCKET: nothing"
