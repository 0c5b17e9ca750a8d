# The Debian package: `cpack -G DEB` in the build directory makes a .deb that installs the
# tools, the libraries, the header, the pkg-config and CMake files, the systemd units (naming
# /usr/bin) and the man pages, and depends on the libraries the binaries link.
source "$(dirname "$0")/e2elib.sh"
BUILD=${H2REV_BUILD:-$SRC/build}
[ -f "$BUILD/CMakeCache.txt" ] || { echo "skip: no build tree at $BUILD"; exit 77; }
[ -f "$BUILD/CPackConfig.cmake" ] || fail "no CPackConfig.cmake in $BUILD: the project does not include(CPack)"
command -v dpkg-deb > /dev/null || { echo "skip: dpkg-deb not found"; exit 77; }
command -v cpack > /dev/null || { echo "skip: cpack not found"; exit 77; }

(cd "$BUILD" && cpack -G DEB -B "$WORK/pkg") > "$WORK/cpack.log" 2>&1 ||
  fail "cpack -G DEB: $(tail -5 "$WORK/cpack.log")"
deb=$(ls "$WORK"/pkg/h2rev_*.deb 2> /dev/null | head -1)
[ -n "$deb" ] || fail "no h2rev_*.deb in $WORK/pkg: $(ls "$WORK/pkg")"
dpkg-deb -c "$deb" | awk '{print $6}' > "$WORK/contents.txt"
for f in ./usr/bin/h2rev-dialer ./usr/bin/h2rev-listener ./usr/bin/h2rev-connect \
  ./usr/include/h2rev.h ./usr/lib/libh2rev.a ./usr/lib/libh2rev.so.0.1.0 \
  ./usr/lib/pkgconfig/h2rev.pc ./usr/lib/cmake/h2rev/h2revConfig.cmake \
  ./usr/lib/systemd/system/h2rev-dialer.service ./usr/lib/systemd/system/h2rev-listener.service \
  ./usr/share/man/man1/h2rev-dialer.1 ./usr/share/man/man1/h2rev-listener.1 \
  ./usr/share/doc/h2rev/examples/dialer.env; do
  grep -qxF "$f" "$WORK/contents.txt" || fail "$deb lacks $f: $(cat "$WORK/contents.txt")"
done
# Nothing of the build or the tests (no test tool, no path outside /usr).
! grep -vE '^\./usr/' "$WORK/contents.txt" | grep -v '^\./$' | grep -q . ||
  fail "outside /usr: $(grep -vE '^\./usr/' "$WORK/contents.txt")"
! grep -qE 'attack|test' "$WORK/contents.txt" || fail "test files in the package"
ok "dpkg-deb -c: tools, libraries, header, pkg-config and CMake files, units, man pages"

dpkg-deb -f "$deb" Package Version Depends > "$WORK/fields.txt"
grep -qx 'Package: h2rev' "$WORK/fields.txt" || fail "fields: $(cat "$WORK/fields.txt")"
grep -q '^Depends:.*libuv1' "$WORK/fields.txt" && grep -q '^Depends:.*libssl3' "$WORK/fields.txt" &&
  grep -q '^Depends:.*libnghttp2' "$WORK/fields.txt" || fail "Depends: $(cat "$WORK/fields.txt")"
ok "control: $(tr '\n' ' ' < "$WORK/fields.txt")"

# What it installs works from where it lands.
dpkg-deb -x "$deb" "$WORK/root"
grep -qx 'ExecStart=/usr/bin/h2rev-dialer $H2REV_DIALER_FLAGS' \
  "$WORK/root/usr/lib/systemd/system/h2rev-dialer.service" ||
  fail "unit: $(grep ExecStart "$WORK/root/usr/lib/systemd/system/h2rev-dialer.service")"
"$WORK/root/usr/bin/h2rev-dialer" --version | grep -q '^h2rev-dialer ' || fail "dialer --version"
"$WORK/root/usr/bin/h2rev-listener" --version | grep -q '^h2rev-listener ' || fail "listener --version"
if command -v pkg-config > /dev/null; then
  cflags=$(PKG_CONFIG_PATH=$WORK/root/usr/lib/pkgconfig pkg-config --cflags h2rev) ||
    fail "pkg-config h2rev"
  inc=$(echo "$cflags" | grep -o -- '-I[^ ]*' | head -1)
  [ -n "$inc" ] && [ "$(realpath "${inc#-I}")" = "$(realpath "$WORK/root/usr/include")" ] ||
    fail "pkg-config --cflags: $cflags"
fi
ok "extracted: units name /usr/bin, the tools run, h2rev.pc points at its own tree"
