#!/usr/bin/env bash
# README's test command: installs the real servers the tests need (if
# missing), then runs every test (unit, property, CLI, and end to end
# against real Mosquitto and InfluxDB 1.x).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-servers.sh
cargo test --all-targets "$@"
