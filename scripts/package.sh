#!/usr/bin/env bash
# Builds the Debian package from what `make` built: `make install` into a staging root with PREFIX=/usr,
# the control files from packaging/, then dpkg-deb. Prints the package's path.
#   scripts/package.sh [VERSION]      (default: 0.<commits>.<short hash> of this tree)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-0.$(git rev-list --count HEAD 2>/dev/null || echo 0)~g$(git rev-parse --short HEAD 2>/dev/null || echo local)}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
make -s install DESTDIR="$stage" PREFIX=/usr SYSCONFDIR=/etc STRIP=-s >/dev/null
mkdir -p "$stage/DEBIAN"
sed "s|@VERSION@|$version|" packaging/control > "$stage/DEBIAN/control"
echo "Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)" >> "$stage/DEBIAN/control"
install -m 0755 packaging/postinst "$stage/DEBIAN/postinst"
# Everything under /etc is the admin's to edit: dpkg keeps their changes on upgrade.
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) > "$stage/DEBIAN/conffiles"
mkdir -p dist
out=dist/slurm-vm_${version}_amd64.deb
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$out" >/dev/null
echo "$out"
