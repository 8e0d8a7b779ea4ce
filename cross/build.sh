#!/usr/bin/env bash
# Docker-free cross build of the gateway binary with Debian's Rust
# (rustc-web/cargo-web, which ship the standard library for other
# architectures as Debian packages).
#
#   cross/build.sh [--install] [--check] [TARGET]
#
# TARGET: aarch64-unknown-linux-gnu (default) or armv7-unknown-linux-gnueabihf.
# --install  apt-get the toolchain first (needs root; Debian bookworm).
# --check    run `leasegate --version` and the library's unit tests under qemu,
#            and print the stripped binary's size.
# The binary lands in target/cross/TARGET/release/leasegate.
set -euo pipefail

install=0 check=0 target=aarch64-unknown-linux-gnu
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) target=$arg ;;
  esac
done

case "$target" in
  aarch64-unknown-linux-gnu)
    debarch=arm64 gnu=aarch64-linux-gnu qemu=qemu-aarch64 ;;
  armv7-unknown-linux-gnueabihf)
    debarch=armhf gnu=arm-linux-gnueabihf qemu=qemu-arm ;;
  *) echo "unsupported target $target" >&2; exit 2 ;;
esac

if [ "$install" = 1 ]; then
  dpkg --add-architecture "$debarch"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    rustc-web cargo-web "libstd-rust-web-dev:$debarch" "libc6:$debarch" \
    "gcc-$gnu" "libc6-dev-$debarch-cross" qemu-user >/dev/null
fi

cd "$(dirname "$0")/.."
env_target=$(echo "$target" | tr 'a-z-' 'A-Z_')
export RUSTC=/usr/bin/rustc
export "CARGO_TARGET_${env_target}_LINKER=$gnu-gcc"
export "CC_${target//-/_}=$gnu-gcc"
# No `-L /usr/$gnu`: libstd-rust-web-dev pulls in the multiarch libc6:ARCH,
# and qemu falls back to the host's /lib/$gnu for paths missing under the
# prefix, so one process would get ld.so from the cross package and libc.so.6
# from libc6:ARCH. Those builds differ, and pthread_create then spins
# forever. Without a prefix, the multiarch loader and libc match.
export "CARGO_TARGET_${env_target}_RUNNER=$qemu"
cargo=/usr/bin/cargo
common=(--target "$target" --target-dir target/cross --no-default-features)

"$cargo" build --release "${common[@]}" --bin leasegate
bin="target/cross/$target/release/leasegate"
file "$bin" 2>/dev/null || true

if [ "$check" = 1 ]; then
  "$qemu" "$bin" --version
  "$cargo" test "${common[@]}" --lib
  size=$(stat -c %s "$bin")
  budget=$((6 * 1000 * 1000))
  echo "stripped size of $target leasegate: $size bytes ($((size / 1024)) KiB; budget $budget)"
  if [ "$size" -gt "$budget" ]; then
    echo "over the 6 MB budget" >&2
    exit 1
  fi
fi
