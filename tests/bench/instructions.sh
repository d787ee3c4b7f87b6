#!/usr/bin/env bash
# User-space instructions per request of portico binaries (or settings), counted by valgrind's
# callgrind: unlike CPU time on a shared 2-core machine (5-15% run to run), the count repeats
# within ~0.1%, so small differences show. The kernel's part (the same syscalls for every arm)
# is not counted. Loopback only, bounded in time (3 s warm-up, 8 s measured per arm).
#
#   tests/bench/instructions.sh ARM...       an arm is BINARY, 'BINARY@server keys' or
#                                            'BINARY@server keys@route keys' (flow style)
#   e.g. tests/bench/instructions.sh 'target/release/portico@fast_path: false' target/release/portico
#        tests/bench/instructions.sh 'target/release/portico@@filters: [request_id]'
#   WRK_HEADER='Authorization: Bearer ...' adds a header to every request (a token for jwt);
#   several, one per line (a browser's request: tests/bench/browser-headers.txt).
#   CALLGRIND_ARGS='--cache-sim=yes' passes options to callgrind (with CALLGRIND_KEEP, the kept
#   profile's summary line then has the cache misses: I1mr, D1mr, D1mw ...).
#
# Each arm: an nginx origin, the binary under callgrind (one worker, no access log), wrk with 8
# connections; counters zeroed after the warm-up and dumped after the measured run.
set -euo pipefail
d=$(mktemp -d)
port=18181; origin=3111
. "$(dirname "$0")/origin.sh"
start_origin "$d" $origin
kept=0
for arm in "$@"; do
  bin=${arm%%@*}; extra=""; route=""; [[ $arm == *@* ]] && extra=${arm#*@}
  [[ $extra == *@* ]] && { route=", ${extra#*@}"; extra=${extra%%@*}; }
  cat > "$d/p.yaml" <<Y
server: {threads: 1, pid_file: $d/p.pid, upgrade_sock: $d/p.sock, $extra}
listeners: [{address: '127.0.0.1:$port'}]
access_log: {format: off}
upstreams:
  web: {peers: ['127.0.0.1:$origin']}
routes:
  - {path_prefix: /, upstream: web$route}
Y
  # shellcheck disable=SC2086
  valgrind --tool=callgrind ${CALLGRIND_ARGS:-} --callgrind-out-file="$d/cg.%p.out" "$bin" -c "$d/p.yaml" >"$d/log" 2>&1 & vp=$!
  for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  hdr=(); while IFS= read -r h; do [[ -n $h ]] && hdr+=(-H "$h"); done <<< "${WRK_HEADER:-}"
  wrk -t1 -c8 -d3s "${hdr[@]}" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control --zero $vp >/dev/null 2>&1
  n=$(wrk -t1 -c8 -d8s "${hdr[@]}" "http://127.0.0.1:$port/" | awk '/requests in/{print $1}')
  callgrind_control --dump=measured $vp >/dev/null 2>&1
  kill -INT $vp; wait $vp 2>/dev/null || true
  f=$(ls -t "$d"/cg.$vp.out.* | head -1)
  ir=$(awk '/^(summary|totals):/{print $2; exit}' "$f")
  python3 -c 'import sys; a, n, ir = sys.argv[1:]; print(a, n, "requests,", round(int(ir) / int(n)), "instructions per request")' "$arm" "$n" "$ir"
  # CALLGRIND_KEEP=DIR keeps each arm's profile (callgrind_annotate DIR/N.out: where they differ).
  [[ -n ${CALLGRIND_KEEP:-} ]] && { mkdir -p "$CALLGRIND_KEEP"; cp "$f" "$CALLGRIND_KEEP/$((++kept)).out"; }
  rm -f "$d"/cg.*
done
