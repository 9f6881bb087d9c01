#!/usr/bin/env bash
# What a gateway's memory is made of, idle and under load: resident size (anonymous and
# file-backed, i.e. the binary's pages), the high-water mark after wrk at 64 connections, the
# largest mappings, and CPU per request of that run. Not a test; loopback only.
#
#   bench/memory.sh [BIN] [VAR=value...]     # BIN: target/release/tollgate by default; the
#                                             # variables are set in the gateway's environment
#   bench/memory.sh target/dist/tollgate MIMALLOC_PURGE_DELAY=1000
#   REQUEST_LOG=false bench/memory.sh         # without the request log
#   ROUNDS=3 bench/memory.sh                  # a fresh gateway per round
#
# Each round starts the auth-only gateway of bench/gateway.sh, reads it idle after 4 s, drives
# wrk (2 s of warm-up, then 6 s measured), and reads it again. Needs the release binaries of this
# tree (mock-upstream) and wrk (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gateway.sh
. bench/wrk.sh
ensure_wrk
bin=${1:-target/release/tollgate}
[ $# -gt 0 ] && shift
ROUNDS=${ROUNDS:-1}
out=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$out"' EXIT
MOCK=127.0.0.1:19730 GATE=127.0.0.1:19731 KEY=${BENCH_KEY:-sk-bench-key-0001}
target/release/mock-upstream "$MOCK" >/dev/null 2>&1 & pids+=($!)
wrk_script "$out" "$KEY"
status() { awk '/^(VmRSS|VmHWM|RssAnon|RssFile):/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' "/proc/$1/status"; echo; }
for round in $(seq "$ROUNDS"); do
  rm -f "$out"/g.db*
  gateway_yaml "$GATE" "$MOCK" "$out/g.db" > "$out/g.yaml"
  env "$@" "$bin" run --config "$out/g.yaml" >"$out/gateway.log" 2>&1 & g=$!; pids+=($g)
  for _ in $(seq 100); do (echo >"/dev/tcp/${GATE%:*}/${GATE#*:}") 2>/dev/null && break; sleep 0.1; done
  sleep 4
  echo "round $round, idle:   $(status "$g")"
  url="http://$GATE/v1/chat/completions"
  wrk_rps "$out" "$url" 64 2 >/dev/null
  t0=$(awk '{print $14 + $15}' "/proc/$g/stat")
  r=$(wrk_rps "$out" "$url" 64 6)
  t1=$(awk '{print $14 + $15}' "/proc/$g/stat")
  echo "round $round, loaded: $(status "$g")"
  python3 - "$r" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); t0, t1, hz = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"  wrk: {r['rps']:.0f} requests/s, p99 {r['p99_ms']} ms, CPU per request {(t1 - t0) / hz / r['requests'] * 1e6:.1f} us")
PY
  echo "  largest mappings (KiB resident):"
  awk '/^[0-9a-f]+-[0-9a-f]+ / {name = ($6 == "" ? "[anon]" : $6) " " $2} /^Rss:/ {rss[name] += $2} END {for (n in rss) print rss[n], n}' "/proc/$g/smaps" | sort -rn | head -4 | sed 's/^/    /'
  kill "$g"; wait "$g" 2>/dev/null || true
done
