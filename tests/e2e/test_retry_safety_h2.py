"""Retries that cannot double-charge, against an HTTP/2 upstream (issue #12, item 6).

An upstream stream reset with ``REFUSED_STREAM`` was, by RFC 9113 section 8.7, not processed:
a POST may be retried. Any other reset after the upstream read the request (here
``INTERNAL_ERROR``) may have been processed: a POST is not sent again, a GET is.

The upstream is a TLS server speaking only h2 (python ``h2``) with a certificate from a test
CA the gateway trusts through ``--upstream-ca``.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import yaml

from conftest import APP_USER, chat_body
from test_transport import UpstreamCA


class H2Upstream:
    """Answers each stream, once its request has been read in full, with the next action of
    ``script`` ("refuse", "reset"), then with 200 JSON. Records (method, path, body)."""

    def __init__(self, ctx: ssl.SSLContext, script: list[str]):
        self.ctx, self.script = ctx, list(script)
        self.seen: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        streams: dict[int, list] = {}
        with tls:
            tls.sendall(conn.data_to_send())
            while True:
                try:
                    data = tls.recv(65535)
                except OSError:
                    return
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = [dict(ev.headers), b""]
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id][1] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        self._answer(conn, ev.stream_id, *streams.pop(ev.stream_id))
                tls.sendall(conn.data_to_send())

    def _answer(self, conn, stream_id: int, headers: dict, body: bytes) -> None:
        with self.lock:
            self.seen.append((headers[":method"], headers[":path"], body))
            action = self.script.pop(0) if self.script else "ok"
        if action == "refuse":
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif action == "reset":
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            payload = json.dumps({"object": "list", "data": [], "path": headers[":path"]}).encode()
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                          ("content-length", str(len(payload)))])
            conn.send_data(stream_id, payload, end_stream=True)


@pytest.fixture
def h2env(start_gateway, tmp_path):
    ca = UpstreamCA()
    ca_path = tmp_path / "upstream-ca.pem"
    ca_path.write_bytes(ca.pem())
    gw = start_gateway(upstream_ca=str(ca_path))
    gw.apply_text(APP_USER, "app-user.yaml")
    tok = gw.token(*gw.create_oauth2("app", "app-oauth2"))
    ups: list[H2Upstream] = []

    def upstream(script: list[str]) -> H2Upstream:
        up = H2Upstream(ca.server_context(tmp_path, ["localhost"], [], ["h2"]), script)
        ups.append(up)
        gw.apply_text(yaml.safe_dump({"kind": "Service", "metadata": {"name": "h2up"}, "spec": {
            "isPublic": True,
            "config": {"upstream": {"url": f"https://localhost:{up.port}", "retry": {
                "attempts": 2, "on": ["CONNECT"], "backoff": "10ms"}}}}}, sort_keys=False))
        return up

    yield gw, tok, upstream
    for up in ups:
        up.close()


def send(gw, tok, method: str) -> int:
    with gw.http() as c:
        r = c.request(method, gw.url("h2up", "/chat/completions" if method == "POST" else "/models"),
                      headers={"Authorization": f"Bearer {tok}"},
                      json=chat_body() if method == "POST" else None)
        return r.status_code


def test_refused_stream_post_is_retried(h2env):
    gw, tok, upstream = h2env
    up = upstream(["refuse"])
    assert send(gw, tok, "POST") == 200
    assert [m for m, _, _ in up.seen] == ["POST", "POST"]
    assert up.seen[0][2] == up.seen[1][2]
    assert json.loads(up.seen[1][2]) == chat_body()


@pytest.mark.parametrize("method,status,tries", [("POST", 502, 1), ("GET", 200, 2)])
def test_stream_reset_after_reading_is_resent_only_for_idempotent_methods(h2env, method, status, tries):
    gw, tok, upstream = h2env
    up = upstream(["reset"])
    assert send(gw, tok, method) == status
    assert [m for m, _, _ in up.seen] == [method] * tries
