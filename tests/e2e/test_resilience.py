"""Upstream resilience: fallback between configs (configNames), retries on the next endpoint,
load balancing (round robin, least busy), per-config timeouts and upstream OAuth2 client
credentials. Stand-ins fail on purpose (StandIn modes "500", "429", "close", "slow",
``fail_first``)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from conftest import APP_USER, chat_body
from standin import StandIn, closed_port


@pytest.fixture
def env(gateway):
    gateway.apply_text(APP_USER, "app-user.yaml")
    cid, secret = gateway.create_oauth2("app", "app-oauth2")
    with ExitStack() as stack:
        yield gateway, gateway.token(cid, secret), stack


def service(name: str, spec: dict) -> str:
    return yaml.safe_dump({"kind": "Service", "metadata": {"name": name},
                           "spec": {"isPublic": True, **spec}}, sort_keys=False)


def post(gw, svc, token, body=None):
    with gw.http() as c:
        return c.post(gw.url(svc, "/chat/completions"), json=body or chat_body(),
                      headers={"Authorization": f"Bearer {token}"})


def entry_for(gw, svc, n=1):
    entries = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = [e for e in gw.access_entries() if e.get("service") == svc]
        if len(entries) >= n:
            return entries
        time.sleep(0.05)
    raise AssertionError(f"{len(entries)} access entries for {svc}: {entries}")


# ------------------------------------------------------------------------------------ fallback
@pytest.mark.parametrize("failure", ["500", "429", "close", "down"])
def test_fallback_answers_with_the_next_config(env, failure):
    gw, tok, stack = env
    if failure == "down":
        primary_url, primary = f"http://127.0.0.1:{closed_port()}", None
    else:
        primary = stack.enter_context(StandIn("openai", mode=failure))
        primary_url = primary.url
    secondary = stack.enter_context(StandIn("gemini", api_key="gm-key", prefix="/v1beta/openai"))
    gw.create_secret("gm-key", "gm-key")
    upstream = {"url": primary_url}
    if failure == "close":
        # the POST may have reached the closing upstream: only an explicit opt-in sends it on
        # (test_retry_safety.py pins that without it there is no fallback)
        upstream["retry"] = {"allowNonIdempotent": True}
    gw.apply_text(service("fb", {"dynamicConfig": {
        "configs": [
            {"name": "openai", "upstream": upstream},
            {"name": "gemini", "upstream": {"url": secondary.url},
             "http": {"path": {"addPrefix": "/v1beta/openai"}, "auth": {"bearer": {"fromSecret": "gm-key"}}}},
        ],
        "rules": [{"condition": {"matchAny": True}, "configNames": ["openai", "gemini"]}],
    }}))
    client = gw.openai("fb", tok)  # max_retries=0: any error would raise
    out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "Hello from gemini!"
    if primary is not None:
        assert len(primary.requests) == 1
    assert secondary.requests[0].path == "/v1beta/openai/chat/completions"
    assert secondary.requests[0].json()["model"] == "gpt-4o-mini", "the body was replayed intact"
    e = entry_for(gw, "fb")[0]
    assert e["status"] == 200 and e["config"] == "gemini"
    first = {"500": "openai:500", "429": "openai:429", "close": "openai:connect", "down": "openai:connect"}
    assert e["attempts"] == [first[failure], "gemini:200"]


def test_all_configs_failing_returns_the_last_answer(env):
    gw, tok, stack = env
    a = stack.enter_context(StandIn("a", mode="500"))
    b = stack.enter_context(StandIn("b", mode="429"))
    gw.apply_text(service("allbad", {"dynamicConfig": {
        "configs": [{"name": "a", "upstream": {"url": a.url}}, {"name": "b", "upstream": {"url": b.url}}],
        "rules": [{"condition": {"matchAny": True}, "configNames": ["a", "b"]}],
    }}))
    r = post(gw, "allbad", tok)
    assert r.status_code == 429
    e = entry_for(gw, "allbad")[0]
    assert e["config"] == "b" and e["attempts"] == ["a:500", "b:429"]


# ------------------------------------------------------------------------------ retry and balance
def test_retry_on_5xx_reaches_the_healthy_endpoint(env):
    gw, tok, stack = env
    bad = stack.enter_context(StandIn("bad", mode="500"))
    good = stack.enter_context(StandIn("good"))
    gw.apply_text(service("rt", {"config": {"upstream": {
        "loadBalance": {"endpoints": [{"url": bad.url}, {"url": good.url}]},
        "retry": {"attempts": 2, "on": ["STATUS_5XX"], "backoff": "10ms",
                  "budget": {"percent": 100}},
    }}}))
    for _ in range(6):
        r = post(gw, "rt", tok)
        assert r.status_code == 200, r.text
    assert len(good.requests) == 6
    assert len(bad.requests) == 3, "round robin sends every other first try to the bad endpoint"
    retried = [e for e in entry_for(gw, "rt", 6) if e.get("attempts")]
    assert len(retried) == 3 and retried[0]["attempts"] == ["default[0]:500", "default[1]:200"]


def test_retry_same_endpoint_until_it_recovers(env):
    gw, tok, stack = env
    flaky = stack.enter_context(StandIn("flaky", fail_first=2, fail_status=503))
    gw.apply_text(service("flaky", {"config": {"upstream": {
        "url": flaky.url, "retry": {"attempts": 3, "backoff": "20ms"}}}}))
    t0 = time.monotonic()
    r = post(gw, "flaky", tok)
    assert r.status_code == 200, r.text
    assert len(flaky.requests) == 3
    assert time.monotonic() - t0 < 3
    assert entry_for(gw, "flaky")[0]["attempts"] == ["default:503", "default:503", "default:200"]


def test_no_retry_section_means_a_single_try(env):
    gw, tok, stack = env
    flaky = stack.enter_context(StandIn("flaky", fail_first=1))
    gw.apply_text(service("once", {"config": {"upstream": {"url": flaky.url}}}))
    assert post(gw, "once", tok).status_code == 500
    assert len(flaky.requests) == 1


def test_round_robin_spreads_requests_with_per_endpoint_keys(env):
    gw, tok, stack = env
    ups = [stack.enter_context(StandIn(f"e{i}", api_key=f"key-{i}")) for i in range(3)]
    for i in range(3):
        gw.create_secret(f"key-{i}", f"key-{i}")
    gw.apply_text(service("rr", {"config": {"upstream": {"loadBalance": {
        "policy": "ROUND_ROBIN",
        "endpoints": [{"url": u.url, "auth": {"bearer": {"fromSecret": f"key-{i}"}}} for i, u in enumerate(ups)],
    }}}}))
    for _ in range(9):
        r = post(gw, "rr", tok)
        assert r.status_code == 200, r.text
    assert [len(u.requests) for u in ups] == [3, 3, 3]


def test_least_busy_prefers_the_idle_endpoint(env):
    gw, tok, stack = env
    slow = stack.enter_context(StandIn("slow", request_delay=2.0))
    fast = stack.enter_context(StandIn("fast"))
    gw.apply_text(service("lb", {"config": {"upstream": {"loadBalance": {
        "policy": "LEAST_BUSY", "endpoints": [{"url": slow.url}, {"url": fast.url}]}}}}))
    statuses = []

    def one():
        statuses.append(post(gw, "lb", tok).status_code)

    threads = []
    for _ in range(6):
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
        time.sleep(0.15)
    for t in threads:
        t.join(20)
    assert statuses == [200] * 6
    assert len(slow.requests) <= 1 and len(fast.requests) >= 5, (len(slow.requests), len(fast.requests))


# ------------------------------------------------------------------------------------- timeouts
def test_short_response_header_timeout_gives_504_quickly(env):
    gw, tok, stack = env
    slow = stack.enter_context(StandIn("slow", mode="slow", slow_seconds=5))
    gw.apply_text(service("slow", {"config": {"upstream": {
        "url": slow.url, "timeout": {"connect": "2s", "responseHeader": "300ms"}}}}))
    t0 = time.monotonic()
    r = post(gw, "slow", tok)
    assert r.status_code == 504, r.text
    assert time.monotonic() - t0 < 2
    # the gateway is not stuck: a fast service still answers at once
    fast = stack.enter_context(StandIn("fast"))
    gw.apply_text(service("fast", {"config": {"upstream": {"url": fast.url}}}))
    assert post(gw, "fast", tok).status_code == 200


def test_timeout_falls_back_to_the_next_config(env):
    gw, tok, stack = env
    slow = stack.enter_context(StandIn("slow", mode="slow", slow_seconds=5))
    fast = stack.enter_context(StandIn("fast"))
    # a POST that timed out waiting for headers may be running upstream: only an explicit
    # opt-in sends it on (test_retry_safety.py pins that without it there is no fallback)
    gw.apply_text(service("tfb", {"dynamicConfig": {
        "configs": [{"name": "slow", "upstream": {"url": slow.url, "timeout": {"responseHeader": "300ms"},
                                                  "retry": {"allowNonIdempotent": True}}},
                    {"name": "fast", "upstream": {"url": fast.url}}],
        "rules": [{"condition": {"matchAny": True}, "configNames": ["slow", "fast"]}],
    }}))
    r = post(gw, "tfb", tok)
    assert r.status_code == 200
    assert entry_for(gw, "tfb")[0]["attempts"] == ["slow:timeout", "fast:200"]


# ---------------------------------------------------------------------------------- validation
def test_url_and_load_balance_are_exclusive(env):
    gw, _, _ = env
    r = gw.apply_text(service("both", {"config": {"upstream": {
        "url": "http://a", "loadBalance": {"endpoints": [{"url": "http://b"}]},
        "retry": {"attempts": 9}}}}), check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "spec.config.upstream.url" in out and "spec.config.upstream.retry.attempts" in out, out


# ------------------------------------------------------------------------------ upstream OAuth2
class TokenServer:
    """A client-credentials token endpoint counting its fetches."""

    def __init__(self, expires_in: int = 3600, status: int = 200):
        self.expires_in, self.status = expires_in, status
        self.fetches: list[dict] = []
        owner = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                owner.fetches.append(form)
                body = json.dumps({"access_token": f"tok-{len(owner.fetches)}", "token_type": "Bearer",
                                   "expires_in": owner.expires_in} if owner.status == 200 else
                                  {"error": "invalid_client"}).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def oauth_service(gw, up, ts):
    gw.create_secret("idp-secret", "s3cret")
    gw.apply_text(service("oa", {"config": {"upstream": {"url": up.url}, "http": {"auth": {
        "oauth2ClientCredentials": {"tokenURL": ts.url, "clientID": "gw-client",
                                    "clientSecret": {"fromSecret": "idp-secret"}, "scopes": ["llm.read", "llm.write"]},
    }}}}))


def test_upstream_oauth2_fetches_once_and_refetches_after_expiry(env):
    gw, tok, stack = env
    ts = TokenServer(expires_in=2)
    stack.callback(ts.close)
    up = stack.enter_context(StandIn("up"))
    oauth_service(gw, up, ts)
    threads = [threading.Thread(target=lambda: post(gw, "oa", tok)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(ts.fetches) == 1, ts.fetches
    assert ts.fetches[0] == {"grant_type": "client_credentials", "scope": "llm.read llm.write",
                             "client_id": "gw-client", "client_secret": "s3cret"}
    assert [r.header("authorization") for r in up.requests] == ["Bearer tok-1"] * 8
    assert not up.saw_value(tok), "the caller's token never reaches the upstream"
    time.sleep(1.8)  # past 80% of the 2 s lifetime
    assert post(gw, "oa", tok).status_code == 200
    assert len(ts.fetches) == 2
    assert up.requests[-1].header("authorization") == "Bearer tok-2"


def test_upstream_oauth2_token_failure_is_502(env):
    gw, tok, stack = env
    ts = TokenServer(status=401)
    stack.callback(ts.close)
    up = stack.enter_context(StandIn("up"))
    oauth_service(gw, up, ts)
    r = post(gw, "oa", tok)
    assert r.status_code == 502
    assert "s3cret" not in r.text
    assert up.requests == []
    e = entry_for(gw, "oa")[0]
    assert "token endpoint" in e["error"] and "401" in e["error"], e


# ------------------------------------------------------------------------------ body replay
@pytest.mark.parametrize("size,expect", [(200, 200), (5000, 500)])
def test_bodies_over_max_body_are_not_retried(start_gateway, size, expect):
    gw = start_gateway(max_body=2000)
    gw.apply_text(APP_USER, "app-user.yaml")
    tok = gw.token(*gw.create_oauth2("app", "app-oauth2"))
    with StandIn("flaky", fail_first=1) as flaky:
        gw.apply_text(service("big", {"config": {"upstream": {
            "url": flaky.url, "retry": {"attempts": 2, "backoff": "10ms"}}}}))
        body = chat_body()
        body["messages"][0]["content"] = "x" * size
        r = post(gw, "big", tok, body)
        assert r.status_code == expect, r.text
        assert len(flaky.requests) == (2 if expect == 200 else 1)
        assert flaky.requests[-1].json() == body, "the body arrived intact"


def test_spent_retry_budget_returns_the_upstream_answer(env):
    gw, tok, stack = env
    flaky = stack.enter_context(StandIn("flaky", fail_first=1, fail_status=503))
    gw.apply_text(service("nobudget", {"config": {"upstream": {
        "url": flaky.url,
        "retry": {"attempts": 3, "backoff": "10ms", "budget": {"percent": 0, "minRetries": 0}}}}}))
    r = post(gw, "nobudget", tok)
    assert r.status_code == 503, "the upstream's own answer, not a gateway 502"
    assert len(flaky.requests) == 1
