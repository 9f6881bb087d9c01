#!/usr/bin/env bash
# Builds, tests or lints every plugin, one package at a time: the SDK selects its WIT world with a
# cargo feature, and building the workspace at once would unify all four features into one build.
#   plugins/build.sh          # release components for wasm32-wasip2 → target/wasm32-wasip2/release/
#   plugins/build.sh test     # native unit tests
#   plugins/build.sh clippy   # lints (native)
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-build}
# Always plugins/target, whatever CARGO_TARGET_DIR says: the example config, the tests and the
# benchmark load the components from there.
export CARGO_TARGET_DIR=$PWD/target
# A crate just added to `members` gets its lock file entry; every other dependency stays as
# locked (--locked below refuses any other change).
cargo update --workspace --quiet
for manifest in */Cargo.toml; do
  dir=${manifest%/Cargo.toml}
  [ "$dir" = sdk ] && continue
  pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)
  case $mode in
    build) cargo build --locked --release --target wasm32-wasip2 -p "$pkg" ;;
    test) cargo test --locked -p "$pkg" ;;
    clippy) cargo clippy --locked --all-targets -p "$pkg" -- -D warnings ;;
    *) echo "usage: $0 [build|test|clippy]" >&2; exit 2 ;;
  esac
done
