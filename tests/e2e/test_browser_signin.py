"""A real browser: Debian's Chromium driven by Playwright, signing in on the OpenID provider's
own page and using a public Service, the portal and sign-out through the real gateway.

Chromium trusts the gateway's certificate through ``--ignore-certificate-errors-spki-list``
with the SHA-256 of the gateway leaf's public key (so any other certificate still fails:
``ignore_https_errors`` is not used), and resolves ``postern.test`` / ``*.postern.test`` to
127.0.0.1 with ``--host-resolver-rules``. Skips (with the reason) when ``/usr/bin/chromium``
or the ``playwright`` package is missing; CI installs both.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import socket
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import DOMAIN

pytest.register_assert_rewrite("oidc")  # before the import, so its asserts explain themselves
from oidc import SESSION_COOKIE, account, client, pkce_pair

pytest_plugins = ["oidc"]  # fixtures idp_factory, signin_env

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need_browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (Debian package chromium)"
        print("SKIP:", reason)
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed (tests/requirements.txt)"
        print("SKIP:", reason)
        pytest.skip(reason)
    return sync_playwright


def spki_hash(gw, host: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate the gateway serves for ``host``,
    checked against the gateway's CA on the way."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        with gw.tls().wrap_socket(s, server_hostname=host) as t:
            der = t.getpeercert(binary_form=True)
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def launch(pw, tmp_path: Path, extra: list[str]):
    return pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
        args=ARGS + extra, timeout=30_000)


def sign_in_on_idp_page(page, login: str) -> None:
    """The provider's own login form, then its consent form when it is shown."""
    page.wait_for_selector('input[name="login"]', timeout=15_000)
    page.fill('input[name="login"]', login)
    page.fill('input[name="password"]', "any-password")
    page.click('button[type="submit"]')
    page.wait_for_load_state()
    consent = page.locator('form:has(input[name="prompt"][value="consent"]) button[type="submit"]')
    if consent.count():
        consent.first.click()


def test_chromium_signs_in_on_the_provider_page(tmp_path, idp_factory):
    """Part of the harness: Chromium through the provider alone (the relying party's redirect
    is answered by Playwright), so a failure here is the browser setup, not the gateway."""
    sync_playwright = _need_browser()
    rp = "https://rp.example.test/callback"
    idp = idp_factory([client("rp", "s", rp)], [account("alice")])
    _, challenge = pkce_pair()
    url = idp.discovery["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": "rp", "redirect_uri": rp, "scope": "openid email",
        "state": "st-1", "nonce": secrets.token_urlsafe(8), "code_challenge": challenge,
        "code_challenge_method": "S256"})
    with sync_playwright() as pw:
        ctx = launch(pw, tmp_path, [])
        try:
            ctx.route("https://rp.example.test/**", lambda route: route.fulfill(status=200, body="rp ok"))
            page = ctx.new_page()
            page.goto(url)
            sign_in_on_idp_page(page, "alice")
            page.wait_for_url(re.compile(r"^https://rp\.example\.test/callback\?"), timeout=15_000)
            q = dict(p.split("=", 1) for p in urlsplit(page.url).query.split("&"))
            assert q["state"] == "st-1" and q["code"], page.url
        finally:
            ctx.close()


def test_chromium_signs_in_uses_the_portal_and_signs_out(tmp_path, signin_env):
    sync_playwright = _need_browser()
    env = signin_env
    gw = env.gw
    pins = sorted({spki_hash(gw, DOMAIN), spki_hash(gw, f"svc.{DOMAIN}")})
    extra = [f"--ignore-certificate-errors-spki-list={','.join(pins)}",
             f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1, MAP *.{DOMAIN} 127.0.0.1"]
    svc_url = env.url("/")
    portal = gw.url(None, "/")
    with sync_playwright() as pw:
        ctx = launch(pw, tmp_path, extra)
        try:
            seen: list[str] = []
            ctx.on("request", lambda r: seen.append(r.url) if r.is_navigation_request() else None)
            page = ctx.new_page()

            # 1. The Service sends the browser to sign in, on the provider's own page.
            page.goto(svc_url)
            assert page.url.startswith(env.idp.issuer + "/"), page.url
            assert any(u.startswith(gw.url(None, "/login?")) for u in seen), seen
            sign_in_on_idp_page(page, "alice")

            # 2. Back on the exact URL, with the Service's answer.
            page.wait_for_url(svc_url, timeout=15_000)
            assert '"standin"' in page.content() and '"path"' in page.content(), page.content()[:500]
            cookies = [c for c in ctx.cookies() if c["name"] == SESSION_COOKIE]
            assert len(cookies) == 1, ctx.cookies()
            c = cookies[0]
            assert c["domain"].lstrip(".") == DOMAIN and c["secure"] and c["httpOnly"], c
            assert c["sameSite"] == "Lax", c
            first_cookie = c["value"]

            # 3. The portal knows who this is.
            resp = page.goto(portal)
            assert resp is not None and resp.status == 200, (resp and resp.status, page.url)
            assert page.url == portal
            text = page.inner_text("body")
            assert "alice" in text, text[:2000]

            # 4. Sign out from the portal.
            out = page.locator('a[href*="/logout"], form[action*="/logout"] button, '
                               'form[action*="/logout"] input[type="submit"]')
            assert out.count() >= 1, page.content()[:3000]
            out.first.click()
            page.wait_for_load_state()
            assert urlsplit(page.url).path == "/logout", page.url
            assert not [c for c in ctx.cookies() if c["name"] == SESSION_COOKIE and c["value"]]
            assert env.sessions("alice") == []

            # 5. The Service sends the browser to sign in again.
            seen.clear()
            page.goto(env.url("/again"))
            assert any(u.startswith(gw.url(None, "/login?")) for u in seen), seen
            assert any(u.startswith(env.idp.discovery["authorization_endpoint"]) for u in seen), seen
            if page.url.startswith(env.idp.issuer):
                sign_in_on_idp_page(page, "alice")  # the provider asked again
            page.wait_for_url(env.url("/again"), timeout=15_000)
            again = [c for c in ctx.cookies() if c["name"] == SESSION_COOKIE]
            assert again and again[0]["value"] != first_cookie
        finally:
            ctx.close()
