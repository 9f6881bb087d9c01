#!/usr/bin/env bash
# Line coverage of the whole test suite, with cargo-llvm-cov (installed here if missing): the unit
# and integration tests, and the processes they start (the `tollgate` binary the CLI and deploy
# tests run), whose profiles are merged into one report. Not part of CI: an instrumented build and
# run take about twice as long as `scripts/test.sh`.
#
#   scripts/coverage.sh            # summary per file, then the total
#   HTML=1 scripts/coverage.sh     # also target/coverage/llvm-cov/html/index.html
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add llvm-tools-preview >/dev/null
command -v cargo-llvm-cov >/dev/null || cargo install cargo-llvm-cov --locked
# The tools, services and plugins the suite needs, without running it.
./scripts/test.sh --prepare

# Every process built from here on is instrumented and writes its profile under target/coverage,
# child processes included (they inherit LLVM_PROFILE_FILE). A target directory of its own, so
# the instrumented build never stands in for the ordinary one.
export CARGO_TARGET_DIR="$PWD/target/coverage"
source <(cargo llvm-cov show-env --export-prefix)
cargo llvm-cov clean --workspace
cargo test --workspace --locked --no-fail-fast || echo "coverage: some tests failed; the report covers what ran" >&2
# cargo-llvm-cov maps only binaries named like a workspace package; the binary the CLI tests
# run (and the mock upstream) are added by hand, so their runs count.
objects=""
for bin in tollgate-under-test mock-upstream; do
  [ -x "$CARGO_TARGET_DIR/debug/$bin" ] && objects="$objects -object=$CARGO_TARGET_DIR/debug/$bin"
done
export LLVM_COV_FLAGS="${LLVM_COV_FLAGS:-}$objects" CARGO_LLVM_COV_FLAGS="${CARGO_LLVM_COV_FLAGS:-}$objects"
cargo llvm-cov report --summary-only
if [ -n "${HTML:-}" ]; then
  cargo llvm-cov report --html
  echo "coverage: $CARGO_TARGET_DIR/llvm-cov/html/index.html"
fi
