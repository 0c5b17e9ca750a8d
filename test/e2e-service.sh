# The service install (issue 16): systemd accepts the installed units
# (systemd-analyze verify, the man pages they name found where they were
# installed) and rates their hardening "OK" (systemd-analyze security); the
# committed man pages are what dist/man/gen.sh makes from the tools' --help.
source "$(dirname "$0")/e2elib.sh"
BUILD=${H2REV_BUILD:-$SRC/build}
[ -f "$BUILD/CMakeCache.txt" ] || { echo "skip: no build tree at $BUILD"; exit 77; }

# The manual pages follow --help.
mkdir -p "$WORK/man"
bash "$SRC/dist/man/gen.sh" "$BIN" "$WORK/man" || fail "dist/man/gen.sh"
for t in h2rev-dialer h2rev-listener h2rev-connect; do
  diff -u "$SRC/dist/man/$t.1" "$WORK/man/$t.1" > "$WORK/man.diff" ||
    fail "dist/man/$t.1 is not what --help says (run bash dist/man/gen.sh): $(head -20 "$WORK/man.diff")"
  # --help read whole, once: `--help | grep -m1` kills the tool with SIGPIPE (a failure
  # under pipefail) when its text is longer than the pipe takes at once.
  help=$("$BIN/$t" --help)
  # Every flag of --help's option lines has its entry.
  for f in $(grep -- '^  -' <<< "$help" | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    grep -q "^\.B .*${f//-/\\\\-}" "$SRC/dist/man/$t.1" || fail "$t.1 lacks $f"
  done
  if command -v man > /dev/null; then
    MANWIDTH=80 man --warnings -l "$SRC/dist/man/$t.1" > "$WORK/man.txt" 2> "$WORK/man.err" ||
      fail "man $t.1: $(cat "$WORK/man.err")"
    [ ! -s "$WORK/man.err" ] || fail "man $t.1 warns: $(cat "$WORK/man.err")"
    first=$(grep -m1 -o -- '^  --[a-z-]* [A-Z:]*' <<< "$help" | sed 's/^ *//; s/ *$//')
    grep -q -- "$first" "$WORK/man.txt" || fail "man $t.1 renders no options (no $first)"
  fi
done
ok "man pages: as dist/man/gen.sh makes them from --help, every flag, rendered without warnings"

command -v systemd-analyze > /dev/null || { echo "skip: no systemd-analyze"; exit 77; }
PREFIX=$WORK/prefix
cmake --install "$BUILD" --prefix "$PREFIX" > "$WORK/install.log" 2>&1 ||
  fail "cmake --install: $(tail -5 "$WORK/install.log")"
UNITS=$PREFIX/lib/systemd/system
for t in dialer listener; do
  u=$UNITS/h2rev-$t.service
  [ -f "$u" ] || fail "no $u"
  # Its ExecStart exists and its Documentation= page is found (MANPATH).
  MANPATH=$PREFIX/share/man systemd-analyze verify "$u" > "$WORK/verify.log" 2>&1 ||
    fail "systemd-analyze verify h2rev-$t.service: $(cat "$WORK/verify.log")"
  # Warnings (an unknown or misspelt setting is ignored, with a line) count.
  [ ! -s "$WORK/verify.log" ] || fail "systemd-analyze verify h2rev-$t.service: $(cat "$WORK/verify.log")"
  MANPATH=$PREFIX/share/man systemd-analyze security --offline=yes "$u" > "$WORK/security.log" 2>&1 ||
    fail "systemd-analyze security h2rev-$t.service: $(tail -3 "$WORK/security.log")"
  level=$(grep -o "Overall exposure level for h2rev-$t.service: [0-9.]* [A-Z]*" "$WORK/security.log")
  [[ $level == *" OK" ]] || fail "h2rev-$t.service hardening: $level"
  ok "h2rev-$t.service: verified, ${level#Overall }"
done
# The check itself catches a broken unit.
sed 's/^ProtectHome=yes/ProtectHome=bogus/' "$UNITS/h2rev-dialer.service" > "$WORK/h2rev-dialer.service"
MANPATH=$PREFIX/share/man systemd-analyze verify "$WORK/h2rev-dialer.service" > "$WORK/verify.log" 2>&1 || true
[ -s "$WORK/verify.log" ] || fail "systemd-analyze verify says nothing of a bad setting"
ok "systemd-analyze verify reports a bad setting"
