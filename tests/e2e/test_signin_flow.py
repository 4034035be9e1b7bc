"""People signing in through an IdentityProvider, end to end: a scripted browser, the real
gateway and a real OpenID provider (``oidc-provider``). The happy path, the session cookie,
API clients, bearer precedence, sign-out (GET and POST, Session deletion, disabled User) and
what policies see of a browser session.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote, urljoin, urlsplit

import pytest

from conftest import public_service

pytest.register_assert_rewrite("oidc")  # before the import, so its asserts explain themselves
from oidc import (IDP_NAME, SESSION_COOKIE, Browser,
                  account, client, cookie_attrs, human,
                  identity_provider, parse_page, query_of, session_set_cookie)

pytest_plugins = ["oidc"]  # fixtures idp_factory, signin_env


# A workload with no policy of its own: only what a Service allows applies to it.
ROBOT = "kind: User\nmetadata:\n  name: robot\nspec:\n  type: WORKLOAD\n"


def login_redirect(env, hop, target: str) -> None:
    """``hop`` sent the browser to the gateway's /login with ``rd`` = ``target``."""
    assert hop.status in (302, 303, 307), (hop, hop.text[:500])
    loc = urlsplit(hop.location)
    assert f"{loc.scheme}://{loc.netloc}" == env.origin and loc.path == "/login", hop.location
    assert query_of(hop.location).get("rd") == target, hop.location


def signed_in(env, b: Browser, login: str = "alice", path: str = "/") -> str:
    walk = env.sign_in(b, login, env.url(path))
    assert walk.final.status == 200 and walk.final.url == env.url(path), walk.hops
    value = b.cookie(SESSION_COOKIE)
    assert value, walk.hops
    return value


def assert_signed_out(env, b: Browser, cookie: str) -> None:
    """The browser is sent to sign in again, and the old cookie is refused to API clients."""
    before = len(env.svc.requests)
    hop = b.get(env.url("/after"))
    login_redirect(env, hop, env.url("/after"))
    r = env.api(env.url("/after"), cookie=cookie)
    assert r.status_code == 401, r.text
    assert len(env.svc.requests) == before


def test_browser_signs_in_and_lands_on_the_exact_url(signin_env):
    env = signin_env
    target = env.url("/some/path?q=1")
    with env.browser() as b:
        first = b.get(target)
        login_redirect(env, first, target)
        assert env.svc.requests == []

        walk = b.walk(target, "alice")
        # Through the gateway's /login to the provider, its own forms, back to /callback.
        idp_hops = [h for h in walk.hops if h.url.startswith(env.idp.issuer)]
        assert any(h.method == "POST" for h in idp_hops), walk.hops
        auth = walk.first(lambda h: h.url.startswith(env.idp.discovery["authorization_endpoint"]))
        q = query_of(auth.url)
        assert q["response_type"] == "code" and q["code_challenge_method"] == "S256", q
        assert len(q["code_challenge"]) == 43 and q["state"] and q["nonce"], q
        assert q["redirect_uri"] == env.gw.url(None, "/callback")
        assert set(q["scope"].split()) >= {"openid", "email", "profile"}
        callback = walk.to_path("/callback")
        assert callback.status in (302, 303) and callback.location == target, callback

        # The flow cookie: set by /login for this state only, short-lived, cleared at /callback.
        login = walk.to_path("/login")
        flow = [cookie_attrs(sc) for sc in login.set_cookies if sc.startswith("postern_signin_")]
        assert len(flow) == 1, login.set_cookies
        name, _, fattrs = flow[0]
        assert name == "postern_signin_" + q["state"][:12], (name, q["state"])
        assert "secure" in fattrs and "httponly" in fattrs and fattrs.get("samesite", "").lower() == "lax"
        assert 0 < int(fattrs.get("max-age", "0")) <= 600, fattrs
        assert not [c for c in b.cookies.jar if c.name == name], "flow cookie left after /callback"

        final = walk.final
        assert final.url == target and final.status == 200, walk.hops
        assert final.response.json()["path"] == "/some/path?q=1"

        sc = session_set_cookie(walk)
        assert sc, [h.set_cookies for h in walk.hops]
        _, value, attrs = cookie_attrs(sc)
        assert attrs.get("domain", "").lstrip(".").lower() == env.gw.domain, sc
        assert "secure" in attrs and "httponly" in attrs, sc
        assert attrs.get("samesite", "").lower() == "lax", sc
        assert attrs.get("path") == "/", sc

    # The cookie never reaches the Service.
    seen = env.svc.requests[-1]
    assert value not in " ".join(seen.header_values()), seen.headers
    assert SESSION_COOKIE not in (seen.header("cookie") or "")

    [s] = env.sessions("alice")
    assert s["kind"] == "browser", s
    assert s["authentication"]["method"] == "oidc", s
    assert s["authentication"]["identityProvider"] == IDP_NAME, s
    assert s["authentication"]["claims"]["groups"] == ["eng", "staff"], s
    assert "nonce" not in s["authentication"]["claims"]
    env.gw.wait_access(lambda e: e.get("service") == "svc" and e.get("user") == "alice"
                       and e.get("decision") == "ALLOW")


def test_one_sign_in_serves_every_service(signin_env):
    """The cookie is for the whole domain: another Service needs no second sign-in."""
    env = signin_env
    env.gw.apply_text(public_service("wiki", env.svc.url))
    with env.browser() as b:
        env.sign_in(b, "alice", env.url("/"))
        hop = b.get(env.url("/page", "wiki"))
        assert hop.status == 200 and hop.response.json()["path"] == "/page", hop
    assert len(env.sessions("alice")) == 1


def test_email_match_is_case_insensitive(signin_env):
    env = signin_env
    with env.browser() as b:
        walk = env.sign_in(b, "frank", env.url("/f"))
        assert walk.final.status == 200 and walk.final.url == env.url("/f"), walk.hops
    assert len(env.sessions("frank")) == 1


def test_api_clients_still_get_401_json(signin_env):
    env = signin_env
    for accept in (None, "application/json", "*/*"):
        with env.gw.http() as h:
            r = h.get(env.url("/x"), headers={"Accept": accept} if accept else {})
        assert r.status_code == 401, (accept, r.status_code, r.text[:300])
        assert r.headers["www-authenticate"].lower().startswith("bearer"), r.headers
        assert isinstance(r.json().get("error"), dict), r.text
    assert env.svc.requests == []


def test_bearer_token_wins_over_the_cookie(signin_env):
    env = signin_env
    env.gw.apply_text("---\n".join([ROBOT, public_service(
        "only-alice", env.svc.url,
        [{"effect": "ALLOW", "condition": {"match": 'ctx.user.metadata.name == "alice"'}}])]))
    app_token = env.gw.token(*env.gw.create_oauth2("robot"))
    with env.browser() as b:
        cookie = signed_in(env, b)
        assert env.api(env.url("/", "only-alice"), cookie=cookie).status_code == 200
        # robot's bearer is used (and denied here), not alice's cookie.
        r = env.api(env.url("/", "only-alice"), cookie=cookie, bearer=app_token)
        assert r.status_code == 403, r.text
        # A bad bearer is refused, the cookie is no fallback.
        r = env.api(env.url("/", "only-alice"), cookie=cookie, bearer="not-a-token")
        assert r.status_code == 401, r.text
        # And the other way round: the bearer's user is the one the Service answers.
        hop = b.get(env.url("/", "svc"), headers={"Authorization": f"Bearer {app_token}"})
        assert hop.status == 200
    env.gw.wait_access(lambda e: e.get("service") == "svc" and e.get("user") == "robot")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_logout_ends_the_session(signin_env, method):
    env = signin_env
    with env.browser() as b:
        cookie = signed_in(env, b)
        assert len(env.sessions("alice")) == 1
        hop = b.request(method, env.gw.url(None, "/logout"))
        assert hop.status == 200, (hop, hop.text[:500])
        assert "html" in hop.response.headers.get("content-type", "")
        page = hop.text
        cleared = [cookie_attrs(sc) for sc in hop.set_cookies if cookie_attrs(sc)[0] == SESSION_COOKIE]
        assert cleared, hop.set_cookies
        _, value, attrs = cleared[-1]
        assert value == "" or attrs.get("max-age") == "0", cleared
        # Cleared for the same Domain it was set for, or a browser keeps the old one.
        assert attrs.get("domain", "").lstrip(".").lower() == env.gw.domain, cleared
        assert env.sessions("alice") == []
        assert b.cookie(SESSION_COOKIE) in (None, "")
        assert_signed_out(env, b, cookie)
        # The old cookie put back by hand does not revive it.
        with env.with_cookie(cookie) as again:
            login_redirect(env, again.get(env.url("/x")), env.url("/x"))
        # The signed-out page links to signing in again.
        links = [urljoin(hop.url, link) for link in parse_page(page).links]
        assert any(urlsplit(link).path == "/login" and urlsplit(link).netloc == urlsplit(env.origin).netloc
                   for link in links), page


def test_deleting_the_session_signs_the_browser_out(signin_env):
    env = signin_env
    with env.browser() as b:
        cookie = signed_in(env, b)
        [s] = env.sessions("alice")
        env.gw.ctl("delete", "session", s["name"])
        assert_signed_out(env, b, cookie)


def test_disabling_the_user_signs_the_browser_out(signin_env):
    env = signin_env
    with env.browser() as b:
        cookie = signed_in(env, b)
        sessions = env.sessions("alice")
        env.gw.apply_text(human("alice", "alice@corp.example", disabled=True))
        before = len(env.svc.requests)
        hop = b.get(env.url("/after"))
        assert hop.status in (302, 303, 401, 403), hop
        assert env.api(env.url("/after"), cookie=cookie).status_code in (401, 403)
        assert len(env.svc.requests) == before
    # Signing in again is refused while the User is disabled.
    with env.browser() as b:
        walk = b.walk(f"{env.origin}/login?rd={quote(env.url('/again'), safe='')}", "alice")
        assert walk.to_path("/callback").status == 403, walk.hops
        assert walk.final.status == 403 and b.cookie(SESSION_COOKIE) is None, walk.hops
    assert {x["name"] for x in env.sessions("alice")} <= {x["name"] for x in sessions}  # no new one
    assert len(env.svc.requests) == before


def test_changing_the_users_email_signs_the_person_out(signin_env):
    """The email links a User to a person: when it changes, the Sessions the old person signed
    in end; a change of case is the same address, and the User's credentials keep working."""
    env = signin_env
    token = env.gw.token(*env.gw.create_oauth2("alice"))

    def signed_in_sessions() -> list[dict]:
        return [s for s in env.sessions("alice") if s.get("authentication", {}).get("identityProvider")]

    with env.browser() as b:
        cookie = signed_in(env, b)
        assert len(signed_in_sessions()) == 1
        env.gw.apply_text(human("alice", "ALICE@corp.example"))
        assert env.api(env.url("/same"), cookie=cookie).status_code == 200
        env.gw.apply_text(human("alice", "alice.new@corp.example"))
        assert_signed_out(env, b, cookie)
    assert signed_in_sessions() == []
    assert env.api(env.url("/credential"), bearer=token).status_code == 200


def test_policies_read_the_browser_session(signin_env):
    env = signin_env
    cond = ('ctx.session.spec.kind == "browser" && ctx.session.spec.authentication.method == "oidc"'
            f' && ctx.session.spec.authentication.identityProvider == "{IDP_NAME}"'
            ' && "eng" in ctx.session.spec.authentication.claims.groups')
    env.gw.apply_text("---\n".join([
        ROBOT,
        public_service("eng-web", env.svc.url, [{"effect": "ALLOW", "condition": {"match": cond}}]),
        public_service("agents-only", env.svc.url,
                       [{"effect": "ALLOW", "condition": {"match": 'ctx.session.spec.kind == "agent"'}}]),
    ]))
    app_token = env.gw.token(*env.gw.create_oauth2("robot"))
    with env.browser() as alice, env.browser() as frank:
        a = signed_in(env, alice, "alice")
        f = signed_in(env, frank, "frank")
        assert env.api(env.url("/p", "eng-web"), cookie=a).status_code == 200
        assert env.api(env.url("/p", "eng-web"), cookie=f).status_code == 403  # groups: [sales]
        assert env.api(env.url("/p", "eng-web"), bearer=app_token).status_code == 403  # workload
        assert env.api(env.url("/p", "agents-only"), cookie=a).status_code == 403
        hop = alice.get(env.url("/p", "eng-web"))
        assert hop.status == 200 and json.loads(hop.text)["path"] == "/p"
    deny = env.gw.wait_access(lambda e: e.get("service") == "eng-web" and e.get("user") == "frank")
    assert deny["decision"] == "DENY"


def test_session_expires_with_the_login_ttl(signin_env):
    """The cookie's Max-Age and the Session's expiry agree (within a minute)."""
    env = signin_env
    with env.browser() as b:
        walk = env.sign_in(b, "alice", env.url("/"))
        _, _, attrs = cookie_attrs(session_set_cookie(walk))
        [s] = env.sessions("alice")
    max_age = int(attrs["max-age"])
    assert max_age > 60, attrs
    from datetime import datetime
    expires = datetime.fromisoformat(s["expiresAt"].replace("Z", "+00:00")).timestamp()
    assert abs((time.time() + max_age) - expires) < 60, (attrs, s)


def test_identity_provider_shows_its_redirect_uri(signin_env):
    env = signin_env
    out = env.gw.ctl("get", "identityproviders", IDP_NAME).stdout
    assert env.gw.url(None, "/callback") in out, out
    out = env.gw.ctl("get", "identityproviders", IDP_NAME, "-o", "yaml").stdout
    assert env.client_secret not in out


def test_no_sign_in_secret_is_logged(signin_env):
    """The client secret, the code, the ID token and the session cookie appear neither in the
    gateway's stderr nor in the access log."""
    env = signin_env
    with env.browser() as b:
        walk = env.sign_in(b, "alice", env.url("/x"))
        cookie = b.cookie(SESSION_COOKIE)
        assert walk.final.status == 200 and cookie
        code = query_of(walk.to_path("/callback").url)["code"]
        b.get(f"{env.origin}/logout")
    id_token = env.idp.last()["idToken"]
    time.sleep(0.5)
    logs = {"stderr": env.gw.stderr(), "access log": env.gw.access_log.read_text()}
    for where, text in logs.items():
        for what, secret in (("client secret", env.client_secret), ("code", code),
                             ("ID token", id_token), ("session cookie", cookie),
                             ("ID token signature", id_token.split(".")[2])):
            assert secret not in text, f"{what} in {where}"


def _partner(env, idp_factory):
    partner = idp_factory([client("postern-partner", "partner-secret-1", env.gw.url(None, "/callback"))],
                          [account("alice-p", "alice@corp.example", groups=["partners"])], name="partner")
    env.gw.create_secret("partner-secret", "partner-secret-1")
    env.gw.apply_text(identity_provider("partner", partner.issuer, client_id="postern-partner",
                                        secret="partner-secret", display_name="Partner SSO"))
    return partner


def test_several_providers_get_a_choice_page(signin_env, idp_factory):
    env = signin_env
    _partner(env, idp_factory)
    target = env.url("/chosen")
    with env.browser() as b:
        hop = b.get(f"{env.origin}/login?rd={quote(target, safe='')}")
        assert hop.status == 200, hop
        assert "Partner SSO" in hop.text and IDP_NAME in hop.text, hop.text[:2000]
        choices = {query_of(urljoin(hop.url, link)).get("idp"): query_of(urljoin(hop.url, link)).get("rd")
                   for link in parse_page(hop.text).links if urlsplit(link).path.endswith("/login")}
        assert choices == {"partner": target, IDP_NAME: target}, (choices, hop.text[:2000])
        walk = b.walk(hop.url, "alice-p", idp="partner")
        assert walk.final.url == target and walk.final.status == 200, walk.hops


def test_the_session_records_which_provider_signed_in(signin_env, idp_factory):
    env = signin_env
    partner = _partner(env, idp_factory)
    target = env.url("/chosen")
    with env.browser() as b:
        walk = b.walk(f"{env.origin}/login?rd={quote(target, safe='')}&idp=partner", "alice-p")
        assert walk.final.url == target and walk.final.status == 200, walk.hops
        assert any(h.url.startswith(partner.issuer) for h in walk.hops)
        assert not any(h.url.startswith(env.idp.issuer) for h in walk.hops)
    [s] = env.sessions("alice")
    assert s["authentication"]["identityProvider"] == "partner", s
    assert s["authentication"]["claims"]["groups"] == ["partners"], s
