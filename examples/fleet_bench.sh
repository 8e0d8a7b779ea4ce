#!/usr/bin/env bash
# The fleet benchmark (BENCHMARKS.md, "The authority at fleet scale"):
# installs PostgreSQL and InfluxDB 1.x from Debian's packages if they are
# missing, builds leasegate-authority and the driver with release speed,
# and runs examples/fleet_bench.rs: 10,000 simulated gateways against one
# replica on SQLite and two on PostgreSQL. --quick runs 500 (a smoke run);
# --gateways N and --seconds S set the scale.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-servers.sh
cargo build --quiet --profile bench-run --bin leasegate-authority --example fleet_bench
export LEASEGATE_AUTHORITY_BIN="$PWD/target/bench-run/leasegate-authority"
target/bench-run/examples/fleet_bench "$@"
