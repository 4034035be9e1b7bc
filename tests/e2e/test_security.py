"""Attacks on the request line and headers: dot-segment traversal (plain and percent-encoded)
is normalised before the policy sees the path, a Host header naming another Service does
not borrow the first Service's authorization, oversized headers are refused, and an
ambiguous body length is not smuggled to the upstream."""

import socket
import ssl
from contextlib import ExitStack

import pytest

from conftest import DOMAIN
from standin import StandIn


def service(name, url, condition):
    return f"""\
kind: Service
metadata:
  name: {name}
spec:
  mode: HTTP
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
                match: '{condition}'
"""


class Sec:
    def __init__(self, gw, stack):
        self.gw = gw
        self.paths = stack.enter_context(StandIn("paths"))
        self.a = stack.enter_context(StandIn("a"))
        self.b = stack.enter_context(StandIn("b"))
        gw.apply_text("kind: User\nmetadata:\n  name: sec\nspec:\n  type: WORKLOAD\n")
        gw.apply_text(service("paths", self.paths.url, 'ctx.request.http.path.startsWith("/v1/")'))
        gw.apply_text(service("svc-a", self.a.url, 'ctx.user.metadata.name == "sec"'))
        gw.apply_text(service("svc-b", self.b.url, 'ctx.user.metadata.name == "nobody"'))
        self.tok = gw.token(*gw.create_oauth2("sec", "sec-oauth2"))

    def curl(self, svc, path, *extra):
        return self.gw.curl("--path-as-is", "-H", f"Authorization: Bearer {self.tok}", *extra,
                            self.gw.url(svc, path))


@pytest.fixture
def sec(gateway):
    with ExitStack() as stack:
        yield Sec(gateway, stack)


def test_allowed_prefix_reaches_upstream(sec):
    r = sec.curl("paths", "/v1/ok")
    assert r.status == 200, r.body
    assert [q.path for q in sec.paths.requests] == ["/v1/ok"]
    assert sec.curl("paths", "/admin").status == 403
    assert len(sec.paths.requests) == 1


@pytest.mark.parametrize("path", [
    "/v1/../admin",
    "/v1/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/.%2e/admin",
    "/v1/%2e./admin",
    "/v1/./../admin",
    "/v1/x/../../admin",
])
def test_traversal_out_of_allowed_prefix_is_refused(sec, path):
    r = sec.curl("paths", path)
    assert r.status in (400, 403, 404), (path, r.status, r.body)
    assert sec.paths.requests == [], f"{path} reached the upstream as {[q.path for q in sec.paths.requests]}"


def test_traversal_inside_prefix_is_normalised(sec):
    r = sec.curl("paths", "/v1/x/../ok")
    assert r.status in (200, 400), r.body
    if r.status == 200:
        assert [q.path for q in sec.paths.requests] == ["/v1/ok"]


def test_token_on_own_service_works(sec):
    assert sec.curl("svc-a", "/x").status == 200
    assert sec.curl("svc-b", "/x").status == 403
    assert len(sec.a.requests) == 1 and sec.b.requests == []


@pytest.mark.parametrize("sni_svc,host_svc", [("svc-a", "svc-b"), ("svc-b", "svc-a")])
def test_host_header_does_not_cross_services(sec, sni_svc, host_svc):
    r = sec.curl(sni_svc, "/x", "-H", f"Host: {host_svc}.{DOMAIN}:{sec.gw.port}")
    assert sec.b.requests == [], "svc-b's upstream was reached although its policy allows nobody"
    assert r.status in (200, 400, 403, 404, 421), r.body
    if r.status == 200:
        assert r.json()["standin"] == "a"


def test_host_of_control_plane_with_service_sni(sec):
    r = sec.curl("svc-b", "/x", "-H", f"Host: {DOMAIN}:{sec.gw.port}")
    assert sec.b.requests == []
    assert r.status != 200 or b"standin" not in r.body


def test_oversized_header_is_refused(sec):
    with sec.gw.http() as h:
        r = h.get(sec.gw.url("svc-a", "/x"),
                  headers={"Authorization": f"Bearer {sec.tok}", "X-Big": "a" * 512 * 1024})
    assert r.status_code in (400, 431), r.status_code
    assert sec.a.requests == []


def _raw(gw, host, payload: bytes, timeout=5.0) -> bytes:
    ctx = ssl.create_default_context(cafile=gw.ca)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=host) as t:
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


def test_conflicting_length_headers_are_not_smuggled(sec):
    host = f"svc-a.{DOMAIN}"
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    req = (b"POST /x HTTP/1.1\r\nHost: " + host.encode() + b"\r\nAuthorization: Bearer " + sec.tok.encode()
           + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nTransfer-Encoding: chunked\r\n"
           + b"Connection: close\r\n\r\n" + body)
    out = _raw(sec.gw, host, req)
    assert out.startswith(b"HTTP/1.1 "), out[:200]
    assert all("/smuggled" not in q.path for q in sec.a.requests), [q.path for q in sec.a.requests]
    assert len(sec.a.requests) <= 1


def test_absolute_form_request_target_cannot_reach_other_service(sec):
    host = f"svc-a.{DOMAIN}"
    req = (f"GET https://svc-b.{DOMAIN}:{sec.gw.port}/x HTTP/1.1\r\nHost: {host}:{sec.gw.port}\r\n"
           f"Authorization: Bearer {sec.tok}\r\nConnection: close\r\n\r\n").encode()
    out = _raw(sec.gw, host, req)
    assert out.startswith(b"HTTP/1.1 "), out[:200]
    assert sec.b.requests == []
