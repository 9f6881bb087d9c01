#!/usr/bin/env bash
# The request log at scale: fills a SQLite log with ROWS requests (default 1,000,000: a mix of
# keys, routes, models, statuses and refusals over the last week) through the stores' own writer
# (`tollgate-bench fill-log`, PER_FLUSH requests a flush, default 5,000: a gateway at 5,000
# requests a second), starts a gateway on it, and
# times pages of GET /admin/api/requests (the console's and the CLI's query) newest first, with
# each filter, and deep in the log (keyset). Prints the median of 5 calls per query, server side
# (curl's time to first byte over loopback). Not a test; loopback only.
#
#   bench/requests.sh                 # 1,000,000 rows
#   ROWS=200000 bench/requests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
bin=target/release
out=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
GW=127.0.0.1:19300 ADMIN=127.0.0.1:19301
cat > "$out/gw.yaml" <<YAML
server: {listen: "$GW"}
auth:
  secret: bench-secret-0123456789
  keys: [{name: bench, key: sk-bench-key-0001}]
upstreams: [{name: mock, mock: {}}]
routes: [{path_prefix: /v1/, upstreams: [mock]}]
storage: {database: "sqlite://$out/log.db"}
admin:
  listen: "$ADMIN"
  jwt_secret: bench-admin-signing-key-of-32-chars
  users: [{username: ops, password: bench-password-1}]
logging: {level: warn, access_log: false}
YAML
echo "filling $ROWS rows…" >&2
read -r deep rid < <("$bin/tollgate-bench" fill-log --config "$out/gw.yaml" --rows "$ROWS" --per-flush "${PER_FLUSH:-5000}")
"$bin/tollgate" run --config "$out/gw.yaml" & pids+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/${ADMIN%:*}/${ADMIN#*:}") 2>/dev/null && break; sleep 0.1; done
token=$(curl -s "http://$ADMIN/admin/api/login" -H 'content-type: application/json' \
  -d '{"username":"ops","password":"bench-password-1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
day_ago=$(( $(date +%s%3N) - 86400000 ))
printf '%-44s %10s %6s\n' query "median ms" rows
for q in "limit=50" "limit=50&status=4xx" "limit=50&error=any" "limit=50&answered_by=plugin:bind" \
         "limit=50&key=key-7" "limit=50&model=llama-3" "limit=50&model=absent" "limit=50&ip=10.0.7.9" \
         "limit=50&from_ms=$day_ago&to_ms=$((day_ago + 3600000))" "limit=50&request_id=$rid" \
         "limit=50&before=$deep" "limit=1000"; do
  times=()
  for _ in 1 2 3 4 5; do
    times+=("$(curl -s -o "$out/page.json" -w '%{time_starttransfer}' -H "authorization: Bearer $token" "http://$ADMIN/admin/api/requests?$q")")
  done
  n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["items"]))' "$out/page.json")
  med=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
  printf '%-44s %10.1f %6s\n' "${q:0:44}" "$(python3 -c "print($med * 1000)")" "$n"
done
