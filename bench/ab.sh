#!/usr/bin/env bash
# Interleaved A/B of two Tollgate binaries (or one binary under two configs), unpinned, behind
# the same mock upstream, with nginx and the floor as references. Not a test; loopback only.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY            # 3 rounds, 64 connections, 8 s each
#   ROUNDS=5 SECS=10 RATE=5000 bench/ab.sh OLD NEW   # RATE: a fixed offered rate instead of saturation
#   LOADGEN=wrk bench/ab.sh OLD NEW              # saturation by wrk (bench/wrk.sh) instead of
#                                                # tollgate-bench, as bench/run.sh measures it
#   CHAIN=1 bench/ab.sh OLD NEW                  # both gateways run the four-policy chain of
#                                                # bench/run.sh (plugins from plugins/build.sh)
#   OLD_ENV="REQUEST_LOG=false" NEW_ENV="LOG_SAMPLE=1" bench/ab.sh BIN BIN
#                                                # one binary, two configs (gateway.sh's variables)
#
# Prints, per round and target: RPS, p99 (ms) and CPU per request (µs, user + system of every
# process of the target). Uses the release binaries of this tree for the mock upstream, the floor
# and the load generator (build them first: cargo build --release -p tollgate-tests -p tollgate-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/nginx.sh
. bench/gateway.sh
. bench/machine.sh
. bench/wrk.sh
old=$1 new=$2
ROUNDS=${ROUNDS:-3} SECS=${SECS:-8} RATE=${RATE:-} CHAIN=${CHAIN:-0}
bin=target/release
bench_scratch
MOCK=127.0.0.1:19200 NGINX=127.0.0.1:19201 FLOOR=127.0.0.1:19202 OLD=127.0.0.1:19203 NEW=127.0.0.1:19204
"$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)
"$bin/tollgate-bench" floor --listen "$FLOOR" --upstream "http://$MOCK" & pids+=($!)
nginx_conf "$out" "$MOCK" "$NGINX" > "$out/nginx.conf"
if [ "${LOADGEN:-rust}" = wrk ]; then ensure_wrk; wrk_script "$out" sk-bench-key-0001; fi
"$(command -v nginx || echo /usr/sbin/nginx)" -c "$out/nginx.conf" -p "$out" -e "$out/nginx-error.log"
for side in old:$OLD new:$NEW; do
  name=${side%%:*} addr=${side#*:}
  vars=${OLD_ENV:-}; [ "$name" = new ] && vars=${NEW_ENV:-}
  (
    for kv in $vars; do export "${kv?}"; done
    if [ "$CHAIN" = 1 ]; then
      chain_yaml "$addr" "$MOCK" "$out/$name.db"
    else
      gateway_yaml "$addr" "$MOCK" "$out/$name.db"
    fi
  ) > "$out/$name.yaml"
done
"$old" run --config "$out/old.yaml" & pids+=($!)
"$new" run --config "$out/new.yaml" & pids+=($!)
for addr in $MOCK $NGINX $FLOOR $OLD $NEW; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.1; done
done
# Every process listening on the port, and their children (nginx's workers).
cpu_secs() {
  local t=0
  for p in $(listening_pids "$1"); do
    t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' "/proc/$p/stat")
  done
  echo "$t"
}
machine0=$(cpu_times)
for round in $(seq "$ROUNDS"); do
  for target in nginx:$NGINX floor:$FLOOR old:$OLD new:$NEW; do
    name=${target%%:*} addr=${target#*:}
    c0=$(cpu_secs "$addr")
    if [ "${LOADGEN:-rust}" = wrk ] && [ -z "${RATE:-}" ]; then
      r=$(wrk_rps "$out" "http://$addr/v1/chat/completions" 64 "$SECS")
    else
      r=$("$bin/tollgate-bench" rps --url "http://$addr/v1/chat/completions" --concurrency 64 --seconds "$SECS" ${RATE:+--rate "$RATE"} --key sk-bench-key-0001)
    fi
    c1=$(cpu_secs "$addr")
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(f\"$round $name rps {d['rps']:.0f} p99 {d['p99_ms']:.3f} cpu/req {($c1-$c0)/d['requests']*1e6:.1f}\")" "$r"
  done
done
echo "the machine: $(steal_pct "$machine0" "$(cpu_times)")% of its CPU time stolen by the hypervisor during the rounds"
