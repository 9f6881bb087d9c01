#!/usr/bin/env bash
# Installs Tollgate on this host: the binary (its policy plugins are built in: `tollgate plugin
# builtins`), stripped, with its debug info beside it under /usr/lib/debug for backtraces
# (scripts/split-debug.sh), the systemd unit, the production config and an environment file with
# fresh secrets. An existing config or env file is never overwritten.
#
#   sudo scripts/install.sh                     # build, install under /usr/local, create the user
#   DESTDIR=/tmp/stage PREFIX=/usr scripts/install.sh   # stage into a directory (packaging)
#
# Variables: PREFIX (/usr/local: the binary goes to $PREFIX/bin), SYSCONFDIR (/etc), UNITDIR
# (/etc/systemd/system), DESTDIR (a staging root: no user is created and systemd is not told),
# TOLLGATE_BIN (install this binary instead of building one). Then: docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DESTDIR=${DESTDIR:-}

bin=${TOLLGATE_BIN:-}
if [ -z "$bin" ]; then
  rustup target add wasm32-wasip2
  plugins/build.sh build
  # A binary without its built-in plugins would refuse the installed config: fail here instead.
  # The `dist` profile: the release build with whole-program LTO (Cargo.toml).
  TOLLGATE_REQUIRE_BUILTINS=1 cargo build --profile dist --locked -p tollgate
  bin=target/dist/tollgate
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scripts/split-debug.sh "$bin" "$work/tollgate"
install -D -m 0755 "$work/tollgate" "$DESTDIR$PREFIX/bin/tollgate"
# Where debuggers and Rust's backtraces look for it (the binary's .gnu_debuglink names it).
install -D -m 0644 "$work/tollgate.debug" "$DESTDIR/usr/lib/debug$PREFIX/bin/tollgate.debug"

unit=$work/tollgate.service
sed -e "s|/usr/local/bin/tollgate|$PREFIX/bin/tollgate|g" \
    -e "s|/etc/tollgate|$SYSCONFDIR/tollgate|g" \
    deploy/systemd/tollgate.service >"$unit"
install -D -m 0644 "$unit" "$DESTDIR$UNITDIR/tollgate.service"
# For TLS in Tollgate itself with certbot (docs/operations.md, "TLS").
install -D -m 0755 deploy/systemd/certbot-deploy-hook.sh \
  "$DESTDIR$PREFIX/share/tollgate/certbot-deploy-hook.sh"

conf=$DESTDIR$SYSCONFDIR/tollgate
install -d -m 0750 "$conf"
if [ ! -e "$conf/policies.yaml" ]; then
  install -m 0640 deploy/policies.yaml "$conf/policies.yaml"
fi

hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
if [ ! -e "$conf/env" ]; then
  (
    umask 0137
    cat >"$conf/env" <<ENV
# Tollgate's environment: read by the service (EnvironmentFile=) and by every \`tollgate\` command
# on this host, so the CLI uses the running gateway's config, secret and database.
# TOLLGATE_SECRET identifies every client key and binding: keep a copy somewhere safe. Changing or
# losing it orphans every key id and binding (docs/operations.md).
TOLLGATE_CONFIG=$SYSCONFDIR/tollgate/policies.yaml
TOLLGATE_SECRET=$(hex 32)
TOLLGATE_JWT_SECRET=$(hex 32)
TOLLGATE_ADMIN_PASSWORD=$(hex 12)
TOLLGATE_CLIENT_KEY=sk-tg-$(hex 24)
TOLLGATE_DATABASE=sqlite:///var/lib/tollgate/tollgate.db
# Several gateways: one PostgreSQL and one Redis for all of them.
# TOLLGATE_DATABASE=postgres://tollgate:PASSWORD@db.internal:5432/tollgate
# TOLLGATE_CACHE=redis://:PASSWORD@cache.internal:6379
OPENAI_API_KEY=
ENV
  )
fi

if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ]; then
  getent passwd tollgate >/dev/null ||
    useradd --system --user-group --home-dir /var/lib/tollgate --shell /usr/sbin/nologin tollgate
  chown root:tollgate "$conf" "$conf/policies.yaml" "$conf/env"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
  echo "installed; the admin password and the first client key are in $conf/env"
  echo "start:   systemctl enable --now tollgate"
  echo "check:   sudo -u tollgate tollgate health && sudo -u tollgate tollgate plugin builtins"
else
  echo "staged under ${DESTDIR:-/} (no user created: create \`tollgate\` and chown root:tollgate $SYSCONFDIR/tollgate on the target)"
fi
