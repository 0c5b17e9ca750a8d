# Several dialer replicas behind an ordinary load balancer (issue 18): haproxy in
# TCP mode passes TLS through to three h2rev-dialer replicas on loopback; listener
# processes given only haproxy's URL attach to every replica (each replica's log
# shows each listener), and every id answers through haproxy. Under a load of
# one-request connections: kill -9 of one replica fails only requests in flight
# on it, later ones succeed; restarted, the listeners reattach to it within their
# backoff; SIGTERM of another fails none. And --workers 2 on one port.
source "$(dirname "$0")/e2elib.sh"
command -v haproxy > /dev/null || { echo "skip: no haproxy (deps/install.sh installs it)"; exit 77; }
command -v h2load > /dev/null || { echo "skip: no h2load"; exit 77; }

NL=${E2E_REPLICA_LISTENERS:-50} # listener processes
NLOAD=6                         # request loops of the load, one request in flight each
MAXB=2000                       # the listeners' --max-backoff
start_upstream

declare -A RP RPID
# replica N: (re)starts replica rN on its port
replica() {
  "$BIN/h2rev-dialer" --listen "127.0.0.1:${RP[$1]}" --self-signed-dir "$WORK" \
    --replica-id "r$1" --replicas 3 --drain-timeout 5000 --drain-delay 1500 2>> "$WORK/r$1.log" &
  RPID[$1]=$!
  PIDS+=(${RPID[$1]})
  wait_for curl -sf --cacert "$WORK/h2rev-dialer.crt" "https://127.0.0.1:${RP[$1]}/healthz" ||
    fail "replica r$1 did not start"
}
for i in 1 2 3; do RP[$i]=$(free_port); done
# One after the other: the first makes the self-signed certificate, the others reuse it.
for i in 1 2 3; do replica "$i"; done
CA=$WORK/h2rev-dialer.crt

# leastconn: listeners' connections are long-lived, and a replica back from a
# restart, holding none, takes the reconnections until it holds its share.
HP=$(free_port)
cat > "$WORK/haproxy.cfg" << EOF
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  retries 3
  option redispatch
frontend fe
  bind 127.0.0.1:$HP
  default_backend replicas
backend replicas
  balance leastconn
  option httpchk GET /healthz
  http-check send ver HTTP/1.1 hdr Host localhost
  default-server check check-ssl verify none inter 300ms fall 2 rise 2
  server r1 127.0.0.1:${RP[1]}
  server r2 127.0.0.1:${RP[2]}
  server r3 127.0.0.1:${RP[3]}
EOF
haproxy -f "$WORK/haproxy.cfg" -db 2>> "$WORK/haproxy.log" > /dev/null &
PIDS+=($!)
wait_for curl -sf --cacert "$CA" "https://127.0.0.1:$HP/healthz" || fail "haproxy did not start"
LB=https://127.0.0.1:$HP

t0=$(date +%s%3N)
for n in $(seq 1 "$NL"); do
  "$BIN/h2rev-listener" --url "$LB" --id "l$n" --ca "$CA" --max-backoff "$MAXB" \
    --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>> "$WORK/listener-l$n.log" &
  PIDS+=($!)
done
# attached_all N: every listener's attachment shows in replica rN's log since line FROM[N]
declare -A FROM=([1]=0 [2]=0 [3]=0)
attached_all() {
  local got
  got=$(tail -n +"$((FROM[$1] + 1))" "$WORK/r$1.log" | grep -o "listener l[0-9]* attached" | sort -u | wc -l)
  [ "$got" -ge "$NL" ]
}
# Each attachment lands on a replica the balancer picks: one that reaches a
# replica its listener holds retries (within a second or so): 30 s at most.
wait_long() {
  for _ in $(seq 1 300); do "$@" > /dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
for i in 1 2 3; do
  wait_long attached_all "$i" || fail "r$i: $(grep -c attached "$WORK/r$i.log") of $NL listeners attached"
done
ok "$NL listeners given haproxy's URL attached to all 3 replicas in $(($(date +%s%3N) - t0)) ms"

# Every id through haproxy: h2load's connections spread over the replicas.
URLS=()
for n in $(seq 1 "$NL"); do URLS+=("$LB/proxy/l$n/index.html"); done
N=$((NL * 100))
h2load -n "$N" -c 12 -m 4 "${URLS[@]}" > "$WORK/h2load.txt" 2>&1 || true
grep -q "requests: $N total, $N started, $N done, $N succeeded, 0 failed" "$WORK/h2load.txt" ||
  fail "every id through haproxy: $(grep requests: "$WORK/h2load.txt")"
grep -q "status codes: $N 2xx" "$WORK/h2load.txt" || fail "every id: $(grep 'status codes' "$WORK/h2load.txt")"
ok "$N requests through haproxy over 12 connections, 100 per id: all 200"

# The load: NLOAD loops of one-request connections (each one is balanced), a
# 200 ms request each, to every id in turn; a line "ms code" per request.
load_start() {
  rm -f "$WORK/load.stop" "$WORK"/load-*.txt
  for k in $(seq 1 "$NLOAD"); do
    (
      n=$k
      while [ ! -e "$WORK/load.stop" ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 --cacert "$CA" \
          "$LB/proxy/l$((n % NL + 1))/sleep/200" || true)
        echo "$(date +%s%3N) $code" >> "$WORK/load-$k.txt"
        n=$((n + 1))
      done
    ) &
    PIDS+=($!)
  done
}
load_stop() {
  touch "$WORK/load.stop"
  sleep 0.5
  cat "$WORK"/load-*.txt > "$WORK/load.txt"
}
# bad [SINCE]: requests not answered 200 (ended at or after SINCE, ms)
bad() { awk -v s="${1:-0}" '$1 >= s && $2 != 200' "$WORK/load.txt" | wc -l; }
total() { wc -l < "$WORK/load.txt"; }

# kill -9 of r1 under load.
load_start
sleep 2
FROM[1]=$(wc -l < "$WORK/r1.log")
tk=$(date +%s%3N)
kill -9 "${RPID[1]}"
wait "${RPID[1]}" 2> /dev/null || true
forget "${RPID[1]}"
sleep 4
load_stop
b=$(bad)
[ "$b" -le "$NLOAD" ] || fail "kill -9: $b of $(total) requests failed, more than the $NLOAD that can be in flight"
late=$(bad $((tk + 1500)))
[ "$late" = 0 ] || fail "kill -9: $late requests failed more than 1.5 s after it"
ok "kill -9 of a replica under load: $b of $(total) requests failed (at most $NLOAD in flight), none later"

# r1 back: the listeners reattach to it within their backoff.
tr=$(date +%s%3N)
replica 1
for _ in $(seq 1 $((MAXB / 100 + 100))); do attached_all 1 && break; sleep 0.1; done
attached_all 1 || fail "restarted r1: $(tail -n +"$((FROM[1] + 1))" "$WORK/r1.log" | grep -c attached) of $NL listeners reattached"
ok "restarted replica: all $NL listeners reattached in $(($(date +%s%3N) - tr)) ms (--max-backoff $MAXB)"
for i in 2 3; do
  [ "$(grep -c "listener .* detached" "$WORK/r$i.log")" = 0 ] || fail "r$i lost listeners: $(grep detached "$WORK/r$i.log" | head -3)"
done
ok "the other replicas kept every listener"

# SIGTERM of r2 under load: /healthz fails first (--drain-delay: haproxy takes it
# out), then it drains; nothing fails.
load_start
sleep 2
kill -TERM "${RPID[2]}"
wait "${RPID[2]}" || fail "r2: exit $? after SIGTERM"
forget "${RPID[2]}"
sleep 2
load_stop
b=$(bad)
[ "$b" = 0 ] || fail "SIGTERM: $b of $(total) requests failed: $(awk '$2 != 200' "$WORK/load.txt" | head -3 | tr '\n' ' ')"
ok "SIGTERM of a replica under load: 0 of $(total) requests failed"

# --workers 2: two processes on one port (SO_REUSEPORT), each a replica; a
# listener given that port attaches to both (each worker's /metrics, on
# PORT and PORT+1, counts it); a worker killed is restarted and rejoined.
WP=$(free_port)
# Two ports in a row, below the kernel's range for outgoing connections: a free port
# from there has its neighbour taken by a connection's local end as often as not.
MP=$(python3 -c '
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(500):
    p = random.randrange(10000, lo - 2)
    s = [socket.socket(), socket.socket()]
    try:
        for i in (0, 1):
            s[i].bind(("127.0.0.1", p + i))
        print(p)
        break
    except OSError:
        pass
    finally:
        for k in s:
            k.close()
')
[ -n "$MP" ] || fail "no two free ports in a row for --metrics"
"$BIN/h2rev-dialer" --listen "127.0.0.1:$WP" --self-signed-dir "$WORK" --workers 2 \
  --metrics "127.0.0.1:$MP" 2>> "$WORK/workers.log" &
SUP=$!
PIDS+=($SUP)
wait_for curl -sf --cacert "$CA" "https://127.0.0.1:$WP/healthz" || fail "--workers 2 did not start"
"$BIN/h2rev-listener" --url "https://127.0.0.1:$WP" --id lw --ca "$CA" --max-backoff "$MAXB" \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" 2>> "$WORK/listener-lw.log" &
PIDS+=($!)
holds() { curl -sf "http://127.0.0.1:$1/metrics" | grep -q '^h2rev_listeners 1$'; }
wait_long holds "$MP" || fail "--workers: worker 0 does not hold the listener"
wait_long holds $((MP + 1)) || fail "--workers: worker 1 does not hold the listener"
h2load -n 400 -c 8 "https://127.0.0.1:$WP/proxy/lw/index.html" > "$WORK/h2load-w.txt" 2>&1 || true
grep -q "status codes: 400 2xx" "$WORK/h2load-w.txt" || fail "--workers: $(grep -E 'requests:|status codes' "$WORK/h2load-w.txt")"
W0=$(pgrep -P "$SUP" | head -1)
kill -9 "$W0"
wait_for grep -q "worker .* killed by signal 9: restarting it" "$WORK/workers.log" || fail "--workers: no restart"
sleep 0.5
wait_long holds "$MP" || fail "--workers: worker 0 does not hold the listener after the restart"
wait_long holds $((MP + 1)) || fail "--workers: worker 1 does not hold the listener after the restart"
kill -TERM "$SUP"
wait "$SUP" || fail "--workers: exit $? after SIGTERM"
forget "$SUP"
[ -z "$(pgrep -P "$SUP" || true)" ] || fail "--workers: workers left after the supervisor's exit"
ok "--workers 2 on one port: a listener attached to both, 400 requests all 200, a worker killed was restarted and rejoined, SIGTERM stops all"
