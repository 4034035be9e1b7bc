"""Helpers run as separate processes by the tunnel revocation tests (``python3 FILE ROLE ...``).

``upstream HOST HTTP_PORT TCP_PORT``: the private upstream. HTTP/1.1 with keep-alive:
``/stream`` sends its headers and one chunk, then holds the response open (an in-flight
stream); any other path answers ``ok`` at once. The TCP port echoes what it receives.

``hold TARGET...``: opens one connection per target (``http:HOST:PORT`` a keep-alive
connection that got one answer, ``stream:HOST:PORT`` a streaming response in progress,
``tcp:HOST:PORT`` an echoed line), prints ``READY``, then waits (at most 30 s) for each to
end and prints one JSON object: target -> [wall-clock time it ended or null, "reset" | "eof"
| "open" | error name].
"""

from __future__ import annotations

import json
import re
import select
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"6\r\nfirst\n\r\n")
            self.wfile.flush()
            time.sleep(120)
            return
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(4096)
            if not d:
                return
            self.request.sendall(d)


def upstream(host: str, http_port: int, tcp_port: int) -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    tcp = socketserver.ThreadingTCPServer((host, tcp_port), Echo)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, http_port), Handler).serve_forever()


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise AssertionError(f"closed before the headers: {buf!r}")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return head, rest


def open_one(target: str) -> socket.socket:
    kind, host, port = target.split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    if kind == "tcp":
        s.sendall(b"ping\n")
        got = b""
        while got != b"ping\n":
            got += s.recv(100)
    elif kind == "http":
        s.sendall(b"GET /first HTTP/1.1\r\nHost: web.local\r\n\r\n")
        head, body = _read_head(s)
        n = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
        while len(body) < n:
            body += s.recv(4096)
        assert b"connection: close" not in head.lower(), head
    elif kind == "stream":
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: web.local\r\n\r\n")
        _, rest = _read_head(s)
        while b"first" not in rest:
            rest += s.recv(4096)
    else:
        raise SystemExit(f"unknown target kind {kind}")
    s.settimeout(None)
    return s


def hold(targets: list[str]) -> None:
    socks = {t: open_one(t) for t in targets}
    print("READY", flush=True)
    ends: dict[str, list] = {}
    deadline = time.time() + 30
    while len(ends) < len(socks) and time.time() < deadline:
        live = [s for t, s in socks.items() if t not in ends]
        ready, _, _ = select.select(live, [], [], 0.2)
        for s in ready:
            t = next(k for k, v in socks.items() if v is s)
            try:
                how = None if s.recv(4096) else "eof"
            except ConnectionResetError:
                how = "reset"
            except OSError as e:
                how = type(e).__name__
            if how:
                ends[t] = [time.time(), how]
    for t in socks:
        ends.setdefault(t, [None, "open"])
    print(json.dumps(ends), flush=True)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "upstream":
        upstream(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif role == "hold":
        hold(sys.argv[2:])
    else:
        raise SystemExit(f"unknown role {role}")
