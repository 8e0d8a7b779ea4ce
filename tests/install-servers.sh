#!/usr/bin/env bash
# Installs what the tests and the demo need, only where it is missing: the
# real servers (Debian packages mosquitto, influxdb and postgresql), libfaketime
# (Debian faketime: a gateway's wrong or stepping clock), e2fsprogs, mount and
# util-linux (ext4 on loop devices: a gateway's card), chromium and
# chromium-driver (the web page, in a headless browser) and a C toolchain
# for linking (gcc, libc6-dev). Uses sudo when not root. The tests start
# their own servers on free loopback ports, so the system services that the
# packages start are stopped and disabled again for packages installed here.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
missing=()
services=()
have mosquitto || { missing+=(mosquitto); services+=(mosquitto); }
have influxd || { missing+=(influxdb); services+=(influxdb); }
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { missing+=(postgresql); services+=(postgresql); }
have faketime || missing+=(faketime)
# The card tests: ext4 filesystems on loop devices.
have mkfs.ext4 || missing+=(e2fsprogs)
have losetup || missing+=(mount)
have fallocate || missing+=(util-linux)
have cc || missing+=(gcc libc6-dev)
# The web page's tests: headless Chromium driven over WebDriver.
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "installing ${missing[*]} from Debian's packages"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ ${#services[@]} -gt 0 ] && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now "${services[@]}" >/dev/null 2>&1 || true
fi
