#!/usr/bin/env bash
# Builds one self-contained sessiond executable: x86_64-unknown-linux-gnu, glibc linked statically
# (crt-static), SQLite bundled. It runs on a machine with no Rust and no SQLite. sessiond never
# resolves names (--listen takes IP literals), so static glibc's NSS caveat does not apply.
#
# Usage: packaging/build-static.sh [OUT]      (default OUT: target/static/sessiond)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/static/sessiond}"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --target-dir target/static-build
mkdir -p "$(dirname "$out")"
cp "target/static-build/$target/release/sessiond" "$out"
strip "$out" 2>/dev/null || true
echo "$out"
