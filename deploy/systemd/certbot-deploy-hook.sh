#!/bin/sh
# certbot deploy hook: copies a renewed certificate where the service's user can read it, for
# Tollgate terminating TLS itself (server.tls). certbot keeps private keys readable by root only,
# and the unit runs as `tollgate`. Install once:
#   install -m 0755 deploy/systemd/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/tollgate.sh
#   certbot certonly --standalone -d llm.example.com   # or --webroot; the hook runs on each renewal
# and point the config at the copies:
#   server: {tls: {cert: /etc/tollgate/tls/fullchain.pem, key: /etc/tollgate/tls/privkey.pem}}
# The gateway watches both files and swaps the certificate in without a restart (a broken pair
# keeps the current one). Each file is replaced by a rename, so it is never seen half-written.
# TOLLGATE_TLS_DIR overrides the destination (tests).
set -eu
src=${RENEWED_LINEAGE:?run by certbot, which sets RENEWED_LINEAGE}
dest=${TOLLGATE_TLS_DIR:-/etc/tollgate/tls}
group=tollgate
getent group "$group" >/dev/null 2>&1 || group=$(id -gn)
install -d -m 0750 "$dest"
chgrp "$group" "$dest"
for f in fullchain.pem privkey.pem; do
  tmp="$dest/.$f.new"
  install -m 0640 "$src/$f" "$tmp"
  chgrp "$group" "$tmp"
  mv -f "$tmp" "$dest/$f"
done
