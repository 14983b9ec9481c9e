#!/usr/bin/env bash
# Builds a Debian package of sessiond with plain dpkg-deb: the static binary, the systemd unit, the
# environment file (a conffile) and maintainer scripts that create the `sessiond` system user.
#
# Usage: packaging/build-deb.sh [BINARY] [OUTDIR]
#   BINARY defaults to a fresh packaging/build-static.sh build; OUTDIR to target/deb.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-}"
outdir="${2:-target/deb}"
if [ -z "$binary" ]; then
  binary=$(packaging/build-static.sh | tail -n 1)
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$binary" "$stage/usr/bin/sessiond"
install -D -m 0644 packaging/sessiond.service "$stage/lib/systemd/system/sessiond.service"
install -D -m 0640 packaging/sessiond.env "$stage/etc/sessiond/sessiond.env"
install -D -m 0644 README.md "$stage/usr/share/doc/sessiond/README.md"
mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: sessiond
Version: $version
Section: net
Priority: optional
Architecture: amd64
Maintainer: sessiond maintainers <sessiond@localhost>
Depends: adduser
Description: self-hosted session control plane
 One static binary and one SQLite file that keep the authoritative record of
 share, workspace and runtime sessions for gateways, daemons and SDKs.
CONTROL
echo "/etc/sessiond/sessiond.env" > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd sessiond >/dev/null; then
    adduser --system --group --home /var/lib/sessiond --no-create-home --shell /usr/sbin/nologin sessiond
  fi
  chgrp sessiond /etc/sessiond/sessiond.env
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl enable sessiond.service >/dev/null || true
  fi
fi
POSTINST
cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop sessiond.service >/dev/null || true
fi
PRERM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm"
mkdir -p "$outdir"
deb="$outdir/sessiond_${version}_amd64.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
