#!/usr/bin/env bash
# Runs the gateway on policies.example.yaml with its embedded defaults: built-in mock upstreams,
# in-process state, the built-in policy plugins (built here for wasm32-wasip2 first).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2
plugins/build.sh build
exec cargo run --release --locked -p tollgate -- run --config policies.example.yaml "$@"
