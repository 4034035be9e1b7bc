"""Refusals sent before the request body is read reach the client intact, over HTTP/2 as over
HTTP/1.1: 401 (bad token), 403 (a policy that does not read the body), 413 (a body past
--max-body-bytes) and 429 (a rate limit), for bodies from empty to several times the HTTP/2
flow-control window, many times each, on fresh and on reused connections.

Before the fix, curl over HTTP/2 mostly got ``curl: (92) Stream error in the HTTP/2 framing
layer`` and no status: the gateway answered, then reset the stream with an error code while
the client was still sending the body. RFC 9113 section 8.1 allows a complete response
before the request ends only if the stream is then reset with NO_ERROR."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import ALLOW_ALL, APP_USER, WAIT, assert_error_body, public_service
from standin import StandIn

MAX_BODY = 64 * 1024
SIZES = [0, 1000, 70_000, 1_000_000, 4_000_000]
TRIES = 12

def services(url: str) -> str:
    """``plain`` (denies paths under /denied without reading the body), ``bodyread`` (a
    policy that reads the body) and ``limited`` (one request per hour for everyone)."""
    deny_denied = {"name": "no-denied", "effect": "DENY",
                   "condition": {"match": 'ctx.request.http.path.startsWith("/denied")'}}
    reads_body = {"effect": "ALLOW", "condition": {"match": "has(ctx.request.http.bodyMap.model)"}}
    one_per_hour = {"name": "one-per-hour", "requests": 1, "per": "1h", "by": "service"}
    return "---\n".join([
        public_service("plain", url, [deny_denied, *ALLOW_ALL]),
        public_service("bodyread", url, [reads_body]),
        public_service("limited", url, limits=[one_per_hour]),
    ])


class Env:
    def __init__(self, gw, up: StandIn, token: str):
        self.gw, self.up, self.token = gw, up, token
        self.bodies: dict[int, Path] = {}

    def body_file(self, size: int) -> Path:
        if size not in self.bodies:
            p = self.gw.root / f"body-{size}.json"
            pad = "x" * max(0, size - 60)
            text = json.dumps({"model": "m", "messages": [{"role": "user", "content": pad}]})
            p.write_bytes(text.encode() if size >= 60 else b"")
            self.bodies[size] = p
        return self.bodies[size]

    def curl_many(self, proto: str, url: str, size: int, token: str, n: int) -> tuple[list[int], str, int]:
        """``n`` POSTs of a ``size``-byte body to ``url`` in one curl process (one connection,
        reused), returning each transfer's status, curl's stderr and its exit code."""
        args = ["curl", "-sS", "--max-time", str(int(WAIT)), "--connect-to", f"::127.0.0.1:{self.gw.port}",
                "--cacert", self.gw.ca, proto, "-o", "/dev/null", "-w", "%{http_code}\n",
                "-H", f"Authorization: Bearer {token}", "-H", "content-type: application/json"]
        for i in range(n):
            if i:
                args.append("--next")
                args += ["--connect-to", f"::127.0.0.1:{self.gw.port}", "--cacert", self.gw.ca, proto,
                         "-o", "/dev/null", "-w", "%{http_code}\n",
                         "-H", f"Authorization: Bearer {token}", "-H", "content-type: application/json"]
            args += ["--data-binary", f"@{self.body_file(size)}", url]
        r = subprocess.run(args, capture_output=True, text=True, timeout=WAIT * 2)
        codes = [int(x) for x in r.stdout.split()]
        return codes, r.stderr, r.returncode


@pytest.fixture(scope="module")
def env(bin_dir, tmp_path_factory):
    from conftest import Gateway

    root = tmp_path_factory.mktemp("h2r")
    gw = Gateway(bin_dir, root, [], MAX_BODY, None)
    with StandIn("h2r", api_key=None, prefix="") as up:
        gw.start()
        try:
            gw.apply_text(services(up.url))
            gw.apply_text(APP_USER, "app-user.yaml")
            cid, secret = gw.create_oauth2("app", "app-oauth2")
            token = gw.token(cid, secret)
            e = Env(gw, up, token)
            # Spend the one request the limited Service allows, so every later one is a 429.
            codes, err, rc = e.curl_many("--http1.1", gw.url("limited", "/v1/chat/completions"), 10, token, 1)
            assert codes == [200], (codes, err)
            yield e
        finally:
            gw.stop()


CASES = {
    # status: (service, path, token or None for the good one)
    401: ("plain", "/v1/chat/completions", "pst.not-a-token"),
    403: ("plain", "/denied/chat/completions", None),
    413: ("bodyread", "/v1/chat/completions", None),
    429: ("limited", "/v1/chat/completions", None),
}


# Every status with every size, but 413 only with bodies past the limit (an empty body is
# not the JSON the body-reading policy allows, a small one is simply allowed).
MATRIX = [(status, size) for status in sorted(CASES) for size in SIZES if status != 413 or size > MAX_BODY]


@pytest.mark.parametrize("proto", ["--http2", "--http1.1"])
@pytest.mark.parametrize("status,size", MATRIX)
def test_refusal_reaches_client_on_reused_connection(env, proto, status, size):
    service, path, token = CASES[status]
    want = status
    codes, err, rc = env.curl_many(proto, env.gw.url(service, path), size, token or env.token, TRIES)
    assert rc == 0 and codes == [want] * TRIES, f"curl exit {rc}, statuses {codes}, stderr:\n{err}"


@pytest.mark.parametrize("status", sorted(CASES))
def test_refusal_over_h2_on_fresh_connections(env, status):
    """One connection per request, the largest body: the client is mid-upload when the
    refusal comes."""
    service, path, token = CASES[status]
    failures = []
    for _ in range(TRIES):
        codes, err, rc = env.curl_many("--http2", env.gw.url(service, path), SIZES[-1], token or env.token, 1)
        if rc != 0 or codes != [status]:
            failures.append((rc, codes, err.strip()))
    assert not failures, failures


@pytest.mark.parametrize("status", sorted(CASES))
def test_refusal_body_is_the_json_error_over_h2(env, status):
    """The refusal's headers and JSON body arrive whole over HTTP/2 with a body in flight."""
    service, path, token = CASES[status]
    r = env.gw.curl("--http2", "-X", "POST", "--data-binary", f"@{env.body_file(1_000_000)}",
                    "-H", f"Authorization: Bearer {token or env.token}",
                    "-H", "content-type: application/json", env.gw.url(service, path))
    assert r.status == status, (r.status, r.stderr)
    assert_error_body(r.json())
    if status == 401:
        assert r.headers.get("www-authenticate", "").startswith("Bearer")
    if status == 429:
        assert int(r.headers["retry-after"]) > 0


def test_sdk_over_h2_sees_401_and_recovers_with_a_new_token(env):
    """An HTTP/2 client library (httpx with h2) gets the 401 for an expired/bad token while
    uploading a large body, then succeeds on the same connection with a good token."""
    pytest.importorskip("h2")
    body = env.body_file(1_000_000).read_bytes()
    with httpx.Client(http2=True, verify=env.gw.tls(), timeout=WAIT) as h:
        for _ in range(5):
            r = h.post(env.gw.url("plain", "/v1/chat/completions"), content=body,
                       headers={"Authorization": "Bearer pst.expired", "content-type": "application/json"})
            assert r.http_version == "HTTP/2" and r.status_code == 401, (r.http_version, r.status_code)
            r = h.post(env.gw.url("plain", "/v1/chat/completions"), content=body,
                       headers={"Authorization": f"Bearer {env.token}", "content-type": "application/json"})
            assert r.status_code == 200, r.text[:300]


def test_body_past_the_drain_bound_ends_with_rst_no_error(env):
    """A body larger than the drain bound (16 MiB): the refusal still arrives whole, then the
    stream is reset with NO_ERROR (RFC 9113 section 8.1) and the connection stays usable."""
    h2 = pytest.importorskip("h2.connection")
    import h2.config
    import h2.events

    ctx = ssl.create_default_context(cafile=env.gw.ca)
    ctx.set_alpn_protocols(["h2"])
    host = env.gw.host("plain")
    with socket.create_connection(("127.0.0.1", env.gw.port), timeout=WAIT) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        size = 20 << 20
        c.send_headers(1, [(":method", "POST"), (":path", "/v1/chat/completions"), (":scheme", "https"),
                           (":authority", host), ("authorization", "Bearer pst.bad"),
                           ("content-length", str(size))])
        s.sendall(c.data_to_send())
        chunk, sent = b"x" * 16384, 0
        status, body, reset, ended = None, b"", None, False
        deadline = time.monotonic() + WAIT
        while reset is None and time.monotonic() < deadline:
            window = min(c.local_flow_control_window(1), c.max_outbound_frame_size)
            if sent < size and window > 0:
                n = min(window, size - sent)
                c.send_data(1, chunk[:n])
                sent += n
                s.sendall(c.data_to_send())
                continue
            data = s.recv(65536)
            assert data, "connection closed instead of a stream reset"
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"]
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    reset = ev.error_code
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise AssertionError(f"GOAWAY instead of a stream reset: {ev}")
            s.sendall(c.data_to_send())
        assert status == b"401" and ended, (status, ended)
        assert_error_body(json.loads(body))
        assert reset == 0, f"stream reset with error code {reset}, not NO_ERROR"
        assert sent > 16 << 20, f"the gateway gave up after {sent} bytes, before its drain bound"
        # The same connection serves the next request.
        c.send_headers(3, [(":method", "GET"), (":path", "/v1/models"), (":scheme", "https"),
                           (":authority", host), ("authorization", f"Bearer {env.token}")], end_stream=True)
        s.sendall(c.data_to_send())
        got = None
        while got is None:
            data = s.recv(65536)
            assert data, "connection closed after the reset"
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 3:
                    got = dict(ev.headers)[b":status"]
            s.sendall(c.data_to_send())
        assert got == b"200", got


@pytest.mark.parametrize("proto,extra", [("--http2", ["-H", "content-length:"]),
                                         ("--http1.1", ["-H", "content-length:", "-H", "transfer-encoding: chunked"])])
def test_413_for_a_body_without_declared_length(env, proto, extra):
    """No Content-Length: the gateway finds the body too large while reading it, stops, and
    the 413 still reaches the client (the rest is drained, not reset)."""
    for _ in range(TRIES):
        r = env.gw.curl(proto, "-X", "POST", "--data-binary", f"@{env.body_file(1_000_000)}", *extra,
                        "-H", f"Authorization: Bearer {env.token}", "-H", "content-type: application/json",
                        env.gw.url("bodyread", "/v1/chat/completions"))
        assert r.status == 413, (r.status, r.stderr)
        assert_error_body(r.json())
