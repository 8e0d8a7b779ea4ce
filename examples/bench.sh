#!/usr/bin/env bash
# README's benchmark: installs Mosquitto and InfluxDB 1.x from Debian's
# packages if they are missing, builds the release leasegate binary (what
# ships) and the benchmark drivers, then runs examples/bench.rs (the
# pipeline: throughput, memory, CPU, write amplification, drain after an
# outage, an idle daemon) and examples/spool-compare (the spool against two
# crates, a package of its own).
# The figures go into BENCHMARKS.md. --quick runs a short smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-servers.sh
cargo build --quiet --release --bin leasegate
# The idle phase enrolls with a real authority; it is not what is measured,
# so the debug build (which the tests make too) will do.
cargo build --quiet --bin leasegate-authority
cargo build --quiet --profile bench-run --example bench
cargo build --quiet --profile bench-run -p spool-compare
export LEASEGATE_BIN="$PWD/target/release/leasegate"
export LEASEGATE_AUTHORITY_BIN="$PWD/target/debug/leasegate-authority"
target/bench-run/examples/bench "$@"
echo
echo "## spool store comparison"
target/bench-run/spool-compare "$@"
