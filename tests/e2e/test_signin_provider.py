"""The gateway and the OpenID provider over time: a provider that rotates its signing key (the
gateway fetches the new JWKS on the unknown ``kid``), a provider that is down when the browser
comes back, and an issuer on plain http that is not on loopback.
"""

from __future__ import annotations

import time

import pytest

pytest.register_assert_rewrite("oidc")  # before the import, so its asserts explain themselves
from oidc import SESSION_COOKIE, identity_provider, make_jwk, query_of  # noqa: E402

pytest_plugins = ["oidc"]  # fixtures idp_factory, signin_env


def test_key_rotation_is_picked_up_on_the_unknown_kid(signin_env):
    env = signin_env
    applied = time.monotonic()
    old_kid = env.idp.jwk["kid"]
    env.idp.restart(make_jwk("rotated-" + old_kid))
    # The gateway refetches at most once per 10 s; be past that since the first fetch.
    time.sleep(max(0.0, 10.5 - (time.monotonic() - applied)))
    with env.browser() as b:
        walk = env.sign_in(b, "alice", env.url("/after-rotation"))
        assert walk.final.status == 200 and walk.final.url == env.url("/after-rotation"), walk.hops
        assert b.cookie(SESSION_COOKIE)
    assert env.idp.last()["idToken"].count(".") == 2
    assert len(env.sessions("alice")) == 1


def test_provider_down_at_the_callback(signin_env):
    env = signin_env
    callback = env.gw.url(None, "/callback")
    with env.browser() as b:
        walk = b.walk(env.url("/x"), "alice", stop_before=lambda u: u.startswith(callback))
        assert walk.pending and query_of(walk.pending).get("code")
        env.idp.stop()
        t = time.monotonic()
        hop = b.get(walk.pending)
        assert time.monotonic() - t < 20
        assert hop.status >= 400, hop
        assert "html" in hop.response.headers.get("content-type", ""), hop.response.headers
        assert b.cookie(SESSION_COOKIE) is None
    assert env.sessions("alice") == []
    assert env.svc.requests == []
    # The gateway still serves, and API clients still get their 401.
    assert env.api(env.url("/x")).status_code == 401


@pytest.mark.parametrize("issuer", ["http://idp.invalid", "http://idp.invalid:8080/realms/corp", "ftp://127.0.0.1/"])
def test_plain_http_issuer_only_on_loopback(gateway, issuer):
    r = gateway.apply_text(identity_provider("remote", issuer), "remote-idp.yaml", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "remote-idp.yaml" in r.stdout + r.stderr and "issuer" in (r.stdout + r.stderr).lower()
    assert "remote" not in [i.get("metadata", {}).get("name") for i in gateway.get("identityproviders")]
