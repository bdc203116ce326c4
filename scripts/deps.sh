#!/usr/bin/env bash
# Installs what building and testing slurm-vm needs on Debian 12 (idempotent). Swift 6 itself must be
# on PATH (the project's machines carry it in /opt/swift).
set -euo pipefail
need_apt=()
dpkg -s libpcre2-dev >/dev/null 2>&1 || need_apt+=(libpcre2-dev)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# HTCondor's own ClassAd library is the reference the differential tests compare against.
python3 -c 'import classad2, pytest' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check htcondor pytest
command -v swift >/dev/null || { [ -x /opt/swift/usr/bin/swift ] && export PATH=/opt/swift/usr/bin:$PATH; }
command -v swift >/dev/null || { echo "slurm-vm needs Swift 6 on PATH" >&2; exit 1; }
