"""A real OpenID provider and a scripted browser for the sign-in tests.

* ``Idp``: the ``oidc-provider`` npm package (``oidc_idp/idp.mjs``) on a free loopback port,
  issuer ``http://127.0.0.1:<port>``, configured from a JSON file written here: clients,
  accounts and a signing JWK generated here, so tests can mint ID tokens with the provider's
  own key (``mint``). ``tamper(...)`` makes the provider replace the ID token of its next
  token response. ``idp_factory`` (fixture) starts any number of them and stops them after.
* ``Browser``: an HTTP client with a cookie jar that never follows redirects blindly: ``walk``
  follows them hop by hop, fills the provider's login form (and consent) for an account, and
  records every hop so a test can look at each one. TLS to the gateway is verified with the
  gateway's CA.

``oidc_idp/node_modules`` comes from ``npm ci`` in that folder (CI does it; the fixture runs it
once if the folder is missing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import yaml
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

IDP_DIR = Path(__file__).resolve().parent / "oidc_idp"
WAIT = 30.0
HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------
# Keys, tokens and PKCE.
def make_jwk(kid: str | None = None) -> dict:
    """A fresh RS256 private JWK (with ``kid``, ``alg``, ``use``)."""
    key = RSAKey.generate_key(2048, private=True)
    jwk = dict(key.as_dict(private=True))
    jwk.update(kid=kid or secrets.token_hex(8), alg="RS256", use="sig")
    return jwk


def public_jwk(jwk: dict) -> dict:
    return {k: jwk[k] for k in ("kty", "n", "e", "kid", "alg", "use")}


def mint(jwk: dict, claims: dict, header: dict | None = None) -> str:
    """An ID token with ``claims`` signed by ``jwk`` (RS256, its ``kid``)."""
    h = {"alg": "RS256", "kid": jwk["kid"], "typ": "JWT", **(header or {})}
    return jwt.encode(h, claims, RSAKey.import_key(jwk))


def decode_unverified(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def account(id: str, email: str | None = None, *, email_verified: bool | None = True,
            groups: list[str] | None = None, name: str | None = None) -> dict:
    """An account of the test provider; ``email_verified=None`` leaves the claim out."""
    a: dict[str, Any] = {"id": id, "email": email or f"{id}@corp.example", "name": name or id.title()}
    if email_verified is not None:
        a["email_verified"] = email_verified
    if groups is not None:
        a["groups"] = groups
    return a


# --------------------------------------------------------------------------------------------
# The provider process.
def ensure_node_modules() -> None:
    if (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=IDP_DIR, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"npm ci in {IDP_DIR} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)


@dataclass
class IdpTls:
    """PEM files for a provider served over https: its certificate (for 127.0.0.1), key, and
    the CA that signed it."""
    cert: str
    key: str
    ca: str


class Idp:
    """One running ``oidc-provider``; ``issuer`` is ``http://127.0.0.1:<port>``, or
    ``https://`` with ``tls``."""

    def __init__(self, root: Path, clients: list[dict], accounts: list[dict], jwk: dict | None = None,
                 name: str = "idp", tls: IdpTls | None = None):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = _free_port()
        self.tls = tls
        self.issuer = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: Any = ssl.create_default_context(cafile=tls.ca) if tls else True
        self.jwk = jwk or make_jwk()
        self.clients = clients
        self.accounts = accounts
        self.control_token = secrets.token_urlsafe(24)
        self.stderr_path = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.discovery: dict = {}

    def start(self) -> "Idp":
        ensure_node_modules()
        cfg = {"issuer": self.issuer, "port": self.port, "clients": self.clients,
               "accounts": self.accounts, "jwk": self.jwk, "controlToken": self.control_token,
               "cookieKey": secrets.token_urlsafe(32)}
        if self.tls:
            cfg["tls"] = {"cert": self.tls.cert, "key": self.tls.key}
        path = self.root / f"{self.name}.json"
        path.write_text(json.dumps(cfg))
        os.chmod(path, 0o600)
        self._log = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(["node", str(IDP_DIR / "idp.mjs"), str(path)], cwd=IDP_DIR,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"oidc-provider exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=2,
                              verify=self.verify)
                if r.status_code == 200:
                    self.discovery = r.json()
                    assert self.discovery["issuer"] == self.issuer, self.discovery
                    return self
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"oidc-provider not answering discovery after {WAIT}s: {last}\n{self.log()}")

    def restart(self, jwk: dict | None = None) -> "Idp":
        """Stop and start again on the same port and issuer (all its state is lost), signing
        with ``jwk`` from then on when given: a key rotation."""
        self.stop()
        if jwk is not None:
            self.jwk = jwk
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None:
            self._log.close()

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- control API -----------------------------------------------------------------------
    def _control(self, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, f"{self.issuer}/__control/{path}", timeout=5, verify=self.verify,
                          headers={"x-control-token": self.control_token},
                          content=None if body is None else json.dumps(body))
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def tamper(self, id_token: str | None = None, claims: dict | None = None,
               drop: list[str] | None = None) -> None:
        """The next token response carries ``id_token`` instead of the real one, or the real
        one re-signed with the provider's key after setting ``claims`` and removing ``drop``."""
        if id_token is not None:
            self._control("POST", "tamper", {"idToken": id_token})
        else:
            self._control("POST", "tamper", {"claims": claims or {}, "drop": drop or []})

    def last(self) -> dict:
        """``{"idToken", "claims"}`` of the last token response, as the provider issued it."""
        return self._control("GET", "last")

    def token_requests(self) -> int:
        return self._control("GET", "stats")["tokenRequests"]

    def set_accounts(self, *accounts: dict) -> None:
        self._control("POST", "accounts", list(accounts))

    def mint(self, **claims: Any) -> str:
        """An ID token signed with this provider's key: sensible defaults for ``iss``, ``iat``,
        ``exp``; the test sets the rest (``aud``, ``nonce``, ``sub``, ``email``...)."""
        now = int(time.time())
        base = {"iss": self.issuer, "iat": now, "exp": now + 300}
        base.update(claims)
        return mint(self.jwk, {k: v for k, v in base.items() if v is not None})


def client(client_id: str, client_secret: str | None, *redirect_uris: str) -> dict:
    return {"client_id": client_id, "client_secret": client_secret, "redirect_uris": list(redirect_uris)}


@pytest.fixture
def idp_factory(tmp_path, request):
    """Factory: ``idp_factory(clients, accounts, jwk=None, name="idp") -> Idp`` (started)."""
    started: list[Idp] = []

    def start(clients: list[dict], accounts: list[dict], jwk: dict | None = None, name: str | None = None,
              tls: IdpTls | None = None) -> Idp:
        idp = Idp(tmp_path / "idp", clients, accounts, jwk, name or f"idp{len(started)}", tls)
        started.append(idp)
        return idp.start()

    yield start
    failed = any(getattr(getattr(request.node, "rep_" + w, None), "failed", False) for w in ("setup", "call"))
    for idp in started:
        idp.stop()
        if failed:
            sys.stderr.write(f"\n----- {idp.name} log -----\n{idp.log()[-8000:]}\n")


# --------------------------------------------------------------------------------------------
# The scripted browser.
@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str]
    inputs: list[str]


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.links: list[str] = []
        self._cur: Form | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._cur = Form(a.get("action", ""), a.get("method", "get").lower(), {}, [])
            self.forms.append(self._cur)
        elif tag in ("input", "button") and self._cur is not None and a.get("name"):
            self._cur.inputs.append(a["name"])
            if a.get("type") != "password" and (tag == "input" or a.get("value")):
                self._cur.fields[a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._cur = None


def parse_page(html: str) -> _Forms:
    p = _Forms()
    p.feed(html)
    return p


@dataclass
class Hop:
    """One request the browser made and its answer."""
    method: str
    url: str
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def location(self) -> str | None:
        loc = self.response.headers.get("location")
        return urljoin(self.url, loc) if loc else None

    @property
    def set_cookies(self) -> list[str]:
        return self.response.headers.get_list("set-cookie")

    @property
    def text(self) -> str:
        return self.response.text

    def __repr__(self) -> str:
        return f"<{self.method} {self.url} -> {self.status} {self.location or ''}>"


@dataclass
class Walk:
    hops: list[Hop] = field(default_factory=list)
    pending: str | None = None  # the URL ``stop_before`` kept the browser from opening

    @property
    def final(self) -> Hop:
        return self.hops[-1]

    def first(self, pred: Callable[[Hop], bool]) -> Hop:
        for h in self.hops:
            if pred(h):
                return h
        raise AssertionError(f"no such hop in {self.hops}")

    def to_path(self, path: str) -> Hop:
        """The first hop whose URL path is ``path``."""
        return self.first(lambda h: urlsplit(h.url).path == path)


class Browser:
    """A cookie-keeping HTTP client that sends ``Accept: text/html`` like a browser.

    ``ca``: the gateway's CA file (the only CA trusted for https). The provider is plain http
    on loopback."""

    def __init__(self, ca: str | None, accept: str = HTML_ACCEPT, password: str = "any-password",
                 extra_ca: str | None = None, http2: bool = False):
        verify: Any = ssl.create_default_context(cafile=ca) if ca else True
        if extra_ca:
            verify.load_verify_locations(cafile=extra_ca)
        self.client = httpx.Client(verify=verify, follow_redirects=False, timeout=15, http2=http2,
                                   headers={"Accept": accept, "User-Agent": "postern-e2e-browser/1"})
        self.password = password

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def cookies(self) -> httpx.Cookies:
        return self.client.cookies

    def cookie(self, name: str) -> str | None:
        for c in self.client.cookies.jar:
            if c.name == name:
                return c.value
        return None

    def request(self, method: str, url: str, **kw) -> Hop:
        return Hop(method, url, self.client.request(method, url, **kw))

    def get(self, url: str, **kw) -> Hop:
        return self.request("GET", url, **kw)

    def walk(self, url: str, login: str | None = None, *, method: str = "GET", data: dict | None = None,
             idp: str | None = None, consent: bool = True, max_hops: int = 30,
             stop_before: Callable[[str], bool] | None = None) -> Walk:
        """Open ``url`` and follow redirects one by one. On the provider's login form, sign in
        as ``login`` (no ``login``: stop there); on its consent form, allow (``consent``) or
        abort; on a page listing providers, follow the link for ``idp``. ``stop_before(url)``
        true: stop without opening that URL (``Walk.pending``)."""
        w = Walk()
        kw: dict[str, Any] = {"data": data} if data is not None else {}
        for _ in range(max_hops):
            if stop_before is not None and stop_before(url):
                w.pending = url
                return w
            hop = self.request(method, url, **kw)
            w.hops.append(hop)
            method, kw = "GET", {}
            if 300 <= hop.status < 400 and hop.location:
                url = hop.location
                continue
            if hop.status != 200 or "html" not in hop.response.headers.get("content-type", ""):
                return w
            page = parse_page(hop.text)
            nxt = self._next_action(hop, page, login, idp, consent)
            if nxt is None:
                return w
            method, url, kw = nxt
        raise AssertionError(f"more than {max_hops} hops: {w.hops}")

    def _next_action(self, hop: Hop, page: _Forms, login: str | None, idp: str | None,
                     consent: bool) -> tuple[str, str, dict] | None:
        for form in page.forms:
            target = urljoin(hop.url, form.action or hop.url)
            if "login" in form.inputs and "password" in form.inputs:
                if login is None:
                    return None
                data = dict(form.fields, login=login, password=self.password)
                return form.method.upper(), target, {"data": data}
            if form.fields.get("prompt") == "consent":
                if consent:
                    return form.method.upper(), target, {"data": dict(form.fields)}
                abort = [l for l in page.links if "/abort" in l]
                return ("GET", urljoin(hop.url, abort[0]), {}) if abort else None
        if idp is not None:
            for link in page.links:
                q = parse_qs(urlsplit(link).query)
                if q.get("idp") == [idp]:
                    return "GET", urljoin(hop.url, link), {}
        return None


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def with_query(url: str, **params: str | None) -> str:
    """``url`` with query parameters set (``None`` removes one)."""
    u = urlsplit(url)
    q = query_of(url)
    for k, v in params.items():
        if v is None:
            q.pop(k, None)
        else:
            q[k] = v
    return u._replace(query=urlencode(q)).geturl()


# --------------------------------------------------------------------------------------------
# A gateway with an IdentityProvider, a public Service and people.
IDP_NAME = "corp-sso"
SECRET_NAME = "corp-sso-secret"
CLIENT_ID = "postern"
SESSION_COOKIE = "postern_session"

ALICE = account("alice", "alice@corp.example", groups=["eng", "staff"], name="Alice Doe")
BOB = account("bob", "bob@corp.example", groups=["eng"])                  # no User at the gateway
CAROL = account("carol", "carol@corp.example", email_verified=False)      # unverified email
DAVE = account("dave", "dave@corp.example", groups=["eng"])               # disabled User
ERIN = account("erin", "erin@corp.example", email_verified=None)          # no email_verified
FRANK = account("frank", "Frank@Corp.Example", groups=["sales"])         # case differs from User
ACCOUNTS = [ALICE, BOB, CAROL, DAVE, ERIN, FRANK]


def human(name: str, email: str, disabled: bool = False, groups: list[str] | None = None) -> str:
    doc: dict[str, Any] = {"kind": "User", "metadata": {"name": name},
                           "spec": {"type": "HUMAN", "email": email}}
    if disabled:
        doc["spec"]["isDisabled"] = True
    if groups:
        doc["spec"]["groups"] = groups
    return yaml.safe_dump(doc, sort_keys=False)


def identity_provider(name: str, issuer: str, client_id: str = CLIENT_ID, secret: str | None = SECRET_NAME,
                      display_name: str | None = None, scopes: list[str] | None = None) -> str:
    oidc: dict[str, Any] = {"issuerURL": issuer, "clientID": client_id}
    if secret:
        oidc["clientSecret"] = {"fromSecret": secret}
    if scopes:
        oidc["scopes"] = scopes
    spec: dict[str, Any] = {"oidc": oidc}
    if display_name:
        spec["displayName"] = display_name
    return yaml.safe_dump({"kind": "IdentityProvider", "metadata": {"name": name}, "spec": spec}, sort_keys=False)


USERS = "---\n".join([
    human("alice", "alice@corp.example"),
    human("carol", "carol@corp.example"),
    human("dave", "dave@corp.example", disabled=True),
    human("erin", "erin@corp.example"),
    human("frank", "frank@corp.example"),
])


def cookie_attrs(set_cookie: str) -> tuple[str, str, dict[str, str]]:
    """(name, value, {lower-cased attribute: value}) of one ``Set-Cookie`` header."""
    parts = [p.strip() for p in set_cookie.split(";")]
    name, _, value = parts[0].partition("=")
    attrs = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        attrs[k.strip().lower()] = v.strip()
    return name, value, attrs


def session_set_cookie(walk: Walk) -> str | None:
    """The ``Set-Cookie`` header that gave the browser its session, if any hop did."""
    for h in walk.hops:
        for sc in h.set_cookies:
            name, value, _ = cookie_attrs(sc)
            if name == SESSION_COOKIE and value:
                return sc
    return None


@dataclass
class SignInEnv:
    gw: Any            # conftest.Gateway
    idp: Idp
    svc: Any           # standin.StandIn behind the public Service ``svc``
    client_secret: str

    def browser(self, **kw) -> Browser:
        return Browser(self.gw.ca, **kw)

    def url(self, path: str = "/", service: str | None = "svc") -> str:
        return self.gw.url(service, path)

    @property
    def origin(self) -> str:
        return self.gw.url(None, "")

    def sign_in(self, browser: Browser, login: str = "alice", url: str | None = None, **kw) -> Walk:
        return browser.walk(url or self.url("/"), login, **kw)

    def sessions(self, user: str | None = None) -> list[dict]:
        return [s for s in self.gw.get("sessions") if user is None or s.get("user") == user]

    def api(self, url: str, cookie: str | None = None, bearer: str | None = None) -> httpx.Response:
        """A request as an API client (no ``text/html`` in ``Accept``)."""
        headers = {"Accept": "application/json"}
        if cookie is not None:
            headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        with self.gw.http() as h:
            return h.get(url, headers=headers)

    def with_cookie(self, value: str) -> Browser:
        """A fresh browser holding only ``postern_session=value`` for the gateway's domain."""
        b = self.browser()
        b.client.cookies.set(SESSION_COOKIE, value, domain="." + self.gw.domain, path="/")
        return b


@pytest.fixture
def signin_env(start_gateway, idp_factory):
    """A gateway with IdentityProvider ``corp-sso`` (a running ``oidc-provider`` whose accounts
    are ``ACCOUNTS``), the HUMAN Users in ``USERS`` and a public Service ``svc`` that allows
    everyone, in front of a stand-in that echoes the request."""
    from standin import StandIn
    from conftest import public_service

    gw = start_gateway()
    secret = "idp-client-" + secrets.token_urlsafe(16)
    with StandIn("svc") as svc:
        idp = idp_factory([client(CLIENT_ID, secret, gw.url(None, "/callback"))], list(ACCOUNTS), name="corp")
        gw.create_secret(SECRET_NAME, secret)
        gw.apply_text("---\n".join([identity_provider(IDP_NAME, idp.issuer), USERS,
                                    public_service("svc", svc.url)]), "signin.yaml")
        yield SignInEnv(gw, idp, svc, secret)
