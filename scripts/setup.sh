#!/usr/bin/env bash
# Installs the system packages Ferry builds and tests with (Debian). Idempotent; needs root.
set -euo pipefail
# libc6-dev, libstdc++-12-dev and libsqlite3-dev also hold the static libraries the `ferry` front end
# is linked from (libc.a, libstdc++.a, libsqlite3.a).
packages=(xfsprogs acl attr rsync util-linux libsqlite3-dev libc6-dev libstdc++-12-dev python3 bc fuse3 libfuse3-dev pkg-config gcc strace postgresql-15 libpam0g-dev procps)
# `scripts/setup.sh --test`: also what the web tests drive (headless Chromium, its driver, the
# Python test runner and Selenium).
if [ "${1:-}" = "--test" ]; then packages+=(chromium chromium-driver python3-pip passwd openssl); fi
# Installs Debian packages, the package lists read first (once per run).
apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "setup: need root to install: $*" >&2; exit 1; fi
  [ "${FERRY_APT_UPDATED:-}" = 1 ] || apt-get update -qq
  FERRY_APT_UPDATED=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (expected Swift 6.x, e.g. /opt/swift/usr/bin)" >&2; exit 1; }
if [ "${1:-}" = "--test" ]; then
  # Into whichever python3 is first on PATH. Debian's own refuses pip (PEP 668: "externally
  # managed"); for it, Debian's packages of the three instead.
  if ! python3 -c 'import selenium, pytest, requests' 2>/dev/null; then
    # (A virtual environment's python3 may use pip whatever its base says: PEP 668.)
    if python3 -c 'import sys, sysconfig, os; sys.exit(sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
      python3 -m pip install -q 'selenium<4.52' pytest requests
    else
      apt_install python3-selenium python3-pytest python3-requests
    fi
    python3 -c 'import selenium, pytest, requests'
  fi
fi
