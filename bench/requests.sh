#!/usr/bin/env bash
# The request log at scale: fills a SQLite log with ROWS requests (default 1,000,000: a mix of
# keys, routes, models, statuses and refusals over the last week), starts a gateway on it, and
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
"$bin/tollgate" migrate --config "$out/gw.yaml" >/dev/null
echo "filling $ROWS rows…" >&2
python3 - "$out/log.db" "$ROWS" <<'PY'
import random, sqlite3, sys, time, uuid
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
now = int(time.time() * 1000)
keys = [(f"{i:064x}", f"key-{i}") for i in range(1, 201)]
refusals = [(401, "invalid_api_key", "auth"), (429, "rate_limit_exceeded", "limits:per-ip"),
            (403, "ip_not_allowed", "plugin:bind"), (403, "model_not_allowed", "entitlements"),
            (503, "service_unavailable", "maintenance")]
rows = []
for i in range(n):
    at = now - (n - i) * 600  # one week of traffic, oldest first
    kid, kname = random.choice(keys)
    model = random.choice(["gpt-4o", "gpt-4o-mini", "claude-3-haiku", "llama-3"])
    if random.random() < 0.05:
        status, error, by = random.choice(refusals)
        outcome, upstream, attempts = "refused", "", "[]"
    else:
        status, error, by, outcome = 200, "", "", "complete"
        upstream = random.choice(["a", "b", "c"])
        attempts = f'[{{"upstream":"{upstream}","status":200,"ms":{random.randint(20, 900)}}}]'
    rows.append((at, uuid.uuid4().hex, kid, kname, f"10.0.{i % 256}.{(i // 256) % 256}", "POST",
                 "/v1/chat/completions", "/v1/", model, upstream, attempts, status, outcome, error, by,
                 random.randint(1000, 900000), random.randint(2000, 9000000), 120, 240, 0, 0, 1200,
                 512, 2048, ""))
    if len(rows) == 50000:
        c.executemany("INSERT INTO request_log (at_ms, request_id, key_id, key_name, client_ip, method, path, route, model, upstream, attempts, status, outcome, error, answered_by, first_byte_us, duration_us, input_tokens, output_tokens, cached_tokens, partial, cost_nanos, bytes_in, bytes_out, decisions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        c.commit()
        rows = []
if rows:
    c.executemany("INSERT INTO request_log (at_ms, request_id, key_id, key_name, client_ip, method, path, route, model, upstream, attempts, status, outcome, error, answered_by, first_byte_us, duration_us, input_tokens, output_tokens, cached_tokens, partial, cost_nanos, bytes_in, bytes_out, decisions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    c.commit()
c.execute("ANALYZE")
c.commit()
PY
"$bin/tollgate" run --config "$out/gw.yaml" & pids+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/${ADMIN%:*}/${ADMIN#*:}") 2>/dev/null && break; sleep 0.1; done
token=$(curl -s "http://$ADMIN/admin/api/login" -H 'content-type: application/json' \
  -d '{"username":"ops","password":"bench-password-1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
deep=$(sqlite3 "$out/log.db" "SELECT id FROM request_log ORDER BY id LIMIT 1 OFFSET 1000" 2>/dev/null \
  || python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT id FROM request_log ORDER BY id LIMIT 1 OFFSET 1000').fetchone()[0])" "$out/log.db")
day_ago=$(( $(date +%s%3N) - 86400000 ))
rid=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT request_id FROM request_log WHERE id = 500000 % (SELECT MAX(id) FROM request_log) + 1').fetchone()[0])" "$out/log.db")
printf '%-44s %10s %6s\n' query "median ms" rows
for q in "limit=50" "limit=50&status=4xx" "limit=50&error=any" "limit=50&answered_by=plugin:bind" \
         "limit=50&key=key-7" "limit=50&model=llama-3" "limit=50&ip=10.0.7.9" \
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
