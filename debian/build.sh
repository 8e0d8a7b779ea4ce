#!/usr/bin/env bash
# Builds the Debian packages into target/debian/ with cargo-deb (installed
# from crates.io if missing): leasegate (the gateway build: binary, unit,
# sysusers, tmpfiles, example config as /etc/leasegate/leasegate.toml) and
# leasegate-authority, for this machine's architecture; with --arm64 also
# leasegate for arm64 from the binary cross/build.sh made.
# Usage: debian/build.sh [--arm64]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --quiet
fi
cargo deb --quiet
cargo deb --quiet --variant authority
if [ "${1:-}" = "--arm64" ]; then
  target=aarch64-unknown-linux-gnu
  bin="target/cross/$target/release/leasegate"
  [ -x "$bin" ] || { echo "no $bin: run cross/build.sh $target first" >&2; exit 1; }
  # cargo-deb takes a --target binary from target/TARGET/release.
  mkdir -p "target/$target/release"
  cp "$bin" "target/$target/release/leasegate"
  cargo deb --quiet --no-build --no-strip --target "$target"
fi
ls -l target/debian/*.deb
