#!/usr/bin/env bash
# Where a proxy's tail latency comes from: a scheduler profile of nginx and a Tollgate binary at
# saturation (wrk, 64 connections), each alone on the machine with the mock. For every thread of
# the target: time on CPU, context switches, and how long it waited between being woken and
# running (`perf sched latency`: average and worst), then the same for the other processes that
# shared the cores; with wrk's p50/p99 of that run. A worker that waits long to run is a tail
# the scheduler made (another thread took its core); a worker that runs long per wakeup is a
# tail the proxy made. Not a test; loopback only.
#
#   bench/latency-profile.sh [TOLLGATE_BINARY]      # default: target/release/tollgate
#   SECS=5 CONNS=64 bench/latency-profile.sh BINARY
#
# Needs perf with tracepoint access (apt-get install linux-perf; run as root), wrk (installed if
# missing) and the release binaries of this tree (mock-upstream).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/nginx.sh
. bench/gateway.sh
. bench/wrk.sh
command -v perf >/dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 1; }
ensure_wrk
SECS=${SECS:-5} CONNS=${CONNS:-64}
bin=target/release
tollgate=${1:-$bin/tollgate}
bench_scratch
MOCK=127.0.0.1:19740 NGINX=127.0.0.1:19741 TG=127.0.0.1:19742
"$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)
wrk_script "$out" sk-bench-key-0001
for target in nginx:$NGINX tollgate:$TG; do
  name=${target%%:*} addr=${target#*:}
  if [ "$name" = nginx ]; then
    nginx_conf "$out" "$MOCK" "$NGINX" > "$out/nginx.conf"
    "$(command -v nginx || echo /usr/sbin/nginx)" -c "$out/nginx.conf" -p "$out" -e "$out/nginx-error.log"
  else
    gateway_yaml "$TG" "$MOCK" "$out/g.db" > "$out/g.yaml"
    "$tollgate" run --config "$out/g.yaml" & pids+=($!)
  fi
  for _ in $(seq 100); do (echo >"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null && break; sleep 0.1; done
  url="http://$addr/v1/chat/completions"
  wrk_rps "$out" "$url" "$CONNS" 2 >/dev/null
  perf sched record -q -o "$out/$name.data" -- sleep $((SECS + 1)) >/dev/null 2>&1 &
  recording=$!
  sleep 0.5
  r=$(wrk_rps "$out" "$url" "$CONNS" "$SECS")
  wait "$recording"
  echo "== $name: $r"
  target_pids=$(listening_pids "$addr" | paste -sd' ')
  # The target's threads by thread id, so its lines can be told from the rest.
  tids=$(for p in $target_pids; do ls "/proc/$p/task"; done | paste -sd'|')
  perf sched latency -i "$out/$name.data" --pids --sort max 2>/dev/null |
    awk -F'|' -v tids="^($tids)$" '
      # Task | Runtime ms | Switches | Avg delay ms | Max delay ms | ...: names may hold spaces.
      $1 ~ /:[0-9]+ *$/ && NF >= 5 {
        task = $1; gsub(/^ +| +$/, "", task); tid = task; sub(/.*:/, "", tid)
        split($2, run, " "); split($4, avg, " "); split($5, max, " ")
        line = sprintf("  %-28s %10s ms on CPU %8s switches  delay avg %8s ms  max %8s ms", task, run[1], $3 + 0, avg[2], max[2])
        if (tid ~ tids) mine = mine line "\n"; else if (n++ < 6) other = other line "\n"
      }
      END { printf "its threads:\n%s", mine; printf "the processes beside it with the longest waits:\n%s", other }'
  if [ "$name" = nginx ]; then kill "$(cat "$out/nginx.pid")"; rm -f "$out/nginx.pid"; else kill "${pids[-1]}"; fi
  sleep 1
done
