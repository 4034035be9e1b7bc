"""Sign-in refusals, each through the real gateway and a real OpenID provider: a broken or
replayed callback, ID tokens with the wrong issuer, audience, expiry, nonce or key (the
provider's tamper mode), people the gateway must not let in, return addresses off the domain,
and cookies that are forged, stale or signed out.
"""

from __future__ import annotations

import json
import secrets
import time
from urllib.parse import quote, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytest.register_assert_rewrite("oidc")  # before the import, so its asserts explain themselves
from oidc import (ACCOUNTS, CLIENT_ID, SESSION_COOKIE, Browser, Walk,
                  cookie_attrs, make_jwk, mint, query_of, with_query)

from test_attacks_identity import b64, forgeries, unb64

pytest_plugins = ["oidc"]  # fixtures idp_factory, signin_env


PEOPLE = {a["id"] for a in ACCOUNTS}


def stop_at_callback(env, b: Browser, login: str = "alice", url: str | None = None) -> Walk:
    """Walk to the provider and back, stopping before the gateway's /callback is opened."""
    callback = env.gw.url(None, "/callback")
    walk = b.walk(url or env.url("/private"), login, stop_before=lambda u: u.startswith(callback))
    assert walk.pending, walk.hops
    return walk


def flow_cookies(b: Browser) -> dict[str, str]:
    return {c.name: c.value for c in b.cookies.jar if c.name.startswith("postern_signin_")}


def assert_refused(env, hop, statuses=(400, 403), says: tuple[str, ...] = ()) -> None:
    """An HTML failure page, no session cookie, no Session, nothing reached the Service."""
    assert hop.status in statuses, (hop, hop.text[:800])
    assert "html" in hop.response.headers.get("content-type", ""), hop.response.headers
    for word in says:
        assert word.lower() in hop.text.lower(), (word, hop.text[:2000])
    for sc in hop.set_cookies:
        name, value, _ = cookie_attrs(sc)
        assert not (name == SESSION_COOKIE and value), sc
    assert [s for s in env.sessions() if s.get("user") in PEOPLE] == [], env.sessions()
    assert env.svc.requests == []


# ------------------------------------------------------------------ the callback itself
@pytest.mark.parametrize("how", ["wrong", "missing", "empty"])
def test_callback_with_a_bad_state_is_refused(signin_env, how):
    env = signin_env
    with env.browser() as b:
        walk = stop_at_callback(env, b)
        state = query_of(walk.pending)["state"]
        bad = {"wrong": secrets.token_urlsafe(len(state)), "missing": None, "empty": ""}[how]
        assert_refused(env, b.get(with_query(walk.pending, state=bad)))


def test_callback_without_the_flow_cookie_is_refused(signin_env):
    """The state came from another browser: the flow cookie binds it to the one that started."""
    env = signin_env
    with env.browser() as victim, env.browser() as attacker:
        walk = stop_at_callback(env, victim)
        assert flow_cookies(victim), list(victim.cookies.jar)
        assert_refused(env, attacker.get(walk.pending))
        assert attacker.cookie(SESSION_COOKIE) is None
        # The flow cookie alone is not enough either when it belongs to another state.
        with env.browser() as other:
            other_walk = stop_at_callback(env, other)
            for name, value in flow_cookies(other).items():
                attacker.client.cookies.set(name, value, domain=env.gw.domain, path="/")
            assert_refused(env, attacker.get(walk.pending))
            del other_walk


def test_replayed_code_is_refused(signin_env):
    env = signin_env
    with env.browser() as b:
        walk = stop_at_callback(env, b, url=env.url("/once"))
        saved = flow_cookies(b)
        done = b.walk(walk.pending)
        assert done.final.status == 200 and done.final.url == env.url("/once"), done.hops
        assert len(env.sessions("alice")) == 1
        requests = len(env.svc.requests)
    with env.browser() as thief:
        # The same callback URL with the same flow cookie, in a browser without a session.
        for name, value in saved.items():
            thief.client.cookies.set(name, value, domain=env.gw.domain, path="/")
        hop = thief.get(walk.pending)
        assert hop.status >= 400, (hop, hop.text[:500])
        assert thief.cookie(SESSION_COOKIE) is None
    assert len(env.sessions("alice")) == 1
    assert len(env.svc.requests) == requests


# ------------------------------------------------------------------ the ID token
def _tampered(env, b: Browser, **tamper) -> None:
    walk = stop_at_callback(env, b)
    env.idp.tamper(**tamper)
    before = env.idp.token_requests()
    hop = b.get(walk.pending)
    assert env.idp.token_requests() == before + 1  # the gateway did redeem the code
    assert_refused(env, hop)


@pytest.mark.parametrize("claims,drop", [
    ({"nonce": "not-the-nonce"}, []),
    ({}, ["nonce"]),
    ({"aud": "someone-else"}, []),
    ({"aud": ["someone-else", "another"]}, []),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, []),
    ({"iss": "http://127.0.0.1:9"}, []),
    ({"email_verified": False}, []),
], ids=["wrong-nonce", "no-nonce", "other-audience", "other-audiences", "expired", "other-issuer",
        "email-unverified"])
def test_bad_id_token_is_refused(signin_env, claims, drop):
    env = signin_env
    with env.browser() as b:
        _tampered(env, b, claims=claims, drop=drop)


def _nonce_of(env, walk: Walk) -> str:
    auth = walk.first(lambda h: h.url.startswith(env.idp.discovery["authorization_endpoint"]))
    return query_of(auth.url)["nonce"]


def _claims(env, nonce: str, **over) -> dict:
    now = int(time.time())
    return dict({"iss": env.idp.issuer, "sub": "alice", "aud": CLIENT_ID, "email": "alice@corp.example",
                 "email_verified": True, "iat": now, "exp": now + 300, "nonce": nonce}, **over)


def test_minted_token_with_the_providers_key_is_accepted(signin_env):
    """The control for the cases below: a token the test mints with the provider's key and the
    flow's nonce is accepted, so each refusal below is for the one thing changed."""
    env = signin_env
    with env.browser() as b:
        walk = stop_at_callback(env, b, url=env.url("/minted"))
        env.idp.tamper(id_token=mint(env.idp.jwk, _claims(env, _nonce_of(env, walk))))
        done = b.walk(walk.pending)
        assert done.final.status == 200 and done.final.url == env.url("/minted"), done.hops
    assert len(env.sessions("alice")) == 1


@pytest.mark.parametrize("case", ["other-provider", "other-key-same-issuer", "same-kid-other-key",
                                  "no-signature"])
def test_id_token_from_another_provider_or_key_is_refused(signin_env, idp_factory, case):
    env = signin_env
    other = idp_factory([{"client_id": CLIENT_ID, "client_secret": env.client_secret,
                          "redirect_uris": [env.gw.url(None, "/callback")]}], [dict(env.idp.accounts[0])],
                        name="other")
    with env.browser() as b:
        walk = stop_at_callback(env, b)
        claims = _claims(env, _nonce_of(env, walk))
        if case == "other-provider":
            token = mint(other.jwk, dict(claims, iss=other.issuer))
        elif case == "other-key-same-issuer":
            token = mint(other.jwk, claims)
        elif case == "same-kid-other-key":
            token = mint(make_jwk(env.idp.jwk["kid"]), claims)
        else:
            head, body, _ = mint(env.idp.jwk, claims).split(".")
            token = f"{head}.{body}."
        env.idp.tamper(id_token=token)
        assert_refused(env, b.get(walk.pending))


# ------------------------------------------------------------------ who is signing in
def test_unknown_email_gets_a_page_naming_it_and_no_session(signin_env):
    env = signin_env
    with env.browser() as b:
        walk = env.sign_in(b, "bob", env.url("/x"))
        assert_refused(env, walk.final, (403,), says=("bob@corp.example", "admin"))
        assert b.cookie(SESSION_COOKIE) is None
    line = env.gw.wait_access(lambda e: "bob@corp.example" in json.dumps(e)
                              or (e.get("decision") == "DENY" and str(e.get("path", "")).startswith("/callback")))
    assert line.get("decision") == "DENY", line


@pytest.mark.parametrize("login", ["carol", "erin"], ids=["email-verified-false", "email-verified-missing"])
def test_unverified_email_is_refused(signin_env, login):
    env = signin_env
    with env.browser() as b:
        walk = env.sign_in(b, login, env.url("/x"))
        assert_refused(env, walk.final, (400, 403))
        assert b.cookie(SESSION_COOKIE) is None


def test_disabled_user_is_refused(signin_env):
    env = signin_env
    with env.browser() as b:
        walk = env.sign_in(b, "dave", env.url("/x"))
        assert_refused(env, walk.final, (403,))
        assert b.cookie(SESSION_COOKIE) is None


# ------------------------------------------------------------------ return addresses
def _bad_return_urls(env) -> list[str]:
    d, p = env.gw.domain, env.gw.port
    return [
        "https://evil.com/",
        f"https://evil.com\\@{d}:{p}/",
        f"https://evil.com\\@svc.{d}:{p}/",
        "//evil.com/",
        f"//evil.com/{d}",
        "/\\evil.com/",
        f"https://{d}.evil.com/",
        f"https://svc.{d}.evil.com:{p}/",
        f"https://evil{d}:{p}/",
        f"https://{d}:{p}@evil.com/",
        f"https://evil.com#@{d}:{p}/",
        f"https://evil.com?@{d}:{p}/",
        "javascript:alert(document.cookie)",
        f"javascript://{d}/%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        f"http://svc.{d}:{p}/",
        f"ftp://svc.{d}:{p}/",
        "https:evil.com",
        "https:/evil.com",
        "https://evil.com:443@evil.com/",
        "https://127.0.0.1/",
    ]


def test_login_refuses_return_urls_off_the_domain(signin_env):
    env = signin_env
    with env.browser() as b:
        for rd in _bad_return_urls(env):
            hop = b.get(f"{env.origin}/login?rd={quote(rd, safe='')}")
            loc = hop.location or ""
            assert hop.status == 400, (rd, hop, loc)
            assert "evil" not in loc and not loc.startswith(env.idp.issuer), (rd, loc)
        assert env.idp.token_requests() == 0
        # A line break in rd never becomes a header of the answer.
        hop = b.get(f"{env.origin}/login?rd=" + quote(env.url("/x") + "\r\nSet-Cookie: injected=1", safe=""))
        assert hop.status in (302, 303, 400), hop
        assert not any("injected" in sc for sc in hop.set_cookies), hop.set_cookies
        assert "\n" not in (hop.response.headers.get("location") or "")


def test_valid_return_urls_are_kept_through_sign_in(signin_env):
    env = signin_env
    targets = [env.url("/deep/path?a=1&b=two%20words", "svc"), env.gw.url(None, "/")]
    with env.browser() as b:
        walk = b.walk(f"{env.origin}/login?rd={quote(targets[0], safe='')}", "alice")
        assert walk.final.url == targets[0] and walk.final.status == 200, walk.hops
        assert walk.final.response.json()["path"] == "/deep/path?a=1&b=two%20words"
    with env.browser() as b:
        walk = b.walk(f"{env.origin}/login", "alice")  # no rd: the portal
        callback = walk.to_path("/callback")
        assert callback.location == targets[1], callback


# ------------------------------------------------------------------ cookies
def test_forged_cookies_are_refused(signin_env):
    env = signin_env
    with env.browser() as b:
        walk = env.sign_in(b, "alice", env.url("/x"))
        real = b.cookie(SESSION_COOKIE)
        assert real and walk.final.status == 200
    requests = len(env.svc.requests)
    key = Ed25519PrivateKey.from_private_bytes((env.gw.data_dir / "signing.key").read_bytes())
    forged = dict(forgeries(real, key), random=secrets.token_urlsafe(40), empty="",
                  truncated=real[:-5])
    for name, value in forged.items():
        assert value != real
        with env.with_cookie(value) as fb:
            hop = fb.get(env.url("/x"))
            assert hop.status in (302, 303), (name, hop)
            assert urlsplit(hop.location).path == "/login", (name, hop.location)
        r = env.api(env.url("/x"), cookie=value)
        assert r.status_code == 401, (name, r.status_code, r.text)
    assert len(env.svc.requests) == requests


def test_stale_cookie_of_a_deleted_session_is_refused(signin_env):
    """A deleted Session's cookie, and one signed with the gateway's own key for a Session that
    does not exist: both are refused (the cookie is only a reference to a server-side Session)."""
    env = signin_env
    with env.browser() as b:
        env.sign_in(b, "alice", env.url("/x"))
        real = b.cookie(SESSION_COOKIE)
        [s] = env.sessions("alice")
        env.gw.ctl("delete", "session", s["name"])
    _, payload_b64, _ = real.split(".")
    claims = json.loads(unb64(payload_b64))
    claims["sid"] = "sess-" + secrets.token_hex(16)
    payload = json.dumps(claims, separators=(",", ":")).encode()
    key = Ed25519PrivateKey.from_private_bytes((env.gw.data_dir / "signing.key").read_bytes())
    other_sid = f"pst.{b64(payload)}.{b64(key.sign(b'postern access token v1' + bytes([0]) + payload))}"
    requests = len(env.svc.requests)
    for value in (real, other_sid):
        with env.with_cookie(value) as sb:
            hop = sb.get(env.url("/x"))
            assert hop.status in (302, 303) and urlsplit(hop.location).path == "/login", hop
        assert env.api(env.url("/x"), cookie=value).status_code == 401
    assert len(env.svc.requests) == requests


def test_cookie_after_logout_is_refused(signin_env):
    env = signin_env
    with env.browser() as b:
        env.sign_in(b, "alice", env.url("/x"))
        real = b.cookie(SESSION_COOKIE)
        assert b.get(env.url("/y")).status == 200
        assert b.request("POST", f"{env.origin}/logout").status == 200
    requests = len(env.svc.requests)
    with env.with_cookie(real) as sb:
        hop = sb.get(env.url("/x"))
        assert hop.status in (302, 303) and urlsplit(hop.location).path == "/login", hop
    assert env.api(env.url("/x"), cookie=real).status_code == 401
    assert len(env.svc.requests) == requests
