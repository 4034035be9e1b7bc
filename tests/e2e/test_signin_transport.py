"""Sign-in over every protocol a browser speaks, and an identity provider behind a private CA.

* The whole flow (the redirect to sign in, the provider, the callback, the Service's answer)
  and a refusal, once over HTTP/1.1 and once over HTTP/2 to the gateway.
* A provider served over https with a certificate from a CA of the test's own: trusted only
  when ``posternd serve --idp-ca`` names that CA; without it the sign-in page says the
  provider cannot be used and no Session is made; a file that is not a certificate stops
  ``serve`` with a message naming the flag.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytest.register_assert_rewrite("oidc")  # before the import, so its asserts explain themselves
from oidc import (  # noqa: E402
    ACCOUNTS, CLIENT_ID, IDP_NAME, SECRET_NAME, SESSION_COOKIE, USERS, Browser, IdpTls, client,
    identity_provider,
)

pytest_plugins = ["oidc"]  # fixtures idp_factory, signin_env


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_sign_in_and_a_refusal_over_both_protocols(signin_env, http2):
    env = signin_env
    want = "HTTP/2" if http2 else "HTTP/1.1"
    target = env.url("/proto?x=1")
    with env.browser(http2=http2) as b:
        walk = env.sign_in(b, "alice", target)
        assert walk.final.status == 200 and walk.final.url == target, walk.hops
        gateway_hops = [h for h in walk.hops if h.url.startswith("https://")]
        assert gateway_hops and all(h.response.http_version == want for h in gateway_hops), \
            [(h.url, h.response.http_version) for h in gateway_hops]
        assert b.cookie(SESSION_COOKIE)
    with env.browser(http2=http2) as b:
        walk = env.sign_in(b, "bob", env.url("/nobody"))  # bob has no User
        callback = walk.to_path("/callback")
        assert callback.status == 403 and callback.response.http_version == want, walk.hops
        assert "bob@corp.example" in callback.response.text
        assert b.cookie(SESSION_COOKIE) is None
    assert len(env.sessions("alice")) == 1 and env.sessions("bob") == []


def _private_ca(dir) -> IdpTls:
    """A CA and a certificate for 127.0.0.1 signed by it, as PEM files in ``dir``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corp private CA (test)")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = IdpTls(cert=str(dir / "idp.pem"), key=str(dir / "idp.key"), ca=str(dir / "ca.pem"))
    (dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (dir / "idp.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (dir / "idp.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return paths


def _with_private_idp(gw, idp_factory, tls: IdpTls):
    from conftest import public_service
    from standin import StandIn

    secret = "idp-client-private-ca"
    idp = idp_factory([client(CLIENT_ID, secret, gw.url(None, "/callback"))], list(ACCOUNTS),
                      name="private", tls=tls)
    assert idp.issuer.startswith("https://127.0.0.1:"), idp.issuer
    gw.create_secret(SECRET_NAME, secret)
    svc = StandIn("svc").__enter__()
    gw.apply_text("---\n".join([identity_provider(IDP_NAME, idp.issuer), USERS,
                                public_service("svc", svc.url)]), "signin.yaml")
    return idp, svc


def test_a_provider_behind_a_private_ca_needs_idp_ca(tmp_path, start_gateway, idp_factory):
    tls = _private_ca(tmp_path)
    trusting = start_gateway(extra_args=["--idp-ca", tls.ca])
    idp, svc = _with_private_idp(trusting, idp_factory, tls)
    try:
        target = trusting.url("svc", "/through-private-ca")
        with Browser(trusting.ca, extra_ca=tls.ca) as b:
            walk = b.walk(target, "alice")
            assert walk.final.status == 200 and walk.final.url == target, walk.hops
            assert any(h.url.startswith(idp.issuer) for h in walk.hops), walk.hops
        assert [s["user"] for s in trusting.get("sessions") if s.get("kind") == "browser"] == ["alice"]

        # The same provider for a gateway that was not told about the CA.
        plain = start_gateway()
        plain.create_secret(SECRET_NAME, "idp-client-private-ca")
        plain.apply_text(identity_provider(IDP_NAME, idp.issuer), "idp.yaml")
        with Browser(plain.ca, extra_ca=tls.ca) as b:
            hop = b.get(plain.url(None, "/login?rd=" + quote(plain.url("svc", "/"), safe="")))
            assert hop.status == 502, (hop, hop.text[:500])
            assert "cannot use identity provider" in hop.text, hop.text[:800]
            assert not any(c.name == SESSION_COOKIE for c in b.cookies.jar)
        assert [s for s in plain.get("sessions") if s.get("kind") == "browser"] == []
    finally:
        svc.__exit__(None, None, None)


def test_idp_ca_that_is_not_a_certificate_stops_serve(tmp_path, gateway):
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("this is not a certificate\n")
    gateway.stop()
    args = [a for a in gateway.serve_args()] + ["--idp-ca", str(bogus)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30, env=gateway.env)
    assert r.returncode != 0
    assert "--idp-ca" in r.stderr and str(bogus) in r.stderr, r.stderr


def test_the_control_api_ignores_the_browser_cookie(signin_env):
    """A signed-in admin's browser cookie does not open the control API: another site could
    otherwise drive it through the browser."""
    env = signin_env
    env.gw.apply_text("kind: User\nmetadata: {name: alice}\n"
                      "spec: {type: HUMAN, email: alice@corp.example, groups: [admins]}\n")
    with env.browser() as b:
        walk = env.sign_in(b, "alice", env.url("/"))
        assert walk.final.status == 200, walk.hops
        cookie = b.cookie(SESSION_COOKIE)
        assert cookie
        api = env.gw.url(None, "/api/v1/sessions")
        assert b.get(api).status == 401
        assert env.api(api, cookie=cookie).status_code == 401
        # The same token as a bearer is an admin's: the refusal is about the cookie.
        assert env.api(api, bearer=cookie).status_code == 200
