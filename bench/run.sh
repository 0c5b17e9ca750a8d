#!/usr/bin/env bash
# h2rev benchmark on loopback: h2rev (dialer + listener) against a one-hop nginx TLS
# reverse proxy to the same upstream nginx. Prints one table (stdout); progress on stderr.
#
#   bench/run.sh            default run (200,000-request growth run, 1000 idle listeners)
#   bench/run.sh --smoke    tiny counts for CI, under 2 minutes
#   bench/run.sh --full     1,000,000-request growth run, then bench/many.sh (10,000
#                           listeners on one dialer; MANY=N for another count) and --tcp
# Both also run 10,000 requests in flight at once (h2load -c 100 -m 100) through one listener.
#   bench/run.sh --tcp      raw TCP instead (its own table): h2rev-dialer --tcp and
#                           h2rev-listener --upstream tcp:// against ssh -R on a private sshd,
#                           1 GiB each way (median of 3) and 10,000 round trips; with --smoke,
#                           64 MiB and 1,000. Needs openssh-server, openssh-client, python3.
# Options: --long N (requests of the growth run), --mix N (requests through each pairing of
# C and Go), --rev REV (build commit REV from git instead of the working tree), --no-build
# (use build-bench/ as it is), --keep (keep the temp dir). Needs: cmake, a C compiler,
# openssl, nginx (nginx-light), h2load (nghttp2-client), wrk, curl, python3; with the Go
# h2rev2 binaries in ../shared/interop (revsrv, revcli), small GETs through each pairing.
set -euo pipefail

ARGS="$*"
MODE=default
LONG=
MIX_N=
REV=
BUILD=1
KEEP=0
TCP=0
while [ $# -gt 0 ]; do
  case $1 in
  --smoke) MODE=smoke ;;
  --full) MODE=full ;;
  --long) LONG=$2; shift ;;
  --mix) MIX_N=$2; shift ;;
  --rev) REV=$2; shift ;;
  --no-build) BUILD=0 ;;
  --keep) KEEP=1 ;;
  --tcp) TCP=1 ;;
  -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

case $MODE in
smoke) H2_RUNS=1 N_GET=2000 N_MIX=1000 WARM=500 GWARM=500 FIRST=1000 DEF_LONG=4000 WRK_S=3 XFER_MIB=10 XFER_RUNS=1 IDLE=50 SLOW_S=5 CC_C=10 CC_M=10 CC_N=2000 CC_CAP=10 ;;
full) H2_RUNS=3 N_GET=100000 N_MIX=10000 WARM=2000 GWARM=10000 FIRST=50000 DEF_LONG=1000000 WRK_S=10 XFER_MIB=100 XFER_RUNS=5 IDLE=1000 SLOW_S=20 CC_C=100 CC_M=100 CC_N=100000 CC_CAP=100 ;;
*) H2_RUNS=3 N_GET=100000 N_MIX=10000 WARM=2000 GWARM=10000 FIRST=50000 DEF_LONG=200000 WRK_S=10 XFER_MIB=100 XFER_RUNS=5 IDLE=1000 SLOW_S=20 CC_C=100 CC_M=100 CC_N=100000 CC_CAP=100 ;;
esac
LONG=${LONG:-$DEF_LONG}
N_MIX=${MIX_N:-$N_MIX}
[ "$LONG" -gt "$FIRST" ] || { echo "bench/run.sh: --long must exceed $FIRST" >&2; exit 2; }

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# On tmpfs when there is room: the uploads are written by the upstream, and the disk's
# writeback would decide those figures (one run in three stalled, either path) instead
# of the proxies.
TMPBASE=/tmp
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -gt $((2 << 20)) ]; then
  TMPBASE=/dev/shm
fi
W=$(mktemp -d "$TMPBASE/h2rev-bench.XXXXXX")
PIDS=()       # every process started here, killed at exit
IDLE_PIDS=()  # the idle listeners
T0=$(date +%s)

log() { echo "[bench +$(($(date +%s) - T0))s] $*" >&2; }
die() { log "ERROR: $*"; for f in "$W"/*.log; do [ -s "$f" ] && { echo "== $f" >&2; tail -n 15 "$f" >&2; }; done; exit 1; }

alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
stop_pids() { # stop_pids SECONDS PID...: SIGTERM, SIGKILL for what is left after SECONDS; prints those
  local t=$1 p any
  shift
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 1 $((t * 10))); do
    any=0
    for p in "$@"; do alive "$p" && { any=1; break; }; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for p in "$@"; do alive "$p" && { kill -9 "$p" 2>/dev/null || true; echo "$p"; }; done
  return 0
}
cleanup() {
  local left=() p
  for p in "${IDLE_PIDS[@]:-}" "${PIDS[@]:-}"; do [ -n "$p" ] && left+=("$p"); done
  stop_pids 5 "${left[@]}" >/dev/null
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then log "temp dir kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$TCP" = 1 ]; then NEEDED="cmake ssh ssh-keygen curl python3"; else NEEDED="cmake openssl nginx h2load wrk curl python3"; fi
for t in $NEEDED; do
  command -v "$t" >/dev/null || die "$t not found (Debian: nginx-light, nghttp2-client, wrk, curl, openssh-client)"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS CMD...
  local n=$(($1 * 10)); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
kib() { awk -v k="^$2:" '$0 ~ k {print $2; f=1} END {if (!f) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
rss() { kib "$1" VmRSS; }
hwm() { kib "$1" VmHWM; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b}'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a != "-" && a + 0 >= b + 0)}'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a != "-" && a + 0 <= b + 0)}'; }
pf() { if "$@"; then echo PASS; else echo FAIL; fi; }
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}'; }

# ---------------------------------------------------------------------------- build
if [ -n "$REV" ]; then
  sha=$(git -C "$SRC" rev-parse --short "$REV")
  BSRC=$SRC/build-bench/src-$sha
  BDIR=$SRC/build-bench/rev-$sha
  if [ ! -d "$BSRC" ]; then mkdir -p "$BSRC" && git -C "$SRC" archive "$sha" | tar -x -C "$BSRC"; fi
  VERSION="commit $sha"
else
  BSRC=$SRC
  BDIR=$SRC/build-bench
  VERSION="$(git -C "$SRC" describe --always --dirty 2>/dev/null || echo unknown) (working tree)"
fi
if [ "$BUILD" = 1 ]; then
  log "building $VERSION (Release) into $BDIR"
  cmake -S "$BSRC" -B "$BDIR" -DCMAKE_BUILD_TYPE=Release >"$W/build.log" 2>&1 &&
    cmake --build "$BDIR" -j2 --target h2rev-dialer h2rev-listener h2rev-many >>"$W/build.log" 2>&1 ||
    { tail -n 30 "$W/build.log" >&2; die "build failed"; }
fi
BIN=$BDIR/bin
[ -x "$BIN/h2rev-dialer" ] && [ -x "$BIN/h2rev-listener" ] || die "no binaries in $BIN"

# ---------------------------------------------------------------------------- raw TCP (--tcp)
# The same TCP servers (tcppeer.py: a sink, a source, an echo) reached three ways: directly,
# through h2rev (dialer --tcp, listener --upstream tcp://, TLS between them) and through
# `ssh -R` on a private sshd (the ssh client on the servers' side, as a listener would be;
# the sshd's forwarded port as the public one). The paths run in turn, each figure the
# median of the rounds.
if [ "$TCP" = 1 ]; then
  if [ "$MODE" = smoke ]; then T_MIB=64 T_RUNS=1 T_PP=1000; else T_MIB=1024 T_RUNS=3 T_PP=10000; fi
  SSHD=$(command -v sshd || echo /usr/sbin/sshd)
  [ -x "$SSHD" ] || die "sshd not found (Debian: openssh-server)"
  if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then mkdir -p -m 0755 /run/sshd; fi
  PEER="python3 $SRC/test/tcppeer.py"
  for m in sink source echo; do
    $PEER serve "$m" --port-file "$W/$m.port" 2>>"$W/peer-$m.log" &
    PIDS+=($!)
    wait_for 10 test -s "$W/$m.port" || die "tcppeer $m did not start"
  done
  declare -A TP=([sink]=$(cat "$W/sink.port") [source]=$(cat "$W/source.port") [echo]=$(cat "$W/echo.port"))
  mkdir -m 0700 "$W/ssh"
  ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/id"
  cp "$W/ssh/id.pub" "$W/ssh/authorized_keys"
  SSHP=$(free_port)
  "$SSHD" -D -e -f /dev/null -h "$W/ssh/host_key" -p "$SSHP" -o ListenAddress=127.0.0.1 \
    -o AuthorizedKeysFile="$W/ssh/authorized_keys" -o StrictModes=no -o PidFile=none -o UsePAM=no \
    -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
    -o PermitRootLogin=prohibit-password 2>>"$W/sshd.log" &
  PIDS+=($!)
  SSHO=(-F /dev/null -i "$W/ssh/id" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile="$W/ssh/known_hosts" -o LogLevel=ERROR -o ExitOnForwardFailure=yes)
  mkdir -p "$W/d"
  DP=$(free_port)
  declare -A XP RP
  TCPFLAGS=()
  for m in sink source echo; do
    XP[$m]=$(free_port) RP[$m]=$(free_port)
    TCPFLAGS+=(--tcp "127.0.0.1:${XP[$m]}=$m")
  done
  "$BIN/h2rev-dialer" --listen "127.0.0.1:$DP" --self-signed-dir "$W/d" "${TCPFLAGS[@]}" 2>>"$W/dialer.log" &
  DPID=$!
  PIDS+=("$DPID")
  wait_for 10 curl -sf --cacert "$W/d/h2rev-dialer.crt" "https://127.0.0.1:$DP/healthz" || die "dialer did not start"
  LPIDS=()
  for m in sink source echo; do
    "$BIN/h2rev-listener" --url "https://127.0.0.1:$DP" --id "$m" --ca "$W/d/h2rev-dialer.crt" \
      --upstream "tcp://127.0.0.1:${TP[$m]}" 2>>"$W/listener-$m.log" &
    LPIDS+=($!)
    PIDS+=($!)
    # One ssh -R per server, as one listener per service.
    wait_for 10 python3 -c "import socket; socket.create_connection(('127.0.0.1', $SSHP))" || die "sshd did not start"
    ssh "${SSHO[@]}" -N -p "$SSHP" -R "127.0.0.1:${RP[$m]}:127.0.0.1:${TP[$m]}" 127.0.0.1 2>>"$W/ssh-$m.log" &
    PIDS+=($!)
  done
  for m in sink source echo; do
    wait_for 10 grep -q "listener $m attached" "$W/dialer.log" || die "listener $m did not attach"
    wait_for 10 python3 -c "import socket; socket.create_connection(('127.0.0.1', ${RP[$m]}))" || die "ssh -R $m did not start"
  done
  declare -A TM
  tcp_run() { # tcp_run PATH(direct|ssh|h2rev) WHAT(send|receive|pingpong)
    local port out
    case $1 in direct) port=${TP[$3]} ;; ssh) port=${RP[$3]} ;; h2rev) port=${XP[$3]} ;; esac
    if [ "$2" = pingpong ]; then out=$($PEER pingpong "$port" "$T_PP" 64 2>&1)
    else out=$($PEER "$2" "$port" $((T_MIB << 20)) 2>&1); fi || { problem "$1 $2: $out"; return; }
    TM[$1-$2]+=" $out"
  }
  PROBLEMS=()
  problem() { PROBLEMS+=("$*"); log "PROBLEM: $*"; }
  log "raw TCP: $T_MIB MiB each way x $T_RUNS and $T_PP round trips of 64 bytes, direct, ssh -R, h2rev in turn"
  for i in $(seq 1 "$T_RUNS"); do
    for what in send:sink receive:source pingpong:echo; do
      for path in direct ssh h2rev; do
        [ $((i % 2)) = 0 ] && [ "$path" != direct ] && path=$([ "$path" = ssh ] && echo h2rev || echo ssh)
        tcp_run "$path" "${what%%:*}" "${what#*:}"
      done
    done
    log "round $i: $(for k in "${!TM[@]}"; do printf '%s:%s ' "$k" "${TM[$k]}"; done)"
  done
  tmed() { echo "${TM[$1]:-}" | median; }
  trow() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }
  {
    echo
    trow metric direct "ssh -R" h2rev "ratio h2rev/ssh -R"
    trow --- ---: ---: ---: ---:
    for w in "send:upload (client to the server behind the tunnel)" "receive:download (server to the client)"; do
      trow "$T_MIB MiB ${w#*:}, MiB/s (median of $T_RUNS)" "$(tmed direct-${w%%:*})" "$(tmed ssh-${w%%:*})" \
        "$(tmed h2rev-${w%%:*})" "$(ratio "$(tmed h2rev-${w%%:*})" "$(tmed ssh-${w%%:*})")"
    done
    trow "ping-pong: $T_PP round trips of 64 bytes on one connection, mean µs (median of $T_RUNS)" \
      "$(tmed direct-pingpong)" "$(tmed ssh-pingpong)" "$(tmed h2rev-pingpong)" \
      "$(ratio "$(tmed h2rev-pingpong)" "$(tmed ssh-pingpong)")"
    echo
    echo "Throughput: higher is better (ratio ≥ 1: h2rev at least ssh -R's); round trips: lower is better."
    echo "Machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'); h2rev $VERSION; $(ssh -V 2>&1)"
    echo "Command: bench/run.sh${ARGS:+ $ARGS} (mode $MODE, raw TCP); h2rev: TLS (self-signed) between dialer and listener; ssh: default cipher"
    if [ ${#PROBLEMS[@]} -gt 0 ]; then
      echo "Problems:"
      for p in "${PROBLEMS[@]}"; do echo "- $p"; done
    else
      echo "Problems: none"
    fi
  } | tee "$W/table.md"
  log "done in $(($(date +%s) - T0)) s"
  exit 0
fi

# ---------------------------------------------------------------------------- files, certs
mkdir -p "$W/www/upload" "$W/tmp"
head -c 100 /dev/urandom >"$W/www/small.bin"
head -c $((XFER_MIB << 20)) /dev/urandom >"$W/www/big.bin"
truncate -s 100M "$W/www/slow.bin" # the slow reader always reads 100 MiB
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$W/ref.key" -out "$W/ref.crt" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >"$W/openssl.log" 2>&1 || die "openssl"

UP=$(free_port)
REF=$(free_port)
REFB=$(free_port)
DP=$(free_port)
IDP=$(free_port)
CDP=$(free_port)
CREF=$(free_port)
CREFB=$(free_port)
USR="$(id -un) $(id -gn)"

ngx_common() { # ngx_common NAME
  cat <<EOF
user $USR;
worker_processes 1;
daemon off;
pid $W/$1.pid;
error_log $W/$1-nginx.log warn;
events { worker_connections 16384; } # 10,000 requests in flight: as many upstream connections
http {
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path $W/tmp/$1-body;
  proxy_temp_path $W/tmp/$1-proxy;
  fastcgi_temp_path $W/tmp/$1-fcgi;
  uwsgi_temp_path $W/tmp/$1-uwsgi;
  scgi_temp_path $W/tmp/$1-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  sendfile on;
  tcp_nopush on;
EOF
}

# The upstream: files and an upload endpoint (WebDAV PUT: the whole body is read and stored
# before the answer, 201 or 204).
{
  ngx_common up
  cat <<EOF
  server {
    listen 127.0.0.1:$UP;
    root $W/www;
    location /upload/ {
      dav_methods PUT;
      client_max_body_size 0;
      client_body_buffer_size 1m;
    }
  }
}
EOF
} >"$W/up.conf"

# The reference: one TLS HTTP/2 hop to the same upstream, streaming both ways. It keeps
# as many idle upstream connections as h2rev-listener does by default (256): h2load has
# 160 requests in flight, and with fewer (nginx's usual 32) both proxies would open a
# new upstream connection for a good part of the requests.
{
  ngx_common ref
  cat <<EOF
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$REF ssl http2;
    ssl_certificate $W/ref.crt;
    ssl_certificate_key $W/ref.key;
    client_max_body_size 0;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_max_temp_file_size 0;
    }
  }
  # The same with nginx's default buffering (an nginx set up with no care for it): a
  # download is read from the upstream as fast as it comes, into memory and a temporary
  # file, and sent to the client from there. Downloads only.
  server {
    listen 127.0.0.1:$REFB ssl http2;
    ssl_certificate $W/ref.crt;
    ssl_certificate_key $W/ref.key;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$W/ref.conf"

start_nginx() { # start_nginx NAME -> pid in NGX_PID
  mkdir -p "$W/ngx-$1"
  nginx -p "$W/ngx-$1/" -c "$W/$1.conf" -e "$W/$1-nginx.log" 2>>"$W/$1-nginx.log" &
  NGX_PID=$!
  PIDS+=("$NGX_PID")
}
start_nginx up
start_nginx ref
REF_PID=$NGX_PID

wait_for 10 curl -sf "http://127.0.0.1:$UP/small.bin" -o /dev/null || die "upstream nginx did not start"
wait_for 10 curl -sfk "https://127.0.0.1:$REF/small.bin" -o /dev/null || die "reference nginx did not start"
REF_WORKER=$(pgrep -P "$REF_PID" | head -n 1)

# ---------------------------------------------------------------------------- h2rev
mkdir -p "$W/d"
"$BIN/h2rev-dialer" --listen "127.0.0.1:$DP" --self-signed-dir "$W/d" --log-level info 2>>"$W/dialer.log" &
DPID=$!
PIDS+=("$DPID")
wait_for 10 test -s "$W/d/h2rev-dialer.crt" || die "dialer did not write its certificate"
wait_for 10 curl -sf --cacert "$W/d/h2rev-dialer.crt" "https://127.0.0.1:$DP/healthz" || die "dialer did not start"
"$BIN/h2rev-listener" --url "https://127.0.0.1:$DP" --id bench --ca "$W/d/h2rev-dialer.crt" \
  --upstream "http://127.0.0.1:$UP" --log-level info 2>>"$W/listener.log" &
LPID=$!
PIDS+=("$LPID")

REF_URL=https://127.0.0.1:$REF
REFB_URL=https://127.0.0.1:$REFB
H2R_URL=https://127.0.0.1:$DP/proxy/bench
wait_for 10 curl -sfk "$H2R_URL/small.bin" -o /dev/null || die "no answer through h2rev"
cmp -s <(curl -sk "$H2R_URL/small.bin") "$W/www/small.bin" || die "h2rev: small.bin differs"
cmp -s <(curl -sk "$REF_URL/small.bin") "$W/www/small.bin" || die "reference: small.bin differs"
log "up: upstream :$UP, reference :$REF, dialer :$DP (pid $DPID), listener pid $LPID"

PROBLEMS=()
problem() { PROBLEMS+=("$*"); log "PROBLEM: $*"; }

# ---------------------------------------------------------------------------- h2load
# h2load_run NAME URL N [CLIENTS STREAMS]: sets H_RPS H_MEAN H_P50 H_P99 (2xx responses only; latencies in ms),
# H_OK (2xx), H_FAIL (failed, errored, timed out), H_NON2XX, H_ALLRPS (h2load's figure)
h2load_run() {
  local name=$1 url=$2 n=$3 out=$W/h2load-$1.txt lf=$W/h2load-$1.log secs
  h2load -c "${4:-16}" -m "${5:-10}" -n "$n" --log-file="$lf" "$url" >"$out" 2>&1 || true
  H_ALLRPS=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$out")
  secs=$(to_ms "$(awk '/^finished in/ {gsub(",", "", $3); print $3}' "$out")")
  H_FAIL=$(awk '/^requests:/ {print $10 + $12 + $14}' "$out")
  H_NON2XX=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$out")
  # --log-file: start time, status, duration in microseconds, one request a line
  read -r H_OK H_MEAN H_P50 H_P99 < <(awk '$2 >= 200 && $2 < 300 {print $3}' "$lf" 2>/dev/null | sort -n |
    awk '{v[NR] = $1; s += $1} END {if (!NR) {print "0 - - -"; exit}
      i = int(NR * 0.50 + 0.5); if (i < 1) i = 1; j = int(NR * 0.99 + 0.5); if (j < 1) j = 1
      printf "%d %.3f %.3f %.3f\n", NR, s / NR / 1000, v[i] / 1000, v[j] / 1000}')
  H_RPS=$(awk -v n="$H_OK" -v ms="$secs" 'BEGIN {if (ms + 0 > 0) printf "%.0f", n * 1000 / ms; else print "-"}')
  H_FAIL=${H_FAIL:-$n}
  H_NON2XX=${H_NON2XX:-0}
  if [ "$H_FAIL" != 0 ] || [ "$H_NON2XX" != 0 ] || [ "$H_OK" != "$n" ]; then
    problem "h2load $name: $n requests, $H_OK answered 2xx, $H_NON2XX non-2xx ($(awk '$2 !~ /^2/ {print $2}' "$lf" | sort | uniq -c | awk '{printf "%s%s x%s", s, $2, $1; s = ", "}')), $H_FAIL failed/errored/timed out [h2load: $(grep -m1 '^requests:' "$out")]"
  fi
  log "h2load $name: $H_RPS 2xx/s (h2load: ${H_ALLRPS:-?} req/s), mean $H_MEAN ms, p50 $H_P50 ms, p99 $H_P99 ms, 2xx $H_OK/$n"
}
to_ms() { # 123us 1.2ms 3.4s -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) {sub(/us$/, "", v); printf "%.3f", v / 1000}
    else if (v ~ /ms$/) {sub(/ms$/, "", v); printf "%.3f", v}
    else if (v ~ /m$/) {sub(/m$/, "", v); printf "%.3f", v * 60000}
    else if (v ~ /s$/) {sub(/s$/, "", v); printf "%.3f", v * 1000}
    else print "-"}'
}

log "warm-up: $WARM requests each"
h2load_run warm-ref "$REF_URL/small.bin" "$WARM"
h2load_run warm-h2rev "$H2R_URL/small.bin" "$WARM"

# Growth: RSS after the first $FIRST requests, then after $LONG in all (fresh processes).
# The heap reaches its working set under this load within some 10^4 requests (the RSS
# after $GWARM is shown too); growth is counted from $FIRST, where traffic no longer
# adds to it, to $LONG.
log "growth run on h2rev: $GWARM requests, $((FIRST - GWARM)) more, then $((LONG - FIRST)) more"
h2load_run growth-warm "$H2R_URL/small.bin" "$GWARM"
sleep 1
G_D0=$(rss "$DPID") G_L0=$(rss "$LPID")
h2load_run growth-first "$H2R_URL/small.bin" "$((FIRST - GWARM))"
sleep 1
G_D1=$(rss "$DPID") G_L1=$(rss "$LPID")
h2load_run growth-rest "$H2R_URL/small.bin" "$((LONG - FIRST))"
G_RPS=$H_RPS
sleep 1
G_D2=$(rss "$DPID") G_L2=$(rss "$LPID")
G_GROW=$(((G_D2 + G_L2) - (G_D1 + G_L1)))
log "growth: dialer $G_D1 -> $G_D2 KiB, listener $G_L1 -> $G_L2 KiB"

# Small GETs: the two paths in turn, $H2_RUNS rounds; each figure is the median of the rounds.
log "small GET: h2load -c 16 -m 10 -n $N_GET, $H2_RUNS rounds"
declare -A M=() C=()
R_BAD=0 X_BAD=0
for r in $(seq 1 "$H2_RUNS"); do
  for side in ref h2rev; do
    if [ $side = ref ]; then url=$REF_URL; else url=$H2R_URL; fi
    h2load_run "$side-$r" "$url/small.bin" "$N_GET"
    M[$side-rps]+=" $H_RPS" M[$side-mean]+=" $H_MEAN" M[$side-p50]+=" $H_P50" M[$side-p99]+=" $H_P99"
    if [ $side = ref ]; then R_BAD=$((R_BAD + N_GET - H_OK)); else X_BAD=$((X_BAD + N_GET - H_OK)); fi
  done
done
med() { echo "${M[$1]}" | median; }
R_RPS=$(med ref-rps) R_MEAN=$(med ref-mean) R_P50=$(med ref-p50) R_P99=$(med ref-p99)
X_RPS=$(med h2rev-rps) X_MEAN=$(med h2rev-mean) X_P50=$(med h2rev-p50) X_P99=$(med h2rev-p99)

# ---------------------------------------------------------------------------- C and Go
# Small GETs through the four pairings of dialer and listener, C (h2rev) or Go (h2rev2's
# revsrv and revcli), one after the other on the same upstream: C-C is the pair above
# (the same count as the others, for a like-for-like row).
GO=$SRC/../shared/interop
MIX=
if [ -x "$GO/revsrv" ] && [ -x "$GO/revcli" ]; then
  GP=$(free_port)
  "$GO/revsrv" -addr "127.0.0.1:$GP" -cert "$W/ref.crt" -key "$W/ref.key" >>"$W/revsrv.log" 2>&1 &
  MIX_PIDS=($!)
  wait_for 10 curl -s -o /dev/null --cacert "$W/ref.crt" "https://127.0.0.1:$GP/" || die "revsrv did not start"
  "$BIN/h2rev-listener" --url "https://127.0.0.1:$GP" --id gc --ca "$W/ref.crt" \
    --upstream "http://127.0.0.1:$UP" --log-level warn 2>>"$W/mix-listener.log" &
  MIX_PIDS+=($!)
  "$GO/revcli" -url "https://127.0.0.1:$DP/" -ca "$W/d/h2rev-dialer.crt" -id cg \
    -upstream "http://127.0.0.1:$UP" >>"$W/revcli.log" 2>&1 &
  MIX_PIDS+=($!)
  "$GO/revcli" -url "https://127.0.0.1:$GP/" -ca "$W/ref.crt" -id gg \
    -upstream "http://127.0.0.1:$UP" >>"$W/revcli.log" 2>&1 &
  MIX_PIDS+=($!)
  PIDS+=("${MIX_PIDS[@]}")
  mkdir -p "$W/www/proxy/gg" # the Go dialer forwards the full path, the Go listener keeps it
  cp "$W/www/small.bin" "$W/www/proxy/gg/"
  for u in "https://127.0.0.1:$GP/proxy/gc" "https://127.0.0.1:$DP/proxy/cg" "https://127.0.0.1:$GP/proxy/gg"; do
    wait_for 20 curl -sfk -o /dev/null "$u/small.bin" || die "no answer through $u"
  done
  log "C and Go: h2load -c 16 -m 10 -n $N_MIX through each pairing (dialer-listener)"
  h2load_run mix-c-c "$H2R_URL/small.bin" "$N_MIX"
  MIX="C-C $H_RPS"
  h2load_run mix-c-go "https://127.0.0.1:$DP/proxy/cg/small.bin" "$N_MIX"
  MIX+=", C-Go $H_RPS"
  h2load_run mix-go-c "https://127.0.0.1:$GP/proxy/gc/small.bin" "$N_MIX"
  MIX+=", Go-C $H_RPS"
  h2load_run mix-go-go "https://127.0.0.1:$GP/proxy/gg/small.bin" "$N_MIX"
  MIX+=", Go-Go $H_RPS"
  stop_pids 5 "${MIX_PIDS[@]}" >/dev/null
  wait "${MIX_PIDS[@]}" 2>/dev/null || true
else
  log "C and Go: $GO/revsrv or revcli not found, pairings skipped"
fi

# ---------------------------------------------------------------------------- wrk (HTTP/1.1)
# wrk_run NAME URL: sets K_RPS K_P50 K_P99 K_ERR
wrk_run() {
  local out=$W/wrk-$1.txt
  wrk -t1 -c16 -d"${WRK_S}s" --latency "$2" >"$out" 2>&1 || true
  K_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  K_P50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  K_P99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  K_REQ=$(awk '/requests in/ {print $1}' "$out")
  K_ERR=$(awk '/Non-2xx or 3xx responses:/ {n += $5} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
  K_RPS=${K_RPS:--}
  [ "$K_ERR" = 0 ] && [ -n "$K_REQ" ] || problem "wrk $1: ${K_REQ:-0} requests, $K_ERR errors or non-2xx: $(grep -E 'errors|Non-2xx' "$out" | tr -s ' ' | tr '\n' ';')"
  log "wrk $1: $K_RPS req/s, p50 $K_P50 ms, p99 $K_P99 ms, errors $K_ERR"
}
# The two paths in turn, $H2_RUNS rounds (one wrk run swings by a third on a shared VM);
# each figure is the median of the rounds.
log "HTTP/1.1: wrk -t1 -c16 -d${WRK_S}s --latency, $H2_RUNS rounds"
H1=0
if [ "$(curl -sk --http1.1 -o /dev/null -w '%{http_code} %{http_version}' "$H2R_URL/small.bin" 2>/dev/null)" = "200 1.1" ]; then
  H1=1
else
  log "h2rev: curl --http1.1 fails: HTTP/1.1 front end not available"
fi
for r in $(seq 1 "$H2_RUNS"); do
  wrk_run "ref-$r" "$REF_URL/small.bin"
  M[wref-rps]+=" $K_RPS" M[wref-p50]+=" $K_P50" M[wref-p99]+=" $K_P99"
  if [ "$H1" = 1 ]; then
    wrk_run "h2rev-$r" "$H2R_URL/small.bin"
    M[wh2rev-rps]+=" $K_RPS" M[wh2rev-p50]+=" $K_P50" M[wh2rev-p99]+=" $K_P99"
  fi
done
RW_RPS=$(med wref-rps) RW_P50=$(med wref-p50) RW_P99=$(med wref-p99)
if [ "$H1" = 1 ]; then
  XW_RPS=$(med wh2rev-rps) XW_P50=$(med wh2rev-p50) XW_P99=$(med wh2rev-p99)
fi

# ---------------------------------------------------------------------------- transfers
# CPU time a process has used, in ms (scheduler statistics, else clock ticks).
cpu_ms() {
  awk '{printf "%d", $1 / 1000000}' "/proc/$1/schedstat" 2>/dev/null ||
    awk -v hz="$(getconf CLK_TCK)" '{printf "%d", ($14 + $15) * 1000 / hz}' "/proc/$1/stat"
}
# xfer NAME URL KIND(download|upload) RUN: appends the MiB/s of one transfer to M[NAME-KIND],
# and the CPU the proxy used for it to M[NAME-KIND-cpu] (h2rev: dialer + listener, also
# apart in M[h2rev-KIND-cpud] and M[h2rev-KIND-cpul]).
xfer() {
  local name=$1 url=$2 kind=$3 i=$4 out code size speed c0 c1 d0 l0
  if [ "$name" != h2rev ]; then c0=$(cpu_ms "$REF_WORKER"); else d0=$(cpu_ms "$DPID") l0=$(cpu_ms "$LPID"); fi
  if [ "$kind" = download ]; then
    out=$(curl -sk --http2 -o /dev/null -w '%{speed_download} %{http_code} %{size_download}' "$url" 2>&1) || true
  else
    out=$(curl -sk --http2 -X PUT -H 'Expect:' --data-binary "@$W/www/big.bin" -o /dev/null \
      -w '%{speed_upload} %{http_code} %{size_upload}' "$url" 2>&1) || true
  fi
  read -r speed code size <<<"$out"
  if [[ "$code" != 20? ]] || [ "$size" != $((XFER_MIB << 20)) ]; then
    problem "$kind $name run $i: status ${code:-none}, $size bytes of $((XFER_MIB << 20)) ($out)"
    return
  fi
  M[$name-$kind]+=" $(awk -v s="$speed" 'BEGIN {printf "%.1f", s / 1048576}')"
  if [ "$name" != h2rev ]; then
    c1=$(cpu_ms "$REF_WORKER")
    M[$name-$kind-cpu]+=" $((c1 - c0))"
  else
    c0=$(($(cpu_ms "$DPID") - d0)) c1=$(($(cpu_ms "$LPID") - l0))
    M[h2rev-$kind-cpu]+=" $((c0 + c1))" M[h2rev-$kind-cpud]+=" $c0" M[h2rev-$kind-cpul]+=" $c1"
  fi
}
# The two paths in turn, each round starting with the other one, so that neither always
# runs on the heels of the other's transfer; each figure is the median of the rounds.
log "transfers: $XFER_MIB MiB x $XFER_RUNS each way, the two paths in turn (median)"
for kind in download upload; do
  for i in $(seq 1 "$XFER_RUNS"); do
    if [ "$kind" = download ]; then r_url=$REF_URL/big.bin x_url=$H2R_URL/big.bin
    else r_url=$REF_URL/upload/ref.bin x_url=$H2R_URL/upload/h2rev.bin; fi
    if [ $((i % 2)) = 1 ]; then
      xfer ref "$r_url" "$kind" "$i"; xfer h2rev "$x_url" "$kind" "$i"
    else
      xfer h2rev "$x_url" "$kind" "$i"; xfer ref "$r_url" "$kind" "$i"
    fi
    [ "$kind" = download ] && xfer refb "$REFB_URL/big.bin" download "$i"
  done
  log "$kind ref: ${M[ref-$kind]:- none} MiB/s; h2rev: ${M[h2rev-$kind]:- none} MiB/s${M[refb-$kind]:+; ref with the default nginx buffering:${M[refb-$kind]} MiB/s}"
  log "$kind CPU ms: ref nginx worker:${M[ref-$kind-cpu]:- none}${M[refb-$kind-cpu]:+ (default buffering:${M[refb-$kind-cpu]})}; h2rev dialer:${M[h2rev-$kind-cpud]:- none}, listener:${M[h2rev-$kind-cpul]:- none}"
done
R_DL=$(med ref-download) X_DL=$(med h2rev-download) RB_DL=$(med refb-download)
R_UL=$(med ref-upload) X_UL=$(med h2rev-upload)
C[refb-download-cpu]=$(med refb-download-cpu)
for k in download upload; do
  for v in ref-$k-cpu h2rev-$k-cpu h2rev-$k-cpud h2rev-$k-cpul; do C[$v]=$(med "$v"); done
done
cmp -s "$W/www/upload/h2rev.bin" "$W/www/big.bin" || problem "upload through h2rev: stored file differs"

P_D=$(hwm "$DPID") P_L=$(hwm "$LPID") P_R=$(hwm "$REF_WORKER")
log "peak RSS so far: dialer $P_D KiB, listener $P_L KiB, reference worker $P_R KiB"

# ---------------------------------------------------------------------------- slow reader
log "slow reader: curl --limit-rate 1k of 100 MiB for ${SLOW_S}s (both paths at once)"
S_B=$(($(rss "$DPID") + $(rss "$LPID")))
# The listener keeps idle keep-alive connections to the upstream (its pool): count them first.
S_POOL=$(ss -Htnp state established "( dport = :$UP )" 2>/dev/null | grep -c "pid=$LPID," || true)
curl -sk --http2 --limit-rate 1k -o /dev/null "$H2R_URL/slow.bin" 2>/dev/null &
SC1=$!
PIDS+=("$SC1")
curl -sk --http2 --limit-rate 1k -o /dev/null "$REF_URL/slow.bin" 2>/dev/null &
SC2=$!
PIDS+=("$SC2")
S_MAX=0 S_RMAX=0 S_DMAX=0 S_LMAX=0 S_SAMPLES=()
for _ in $(seq 1 "$SLOW_S"); do
  sleep 1
  d=$(rss "$DPID") l=$(rss "$LPID") r=$(rss "$REF_WORKER")
  s=$((d + l))
  S_SAMPLES+=("$d+$l")
  [ "$d" -gt "$S_DMAX" ] && S_DMAX=$d
  [ "$l" -gt "$S_LMAX" ] && S_LMAX=$l
  [ "$s" -gt "$S_MAX" ] && S_MAX=$s
  [ "$r" -gt "$S_RMAX" ] && S_RMAX=$r
done
kill -0 "$SC1" 2>/dev/null || problem "slow reader through h2rev ended early"
kill "$SC1" "$SC2" 2>/dev/null || true
wait "$SC1" "$SC2" 2>/dev/null || true
log "slow reader: dialer+listener KiB each second: ${S_SAMPLES[*]} (before: $S_B in all)"
# Once the client is gone, the listener must let go of the upstream connection of that download.
sleep 3
S_LEFT=$(ss -Htnp state established "( dport = :$UP )" 2>/dev/null | grep -c "pid=$LPID," || true)
[ "$S_LEFT" -le "$S_POOL" ] || problem "slow reader killed: 3 s later the listener holds $S_LEFT upstream connection(s), $S_POOL before the download (the aborted download's connection is not closed)"
curl -sfk "$H2R_URL/small.bin" -o /dev/null || problem "h2rev did not answer after the slow reader"

# ---------------------------------------------------------------------------- idle listeners
log "idle listeners: $IDLE on a fresh dialer"
mkdir -p "$W/idle"
"$BIN/h2rev-dialer" --listen "127.0.0.1:$IDP" --self-signed-dir "$W/idle" --log-level info 2>>"$W/idle-dialer.log" &
IDPID=$!
PIDS+=("$IDPID")
wait_for 10 test -s "$W/idle/h2rev-dialer.crt" || die "idle dialer did not write its certificate"
wait_for 10 curl -sf --cacert "$W/idle/h2rev-dialer.crt" "https://127.0.0.1:$IDP/healthz" || die "idle dialer did not start"
sleep 0.5
I_B=$(rss "$IDPID")
attached() { grep -c 'attached from' "$W/idle-dialer.log" || true; }
i=0
while [ "$i" -lt "$IDLE" ]; do
  b=0
  while [ "$b" -lt 100 ] && [ "$i" -lt "$IDLE" ]; do
    "$BIN/h2rev-listener" --url "https://127.0.0.1:$IDP" --id "idle$i" --ca "$W/idle/h2rev-dialer.crt" \
      --upstream "http://127.0.0.1:$UP" --log-level warn 2>>"$W/idle-listeners.log" &
    IDLE_PIDS+=($!)
    i=$((i + 1)) b=$((b + 1))
  done
  for _ in $(seq 1 300); do [ "$(attached)" -ge "$i" ] && break; sleep 0.1; done
done
sleep 2
I_N=$(attached)
I_A=$(rss "$IDPID")
I_PER=$(awk -v a="$I_A" -v b="$I_B" -v n="$IDLE" 'BEGIN {printf "%.1f", (a - b) / n}')
I_LRSS=0
for p in "${IDLE_PIDS[@]}"; do I_LRSS=$((I_LRSS + $(rss "$p"))); done
I_LAVG=$((I_LRSS / IDLE))
log "idle: $I_N attached, dialer $I_B -> $I_A KiB ($I_PER KiB each); listener processes avg $I_LAVG KiB"
[ "$I_N" -ge "$IDLE" ] || problem "only $I_N of $IDLE idle listeners attached"
I_DET=$(grep -c 'detached' "$W/idle-dialer.log" || true)
[ "$I_DET" = 0 ] || problem "$I_DET idle listeners detached"
# spot check: a request through the first, middle and last of them
I_BAD=0
for k in 0 $((IDLE / 2)) $((IDLE - 1)); do
  curl -sf --cacert "$W/idle/h2rev-dialer.crt" "https://127.0.0.1:$IDP/proxy/idle$k/small.bin" -o /dev/null || I_BAD=$((I_BAD + 1))
done
[ "$I_BAD" = 0 ] || problem "$I_BAD of 3 requests through idle listeners failed"
I_LEFT=$(stop_pids 15 "${IDLE_PIDS[@]}" | wc -l)
[ "$I_LEFT" = 0 ] || problem "$I_LEFT idle listeners did not exit within 15 s of SIGTERM (killed)"
wait "${IDLE_PIDS[@]}" 2>/dev/null || true
IDLE_PIDS=()

died() { problem "the $1 died before the end: $(grep -hE 'signal|drain timeout' "$2" | head -n 2 | cut -d' ' -f1,4- | tr '\n' ';')"; }

# ---------------------------------------------------------------------------- 10,000 streams
# $CC_C connections of $CC_M streams each: $((CC_C * CC_M)) requests in flight at once, all
# through one listener, on fresh processes (a fresh reference nginx too), so that the peak
# RSS is this load's. The listener's connection serves --max-streams (1000) of them at
# once, the rest wait in the dialer's queue (--max-pending-dials); the reference opens one
# upstream connection per request in flight. A second listener (same dialer) serves at most
# $CC_CAP reverse connections at once (h2rev-listener --max-streams): the rest wait in the
# dialer's queue, and its upstream sees no more connections than that.
CC=$((CC_C * CC_M))
log "$CC streams: h2load -c $CC_C -m $CC_M -n $CC_N, $H2_RUNS rounds, fresh dialer, listener and reference"
sed "s/127.0.0.1:$REF /127.0.0.1:$CREF /; s/127.0.0.1:$REFB /127.0.0.1:$CREFB /; s#$W/ref.pid#$W/cref.pid#; s#$W/ref-nginx.log#$W/cref-nginx.log#" "$W/ref.conf" >"$W/cref.conf"
sed -i "s#/ref-#/cref-#g" "$W/cref.conf"
start_nginx cref
CREF_PID=$NGX_PID
mkdir -p "$W/cc"
"$BIN/h2rev-dialer" --listen "127.0.0.1:$CDP" --self-signed-dir "$W/cc" --log-level info 2>>"$W/cc-dialer.log" &
CDPID=$!
PIDS+=("$CDPID")
wait_for 10 test -s "$W/cc/h2rev-dialer.crt" || die "$CC-stream dialer did not write its certificate"
wait_for 10 curl -sf --cacert "$W/cc/h2rev-dialer.crt" "https://127.0.0.1:$CDP/healthz" || die "$CC-stream dialer did not start"
"$BIN/h2rev-listener" --url "https://127.0.0.1:$CDP" --id cc --ca "$W/cc/h2rev-dialer.crt" \
  --upstream "http://127.0.0.1:$UP" --log-level info 2>>"$W/cc-listener.log" &
CLPID=$!
PIDS+=("$CLPID")
"$BIN/h2rev-listener" --url "https://127.0.0.1:$CDP" --id cap --ca "$W/cc/h2rev-dialer.crt" \
  --upstream "http://127.0.0.1:$UP" --max-streams "$CC_CAP" --log-level info 2>>"$W/cc-listener-cap.log" &
CCPID=$!
PIDS+=("$CCPID")
wait_for 10 curl -sfk "https://127.0.0.1:$CDP/proxy/cap/small.bin" -o /dev/null || die "no answer through the capped listener"
wait_for 10 curl -sfk "https://127.0.0.1:$CDP/proxy/cc/small.bin" -o /dev/null || die "no answer through the $CC-stream pair"
wait_for 10 curl -sfk "https://127.0.0.1:$CREF/small.bin" -o /dev/null || die "the $CC-stream reference did not start"
CREF_WORKER=$(pgrep -P "$CREF_PID" | head -n 1)
# upconns PID FILE: PID's connections to the upstream, sampled every 0.2 s until killed
upconns() {
  while :; do
    ss -Htnp state established "( dport = :$UP )" 2>/dev/null | grep -c "pid=$1," || true
    sleep 0.2
  done >"$2"
}
declare -A CC_BAD=([ref]=0 [h2rev]=0 [cap]=0)
for r in $(seq 1 "$H2_RUNS"); do
  for side in ref h2rev cap; do
    case $side in
    ref) url=https://127.0.0.1:$CREF pid=$CREF_WORKER ;;
    h2rev) url=https://127.0.0.1:$CDP/proxy/cc pid=$CLPID ;;
    cap) url=https://127.0.0.1:$CDP/proxy/cap pid=$CCPID ;;
    esac
    upconns "$pid" "$W/upconns-$side-$r.txt" &
    SAMPLER=$!
    h2load_run "cc-$side-$r" "$url/small.bin" "$CC_N" "$CC_C" "$CC_M"
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    M[cc-$side-rps]+=" $H_RPS" M[cc-$side-p99]+=" $H_P99"
    CC_BAD[$side]=$((CC_BAD[$side] + CC_N - H_OK))
  done
done
upmax() { cat "$W"/upconns-"$1"-*.txt 2>/dev/null | sort -n | tail -n 1; }
CC_RRPS=$(med cc-ref-rps) CC_XRPS=$(med cc-h2rev-rps) CC_RP99=$(med cc-ref-p99) CC_XP99=$(med cc-h2rev-p99)
CC_CRPS=$(med cc-cap-rps) CC_CP99=$(med cc-cap-p99)
CC_RBAD=${CC_BAD[ref]} CC_XBAD=${CC_BAD[h2rev]} CC_CBAD=${CC_BAD[cap]}
CC_RUP=$(upmax ref) CC_XUP=$(upmax h2rev) CC_CUP=$(upmax cap)
CC_PD=$(hwm "$CDPID") CC_PL=$(hwm "$CLPID") CC_PR=$(hwm "$CREF_WORKER") CC_PC=$(hwm "$CCPID")
CC_AD=$(rss "$CDPID") CC_AL=$(rss "$CLPID")
log "$CC streams: peak RSS dialer $CC_PD KiB, listener $CC_PL KiB (now $CC_AD + $CC_AL), capped listener $CC_PC KiB, reference worker $CC_PR KiB"
log "$CC streams: upstream connections at most: reference $CC_RUP, listener $CC_XUP, capped listener $CC_CUP"
alive "$CDPID" || died "$CC-stream dialer" "$W/cc-dialer.log"
alive "$CLPID" || died "$CC-stream listener" "$W/cc-listener.log"
alive "$CCPID" || died "$CC-stream capped listener" "$W/cc-listener-cap.log"
CC_WARNS=$(cat "$W"/cc-*.log | grep -c ' warn: \| error: ' || true)
[ "$CC_WARNS" = 0 ] || problem "$CC_WARNS warn/error lines in the $CC-stream dialer/listener logs: $(cat "$W"/cc-*.log |
  grep ' warn: \| error: ' | cut -d' ' -f2- | sort | uniq -c | sort -rn | head -n 3 | tr -s ' ' | tr '\n' ';')"
stop_pids 10 "$CLPID" "$CCPID" "$CDPID" "$CREF_PID" >/dev/null
wait "$CLPID" "$CCPID" "$CDPID" "$CREF_PID" 2>/dev/null || true

# final health of the main pair (a signal from outside the benchmark shows in their logs)
alive "$DPID" || died dialer "$W/dialer.log"
alive "$LPID" || died listener "$W/listener.log"
# graceful stop: both tools drain on SIGTERM and must exit
t_stop=$(date +%s.%N)
stuck=$(stop_pids 30 "$LPID" "$DPID")
t_stop=$(awk -v a="$t_stop" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
if [ -n "$stuck" ]; then
  problem "did not exit within 30 s of SIGTERM (killed): $(echo "$stuck" | sed "s/^$DPID\$/dialer/; s/^$LPID\$/listener/" | tr '\n' ' ')"
else
  log "dialer and listener exited ${t_stop}s after SIGTERM"
fi
wait "$LPID" "$DPID" 2>/dev/null || true
grep -iE 'assert|abort|sanitizer|segv' "$W/dialer.log" "$W/listener.log" >/dev/null && problem "errors in the h2rev logs"
WARNS=$(cat "$W/dialer.log" "$W/listener.log" | grep -c ' warn: \| error: ' || true)
[ "$WARNS" = 0 ] || problem "$WARNS warn/error lines in the dialer/listener logs: $(cat "$W/dialer.log" "$W/listener.log" |
  grep ' warn: \| error: ' | cut -d' ' -f2- | sed 's/127\.0\.0\.1:[0-9]*/ADDR/g' | sort | uniq -c | sort -rn | head -n 4 |
  awk '{c = $1; $1 = ""; printf "%s%d x \"%s\"", s, c, substr($0, 2); s = "; "}')"

# ---------------------------------------------------------------------------- table
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@"; }
na="n/a (HTTP/1.1 front end not available)"
P_SUM=$((P_D + P_L))
{
  echo
  row metric reference h2rev "ratio h2rev/ref" target result
  row --- ---: ---: ---: --- ---
  row "small GET h2load -c 16 -m 10 -n $N_GET (median of $H2_RUNS): 2xx req/s" "$R_RPS" "$X_RPS" "$(ratio "$X_RPS" "$R_RPS")" "≥ 0.7× ref" \
    "$(pf ge "$(ratio "$X_RPS" "$R_RPS")" 0.7)"
  row "small GET h2load: mean latency (2xx), ms" "$R_MEAN" "$X_MEAN" "$(ratio "$X_MEAN" "$R_MEAN")" "-" "-"
  row "small GET h2load: p50 latency (2xx), ms" "$R_P50" "$X_P50" "$(ratio "$X_P50" "$R_P50")" "-" "-"
  row "small GET h2load: p99 latency (2xx), ms" "$R_P99" "$X_P99" "$(ratio "$X_P99" "$R_P99")" "≤ 2× ref" \
    "$(pf le "$(ratio "$X_P99" "$R_P99")" 2)"
  row "small GET h2load: requests not answered 2xx (of $((H2_RUNS * N_GET)))" "$R_BAD" "$X_BAD" "-" "0" "$(pf test "$X_BAD" = 0)"
  if [ -n "$MIX" ]; then
    row "small GET h2load -c 16 -m 10 -n $N_MIX by pairing (dialer-listener; Go: h2rev2's revsrv, revcli): 2xx req/s" \
      "-" "$MIX" "-" "-" "-"
  fi
  if [ "$H1" = 1 ]; then
    row "small GET wrk HTTP/1.1 -c16 ${WRK_S}s (median of $H2_RUNS): req/s" "$RW_RPS" "$XW_RPS" "$(ratio "$XW_RPS" "$RW_RPS")" "≥ 1.0× ref" \
      "$(pf ge "$(ratio "$XW_RPS" "$RW_RPS")" 1.0)"
    row "small GET wrk: p50 latency, ms" "$RW_P50" "$XW_P50" "$(ratio "$XW_P50" "$RW_P50")" "-" "-"
    row "small GET wrk: p99 latency, ms" "$RW_P99" "$XW_P99" "$(ratio "$XW_P99" "$RW_P99")" "≤ 1.3× ref" \
      "$(pf le "$(ratio "$XW_P99" "$RW_P99")" 1.3)"
  else
    row "small GET wrk HTTP/1.1 -c16 ${WRK_S}s (median of $H2_RUNS): req/s" "$RW_RPS" "$na" "-" "≥ 1.0× ref" "n/a"
    row "small GET wrk: p50 latency, ms" "$RW_P50" "$na" "-" "-" "-"
    row "small GET wrk: p99 latency, ms" "$RW_P99" "$na" "-" "≤ 1.3× ref" "n/a"
  fi
  row "download $XFER_MIB MiB (curl, median of $XFER_RUNS), MiB/s" "$R_DL" "$X_DL" "$(ratio "$X_DL" "$R_DL")" "≥ 0.8× ref" \
    "$(pf ge "$(ratio "$X_DL" "$R_DL")" 0.8)"
  row "upload $XFER_MIB MiB (curl PUT, median of $XFER_RUNS), MiB/s" "$R_UL" "$X_UL" "$(ratio "$X_UL" "$R_UL")" "≥ 0.9× ref" \
    "$(pf ge "$(ratio "$X_UL" "$R_UL")" 0.9)"
  row "download $XFER_MIB MiB, reference: nginx with its default proxy buffering (median of $XFER_RUNS), MiB/s" "$RB_DL" "$X_DL" \
    "$(ratio "$X_DL" "$RB_DL")" "-" "-"
  for k in download upload; do
    row "$k: CPU of the proxy per transfer (median), ms: nginx worker; dialer + listener" "${C[ref-$k-cpu]}" \
      "${C[h2rev-$k-cpu]} (${C[h2rev-$k-cpud]} + ${C[h2rev-$k-cpul]})" "$(ratio "${C[h2rev-$k-cpu]}" "${C[ref-$k-cpu]}")" "-" "-"
  done
  row "download: CPU per transfer (median), ms: nginx worker with its default proxy buffering; dialer + listener" \
    "${C[refb-download-cpu]}" "${C[h2rev-download-cpu]}" "$(ratio "${C[h2rev-download-cpu]}" "${C[refb-download-cpu]}")" "-" "-"
  row "peak RSS under load (VmHWM), MiB: dialer + listener" "nginx worker $(mib "$P_R")" \
    "$(mib "$P_SUM") ($(mib "$P_D") + $(mib "$P_L"))" "-" "≤ 32 MiB" "$(pf le "$P_SUM" $((32 << 10)))"
  row "RSS growth, requests $FIRST → $LONG (dialer + listener)" "-" \
    "$(awk -v g="$G_GROW" 'BEGIN {printf "%+d KiB", g}') ($(mib $((G_D1 + G_L1))) → $(mib $((G_D2 + G_L2))) MiB; after $GWARM: $(mib $((G_D0 + G_L0))))" "-" \
    "no growth (≤ 1 MiB)" "$(pf test "$G_GROW" -le 1024)"
  row "$CC streams through one listener: h2load -c $CC_C -m $CC_M -n $CC_N (median of $H2_RUNS): 2xx req/s" "$CC_RRPS" "$CC_XRPS" "$(ratio "$CC_XRPS" "$CC_RRPS")" "-" "-"
  row "$CC streams: p99 latency (2xx), ms" "$CC_RP99" "$CC_XP99" "$(ratio "$CC_XP99" "$CC_RP99")" "-" "-"
  row "$CC streams: requests not answered 2xx (of $((H2_RUNS * CC_N)))" "$CC_RBAD" "$CC_XBAD" "-" "0" "$(pf test "$CC_XBAD" = 0)"
  row "$CC streams: peak RSS (VmHWM), MiB: dialer + listener" "nginx worker $(mib "$CC_PR")" \
    "$(mib $((CC_PD + CC_PL))) ($(mib "$CC_PD") + $(mib "$CC_PL"))" "$(ratio $((CC_PD + CC_PL)) "$CC_PR")" "bounded (≤ 2× ref)" \
    "$(pf le "$(ratio $((CC_PD + CC_PL)) "$CC_PR")" 2)"
  row "$CC streams: upstream connections at most (sampled every 0.2 s)" "$CC_RUP" "$CC_XUP" "-" "-" "-"
  row "$CC streams, listener --max-streams $CC_CAP (same dialer): 2xx req/s; p99 ms" "$CC_RRPS; $CC_RP99" "$CC_CRPS; $CC_CP99" \
    "$(ratio "$CC_CRPS" "$CC_RRPS"); $(ratio "$CC_CP99" "$CC_RP99")" "-" "-"
  row "$CC streams, listener --max-streams $CC_CAP: not 2xx (of $((H2_RUNS * CC_N))); upstream connections at most; listener peak RSS MiB" \
    "-" "$CC_CBAD; $CC_CUP; $(mib "$CC_PC")" "-" "0; ≤ $CC_CAP" "$(pf test "$CC_CBAD" = 0 -a "${CC_CUP:-0}" -le "$CC_CAP")"
  row "dialer RSS per idle listener ($I_N of $IDLE attached), KiB" "-" "$I_PER" "-" "≤ 16 KiB" \
    "$(if [ "$I_N" -ge "$IDLE" ]; then pf le "$I_PER" 16; else echo FAIL; fi)"
  row "slow reader (1 KiB/s, ${SLOW_S}s): max RSS, MiB: dialer + listener" "nginx worker $(mib "$S_RMAX")" \
    "$(mib "$S_MAX") ($(mib "$S_DMAX") + $(mib "$S_LMAX"); before: $(mib "$S_B"))" "-" "bounded (≤ before + 16 MiB)" "$(pf le "$S_MAX" $((S_B + (16 << 10))))"
  echo
  echo "Machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'); h2rev $VERSION; $(h2load --version | head -n 1), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -n 1 | awk '{print "wrk " $2}'), curl $(curl --version | awk 'NR == 1 {print $2}')"
  echo "Command: bench/run.sh${ARGS:+ $ARGS} (mode $MODE): growth run also $G_RPS req/s; idle listener processes average $(mib "$I_LAVG") MiB RSS each; dialer and listener stopped ${t_stop}s after SIGTERM"
  if [ ${#PROBLEMS[@]} -gt 0 ]; then
    echo "Problems:"
    for p in "${PROBLEMS[@]}"; do echo "- $p"; done
  else
    echo "Problems: none (no failed requests, no crashes, no warnings in the h2rev logs)"
  fi
} | tee "$W/table.md"
# --full: every table of the benchmark in one run: many listeners on one dialer
# (bench/many.sh, 10,000 by default) and raw TCP beside ssh -R (--tcp).
if [ "$MODE" = full ]; then
  left=()
  for p in "${IDLE_PIDS[@]:-}" "${PIDS[@]:-}"; do [ -n "$p" ] && left+=("$p"); done
  stop_pids 5 "${left[@]}" >/dev/null
  PIDS=() IDLE_PIDS=()
  log "many listeners: bench/many.sh ${MANY:-10000}"
  echo
  BIN=$BIN bash "$SRC/bench/many.sh" "${MANY:-10000}" || echo "(bench/many.sh failed: exit $?)"
  log "raw TCP: bench/run.sh --tcp --no-build"
  echo
  bash "$0" --tcp --no-build ${REV:+--rev "$REV"} | tail -n +2 || echo "(bench/run.sh --tcp failed)"
fi
log "done in $(($(date +%s) - T0)) s"
