"""The test OpenID provider alone (no gateway): the harness the sign-in tests stand on.

A relying party written here with authlib runs the authorization code flow with PKCE against
``oidc-provider`` through the scripted ``Browser``, and checks the ID token the way the gateway
must (signature from the JWKS, iss, aud, nonce, exp). Then the provider's own refusals (code
replay, missing verifier) and the harness' tamper mode and second issuer.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlencode

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

pytest.register_assert_rewrite("oidc")  # before the import, so its asserts explain themselves
from oidc import Browser, account, client, decode_unverified, pkce_pair, query_of

pytest_plugins = ["oidc"]  # fixtures idp_factory, signin_env

REDIRECT = "https://rp.example.test/callback"  # never opened: the walk stops before it
CLIENT = client("postern", "s3cret-" + secrets.token_hex(8), REDIRECT)
ALICE = account("alice", "alice@corp.example", groups=["eng", "admins"], name="Alice Doe")


def authorize(idp, browser: Browser, login: str = "alice", client_id: str = "postern", **extra):
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
              "scope": "openid email profile", "state": state, "nonce": nonce,
              "code_challenge": challenge, "code_challenge_method": "S256", **extra}
    url = idp.discovery["authorization_endpoint"] + "?" + urlencode(params)
    walk = browser.walk(url, login, stop_before=lambda u: u.startswith(REDIRECT))
    assert walk.pending, walk.hops
    q = query_of(walk.pending)
    return walk, q, verifier, state, nonce


def token(idp, code: str, verifier: str | None, secret: str = CLIENT["client_secret"]) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        data["code_verifier"] = verifier
    return httpx.post(idp.discovery["token_endpoint"], data=data, auth=("postern", secret), timeout=10)


def verify(idp, id_token: str, nonce: str) -> dict:
    jwks = httpx.get(idp.discovery["jwks_uri"], timeout=5).json()
    tok = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    jwt.JWTClaimsRegistry(
        now=int(time.time()),
        iss={"essential": True, "value": idp.issuer},
        aud={"essential": True, "value": "postern"},
        nonce={"essential": True, "value": nonce},
        exp={"essential": True},
        email_verified={"essential": True, "value": True},
    ).validate(tok.claims)
    return dict(tok.claims)


def test_code_flow_with_pkce(idp_factory):
    idp = idp_factory([CLIENT], [ALICE])
    d = idp.discovery
    assert d["code_challenge_methods_supported"] == ["S256"]
    with Browser(None) as b:
        walk, q, verifier, state, nonce = authorize(idp, b)
        # The login form and the consent form were both shown and submitted.
        posts = [h for h in walk.hops if h.method == "POST"]
        assert len(posts) == 2, walk.hops
        assert q["state"] == state and q["code"], q
        assert q["iss"] == idp.issuer
        r = token(idp, q["code"], verifier)
        assert r.status_code == 200, r.text
        claims = verify(idp, r.json()["id_token"], nonce)
        assert claims["sub"] == "alice"
        assert claims["email"] == "alice@corp.example" and claims["email_verified"] is True
        assert claims["groups"] == ["eng", "admins"] and claims["name"] == "Alice Doe"
        assert idp.last()["claims"]["nonce"] == nonce

        # The provider's session: a second authorization needs neither form.
        walk2, q2, verifier2, _, nonce2 = authorize(idp, b)
        assert all(h.method == "GET" for h in walk2.hops), walk2.hops
        assert verify(idp, token(idp, q2["code"], verifier2).json()["id_token"], nonce2)["sub"] == "alice"


def test_provider_refuses_replay_and_missing_pkce(idp_factory):
    idp = idp_factory([CLIENT], [ALICE])
    with Browser(None) as b:
        _, q, verifier, _, _ = authorize(idp, b)
        assert token(idp, q["code"], verifier).status_code == 200
        replay = token(idp, q["code"], verifier)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant", replay.text

        _, q, verifier, _, _ = authorize(idp, b)
        missing = token(idp, q["code"], None)
        assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant", missing.text

        _, q, verifier, _, _ = authorize(idp, b)
        assert token(idp, q["code"], verifier, secret="wrong").status_code == 401

        # An authorization request without a PKCE challenge is refused by the provider.
        url = d_auth = idp.discovery["authorization_endpoint"] + "?" + urlencode({
            "response_type": "code", "client_id": "postern", "redirect_uri": REDIRECT,
            "scope": "openid", "state": "s", "nonce": "n"})
        walk = b.walk(url, "alice", stop_before=lambda u: u.startswith(REDIRECT))
        assert d_auth and walk.pending and query_of(walk.pending).get("error") == "invalid_request", walk.pending


@pytest.mark.parametrize("tamper", [
    {"claims": {"iss": "http://127.0.0.1:1"}},
    {"claims": {"aud": "someone-else"}},
    {"claims": {"exp": 1_000_000_000}},
    {"claims": {"nonce": "not-the-nonce"}},
    {"claims": {"email_verified": False}},
    {"drop": ["nonce"]},
])
def test_tamper_mode_resigns_with_the_provider_key(idp_factory, tamper):
    idp = idp_factory([CLIENT], [ALICE])
    with Browser(None) as b:
        _, q, verifier, _, nonce = authorize(idp, b)
        idp.tamper(**tamper)
        r = token(idp, q["code"], verifier)
        assert r.status_code == 200, r.text
        got = r.json()["id_token"]
        original = idp.last()
        assert got != original["idToken"]
        claims = decode_unverified(got)
        for k, v in tamper.get("claims", {}).items():
            assert claims[k] == v
        for k in tamper.get("drop", []):
            assert k not in claims
        # Still a valid signature by the provider's published key: only the claims are wrong.
        jwks = httpx.get(idp.discovery["jwks_uri"], timeout=5).json()
        jwt.decode(got, KeySet.import_key_set(jwks), algorithms=["RS256"])
        with pytest.raises(JoseError):
            verify(idp, got, nonce)
        # The tamper applies to one response only.
        _, q, verifier, _, nonce = authorize(idp, b)
        assert verify(idp, token(idp, q["code"], verifier).json()["id_token"], nonce)["sub"] == "alice"


def test_replacement_token_and_second_issuer(idp_factory):
    idp = idp_factory([CLIENT], [ALICE])
    other = idp_factory([CLIENT], [ALICE])
    assert other.issuer != idp.issuer and other.jwk["kid"] != idp.jwk["kid"]
    with Browser(None) as b:
        walk, q, verifier, _, nonce = authorize(other, b)
        # Replace with a token minted by the test with the first provider's key.
        minted = idp.mint(sub="alice", aud="postern", nonce=nonce, email="alice@corp.example",
                          email_verified=True)
        other.tamper(id_token=minted)
        got = token(other, q["code"], verifier).json()["id_token"]
        assert got == minted
        assert verify(idp, got, nonce)["email"] == "alice@corp.example"
        with pytest.raises((JoseError, ValueError)):
            verify(other, got, nonce)  # signed with a key `other` does not publish


def test_control_api_needs_the_token(idp_factory):
    idp = idp_factory([CLIENT], [ALICE])
    r = httpx.post(idp.issuer + "/__control/tamper", content='{"idToken":"x"}', timeout=5)
    assert r.status_code == 403
    r = httpx.post(idp.issuer + "/__control/tamper", content='{"idToken":"x"}', timeout=5,
                   headers={"x-control-token": "guess"})
    assert r.status_code == 403
