#!/usr/bin/env bash
# Installs the dependencies of h2rev on Debian 12:
#   bash deps/install.sh          what building and running need (the main
#                                 job: bin/demo.sh);
#   bash deps/install.sh --test   that, and what the tests, the fuzzing, the
#                                 static analysis and the benchmarks need.
# Idempotent: quiet and network-free when everything is already installed.
# Must run as root when something is missing.
set -euo pipefail

usage="usage: bash deps/install.sh [--test]"
test_tools=0
for a in "$@"; do
  case $a in
  --test) test_tools=1 ;;
  -h | --help) echo "$usage"; exit 0 ;;
  *) echo "deps/install.sh: unknown argument \"$a\"; $usage" >&2; exit 2 ;;
  esac
done

PACKAGES=(
  # build
  cmake pkg-config gcc make libuv1-dev libnghttp2-dev libssl-dev node-llhttp openssl
  # the main job (bin/demo.sh): its upstream (python3 -m http.server) and client
  python3 curl
)
TEST_PACKAGES=(
  # fuzzing (test/fuzz): clang, and libFuzzer (libclang_rt.fuzzer-x86_64.a),
  # which clang does not pull in
  clang libclang-rt-14-dev
  # static analysis (.ci/run): scan-build
  clang-tools
  # test tools; e2e-admin parses /metrics with the Prometheus client's parser
  nghttp2-client nginx-light wrk valgrind python3-prometheus-client
  # e2e-tcp and bench/run.sh --tcp: a private sshd as the TCP service, ssh and scp as clients
  openssh-server openssh-client
  # e2e-deb: cpack -G DEB reads the package's dependencies with dpkg-shlibdeps
  dpkg-dev
  # e2e-replicas: a load balancer in front of several dialer replicas
  haproxy
)
if [ "$test_tools" = 1 ]; then
  PACKAGES+=("${TEST_PACKAGES[@]}")
  # The Node.js package (lib/node, test/node): node-gyp links with g++. Node itself
  # comes from Debian only where no node is installed: a NodeSource nodejs carries
  # npm, node-gyp and its headers, and Debian's npm would conflict with it.
  PACKAGES+=(g++)
  if ! command -v node >/dev/null 2>&1; then
    PACKAGES+=(nodejs npm libnode-dev)
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [ "$status" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps/install.sh: missing packages: ${missing[*]}; run this script as root" >&2
  exit 1
fi

echo "deps/install.sh: installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Among the test tools are servers (nginx-light, openssh-server, haproxy) that the tests run
# privately on loopback ports: their system services are neither started by the
# install (policy-rc.d, unless the machine has one of its own) nor enabled for
# the next boot, so installing them opens no port on the machine.
services=()
for p in "${missing[@]}"; do
  case $p in
  nginx-light) services+=(nginx.service) ;;
  openssh-server) services+=(ssh.service ssh.socket) ;;
  haproxy) services+=(haproxy.service) ;;
  esac
done
policy=/usr/sbin/policy-rc.d
if [ ${#services[@]} -gt 0 ] && [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# deps/install.sh: no service starts while it installs\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ ${#services[@]} -gt 0 ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable "${services[@]}" >/dev/null 2>&1 || true
fi
