#!/usr/bin/env bash
# Installs the real servers the tests and the demo run against (Debian
# packages mosquitto and influxdb), only if missing.
# Uses sudo when not root. The packages' own services are not needed: the
# tests start their own servers on free loopback ports.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
missing=()
have mosquitto || missing+=(mosquitto)
have influxd || missing+=(influxdb)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "installing ${missing[*]} from Debian's packages"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
