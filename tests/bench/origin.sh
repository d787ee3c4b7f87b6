# Sourced by ab.sh and instructions.sh: an nginx origin answering "ok" on 127.0.0.1:$2, pinned
# to CPU 1, its files in $1; stopped (and $1 removed) when the script exits.
start_origin() {
  local dir=$1 port=$2
  cat > "$dir/origin.conf" <<Y
worker_processes 1; pid $dir/origin.pid; error_log $dir/origin-error.log;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$port reuseport; keepalive_requests 1000000;
    location / { return 200 "ok\n"; } } }
Y
  taskset -c 1 nginx -c "$dir/origin.conf" -p "$dir" -g "daemon off;" & ng=$!
  trap 'kill $ng 2>/dev/null; wait $ng 2>/dev/null; rm -rf "'"$dir"'"' EXIT
}
