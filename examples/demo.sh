#!/usr/bin/env bash
# README's demo: installs Mosquitto and InfluxDB 1.x from Debian's packages
# if they are missing, builds leasegate and runs examples/demo.rs, which
# starts both servers on free loopback ports, forwards sample sensor points
# through the daemon and queries them back.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-servers.sh
cargo build --quiet --bin leasegate --example demo
exec target/debug/examples/demo
