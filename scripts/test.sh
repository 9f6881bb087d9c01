#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine that has only the Rust toolchain.
# Installs what the tests need first (idempotent), then builds and tests every crate.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages the tests drive. None needs to be running: the state tests start their own
# `redis-server` and `postgres` (as the `postgres` user when run as root) on free loopback ports.
need=()
command -v curl >/dev/null || need+=(curl)
command -v kill >/dev/null || need+=(procps)
command -v setpriv >/dev/null || need+=(util-linux)
command -v redis-server >/dev/null || need+=(redis-server)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
# The deploy files are checked by their own tools (`nginx -t`, `caddy validate`,
# `systemd-analyze verify`); a missing one fails its test.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v caddy >/dev/null || need+=(caddy)
command -v systemd-analyze >/dev/null || need+=(systemd)
# Python with venv, for schemathesis (below) and Python plugin projects (componentize-py); npm
# for JavaScript plugin projects (componentize-js). The plugin_new tests install both tools
# themselves, at the versions `tollgate plugin new` pins.
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v npm >/dev/null || need+=(npm)
# The console's tests drive Debian's Chromium headless through chromedriver (WebDriver).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# `promtool check metrics` (Prometheus's own parser and linter) checks the /metrics exposition;
# only the package, not the exporters it recommends.
if ! command -v promtool >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi

# schemathesis (PyPI) checks the admin API against its OpenAPI document, from a venv under target/.
if [ ! -x target/tools/venv/bin/schemathesis ]; then
  python3 -m venv target/tools/venv
  target/tools/venv/bin/pip install -q 'schemathesis>=4,<5'
fi

# WebAssembly policy plugins (plugins/) are built for wasm32-wasip2: the host's tests load the real
# components. Their pure logic is unit-tested natively.
rustup target add wasm32-wasip2
plugins/build.sh build
plugins/build.sh test

# `--prepare`: everything above, not the tests (scripts/coverage.sh runs them instrumented).
[ "${1:-}" = --prepare ] && exit 0
cargo test --workspace --locked "$@"
