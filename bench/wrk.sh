# wrk (Debian's package) as the headline load generator of the saturation runs: it is what
# operators measure with, and it leaves the proxies more CPU than tollgate-bench's generator, so
# the differences between proxies show larger. The same request as tollgate-bench sends.
#   wrk_script DIR KEY            writes DIR/post.lua
#   wrk_rps DIR URL CONNS SECS    one run: {"rps","requests","errors","p50_ms","p99_ms"} as JSON
ensure_wrk() {
  command -v wrk >/dev/null && return
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
wrk_script() {
  cat > "$1/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"gpt-bench","messages":[{"role":"user","content":"Say hello."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
LUA
}
wrk_rps() {
  # WRK_CPU: a command prefix (e.g. `taskset -c 1`) when the load is pinned.
  ${WRK_CPU:-} wrk -t "$(nproc)" -c "$3" -d "${4}s" --latency -s "$1/post.lua" "$2" | python3 -c '
import json, re, sys
text = sys.stdin.read()
def ms(v):
    n, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]
pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", text, re.M))
requests = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
print(json.dumps({"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
                  "requests": requests, "errors": errors,
                  "p50_ms": ms(pct["50"]), "p99_ms": ms(pct["99"])}))'
}
