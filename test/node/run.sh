#!/usr/bin/env bash
# The Node.js package's tests under ctest (test/CMakeLists.txt).
#   run.sh pack         npm pack a copy of lib/node into $H2REV_BUILD/node, then
#                       npm install the tarball, offline, into a fresh directory
#                       (the addon is compiled there, once for all the tests)
#   run.sh install      the README's promise: a short script in that directory
#                       exposes a Node http.Server through the C dialer, and fetch
#                       gets its answer
#   run.sh test FILE    node --test FILE against the installed package
# Exit 77 (skipped) without node or npm.
set -euo pipefail

src=${H2REV_SOURCE:?}
build=${H2REV_BUILD:?}
work=$build/node
app=$work/app
pkg=$app/node_modules/h2rev

command -v node >/dev/null 2>&1 || { echo "node not found: skipped"; exit 77; }
command -v npm >/dev/null 2>&1 || { echo "npm not found: skipped"; exit 77; }

export npm_config_cache=$work/npm-cache npm_config_update_notifier=false \
  npm_config_audit=false npm_config_fund=false npm_config_loglevel=warn JOBS=${JOBS:-2}

case ${1:-} in
pack)
  rm -rf "$work"
  mkdir -p "$work/src" "$app"
  # A copy, so that packing writes nothing into the source tree.
  (cd "$src/lib/node" && tar cf - --exclude=./build --exclude=./vendor --exclude='*.tgz' .) |
    (cd "$work/src" && tar xf -)
  tarball=$(cd "$work/src" && H2REV_SOURCE=$src npm pack --pack-destination "$work" | tail -n 1)
  tar tzf "$work/$tarball" > "$work/contents"
  echo "packed $tarball: $(wc -l < "$work/contents") files"
  grep -qx package/vendor/llhttp/llhttp.c "$work/contents"
  grep -qx package/vendor/h2rev/lib/dialer.c "$work/contents"
  # Installed as a user would, with no network: nothing but the tarball.
  (cd "$app" && npm init -y >/dev/null && npm install --offline "$work/$tarball")
  test -f "$pkg/build/Release/h2rev.node"
  echo "addon: $(stat -c %s "$pkg/build/Release/h2rev.node") bytes"
  # Host symbols: no second libuv, OpenSSL or nghttp2 linked in or loaded.
  if ldd "$pkg/build/Release/h2rev.node" | grep -E 'libuv|libssl|libcrypto|libnghttp2|libllhttp'; then
    echo "the addon links a library Node already carries" >&2
    exit 1
  fi
  exported=$(nm -D --defined-only "$pkg/build/Release/h2rev.node" | awk '{print $3}' | sort | tr '\n' ' ')
  if [ "$exported" != "napi_register_module_v1 node_api_module_get_api_version_v1 " ]; then
    echo "the addon exports more than its entry points: $exported" >&2
    exit 1
  fi
  ;;
install)
  test -f "$pkg/build/Release/h2rev.node" || { echo "run.sh pack first" >&2; exit 1; }
  dpid=
  trap '[ -z "$dpid" ] || kill "$dpid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
  port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
  "$build/bin/h2rev-dialer" --cleartext --listen "127.0.0.1:$port" --log-level warn &
  dpid=$!
  cat > "$app/expose.js" <<JS
const http = require('node:http');
const { forward } = require('h2rev');
const app = http.createServer((req, res) => res.end('hello from behind the NAT\n'));
app.listen(0, '127.0.0.1', async () => {
  const tunnel = await forward({ url: 'http://127.0.0.1:$port', id: 'myapp',
                                 to: 'http://127.0.0.1:' + app.address().port });
  console.log(await (await fetch(tunnel.url)).text());
  await tunnel.close(); app.close();
});
JS
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  out=$(cd "$app" && timeout 20 node expose.js)
  echo "$out"
  [ "$out" = "hello from behind the NAT" ]
  ;;
test)
  test -f "$pkg/build/Release/h2rev.node" || { echo "run.sh pack first" >&2; exit 1; }
  H2REV_NODE_PKG=$pkg exec node --test --test-reporter=tap "$src/test/node/$2"
  ;;
*)
  echo "usage: run.sh pack|install|test FILE" >&2
  exit 2
  ;;
esac
