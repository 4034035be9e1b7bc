"""What the upstream sees and what the caller gets back: path rewriting, header rules,
basic/custom credential injection, a missing Secret, headers the gateway always strips or
sets, CORS, and dynamicConfig rules on non-body attributes (with the access log's ``config``)."""

from __future__ import annotations

import base64
import json
import time
from contextlib import ExitStack

import pytest

from conftest import DOMAIN, assert_error_body
from standin import StandIn

USER = """\
kind: User
metadata:
  name: fwd
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


def svc(name: str, url: str, http: str = "", public: bool = True) -> str:
    text = f"""\
kind: Service
metadata:
  name: {name}
spec:
  mode: HTTP
  isPublic: {"true" if public else "false"}
  config:
    upstream:
      url: {url}
"""
    if http:
        text += "    http:\n" + "".join("      " + line + "\n" for line in http.strip("\n").splitlines())
    return text


class Env:
    def __init__(self, gw, stack: ExitStack):
        self.gw = gw
        self.up = stack.enter_context(StandIn("up"))
        gw.apply_text(USER, "fwd-user.yaml")
        self.tok = gw.token(*gw.create_oauth2("fwd", "fwd-oauth2"))

    def get(self, service: str, path: str, headers=None, method: str = "GET", **kw):
        hdrs = [("Authorization", f"Bearer {self.tok}")] + list(headers or [])
        with self.gw.http() as h:
            return h.request(method, self.gw.url(service, path), headers=hdrs, **kw)


@pytest.fixture
def env(gateway):
    with ExitStack() as stack:
        yield Env(gateway, stack)


# ---------------------------------------------------------------------------------- path rewrite
def test_remove_then_add_prefix_keeps_query(env):
    env.gw.apply_text(svc("paths", env.up.url, """\
path:
  removePrefix: /api
  addPrefix: /v2/internal
"""))
    r = env.get("paths", "/api/items/42?x=1&y=a%20b&x=2")
    assert r.status_code == 200, r.text
    r = env.get("paths", "/other/thing?q=z")
    assert r.status_code == 200, r.text
    r = env.get("paths", "/api")
    assert r.status_code == 200, r.text
    paths = [q.path for q in env.up.requests]
    assert paths[:2] == [
        "/v2/internal/items/42?x=1&y=a%20b&x=2",  # /api removed first, then /v2/internal added
        "/v2/internal/other/thing?q=z",  # no /api to remove: only the prefix is added
    ], paths
    assert env.up.requests[2].path in ("/v2/internal", "/v2/internal/"), env.up.requests[2].path
    # the caller's view (access log) is the original path
    e = env.gw.wait_access(lambda e: e.get("service") == "paths" and e.get("path", "").startswith("/api/items"))
    assert e["status"] == 200


def test_upstream_url_path_is_prepended(env):
    env.gw.apply_text(svc("based", env.up.url + "/base", """\
path:
  removePrefix: /api
  addPrefix: /v1
"""))
    r = env.get("based", "/api/chat?stream=false")
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    assert req.path == "/base/v1/chat?stream=false"


# ---------------------------------------------------------------------------------- header rules
def test_header_rules(env):
    env.gw.apply_text(svc("hdrs", env.up.url, """\
header:
  addRequestHeaders:
    - key: x-team
      value: blue
    - key: x-added
      value: by-gateway
  removeRequestHeaders: [x-debug, X-Internal-Trace]
  addResponseHeaders:
    - key: x-served-by
      value: postern-test
  removeResponseHeaders: [server, X-Standin]
"""))
    r = env.get("hdrs", "/h", headers=[("X-Team", "red"), ("X-Debug", "1"), ("x-internal-trace", "abc"),
                                       ("X-Kept", "kept")])
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    # addRequestHeaders replaces the client's value (exactly one x-team, the configured one)
    assert [v for k, v in req.headers if k.lower() == "x-team"] == ["blue"]
    assert req.header("x-added") == "by-gateway"
    assert req.header("x-debug") is None
    assert req.header("x-internal-trace") is None
    assert req.header("x-kept") == "kept"
    # response rules
    assert r.headers.get("x-served-by") == "postern-test"
    assert "server" not in r.headers, dict(r.headers)
    assert "x-standin" not in r.headers, dict(r.headers)
    assert r.json()["standin"] == "up"


def test_response_headers_pass_through_without_rules(env):
    env.gw.apply_text(svc("plain", env.up.url))
    r = env.get("plain", "/p")
    assert r.status_code == 200, r.text
    assert r.headers.get("x-standin") == "up"
    assert r.headers.get("server", "").startswith("standin/1")


# -------------------------------------------------------------------------------- credentials
def test_basic_auth_injected(env):
    env.gw.create_secret("basic-pw", "p@ss:w0rd-ü")
    env.gw.apply_text(svc("basic", env.up.url, """\
auth:
  basic:
    username: svc-user
    password:
      fromSecret: basic-pw
"""))
    r = env.get("basic", "/b", headers=[("Cookie", "session=caller-cookie")])
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    expected = "Basic " + base64.b64encode("svc-user:p@ss:w0rd-ü".encode()).decode()
    assert [v for k, v in req.headers if k.lower() == "authorization"] == [expected]
    assert not env.up.saw_value(env.tok)
    assert req.header("cookie") is None
    assert "p@ss" not in r.text


def test_custom_auth_injected(env):
    env.gw.create_secret("custom-key", "xk-custom-9876")
    env.gw.apply_text(svc("custom", env.up.url, """\
auth:
  custom:
    header: x-api-key
    value:
      fromSecret: custom-key
"""))
    r = env.get("custom", "/c", headers=[("X-Api-Key", "caller-supplied")])
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    assert [v for k, v in req.headers if k.lower() == "x-api-key"] == ["xk-custom-9876"]
    # the caller's token is stripped and nothing replaces it in Authorization
    assert req.header("authorization") is None
    assert not env.up.saw_value(env.tok)
    assert not env.up.saw_value("caller-supplied")
    assert "xk-custom-9876" not in r.text and all("xk-custom-9876" not in v for v in r.headers.values())


@pytest.mark.parametrize("auth", [
    "bearer:\n    fromSecret: {s}",
    "basic:\n    username: u\n    password:\n      fromSecret: {s}",
    "custom:\n    header: x-api-key\n    value:\n      fromSecret: {s}",
], ids=["bearer", "basic", "custom"])
def test_missing_secret_is_502_without_naming_it(env, auth):
    name = "ghost-secret-4f1d"
    env.gw.apply_text(svc("ghost", env.up.url, "auth:\n  " + auth.format(s=name)))
    r = env.get("ghost", "/g")
    assert r.status_code == 502, r.text
    err = assert_error_body(r.json())
    assert name not in r.text
    assert all(name not in v for v in r.headers.values())
    assert env.up.requests == []
    # the operator's access log does name it
    e = env.gw.wait_access(lambda e: e.get("service") == "ghost" and e.get("status") == 502)
    assert name in json.dumps(e), e
    assert e["decision"] == "ALLOW"
    if err.get("request_id"):
        assert e["requestId"] == err["request_id"]


# ----------------------------------------------------------------------- always-stripped / set
def test_caller_credentials_stripped_and_forwarded_headers_set(env):
    env.gw.apply_text(svc("fwd", env.up.url))
    r = env.get("fwd", "/f?z=1", headers=[("Cookie", "sid=secret-cookie-1; other=2"),
                                         ("Proxy-Authorization", "Basic cHJveHk6cHc="),
                                         ("X-Forwarded-Host", "evil.example"),
                                         ("X-Forwarded-Proto", "http")])
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    assert req.header("authorization") is None
    assert req.header("cookie") is None
    assert req.header("proxy-authorization") is None
    assert not env.up.saw_value(env.tok)
    assert not env.up.saw_value("secret-cookie-1")
    assert req.header("x-forwarded-for").split(",")[-1].strip() == "127.0.0.1", req.headers
    assert [v for k, v in req.headers if k.lower() == "x-forwarded-proto"] == ["https"]
    assert [v for k, v in req.headers if k.lower() == "x-forwarded-host"] in (
        [f"fwd.{DOMAIN}"], [f"fwd.{DOMAIN}:{env.gw.port}"]), req.headers
    # Host is the upstream's, not the gateway's
    assert req.header("host") == f"127.0.0.1:{env.up.port}"


def test_curl_cookie_and_authorization_not_forwarded(env):
    env.gw.apply_text(svc("fwd2", env.up.url))
    r = env.gw.curl("-H", f"Authorization: Bearer {env.tok}", "-b", "a=cookie-val-77",
                    env.gw.url("fwd2", "/x"))
    assert r.status == 200, r.body
    [req] = env.up.requests
    assert req.header("authorization") is None and req.header("cookie") is None
    assert not env.up.saw_value("cookie-val-77")
    assert req.header("x-forwarded-proto") == "https"


# ------------------------------------------------------------------------------------------ CORS
CORS = """\
cors:
  allowOriginStringMatch:
    - exact: https://app.example.com
    - suffix: .trusted.example
  allowMethods: GET, POST
  allowHeaders: authorization, content-type
  exposeHeaders: x-standin
  maxAge: "600"
"""


@pytest.fixture
def cors_env(env):
    env.gw.apply_text(svc("web", env.up.url, CORS))
    return env


def _preflight(env, origin: str):
    with env.gw.http() as h:
        return h.options(env.gw.url("web", "/v1/data"), headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://x.trusted.example"])
def test_cors_preflight_allowed_without_token(cors_env, origin):
    r = _preflight(cors_env, origin)
    assert r.status_code == 204, (r.status_code, r.text)
    assert r.headers.get("access-control-allow-origin") == origin
    assert r.headers.get("access-control-allow-origin") != "*"
    methods = {m.strip().upper() for m in r.headers.get("access-control-allow-methods", "").split(",")}
    assert {"GET", "POST"} <= methods, r.headers
    assert "content-type" in r.headers.get("access-control-allow-headers", "").lower()
    assert r.headers.get("access-control-max-age") == "600"
    assert "origin" in [v.strip().lower() for x in r.headers.get_list("vary") for v in x.split(",")]
    assert r.content == b""
    assert cors_env.up.requests == []  # answered by the gateway


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.com.evil.example",
                                    "http://app.example.com", "null"])
def test_cors_preflight_disallowed_origin(cors_env, origin):
    r = _preflight(cors_env, origin)
    assert "access-control-allow-origin" not in r.headers, (r.status_code, dict(r.headers))
    assert "access-control-allow-methods" not in r.headers
    assert r.status_code != 204 or "access-control-allow-origin" not in r.headers
    assert cors_env.up.requests == []  # no token: never forwarded


def test_cors_actual_request_allowed_origin(cors_env):
    r = cors_env.get("web", "/v1/data", headers=[("Origin", "https://app.example.com")])
    assert r.status_code == 200, r.text
    assert r.headers.get("access-control-allow-origin") == "https://app.example.com"
    vary = [v.strip().lower() for x in r.headers.get_list("vary") for v in x.split(",")]
    assert "origin" in vary, r.headers
    assert "x-standin" in r.headers.get("access-control-expose-headers", "").lower()
    [req] = cors_env.up.requests
    assert req.path == "/v1/data"


def test_cors_actual_request_disallowed_origin(cors_env):
    r = cors_env.get("web", "/v1/data", headers=[("Origin", "https://evil.example")])
    assert r.status_code == 200, r.text
    assert "access-control-allow-origin" not in r.headers, dict(r.headers)


def test_cors_actual_request_without_token_still_401(cors_env):
    with cors_env.gw.http() as h:
        r = h.get(cors_env.gw.url("web", "/v1/data"), headers={"Origin": "https://app.example.com"})
    assert r.status_code == 401, r.text
    assert cors_env.up.requests == []


# ------------------------------------------------------------------------------- dynamicConfig
def dyn_service(name: str, urls: dict[str, str], default_url: str | None) -> str:
    default = f"""\
  config:
    upstream:
      url: {default_url}
    http:
      header:
        addRequestHeaders:
          - key: x-config
            value: default
""" if default_url else ""
    return f"""\
kind: Service
metadata:
  name: {name}
spec:
  mode: HTTP
  isPublic: true
{default}  dynamicConfig:
    configs:
      - name: blue
        upstream:
          url: {urls["blue"]}
        http:
          header:
            addRequestHeaders:
              - key: x-config
                value: blue
      - name: green
        upstream:
          url: {urls["green"]}
        http:
          path:
            addPrefix: /g
          header:
            addRequestHeaders:
              - key: x-config
                value: green
    rules:
      - condition:
          match: ctx.request.http.headers["x-route"] == "green"
        configName: green
      - condition:
          match: ctx.request.http.path.startsWith("/green/")
        configName: green
      - condition:
          match: ctx.request.http.queryParams["env"] == "blue"
        configName: blue
      - condition:
          all:
            of:
              - match: ctx.request.http.method == "DELETE"
              - match: ctx.request.http.headers["x-route"] == "blue"
        configName: blue
"""


@pytest.fixture
def dyn(env):
    with ExitStack() as stack:
        ups = {n: stack.enter_context(StandIn(n)) for n in ("blue", "green", "default")}
        env.ups = ups
        yield env


@pytest.mark.parametrize("method,path,headers,chosen", [
    ("GET", "/x", [("X-Route", "green")], "green"),
    ("GET", "/green/y?k=v", [], "green"),
    ("GET", "/x?env=blue", [], "blue"),
    ("DELETE", "/x", [("X-Route", "blue")], "blue"),
    ("GET", "/x", [("X-Route", "blue")], "default"),  # the blue header rule needs DELETE
    ("GET", "/x?env=green", [], "default"),
])
def test_dynamic_config_non_body_rules(dyn, method, path, headers, chosen):
    dyn.gw.apply_text(dyn_service("dyn", {n: s.url for n, s in dyn.ups.items()}, dyn.ups["default"].url))
    r = dyn.get("dyn", path, headers=headers, method=method)
    assert r.status_code == 200, r.text
    assert r.json()["standin"] == chosen
    for n, s in dyn.ups.items():
        if n == chosen:
            [req] = s.requests
            assert req.header("x-config") == chosen
            assert req.method == method
            assert req.path == ("/g" + path if chosen == "green" else path)
        else:
            assert s.requests == [], f"{n} got a request meant for {chosen}"
    e = dyn.gw.wait_access(lambda e: e.get("service") == "dyn" and e.get("status") == 200)
    if chosen == "default":
        assert e.get("config") not in ("blue", "green"), e
    else:
        assert e["config"] == chosen, e


def test_dynamic_config_no_match_no_default_is_502(dyn):
    dyn.gw.apply_text(dyn_service("nodefault", {n: s.url for n, s in dyn.ups.items()}, None))
    r = dyn.get("nodefault", "/x", headers=[("X-Route", "none")])
    assert r.status_code == 502, r.text
    assert_error_body(r.json())
    assert all(s.requests == [] for s in dyn.ups.values())
    e = dyn.gw.wait_access(lambda e: e.get("service") == "nodefault" and e.get("status") == 502)
    assert e["decision"] == "ALLOW"
    assert not e.get("config"), e
    # a matching rule on the same Service still works
    r = dyn.get("nodefault", "/x", headers=[("X-Route", "green")])
    assert r.status_code == 200, r.text
    assert r.json()["standin"] == "green"
    e = dyn.gw.wait_access(lambda e: e.get("service") == "nodefault" and e.get("status") == 200)
    assert e["config"] == "green"


def test_dynamic_config_rules_evaluated_per_request(dyn):
    dyn.gw.apply_text(dyn_service("dyn", {n: s.url for n, s in dyn.ups.items()}, dyn.ups["default"].url))
    seq = [([("X-Route", "green")], "green"), ([], "default"), ([("X-Route", "green")], "green")]
    for headers, chosen in seq:
        r = dyn.get("dyn", "/seq", headers=headers)
        assert r.status_code == 200 and r.json()["standin"] == chosen, r.text
    assert len(dyn.ups["green"].requests) == 2
    assert len(dyn.ups["default"].requests) == 1
    # lines are written when each response ends, off the request path: wait for all three
    deadline = time.monotonic() + 5
    while True:
        configs = [e.get("config") for e in dyn.gw.access_entries() if e.get("service") == "dyn"]
        if len(configs) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(configs) == 3, configs
    assert configs[0] == "green" and configs[2] == "green" and configs[1] not in ("green", "blue"), configs


# ------------------------------------------------------------------------------- extra edges
def test_hop_by_hop_headers_not_forwarded(env):
    """Headers named in the caller's Connection header, and the standard hop-by-hop ones, stay
    on the caller's connection (HTTP/1.1 to the gateway)."""
    env.gw.apply_text(svc("hop", env.up.url))
    with env.gw.http(http2=False) as h:
        r = h.get(env.gw.url("hop", "/hop"), headers=[
            ("Authorization", f"Bearer {env.tok}"), ("Connection", "keep-alive, X-Hop-Secret"),
            ("X-Hop-Secret", "hop-value-1"), ("Keep-Alive", "timeout=5"), ("X-Normal", "n")])
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    assert req.header("x-hop-secret") is None, req.headers
    assert req.header("keep-alive") is None, req.headers
    assert req.header("x-normal") == "n"


def test_repeated_client_header_replaced_once(env):
    env.gw.apply_text(svc("rep", env.up.url, """\
header:
  addRequestHeaders:
    - key: X-Team
      value: blue
"""))
    r = env.get("rep", "/r", headers=[("x-team", "red"), ("X-TEAM", "green")])
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    assert [v for k, v in req.headers if k.lower() == "x-team"] == ["blue"]


def test_encoded_path_and_query_forwarded_verbatim(env):
    env.gw.apply_text(svc("enc", env.up.url, """\
path:
  removePrefix: /api
  addPrefix: /v2
"""))
    r = env.get("enc", "/api/files/a%20b.txt?q=%2Fetc%2Fpasswd&empty=&flag")
    assert r.status_code == 200, r.text
    [req] = env.up.requests
    assert req.path == "/v2/files/a%20b.txt?q=%2Fetc%2Fpasswd&empty=&flag"


def test_cors_preflight_over_http2(cors_env):
    r = cors_env.gw.curl("-X", "OPTIONS", "--http2", "-H", "Origin: https://app.example.com",
                         "-H", "Access-Control-Request-Method: GET", cors_env.gw.url("web", "/v1/data"))
    assert r.status == 204, (r.status, r.body)
    assert r.headers.get("access-control-allow-origin") == "https://app.example.com"
    assert cors_env.up.requests == []
