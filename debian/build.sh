#!/usr/bin/env bash
# Builds the Debian packages into target/debian/ with cargo-deb (installed
# from crates.io if missing): leasegate (the gateway build: binary, unit,
# sysusers, tmpfiles, example config as /etc/leasegate/leasegate.toml) and
# leasegate-authority, for this machine's architecture; with --arm also
# leasegate for arm64 and armhf around the static binaries cross/build.sh
# made (variant "static" in Cargo.toml: the same files in the same places,
# depending on nothing but systemd).
# Usage: debian/build.sh [--arm]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo_deb_version=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --version "$cargo_deb_version" --locked --quiet
fi
cargo deb --quiet
cargo deb --quiet --variant authority
if [ "${1:-}" = "--arm" ]; then
  for target in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
    bin="target/cross/$target/release/leasegate"
    [ -x "$bin" ] || { echo "no $bin: run cross/build.sh $target first" >&2; exit 1; }
    # cargo-deb takes a --target binary from target/TARGET/release.
    mkdir -p "target/$target/release"
    cp "$bin" "target/$target/release/leasegate"
    cargo deb --quiet --no-build --no-strip --variant static --target "$target"
  done
fi
ls -l target/debian/*.deb
