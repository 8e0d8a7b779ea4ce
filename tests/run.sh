#!/usr/bin/env bash
# README's test command: installs the real servers the tests need (if
# missing), then runs every test (unit, property, CLI, and end to end
# against real Mosquitto, InfluxDB 1.x and PostgreSQL), and the authority's
# suite a second time with its state in PostgreSQL instead of SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-servers.sh
cargo test --all-targets "$@"
if [ $# -eq 0 ]; then
  echo "== the authority's test suite again, on PostgreSQL"
  LEASEGATE_TEST_STORE=postgres cargo test --test authority
fi
