#!/usr/bin/env bash
# Benchmark: the same workloads, in one run, against the mock upstream directly, against nginx and
# HAProxy as equivalent streaming reverse proxies, and against Tollgate. Prints figures and ratios.
# Not a test: it never fails on timing. Loopback only. The saturation runs use wrk (Debian's
# package), the load generator operators use; the fixed-rate and SSE runs use tollgate-bench
# (open loop, SSE timing), which wrk cannot do. LOADGEN=rust puts tollgate-bench on the
# saturation runs too (the figures of the runs before issue #36).
#
#   bench/run.sh            # 5 rounds, per target, of: a 5 s RPS run at 64 connections, a
#                           # 10 s open-loop run at 5000 rps, 200 SSE streams at once, 1000
#                           # concurrent streams sustained for 10 s (SSE_HIGH_SECONDS); then a
#                           # micro-benchmark of one call into each policy kind
#   ROUNDS=5 SECONDS_PER_RUN=10 FIXED_SECONDS=10 STREAMS=100 STREAMS_HIGH=1000 RATE=5000 bench/run.sh
#   PIN=1 bench/run.sh      # pinned: proxies on core 0, upstream and load on core 1 (the default,
#                           # PIN=0, leaves every process unpinned, sharing every core: how a
#                           # gateway is deployed, and the headline figure)
#   DENY=100000 bench/run.sh   # the edge target's deny list size (default 1000)
#   PROFILE=dist bench/run.sh   # the gateway as install.sh and the image build it (fat LTO)
#   BASELINE=/path/to/old/tollgate bench/run.sh
#                           # also runs that binary (auth only and chain), interleaved with this
#                           # build, and prints this build's figures as ratios of it (before/after
#                           # a refactor, on the same machine at the same time)
#
# With PIN=1 on a machine with 2 or more cores the proxies (nginx, both Tollgates) are pinned to
# core 0 and the mock upstream and the load generator to core 1, so a proxy's figures are its own
# and not a share of a core it fights the load generator for. CPU per request is measured twice: at
# saturation, and at a fixed offered rate (RATE, below every proxy's capacity), where it is
# comparable between targets (a saturated proxy batches more work per wakeup, so it looks cheaper
# per request). See bench/README.md for how to read the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/nginx.sh
. bench/haproxy.sh
. bench/wrk.sh
. bench/machine.sh
. bench/gateway.sh
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONCURRENCY=${CONCURRENCY:-64}
STREAMS=${STREAMS:-200}
EVENTS=${EVENTS:-20}
DELAY_MS=${DELAY_MS:-50}
RATE=${RATE:-5000}
FIXED_SECONDS=${FIXED_SECONDS:-10}
STREAMS_HIGH=${STREAMS_HIGH:-1000}
# The high-concurrency SSE run is sustained: each client streams again on its connection until
# this many seconds have passed, so streams/s is a rate, not one batch's makespan.
SSE_HIGH_SECONDS=${SSE_HIGH_SECONDS:-10}
KEY=sk-bench-key-0001
# 1000 streams through a proxy hold about 3000 sockets.
ulimit -n 65536 2>/dev/null || true
MOCK=127.0.0.1:19000 NGINX=127.0.0.1:19001 GATE=127.0.0.1:19002 CHAIN=127.0.0.1:19003
BASE=127.0.0.1:19004 BASE_CHAIN=127.0.0.1:19005 EDGE=127.0.0.1:19006 FLOOR=127.0.0.1:19007
HAPROXY=127.0.0.1:19008
LOADGEN=${LOADGEN:-wrk}
# Entries of the edge target's deny list (none matches the load generator).
DENY=${DENY:-1000}
BASELINE=${BASELINE:-}
# PROFILE=dist: the gateway built with that Cargo profile (what install.sh and the image ship)
# instead of the release build; the mock, the floor and the load generator stay release builds.
PROFILE=${PROFILE:-}
gate=target/${PROFILE:-release}/tollgate
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$out/nginx.pid" ] && kill "$(cat "$out/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT

if ! command -v nginx >/dev/null; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
ensure_wrk

# BUILD=0: measure the release binaries already built (e.g. while the tree has moved on).
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --locked -q -p tollgate -p tollgate-tests -p tollgate-bench
  [ -z "$PROFILE" ] || cargo build --profile "$PROFILE" --locked -q -p tollgate
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1
plugins/build.sh build >/dev/null 2>&1
bin=target/release
# PIN=0: every process unpinned, sharing the machine's cores (how a gateway is deployed).
PIN=${PIN:-0}
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  proxy_cpu=(taskset -c 0) load_cpu=(taskset -c 1)
else
  proxy_cpu=() load_cpu=()
fi

"${load_cpu[@]}" "$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)

nginx_conf "$out" "$MOCK" "$NGINX" > "$out/nginx.conf"
"${proxy_cpu[@]}" "$NGINX_BIN" -c "$out/nginx.conf" -p "$out" -e "$out/nginx-error.log"
haproxy_conf "$MOCK" "$HAPROXY" > "$out/haproxy.cfg"
"${proxy_cpu[@]}" "$HAPROXY_BIN" -f "$out/haproxy.cfg" -db >"$out/haproxy.log" 2>&1 & pids+=($!); haproxy_pid=$!
wrk_script "$out" "$KEY"
WRK_CPU="${load_cpu[*]}"

cat > "$out/tollgate.yaml" <<YAML
server:
  listen: $GATE
  response_headers: {set: {}}
  # Every benchmark client comes from 127.0.0.1: the default cap of 256 connections per address
  # would refuse most of the 1000-stream run.
  max_connections_per_ip: 0
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
"${proxy_cpu[@]}" "$gate" run --config "$out/tollgate.yaml" & pids+=($!); gate_pid=$!

# The same gateway with all four policy kinds on the route (bench/gateway.sh, `chain_yaml`).
chain_yaml "$CHAIN" "$MOCK" chain.db > "$out/chain.yaml"
"${proxy_cpu[@]}" "$gate" run --config "$out/chain.yaml" & pids+=($!); chain_pid=$!

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
"${proxy_cpu[@]}" "$gate" run --config "$out/edge.yaml" & pids+=($!); edge_pid=$!

# The floor: a bare hyper proxy with Tollgate's thread layout and upstream client, and nothing
# else (what hyper and tokio cost; the gap between it and Tollgate is what Tollgate's own work
# costs).
"${proxy_cpu[@]}" "$bin/tollgate-bench" floor --listen "$FLOOR" --upstream "http://$MOCK" & pids+=($!); floor_pid=$!
targets="direct:$MOCK nginx:$NGINX haproxy:$HAPROXY floor:$FLOOR tollgate:$GATE chain:$CHAIN edge:$EDGE"
if [ -n "$BASELINE" ]; then
  # Own database files (an older binary refuses a schema with newer migrations, and two
  # processes must not migrate one SQLite file at once).
  sed "s/$GATE/$BASE/; s/gate.db/base.db/; /response_headers/d" "$out/tollgate.yaml" > "$out/base.yaml"
  sed "s/$CHAIN/$BASE_CHAIN/; s/chain.db/base-chain.db/" "$out/chain.yaml" > "$out/base-chain.yaml"
  "${proxy_cpu[@]}" "$BASELINE" run --config "$out/base.yaml" & pids+=($!); base_pid=$!
  "${proxy_cpu[@]}" "$BASELINE" run --config "$out/base-chain.yaml" & pids+=($!); base_chain_pid=$!
  targets="$targets base:$BASE base-chain:$BASE_CHAIN"
fi

# A target's processes: the gateway, or nginx's master and workers.
pids_of() {
  case $1 in
    floor) echo "$floor_pid" ;; tollgate) echo "$gate_pid" ;; chain) echo "$chain_pid" ;; edge) echo "$edge_pid" ;;
    haproxy) echo "$haproxy_pid" ;;
    base) echo "$base_pid" ;; base-chain) echo "$base_chain_pid" ;;
    nginx) m=$(cat "$out/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')" ;;
    *) echo "" ;;
  esac
}
# CPU seconds (user + system) the processes have used so far.
cpu_secs() { local t=0; for p in $1; do t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' "/proc/$p/stat"); done; echo "$t"; }
# Resident memory (field VmRSS, or VmHWM for the peak) of the processes, in MiB.
rss_mib() { local t=0; for p in $1; do t=$(awk -v t="$t" -v f="$2:" '$1 == f {t += $2} END {print t}' "/proc/$p/status"); done; awk -v t="$t" 'BEGIN {print t / 1024}'; }

for addr in $MOCK $NGINX $HAPROXY $FLOOR $GATE $CHAIN $EDGE $([ -n "$BASELINE" ] && echo "$BASE $BASE_CHAIN"); do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.1; done
done

# Targets are interleaved round by round and each figure is the median over ROUNDS, because a
# shared 2-core machine drifts by ±15% between runs of the same binary.
results="$out/results.jsonl"
memory="$out/memory.jsonl"
for target in $targets; do
  name=${target%%:*}
  [ -n "$(pids_of "$name")" ] && echo "{\"target\":\"$name\",\"idle_mib\":$(rss_mib "$(pids_of "$name")" VmRSS)}" >> "$memory"
done
machine0=$(cpu_times)
for round in $(seq "$ROUNDS"); do
  for target in $targets; do
    name=${target%%:*} addr=${target#*:}
    url="http://$addr/v1/chat/completions"
    load() { "${load_cpu[@]}" "$bin/tollgate-bench" "$@"; }
    load rps --url "$url" --concurrency 8 --seconds 1 --key $KEY >/dev/null  # warm-up
    pids=$(pids_of "$name")
    c0=$(cpu_secs "$pids")
    if [ "$LOADGEN" = rust ]; then
      r=$(load rps --url "$url" --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" --key $KEY)
    else
      r=$(wrk_rps "$out" "$url" "$CONCURRENCY" "$SECONDS_PER_RUN")
    fi
    c1=$(cpu_secs "$pids")
    f=$(load rps --url "$url" --concurrency "$CONCURRENCY" --seconds "$FIXED_SECONDS" --key $KEY --rate "$RATE")
    c2=$(cpu_secs "$pids")
    # The high-water mark under the 64-connection load, before the stream runs raise it.
    [ "$round" = 1 ] && echo "{\"target\":\"$name\",\"load_mib\":$(rss_mib "$pids" VmHWM)}" >> "$memory"
    s=$(load sse --url "$url" --streams "$STREAMS" --events "$EVENTS" --delay-ms "$DELAY_MS" --key $KEY)
    case $name in
      direct|nginx|haproxy|tollgate|chain) h=$(load sse --url "$url" --streams "$STREAMS_HIGH" --events "$EVENTS" --delay-ms "$DELAY_MS" --key $KEY --seconds "$SSE_HIGH_SECONDS") ;;
      *) h=null ;;
    esac
    echo "{\"round\":$round,\"target\":\"$name\",\"cpu_s\":$(awk "BEGIN{print $c1-$c0}"),\"rps\":$r,\"fixed_cpu_s\":$(awk "BEGIN{print $c2-$c1}"),\"fixed\":$f,\"sse\":$s,\"sse_high\":$h}" | tee -a "$results"
  done
done
machine1=$(cpu_times)
for target in $targets; do
  name=${target%%:*}
  [ -n "$(pids_of "$name")" ] && echo "{\"target\":\"$name\",\"peak_mib\":$(rss_mib "$(pids_of "$name")" VmHWM)}" >> "$memory"
done

LOADGEN=$LOADGEN python3 - "$results" "$memory" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mem = {}
for l in open(sys.argv[2]):
    m = json.loads(l)
    mem.setdefault(m["target"], {}).update(m)
by_round = {}
for r in rows:
    by_round.setdefault(r["round"], {})[r["target"]] = r
def med(target, kind, key):
    return statistics.median(r[kind][key] for r in rows if r["target"] == target)
def paired(f, new, old):
    """new/old within each round (paired, so slow drift of the machine cancels out)."""
    vals = sorted(f(v[new]) / f(v[old]) for v in by_round.values())
    return statistics.median(vals), vals[0], vals[-1]
def fmt(t):
    return f"{t[0]:.2f}x ({t[1]:.2f}-{t[2]:.2f})"
cpu_req = lambda cpu, run: (lambda t: t[cpu] / t[run]["requests"] * 1e6)
names = [n for n in ("direct", "nginx", "haproxy", "floor", "tollgate", "chain", "edge") if n in {r["target"] for r in rows}]
n_rounds = len(by_round)
gen = "wrk" if os.environ.get("LOADGEN", "wrk") != "rust" else "tollgate-bench"
print(f"\n== non-streaming POST (median of {n_rounds} rounds; saturation by {gen}; CPU per request in us; RSS in MiB)")
print(f"{'':10}{'rps':>9}{'p50 ms':>8}{'p99 ms':>8}{'err':>5}{'cpu sat':>9}{'cpu 5k':>8}"
      f"{'5k p50':>8}{'5k p99':>8}{'+p50 us':>9}{'+p99 us':>9}{'idle':>7}{'load':>7}{'peak':>7}")
for n in names:
    sat = statistics.median(cpu_req("cpu_s", "rps")(v[n]) for v in by_round.values()) if n != "direct" else float("nan")
    fix = statistics.median(cpu_req("fixed_cpu_s", "fixed")(v[n]) for v in by_round.values()) if n != "direct" else float("nan")
    add50 = statistics.median((v[n]["fixed"]["p50_ms"] - v["direct"]["fixed"]["p50_ms"]) * 1e3 for v in by_round.values())
    add99 = statistics.median((v[n]["fixed"]["p99_ms"] - v["direct"]["fixed"]["p99_ms"]) * 1e3 for v in by_round.values())
    m = mem.get(n, {})
    print(f"{n:10}{med(n,'rps','rps'):>9.0f}{med(n,'rps','p50_ms'):>8.3f}{med(n,'rps','p99_ms'):>8.3f}{med(n,'rps','errors'):>5.0f}"
          f"{sat:>9.1f}{fix:>8.1f}{med(n,'fixed','p50_ms'):>8.3f}{med(n,'fixed','p99_ms'):>8.3f}{add50:>9.0f}{add99:>9.0f}"
          f"{m.get('idle_mib', float('nan')):>7.1f}{m.get('load_mib', float('nan')):>7.1f}{m.get('peak_mib', float('nan')):>7.1f}")
print("(+p50/+p99: latency added over direct in the open-loop run at the fixed rate, per round;")
print(" RSS: idle before the first round, load the high-water mark after round 1's POST runs, peak after all)")
for new in ("haproxy", "floor", "tollgate", "chain"):
    for base in ("nginx", "haproxy", "direct"):
        if new == base or base not in names or new not in names:
            continue
        print(f"{new}/{base} per round: rps {fmt(paired(lambda t: t['rps']['rps'], new, base))}, "
              f"p99 {fmt(paired(lambda t: t['rps']['p99_ms'], new, base))}"
              + (f", CPU/request at saturation {fmt(paired(cpu_req('cpu_s', 'rps'), new, base))}, "
                 f"at the fixed rate {fmt(paired(cpu_req('fixed_cpu_s', 'fixed'), new, base))}" if base != "direct" else ""))
chain_vs_plain = paired(lambda t: t["rps"]["rps"], "chain", "tollgate")
print(f"chain/tollgate per round: rps {fmt(chain_vs_plain)}")
print(f"tollgate/floor per round (what Tollgate's own work costs): "
      f"rps {fmt(paired(lambda t: t['rps']['rps'], 'tollgate', 'floor'))}, "
      f"CPU/request at saturation {fmt(paired(cpu_req('cpu_s', 'rps'), 'tollgate', 'floor'))}")
if "edge" in names:
    print(f"edge/tollgate per round (IP and key limits, deny list, security headers): "
          f"rps {fmt(paired(lambda t: t['rps']['rps'], 'edge', 'tollgate'))}, "
          f"CPU/request at the fixed rate {fmt(paired(cpu_req('fixed_cpu_s', 'fixed'), 'edge', 'tollgate'))}")
for kind, label in (("sse", "200"), ("sse_high", "high")):
    have = [n for n in names if all(r.get(kind) for r in rows if r["target"] == n)]
    if not have:
        continue
    first = next(r[kind] for r in rows if r.get(kind))
    streams, secs = first.get("concurrency", first["streams"]), first.get("seconds", 0)
    how = f"sustained {secs} s: each client streams again when one ends" if secs else "one batch: streams/s is its size over its makespan"
    print(f"\n== {streams} concurrent SSE streams (ms; {how})")
    print(f"{'':10}{'ttfb p50':>10}{'ttfb p99':>10}{'gap p50':>10}{'gap p99':>10}{'coalesced':>10}{'streams/s':>10}{'failed':>8}")
    for n in have:
        print(f"{n:10}{med(n,kind,'ttfb_p50_ms'):>10.3f}{med(n,kind,'ttfb_p99_ms'):>10.3f}"
              f"{med(n,kind,'gap_p50_ms'):>10.3f}{med(n,kind,'gap_p99_ms'):>10.3f}{med(n,kind,'coalesced_reads'):>10.0f}"
              f"{med(n,kind,'streams_per_s'):>10.1f}{sum(r[kind].get('failed', 0) for r in rows if r['target'] == n):>8}")
    if "tollgate" in have and "nginx" in have:
        x, d, g = (med(n, kind, "ttfb_p99_ms") for n in ("tollgate", "direct", "nginx"))
        sp = paired(lambda t: t[kind]["streams_per_s"], "tollgate", "nginx")
        gp = paired(lambda t: t[kind]["gap_p99_ms"], "tollgate", "nginx")
        print(f"tollgate TTFB p99: {x-d:+.3f} ms vs direct, {x-g:+.3f} ms vs nginx; streams/s vs nginx {fmt(sp)}; gap p99 vs nginx {fmt(gp)}")
if any(r["target"] == "base" for r in rows):
    print("\n== this build vs BASELINE (per round, paired; median and range)")
    for new, old in (("tollgate", "base"), ("chain", "base-chain")):
        print(f"{new:9} rps {fmt(paired(lambda t: t['rps']['rps'], new, old))}, "
              f"p99 {fmt(paired(lambda t: t['rps']['p99_ms'], new, old))}, "
              f"CPU/request at saturation {fmt(paired(cpu_req('cpu_s', 'rps'), new, old))}, "
              f"at a fixed rate {fmt(paired(cpu_req('fixed_cpu_s', 'fixed'), new, old))}")
PY

echo
echo "== the machine: $(steal_pct "$machine0" "$machine1")% of its CPU time was stolen by the hypervisor during the rounds"
echo "   (more than a few percent: the rounds' timings are not comparable with other runs)"
echo
echo "== one policy call (µs, through the real runtime)"
"$bin/tollgate-bench" policy
