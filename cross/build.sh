#!/usr/bin/env bash
# Docker-free cross builds of the gateway binary (README "ARM gateways").
#
#   cross/build.sh [--install] [--check] [--unit] [--e2e] [TARGET...]
#
# TARGET (default aarch64-unknown-linux-musl; several may be given):
#   aarch64-unknown-linux-musl       static, any 64-bit ARM Linux
#   armv7-unknown-linux-musleabihf   static, any 32-bit ARMv7 Linux (hard float)
#   aarch64-unknown-linux-gnu        dynamic, glibc 2.36 or newer (Debian 12)
# --install  install the toolchain even if it looks present (needs root).
#            Without it, what is missing is installed when running as root.
# --check    the stripped binary is at most 4 MB, a musl build is static
#            (`file`), ring's ARM assembly is in it, `leasegate --version`
#            runs under qemu (no sysroot, no -L).
# --unit     the library's unit tests pass under qemu. CI runs them for
#            armv7 only: the 32-bit target is where word size and
#            alignment differ from the x86-64 runs, and each target's test
#            build costs about five minutes of CI's hour.
# --e2e      the end-to-end tests tests/forward.rs and tests/lifecycle.rs
#            (real Mosquitto, InfluxDB 1.x and authority) with this binary
#            under qemu; musl targets only.
# The binary lands in target/cross/TARGET/release/leasegate.
#
# The static builds use Debian's Rust (rustc-web, cargo-web and its
# standard library's source, rust-web-src) and build the standard library
# for the target with -Zbuild-std (RUSTC_BOOTSTRAP=1 lets a stable compiler
# take the flag), with zig as the C compiler and linker through
# cargo-zigbuild (both from PyPI, pinned below, in a virtualenv under
# LEASEGATE_CROSS_TOOLS, default ~/.cache/leasegate-cross). zig brings
# musl's C runtime, hence `-C link-self-contained=no`.
# Where the rustup toolchain on PATH already has the static targets'
# standard library (`rustup target add TARGET` for every musl target
# asked for), that is used instead: rustup's cargo through cargo-zigbuild,
# no -Zbuild-std, no Debian Rust. LEASEGATE_CROSS_STD=source forces the
# first way, =rustup the second. The glibc build uses Debian's prebuilt
# standard library for arm64 (libstd-rust-web-dev:arm64).
set -euo pipefail

ziglang_version=0.17.1
zigbuild_version=0.24.1
size_budget=$((4 * 1000 * 1000))

install=0 check=0 unit=0 e2e=0 targets=()
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    --check) check=1 ;;
    --unit) unit=1 ;;
    --e2e) e2e=1 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) targets+=("$arg") ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-musl)

cd "$(dirname "$0")/.."
tools=${LEASEGATE_CROSS_TOOLS:-$HOME/.cache/leasegate-cross}

say() { echo "cross/build.sh: $*"; }
die() { echo "cross/build.sh: $*" >&2; exit 1; }

apt_install() {
  [ "$(id -u)" = 0 ] || die "missing $*: install them (Debian: apt-get install $*) or run as root"
  if [ -z "${apt_updated:-}" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Does the rustup toolchain on PATH have TARGET's standard library?
rustup_has_std() {
  command -v rustup >/dev/null 2>&1 || return 1
  local sysroot
  sysroot=$(rustc --print sysroot 2>/dev/null) || return 1
  ls "$sysroot/lib/rustlib/$1/lib/"libstd-*.rlib >/dev/null 2>&1
}

# How the static targets get their standard library: `rustup` (prebuilt,
# from rustup) or `source` (Debian's Rust and -Zbuild-std).
choose_std() {
  local target
  case "${LEASEGATE_CROSS_STD:-auto}" in
    source) std=source ;;
    rustup)
      for target in "${musl[@]}"; do
        rustup_has_std "$target" || die "LEASEGATE_CROSS_STD=rustup, but rustup has no $target (rustup target add $target)"
      done
      std=rustup
      ;;
    auto)
      std=rustup
      for target in "${musl[@]}"; do
        rustup_has_std "$target" || std=source
      done
      ;;
    *) die "LEASEGATE_CROSS_STD must be auto, source or rustup, not ${LEASEGATE_CROSS_STD}" ;;
  esac
}

# Debian's compiler, cargo and the standard library's source (for
# -Zbuild-std) unless rustup brings the static targets' standard library;
# qemu-user and file for the checks.
base_tools() {
  local want=()
  if [ "$std" = source ] || [ ${#gnu[@]} -gt 0 ]; then
    if [ "$install" = 1 ] || [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ]; then
      want+=(rustc-web cargo-web)
    fi
  fi
  if [ "$std" = source ]; then
    if [ "$install" = 1 ] || ! ls -d /usr/src/rustc-*/library >/dev/null 2>&1; then
      want+=(rust-web-src)
    fi
  fi
  if [ "$install" = 1 ] || ! command -v qemu-arm >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    want+=(qemu-user)
  fi
  command -v file >/dev/null || want+=(file)
  command -v ar >/dev/null || want+=(binutils)
  [ ${#want[@]} -eq 0 ] || apt_install "${want[@]}"
}

# zig and cargo-zigbuild, pinned, in a virtualenv of their own.
zig_tools() {
  local venv="$tools/venv-zig-$ziglang_version-zigbuild-$zigbuild_version"
  if [ "$install" = 1 ] || [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      apt_install python3 python3-venv
      /usr/bin/python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "ziglang==$ziglang_version" "cargo-zigbuild==$zigbuild_version"
  fi
  # cargo-zigbuild runs `python3 -m ziglang` when no `zig` is on PATH: the
  # virtualenv's python3 has it.
  export PATH="$venv/bin:$PATH"
}

# The GNU cross compiler and Debian's prebuilt standard library for arm64.
gnu_tools() {
  local want=()
  dpkg -s libstd-rust-web-dev:arm64 >/dev/null 2>&1 || want+=(libstd-rust-web-dev:arm64 libc6:arm64)
  command -v aarch64-linux-gnu-gcc >/dev/null || want+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  [ "$install" = 1 ] && want=(libstd-rust-web-dev:arm64 libc6:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  if [ ${#want[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] && dpkg --add-architecture arm64
    apt_updated=
    apt_install "${want[@]}"
  fi
}

# Runs cargo (build or test) for the static targets in one invocation
# (cargo then keeps both cores busy: each target's final, single-threaded
# LTO step runs beside the other's).
musl_cargo() {
  local command=$1
  shift
  (
    export RUSTFLAGS="-C link-self-contained=no"
    local args=() target
    for target in "${musl[@]}"; do
      export "CARGO_TARGET_$(env_name "$target")_RUNNER=$(qemu_for "$target")"
      args+=(--target "$target")
    done
    if [ "$std" = source ]; then
      export CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
      args+=(-Zbuild-std=std,panic_abort)
    fi
    [ "$command" = build ] && command=zigbuild
    cargo-zigbuild "$command" "${args[@]}" \
      --target-dir target/cross --no-default-features "$@"
  )
}

gnu_cargo() {
  local command=$1 target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu
  shift
  (
    # RUSTC_BOOTSTRAP as for the static builds: the host-side build scripts
    # and proc macros in target/cross are shared, and thiserror's build
    # script reruns (and everything after it) when the variable flips.
    export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
    export "CARGO_TARGET_$(env_name $target)_LINKER=$gnu-gcc"
    export "CC_${target//-/_}=$gnu-gcc"
    # No `-L /usr/$gnu`: libstd-rust-web-dev pulls in the multiarch
    # libc6:arm64, and qemu falls back to the host's /lib/$gnu for paths
    # missing under a prefix, so one process would get ld.so from the cross
    # package and libc.so.6 from libc6:arm64. Those builds differ, and
    # pthread_create then spins forever. Without a prefix, the multiarch
    # loader and libc match.
    export "CARGO_TARGET_$(env_name $target)_RUNNER=qemu-aarch64"
    /usr/bin/cargo "$command" --target "$target" --target-dir target/cross \
      --no-default-features "$@"
  )
}

env_name() { echo "$1" | tr 'a-z-' 'A-Z_'; }
qemu_for() {
  case "$1" in
    aarch64-*) echo qemu-aarch64 ;;
    armv7-*) echo qemu-arm ;;
  esac
}

check_binary() {
  local target=$1 bin=$2 description qemu
  qemu=$(qemu_for "$target")
  description=$(file -b "$bin")
  say "$target: $description"
  case "$target" in
    *-musl*)
      case "$description" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) die "$bin is not statically linked" ;;
      esac
      ;;
  esac
  # ring falls back to portable C where its assembly does not build; the
  # fallback would be slower and is not what is tested on x86.
  local ring_lib asm
  case "$target" in
    aarch64-*) asm=sha256-armv8-linux64 ;;
    armv7-*) asm=sha256-armv4-linux32 ;;
  esac
  ring_lib=$(ls -t target/cross/"$target"/release/build/ring-*/out/libring_core_*_.a 2>/dev/null | head -1)
  [ -n "$ring_lib" ] || die "no ring library under target/cross/$target/release/build"
  ar t "$ring_lib" | grep -q -- "$asm" || die "ring's $asm assembly is not in $ring_lib"
  say "$target: ring's ARM assembly ($asm) is in"
  # A static binary needs nothing from the host: no -L, no QEMU_LD_PREFIX.
  (unset QEMU_LD_PREFIX; "$qemu" "$bin" --version)
  local size
  size=$(stat -c %s "$bin")
  say "stripped size of $target leasegate: $size bytes ($((size / 1024)) KiB; budget $size_budget)"
  [ "$size" -le "$size_budget" ] || die "$bin is over the 4 MB budget"
}

musl=() gnu=()
for target in "${targets[@]}"; do
  case "$target" in
    aarch64-unknown-linux-musl | armv7-unknown-linux-musleabihf) musl+=("$target") ;;
    aarch64-unknown-linux-gnu) gnu+=("$target") ;;
    *) die "unsupported target $target (see --help)" ;;
  esac
done
[ "$e2e" = 0 ] || [ ${#gnu[@]} -eq 0 ] || die "--e2e is for the static (musl) targets"

std=none
[ ${#musl[@]} -eq 0 ] || choose_std
base_tools
if [ ${#musl[@]} -gt 0 ]; then
  zig_tools
  case "$std" in
    rustup) say "building ${musl[*]} with rustup's standard library for them" ;;
    source) say "building ${musl[*]} with Debian's Rust, the standard library built from source" ;;
  esac
  musl_cargo build --release --bin leasegate
  if [ "$check" = 1 ]; then
    for target in "${musl[@]}"; do
      check_binary "$target" "target/cross/$target/release/leasegate"
    done
  fi
  if [ "$unit" = 1 ]; then
    say "the library's unit tests under qemu for ${musl[*]}"
    musl_cargo test --lib
  fi
  if [ "$e2e" = 1 ]; then
    tests/install-servers.sh
    for target in "${musl[@]}"; do
      bin="target/cross/$target/release/leasegate"
      say "$target: end-to-end tests with $bin under $(qemu_for "$target")"
      # The tests and the servers' helpers are host programs (the rustup
      # toolchain that README's test command uses); only the gateway runs
      # emulated.
      LEASEGATE_BIN="$PWD/$bin" LEASEGATE_RUNNER="$(qemu_for "$target")" \
        cargo test --test forward --test lifecycle
    done
  fi
fi
if [ ${#gnu[@]} -gt 0 ]; then
  gnu_tools
  target=aarch64-unknown-linux-gnu
  say "building $target"
  gnu_cargo build --release --bin leasegate
  if [ "$check" = 1 ]; then
    check_binary "$target" "target/cross/$target/release/leasegate"
  fi
  if [ "$unit" = 1 ]; then
    say "$target: the library's unit tests under qemu-aarch64"
    gnu_cargo test --lib
  fi
fi
