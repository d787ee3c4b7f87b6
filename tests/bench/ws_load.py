#!/usr/bin/env python3
"""WebSocket echo load through a proxy: C connections, each sending a small masked text frame
and waiting for its echo, again and again, for D seconds (the interactive pattern: every
message costs the proxy a read and a write each way). Prints the number of echoed messages.
Loopback only; bounded in count and time.

usage: ws_load.py PROXY_PORT [CONNECTIONS [SECONDS]]
"""
import asyncio, sys, time

HANDSHAKE = (b"GET /ws/ HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
PAYLOAD = b"telemetry-0123456789abcdef"  # 26 bytes, a small SDK event
KEY = bytes([1, 2, 3, 4])
FRAME = bytes([0x81, 0x80 | len(PAYLOAD)]) + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(PAYLOAD))
ECHO = bytes([0x81, len(PAYLOAD)]) + PAYLOAD

async def one(port, until, counts):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(HANDSHAKE)
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:40]
    n = 0
    while time.monotonic() < until:
        w.write(FRAME)
        echo = await r.readexactly(len(ECHO))
        assert echo == ECHO, echo
        n += 1
    counts.append(n)
    w.close()

async def main(port, conns, seconds):
    counts = []
    until = time.monotonic() + seconds
    await asyncio.wait_for(asyncio.gather(*(one(port, until, counts) for _ in range(conns))), seconds + 30)
    print(f"{sum(counts)} messages")

if __name__ == "__main__":
    port = int(sys.argv[1])
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10
    asyncio.run(main(port, conns, seconds))
