#!/usr/bin/env bash
# README's test command: installs the real servers the tests need (if
# missing), then runs every test (unit, property, CLI, and end to end
# against real Mosquitto, InfluxDB 1.x and PostgreSQL), and the authority's
# suite a second time with its state in PostgreSQL instead of SQLite.
# Every suite runs even when one fails; the end says which failed.
set -uo pipefail
cd "$(dirname "$0")/.."
tests/install-servers.sh || exit
failed=()
cargo test --all-targets --no-fail-fast "$@" || failed+=("cargo test --all-targets (the failed targets are listed above)")
if [ $# -eq 0 ]; then
  echo "== the authority's test suite again, on PostgreSQL"
  LEASEGATE_TEST_STORE=postgres cargo test --test authority --test fleet || failed+=("the authority's and the fleet's suites on PostgreSQL")
fi
if [ ${#failed[@]} -gt 0 ]; then
  printf 'tests/run.sh: failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "tests/run.sh: every suite passed"
