# deps/install.sh in two parts: without arguments what building and running need (the
# README's main job), with --test also the test, fuzzing, analysis and benchmark tools; run
# against stand-ins for id, dpkg-query and apt-get, so that nothing is installed here.
source "$(dirname "$0")/e2elib.sh"

STUBS=$WORK/stubs
mkdir -p "$STUBS"
# id -u: $STUB_UID; dpkg-query: every package $STUB_STATUS; apt-get: its arguments recorded.
cat > "$STUBS/id" << 'SH'
#!/bin/sh
echo "${STUB_UID:-0}"
SH
cat > "$STUBS/dpkg-query" << 'SH'
#!/bin/sh
[ "$STUB_STATUS" = installed ] && printf 'install ok installed'
exit 0
SH
cat > "$STUBS/apt-get" << SH
#!/bin/sh
echo "\$*" >> "$WORK/apt-get.calls"
SH
chmod +x "$STUBS"/*

deps() { PATH=$STUBS:$PATH bash "$SRC/deps/install.sh" "$@"; }

# The lists, as a user who is not root is told them.
out=$(STUB_UID=1000 STUB_STATUS=missing deps 2>&1) && fail "not root, packages missing: exit 0"
for p in cmake gcc libuv1-dev libnghttp2-dev libssl-dev node-llhttp python3 curl; do
  [[ " $out " == *" $p "* || " $out " == *" $p;"* ]] || fail "build and run lack $p: $out"
done
for p in nginx-light wrk valgrind clang clang-tools openssh-server python3-prometheus-client; do
  [[ " $out " != *" $p "* ]] || fail "build and run include the test tool $p: $out"
done
ok "deps/install.sh: the build and the main job's packages, no test tool"
out=$(STUB_UID=1000 STUB_STATUS=missing deps --test 2>&1) && fail "--test, not root: exit 0"
for p in libuv1-dev curl nginx-light wrk valgrind clang libclang-rt-14-dev clang-tools \
  nghttp2-client openssh-server python3-prometheus-client dpkg-dev; do
  [[ " $out " == *" $p "* || " $out " == *" $p;"* ]] || fail "--test lacks $p: $out"
done
ok "deps/install.sh --test: those and the test, fuzzing, analysis and benchmark tools"

# As root: apt-get installs the missing ones; nothing when all are there.
STUB_UID=0 STUB_STATUS=missing deps 2> "$WORK/deps.err" || fail "as root: $(cat "$WORK/deps.err")"
grep -q '^install .*libuv1-dev' "$WORK/apt-get.calls" || fail "apt-get: $(cat "$WORK/apt-get.calls")"
! grep -q 'nginx-light' "$WORK/apt-get.calls" || fail "nginx-light installed for building"
rm -f "$WORK/apt-get.calls"
STUB_UID=1000 STUB_STATUS=installed deps > "$WORK/deps.out" 2>&1 || fail "all installed: exit $?"
STUB_UID=1000 STUB_STATUS=installed deps --test >> "$WORK/deps.out" 2>&1 || fail "--test, all installed"
[ ! -s "$WORK/deps.out" ] && [ ! -e "$WORK/apt-get.calls" ] || fail "all installed: not quiet"
out=$(deps --bogus 2>&1) && fail "an unknown argument: exit 0"
[[ $out == *usage* ]] || fail "an unknown argument: $out"
ok "as root: apt-get for the missing ones only; quiet when all are there; unknown arguments refused"
