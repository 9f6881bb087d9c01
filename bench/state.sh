#!/usr/bin/env bash
# Benchmark of the state path: every request carries a key bound by the ip-binding policy, on the
# embedded backend (SQLite + in-process cache) and the production one (PostgreSQL + Redis), against
# the same gateway without the policy. Targets are interleaved round by round; ratios are paired per
# round. Not a test: it never fails on timing. Loopback only; starts its own postgres and redis.
#
#   bench/state.sh                 # 5 rounds of 5 s at concurrency 32 over 32 keys
#   ROUNDS=3 SECONDS_PER_RUN=10 bench/state.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONCURRENCY=${CONCURRENCY:-32}
KEYS=${KEYS:-32}
MOCK=127.0.0.1:19100 PLAIN=127.0.0.1:19101 SQLITE=127.0.0.1:19102 PROD=127.0.0.1:19103
PG_PORT=19110 REDIS_PORT=19111
out=$(mktemp -d)
chmod 755 "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked -q -p tollgate -p tollgate-tests -p tollgate-bench
rustup target add wasm32-wasip2 >/dev/null 2>&1
plugins/build.sh build >/dev/null 2>&1
bin=target/release
W=$PWD/plugins/target/wasm32-wasip2/release

# PostgreSQL (as the postgres user when root: initdb refuses root) and Redis, no durability.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$out/pg"
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$out/pg"; as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
"${as_pg[@]}" "$pgbin/initdb" -U tollgate --auth=trust --no-sync -D "$out/pg/data" >/dev/null
"${as_pg[@]}" "$pgbin/postgres" -D "$out/pg/data" -p $PG_PORT -k "$out/pg" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off >/dev/null 2>&1 & pids+=($!)
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
"$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)

keys() { for i in $(seq 0 $((KEYS - 1))); do printf '    - {name: k%d, key: sk-bench-key-%04d}\n' "$i" "$i"; done; }
gateway() { # name listen policies storage
  cat > "$out/$1.yaml" <<YAML
server: {listen: "$2"}
admin: {enabled: false}
auth:
  secret: bench-secret-0123456789
  keys:
$(keys)
upstreams: [{name: mock, url: "http://$MOCK", credential: sk-upstream}]
routes: [{path_prefix: /v1/, upstreams: [mock], policies: [$3]}]
plugins: [{name: bind, kind: ip-binding, module: $W/tollgate_ip_binding.wasm}]
storage: $4
logging: {level: warn, access_log: false}
YAML
}
gateway plain $PLAIN "" "{database: sqlite://$out/plain.db}"
gateway sqlite $SQLITE bind "{database: sqlite://$out/state.db, cache: memory}"
gateway prod $PROD bind "{database: postgres://tollgate@127.0.0.1:$PG_PORT/postgres, cache: redis://127.0.0.1:$REDIS_PORT}"

for addr in $MOCK 127.0.0.1:$PG_PORT 127.0.0.1:$REDIS_PORT; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.1; done
done
for g in plain sqlite prod; do "$bin/tollgate" run --config "$out/$g.yaml" & pids+=($!); done
for addr in $PLAIN $SQLITE $PROD; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.1; done
done

results="$out/results.jsonl"
for round in $(seq "$ROUNDS"); do
  for target in plain:$PLAIN sqlite:$SQLITE prod:$PROD; do
    name=${target%%:*} url="http://${target#*:}/v1/chat/completions"
    # Warm-up; the first round's warm-up also makes every key's first use (binding).
    "$bin/tollgate-bench" rps --url "$url" --concurrency "$KEYS" --seconds 1 --key 'sk-bench-key-{n}' --keys "$KEYS" >/dev/null
    r=$("$bin/tollgate-bench" rps --url "$url" --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" --key 'sk-bench-key-{n}' --keys "$KEYS")
    echo "{\"round\":$round,\"target\":\"$name\",\"rps\":$r}" | tee -a "$results"
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = ("plain", "sqlite", "prod")
med = lambda t, k: statistics.median(r["rps"][k] for r in rows if r["target"] == t)
print(f"\n== every request with a bound key (median of {len({r['round'] for r in rows})} rounds)")
print(f"{'':8}{'rps':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
for n in names:
    print(f"{n:8}{med(n,'rps'):>10.0f}{med(n,'p50_ms'):>10.3f}{med(n,'p99_ms'):>10.3f}{med(n,'errors'):>8.0f}")
by_round = {}
for r in rows:
    by_round.setdefault(r["round"], {})[r["target"]] = r["rps"]
for n in ("sqlite", "prod"):
    rr = sorted(v[n]["rps"] / v["plain"]["rps"] for v in by_round.values())
    pr = sorted(v[n]["p99_ms"] / v["plain"]["p99_ms"] for v in by_round.values())
    print(f"{n}/plain per round: rps {statistics.median(rr):.2f}x (range {rr[0]:.2f}-{rr[-1]:.2f}), "
          f"p99 {statistics.median(pr):.2f}x (range {pr[0]:.2f}-{pr[-1]:.2f})")
PY
