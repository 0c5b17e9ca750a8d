# Packaging as documented: `cmake --install` to a fresh prefix, then a program
# built against it with pkg-config (no flags but what h2rev.pc gives, shared
# and static, after moving the tree too) and with CMake's find_package(h2rev),
# each run. The static library exports the h2rev_* API and nothing else: a
# program defining h2r_log and llhttp_init of its own links with it.
source "$(dirname "$0")/e2elib.sh"

BUILD=${H2REV_BUILD:-$SRC/build}
for tool in cc pkg-config cmake nm; do
  command -v "$tool" > /dev/null || { echo "skip: no $tool"; exit 77; }
done
[ -f "$BUILD/CMakeCache.txt" ] || { echo "skip: no build tree at $BUILD"; exit 77; }

# An instrumented build installs an instrumented library: its users link the
# sanitizer runtimes too.
SAN=()
grep -q '^H2REV_ASAN:BOOL=ON' "$BUILD/CMakeCache.txt" && SAN+=(-fsanitize=address)
grep -q '^H2REV_UBSAN:BOOL=ON' "$BUILD/CMakeCache.txt" && SAN+=(-fsanitize=undefined)

PREFIX="$WORK/prefix"
cmake --install "$BUILD" --prefix "$PREFIX" > "$WORK/install.log" 2>&1 ||
  fail "cmake --install: $(tail -5 "$WORK/install.log")"
PC=$(find "$PREFIX" -name h2rev.pc | head -1)
[ -n "$PC" ] || fail "no h2rev.pc installed"
LIBDIR=$(dirname "$(dirname "$PC")")
ok "installed to a temporary prefix"

# The tools, their systemd units (naming the installed binaries), manual
# pages and example environment files, under a DESTDIR as a package build
# does: the files go below it, the paths inside them do not.
DEST=$WORK/destdir
DESTDIR=$DEST cmake --install "$BUILD" --prefix /usr > "$WORK/install-destdir.log" 2>&1 ||
  fail "cmake --install with DESTDIR: $(tail -5 "$WORK/install-destdir.log")"
for f in bin/h2rev-dialer bin/h2rev-listener bin/h2rev-connect lib/systemd/system/h2rev-dialer.service \
  lib/systemd/system/h2rev-listener.service share/man/man1/h2rev-dialer.1 \
  share/man/man1/h2rev-listener.1 share/man/man1/h2rev-connect.1 share/doc/h2rev/examples/dialer.env \
  share/doc/h2rev/examples/listener.env include/h2rev.h; do
  [ -s "$DEST/usr/$f" ] || fail "DESTDIR install lacks /usr/$f"
done
for t in dialer listener; do
  grep -qx "ExecStart=/usr/bin/h2rev-$t \$H2REV_${t^^}_FLAGS" "$DEST/usr/lib/systemd/system/h2rev-$t.service" ||
    fail "h2rev-$t.service: $(grep ExecStart "$DEST/usr/lib/systemd/system/h2rev-$t.service")"
  "$DEST/usr/bin/h2rev-$t" --version | grep -q "h2rev-$t $(grep -o '"[0-9.]*"' "$SRC/include/h2rev.h" | head -1 | tr -d '"')" ||
    fail "the installed h2rev-$t does not run"
done
"$DEST/usr/bin/h2rev-connect" --version | grep -q "^h2rev-connect [0-9]" || fail "the installed h2rev-connect does not run"
! grep -rq "$DEST" "$DEST/usr/lib/systemd" || fail "a unit names the DESTDIR"
[ -z "$(find "$DEST" -path "$DEST/usr" -prune -o -print | grep -v "^$DEST\$")" ] ||
  fail "installed outside the prefix: $(find "$DEST" -path "$DEST/usr" -prune -o -print | head -3)"
grep -q "ExecStart=$PREFIX/bin/h2rev-dialer " "$PREFIX/lib/systemd/system/h2rev-dialer.service" ||
  fail "--prefix $PREFIX: the unit does not name the binary there"
ok "cmake --install: tools, systemd units (ExecStart at the prefix, not the DESTDIR), man pages, examples"

syms=$(nm -g --defined-only "$LIBDIR/libh2rev.a" | grep -E '^[0-9a-f]+ [A-Za-z] ' | grep -v ' h2rev_' || true)
[ -z "$syms" ] || fail "libh2rev.a exports internal symbols: $(echo "$syms" | head -5)"
[ -n "$(nm -g --defined-only "$LIBDIR/libh2rev.a" | grep ' T h2rev_dial$')" ] ||
  fail "libh2rev.a lacks h2rev_dial"
ok "libh2rev.a exports only h2rev_*"

mkdir -p "$WORK/app"
cat > "$WORK/app/app.c" << 'EOF'
#include <h2rev.h>
#include <stdio.h>
#include <string.h>

#ifdef CLASH /* names the library uses inside: no clash with a static libh2rev */
void h2r_log(void);
void h2r_log(void) {}
int llhttp_init(void);
int llhttp_init(void) {
  return 0;
}
#endif

static int closed;

static void on_closed(h2rev_dialer_t *d) {
  (void)d;
  closed = 1;
}

int main(void) {
  uv_loop_t *loop = uv_default_loop();
  h2rev_dialer_t d;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  if (h2rev_dialer_init(loop, &d, NULL) != 0 ||
      h2rev_dialer_listen(&d, (const struct sockaddr *)&a, NULL) != 0)
    return 1;
  h2rev_dialer_close(&d, on_closed);
  uv_run(loop, UV_RUN_DEFAULT);
  printf("h2rev %s, dialer %s\n", h2rev_version(), closed ? "closed" : "open");
  return closed && strcmp(h2rev_version(), H2REV_VERSION_STRING) == 0 ? 0 : 1;
}
EOF

# pkg_build DIR: builds and runs the program against the tree in DIR.
pkg_build() {
  local pcdir
  pcdir=$(dirname "$(find "$1" -name h2rev.pc | head -1)")
  local libdir
  libdir=$(dirname "$pcdir")
  export PKG_CONFIG_PATH="$pcdir"
  # shellcheck disable=SC2046
  cc "${SAN[@]}" "$WORK/app/app.c" $(pkg-config --cflags --libs h2rev) -o "$WORK/app/shared" \
    2> "$WORK/cc.log" || fail "pkg-config build (shared): $(cat "$WORK/cc.log")"
  LD_LIBRARY_PATH="$libdir" "$WORK/app/shared" > "$WORK/run.log" 2>&1 ||
    fail "shared program: $(cat "$WORK/run.log")"
  grep -q "dialer closed" "$WORK/run.log" || fail "shared program: $(cat "$WORK/run.log")"
  local libs
  libs=$(pkg-config --static --libs h2rev)
  # shellcheck disable=SC2086
  cc "${SAN[@]}" -DCLASH "$WORK/app/app.c" $(pkg-config --cflags h2rev) ${libs/-lh2rev/-l:libh2rev.a} \
    -o "$WORK/app/static" 2> "$WORK/cc.log" || fail "pkg-config build (static): $(cat "$WORK/cc.log")"
  ldd "$WORK/app/static" | grep -q libh2rev && fail "static program loads libh2rev.so"
  "$WORK/app/static" > "$WORK/run.log" 2>&1 || fail "static program: $(cat "$WORK/run.log")"
  unset PKG_CONFIG_PATH
}

pkg_build "$PREFIX"
ok "pkg-config: shared and static programs build and run"

# Relocatable: the same tree, moved.
mv "$PREFIX" "$WORK/moved"
PREFIX="$WORK/moved"
pkg_build "$PREFIX"
ok "pkg-config: the tree works after a move (\${pcfiledir})"

cat > "$WORK/app/CMakeLists.txt" << 'EOF'
cmake_minimum_required(VERSION 3.18)
project(h2rev_consumer C)
find_package(h2rev 0.1 REQUIRED)
add_executable(app_shared app.c)
target_link_libraries(app_shared PRIVATE h2rev::h2rev)
add_executable(app_static app.c)
target_compile_definitions(app_static PRIVATE CLASH)
target_link_libraries(app_static PRIVATE h2rev::h2rev_static)
EOF
flags="${SAN[*]}"
cmake -S "$WORK/app" -B "$WORK/app/build" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$WORK/cmake.log" 2>&1 ||
  fail "find_package(h2rev): $(tail -20 "$WORK/cmake.log")"
cmake --build "$WORK/app/build" > "$WORK/cmake-build.log" 2>&1 ||
  fail "CMake build: $(tail -20 "$WORK/cmake-build.log")"
"$WORK/app/build/app_shared" > "$WORK/run.log" 2>&1 || fail "app_shared: $(cat "$WORK/run.log")"
"$WORK/app/build/app_static" > "$WORK/run.log" 2>&1 || fail "app_static: $(cat "$WORK/run.log")"
ok "find_package(h2rev): h2rev::h2rev and h2rev::h2rev_static build and run"
