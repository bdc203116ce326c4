#!/usr/bin/env bash
# Installs what building, testing and running slurm-vm needs on Debian 12 (idempotent). Swift 6 itself
# must be on PATH (the project's machines carry it in /opt/swift). Sourced by demo.sh and test.sh.
set -euo pipefail
# libpcre2-dev: the ClassAd regex engine; libsqlite3-dev: the catalog; liblz4-dev: initramfs and kernel
# payloads; qemu-system-x86: the guest backend; gcc/libc6-dev: the statically linked guest agent;
# dpkg-dev/apt: the image builder downloads and unpacks Debian packages; cpio/lz4: inspecting images;
# Slurm (slurmctld, slurmd, client, libslurm-dev), munge and libjansson-dev: the SPANK plugin and the
# local cluster; make for the plugin; procps for pgrep in the cluster script; iproute2 (ip, tc) and
# coreutils (sha256sum) for the broadcast testbed of network namespaces; acpica-tools (iasl) checks the
# embedded VMM's ACPI tables against the reference disassembler; clang-format keeps the C parts as
# .clang-format says (swift format, for the Swift parts, comes with the toolchain); iputils-ping probes
# the job networks in their tests; mpich/libmpich-dev compile the MPI programs the job-network tests
# and benchmark run in guests (and on the hosts, as their baseline); nftables walls the job networks off;
# kmod (depmod, modprobe) indexes and loads the SVM sandbox's kernel modules (scripts/sandbox.py); file
# tells a static busybox from a dynamic one; prometheus brings promtool, which checks slurm-vmd's metrics
# (its server is not started: installed, it is not enabled where there is no systemd).
pkgs=(libpcre2-dev libsqlite3-dev liblz4-dev qemu-system-x86 gcc libc6-dev make cpio lz4 python3 python3-pip
      slurm-wlm slurmctld slurmd slurm-client libslurm-dev libjansson-dev munge procps iproute2 coreutils acpica-tools clang-format iputils-ping
      mpich libmpich-dev nftables kmod file prometheus)
need_apt=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p"); done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "deps: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# HTCondor's own ClassAd library is the reference the differential tests compare against.
python3 -c 'import classad2, pytest' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check htcondor pytest
command -v swift >/dev/null || { [ -x /opt/swift/usr/bin/swift ] && export PATH=/opt/swift/usr/bin:$PATH; }
command -v swift >/dev/null || { echo "slurm-vm needs Swift 6 on PATH" >&2; exit 1; }
