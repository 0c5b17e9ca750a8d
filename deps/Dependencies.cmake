# Dependencies of h2rev: libuv, libnghttp2, OpenSSL (via pkg-config) and llhttp.
#
# llhttp: a system llhttp is preferred (pkg-config "libllhttp" or the CMake package
# "llhttp"); otherwise the generated C sources shipped by Debian's node-llhttp package
# are compiled into the static library h2rev_llhttp.
#
# Results:
#   H2REV_DEP_LIBS       list of targets the library links against
#   H2REV_LLHTTP_MODE    "pkgconfig", "cmake" or "bundled"
#   h2rev::deps          INTERFACE target linking all of the above (for tests and tools)

find_package(PkgConfig QUIET)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "h2rev: pkg-config not found; run deps/install.sh as root")
endif()

macro(h2rev_pkg prefix module what)
  pkg_check_modules(${prefix} QUIET IMPORTED_TARGET ${module})
  if(NOT ${prefix}_FOUND)
    message(FATAL_ERROR "h2rev: ${what} not found; run deps/install.sh as root")
  endif()
endmacro()

h2rev_pkg(H2REV_LIBUV libuv libuv)
h2rev_pkg(H2REV_NGHTTP2 libnghttp2 libnghttp2)
h2rev_pkg(H2REV_OPENSSL openssl "openssl (libssl-dev)")

set(H2REV_LLHTTP_SRC_DIR "/usr/share/llhttp" CACHE PATH "Directory with llhttp's generated C sources")
set(H2REV_LLHTTP_INCLUDE_DIR "/usr/share/include/llhttp" CACHE PATH "Directory with llhttp.h")

set(H2REV_LLHTTP_MODE "")
pkg_check_modules(H2REV_LLHTTP QUIET IMPORTED_TARGET libllhttp)
if(H2REV_LLHTTP_FOUND)
  set(H2REV_LLHTTP_MODE "pkgconfig")
  set(H2REV_LLHTTP_TARGET PkgConfig::H2REV_LLHTTP)
else()
  find_package(llhttp CONFIG QUIET)
  if(llhttp_FOUND)
    foreach(t llhttp::llhttp_shared llhttp::llhttp_static llhttp::llhttp)
      if(TARGET ${t})
        set(H2REV_LLHTTP_MODE "cmake")
        set(H2REV_LLHTTP_TARGET ${t})
        break()
      endif()
    endforeach()
  endif()
endif()

if(NOT H2REV_LLHTTP_MODE)
  set(_h2rev_llhttp_srcs
    "${H2REV_LLHTTP_SRC_DIR}/api.c"
    "${H2REV_LLHTTP_SRC_DIR}/http.c"
    "${H2REV_LLHTTP_SRC_DIR}/llhttp.c")
  foreach(f ${_h2rev_llhttp_srcs} "${H2REV_LLHTTP_INCLUDE_DIR}/llhttp.h")
    if(NOT EXISTS "${f}")
      message(FATAL_ERROR "h2rev: llhttp not found (no system llhttp, no ${f}); run deps/install.sh as root")
    endif()
  endforeach()
  add_library(h2rev_llhttp STATIC ${_h2rev_llhttp_srcs})
  set_target_properties(h2rev_llhttp PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    C_VISIBILITY_PRESET hidden
    C_STANDARD 11
    EXPORT_NAME llhttp)
  # Third-party code: never -Werror, no warnings.
  target_compile_options(h2rev_llhttp PRIVATE -w)
  target_include_directories(h2rev_llhttp SYSTEM PUBLIC
    $<BUILD_INTERFACE:${H2REV_LLHTTP_INCLUDE_DIR}>)
  set(H2REV_LLHTTP_MODE "bundled")
  set(H2REV_LLHTTP_TARGET h2rev_llhttp)
endif()

set(H2REV_DEP_LIBS
  PkgConfig::H2REV_LIBUV
  PkgConfig::H2REV_NGHTTP2
  PkgConfig::H2REV_OPENSSL
  ${H2REV_LLHTTP_TARGET})

add_library(h2rev_deps INTERFACE)
target_link_libraries(h2rev_deps INTERFACE ${H2REV_DEP_LIBS})
add_library(h2rev::deps ALIAS h2rev_deps)

message(STATUS "h2rev: libuv ${H2REV_LIBUV_VERSION}, libnghttp2 ${H2REV_NGHTTP2_VERSION}, "
               "openssl ${H2REV_OPENSSL_VERSION}, llhttp: ${H2REV_LLHTTP_MODE}")
