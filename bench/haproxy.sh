# HAProxy as a second reference proxy, configured like nginx and Tollgate: HTTP mode, keep-alive
# to the mock upstream (connections reused across clients), the upstream credential set, the
# client address forwarded, responses streamed as they come (HAProxy never buffers a body it can
# forward), the same listen backlog, one thread per core (its default).
#   haproxy_conf UPSTREAM LISTEN > DIR/haproxy.cfg   (run: haproxy -f DIR/haproxy.cfg -db)
haproxy_conf() {
  cat <<HAPROXY
global
  maxconn 9000
  log stdout format raw local0 err
defaults
  mode http
  timeout connect 10s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 60s
  option http-keep-alive
  # Forward each SSE event at once rather than waiting to fill a buffer (HAProxy otherwise
  # coalesces a stream's small writes: measured 0.02 ms gap p50 and 256 ms gap p99 without it).
  option http-no-delay
  http-reuse always
frontend bench
  bind $2 backlog 1024
  default_backend mock
backend mock
  http-request set-header Authorization "Bearer sk-upstream"
  option forwardfor
  server mock $1 maxconn 4096
HAPROXY
}
