#!/usr/bin/env python3
"""RSS per silent client connection: opens N TCP connections to PROXY_PORT that send nothing
(or, with --partial, the first line of a request), waits until the proxy has accepted them
all, and reports the growth of the proxy's RSS (from /proc) divided by N. Loopback only;
bounded in count and time. The proxy's header_timeout must outlast the run.

usage: silent_memory.py PROXY_PID PROXY_PORT [N] [--partial]
"""
import resource, socket, sys, time

from ws_memory import rss_kib

def established(port):
    """Server-side sockets of the proxy's port in ESTABLISHED state (from /proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "01" and int(local.split(":")[1], 16) == port:
                n += 1
    return n

def main(pid, port, n, partial):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    time.sleep(0.5)
    before = rss_kib(pid)
    conns = []
    deadline = time.monotonic() + 60
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if partial:
            s.sendall(b"GET / HTTP/1.1\r\n")
        conns.append(s)
        assert time.monotonic() < deadline, "took too long"
    while established(port) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    after = rss_kib(pid)
    for s in conns:
        s.close()
    per = (after - before) / n
    what = "partial-head" if partial else "silent"
    print(f"{n} {what} connections: rss {before} KiB -> {after} KiB, {per:.2f} KiB per connection")

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    pid, port = int(args[0]), int(args[1])
    n = int(args[2]) if len(args) > 2 else 5000
    main(pid, port, n, "--partial" in sys.argv)
