"""Clients that send what well-behaved libraries refuse to: raw HTTP/1.1 bytes over TLS and
HTTP/2 frames with header validation switched off (the ``h2`` package), for the attack tests.

* ``raw_exchange(gw, sni, payload)`` sends bytes on a fresh TLS connection and returns every
  byte the gateway sends back until it closes (or ``timeout`` passes).
* ``statuses(data)`` lists the status codes of the HTTP/1.1 responses in those bytes.
* ``H2Conn(gw, sni)`` is one HTTP/2 connection; ``request(headers, body)`` sends one stream
  exactly as given and returns an ``H2Result`` (status, headers, body, or the RST_STREAM /
  GOAWAY error code when the gateway refused the stream).
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def tls_socket(gw, sni: str, alpn: list[str] | None = None, timeout: float = 5.0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=gw.ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    return ctx.wrap_socket(s, server_hostname=sni)


def raw_exchange(gw, sni: str, payload: bytes, timeout: float = 5.0) -> bytes:
    with tls_socket(gw, sni, ["http/1.1"], timeout) as t:
        t.sendall(payload)
        out = b""
        try:
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ssl.SSLError, ConnectionResetError):
            pass
        return out


def statuses(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"(?m)^HTTP/1\.1 (\d{3}) ", data)]


@dataclass
class H2Result:
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None  # RST_STREAM error code
    goaway: int | None = None  # GOAWAY error code

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def refused(self) -> bool:
        """The stream got no response: reset, or the connection went away."""
        return self.status is None and (self.reset is not None or self.goaway is not None)


class H2Conn:
    """One HTTP/2 connection over TLS; every header is sent as given (no validation)."""

    def __init__(self, gw, sni: str, timeout: float = 5.0):
        self.sock = tls_socket(gw, sni, ["h2"], timeout)
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self._flush()
        self.closed = False
        self.goaway: int | None = None

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]],
                body: bytes = b"", timeout: float = 5.0) -> H2Result:
        res = H2Result()
        if self.closed:
            res.goaway = self.goaway if self.goaway is not None else -1
            return res
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self._flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLError, ConnectionResetError):
                data = b""
            if not data:
                self.closed = True
                res.goaway = self.goaway if self.goaway is not None else -1
                return res
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                res.goaway = -1
                return res
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    res.headers = [(k if isinstance(k, str) else k.decode(),
                                    v if isinstance(v, str) else v.decode()) for k, v in ev.headers]
                    res.status = int(dict(res.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    res.body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self._flush()
                    return res
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    res.reset = int(ev.error_code)
                    self._flush()
                    return res
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.closed = True
                    self.goaway = int(ev.error_code)
                    if res.status is None:
                        res.goaway = self.goaway
                        return res
            self._flush()
        raise AssertionError(f"no end of stream {sid} within {timeout}s: {res}")

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:
            pass
        self.sock.close()

    def __enter__(self) -> "H2Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def h2_headers(gw, host: str, path: str, method: str = "GET", token: str | None = None,
               extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    hs = [(":method", method), (":scheme", "https"), (":authority", f"{host}:{gw.port}"), (":path", path)]
    if token:
        hs.append(("authorization", f"Bearer {token}"))
    return hs + list(extra or [])
