#!/bin/sh
# vpswatch /metrics against peers on the same exposition (docs/performance.md).
# Builds the release binary, then runs driver.py with /usr/bin/python3 (the Python that
# owns python3-prometheus-client). Knobs: see driver.py (PEERS_VMS, PEERS_SECONDS,
# PEERS_ROUNDS, PEERS_CONNECTIONS, PEERS_THREADS, PEERS_ONLY).
set -eu
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin vpswatch
TARGET="${CARGO_TARGET_DIR:-target}"
VPSWATCH_BIN="${VPSWATCH_BIN:-$TARGET/release/vpswatch}" exec /usr/bin/python3 benches/peers/driver.py "$@"
