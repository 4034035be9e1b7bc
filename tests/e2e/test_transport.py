"""The front door's transport (TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN, unknown hosts and
plain HTTP on the TLS port) and https upstreams verified against a test CA given with
``posternd serve --upstream-ca`` (never falling back to no verification)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
from contextlib import ExitStack
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import DOMAIN, assert_error_body
from standin import StandIn

USER = """\
kind: User
metadata:
  name: transport
spec:
  type: WORKLOAD
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                matchAny: true
"""


def service(name: str, url: str, extra_http: str = "") -> str:
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
"""
    if extra_http:
        text += "    http:\n" + extra_http
    return text


class Env:
    def __init__(self, gw, up: StandIn):
        self.gw, self.up = gw, up
        gw.apply_text(USER, "transport-user.yaml")
        self.tok = gw.token(*gw.create_oauth2("transport", "transport-oauth2"))
        gw.apply_text(service("echo", up.url), "echo.yaml")

    def auth(self) -> list[str]:
        return ["-H", f"Authorization: Bearer {self.tok}"]


@pytest.fixture
def env(gateway):
    with StandIn("echo") as up:
        yield Env(gateway, up)


# ------------------------------------------------------------------------------------------ TLS
def _handshake(gw, server_hostname: str, *, min_v=None, max_v=None, alpn=None, verify=True):
    ctx = ssl.create_default_context(cafile=gw.ca)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if min_v:
        ctx.minimum_version = min_v
    if max_v:
        ctx.maximum_version = max_v
    if alpn:
        ctx.set_alpn_protocols(alpn)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return ctx.wrap_socket(s, server_hostname=server_hostname)


@pytest.mark.parametrize("version,flags,name", [
    (ssl.TLSVersion.TLSv1_2, ["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2"),
    (ssl.TLSVersion.TLSv1_3, ["--tlsv1.3"], "TLSv1.3"),
])
def test_tls_versions_accepted(env, version, flags, name):
    # the negotiated version, seen by Python's ssl
    with _handshake(env.gw, f"echo.{DOMAIN}", min_v=version, max_v=version) as s:
        assert s.version() == name
    # and a whole request with curl pinned to the version
    r = env.gw.curl("-v", *flags, *env.auth(), env.gw.url("echo", "/tls-check"))
    assert r.status == 200, (r.status, r.body, r.stderr[-3000:])
    assert f"SSL connection using {name}" in r.stderr, r.stderr[-3000:]
    assert r.json()["path"] == "/tls-check"
    assert [q.path for q in env.up.requests] == ["/tls-check"]


def test_http2_by_alpn(env):
    with _handshake(env.gw, f"echo.{DOMAIN}", alpn=["h2", "http/1.1"]) as s:
        assert s.selected_alpn_protocol() == "h2"
    r = env.gw.curl("-v", "--http2", *env.auth(), env.gw.url("echo", "/h2?a=1"))
    assert r.status == 200, (r.body, r.stderr[-3000:])
    assert "< HTTP/2 200" in r.stderr, r.stderr[-3000:]
    assert r.json()["path"] == "/h2?a=1"
    # the upstream (plain http) is spoken to in HTTP/1.1 whatever the caller used
    [req] = env.up.requests
    assert req.path == "/h2?a=1"


def test_http1_by_alpn(env):
    with _handshake(env.gw, f"echo.{DOMAIN}", alpn=["http/1.1"]) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    r = env.gw.curl("-v", "--http1.1", *env.auth(), env.gw.url("echo", "/h1"))
    assert r.status == 200, (r.body, r.stderr[-3000:])
    assert "< HTTP/1.1 200" in r.stderr, r.stderr[-3000:]
    assert r.json()["path"] == "/h1"


def test_http2_post_body_forwarded(env):
    r = env.gw.curl("--http2", *env.auth(), "-H", "Content-Type: application/json",
                    "--data", '{"hello":"h2"}', env.gw.url("echo", "/post"))
    assert r.status == 200, r.body
    [req] = env.up.requests
    assert (req.method, req.path, req.body) == ("POST", "/post", b'{"hello":"h2"}')


def test_unknown_service_is_404_json(env):
    r = env.gw.curl(*env.auth(), env.gw.url("no-such-service", "/x"))
    assert r.status == 404, r.body
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    assert_error_body(r.json())
    assert env.up.requests == []


def test_foreign_host_and_sni_is_404_json(env):
    """SNI and Host of a domain the gateway does not serve: its certificate does not match (so
    the client must skip verification), and the answer is a JSON 404, not a forwarded request."""
    r = env.gw.curl("-k", *env.auth(), f"https://other.example:{env.gw.port}/x")
    assert r.status == 404, (r.status, r.body, r.stderr)
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    assert_error_body(r.json())
    # deeper names below the domain are not Services either (the *.domain certificate does not
    # cover them: -k)
    r = env.gw.curl("-k", *env.auth(), f"https://a.echo.{DOMAIN}:{env.gw.port}/x")
    assert r.status == 404, r.body
    assert_error_body(r.json())
    # a foreign SNI with the Host of a real Service is routed by Host, over raw TLS + HTTP/1.1
    with _handshake(env.gw, "other.example", verify=False, alpn=["http/1.1"]) as s:
        s.sendall(f"GET /x HTTP/1.1\r\nHost: no-such.{DOMAIN}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), data[:500]
    assert_error_body(json.loads(body))
    assert env.up.requests == []


def test_plain_http_on_tls_port_fails(env):
    r = env.gw.curl(*env.auth(), f"http://echo.{DOMAIN}:{env.gw.port}/plain")
    assert r.status not in range(200, 400), (r.status, r.body)
    assert b'"standin"' not in r.body
    # raw bytes: no HTTP success answer comes back in clear text
    with socket.create_connection(("127.0.0.1", env.gw.port), timeout=10) as s:
        s.sendall(f"GET /plain HTTP/1.1\r\nHost: echo.{DOMAIN}\r\nAuthorization: Bearer {env.tok}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert not data.startswith(b"HTTP/1.1 2"), data[:300]
    assert env.up.requests == []
    # and the listener still serves TLS afterwards
    r = env.gw.curl(*env.auth(), env.gw.url("echo", "/after"))
    assert r.status == 200, r.body
    assert [q.path for q in env.up.requests] == ["/after"]


# ------------------------------------------------------------------------------ https upstreams
def _now():
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)


class UpstreamCA:
    def __init__(self, name: str = "Postern e2e test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now()).not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def server_context(self, tmp: Path, dns: list[str], ips: list[str], alpn: list[str] | None) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips)[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now()).not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        n = len(list(tmp.glob("leaf-*.pem")))
        cert_path, key_path = tmp / f"leaf-{n}.pem", tmp / f"leaf-{n}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.pem())
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture
def test_ca(tmp_path):
    ca = UpstreamCA()
    path = tmp_path / "upstream-ca.pem"
    path.write_bytes(ca.pem())
    return ca, path


def _setup_tls_upstream(gw, up: StandIn, name: str = "secure") -> str:
    gw.apply_text(USER, "transport-user.yaml")
    tok = gw.token(*gw.create_oauth2("transport", "transport-oauth2"))
    gw.create_secret("secure-key", "sk-secure-0451")
    gw.apply_text(service(name, up.url, "      auth:\n        bearer:\n          fromSecret: secure-key\n"))
    return tok


def test_https_upstream_untrusted_ca_is_502(start_gateway, test_ca, tmp_path):
    ca, _ = test_ca
    gw = start_gateway()  # no --upstream-ca: the test CA is not trusted
    with StandIn("secure", ssl_context=ca.server_context(tmp_path, ["localhost"], ["127.0.0.1"],
                                                          ["http/1.1"])) as up:
        tok = _setup_tls_upstream(gw, up)
        r = gw.curl("-H", f"Authorization: Bearer {tok}", gw.url("secure", "/v1/models"))
        assert r.status == 502, (r.status, r.body)
        assert_error_body(r.json())
        # verification failed during the handshake: no request was ever sent (no fallback to an
        # unverified connection), so the injected key never left the gateway
        assert up.requests == []
        e = gw.wait_access(lambda e: e.get("service") == "secure" and e.get("status") == 502)
        assert e["decision"] == "ALLOW"


@pytest.mark.parametrize("alpn", [["http/1.1"], None], ids=["alpn-http1.1", "no-alpn"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_https_upstream_with_upstream_ca(start_gateway, test_ca, tmp_path, alpn, host):
    ca, ca_path = test_ca
    gw = start_gateway(upstream_ca=str(ca_path))
    ctx = ca.server_context(tmp_path, ["localhost"], ["127.0.0.1"], alpn)
    with StandIn("secure", ssl_context=ctx, tls_host=host) as up:
        assert up.url.startswith("https://")
        tok = _setup_tls_upstream(gw, up)
        r = gw.curl("-H", f"Authorization: Bearer {tok}", gw.url("secure", "/v1/things?limit=2"))
        assert r.status == 200, (r.status, r.body, gw.stderr()[-3000:])
        assert r.json()["path"] == "/v1/things?limit=2"
        [req] = up.requests
        assert req.path == "/v1/things?limit=2"
        assert req.header("authorization") == "Bearer sk-secure-0451"
        assert req.header("x-forwarded-proto") == "https"
        assert not up.saw_value(tok)


def test_https_upstream_wrong_hostname_is_502(start_gateway, test_ca, tmp_path):
    """A certificate from the trusted CA but for another name is still refused."""
    ca, ca_path = test_ca
    gw = start_gateway(upstream_ca=str(ca_path))
    ctx = ca.server_context(tmp_path, ["wrong.example"], [], ["http/1.1"])
    with StandIn("secure", ssl_context=ctx) as up:
        tok = _setup_tls_upstream(gw, up)
        r = gw.curl("-H", f"Authorization: Bearer {tok}", gw.url("secure", "/v1/models"))
        assert r.status == 502, (r.status, r.body)
        assert up.requests == []


def test_https_upstream_other_ca_is_502(start_gateway, test_ca, tmp_path):
    """--upstream-ca trusts that CA only: a certificate from a different private CA is refused."""
    _, ca_path = test_ca
    gw = start_gateway(upstream_ca=str(ca_path))
    other = UpstreamCA("Some other CA")
    with StandIn("secure", ssl_context=other.server_context(tmp_path, ["localhost"], ["127.0.0.1"],
                                                             ["http/1.1"])) as up:
        tok = _setup_tls_upstream(gw, up)
        r = gw.curl("-H", f"Authorization: Bearer {tok}", gw.url("secure", "/v1/models"))
        assert r.status == 502, (r.status, r.body)
        assert up.requests == []


def test_http2_over_tls12(env):
    r = env.gw.curl("-v", "--http2", "--tlsv1.2", "--tls-max", "1.2", *env.auth(), env.gw.url("echo", "/h2-12"))
    assert r.status == 200, (r.body, r.stderr[-3000:])
    assert "SSL connection using TLSv1.2" in r.stderr and "< HTTP/2 200" in r.stderr, r.stderr[-3000:]
    assert [q.path for q in env.up.requests] == ["/h2-12"]


def test_non_public_service_same_404_as_unknown(env):
    env.gw.apply_text(service("hidden", env.up.url).replace("isPublic: true", "isPublic: false"))
    hidden = env.gw.curl(*env.auth(), env.gw.url("hidden", "/x"))
    unknown = env.gw.curl(*env.auth(), env.gw.url("unknown-svc", "/x"))
    assert hidden.status == unknown.status == 404, (hidden.body, unknown.body)
    strip = lambda b: {k: v for k, v in b["error"].items() if k != "request_id"}
    assert strip(hidden.json()) == strip(unknown.json())
    assert env.up.requests == []
