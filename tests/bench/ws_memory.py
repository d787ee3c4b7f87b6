#!/usr/bin/env python3
"""RSS per idle WebSocket through a proxy: opens N upgraded connections through PROXY_PORT (to
an echo origin behind it), checks each echoes once, lets them sit idle, and reports the growth
of the proxy's RSS (from /proc) divided by N. Loopback only; bounded in count and time.

usage: ws_memory.py PROXY_PID PROXY_PORT [N [BATCH]]
WS_TLS=1 connects with TLS (wss; the certificate is not checked: a test certificate).
Connections open BATCH at a time (default 20): each handshake's transient memory is freed
afterwards but RSS keeps its peak, so large batches measure the peak, not the idle cost.
"""
import asyncio, os, resource, ssl, sys, time

TLS = None
if os.environ.get("WS_TLS") == "1":
    TLS = ssl.create_default_context()
    TLS.check_hostname = False
    TLS.verify_mode = ssl.CERT_NONE

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")

HANDSHAKE = (b"GET /ws/ HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
PING = bytes([0x81, 0x82, 1, 2, 3, 4, ord("h") ^ 1, ord("i") ^ 2])  # masked text "hi"

async def open_one(port):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=TLS)
    w.write(HANDSHAKE)
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:40]
    w.write(PING)
    echo = await r.readexactly(4)
    assert echo == b"\x81\x02hi", echo
    return r, w

async def main(pid, port, n, batch):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * n + 100)), hard))
    before = rss_kib(pid)
    conns = []
    deadline = time.monotonic() + 120
    for start in range(0, n, batch):
        conns += await asyncio.gather(*(open_one(port) for _ in range(min(batch, n - start))))
        assert time.monotonic() < deadline, "took too long"
    await asyncio.sleep(2)  # idle
    after = rss_kib(pid)
    for _, w in conns:
        w.close()
    per = (after - before) / n
    print(f"{n} idle websockets ({batch} at a time): rss {before} KiB -> {after} KiB, {per:.2f} KiB per connection")

if __name__ == "__main__":
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    asyncio.run(main(pid, port, n, batch))
