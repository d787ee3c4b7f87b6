#!/usr/bin/env bash
# Before/after CPU per request of two portico binaries, in alternating runs (single runs vary by
# 5-10% on a 2-core machine; alternation cancels the drift). Loopback only, bounded in time.
#
#   tests/bench/ab.sh ROUNDS BINARY_A BINARY_B      e.g. 4 /tmp/portico-before target/release/portico
#
# An arm may add `server` keys after an `@` and route keys after a second `@` (flow style), to
# compare settings of one binary:
#   tests/bench/ab.sh 6 'target/release/portico@fast_path: false' target/release/portico
#   tests/bench/ab.sh 6 target/release/portico 'target/release/portico@@filters: [request_id]'
#
# AB_PROTO=https measures HTTPS keep-alive (wrk over TLS), AB_PROTO=h2 HTTP/2 over TLS (h2load,
# 10 clients x 10 streams), both on a TLS listener with a self-signed ECDSA P-256 certificate.
#
# Each run: an nginx origin on CPU 1, the binary on CPU 0 (one worker, no access log), the load
# on CPU 1 for 1 s of warm-up and 5 s measured; prints the binary's CPU µs per request and req/s.
set -euo pipefail
rounds=$1; a=$2; b=$3; proto=${AB_PROTO:-http}
d=$(mktemp -d)
port=18080; origin=3101
. "$(dirname "$0")/origin.sh"
start_origin "$d" $origin
listener="{address: '127.0.0.1:$port'}"; url="http://127.0.0.1:$port/"
if [[ $proto != http ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/key.pem" \
    -out "$d/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null
  listener="{address: '127.0.0.1:$port', tls: {certificates: [{cert: '$d/cert.pem', key: '$d/key.pem'}]}}"
  url="https://127.0.0.1:$port/"
fi
load() {  # load SECONDS: prints the number of requests answered
  if [[ $proto == h2 ]]; then
    taskset -c 1 h2load -t1 -c10 -m10 -D "$1" "$url" | awk '/^requests:/{print $8}'
  else
    taskset -c 1 wrk -t1 -c32 -d"$1"s "$url" | awk '/requests in/{print $1}'
  fi
}
conf() {
cat > "$d/p.yaml" <<Y
server: {threads: 1, pid_file: $d/p.pid, upgrade_sock: $d/p.sock, $1}
listeners: [$listener]
access_log: {format: off}
upstreams:
  web: {peers: ['127.0.0.1:$origin']}
routes:
  - {path_prefix: /, upstream: web$2}
Y
}
run() {
  bin=${1%%@*}; extra=""; route=""; [[ $1 == *@* ]] && extra=${1#*@}
  [[ $extra == *@* ]] && { route=", ${extra#*@}"; extra=${extra%%@*}; }
  conf "$extra" "$route"
  taskset -c 0 "$bin" -c "$d/p.yaml" >"$d/log" 2>&1 & pp=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  load 1 >/dev/null
  read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pp/stat)
  n=$(load 5)
  read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pp/stat)
  kill $pp; wait $pp 2>/dev/null || true
  python3 -c "import os; t = 1e6 / os.sysconf('SC_CLK_TCK') / $n
print('$1', round(($u1-$u0+$s1-$s0)*t, 2), 'us/req (user', str(round(($u1-$u0)*t, 2)) + ')', $n//5, 'req/s')"
}
for _ in $(seq "$rounds"); do run "$a"; run "$b"; done
