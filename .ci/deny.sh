#!/usr/bin/env bash
# cargo-deny over the workspace (deny.toml): licenses, bans (duplicate
# versions) and sources. Advisories are left out: they need the RustSec
# database from GitHub, which CI's network does not reach (deny.toml).
# Installs cargo-deny when missing (--debug: it only reads Cargo.lock and
# manifests; a debug build takes a minute instead of several).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q " $version"; then
  cargo install cargo-deny --locked --debug --version "$version"
fi
cargo deny --version
cargo deny --workspace check licenses bans sources
