#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: a measure of the work a
# change removes that does not move with the machine's load (two runs of one binary agree within
# 0.3%, where timed rounds on a shared 2-core box move by 15%). Not a test; loopback only.
#
#   bench/instructions.sh TOLLGATE_BINARY... [floor] [nginx]   # each in turn; Tollgate runs the
#                                                             # auth-only config of bench/ab.sh
#   RATE=500 SECS=12 bench/instructions.sh OLD NEW floor nginx
#   KEEP=dir bench/instructions.sh NEW                 # keep the callgrind files for callgrind_annotate
#   CHAIN=1 bench/instructions.sh OLD NEW              # Tollgate runs the four-policy chain of
#                                                      # bench/run.sh (plugins from plugins/build.sh)
#   STORED=1 bench/instructions.sh NEW                 # the client key is one issued at run time
#                                                      # (`tollgate keys create`), not the YAML's
#   BENCH_KEY=tg-… bench/instructions.sh NEW           # the YAML's key is this one (compare a
#                                                      # stored key with a YAML key of its length)
#   REQUEST_LOG=false bench/instructions.sh NEW        # without the request log
#   LOG_SAMPLE=1 bench/instructions.sh NEW             # every successful request logged too
#
# Each target runs under callgrind, is warmed for 4 s, then gets a fixed offered rate (RATE per
# second for SECS, 8 connections, so every target serves the same requests and the same
# background ticks) and prints instructions per request. What this cannot see: the kernel, cache
# misses, contention between threads (valgrind runs one thread at a time), and SHA-256, which
# runs its portable code under valgrind (the CPU's SHA extensions are not emulated: about 6,900
# of Tollgate's count, several times less natively). Timings stay the job of run.sh and ab.sh.
# Needs valgrind (apt-get install valgrind) and the release binaries of this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gateway.sh
. bench/nginx.sh
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
RATE=${RATE:-500} SECS=${SECS:-12} CHAIN=${CHAIN:-0} STORED=${STORED:-0}
bin=target/release
out=${KEEP:-$(mktemp -d)}
mkdir -p "$out"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
MOCK=127.0.0.1:19700
"$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)
# valgrind cannot map the pooling allocator's reserved address space: plugin instances are
# allocated one by one instead (once each: they are pooled by the gateway after that).
export TOLLGATE_WASM_ON_DEMAND=1
i=0
for target in "$@"; do
  port=$((19710 + i))
  if [ "$CHAIN" = 1 ]; then
    chain_yaml "127.0.0.1:$port" "$MOCK" "$out/g$i.db" > "$out/g$i.yaml"
  else
    gateway_yaml "127.0.0.1:$port" "$MOCK" "$out/g$i.db" > "$out/g$i.yaml"
  fi
  key=${BENCH_KEY:-sk-bench-key-0001}
  if [ "$STORED" = 1 ] && [ "$target" != floor ] && [ "$target" != nginx ]; then
    "$target" migrate --config "$out/g$i.yaml" >/dev/null
    key=$("$target" keys --config "$out/g$i.yaml" create stored-bench | sed -n 's/^secret (shown once, stored nowhere): //p')
    [ -n "$key" ] || { echo "could not issue a key with $target" >&2; exit 1; }
  fi
  if [ "$target" = floor ]; then
    cmd=("$bin/tollgate-bench" floor --listen "127.0.0.1:$port" --upstream "http://$MOCK")
  elif [ "$target" = nginx ]; then
    # One process, in the foreground, so that callgrind follows the worker that serves.
    nginx_conf "$out" "$MOCK" "127.0.0.1:$port" |
      sed 's/worker_processes auto;/worker_processes 1; daemon off; master_process off;/' > "$out/nginx$i.conf"
    cmd=("$(command -v nginx || echo /usr/sbin/nginx)" -c "$out/nginx$i.conf" -p "$out" -e "$out/nginx-error.log")
  else
    cmd=("$target" run --config "$out/g$i.yaml")
  fi
  valgrind --tool=callgrind --callgrind-out-file="$out/cg$i.%p" "${cmd[@]}" 2>"$out/valgrind$i.log" &
  pid=$!; pids+=($pid)
  for _ in $(seq 600); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  load() { "$bin/tollgate-bench" rps --url "http://127.0.0.1:$port/v1/chat/completions" --concurrency 8 --key "$key" "$@"; }
  load --seconds 4 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  r=$(load --seconds "$SECS" --rate "$RATE")
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  n=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['requests'])" "$r")
  ir=$(grep -h '^summary:' "$out/cg$i.$pid".* | awk '{s += $2} END {printf "%.0f", s}')
  echo "$target: $n requests, $((ir / n)) instructions per request"
  kill "$pid"
  i=$((i + 1))
done
