#!/usr/bin/env bash
# README's demo: installs Mosquitto and InfluxDB 1.x from Debian's packages
# if they are missing, builds both binaries and runs examples/demo.rs, which
# starts both servers and an authority on free loopback ports, enrolls the
# daemon with a dropped ticket, forwards sample sensor points with renewed
# leases and queries them back.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-servers.sh
cargo build --quiet --bins --example demo
exec target/debug/examples/demo
