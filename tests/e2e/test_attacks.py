"""The attack table's request-shape rows (docs/security.md), each through the real gateway:
path confusion between policy and upstream, request smuggling over HTTP/1.1 and HTTP/2,
forwarded-header spoofing, Host/:authority disagreement, SSRF through the request target or
an upstream redirect, and hop-by-hop headers in responses.

Clients: curl ``--path-as-is`` for paths, raw TLS sockets for malformed HTTP/1.1, the ``h2``
package with validation off for malformed HTTP/2 (``rawclient``)."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import DOMAIN
from rawclient import H2Conn, h2_headers, raw_exchange, statuses
from standin import StandIn


def service(name: str, url: str, *rules: tuple[str, str]) -> str:
    """A public Service whose inline policy has ``rules`` as (effect, CEL condition)."""
    text = f"""\
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
"""
    for effect, cond in rules:
        text += f"            - effect: {effect}\n              condition:\n                match: '{cond}'\n"
    return text


ATK = 'ctx.user.metadata.name == "atk"'


class Atk:
    def __init__(self, gw, stack: ExitStack):
        self.gw = gw
        self.up = stack.enter_context(StandIn("up"))
        self.other = stack.enter_context(StandIn("other"))
        self.internal = stack.enter_context(StandIn("internal"))
        docs = [
            "kind: User\nmetadata:\n  name: atk\nspec:\n  type: WORKLOAD\n",
            service("paths", self.up.url, ("DENY", 'ctx.request.http.path.startsWith("/admin")'), ("ALLOW", ATK)),
            service("exact", self.up.url, ("ALLOW", 'ctx.request.http.path == "/v1/~user/caf%C3%A9/a"')),
            service("svc-a", self.up.url, ("ALLOW", ATK)),
            service("svc-b", self.other.url, ("ALLOW", ATK)),
            service("ip-range", self.up.url, ("ALLOW", 'net.isIPInRange(ctx.request.ip, "10.0.0.0/8")')),
            service("hdr-trust", self.up.url,
                    ("ALLOW", 'ctx.request.http.headers["x-forwarded-for"] == "10.1.2.3"'),
                    ("ALLOW", 'ctx.request.http.headers["x-real-ip"] == "10.1.2.3"'),
                    ("ALLOW", 'ctx.request.http.headers["forwarded"] == "for=10.1.2.3"'),
                    ("ALLOW", 'ctx.request.http.headers["x-forwarded-host"] == "svc-b.postern.test"')),
        ]
        gw.apply_text("---\n".join(docs))
        self.tok = gw.token(*gw.create_oauth2("atk", "atk-oauth2"))

    def host(self, svc: str) -> str:
        return f"{svc}.{DOMAIN}"

    def curl(self, svc: str, path: str, *extra: str):
        return self.gw.curl("--path-as-is", "-H", f"Authorization: Bearer {self.tok}", *extra,
                            self.gw.url(svc, path))

    def h1(self, svc: str, head: str, body: bytes = b"", sni: str | None = None) -> bytes:
        """Sends ``head`` (request line and headers, no final blank line) with the token added."""
        head = head.replace("{auth}", f"Authorization: Bearer {self.tok}")
        return raw_exchange(self.gw, sni or self.host(svc), head.encode() + b"\r\n\r\n" + body)

    def upstream_paths(self) -> list[str]:
        return [q.path for s in (self.up, self.other, self.internal) for q in s.requests]


@pytest.fixture
def atk(gateway):
    with ExitStack() as stack:
        yield Atk(gateway, stack)


# ----------------------------------------------------------------------------- path confusion
@pytest.mark.parametrize("path,status", [
    ("/%61dmin", 403),                # the hole: %61 is 'a', most servers decode it
    ("/%61%64%6D%69%6E/users", 403),
    ("/adm%69n", 403),
    ("/x/%2e%2e/admin", 403),
    ("/x/.%2E/%61dmin", 403),
    ("/x/../../admin", 403),
    ("//admin", 403),
    ("/./admin", 403),
    ("/%2561dmin", 400),              # double encoding
    ("/x/%252e%252e/admin", 400),
    ("/x/%25%32%65%25%32%65/admin", 400),
    ("/x/..%2fadmin", 400),           # encoded slash and backslash
    ("/x/..%5Cadmin", 400),
    ("/x/..;/admin", 400),            # Tomcat's path parameter trick
    ("/admin;jsessionid=1", 400),
    ("/x/%3B/admin", 400),
    ("/adm%zzin", 400),               # '%' that starts no escape
])
def test_encoded_paths_cannot_pass_a_deny_rule(atk, path, status):
    r = atk.curl("paths", path)
    assert r.status == status, (path, r.status, r.body)
    assert atk.up.requests == [], f"{path} reached the upstream as {atk.upstream_paths()}"


def test_allowed_path_still_reaches_upstream(atk):
    assert atk.curl("paths", "/v1/ok").status == 200
    assert atk.upstream_paths() == ["/v1/ok"]


def test_policy_and_upstream_see_the_same_normalised_path(atk):
    """Unreserved escapes decoded, the rest uppercased: the rule's exact string is what the
    upstream gets, and what the access log records."""
    r = atk.curl("exact", "/v1/%7euser/./caf%c3%a9/%61")
    assert r.status == 200, r.body
    assert atk.upstream_paths() == ["/v1/~user/caf%C3%A9/a"]
    e = atk.gw.wait_access(lambda e: e.get("service") == "exact")
    assert e["path"] == "/v1/~user/caf%C3%A9/a", e


def test_normalised_path_over_http2(atk):
    with H2Conn(atk.gw, atk.host("paths")) as c:
        r = c.request(h2_headers(atk.gw, atk.host("paths"), "/%61dmin", token=atk.tok))
        assert r.status == 403, r
        r = c.request(h2_headers(atk.gw, atk.host("paths"), "/x/..;/admin", token=atk.tok))
        assert r.status == 400, r
    assert atk.up.requests == []


# -------------------------------------------------------------------------- request smuggling
SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: svc-a.postern.test\r\n{auth}\r\n\r\n"


@pytest.mark.parametrize("framing,body", [
    ("Content-Length: 5\r\nContent-Length: {n}", "hello" + SMUGGLED),
    ("Content-Length: 5, {n}", "hello" + SMUGGLED),
    ("Content-Length: +5", "hello" + SMUGGLED),
    ("Transfer-Encoding: chunked, identity\r\nContent-Length: {n}", "0\r\n\r\n" + SMUGGLED),
    ("Transfer-Encoding: xchunked\r\nContent-Length: {n}", "0\r\n\r\n" + SMUGGLED),
    ("Transfer-Encoding : chunked\r\nContent-Length: {n}", "0\r\n\r\n" + SMUGGLED),
    ("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity", "0\r\n\r\n" + SMUGGLED),
    ("X-Pad: a\r\n Transfer-Encoding: chunked\r\nContent-Length: {n}", "0\r\n\r\n" + SMUGGLED),
])
def test_ambiguous_framing_is_refused(atk, framing, body):
    auth = f"Authorization: Bearer {atk.tok}"
    data = body.replace("{auth}", auth).encode()
    head = f"POST /x HTTP/1.1\r\nHost: {atk.host('svc-a')}\r\n{{auth}}\r\n" + framing.replace("{n}", str(len(data)))
    out = atk.h1("svc-a", head, data)
    assert statuses(out) == [400], out[:300]
    assert atk.upstream_paths() == [], atk.upstream_paths()


def test_content_length_and_chunked_closes_after_one_response(atk):
    """Both lengths: the body is the chunked one (RFC 9112 6.1), the upstream gets a clean
    request, and the connection is closed after the answer, so bytes after the last chunk are
    never read as a second request."""
    data = ("0\r\n\r\n" + SMUGGLED.replace("{auth}", f"Authorization: Bearer {atk.tok}")).encode()
    head = (f"POST /x HTTP/1.1\r\nHost: {atk.host('svc-a')}\r\n{{auth}}\r\n"
            f"Content-Length: {len(data)}\r\nTransfer-Encoding: chunked")
    out = atk.h1("svc-a", head, data)
    assert len(statuses(out)) == 1 and statuses(out)[0] in (200, 400), out[:300]
    assert "/smuggled" not in atk.upstream_paths(), atk.upstream_paths()
    for q in atk.up.requests:
        assert q.body == b"" and q.header("content-length") in (None, "0"), q


def test_overflowing_chunk_size_cuts_the_request_off(atk):
    """A chunk size past 64 bits is found while the body streams: the request fails (the
    headers already went upstream, so the status is 400 or 502) and nothing after it is read."""
    data = ("fffffffffffffffff1\r\nx\r\n0\r\n\r\n"
            + SMUGGLED.replace("{auth}", f"Authorization: Bearer {atk.tok}")).encode()
    head = f"POST /x HTTP/1.1\r\nHost: {atk.host('svc-a')}\r\n{{auth}}\r\nTransfer-Encoding: chunked"
    out = atk.h1("svc-a", head, data)
    assert len(statuses(out)) == 1 and statuses(out)[0] in (400, 502), out[:300]
    assert "/smuggled" not in atk.upstream_paths(), atk.upstream_paths()
    assert all(q.body == b"" for q in atk.up.requests)


@pytest.mark.parametrize("extra,body", [
    ([("transfer-encoding", "chunked")], b"0\r\n\r\n" + SMUGGLED.encode()),
    ([("content-length", "0")], SMUGGLED.encode()),
    ([("content-length", "3")], b"hello"),
    ([("x-inject", "a\r\nTransfer-Encoding: chunked")], b""),
    ([("x-inject\r\ntransfer-encoding", "chunked")], b""),
    ([("x-inject", "a\nx-evil: 1")], b""),
    ([("connection", "keep-alive")], b""),
    ([("upgrade", "h2c")], b""),
    ([("te", "gzip")], b""),
    ([("X-Upper", "1")], b""),
])
def test_http2_to_http1_downgrade_cannot_smuggle(atk, extra, body):
    """Connection-specific headers, CR/LF in names or values and a body that disagrees with
    content-length make an HTTP/2 request malformed (RFC 9113 8.1.1, 8.2): the stream is
    refused and nothing reaches the HTTP/1.1 upstream."""
    with H2Conn(atk.gw, atk.host("svc-a")) as c:
        r = c.request(h2_headers(atk.gw, atk.host("svc-a"), "/x", "POST" if body else "GET", atk.tok, extra), body)
    assert r.refused or r.status == 400, r
    assert atk.upstream_paths() == [], [(q.path, q.headers) for q in atk.up.requests]


def test_http2_crlf_in_path_is_refused(atk):
    with H2Conn(atk.gw, atk.host("svc-a")) as c:
        r = c.request(h2_headers(atk.gw, atk.host("svc-a"),
                                 "/x HTTP/1.1\r\nHost: svc-b\r\n\r\nGET /smuggled", token=atk.tok))
    assert r.refused or r.status == 400, r
    assert atk.upstream_paths() == []


def test_http2_te_trailers_is_allowed_and_not_forwarded(atk):
    """The one legal `te` value passes (a control for the refusals above) but stays hop-by-hop."""
    with H2Conn(atk.gw, atk.host("svc-a")) as c:
        r = c.request(h2_headers(atk.gw, atk.host("svc-a"), "/ok", token=atk.tok, extra=[("te", "trailers")]))
    assert r.status == 200, r
    [q] = atk.up.requests
    assert q.header("te") is None and q.header("transfer-encoding") is None, q.headers


# -------------------------------------------------------------------- forwarded-header spoofing
SPOOF = [("X-Forwarded-For", "10.1.2.3"), ("X-Real-IP", "10.1.2.3"), ("Forwarded", "for=10.1.2.3"),
         ("X-Forwarded-Host", f"svc-b.{DOMAIN}")]


@pytest.mark.parametrize("name,value", SPOOF)
def test_policy_never_sees_client_forwarding_claims(atk, name, value):
    r = atk.curl("hdr-trust", "/x", "-H", f"{name}: {value}")
    assert r.status == 403, (name, r.status, r.body)
    assert atk.up.requests == []


def test_client_address_in_policy_is_the_socket_peer(atk):
    args = [a for n, v in SPOOF for a in ("-H", f"{n}: {v}")]
    assert atk.curl("ip-range", "/x", *args).status == 403
    assert atk.up.requests == []


def test_upstream_gets_the_gateways_forwarding_view(atk):
    args = [a for n, v in SPOOF + [("X-Forwarded-Proto", "http"), ("X-Forwarded-Port", "80"),
                                     ("X-Forwarded-Prefix", "/admin"), ("X-Original-URL", "/admin"),
                                     ("X-Rewrite-URL", "/admin"), ("X-HTTP-Method-Override", "DELETE"),
                                     ("True-Client-IP", "10.1.2.3")]
            for a in ("-H", f"{n}: {v}")]
    assert atk.curl("svc-a", "/x", *args).status == 200
    [q] = atk.up.requests
    values = lambda n: [v for k, v in q.headers if k.lower() == n]  # noqa: E731
    assert values("x-forwarded-for") == ["127.0.0.1"], q.headers
    assert values("x-forwarded-proto") == ["https"], q.headers
    assert values("x-forwarded-host") in ([atk.host("svc-a")], [f"{atk.host('svc-a')}:{atk.gw.port}"]), q.headers
    for n in ("forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-original-url",
              "x-rewrite-url", "x-http-method-override", "true-client-ip"):
        assert values(n) == [], (n, q.headers)
    assert not q.header_values().count("10.1.2.3")


# ---------------------------------------------------------------- Host, SNI and :authority
def test_absolute_form_target_disagreeing_with_host_is_400(atk):
    out = atk.h1("svc-a", f"GET https://{atk.host('svc-b')}:{atk.gw.port}/x HTTP/1.1\r\n"
                          f"Host: {atk.host('svc-a')}:{atk.gw.port}\r\n{{auth}}\r\nConnection: close")
    assert statuses(out) == [400], out[:300]
    assert atk.upstream_paths() == []


def test_repeated_host_is_400(atk):
    out = atk.h1("svc-a", f"GET /x HTTP/1.1\r\nHost: {atk.host('svc-a')}\r\nHost: {atk.host('svc-b')}\r\n"
                          "{auth}\r\nConnection: close")
    assert statuses(out) == [400], out[:300]
    assert atk.upstream_paths() == []


def test_http2_host_disagreeing_with_authority_is_400(atk):
    with H2Conn(atk.gw, atk.host("svc-a")) as c:
        r = c.request(h2_headers(atk.gw, atk.host("svc-a"), "/x", token=atk.tok,
                                 extra=[("host", atk.host("svc-b"))]))
        assert r.status == 400, r
        ok = c.request(h2_headers(atk.gw, atk.host("svc-a"), "/x", token=atk.tok,
                                  extra=[("host", atk.host("svc-a"))]))
        assert ok.status == 200, ok
    assert atk.upstream_paths() == ["/x"] and len(atk.up.requests) == 1


def test_sni_only_selects_the_certificate(atk):
    """A connection opened for svc-a may carry a request for svc-b (HTTP/2 coalescing does
    this): svc-b's policy decides it and svc-b's upstream answers, never svc-a's."""
    with H2Conn(atk.gw, atk.host("svc-a")) as c:
        r = c.request(h2_headers(atk.gw, atk.host("svc-b"), "/x", token=atk.tok))
    assert r.status == 200, r
    assert [q.path for q in atk.other.requests] == ["/x"] and atk.up.requests == []


# ------------------------------------------------------------------------------------- SSRF
def test_request_target_cannot_name_an_internal_upstream(atk):
    internal = f"127.0.0.1:{atk.internal.port}"
    out = atk.h1("svc-a", f"GET http://{internal}/secret HTTP/1.1\r\nHost: {atk.host('svc-a')}\r\n"
                          "{auth}\r\nConnection: close")
    assert statuses(out) in ([400], [404]), out[:300]
    out = atk.h1("svc-a", f"GET /secret HTTP/1.1\r\nHost: {internal}\r\n{{auth}}\r\nConnection: close")
    assert statuses(out) == [404], out[:300]
    out = atk.h1("svc-a", f"GET /secret HTTP/1.1\r\nHost: {atk.host('svc-a')}@{internal}\r\n"
                          "{auth}\r\nConnection: close")
    assert statuses(out) == [400], out[:300]
    with H2Conn(atk.gw, atk.host("svc-a")) as c:
        r = c.request([(":method", "GET"), (":scheme", "http"), (":authority", internal),
                       (":path", "/secret"), ("authorization", f"Bearer {atk.tok}")])
    assert r.status == 404 or r.refused, r
    assert atk.internal.requests == []


@pytest.mark.parametrize("path,forwarded", [
    ("//127.0.0.1:{port}/secret", "/127.0.0.1:{port}/secret"),
    ("/@127.0.0.1:{port}/secret", "/@127.0.0.1:{port}/secret"),
    ("/http://127.0.0.1:{port}/secret", "/http:/127.0.0.1:{port}/secret"),
])
def test_path_cannot_change_the_upstream_host(atk, path, forwarded):
    port = str(atk.internal.port)
    assert atk.curl("svc-a", path.replace("{port}", port)).status == 200
    assert atk.internal.requests == []
    assert [q.path for q in atk.up.requests] == [forwarded.replace("{port}", port)]


class Scripted:
    """An upstream answering every request with a fixed status and headers, recording paths."""

    def __init__(self, status: int, headers: list[tuple[str, str]]):
        self.paths: list[str] = []
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                owner.paths.append(self.path)
                body = b'{"scripted": true}'
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made: list[Scripted] = []

    def make(status, headers):
        s = Scripted(status, headers)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_upstream_redirect_is_passed_through_not_followed(atk, scripted):
    """The gateway never follows an upstream's redirect (no SSRF through Location) and emits
    none of its own; the upstream's Location reaches the caller unchanged."""
    target = f"http://127.0.0.1:{atk.internal.port}/secret"
    up = scripted(302, [("Location", target)])
    atk.gw.apply_text(service("redir", up.url, ("ALLOW", ATK)))
    for args in ([], ["--http2"], ["--http1.1"]):
        r = atk.curl("redir", "/go", *args)
        assert r.status == 302, r
        assert r.headers.get("location") == target, r.headers
    assert up.paths == ["/go"] * 3
    assert atk.internal.requests == []


# --------------------------------------------------------------------------- hop-by-hop headers
def test_hop_by_hop_response_headers_are_stripped(atk, scripted):
    up = scripted(200, [("Connection", "X-Up-Secret, Keep-Alive"), ("X-Up-Secret", "hop-1"),
                        ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic realm=up"),
                        ("Proxy-Connection", "keep-alive"), ("Upgrade", "h2c"), ("Trailer", "X-T"),
                        ("X-End-To-End", "kept")])
    atk.gw.apply_text(service("hop", up.url, ("ALLOW", ATK)))
    for args in (["--http1.1"], ["--http2"]):
        r = atk.curl("hop", "/h", *args)
        assert r.status == 200, r
        assert r.headers.get("x-end-to-end") == "kept", r.headers
        for n in ("x-up-secret", "keep-alive", "proxy-authenticate", "proxy-connection", "upgrade", "trailer"):
            assert n not in r.headers, (args, n, r.headers)
        assert "x-up-secret" not in r.headers.get("connection", "").lower(), r.headers
