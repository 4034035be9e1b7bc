"""Overload and slow clients, through the real gateway with raw sockets and real HTTP/2
frames: slowloris heads and silent connections cut at ``--header-timeout``, slow POST bodies
cut at ``--body-timeout`` (buffered and streamed, the upstream never sees a partial request
as complete), header count and size (431), HTTP/2 rapid reset and CONTINUATION floods
(GOAWAY, the gateway keeps serving), the per-listener connection cap, 503 + Retry-After
shedding past ``--max-inflight-requests``, idle connections closed at ``--idle-timeout``,
and the memory of idle TLS connections (``POSTERN_IDLE_CONNS``, default 1000)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h2.events
import httpx
import h2.settings
import hpack
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from conftest import DOMAIN, assert_error_body, free_port
from rawclients import H2, RawUpstream, is_closed, rss_kib, tls_socket
from standin import StandIn

SERVICES = """\
kind: Service
metadata:
  name: open
spec:
  isPublic: true
  config:
    upstream:
      url: {url}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                matchAny: true
---
kind: Service
metadata:
  name: reads-body
spec:
  isPublic: true
  config:
    upstream:
      url: {url}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                match: ctx.request.http.bodyMap.model == "m"
---
kind: User
metadata:
  name: app
spec:
  type: WORKLOAD
"""


def setup(gw, url: str) -> str:
    """Applies the two Services and the user; returns an access token."""
    gw.apply_text(SERVICES.format(url=url))
    cid, secret = gw.create_oauth2("app", "app-oauth2")
    return gw.token(cid, secret)


def healthz(gw) -> int:
    return gw.curl(gw.url(None, "/healthz"), timeout=10).status


# --------------------------------------------------------------------------------------------
# Slowloris: heads trickled a byte a second, and connections that never send a byte.
@pytest.mark.parametrize("kind", ["h1-head-trickle", "h2-preface-trickle", "silent"])
def test_slow_head_is_cut_at_header_timeout(start_gateway, kind):
    gw = start_gateway(extra_args=["--header-timeout", "3s"])
    alpn = "h2" if kind.startswith("h2") else "http/1.1"
    s = tls_socket(gw, alpn)
    start = time.monotonic()
    if kind == "h1-head-trickle":
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {DOMAIN}\r\nX-Slow: ".encode())
        payload = b"a" * 30
    elif kind == "h2-preface-trickle":
        payload = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    else:
        payload = b""
    closed_at = None
    for b in payload:
        try:
            s.sendall(bytes([b]))
        except OSError:
            closed_at = time.monotonic() - start
            break
        if is_closed(s, 1.0):
            closed_at = time.monotonic() - start
            break
    if closed_at is None and is_closed(s, 15.0):
        closed_at = time.monotonic() - start
    assert closed_at is not None, f"{kind}: connection still open after {time.monotonic() - start:.1f}s"
    assert 2.5 <= closed_at <= 7.0, f"{kind}: closed after {closed_at:.1f}s, expected ~3s"
    assert healthz(gw) == 200


# --------------------------------------------------------------------------------------------
# Slow POST: a body trickled a byte at a time, to a Service that buffers it (a policy reads
# bodyMap) and to one that streams it to the upstream.
@pytest.mark.parametrize("service", ["reads-body", "open"])
def test_slow_post_is_cut_at_body_timeout(start_gateway, service):
    gw = start_gateway(extra_args=["--body-timeout", "3s", "--body-min-rate", "1000"])
    up = RawUpstream()
    try:
        token = setup(gw, up.url)
        host = gw.host(service)
        body = b'{"model":"m","messages":[]}' + b" " * 173  # 200 bytes
        s = tls_socket(gw, "http/1.1", host=host)
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        start = time.monotonic()
        answer = b""
        s.settimeout(0.5)
        for i in range(len(body)):
            try:
                s.sendall(body[i:i + 1])
                answer += s.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            if answer.startswith(b"HTTP/") or time.monotonic() - start > 20:
                break
        took = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408"), f"after {took:.1f}s: {answer[:300]!r}"
        assert 2.5 <= took <= 8.0, f"cut after {took:.1f}s, expected ~3s"
        # The gateway still serves, and the upstream never took the partial body as complete.
        assert healthz(gw) == 200
        time.sleep(0.5)
        assert not [r for r in up.requests if r["complete"]], up.requests
        if service == "reads-body":
            assert up.requests == [], "a buffered body that timed out must not be forwarded at all"
        gw.wait_access(lambda e: e.get("service") == service and e.get("status") == 408)
    finally:
        up.close()


@pytest.mark.parametrize("service", ["reads-body", "open"])
def test_slow_post_over_h2_is_cut_at_body_timeout(start_gateway, service):
    gw = start_gateway(extra_args=["--body-timeout", "3s", "--body-min-rate", "1000"])
    up = RawUpstream()
    try:
        token = setup(gw, up.url)
        c = H2(gw)
        sid = c.conn.get_next_available_stream_id()
        body = b'{"model":"m","messages":[]}' + b" " * 173
        c.conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", gw.host(service)),
                                  (":path", "/v1/chat/completions"), ("authorization", f"Bearer {token}"),
                                  ("content-type", "application/json"), ("content-length", str(len(body)))])
        c.flush()
        c.sock.settimeout(0.5)
        start, status = time.monotonic(), None
        for i in range(len(body)):
            try:
                c.conn.send_data(sid, body[i:i + 1])
                c.flush()
            except Exception:
                break  # the stream was already answered and reset
            try:
                data = c.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            if not data:
                break
            for e in c.conn.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                    status = dict(e.headers)[":status"]
            c.flush()
            if status is not None or time.monotonic() - start > 20:
                break
        took = time.monotonic() - start
        assert status == "408", f"after {took:.1f}s: status {status}"
        assert 2.5 <= took <= 8.0, f"cut after {took:.1f}s, expected ~3s"
        assert healthz(gw) == 200
        time.sleep(0.5)
        assert not [r for r in up.requests if r["complete"]], up.requests
    finally:
        up.close()


def test_slow_token_request_is_cut_at_body_timeout(start_gateway):
    gw = start_gateway(extra_args=["--body-timeout", "3s", "--body-min-rate", "1000"])
    form = b"grant_type=client_credentials&client_id=x&client_secret=" + b"y" * 100
    s = tls_socket(gw, "http/1.1")
    s.sendall((f"POST /oauth2/token HTTP/1.1\r\nHost: {DOMAIN}\r\n"
               f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n").encode())
    start, answer = time.monotonic(), b""
    s.settimeout(0.5)
    for i in range(len(form)):
        try:
            s.sendall(form[i:i + 1])
            answer += s.recv(65536)
        except (socket.timeout, TimeoutError):
            continue
        except OSError:
            break
        if answer.startswith(b"HTTP/"):
            break
    took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), f"after {took:.1f}s: {answer[:300]!r}"
    assert 2.5 <= took <= 8.0


def test_body_sent_at_a_fair_pace_passes(start_gateway):
    """The body timeout is not a total: a body that keeps coming at the minimum rate goes
    through even when it takes longer than --body-timeout."""
    gw = start_gateway(extra_args=["--body-timeout", "2s", "--body-min-rate", "100"])
    up = RawUpstream()
    try:
        token = setup(gw, up.url)
        host = gw.host("open")
        body = b'{"model":"m"}' + b" " * 387  # 400 bytes: 2 s + 4 s earned
        s = tls_socket(gw, "http/1.1", host=host)
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        start = time.monotonic()
        for i in range(0, len(body), 40):  # 40 bytes every 0.3 s: ~133 B/s, 3 s in all
            s.sendall(body[i:i + 40])
            time.sleep(0.3)
        s.settimeout(10)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert time.monotonic() - start > 2.5
        assert [r["complete"] for r in up.requests] == [True]
    finally:
        up.close()


# --------------------------------------------------------------------------------------------
# Header count and size.
def test_too_many_headers_get_431(start_gateway):
    gw = start_gateway()  # default --max-headers 100
    many = [arg for i in range(150) for arg in ("-H", f"x-h{i}: v")]
    for proto in ("--http1.1", "--http2"):
        r = gw.curl(proto, *many, gw.url(None, "/healthz"))
        assert r.status == 431, (proto, r.status, r.stderr)
    assert healthz(gw) == 200


def test_header_limits_follow_the_flags(start_gateway):
    gw = start_gateway(extra_args=["--max-headers", "20", "--max-header-bytes", "8192"])
    many = [arg for i in range(30) for arg in ("-H", f"x-h{i}: v")]
    big = ["-H", "x-big: " + "a" * 12000]
    for proto in ("--http1.1", "--http2"):
        r = gw.curl(proto, *many, gw.url(None, "/healthz"))
        assert r.status == 431, (proto, "count", r.status, r.stderr)
        r = gw.curl(proto, *big, gw.url(None, "/healthz"))
        # HTTP/2: 431 when the stream can still be answered, else a refused stream.
        assert r.status == 431 or (proto == "--http2" and r.status == 0), (proto, "size", r.status, r.stderr)
        few = [arg for i in range(10) for arg in ("-H", f"x-h{i}: v")]
        assert gw.curl(proto, *few, gw.url(None, "/healthz")).status == 200


# --------------------------------------------------------------------------------------------
# HTTP/2 attacks with raw frames.
def test_h2_settings_follow_the_flags(start_gateway):
    gw = start_gateway(extra_args=["--max-concurrent-streams", "7", "--max-header-bytes", "9000"])
    c = H2(gw)
    c.sock.settimeout(5)
    settings = {}
    while not settings:
        for e in c.conn.receive_data(c.sock.recv(65536)):
            if isinstance(e, h2.events.RemoteSettingsChanged):
                settings = {int(k): v.new_value for k, v in e.changed_settings.items()}
    assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    assert settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 9000


def rapid_reset(gw, streams: int = 2000) -> int | None:
    """One attacking connection: `streams` HEADERS each followed at once by RST_STREAM;
    returns the GOAWAY error code the gateway sent."""
    attacker = H2(gw)
    for _ in range(streams):
        sid = attacker.conn.get_next_available_stream_id()
        attacker.conn.send_headers(sid, attacker.request_headers(), end_stream=True)
        attacker.conn.reset_stream(sid)
    try:
        attacker.flush()
    except OSError:
        pass  # already told to go away
    code, _ = attacker.goaway(10)
    attacker.sock.close()
    return code


def test_h2_rapid_reset_gets_goaway_and_others_are_served(start_gateway):
    gw = start_gateway()
    before = rss_kib(gw.proc.pid)
    codes: list[int | None] = []
    stop = threading.Event()

    def attack():
        while not stop.is_set():
            codes.append(rapid_reset(gw))

    attackers = [threading.Thread(target=attack) for _ in range(3)]
    for t in attackers:
        t.start()
    try:
        # Others are served the whole time, promptly.
        for _ in range(10):
            t0 = time.monotonic()
            assert healthz(gw) == 200
            assert time.monotonic() - t0 < 3, "a normal request waited behind the attack"
            time.sleep(0.2)
    finally:
        stop.set()
        for t in attackers:
            t.join()
    print(f"{len(codes)} rapid-reset connections of 2000 streams each, all sent GOAWAY")
    assert codes and all(c == 11 for c in codes), f"expected GOAWAY ENHANCE_YOUR_CALM (11) each time: {codes}"
    assert rss_kib(gw.proc.pid) - before < 50 * 1024


def test_h2_continuation_flood_is_cut_off(start_gateway):
    gw = start_gateway()
    before = rss_kib(gw.proc.pid)
    c = H2(gw)
    enc = hpack.Encoder()
    first = HeadersFrame(1, data=enc.encode(c.request_headers()))  # no END_HEADERS
    frames = [first.serialize()]
    for i in range(20000):
        frames.append(ContinuationFrame(1, data=enc.encode([(f"x-flood-{i % 50}", "v" * 200)])).serialize())
    sent = 0
    try:
        for i in range(0, len(frames), 500):
            c.sock.sendall(b"".join(frames[i:i + 500]))
            sent += 500
    except OSError:
        pass
    code, closed = c.goaway(10)
    assert code is not None or closed, "the flooding connection was neither sent GOAWAY nor closed"
    assert code in (None, 1, 9, 11), f"unexpected GOAWAY code {code}"
    assert sent < len(frames), "the gateway read the whole flood without closing the connection"
    assert rss_kib(gw.proc.pid) - before < 20 * 1024
    assert healthz(gw) == 200


# --------------------------------------------------------------------------------------------
# Connection cap, idle connections, shedding.
def metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                     if line and not line.startswith("#"))}


def test_connections_past_the_cap_are_closed_at_once(start_gateway):
    mport = free_port()
    gw = start_gateway(extra_args=["--max-connections", "4", "--header-timeout", "60s",
                                   "--metrics-listen", f"127.0.0.1:{mport}"])
    held = [tls_socket(gw) for _ in range(4)]
    time.sleep(0.3)
    start = time.monotonic()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = tls_socket(gw, timeout=5)
        # TLS 1.3 may finish the client side before the server's close is seen.
        assert is_closed(s, 2.0)
        raise ConnectionError("closed")
    assert time.monotonic() - start < 3, "an extra connection waited instead of being closed"
    assert metrics(mport)["postern_connections_refused_total"] == 1
    held.pop().close()
    time.sleep(0.3)
    assert healthz(gw) == 200
    for s in held:
        s.close()


def test_idle_h2_connection_gets_goaway_at_idle_timeout(start_gateway):
    gw = start_gateway(extra_args=["--idle-timeout", "3s"])
    c = H2(gw)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, c.request_headers(), end_stream=True)
    c.flush()
    start = time.monotonic()
    code, closed = c.goaway(12)
    took = time.monotonic() - start
    assert code == 0 and closed, (code, closed)
    assert 2.5 <= took <= 8, f"closed after {took:.1f}s, expected ~3s"


def test_overload_sheds_with_503_and_retry_after(start_gateway):
    mport = free_port()
    gw = start_gateway(extra_args=["--max-inflight-requests", "3", "--retry-after", "2s",
                                   "--metrics-listen", f"127.0.0.1:{mport}"])
    with StandIn("slow", api_key=None, prefix="", request_delay=4.0) as up:
        token = setup(gw, up.url)
        url = gw.url("open", "/v1/models")

        def call(_):
            with gw.http() as h:
                t = time.monotonic()
                r = h.get(url, headers={"Authorization": f"Bearer {token}"})
                return r, time.monotonic() - t

        with ThreadPoolExecutor(3) as slow_pool:
            slow = [slow_pool.submit(call, i) for i in range(3)]
            deadline = time.monotonic() + 5
            while len(up.requests) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(up.requests) == 3
            assert metrics(mport)["postern_requests_in_flight"] == 3
            with ThreadPoolExecutor(8) as pool:
                shed = list(pool.map(call, range(16)))
            for r, took in shed:
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "2"
                assert_error_body(r.json())
                assert took < 1.5, f"a shed request took {took:.1f}s"
            assert [f.result()[0].status_code for f in slow] == [200] * 3
        r, _ = call(0)
        assert r.status_code == 200
        assert len(up.requests) == 4, "shed requests must not reach the upstream"
        m = metrics(mport)
        assert (m["postern_requests_shed_total"], m["postern_requests_in_flight"]) == (16, 0)


# --------------------------------------------------------------------------------------------
# Memory of idle TLS connections.
def test_idle_tls_connections_hold_bounded_memory(start_gateway):
    n = int(os.environ.get("POSTERN_IDLE_CONNS", "1000"))
    gw = start_gateway(extra_args=["--header-timeout", "300s", "--idle-timeout", "300s",
                                   "--max-connections", str(n + 100)])
    time.sleep(0.5)
    before = rss_kib(gw.proc.pid)
    socks = []

    def open_one(_):
        c = H2(gw)
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, c.request_headers(), end_stream=True)
        c.flush()
        c.sock.settimeout(10)
        while True:
            data = c.sock.recv(65536)
            assert data, "connection closed before the response"
            events = c.conn.receive_data(data)
            c.flush()
            if any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events):
                return c

    with ThreadPoolExecutor(16) as pool:
        socks = list(pool.map(open_one, range(n)))
    time.sleep(2)
    after = rss_kib(gw.proc.pid)
    per_conn = (after - before) * 1024 / n
    msg = f"{n} idle TLS connections (HTTP/2, one request each): RSS {before} -> {after} KiB, {per_conn:.0f} B each"
    print(msg)
    assert healthz(gw) == 200
    assert per_conn < 64 * 1024, msg
    for c in socks:
        c.sock.close()


def test_shutdown_is_not_held_by_idle_or_unfinished_connections(start_gateway):
    """SIGTERM ends the gateway promptly although clients hold connections that sit before
    the TLS handshake, before any request, and after one (HTTP/2)."""
    gw = start_gateway()
    raw = socket.create_connection(("127.0.0.1", gw.port))
    silent = tls_socket(gw, "http/1.1")
    c = H2(gw)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, c.request_headers(), end_stream=True)
    c.flush()
    time.sleep(0.5)
    start = time.monotonic()
    assert gw.stop(timeout=10) == 0
    took = time.monotonic() - start
    assert took < 4, f"shutdown took {took:.1f}s"
    for s in (raw, silent, c.sock):
        s.close()
