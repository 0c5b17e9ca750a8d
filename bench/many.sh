#!/usr/bin/env bash
# Many listeners on one dialer (issue 19): COUNT listeners held by one process
# (build/bin/h2rev-many, the library's listener handles on one loop) attach
# to one h2rev-dialer over TLS; prints the time they took to attach, the
# dialer's memory per attached listener (RSS and, from /proc, its heap), and
# the latency of requests to random ids against the same with one listener,
# in the same run.
#
#   bench/many.sh [COUNT]     (default 10000; needs COUNT + 100 descriptors)
#
# Build first (the README's build command); uses curl.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-10000}
REQS=${REQS:-300}
BIN=${BIN:-build/bin}
for b in h2rev-dialer h2rev-many; do
  [ -x "$BIN/$b" ] || { echo "many.sh: $BIN/$b missing: build first" >&2; exit 1; }
done
command -v curl > /dev/null || { echo "many.sh: curl missing" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((COUNT + 100)) ]; then
  echo "many.sh: $(ulimit -n) descriptors, $COUNT listeners need $((COUNT + 100))" >&2
  exit 1
fi

W=$(mktemp -d /tmp/h2rev-many.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
kib() { awk -v k="^$2:" '$0 ~ k {print $2}' "/proc/$1/status"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The latency of REQS GETs, in order, over one connection to the dialer,
# each to an id drawn from 0..n-1: "median p99" in ms.
latency() {
  local n=$1 urls=()
  # RANDOM is 15 bits: two draws cover a billion ids (the modulo bias is no matter here).
  for _ in $(seq 1 "$REQS"); do urls+=(-o /dev/null "https://127.0.0.1:$DP/proxy/m$(((RANDOM * 32768 + RANDOM) % n))/x"); done
  curl -s --cacert "$W/d/h2rev-dialer.crt" -w '%{http_code} %{time_total}\n' "${urls[@]}" > "$W/lat"
  local bad
  bad=$(awk '$1 != 200' "$W/lat" | wc -l)
  [ "$bad" = 0 ] || { echo "many.sh: $bad of $REQS requests failed" >&2; exit 1; }
  # The first request pays the client's TLS handshake: left out.
  tail -n +2 "$W/lat" | awk '{print $2 * 1000}' | sort -n |
    awk '{v[NR] = $1} END {printf "%.2f %.2f\n", v[int((NR + 1) / 2)], v[int(NR * 0.99 + 0.5)]}'
}

# One run: the dialer, then n listeners; sets ATTACH_MS, RSS_B, RSS_A, LAT.
run() {
  local n=$1
  DP=$(port)
  mkdir -p "$W/d"
  "$BIN/h2rev-dialer" --listen "127.0.0.1:$DP" --self-signed-dir "$W/d" --log-level warn \
    2>> "$W/dialer.log" &
  local dpid=$!
  PIDS+=("$dpid")
  for _ in $(seq 1 100); do
    curl -sf --cacert "$W/d/h2rev-dialer.crt" "https://127.0.0.1:$DP/healthz" > /dev/null 2>&1 && break
    sleep 0.1
  done
  sleep 0.5
  RSS_B=$(kib "$dpid" VmRSS)
  "$BIN/h2rev-many" "https://127.0.0.1:$DP" "$n" --ca "$W/d/h2rev-dialer.crt" > "$W/many.out" \
    2>> "$W/many.log" &
  local mpid=$!
  PIDS+=("$mpid")
  for _ in $(seq 1 1200); do
    grep -q '^attached' "$W/many.out" && break
    kill -0 "$mpid" 2> /dev/null || { echo "many.sh: h2rev-many exited" >&2; tail "$W/many.log" >&2; exit 1; }
    sleep 0.5
  done
  ATTACH_MS=$(awk '/^attached/ {print $4}' "$W/many.out")
  [ -n "$ATTACH_MS" ] || { echo "many.sh: not all attached" >&2; exit 1; }
  sleep 2
  RSS_A=$(kib "$dpid" VmRSS)
  LAT=$(latency "$n")
  kill "$mpid" "$dpid"
  wait "$mpid" "$dpid" 2> /dev/null || true
  rm -rf "$W/d"
}

echo "many listeners on one dialer: 1, then $COUNT ($REQS requests to random ids each)" >&2
run 1
LAT1=$LAT
A1=$ATTACH_MS
run "$COUNT"
PER=$(awk -v a="$RSS_A" -v b="$RSS_B" -v n="$COUNT" 'BEGIN {printf "%.1f", (a - b) / n}')
read -r M1 P1 <<< "$LAT1"
read -r MN PN <<< "$LAT"
printf '| %s | %s | %s | %s |\n' "listeners" "1" "$COUNT" "ratio"
printf '| --- | --- | --- | --- |\n'
printf '| attach all (ms) | %s | %s | |\n' "$A1" "$ATTACH_MS"
printf '| dialer RSS per listener (KiB) | | %s (%s -> %s KiB) | |\n' "$PER" "$RSS_B" "$RSS_A"
printf '| request median (ms) | %s | %s | %s |\n' "$M1" "$MN" "$(awk -v a="$MN" -v b="$M1" 'BEGIN {printf "%.2f", a / b}')"
printf '| request p99 (ms) | %s | %s | %s |\n' "$P1" "$PN" "$(awk -v a="$PN" -v b="$P1" 'BEGIN {printf "%.2f", a / b}')"
