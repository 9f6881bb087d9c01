#!/usr/bin/env bash
# What a transform costs, two ways. Not a test; loopback only.
#
#   bench/transform.sh                 # 3 interleaved rounds
#   ROUNDS=5 STREAMS=200 EVENTS=50 DELAY_MS=20 bench/transform.sh
#
# 1. Per call, through the real runtime (`tollgate-bench policy`): the anthropic-openai
#    transform's `on-request` on an Anthropic request, `on-response-body` on an OpenAI answer,
#    `on-event` on one streamed chunk, and model-alias renaming (and passing) a request.
# 2. Streams through one gateway whose route runs anthropic-openai (upstream: openai) in front of
#    the mock upstream: STREAMS concurrent streams of EVENTS events DELAY_MS apart, asked for in
#    OpenAI's shape (untranslated: one `on-request` call that passes) and in Anthropic's
#    (`/v1/messages`: every event translated), interleaved, every process unpinned. Prints each
#    round's time to first event and gap p99, and the translated/untranslated gap p99 ratio.
# Uses the release binaries of this tree (cargo build --release -p tollgate -p tollgate-tests
# -p tollgate-bench) and the components of plugins/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gateway.sh
ROUNDS=${ROUNDS:-3} STREAMS=${STREAMS:-200} EVENTS=${EVENTS:-50} DELAY_MS=${DELAY_MS:-20}
bin=target/release
out=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
echo "per call (µs):"
"$bin/tollgate-bench" policy | tr ',' '\n' | grep -E 'transform|alias' | tr -d '{}"'
MOCK=127.0.0.1:19300 GW=127.0.0.1:19301
"$bin/mock-upstream" "$MOCK" 2>/dev/null & pids+=($!)
w=$PWD/plugins/target/wasm32-wasip2/release
gateway_yaml "$GW" "$MOCK" "$out/g.db" \
  | sed 's|^routes: .*|routes: [{path_prefix: /v1/, upstreams: [mock], policies: [translate]}]|' > "$out/g.yaml"
echo "plugins: [{name: translate, kind: transform, module: $w/tollgate_anthropic_openai.wasm, config: {upstream: openai}}]" >> "$out/g.yaml"
"$bin/tollgate" run --config "$out/g.yaml" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://$GW/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://$GW/health" >/dev/null || { echo "the gateway did not start" >&2; exit 1; }
sse() {
  "$bin/tollgate-bench" sse --url "http://$GW$1" --key sk-bench-key-0001 \
    --streams "$STREAMS" --events "$EVENTS" --delay-ms "$DELAY_MS"
}
sse /v1/chat/completions >/dev/null  # warm-up
echo "streams ($STREAMS × $EVENTS events, ${DELAY_MS} ms apart):"
plain_sum=0 translated_sum=0
for r in $(seq "$ROUNDS"); do
  for path in /v1/chat/completions /v1/messages; do
    line=$(sse "$path")
    gap=$(echo "$line" | sed -n 's/.*"gap_p99_ms":\([0-9.]*\).*/\1/p')
    echo "round $r $path: $line"
    if [ "$path" = /v1/messages ]; then
      translated_sum=$(echo "$translated_sum + $gap" | bc -l)
    else
      plain_sum=$(echo "$plain_sum + $gap" | bc -l)
    fi
  done
done
printf 'gap p99, translated / untranslated (mean of %s rounds): %.2f\n' "$ROUNDS" \
  "$(echo "$translated_sum / $plain_sum" | bc -l)"
