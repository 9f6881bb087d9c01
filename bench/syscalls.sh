#!/usr/bin/env bash
# System calls per request of nginx, the floor and a Tollgate binary, at a fixed offered rate:
# what each asks of the kernel for the same requests. Not a test; loopback only.
#
#   bench/syscalls.sh [TOLLGATE_BINARY]          # default: target/release/tollgate
#   RATE=3000 SECS=4 bench/syscalls.sh BINARY
#
# Each target is warmed for 2 s, then counted with `perf stat -e 'syscalls:sys_enter_*'` (every
# process listening on its port, nginx's workers included) while it serves RATE requests per
# second over 64 connections for SECS. Prints each call made at least 0.01 times per request.
# Needs perf with tracepoint access (apt-get install linux-perf; run as root) and the release
# binaries of this tree (mock-upstream, tollgate-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/nginx.sh
. bench/gateway.sh
command -v perf >/dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 1; }
RATE=${RATE:-3000} SECS=${SECS:-4}
bin=target/release
tollgate=${1:-$bin/tollgate}
bench_scratch
MOCK=127.0.0.1:19400 NGINX=127.0.0.1:19401 FLOOR=127.0.0.1:19402 TG=127.0.0.1:19403
"$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)
"$bin/tollgate-bench" floor --listen "$FLOOR" --upstream "http://$MOCK" & pids+=($!)
nginx_conf "$out" "$MOCK" "$NGINX" > "$out/nginx.conf"
"$(command -v nginx || echo /usr/sbin/nginx)" -c "$out/nginx.conf" -p "$out" -e "$out/nginx-error.log"
gateway_yaml "$TG" "$MOCK" "$out/g.db" > "$out/g.yaml"
"$tollgate" run --config "$out/g.yaml" & pids+=($!)
for addr in $MOCK $NGINX $FLOOR $TG; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.1; done
done
load() { "$bin/tollgate-bench" rps --url "http://$1/v1/chat/completions" --concurrency 64 --key sk-bench-key-0001 "${@:2}"; }
for target in nginx:$NGINX floor:$FLOOR tollgate:$TG; do
  name=${target%%:*} addr=${target#*:}
  load "$addr" --seconds 2 >/dev/null
  perf stat -e 'syscalls:sys_enter_*' -p "$(listening_pids "$addr" | paste -sd,)" -o "$out/$name.perf" -- sleep $((SECS + 1)) &
  counting=$!
  sleep 0.3
  r=$(load "$addr" --seconds "$SECS" --rate "$RATE")
  wait "$counting"
  n=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['requests'])" "$r")
  echo "$name: $n requests; system calls per request:"
  awk -v n="$n" '$1 ~ /^[0-9,]+$/ { c = $1; gsub(",", "", c); if (c / n >= 0.01) printf "  %6.2f %s\n", c / n, substr($2, 20) }' "$out/$name.perf" | sort -rn
done
