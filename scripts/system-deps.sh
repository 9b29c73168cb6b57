#!/usr/bin/env bash
# Installs the system packages the test suite needs, only those missing: redis-server (when no Redis
# answers), redis-sentinel (the Sentinel topology tests; without it they run `redis-server --sentinel`),
# Debian's docker.io (dockerd, for the private Docker engine of the tests), busybox-static (the
# rootfs of the offline-built test engine images) and haproxy (the Docker socket proxy of
# deploy/docker-socket-proxy, run by tests/unit/deploy/test_socket_proxy.py), chromium and its chromedriver (the
# UI test, tests/reliability/test_dev_stack.py), prometheus (promtool: the alert rules and dashboard
# queries of deploy/, tests/unit/deploy/test_manifests.py) and mmdebstrap (the Debian base image of the
# worker image's build test, tests/reliability/test_image.py).
# `system-deps.sh run`: only what `make run`'s dev stack uses (rtjobs/dev/stack.py): redis-server, dockerd and
# busybox-static (the demo engine image), iproute2 (to free a stopped dockerd's bridges).
# Exits 1 with one line naming the missing packages and the install command when it cannot install them.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ "${1:-}" != run ]; then
  command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  # Not root: nothing can be installed here, and what follows would fail later with a less clear error.
  echo "missing system packages: ${need[*]}; install them as root: apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
