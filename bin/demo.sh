#!/usr/bin/env bash
# The main job on one machine: a local HTTP server (python3) exposed through
# the tunnel — h2rev-dialer (public side) and h2rev-listener (the NAT side).
# Runs until Ctrl-C; with --check it verifies one request and exits.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${H2REV_BIN:-$here/build/bin}
PORT=${H2REV_DEMO_PORT:-8443}
UPORT=${H2REV_DEMO_UPSTREAM_PORT:-8080}
work=$(mktemp -d /tmp/h2rev-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

for b in h2rev-dialer h2rev-listener; do
  [ -x "$BIN/$b" ] || { echo "demo: $BIN/$b is missing: build first" >&2; exit 1; }
done

# Something already on a port would be proxied (or answer) in the demo's place.
for p in "$PORT" "$UPORT"; do
  if (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null; then
    echo "demo: something already listens on 127.0.0.1:$p; stop it, or choose other ports" \
      "with H2REV_DEMO_PORT and H2REV_DEMO_UPSTREAM_PORT" >&2
    exit 1
  fi
done

mkdir -p "$work/www"
echo "Hello from behind the NAT, served through h2rev." > "$work/www/index.html"
python3 -m http.server "$UPORT" --bind 127.0.0.1 --directory "$work/www" \
  > "$work/upstream.log" 2>&1 &
upid=$!
pids+=($upid)
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$UPORT/" > /dev/null && break; sleep 0.1; done
kill -0 "$upid" 2> /dev/null || { echo "demo: the upstream did not start:" >&2; cat "$work/upstream.log" >&2; exit 1; }

"$BIN/h2rev-dialer" --listen "127.0.0.1:$PORT" --self-signed-dir "$work" 2> "$work/dialer.log" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$work/h2rev-dialer.crt" ] && break; sleep 0.1; done

"$BIN/h2rev-listener" --url "https://127.0.0.1:$PORT" --id demo --ca "$work/h2rev-dialer.crt" \
  --upstream "http://127.0.0.1:$UPORT" 2> "$work/listener.log" &
pids+=($!)

url="https://127.0.0.1:$PORT/proxy/demo/index.html"
ok=0
for _ in $(seq 1 100); do
  if out=$(curl -sf --cacert "$work/h2rev-dialer.crt" "$url" 2>/dev/null); then ok=1; break; fi
  sleep 0.1
done
if [ $ok != 1 ]; then
  echo "demo: no answer through the tunnel; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
fi
echo "tunnel is up: $out"
echo
echo "Try it:"
echo "  curl --cacert $work/h2rev-dialer.crt $url"
echo
[ "${1:-}" = "--check" ] && exit 0
echo "(dialer, listener and upstream logs in $work; Ctrl-C stops everything)"
tail -f "$work/dialer.log" "$work/listener.log" &
pids+=($!)
wait "${pids[0]}"
