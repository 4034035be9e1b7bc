"""The attack table's identity rows (docs/security.md), through the real gateway: forged and
tampered access tokens (alg confusion included), a revoked token replayed on connections
that stay open, authorization that changes between two requests of one connection, and
credentials that must never leak into the access log, metrics, errors or the upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from contextlib import ExitStack

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import DOMAIN, free_port
from rawclient import H2Conn, h2_headers
from standin import StandIn, closed_port
from test_attacks import ATK, service


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Ident:
    def __init__(self, gw, stack: ExitStack):
        self.gw = gw
        self.up = stack.enter_context(StandIn("up"))
        gw.apply_text("---\n".join([
            "kind: User\nmetadata:\n  name: atk\nspec:\n  type: WORKLOAD\n",
            service("live", self.up.url, ("ALLOW", ATK)),
        ]))
        self.client = gw.create_oauth2("atk", "atk-oauth2")
        self.tok = gw.token(*self.client)

    def get(self, token: str, svc: str = "live", path: str = "/x") -> httpx.Response:
        with self.gw.http() as h:
            return h.get(self.gw.url(svc, path), headers={"Authorization": f"Bearer {token}"})

    def signing_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes((self.gw.data_dir / "signing.key").read_bytes())


@pytest.fixture
def ident(gateway):
    with ExitStack() as stack:
        yield Ident(gateway, stack)


# ------------------------------------------------------------------ tampering and alg confusion
def forgeries(tok: str, key: Ed25519PrivateKey) -> dict[str, str]:
    """Tokens an attacker could build from a genuine one (and, worse, with the real key but
    another framing): each must be refused."""
    _, payload_b64, sig_b64 = tok.split(".")
    claims = json.loads(unb64(payload_b64))
    later = dict(claims, exp=claims["exp"] + 3600)
    other_sid = dict(claims, sid="sess-" + "0" * 32)
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwt_claims = b64(json.dumps(claims).encode())

    def jwt(alg: str, sign) -> str:
        head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        return f"{head}.{jwt_claims}.{sign(f'{head}.{jwt_claims}'.encode())}"

    return {
        "extended-expiry": f"pst.{b64(json.dumps(later).encode())}.{sig_b64}",
        "other-session": f"pst.{b64(json.dumps(other_sid).encode())}.{sig_b64}",
        "re-encoded-padding": f"pst.{payload_b64}==.{sig_b64}",
        "same-claims-other-bytes": f"pst.{b64(json.dumps(claims, indent=1).encode())}.{sig_b64}",
        "no-signature": f"pst.{payload_b64}.",
        "signature-bit-flip": f"pst.{payload_b64}.{b64(bytes([unb64(sig_b64)[0] ^ 1]) + unb64(sig_b64)[1:])}",
        "upper-prefix": "PST." + tok[4:],
        "extra-segment": tok + ".x",
        "jwt-alg-none": jwt("none", lambda m: ""),
        "jwt-hs256-with-public-key": jwt("HS256", lambda m: b64(hmac.new(pub, m, hashlib.sha256).digest())),
        "jwt-eddsa-with-real-key": jwt("EdDSA", lambda m: b64(key.sign(m))),
        "pst-real-key-without-context": f"pst.{payload_b64}.{b64(key.sign(unb64(payload_b64)))}",
    }


def test_forged_and_confused_tokens_are_401(ident):
    assert ident.get(ident.tok).status_code == 200
    for name, forged in forgeries(ident.tok, ident.signing_key()).items():
        assert forged != ident.tok
        r = ident.get(forged)
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), name
    assert len(ident.up.requests) == 1


def test_real_key_with_own_framing_is_accepted(ident):
    """Control for the forgeries above: a token signed with the data directory's key in the
    gateway's framing is accepted, so their 401s come from the framing, not from a wrong key."""
    _, payload_b64, _ = ident.tok.split(".")
    key = ident.signing_key()
    sig = key.sign(b"postern access token v1\0" + unb64(payload_b64))
    assert ident.get(f"pst.{payload_b64}.{b64(sig)}").status_code == 200


# ---------------------------------------------------------------------- revocation and staleness
class Conns:
    """One HTTP/1.1 keep-alive connection and one HTTP/2 connection, kept open throughout."""

    def __init__(self, ident: Ident, svc: str = "live"):
        self.ident = ident
        self.host = f"{svc}.{DOMAIN}"
        # conftest resolves *.postern.test to 127.0.0.1, so SNI names the Service
        self.h1 = http.client.HTTPSConnection(self.host, ident.gw.port, context=ident.gw.tls(), timeout=10)
        self.h1.connect()
        self.h1_sock = self.h1.sock
        self.h2 = H2Conn(ident.gw, self.host)

    def statuses(self, token: str) -> tuple[int, int | None]:
        self.h1.request("GET", "/x", headers={"Host": self.host, "Authorization": f"Bearer {token}"})
        r = self.h1.getresponse()
        r.read()
        assert self.h1.sock is self.h1_sock and self.h1.sock is not None, "HTTP/1.1 connection was reopened"
        h2r = self.h2.request(h2_headers(self.ident.gw, self.host, "/x", token=token))
        assert not self.h2.closed, h2r
        return r.status, h2r.status

    def wait_for(self, token: str, want: set[int], within: float = 1.0) -> tuple[int, int | None]:
        deadline = time.monotonic() + within
        while True:
            got = self.statuses(token)
            if got[0] in want and got[1] in want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def close(self):
        self.h1.close()
        self.h2.close()


@pytest.fixture
def conns(ident):
    c = Conns(ident)
    yield c
    c.close()


def test_policy_and_user_changes_apply_to_open_connections(ident, conns):
    assert conns.statuses(ident.tok) == (200, 200)
    ident.gw.apply_text(service("live", ident.up.url, ("ALLOW", 'ctx.user.metadata.name == "nobody"')))
    assert conns.wait_for(ident.tok, {403}) == (403, 403)
    ident.gw.apply_text(service("live", ident.up.url, ("ALLOW", ATK)))
    assert conns.wait_for(ident.tok, {200}) == (200, 200)
    ident.gw.apply_text("kind: User\nmetadata:\n  name: atk\nspec:\n  type: WORKLOAD\n  isDisabled: true\n")
    got = conns.wait_for(ident.tok, {401, 403})
    assert got[0] in (401, 403) and got[1] in (401, 403), got
    assert len(ident.up.requests) == 4  # 2 before the first change, 2 after allowing again


@pytest.mark.parametrize("revoke", ["session", "credential"])
def test_revoked_token_replayed_on_open_connections_is_401(ident, conns, revoke):
    assert conns.statuses(ident.tok) == (200, 200)
    if revoke == "session":
        sessions = [s for s in ident.gw.get("sessions") if s.get("credential") == "atk-oauth2"]
        assert sessions, ident.gw.get("sessions")
        for s in sessions:
            ident.gw.ctl("delete", "session", s["name"])
    else:
        ident.gw.ctl("delete", "credential", "atk-oauth2")
    assert conns.wait_for(ident.tok, {401}) == (401, 401)
    assert ident.get(ident.tok).status_code == 401
    assert len(ident.up.requests) == 2


# --------------------------------------------------------------------------- credential leakage
PROVIDER_KEY = "sk-provider-LEAKCHECK-5f0e9d"
COOKIE = "cookie-LEAKCHECK-77aa"


def test_credentials_never_leak(start_gateway):
    metrics_port = free_port()
    gw = start_gateway(extra_args=["--metrics-listen", f"127.0.0.1:{metrics_port}"])
    with ExitStack() as stack:
        good = stack.enter_context(StandIn("good", api_key=PROVIDER_KEY))
        picky = stack.enter_context(StandIn("picky", api_key="sk-some-other-key"))
        gw.create_secret("provider-key", PROVIDER_KEY)
        auth = "\n    http:\n      auth:\n        bearer:\n          fromSecret: provider-key\n"
        docs = ["kind: User\nmetadata:\n  name: atk\nspec:\n  type: WORKLOAD\n"]
        for name, url, rule in [("ok", good.url, ATK), ("provider401", picky.url, ATK),
                                ("down", f"http://127.0.0.1:{closed_port()}", ATK),
                                ("denied", good.url, 'ctx.user.metadata.name == "nobody"')]:
            docs.append(service(name, url, ("ALLOW", rule)).replace(f"      url: {url}\n", f"      url: {url}{auth}", 1))
        gw.apply_text("---\n".join(docs))
        client_id, client_secret = gw.create_oauth2("atk", "atk-oauth2")
        tok = gw.token(client_id, client_secret)

        seen: list[str] = []
        want = {"ok": 200, "provider401": 401, "down": 502, "denied": 403, "ghost": 404}
        with gw.http() as h:
            for svc, status in want.items():
                for method, kw in (("GET", {}), ("POST", {"json": {"model": "m", "messages": []}})):
                    r = h.request(method, gw.url(svc, "/v1/chat/completions"), **kw,
                                  headers={"Authorization": f"Bearer {tok}", "Cookie": f"sid={COOKIE}"})
                    assert r.status_code == status, (svc, method, r.status_code, r.text)
                    seen.append(f"{r.headers}\n{r.text}")
            bad = h.get(gw.url("ok", "/x"), headers={"Authorization": f"Bearer {tok}x"})
            assert bad.status_code == 401
            seen.append(f"{bad.headers}\n{bad.text}")
            r = h.post(gw.token_endpoint, data={"grant_type": "client_credentials", "client_id": client_id,
                                                "client_secret": client_secret + "x"})
            assert r.status_code == 401
            seen.append(f"{r.headers}\n{r.text}")
        assert len(good.requests) == 2 and all(q.header("authorization") == f"Bearer {PROVIDER_KEY}"
                                               for q in good.requests)
        for q in good.requests + picky.requests:
            assert not any(tok in v or COOKIE in v for v in q.header_values()), q.headers
            assert tok.encode() not in q.body
        gw.wait_access(lambda e: e.get("service") == "denied" and e.get("status") == 403, timeout=5)
        time.sleep(1.2)  # the access log writer and metrics flush on a tick
        seen.append(gw.access_log.read_text())
        seen.append(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text)
        seen.append(gw.ctl("logs", "-o", "json", check=False).stdout)
        seen.append(gw.stderr())
    gw.stop()
    seen.append(gw.stderr())
    text = "\n".join(seen)
    assert "postern_requests_total" in text  # the metrics page was read
    for name, secret in [("provider key", PROVIDER_KEY), ("access token", tok),
                         ("token signature", tok.rsplit(".", 1)[1]), ("cookie", COOKIE),
                         ("client secret", client_secret)]:
        assert secret not in text, f"the {name} leaked"
