"""The OAuth2 client-credentials token endpoint on the bare domain (RFC 6749, RFC 8414)."""

import base64
from urllib.parse import urlsplit

import httpx
import pytest
from authlib.integrations.base_client.errors import OAuthError

from conftest import DOMAIN, chat_body


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_authlib_fetch_token(ai, method):
    tok = ai.gw.fetch_token(ai.client_id, ai.client_secret, method)
    assert tok["token_type"].lower() == "bearer"
    assert isinstance(tok["access_token"], str) and len(tok["access_token"]) >= 16
    assert isinstance(tok["expires_in"], int) and tok["expires_in"] > 0
    # and the token is accepted by a Service
    c = ai.gw.openai("gemini", tok["access_token"])
    assert c.chat.completions.create(**chat_body()).choices[0].message.content == "Hello from gemini!"


def test_token_response_exact_shape(ai):
    with ai.gw.http() as h:
        r = h.post(ai.gw.token_endpoint, data={"grant_type": "client_credentials", "client_id": ai.client_id,
                                               "client_secret": ai.client_secret})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert {"access_token", "token_type", "expires_in"} <= set(body)
    assert "no-store" in r.headers.get("cache-control", "")


def test_each_fetch_gives_a_distinct_token(ai):
    assert ai.token() != ai.token()


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_wrong_secret_is_invalid_client(ai, method):
    with pytest.raises(OAuthError) as e:
        ai.gw.fetch_token(ai.client_id, ai.client_secret + "x", method)
    assert e.value.error == "invalid_client"


def test_wrong_secret_raw_401(ai):
    with ai.gw.http() as h:
        r = h.post(ai.gw.token_endpoint, data={"grant_type": "client_credentials"},
                   auth=(ai.client_id, "definitely-wrong"))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    assert ai.client_secret not in r.text


def test_unknown_client_is_invalid_client(ai):
    with ai.gw.http() as h:
        r = h.post(ai.gw.token_endpoint, data={"grant_type": "client_credentials", "client_id": "no-such-client",
                                               "client_secret": "whatever"})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"


def test_unsupported_grant_type(ai):
    with ai.gw.http() as h:
        r = h.post(ai.gw.token_endpoint, data={"grant_type": "password", "username": "u", "password": "p"},
                   auth=(ai.client_id, ai.client_secret))
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"


def test_missing_grant_type_is_invalid_request(ai):
    with ai.gw.http() as h:
        r = h.post(ai.gw.token_endpoint, data={"client_id": ai.client_id, "client_secret": ai.client_secret})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"


def test_basic_auth_with_urlencoded_credentials(ai):
    # RFC 6749 2.3.1: id and secret are form-urlencoded before base64 (ours need no escaping,
    # so the plain and the encoded forms are the same; this checks the header form itself).
    raw = base64.b64encode(f"{ai.client_id}:{ai.client_secret}".encode()).decode()
    with ai.gw.http() as h:
        r = h.post(ai.gw.token_endpoint, data={"grant_type": "client_credentials"},
                   headers={"Authorization": f"Basic {raw}"})
    assert r.status_code == 200, r.text


def test_token_endpoint_only_on_bare_domain(ai):
    with ai.gw.http() as h:
        r = h.post(ai.gw.url("gemini", "/oauth2/token"),
                   data={"grant_type": "client_credentials", "client_id": ai.client_id,
                         "client_secret": ai.client_secret})
    # routed to the gemini Service (no bearer token) — never a token
    assert r.status_code == 401
    assert "access_token" not in r.text
    assert ai.up["gemini"].requests == []


def test_well_known_metadata(ai):
    with ai.gw.http() as h:
        r = h.get(ai.gw.url(None, "/.well-known/oauth-authorization-server"))
    assert r.status_code == 200
    meta = r.json()
    ep = urlsplit(meta["token_endpoint"])
    assert ep.scheme == "https"
    assert ep.hostname == DOMAIN
    assert ep.path == "/oauth2/token"
    if "grant_types_supported" in meta:
        assert "client_credentials" in meta["grant_types_supported"]
    if "token_endpoint_auth_methods_supported" in meta:
        assert {"client_secret_post", "client_secret_basic"} <= set(meta["token_endpoint_auth_methods_supported"])


def test_access_token_is_not_a_credential_secret(ai):
    tok = ai.token()
    assert ai.client_secret not in tok


def test_client_secret_as_bearer_is_rejected(ai):
    with ai.gw.http() as h:
        r = h.post(ai.gw.url("gemini", "/chat/completions"), json=chat_body(),
                   headers={"Authorization": f"Bearer {ai.client_secret}"})
    assert r.status_code == 401
    assert ai.up["gemini"].requests == []


def test_token_via_curl_basic(ai):
    r = ai.gw.curl("-u", f"{ai.client_id}:{ai.client_secret}", "-d", "grant_type=client_credentials",
                   ai.gw.token_endpoint)
    assert r.status == 200, r.body
    tok = r.json()["access_token"]
    c = ai.gw.curl("-H", f"Authorization: Bearer {tok}", "-H", "Content-Type: application/json",
                   "--data", '{"model":"gemini-2.0-flash","messages":[{"role":"user","content":"hi"}]}',
                   ai.gw.url("gemini", "/chat/completions"))
    assert c.status == 200, c.body
    assert c.json()["choices"][0]["message"]["content"] == "Hello from gemini!"


def test_httpx_client_reuse_after_token(ai):
    tok = ai.token("client_secret_basic")
    with httpx.Client(verify=ai.gw.tls(), timeout=10) as h:
        for _ in range(3):
            r = h.post(ai.gw.url("total-ai", "/chat/completions"), json=chat_body("deepseek-chat"),
                       headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200, r.text
    assert len(ai.up["deepseek"].requests) == 3
