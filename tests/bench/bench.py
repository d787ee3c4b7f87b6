#!/usr/bin/env python3
"""Side-by-side benchmark of portico, nginx and HAProxy on loopback (`make bench`).

Each proxy runs alone on CPU 0 with one worker, upstream keepalive and the same forwarding
headers; the origins and the load generator run on CPU 1. For each proxy:
  - HTTP: wrk, 1 thread, 32 connections, DURATION seconds: requests/s, p50/p99 latency, and the
    proxy's CPU time per request (utime+stime from /proc, so the figure holds even when the
    proxy is not the bottleneck), and how much of it is user space (the rest is the kernel);
  - WebSocket messages: 16 connections echoing a small message back and forth for DURATION
    seconds (tests/bench/ws_load.py): messages/s and the proxy's CPU time per message, and its
    user part;
  - idle WebSockets: RSS growth per connection with N open (tests/bench/ws_memory.py);
  - what an edge does (portico, nginx and HAProxy, each terminating TLS with the same ECDSA
    P-256 certificate): HTTPS keep-alive (wrk over TLS) and HTTP/2 over TLS (h2load, 10
    clients x 10 streams), CPU per request and its user part; a new TLS connection with a full
    handshake per request (tests/bench/handshakes.py), CPU per handshake; idle wss://
    WebSockets (ws_memory.py with WS_TLS=1), RSS growth per connection.
A fourth arm, portico-wasm, is portico with one Wasm filter on the HTTP route (one request
header added: tests/bench/add_header.wat), for what a Proxy-Wasm filter costs. BENCH_ONLY=portico,nginx runs a subset; BARE_PINGORA=path/to/bare_pingora adds Pingora alone
(examples/bare_pingora.rs); PINGORA_FLOOR=path/to/pingora_floor adds Pingora's session types
alone with no proxy logic (examples/pingora_floor.rs: requests only, HTTP/1, HTTPS and HTTP/2),
the floor under any proxy built on them. BENCH_ROUNDS (default 3): the proxies take turns this many
times and each figure is the median (single runs on a 2-core machine vary by 5-15%).
Prints one table with every figure also as a ratio to nginx and to HAProxy. Loopback only;
every run is bounded in time. BENCH_README=docs/performance.md (what `make bench` passes): the results
table there, between the `bench:begin` and `bench:end` markers, is replaced by this run's
(date, machine, versions, figures, ratios, targets), when portico, nginx and HAProxy all ran.

usage: bench.py PORTICO_BINARY ECHO_ORIGIN_BINARY [DURATION_S [IDLE_WS]]
       bench.py --check-readme docs/performance.md   (make check-bench, in CI: the results block is there)
"""
import os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ORIGIN_HTTP, ORIGIN_WS = 3101, 3003  # nginx origin; the demo echo origin listens on 3003
PORTS = {"portico": 3201, "nginx": 3202, "haproxy": 3203, "pingora": 3204, "portico-wasm": 3205, "floor": 3206}
# Their TLS listeners (HTTPS, HTTP/2): the proxies that terminate TLS in the benchmark.
TLS_PORTS = {"portico": 3211, "nginx": 3212, "haproxy": 3213, "floor": 3216}
CLK = os.sysconf("SC_CLK_TCK")

def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")

def cpu_seconds(pid):
    """(user, system) CPU seconds of pid and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK

def children_cpu(pid):
    """(user, system) CPU of pid and its children; nginx's work happens in its single worker."""
    user, system = cpu_seconds(pid)
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        u, s = cpu_seconds(int(child))
        user, system = user + u, system + s
    return user, system

def worker_pid(name, pid):
    if name != "nginx":
        return pid
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return int(kids[0])

def certificate(tmp):
    """One self-signed ECDSA P-256 certificate for every proxy (and HAProxy's cert+key file)."""
    cert, key, both = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    with open(both, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, both

def configs(tmp):
    cert, key, both = certificate(tmp)
    nginx_origin = f"""
worker_processes 1; pid {tmp}/origin.pid; error_log {tmp}/origin-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{ORIGIN_HTTP} reuseport; keepalive_requests 1000000;
    location / {{ return 200 "ok\\n"; }} }} }}
"""
    nginx_proxy = f"""
worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log; worker_rlimit_nofile 65536;
events {{ worker_connections 60000; }}
http {{ access_log off;
  upstream web {{ server 127.0.0.1:{ORIGIN_HTTP}; keepalive 64; keepalive_requests 1000000; }}
  upstream ws {{ server 127.0.0.1:{ORIGIN_WS}; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{ listen 127.0.0.1:{PORTS['nginx']}; keepalive_requests 1000000;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    location / {{ proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /ws/ {{ proxy_pass http://ws; proxy_http_version 1.1; proxy_read_timeout 1h;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade; }} }}
  server {{ listen 127.0.0.1:{TLS_PORTS['nginx']} ssl http2; keepalive_requests 1000000;
    ssl_certificate {cert}; ssl_certificate_key {key};
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    location / {{ proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /ws/ {{ proxy_pass http://ws; proxy_http_version 1.1; proxy_read_timeout 1h;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade; }} }} }}
"""
    haproxy = f"""
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 3s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  option forwardfor
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']}
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  use_backend ws if {{ path_beg /ws/ }}
  default_backend web
frontend fe_tls
  bind 127.0.0.1:{TLS_PORTS['haproxy']} ssl crt {both} alpn h2,http/1.1
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  use_backend ws if {{ path_beg /ws/ }}
  default_backend web
backend web
  http-reuse always
  server o 127.0.0.1:{ORIGIN_HTTP}
backend ws
  server w 127.0.0.1:{ORIGIN_WS}
"""
    def portico(name, route_extra="", tls=False):
        tls_listener = (f"\n  - {{address: '127.0.0.1:{TLS_PORTS[name]}', tls: {{certificates: [{{cert: '{cert}', key: '{key}'}}]}}}}"
                        if tls else "")
        return f"""
server: {{threads: 1, pid_file: {tmp}/{name}.pid, upgrade_sock: {tmp}/{name}.sock}}
listeners:
  - {{address: '127.0.0.1:{PORTS[name]}'}}{tls_listener}
access_log: {{format: off}}
upstreams:
  web: {{peers: ['127.0.0.1:{ORIGIN_HTTP}']}}
  ws: {{peers: ['127.0.0.1:{ORIGIN_WS}']}}
routes:
  - {{path_prefix: /ws/, upstream: ws}}
  - {{path_prefix: /, upstream: web{route_extra}}}
"""
    # portico-wasm: the same with one Wasm filter (adds a request header) on the HTTP route.
    wasm = f", filters: [{{wasm: {{module: '{HERE}/add_header.wat'}}}}]"
    texts = [("origin.conf", nginx_origin), ("nginx.conf", nginx_proxy), ("haproxy.cfg", haproxy),
             ("portico.yaml", portico("portico", tls=True)), ("portico-wasm.yaml", portico("portico-wasm", wasm))]
    files = {}
    for name, text in texts:
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(text)
        files[name] = path
    return files

README_BEGIN = "<!-- bench:begin: written by tests/bench/bench.py (make bench), do not edit -->"
README_END = "<!-- bench:end -->"
LABELS = {"portico": "portico", "nginx": "nginx", "haproxy": "HAProxy", "pingora": "bare Pingora",
          "portico-wasm": "portico, 1 Wasm filter", "floor": "Pingora's sessions alone"}
# Arms that only forward requests (no WebSocket figures).
REQUESTS_ONLY = ("floor",)

def fig(v, spec):
    """v formatted by spec, or a dash where the arm has no such figure."""
    return "–" if v is None or v != v else format(v, spec)

def machine():
    """CPU model, CPU count and kernel of this machine, for the README's table."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    return f"{model}, {os.cpu_count()} CPUs, Linux {os.uname().release}"

def versions():
    """nginx and HAProxy versions as they print them."""
    def said(cmd, stream):
        try:
            return getattr(subprocess.run(cmd, capture_output=True, text=True), stream)
        except FileNotFoundError:  # --check-readme on a machine without them (CI)
            return ""
    nginx = said(["nginx", "-v"], "stderr")
    haproxy = said(["haproxy", "-v"], "stdout")
    n = re.search(r"nginx/(\S+)", nginx)
    h = re.search(r"version (\S+)", haproxy)
    return f"nginx {n.group(1) if n else '?'}, HAProxy {h.group(1) if h else '?'}"

def ratios(p, o):
    return {"cpu": p["cpu_us"] / o["cpu_us"], "msg": p["ws_us"] / o["ws_us"], "p99": p["p99"] / o["p99"],
            "kib": p["ws_kib"] / o["ws_kib"], "rps": p["rps"] / o["rps"]}

def render(results, runs, when, setup):
    """The README's results block: the table, every round's CPU figures, ratios, the targets."""
    out = [README_BEGIN, "", f"{when}, {machine()}, {versions()}, {setup}:", "",
           "| | req/s | p50 ms | p99 ms | CPU µs/req | of it user | WS msg/s | CPU µs/msg | of it user | KiB/idle WS |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        out.append(f"| {LABELS[name]} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_us']:.1f} | {r['user_us']:.1f} "
                   f"| {fig(r['ws_mps'], ',.0f')} | {fig(r['ws_us'], '.1f')} | {fig(r['ws_user_us'], '.2f')} | {fig(r['ws_kib'], '.2f')} |")
    out.append("")
    tls = [n for n, r in results.items() if "https_us" in r]
    if tls:
        out += ["What an edge does, each terminating TLS with the same ECDSA P-256 certificate: HTTPS keep-alive "
                "(wrk over TLS), a new TLS connection and full handshake per request (tests/bench/handshakes.py), HTTP/2 over TLS "
                "(h2load, 10 clients x 10 streams), and memory per idle wss:// WebSocket (TLS terminated by the proxy, "
                "tests/bench/ws_memory.py with WS_TLS=1):", "",
                "| | HTTPS req/s | CPU µs/req | of it user | new TLS conn/s | CPU µs/handshake | HTTP/2 req/s | CPU µs/req | of it user | KiB/idle wss |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in tls:
            r = results[name]
            out.append(f"| {LABELS[name]} | {r['https_rps']:,.0f} | {r['https_us']:.1f} | {r['https_user_us']:.1f} | {r['hs_ps']:,.0f} "
                       f"| {r['hs_us']:.1f} | {r['h2_rps']:,.0f} | {r['h2_us']:.1f} | {r['h2_user_us']:.1f} | {fig(r.get('wss_kib'), '.2f')} |")
        out.append("")
    rounds = "; ".join(LABELS[n] + " " + " ".join(f"{r['cpu_us']:.1f}" for r in rs) for n, rs in runs.items())
    out.append(f"CPU µs per request in each round: {rounds}.")
    p, ng, hp = results["portico"], results["nginx"], results["haproxy"]
    a, b = ratios(p, ng), ratios(p, hp)
    out.append("")
    out.append(f"Ratios, portico to nginx / HAProxy: CPU per request {a['cpu']:.2f}x / {b['cpu']:.2f}x, per WebSocket "
               f"message {a['msg']:.2f}x / {b['msg']:.2f}x, p99 {a['p99']:.2f}x / {b['p99']:.2f}x, memory per idle "
               f"WebSocket {a['kib']:.2f}x / {b['kib']:.2f}x, requests per second {a['rps']:.2f}x / {b['rps']:.2f}x.")
    if "portico-wasm" in results:
        w = results["portico-wasm"]
        out.append(f"One Wasm filter that adds a request header (tests/bench/add_header.wat): CPU per request "
                   f"{w['cpu_us']:.1f} µs against {p['cpu_us']:.1f} µs without ({(w['cpu_us'] / p['cpu_us'] - 1) * 100:+.0f}%), "
                   f"requests per second {(w['rps'] / p['rps'] - 1) * 100:+.0f}%.")
    if "pingora" in results:
        c = ratios(p, results["pingora"])
        out.append(f"To bare Pingora: CPU per request {c['cpu']:.2f}x, per message {c['msg']:.2f}x, p99 {c['p99']:.2f}x, "
                   f"memory per idle WebSocket {c['kib']:.2f}x.")
    if "floor" in results and all("https_us" in r for r in (p, results["floor"], ng, hp)):
        f = results["floor"]
        cols = (("HTTP/1", "cpu_us", "user_us"), ("HTTPS", "https_us", "https_user_us"), ("HTTP/2", "h2_us", "h2_user_us"))
        out.append("Pingora's sessions alone (examples/pingora_floor.rs: Pingora's server and client sessions, no proxy "
                   "logic), user-space CPU per request to HAProxy's: "
                   + ", ".join(f"{n} {f[u] / hp[u]:.2f}x" for n, _, u in cols)
                   + "; total to nginx's: " + ", ".join(f"{n} {f[t] / ng[t]:.2f}x" for n, t, _ in cols)
                   + "; portico over it, µs per request (user): "
                   + ", ".join(f"{n} {p[t] - f[t]:+.1f} ({p[u] - f[u]:+.1f})" for n, t, u in cols) + ".")
    met = lambda ok: "met" if ok else "not met"
    if all("https_us" in r for r in (p, ng, hp)):
        per = lambda k: (p[k] / ng[k], p[k] / hp[k])
        out.append(f"TLS, portico to nginx / HAProxy: CPU per HTTPS request {'x / '.join(f'{x:.2f}' for x in per('https_us'))}x, "
                   f"per handshake {'x / '.join(f'{x:.2f}' for x in per('hs_us'))}x, per HTTP/2 request "
                   f"{'x / '.join(f'{x:.2f}' for x in per('h2_us'))}x; user-space CPU per request to HAProxy's: HTTP/1 "
                   f"{p['user_us'] / hp['user_us']:.2f}x, HTTPS {p['https_user_us'] / hp['https_user_us']:.2f}x, "
                   f"HTTP/2 {p['h2_user_us'] / hp['h2_user_us']:.2f}x; user-space CPU per WebSocket message "
                   f"{p['ws_user_us'] / ng['ws_user_us']:.2f}x / {p['ws_user_us'] / hp['ws_user_us']:.2f}x"
                   + (f"; memory per idle wss:// WebSocket {p['wss_kib'] / ng['wss_kib']:.2f}x / {p['wss_kib'] / hp['wss_kib']:.2f}x"
                      if all("wss_kib" in r for r in (p, ng, hp)) else "") + ".")
        user = max(p[k] / hp[k] for k in ("user_us", "https_user_us", "h2_user_us"))
        total = max(p[k] / ng[k] for k in ("cpu_us", "https_us", "h2_us"))
        out.append("")
        out.append(f"Targets: user-space CPU per request at most HAProxy's on HTTP/1, HTTPS and HTTP/2 (worst {user:.2f}x, "
                   f"{met(user <= 1.0)}); total CPU per request at most 1.1x nginx's on those three (worst {total:.2f}x, "
                   f"{met(total <= 1.1)}); per handshake at most 0.75x of both ({met(max(per('hs_us')) <= 0.75)}); per "
                   f"WebSocket message at most the better of the two ({met(p['ws_us'] <= min(ng['ws_us'], hp['ws_us']))}); at "
                   f"most 3 KiB per idle WebSocket ({met(p['ws_kib'] <= 3.0)}).")
    out += ["", README_END]
    return "\n".join(out)

def print_ratios(results):
    """portico's figures as ratios to each other proxy that ran."""
    p = results.get("portico")
    if p and "floor" in results:
        f = results["floor"]
        print(f"portico / Pingora's sessions alone: CPU per request {p['cpu_us'] / f['cpu_us']:.2f}x, user part "
              f"{p['user_us'] / f['user_us']:.2f}x, req/s {p['rps'] / f['rps']:.2f}x")
    for other in ("nginx", "haproxy", "pingora"):
        if p and other in results:
            r = ratios(p, results[other])
            print(f"portico / {other}: CPU per request {r['cpu']:.2f}x, per WebSocket message {r['msg']:.2f}x, "
                  f"p99 {r['p99']:.2f}x, KiB per idle WebSocket {r['kib']:.2f}x, req/s {r['rps']:.2f}x")

def readme_block(path):
    """path's text and where its one results block starts and ends."""
    with open(path) as f:
        text = f.read()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1 or end < start:
        raise SystemExit(f"{path}: needs exactly one '{README_BEGIN}' ... '{README_END}' block")
    return text, start, end + len(README_END)

def write_readme(path, block):
    """Replaces the results block in path; the text around it is kept."""
    text, start, end = readme_block(path)
    with open(path, "w") as f:
        f.write(text[:start] + block + text[end:])

def check_readme(path):
    """`make check-bench`: path has one results block, and a sample run renders into it."""
    sample = {"rps": 1000.0, "p50": 0.5, "p99": 1.0, "cpu_us": 10.0, "user_us": 5.0, "ws_mps": 100.0, "ws_us": 10.0, "ws_user_us": 1.0, "ws_kib": 4.0, "wss_kib": 14.0, "errors": 0,
              "https_rps": 900.0, "https_us": 12.0, "https_user_us": 6.0, "hs_ps": 300.0, "hs_us": 250.0, "h2_rps": 1200.0, "h2_us": 11.0,
              "h2_user_us": 6.0}
    results = {name: dict(sample) for name in LABELS}
    readme_block(path)
    block = render(results, {n: [r] for n, r in results.items()}, "date", "setup")
    assert block.startswith(README_BEGIN) and block.endswith(README_END) and block.count("| ") >= 7 * 9, block
    assert "Targets: user-space CPU" in block and "per handshake" in block, block
    print_ratios(results)
    print(f"{path}: results block found; a sample run renders ({len(block.splitlines())} lines)")

def wrk(url, duration, extra=()):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{duration}s", "--latency", *extra, url],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    def ms(v):
        num, unit = re.match(r"([\d.]+)(\w+)", v).groups()
        return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return requests, int(errors.group(1)) if errors else 0, ms(lat["50"]), ms(lat["99"])

def h2load(url, duration):
    """HTTP/2 over TLS, 10 clients x 10 streams: (requests that got a 2xx, those that did not)."""
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-t1", "-c10", "-m10", "-D", str(duration), url],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not m or not codes:
        raise RuntimeError(f"h2load {url}: {out[-500:]}")
    ok = int(codes.group(1))
    return ok, int(m.group(3)) - ok

def handshakes(port, duration):
    """Full TLS handshakes, a new connection per request (tests/bench/handshakes.py):
    (connections, seconds, answers that were not 200)."""
    out = subprocess.run(["taskset", "-c", "1", sys.executable, os.path.join(HERE, "handshakes.py"), str(port), str(duration)],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"(\d+) handshakes in ([\d.]+) s, (\d+) not 200", out)
    if not m:
        raise RuntimeError(f"handshakes.py on {port}: {out[-300:]}")
    return int(m.group(1)), float(m.group(2)), int(m.group(3))

def tls_figures(pid, port, duration):
    """HTTPS keep-alive, a new TLS connection per request, HTTP/2 over TLS: CPU per request (and
    its user part) or per handshake, requests or handshakes per second, non-2xx answers."""
    url = f"https://127.0.0.1:{port}/"
    def timed(run):
        u0, s0 = children_cpu(pid)
        n, errors = run()
        u1, s1 = children_cpu(pid)
        return n, errors, ((u1 + s1) - (u0 + s0)) * 1e6 / n, (u1 - u0) * 1e6 / n
    wrk(url, 2)  # warm-up
    n, e1, https_us, https_user = timed(lambda: wrk(url, duration)[:2])
    out = {"https_rps": n / duration, "https_us": https_us, "https_user_us": https_user}
    took = []
    def full():
        n, seconds, errors = handshakes(port, duration)
        took.append(seconds)
        return n, errors
    n, e2, hs_us, _ = timed(full)
    out.update({"hs_ps": n / took[0], "hs_us": hs_us})
    h2load(url, 1)  # warm-up
    n, e3, h2_us, h2_user = timed(lambda: h2load(url, duration))
    out.update({"h2_rps": n / duration, "h2_us": h2_us, "h2_user_us": h2_user, "tls_errors": e1 + e2 + e3})
    return out

def main():
    if sys.argv[1:2] == ["--check-readme"]:
        return check_readme(sys.argv[2])
    portico_bin, echo_bin = sys.argv[1], sys.argv[2]
    duration = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    idle_ws = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    tmp = tempfile.mkdtemp(prefix="portico-bench-")
    files = configs(tmp)
    started = []
    def start(cmd, cpu):
        p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(p)
        return p
    try:
        start(["nginx", "-c", files["origin.conf"], "-p", tmp, "-g", "daemon off;"], "1")
        start([echo_bin], "1")
        wait_port(ORIGIN_HTTP); wait_port(ORIGIN_WS)
        cmds = {
            "portico": [portico_bin, "-c", files["portico.yaml"]],
            "nginx": ["nginx", "-c", files["nginx.conf"], "-p", tmp, "-g", "daemon off;"],
            "haproxy": ["haproxy", "-f", files["haproxy.cfg"], "-db"],
            "portico-wasm": [portico_bin, "-c", files["portico-wasm.yaml"]],
        }
        # BARE_PINGORA=examples/bare_pingora binary: also the framework alone, Pingora's own
        # load-balancer example with the same headers (its floor under portico's figures).
        bare = os.environ.get("BARE_PINGORA")
        if bare:
            cmds["pingora"] = [bare, f"127.0.0.1:{PORTS['pingora']}", f"127.0.0.1:{ORIGIN_HTTP}", f"127.0.0.1:{ORIGIN_WS}"]
        floor = os.environ.get("PINGORA_FLOOR")
        if floor:
            cmds["floor"] = [floor, f"127.0.0.1:{PORTS['floor']}", f"127.0.0.1:{ORIGIN_HTTP}", f"127.0.0.1:{TLS_PORTS['floor']}",
                             os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")]
        # BENCH_ONLY=portico (a comma list) runs a subset, for quick before/after comparisons.
        only = [n for n in os.environ.get("BENCH_ONLY", "").split(",") if n]
        names = [n for n in cmds if not only or n in only]
        runs = {name: [] for name in names}
        def measure(name, with_memory):
            env_proc = start(cmds[name], "0")
            wait_port(PORTS[name]); time.sleep(0.5)
            pid = worker_pid(name, env_proc.pid)
            url = f"http://127.0.0.1:{PORTS[name]}/"
            wrk(url, 2)  # warm-up
            u0, s0 = children_cpu(pid)
            requests, errors, p50, p99 = wrk(url, duration)
            u1, s1 = children_cpu(pid)
            cpu, user = (u1 + s1) - (u0 + s0), u1 - u0
            nan = float("nan")
            ws = {"ws_us": nan, "ws_user_us": nan, "ws_mps": nan}
            if name not in REQUESTS_ONLY:
                ws_u0, ws_s0 = children_cpu(pid)
                load = subprocess.run(["taskset", "-c", "1", sys.executable, os.path.join(HERE, "ws_load.py"), str(PORTS[name]), "16", str(duration)],
                                      capture_output=True, text=True, timeout=duration + 60).stdout
                ws_u1, ws_s1 = children_cpu(pid)
                ws_cpu, ws_user = (ws_u1 + ws_s1) - (ws_u0 + ws_s0), ws_u1 - ws_u0
                messages = int(re.search(r"(\d+) messages", load).group(1))
                ws = {"ws_us": ws_cpu * 1e6 / messages, "ws_user_us": ws_user * 1e6 / messages, "ws_mps": messages / duration}
            kib = nan if name in REQUESTS_ONLY else None
            if with_memory and name not in REQUESTS_ONLY:
                mem = subprocess.run([sys.executable, os.path.join(HERE, "ws_memory.py"), str(pid), str(PORTS[name]), str(idle_ws), "20"],
                                     capture_output=True, text=True, timeout=300).stdout
                kib = float(re.search(r"([\d.]+) KiB per connection", mem).group(1))
            tls = tls_figures(pid, TLS_PORTS[name], duration) if name in TLS_PORTS else {}
            if with_memory and name in TLS_PORTS and name not in REQUESTS_ONLY:
                # Idle wss:// (TLS terminated by the proxy), after its TLS runs.
                mem = subprocess.run([sys.executable, os.path.join(HERE, "ws_memory.py"), str(pid), str(TLS_PORTS[name]), str(idle_ws), "20"],
                                     capture_output=True, text=True, timeout=300, env={**os.environ, "WS_TLS": "1"}).stdout
                tls["wss_kib"] = float(re.search(r"([\d.]+) KiB per connection", mem).group(1))
            # SIGINT: Pingora's fast shutdown (SIGTERM waits out a grace period).
            env_proc.send_signal(signal.SIGINT if name in ("portico", "pingora", "portico-wasm", "floor") else signal.SIGTERM)
            env_proc.wait(timeout=20)
            return {"rps": requests / duration, "p50": p50, "p99": p99, "cpu_us": cpu * 1e6 / requests, "user_us": user * 1e6 / requests,
                    **ws, "ws_kib": kib, "errors": errors, **tls}
        # The proxies take turns, round after round, so drift on the machine hits all of them
        # alike; idle-WebSocket memory is measured in the first round only (the slow part).
        for round_ in range(rounds):
            for name in names:
                runs[name].append(measure(name, round_ == 0))
        # Each figure: the median of the rounds; errors summed.
        results = {}
        for name, rs in runs.items():
            results[name] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("ws_kib", "wss_kib", "errors", "tls_errors")}
            results[name]["ws_kib"] = rs[0]["ws_kib"]
            if "wss_kib" in rs[0]:
                results[name]["wss_kib"] = rs[0]["wss_kib"]
            results[name]["errors"] = sum(r["errors"] + r.get("tls_errors", 0) for r in rs)
        print(f"\nportico benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, loopback, 1 worker each, "
              f"wrk -t1 -c32 -d{duration}s, {idle_ws} idle WebSockets, median of {rounds} rounds taken in turn")
        print(f"{'':9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'of it user':>11}{'WS msg/s':>10}{'CPU us/msg':>12}{'of it user':>11}{'KiB/idle WS':>13}{'non-2xx':>9}")
        for name, r in results.items():
            print(f"{name:9}{r['rps']:>10.0f}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['cpu_us']:>12.1f}{r['user_us']:>11.1f}{r['ws_mps']:>10.0f}{r['ws_us']:>12.1f}{r['ws_user_us']:>11.2f}{fig(r['ws_kib'], '.2f'):>13}{r['errors']:>9}")
        print(f"{'TLS':9}{'HTTPS req/s':>12}{'CPU us/req':>11}{'of it user':>11}{'conn/s':>9}{'CPU us/hs':>10}{'h2 req/s':>10}{'CPU us/req':>11}{'of it user':>11}{'KiB/idle wss':>14}")
        for name, r in results.items():
            if "https_us" in r:
                print(f"{name:9}{r['https_rps']:>12.0f}{r['https_us']:>11.1f}{r['https_user_us']:>11.1f}{r['hs_ps']:>9.0f}{r['hs_us']:>10.1f}"
                      f"{r['h2_rps']:>10.0f}{r['h2_us']:>11.1f}{r['h2_user_us']:>11.1f}{fig(r.get('wss_kib'), '.2f'):>14}")
        for name, rs in runs.items():
            cpu = sorted(r["cpu_us"] for r in rs)
            msg = sorted(r["ws_us"] for r in rs)
            print(f"  {name} rounds: CPU us/req {' '.join(f'{c:.1f}' for c in cpu)}, us/msg {' '.join(f'{m:.1f}' for m in msg)}")
        print_ratios(results)
        readme = os.environ.get("BENCH_README")
        if readme:
            if all(n in results for n in ("portico", "nginx", "haproxy")):
                setup = (f"loopback, 1 worker each, wrk -t1 -c32 -d{duration}s, {idle_ws:,} idle WebSockets, "
                         f"medians of {rounds} rounds taken in turn")
                write_readme(readme, render(results, runs, time.strftime("%Y-%m-%d"), setup))
                print(f"{readme}: results table rewritten")
            else:
                print(f"{readme}: not rewritten (portico, nginx and HAProxy did not all run)")
    finally:
        for p in started:
            if p.poll() is None:
                p.terminate()
        for p in started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
