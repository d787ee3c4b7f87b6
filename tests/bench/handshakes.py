#!/usr/bin/env python3
"""A new TLS connection with a full handshake per request, for DURATION seconds (`make bench`'s
handshake column): no session is offered back (a new SSL object each time), so no server can
resume one, whatever it supports (wrk's reconnects would resume). Each connection sends one
`GET /` with `Host` and `Connection: close` and reads the answer to its end.

usage: handshakes.py PORT DURATION_S   prints "N handshakes in S s, E not 200"
"""
import socket, ssl, sys, time

port, duration = int(sys.argv[1]), float(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
n = bad = 0
started = time.time()
while time.time() - started < duration:
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost") as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    n += 1
    bad += not answer.startswith(b"HTTP/1.1 200")
print(f"{n} handshakes in {time.time() - started:.2f} s, {bad} not 200")
