#!/usr/bin/env bash
# Release artifacts in one command (README "ARM gateways"):
#
#   cross/dist.sh
#
# into target/dist/:
#   leasegate-VERSION-TARGET.tar.gz   for aarch64-unknown-linux-musl and
#       armv7-unknown-linux-musleabihf: the static binary, the systemd
#       units, the example configuration and README, in one directory
#   leasegate_VERSION-1_{amd64,arm64,armhf}.deb and
#   leasegate-authority_VERSION-1_amd64.deb   (debian/build.sh --arm)
#   SHA256SUMS                          of all of the above
# then checks them: each tarball's binary is static for its architecture,
# the arm64 and armhf packages depend on nothing but systemd, install
# exactly the files the amd64 one does, in the same places and modes
# (`dpkg-deb -c`), with the same maintainer scripts and conffiles, and
# `sha256sum -c SHA256SUMS` passes.
# Builds what is missing with cross/build.sh (cargo skips what is fresh).
# Tarballs are reproducible: names sorted, owner root, mtimes from the last
# commit (SOURCE_DATE_EPOCH), gzip without a timestamp.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
out=target/dist
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

die() { echo "cross/dist.sh: $*" >&2; exit 1; }

cross/build.sh "${targets[@]}"
debian/build.sh --arm

rm -rf "$out"
mkdir -p "$out"
for target in "${targets[@]}"; do
  name="leasegate-$version-$target"
  stage="target/dist-stage/$name"
  rm -rf "$stage"
  install -d "$stage/systemd"
  install -m 0755 "target/cross/$target/release/leasegate" "$stage/leasegate"
  install -m 0644 examples/leasegate.toml "$stage/leasegate.toml"
  install -m 0644 README.md "$stage/README.md"
  install -m 0644 systemd/leasegate.service systemd/leasegate.sysusers \
    systemd/leasegate.tmpfiles "$stage/systemd/"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C target/dist-stage -cf - "$name" | gzip -9 -n > "$out/$name.tar.gz"
done
cp target/debian/leasegate_"$version"-1_{amd64,arm64,armhf}.deb \
  target/debian/leasegate-authority_"$version"-1_amd64.deb "$out/"
(cd "$out" && sha256sum -- *.tar.gz *.deb > SHA256SUMS)

# The checks.
(cd "$out" && sha256sum --quiet -c SHA256SUMS) || die "SHA256SUMS does not match"
for target in "${targets[@]}"; do
  name="leasegate-$version-$target"
  case "$target" in
    aarch64-*) arch="ARM aarch64" ;;
    armv7-*) arch="ARM, EABI5" ;;
  esac
  tmp=$(mktemp -d)
  tar -xzf "$out/$name.tar.gz" -C "$tmp"
  description=$(file -b "$tmp/$name/leasegate")
  case "$description" in
    *"$arch"*"statically linked"*) ;;
    *) die "$name.tar.gz: leasegate is not a static $arch binary: $description" ;;
  esac
  for f in leasegate.toml README.md systemd/leasegate.service; do
    [ -f "$tmp/$name/$f" ] || die "$name.tar.gz has no $f"
  done
  rm -rf "$tmp"
done
# Paths only: sizes, dates and the binary differ by architecture.
paths() { dpkg-deb -c "$1" | awk '{print $1, $2, $6}' | sort; }
reference=$(paths "$out/leasegate_${version}-1_amd64.deb")
for arch in arm64 armhf; do
  deb="$out/leasegate_${version}-1_$arch.deb"
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || die "$deb: Architecture is not $arch"
  depends=$(dpkg-deb -f "$deb" Depends)
  [ "$depends" = systemd ] || die "$deb depends on \"$depends\", not only on systemd"
  if [ "$(paths "$deb")" != "$reference" ]; then
    diff <(echo "$reference") <(paths "$deb") >&2 || true
    die "$deb does not install its files where the amd64 package does (above: amd64 <, $arch >)"
  fi
  # The same maintainer scripts and conffiles (control differs by Architecture).
  for member in conffiles postinst prerm postrm; do
    cmp -s <(dpkg-deb --info "$out/leasegate_${version}-1_amd64.deb" "$member") \
      <(dpkg-deb --info "$deb" "$member") || die "$deb: its $member is not the amd64 package's"
  done
  tmp=$(mktemp -d)
  dpkg-deb -x "$deb" "$tmp"
  file -b "$tmp/usr/bin/leasegate" | grep -q "statically linked" \
    || die "$deb: /usr/bin/leasegate is not static"
  rm -rf "$tmp"
done
echo "cross/dist.sh: in $out (checked: static binaries, package contents, SHA256SUMS)"
ls -l "$out"
