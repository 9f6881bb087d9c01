#!/usr/bin/env bash
# Benchmark: the same workloads, in one run, against the mock upstream directly, against nginx as
# an equivalent streaming reverse proxy, and against Tollgate. Prints figures and ratios.
# Not a test: it never fails on timing. Loopback only.
#
#   bench/run.sh            # 5 rounds of: 5 s RPS run, 200 SSE streams, per target; then a
#                           # micro-benchmark of one call into each policy kind
#   ROUNDS=5 SECONDS_PER_RUN=10 STREAMS=100 RATE=5000 bench/run.sh
#   PIN=0 bench/run.sh      # unpinned: every process shares every core
#   DENY=100000 bench/run.sh   # the edge target's deny list size (default 1000)
#   BASELINE=/path/to/old/tollgate bench/run.sh
#                           # also runs that binary (auth only and chain), interleaved with this
#                           # build, and prints this build's figures as ratios of it (before/after
#                           # a refactor, on the same machine at the same time)
#
# On a machine with 2 or more cores the proxies (nginx, both Tollgates) are pinned to core 0 and
# the mock upstream and the load generator to core 1, so a proxy's figures are its own and not a
# share of a core it fights the load generator for. CPU per request is measured twice: at
# saturation, and at a fixed offered rate (RATE, below every proxy's capacity), where it is
# comparable between targets (a saturated proxy batches more work per wakeup, so it looks cheaper
# per request). See bench/README.md for how to read the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONCURRENCY=${CONCURRENCY:-32}
STREAMS=${STREAMS:-200}
EVENTS=${EVENTS:-20}
DELAY_MS=${DELAY_MS:-50}
RATE=${RATE:-5000}
KEY=sk-bench-key-0001
MOCK=127.0.0.1:19000 NGINX=127.0.0.1:19001 GATE=127.0.0.1:19002 CHAIN=127.0.0.1:19003
BASE=127.0.0.1:19004 BASE_CHAIN=127.0.0.1:19005 EDGE=127.0.0.1:19006
# Entries of the edge target's deny list (none matches the load generator).
DENY=${DENY:-1000}
BASELINE=${BASELINE:-}
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$out/nginx.pid" ] && kill "$(cat "$out/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT

if ! command -v nginx >/dev/null; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)

# BUILD=0: measure the release binaries already built (e.g. while the tree has moved on).
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --locked -q -p tollgate -p tollgate-tests -p tollgate-bench
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1
plugins/build.sh build >/dev/null 2>&1
bin=target/release
# PIN=0: every process unpinned, sharing the machine's cores (how a gateway is deployed).
PIN=${PIN:-1}
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  proxy_cpu=(taskset -c 0) load_cpu=(taskset -c 1)
else
  proxy_cpu=() load_cpu=()
fi

"${load_cpu[@]}" "$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)

cat > "$out/nginx.conf" <<NGINX
worker_processes auto;
pid $out/nginx.pid;
error_log $out/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream mock { server $MOCK; keepalive 128; }
  server {
    listen $NGINX;
    location /v1/ {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer sk-upstream";
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_request_buffering on;
      proxy_read_timeout 300s;
    }
  }
}
NGINX
"${proxy_cpu[@]}" "$NGINX_BIN" -c "$out/nginx.conf" -p "$out" -e "$out/nginx-error.log"

cat > "$out/tollgate.yaml" <<YAML
server:
  listen: $GATE
  response_headers: {set: {}}
auth:
  secret: bench-secret-0123456789
  keys: [{name: bench, key: $KEY}]
upstreams:
  - name: mock
    url: http://$MOCK
    credential: sk-upstream
routes:
  - path_prefix: /v1/
    upstreams: [mock]
storage: {database: "sqlite://gate.db"}
admin: {enabled: false}
logging:
  level: warn
  access_log: false
YAML
"${proxy_cpu[@]}" "$bin/tollgate" run --config "$out/tollgate.yaml" & pids+=($!); gate_pid=$!

# The same gateway with all four policy kinds on the route (two upstream names for the router to
# choose between, both the mock).
W=$PWD/plugins/target/wasm32-wasip2/release
cat > "$out/chain.yaml" <<YAML
server:
  listen: $CHAIN
auth:
  secret: bench-secret-0123456789
  keys: [{name: bench, key: $KEY}]
upstreams:
  - {name: mock-a, url: "http://$MOCK", credential: sk-upstream}
  - {name: mock-b, url: "http://$MOCK", credential: sk-upstream}
routes:
  - path_prefix: /v1/
    upstreams: [mock-a, mock-b]
    policies: [bind, stamp, rotate, quota]
storage: {database: "sqlite://chain.db"}
plugins:
  - {name: bind, kind: ip-binding, module: $W/tollgate_ip_binding.wasm}
  - {name: stamp, kind: header-rewrite, module: $W/tollgate_header_rewrite.wasm, config: {request: [{set: {name: x-gw, value: "\${request_id}"}}]}}
  - {name: rotate, kind: router, module: $W/tollgate_round_robin.wasm}
  - {name: quota, kind: quota, module: $W/tollgate_quota_switch.wasm}
admin: {enabled: false}
logging:
  level: warn
  access_log: false
YAML
"${proxy_cpu[@]}" "$bin/tollgate" run --config "$out/chain.yaml" & pids+=($!); chain_pid=$!

# The plain gateway with edge protection on: a per-IP and a per-key request limit (never reached:
# they count, they do not refuse), a deny list of $DENY networks, and the security headers.
{
  sed "s/$GATE/$EDGE/; s/gate.db/edge.db/; /response_headers/d" "$out/tollgate.yaml"
  cat <<YAML
limits:
  requests:
    - {name: per-ip, by: ip, rate: 1000000/s, burst: 100000}
    - {name: per-key, by: key, rate: 1000000/s, burst: 100000}
access:
  deny:
YAML
  python3 -c "
import random
random.seed(7)
for i in range($DENY):
    a, b, c, d = 10, random.randrange(256), random.randrange(256), random.randrange(256)
    print(f'    - {a}.{b}.{c}.{d}/32' if i % 2 else f'    - {a}.{b}.{c}.0/24')"
} > "$out/edge.yaml"
"${proxy_cpu[@]}" "$bin/tollgate" run --config "$out/edge.yaml" & pids+=($!); edge_pid=$!

targets="direct:$MOCK nginx:$NGINX tollgate:$GATE chain:$CHAIN edge:$EDGE"
if [ -n "$BASELINE" ]; then
  # Own database files (an older binary refuses a schema with newer migrations, and two
  # processes must not migrate one SQLite file at once).
  sed "s/$GATE/$BASE/; s/gate.db/base.db/; /response_headers/d" "$out/tollgate.yaml" > "$out/base.yaml"
  sed "s/$CHAIN/$BASE_CHAIN/; s/chain.db/base-chain.db/" "$out/chain.yaml" > "$out/base-chain.yaml"
  "${proxy_cpu[@]}" "$BASELINE" run --config "$out/base.yaml" & pids+=($!); base_pid=$!
  "${proxy_cpu[@]}" "$BASELINE" run --config "$out/base-chain.yaml" & pids+=($!); base_chain_pid=$!
  targets="$targets base:$BASE base-chain:$BASE_CHAIN"
fi

# CPU seconds (user + system) a process has used so far.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

for addr in $MOCK $NGINX $GATE $CHAIN $EDGE $([ -n "$BASELINE" ] && echo "$BASE $BASE_CHAIN"); do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.1; done
done

# Targets are interleaved round by round and each figure is the median over ROUNDS, because a
# shared 2-core machine drifts by ±15% between runs of the same binary.
results="$out/results.jsonl"
for round in $(seq "$ROUNDS"); do
  for target in $targets; do
    name=${target%%:*} addr=${target#*:}
    url="http://$addr/v1/chat/completions"
    load() { "${load_cpu[@]}" "$bin/tollgate-bench" "$@"; }
    load rps --url "$url" --concurrency 8 --seconds 1 --key $KEY >/dev/null  # warm-up
    case $name in
      tollgate) pid=$gate_pid ;; chain) pid=$chain_pid ;; edge) pid=$edge_pid ;;
      base) pid=$base_pid ;; base-chain) pid=$base_chain_pid ;; *) pid="" ;;
    esac
    c0=$([ -n "$pid" ] && cpu_secs "$pid" || echo 0)
    r=$(load rps --url "$url" --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" --key $KEY)
    c1=$([ -n "$pid" ] && cpu_secs "$pid" || echo 0)
    f=$(load rps --url "$url" --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" --key $KEY --rate "$RATE")
    c2=$([ -n "$pid" ] && cpu_secs "$pid" || echo 0)
    s=$(load sse --url "$url" --streams "$STREAMS" --events "$EVENTS" --delay-ms "$DELAY_MS" --key $KEY)
    echo "{\"round\":$round,\"target\":\"$name\",\"cpu_s\":$(awk "BEGIN{print $c1-$c0}"),\"rps\":$r,\"fixed_cpu_s\":$(awk "BEGIN{print $c2-$c1}"),\"fixed\":$f,\"sse\":$s}" | tee -a "$results"
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(target, kind, key):
    return statistics.median(r[kind][key] for r in rows if r["target"] == target)
names = ("direct", "nginx", "tollgate", "chain")
print(f"\n== non-streaming POST, fixed concurrency (median of {len({r['round'] for r in rows})} rounds)")
print(f"{'':10}{'rps':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
for n in names:
    print(f"{n:10}{med(n,'rps','rps'):>10.0f}{med(n,'rps','p50_ms'):>10.3f}{med(n,'rps','p99_ms'):>10.3f}{med(n,'rps','errors'):>8.0f}")
def ratios(kind, key, base):
    """Tollgate/base within each round (paired, so slow drift of the machine cancels out)."""
    by_round = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["target"]] = r[kind][key]
    vals = sorted(v["tollgate"] / v[base] for v in by_round.values())
    return statistics.median(vals), vals[0], vals[-1]
for base in ("nginx", "direct"):
    (rm, rlo, rhi), (pm, plo, phi) = ratios("rps", "rps", base), ratios("rps", "p99_ms", base)
    print(f"tollgate/{base} per round: rps {rm:.2f}x (range {rlo:.2f}-{rhi:.2f}), p99 {pm:.2f}x (range {plo:.2f}-{phi:.2f})")
by_round = {}
for r in rows:
    by_round.setdefault(r["round"], {})[r["target"]] = r
chain_vs_plain = sorted(v["chain"]["rps"]["rps"] / v["tollgate"]["rps"]["rps"] for v in by_round.values())
cpu_us = lambda t, cpu="cpu_s", run="rps": statistics.median(v[t][cpu] / v[t][run]["requests"] * 1e6 for v in by_round.values())
print(f"chain/tollgate per round: rps {statistics.median(chain_vs_plain):.2f}x (range {chain_vs_plain[0]:.2f}-{chain_vs_plain[-1]:.2f})")
edge = sorted(v["edge"]["rps"]["rps"] / v["tollgate"]["rps"]["rps"] for v in by_round.values())
edge_cpu = sorted((v["edge"]["fixed_cpu_s"] / v["edge"]["fixed"]["requests"]) / (v["tollgate"]["fixed_cpu_s"] / v["tollgate"]["fixed"]["requests"]) for v in by_round.values())
print(f"edge/tollgate per round (IP and key limits, deny list, security headers): rps {statistics.median(edge):.3f}x "
      f"(range {edge[0]:.3f}-{edge[-1]:.3f}), CPU/request at a fixed rate {statistics.median(edge_cpu):.3f}x (range {edge_cpu[0]:.3f}-{edge_cpu[-1]:.3f})")
for label, cpu, run in (("at saturation", "cpu_s", "rps"), ("at a fixed rate", "fixed_cpu_s", "fixed")):
    rate = statistics.median(r[run]["rps"] for r in rows if r["target"] == "tollgate")
    t, c = cpu_us("tollgate", cpu, run), cpu_us("chain", cpu, run)
    print(f"gateway CPU per request {label} ({rate:.0f} rps): tollgate {t:.1f} us, with the 4-policy chain {c:.1f} us "
          f"(chain adds {c - t:.1f} us)")
print("\n== concurrent SSE streams (ms)")
print(f"{'':10}{'ttfb p50':>10}{'ttfb p99':>10}{'gap p50':>10}{'gap p99':>10}{'coalesced':>10}")
for n in names:
    print(f"{n:10}{med(n,'sse','ttfb_p50_ms'):>10.3f}{med(n,'sse','ttfb_p99_ms'):>10.3f}"
          f"{med(n,'sse','gap_p50_ms'):>10.3f}{med(n,'sse','gap_p99_ms'):>10.3f}{med(n,'sse','coalesced_reads'):>10.0f}")
d, g, x, _ = (med(n, 'sse', 'ttfb_p99_ms') for n in names)
print(f"tollgate TTFB p99: {x-d:+.3f} ms vs direct, {x-g:+.3f} ms vs nginx")
if any(r["target"] == "base" for r in rows):
    print("\n== this build vs BASELINE (per round, paired; median and range)")
    for new, old in (("tollgate", "base"), ("chain", "base-chain")):
        def paired(f):
            vals = sorted(f(v[new]) / f(v[old]) for v in by_round.values())
            return f"{statistics.median(vals):.3f}x (range {vals[0]:.3f}-{vals[-1]:.3f})"
        print(f"{new:9} rps {paired(lambda t: t['rps']['rps'])}, p99 {paired(lambda t: t['rps']['p99_ms'])}, "
              f"CPU/request at saturation {paired(lambda t: t['cpu_s'] / t['rps']['requests'])}, "
              f"at a fixed rate {paired(lambda t: t['fixed_cpu_s'] / t['fixed']['requests'])}")
PY

echo
echo "== one policy call (µs, through the real runtime)"
"$bin/tollgate-bench" policy
