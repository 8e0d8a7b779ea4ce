#!/usr/bin/env bash
# Checks the units as CI does: `systemd-analyze verify` on both (with
# ExecStart pointed at the binaries just built, which verify requires to
# exist), then their exposure score from `systemd-analyze security
# --offline=true` (target: 2.0 or lower). Needs no running systemd.
# Usage: systemd/check.sh [BINDIR]   (default: target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bindir=$(realpath "${1:-target/debug}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in leasegate leasegate-authority; do
  sed "s|/usr/bin/$unit |$bindir/$unit |" "systemd/$unit.service" > "$work/$unit.service"
done
status=0
for unit in leasegate leasegate-authority; do
  echo "== systemd-analyze verify $unit.service"
  if ! out=$(systemd-analyze verify "$work/$unit.service" 2>&1); then
    status=1
  fi
  # verify prints nothing for a clean unit; anything it says is a finding.
  if [ -n "$out" ]; then
    echo "$out"
    status=1
  fi
  echo "== systemd-analyze security --offline=true $unit.service"
  systemd-analyze security --offline=true --no-pager "$work/$unit.service" | tail -n 1
done
exit "$status"
