"""Raw clients and servers for the overload tests: TLS sockets with a chosen ALPN, an
HTTP/2 client whose frames the test controls (the `h2` state machine plus raw frame
parsing), an HTTP/1.1 upstream that records whether each request body arrived whole, and
the resident memory of a process."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import h2.config
import h2.connection
from hyperframe.frame import Frame, GoAwayFrame

from conftest import DOMAIN


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def tls_socket(gw, alpn: str = "http/1.1", host: str = DOMAIN, timeout: float = 10) -> ssl.SSLSocket:
    ctx = gw.tls()
    ctx.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=host)


def is_closed(s: ssl.SSLSocket, wait: float) -> bool:
    """True when the peer has closed `s` (EOF or reset) within `wait` seconds; other data is
    read and dropped."""
    s.settimeout(wait)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


class RawUpstream:
    """An HTTP/1.1 upstream that records, per request, whether its body arrived whole
    (Content-Length or a chunked terminator) and answers only whole ones."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket):
        f = c.makefile("rb")
        with c, f:
            head = []
            while True:
                line = f.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                head.append(line.decode("latin-1").strip())
            headers = {h.split(":", 1)[0].lower(): h.split(":", 1)[1].strip() for h in head[1:] if ":" in h}
            body, complete = b"", False
            if "content-length" in headers:
                n = int(headers["content-length"])
                body = f.read(n)
                complete = len(body) == n
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    line = f.readline()
                    if not line:
                        break
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        complete = f.readline() in (b"\r\n", b"\n")
                        break
                    chunk = f.read(size)
                    body += chunk
                    if len(chunk) < size or not f.readline():
                        break
            else:
                complete = True
            with self.lock:
                self.requests.append({"line": head[0] if head else "", "bytes": len(body), "complete": complete})
            if complete:
                data = b'{"ok":true}'
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                          b"Connection: close\r\n\r\n%s" % (len(data), data))

    def close(self):
        self.sock.close()


class H2:
    """A raw HTTP/2 client over TLS (the `h2` state machine, frames under our control)."""

    def __init__(self, gw):
        self.sock = tls_socket(gw, "h2")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def request_headers(self, path: str = "/healthz") -> list[tuple[str, str]]:
        return [(":method", "GET"), (":scheme", "https"), (":authority", DOMAIN), (":path", path)]

    def goaway(self, wait: float) -> tuple[int | None, bool]:
        """Reads raw frames until the connection closes; returns (the last GOAWAY's error
        code or None, whether it closed within `wait`)."""
        deadline = time.monotonic() + wait
        code, buf = None, b""
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                return code, True
            if not data:
                return code, True
            buf += data
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                if isinstance(frame, GoAwayFrame):
                    frame.parse_body(memoryview(buf[9:9 + length]))
                    code = frame.error_code
                buf = buf[9 + length:]
        return code, False
