# What the A/B scripts share.
#
# The auth-only gateway config the A/B scripts run: one key, one route to the mock upstream, no
# admin plane, no access log, no per-address connection cap (every load client is 127.0.0.1).
#   gateway_yaml LISTEN MOCK DATABASE_FILE > FILE.yaml
gateway_yaml() {
  # REQUEST_LOG=false|true: set storage.request_log.enabled; LOG_SAMPLE=0…1: its `sample`
  # (each left out otherwise, for older binaries).
  local log="" opts=()
  [ -n "${REQUEST_LOG:-}" ] && opts+=("enabled: $REQUEST_LOG")
  [ -n "${LOG_SAMPLE:-}" ] && opts+=("sample: $LOG_SAMPLE")
  [ ${#opts[@]} -gt 0 ] && log=", request_log: {$(IFS=,; echo "${opts[*]}")}"
  cat <<YAML
server: {listen: "$1", max_connections_per_ip: 0}
auth:
  secret: bench-secret-0123456789
  keys: [{name: bench, key: ${BENCH_KEY:-sk-bench-key-0001}}]
upstreams: [{name: mock, url: "http://$2", credential: sk-upstream}]
routes: [{path_prefix: /v1/, upstreams: [mock]}]
storage: {database: "sqlite://$3"$log}
admin: {enabled: false}
logging: {level: warn, access_log: false}
YAML
}

# The same gateway with all four policy kinds on its route, the chain bench/run.sh measures:
# ip-binding, a header rewrite stamping the request id, round-robin over two upstream names (both
# the mock), and quota-switch. Plugins from plugins/build.sh (PLUGIN_DIR=dir: from dir instead, e.g. a
# build with symbols for profiling).
#   chain_yaml LISTEN MOCK DATABASE_FILE > FILE.yaml
chain_yaml() {
  local w=${PLUGIN_DIR:-$PWD/plugins/target/wasm32-wasip2/release}
  gateway_yaml "$@" | sed 's|^upstreams: .*|upstreams: [{name: mock-a, url: "http://'"$2"'", credential: sk-upstream}, {name: mock-b, url: "http://'"$2"'", credential: sk-upstream}]|; s|^routes: .*|routes: [{path_prefix: /v1/, upstreams: [mock-a, mock-b], policies: [bind, stamp, rotate, quota]}]|'
  cat <<YAML
plugins:
  - {name: bind, kind: ip-binding, module: $w/tollgate_ip_binding.wasm}
  - {name: stamp, kind: header-rewrite, module: $w/tollgate_header_rewrite.wasm, config: {request: [{set: {name: x-gw, value: "\${request_id}"}}]}}
  - {name: rotate, kind: router, module: $w/tollgate_round_robin.wasm}
  - {name: quota, kind: quota, module: $w/tollgate_quota_switch.wasm}
YAML
}

# The processes listening on ADDR's port, and their children (nginx's workers), one per line.
#   listening_pids ADDR
listening_pids() {
  for l in $(ss -ltnpH "sport = :${1#*:}" | grep -o 'pid=[0-9]*' | cut -d= -f2); do
    echo "$l"
    pgrep -P "$l" || true
  done | sort -u
}

# A scratch directory for a script's files, `$out`, and `pids`, the processes it starts: on exit
# they are killed, and so is an nginx that wrote its pid file into `$out`.
bench_scratch() {
  out=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$out/nginx.pid" ] && kill "$(cat "$out/nginx.pid")" 2>/dev/null || true' EXIT
}
