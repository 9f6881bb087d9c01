#!/usr/bin/env bash
# Plugin isolation: how much a misbehaving plugin on one route costs another route.
#
#   bench/isolation.sh        # SECONDS_PER_RUN=5 ROUNDS=3
#
# One gateway, two routes over the same mock upstream: /v1/ runs the hostile router, which spins
# to its 5 ms deadline on every call (on_error: skip); /v2/ has no policy. /v2/ is measured alone
# (quiet), then while 20 connections hammer /v1/: with the router behaving (fair: /v2/'s fair
# share of the machine when /v1/ costs what a normal request costs), spinning with the circuit
# breaker off (breaker_failures: 0, the behaviour before it existed), and spinning with the
# default breaker. Prints /v2/'s RPS and p99 in each case, and the ratios to quiet and to fair. Unpinned: every
# process shares the machine's cores, as deployed. Not a test: it never fails on timing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
KEY=sk-bench-key-0001
MOCK=127.0.0.1:19010 GATE=127.0.0.1:19011
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked -q -p tollgate -p tollgate-tests -p tollgate-bench
rustup target add wasm32-wasip2 >/dev/null 2>&1
plugins/build.sh build >/dev/null 2>&1
bin=target/release
W=$PWD/plugins/target/wasm32-wasip2/release

"$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)

config() {
  cat <<YAML
server:
  listen: $GATE
auth:
  secret: bench-secret-0123456789
  keys: [{name: bench, key: $KEY}]
upstreams:
  - {name: a, url: "http://$MOCK", credential: sk-upstream}
  - {name: b, url: "http://$MOCK", credential: sk-upstream}
routes:
  - {path_prefix: /v1/, upstreams: [a, b], policies: [spin]}
  - {path_prefix: /v2/, upstreams: [a]}
plugins:
  - name: spin
    kind: router
    module: $W/tollgate_hostile.wasm
    config: {behaviour: $2}
    on_error: skip
    limits: {deadline: 5ms, breaker_failures: $1}
admin: {enabled: false}
logging:
  level: error
  access_log: false
YAML
}

wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return; sleep 0.1; done; }
wait_port "$MOCK"
load() { "$bin/tollgate-bench" rps --key $KEY "$@"; }
results="$out/results.jsonl"
for round in $(seq "$ROUNDS"); do
  for mode in quiet fair off on; do
    failures=5; [ "$mode" = off ] && failures=0
    behaviour=loop; [ "$mode" = fair ] && behaviour=ok
    config "$failures" "$behaviour" > "$out/gw.yaml"
    "$bin/tollgate" run --config "$out/gw.yaml" 2>/dev/null & gw=$!
    wait_port "$GATE"
    load --url "http://$GATE/v2/chat/completions" --concurrency 8 --seconds 1 >/dev/null
    noise=""
    if [ "$mode" != quiet ]; then
      load --url "http://$GATE/v1/chat/completions" --concurrency 20 --seconds $((SECONDS_PER_RUN + 2)) >/dev/null &
      noise=$!
      sleep 1
    fi
    r=$(load --url "http://$GATE/v2/chat/completions" --concurrency 8 --seconds "$SECONDS_PER_RUN")
    [ -n "$noise" ] && wait "$noise"
    kill "$gw"; wait "$gw" 2>/dev/null || true
    echo "{\"round\":$round,\"mode\":\"$mode\",\"r\":$r}" | tee -a "$results"
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(mode, key):
    return statistics.median(r["r"][key] for r in rows if r["mode"] == mode)
q_rps, q_p99 = med("quiet", "rps"), med("quiet", "p99_ms")
f_rps, f_p99 = med("fair", "rps"), med("fair", "p99_ms")
print(f"\n/v2/ while /v1/'s router spins to its deadline (median of {len({r['round'] for r in rows})} rounds)")
print(f"{'':30}{'rps':>9}{'p99 ms':>9}{'rps/quiet':>11}{'rps/fair':>10}{'p99/fair':>10}")
for mode, label in (("quiet", "no load on /v1/"), ("fair", "/v1/ loaded, router fine"),
                    ("off", "/v1/ spinning, breaker off"), ("on", "/v1/ spinning, breaker on")):
    rps, p99 = med(mode, "rps"), med(mode, "p99_ms")
    print(f"{label:30}{rps:>9.0f}{p99:>9.2f}{rps / q_rps:>10.2f}x{rps / f_rps:>9.2f}x{p99 / f_p99:>9.2f}x")
PY
