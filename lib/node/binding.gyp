# The addon, "host symbols" style: h2rev's sources and llhttp are compiled in
# with hidden visibility; libuv, OpenSSL and nghttp2 are left undefined and
# resolved from the Node process that loads it (Node exports them). Linking a
# second copy (the system's libuv.so, libssl, libnghttp2) would mix two libuvs
# in one process, which aborts once a Worker that loaded the addon ends.
# vendor/ is filled by scripts/gather.js (from the repository and the Debian
# packages) before a build or a pack.
{
  'targets': [
    {
      'target_name': 'h2rev_llhttp',
      'type': 'static_library',
      'sources': ['<!@(node scripts/sources.js llhttp)'],
      'include_dirs': ['vendor/llhttp'],
      # Third-party code: its warnings are not ours to fix.
      'cflags': ['-fPIC', '-fvisibility=hidden', '-w'],
      'cflags_c': ['-std=gnu11'],
    },
    {
      'target_name': 'h2rev',
      'dependencies': ['h2rev_llhttp'],
      'sources': ['src/addon.c', '<!@(node scripts/sources.js h2rev)'],
      'include_dirs': ['vendor/h2rev/include', 'vendor/h2rev/lib', 'vendor/llhttp'],
      'defines': ['NAPI_VERSION=8'],
      'cflags': ['-fPIC', '-fvisibility=hidden', '-Wno-unused-parameter',
                 '-Wno-missing-field-initializers', '-Wno-cast-function-type'],
      'cflags_c': ['-std=gnu11'],
      'ldflags': ['-Wl,--exclude-libs,ALL'],
    },
  ],
}
