# The README's C examples: each test/examples/*.c appears in README.md as it
# is (a ```c block after "<!-- test/examples/NAME.c -->"), and they work:
# the dialer example opens a reverse connection to the echo listener example
# as soon as it attaches, and gets its line back.
source "$(dirname "$0")/e2elib.sh"

BUILD=${H2REV_BUILD:-$SRC/build}
python3 - "$SRC" << 'PY' || fail "README.md and test/examples/ differ"
import pathlib, re, sys
src = pathlib.Path(sys.argv[1])
readme = (src / "README.md").read_text()
shown = dict(re.findall(r"<!-- (test/examples/[\w.-]+\.c) -->\n```c\n(.*?)```\n", readme, re.S))
bad = 0
for f in sorted((src / "test/examples").glob("*.c")):
    rel = str(f.relative_to(src))
    if rel not in shown:
        print(f"{rel}: not in README.md", file=sys.stderr); bad = 1
    elif shown[rel] != f.read_text():
        print(f"{rel}: README.md shows another version", file=sys.stderr); bad = 1
for rel in shown:
    if not (src / rel).exists():
        print(f"README.md shows {rel}, which does not exist", file=sys.stderr); bad = 1
sys.exit(bad)
PY
ok "README.md shows test/examples/*.c as they are"

[ -x "$BUILD/examples/dialer" ] && [ -x "$BUILD/examples/echo-listener" ] ||
  fail "examples not built in $BUILD/examples"
PORT=$(free_port)
"$BUILD/examples/dialer" "$PORT" > "$WORK/dialer.out" 2> "$WORK/dialer.log" &
DPID=$!
PIDS+=($DPID)
"$BUILD/examples/echo-listener" "http://127.0.0.1:$PORT/reverse" 2> "$WORK/listener.log" &
PIDS+=($!)
for _ in $(seq 1 200); do kill -0 "$DPID" 2> /dev/null || break; sleep 0.1; done
kill -0 "$DPID" 2> /dev/null && fail "the dialer example did not finish within 20 s"
wait "$DPID" || fail "the dialer example failed"
[ "$(cat "$WORK/dialer.out")" = "hello, app1" ] || fail "echo: '$(cat "$WORK/dialer.out")'"
ok "the dialer example got its line back from the echo listener example"
