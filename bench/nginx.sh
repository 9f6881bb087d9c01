# nginx as the benchmarks' reference proxy, configured like Tollgate: an HTTP/1.1 keep-alive pool
# to the mock upstream, streaming without buffering, the same listen backlog.
#   nginx_conf DIR UPSTREAM LISTEN > DIR/nginx.conf   (DIR holds its pid and error log)
nginx_conf() {
  cat <<NGINX
  worker_processes auto;
  pid $1/nginx.pid;
  error_log $1/nginx-error.log warn;
  events { worker_connections 4096; }
  http {
    access_log off;
    keepalive_requests 1000000;
    upstream mock { server $2; keepalive 128; }
    server {
      # As many pending connections as Tollgate's listener takes (nginx's default is 511): the
      # 1000-stream run connects at once.
      listen $3 backlog=1024;
      location /v1/ {
        proxy_pass http://mock;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Authorization "Bearer sk-upstream";
        proxy_set_header X-Real-IP \$remote_addr;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_buffering off;
        proxy_request_buffering on;
        proxy_read_timeout 300s;
      }
    }
  }
NGINX
}
