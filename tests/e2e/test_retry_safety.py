"""Retries that cannot double-charge (issue #12, item 6).

A request whose bytes may have reached the upstream (the connection closed after the request
was written and before the response headers, or no headers in time) is sent again, by a
retry or by a fallback config, only when its method is idempotent or the config sets
``retry.allowNonIdempotent``. A failure that provably sent nothing (connection refused) is
retried for any method. The round-robin position and the retry budget survive a re-apply.

Every safety test runs with three clients: httpx over HTTP/1.1, curl over HTTP/2 and the
openai SDK over HTTP/2 (httpx with h2).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import httpx
import openai
import pytest
import yaml

from conftest import APP_USER, chat_body
from standin import StandIn, closed_port

CLIENTS = ["httpx-h1", "curl-h2", "openai-h2"]


@pytest.fixture
def env(gateway):
    gateway.apply_text(APP_USER, "app-user.yaml")
    cid, secret = gateway.create_oauth2("app", "app-oauth2")
    with ExitStack() as stack:
        yield gateway, gateway.token(cid, secret), stack


def service(name: str, spec: dict) -> str:
    return yaml.safe_dump({"kind": "Service", "metadata": {"name": name},
                           "spec": {"isPublic": True, **spec}}, sort_keys=False)


def call(gw, svc: str, tok: str, client: str, method: str = "POST") -> tuple[int, str]:
    """One request through the gateway (POST: a chat completion, GET: the model list);
    returns the status and the HTTP version the client spoke."""
    path = "/chat/completions" if method == "POST" else "/models"
    if client == "httpx-h1":
        with gw.http(http2=False) as c:
            r = c.request(method, gw.url(svc, path), headers={"Authorization": f"Bearer {tok}"},
                          json=chat_body() if method == "POST" else None)
            return r.status_code, r.http_version
    if client == "curl-h2":
        args = ["--http2", "-H", f"Authorization: Bearer {tok}"]
        if method == "POST":
            args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(chat_body())]
        r = gw.curl("-v", *args, gw.url(svc, path))
        return r.status, "HTTP/2" if "< HTTP/2 " in r.stderr else r.stderr[-300:]
    assert client == "openai-h2"
    http = httpx.Client(verify=gw.tls(), timeout=15, http2=True)
    sdk = openai.OpenAI(api_key=tok, base_url=gw.url(svc), http_client=http, max_retries=0)
    try:
        if method == "POST":
            raw = sdk.chat.completions.with_raw_response.create(**chat_body())
        else:
            raw = sdk.models.with_raw_response.list()
        return raw.status_code, raw.http_response.http_version
    except openai.APIStatusError as e:
        return e.status_code, e.response.http_version
    finally:
        http.close()


def entries(gw, svc: str, n: int = 1) -> list[dict]:
    found: list[dict] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [e for e in gw.access_entries() if e.get("service") == svc]
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{len(found)} access entries for {svc}: {found}")


def expect_version(client: str, version: str) -> None:
    assert version == ("HTTP/1.1" if client == "httpx-h1" else "HTTP/2"), (client, version)


# ------------------------------------------------------------------------- maybe delivered
@pytest.mark.parametrize("client", CLIENTS)
def test_post_closed_before_the_answer_is_never_sent_again(env, client):
    """The upstream reads the POST and closes without answering: one try, 502, no retry on
    the same config and no fallback to the next one."""
    gw, tok, stack = env
    closing = stack.enter_context(StandIn("closing", mode="close"))
    spare = stack.enter_context(StandIn("spare"))
    gw.apply_text(service("once", {"dynamicConfig": {
        "configs": [
            {"name": "closing", "upstream": {"url": closing.url, "retry": {
                "attempts": 3, "on": ["CONNECT", "TIMEOUT", "STATUS_5XX"], "backoff": "10ms"}}},
            {"name": "spare", "upstream": {"url": spare.url}},
        ],
        "rules": [{"condition": {"matchAny": True}, "configNames": ["closing", "spare"]}],
    }}))
    status, version = call(gw, "once", tok, client)
    expect_version(client, version)
    assert status == 502
    time.sleep(0.3)  # a retry would already be on its way
    assert len(closing.requests) == 1, "the upstream saw the POST exactly once"
    assert closing.requests[0].json()["messages"] == chat_body()["messages"]
    assert spare.requests == [], "no fallback for a request that may have been delivered"
    e = entries(gw, "once")[0]
    assert e["status"] == 502
    assert "allowNonIdempotent" in e["error"], e


@pytest.mark.parametrize("client", CLIENTS)
def test_get_closed_before_the_answer_is_retried(env, client):
    gw, tok, stack = env
    flaky = stack.enter_context(StandIn("flaky", close_first=1))
    gw.apply_text(service("getretry", {"config": {"upstream": {
        "url": flaky.url, "retry": {"attempts": 2, "on": ["CONNECT"], "backoff": "10ms"}}}}))
    status, version = call(gw, "getretry", tok, client, "GET")
    expect_version(client, version)
    assert status == 200
    assert [r.method for r in flaky.requests] == ["GET", "GET"]
    assert entries(gw, "getretry")[0]["attempts"] == ["default:connect", "default:200"]


@pytest.mark.parametrize("client", CLIENTS)
def test_post_is_sent_again_when_the_service_allows_it(env, client):
    gw, tok, stack = env
    flaky = stack.enter_context(StandIn("flaky", close_first=1))
    gw.apply_text(service("optin", {"config": {"upstream": {"url": flaky.url, "retry": {
        "attempts": 2, "on": ["CONNECT"], "backoff": "10ms", "allowNonIdempotent": True}}}}))
    status, version = call(gw, "optin", tok, client)
    expect_version(client, version)
    assert status == 200
    assert len(flaky.requests) == 2
    assert flaky.requests[0].body == flaky.requests[1].body, "the same body, replayed"
    assert entries(gw, "optin")[0]["attempts"] == ["default:connect", "default:200"]


def test_post_timed_out_waiting_for_headers_is_not_sent_again(env):
    gw, tok, stack = env
    slow = stack.enter_context(StandIn("slow", mode="slow", slow_seconds=3))
    fast = stack.enter_context(StandIn("fast"))
    gw.apply_text(service("slowpost", {"dynamicConfig": {
        "configs": [
            {"name": "slow", "upstream": {"url": slow.url, "timeout": {"responseHeader": "300ms"},
                                          "retry": {"attempts": 2, "on": ["TIMEOUT"], "backoff": "10ms"}}},
            {"name": "fast", "upstream": {"url": fast.url}},
        ],
        "rules": [{"condition": {"matchAny": True}, "configNames": ["slow", "fast"]}],
    }}))
    status, _ = call(gw, "slowpost", tok, "httpx-h1")
    assert status == 504
    assert len(slow.requests) == 1 and fast.requests == []
    e = entries(gw, "slowpost")[0]
    assert e["status"] == 504 and "allowNonIdempotent" in e["error"], e


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_from_upstream_are_resent_only_for_idempotent_methods(env, status):
    """A 502/504 comes from an intermediary that may have passed the request on: a POST gets
    that answer as is after one try, a GET is retried."""
    gw, tok, stack = env
    edge = stack.enter_context(StandIn("edge", fail_first=100, fail_status=status))
    gw.apply_text(service("edge", {"config": {"upstream": {"url": edge.url, "retry": {
        "attempts": 3, "on": ["STATUS_5XX"], "backoff": "10ms"}}}}))
    got, _ = call(gw, "edge", tok, "httpx-h1", "POST")
    assert got == status, "the upstream's own answer"
    assert len(edge.requests) == 1
    got, _ = call(gw, "edge", tok, "httpx-h1", "GET")
    assert got == status
    assert [r.method for r in edge.requests] == ["POST", "GET", "GET", "GET"]


# ------------------------------------------------------------------------------ not sent
@pytest.mark.parametrize("client", CLIENTS)
def test_post_to_a_refusing_endpoint_is_retried_and_falls_back(env, client):
    """Connection refused: nothing was sent, so a POST moves on to the next endpoint (retry)
    and to the next config (fallback)."""
    gw, tok, stack = env
    good = stack.enter_context(StandIn("good"))
    down = f"http://127.0.0.1:{closed_port()}"
    gw.apply_text(service("refused", {"dynamicConfig": {
        "configs": [
            {"name": "lb", "upstream": {"loadBalance": {"endpoints": [{"url": down}, {"url": good.url}]},
                                        "retry": {"attempts": 2, "on": ["CONNECT"], "backoff": "10ms"}}},
            {"name": "gone", "upstream": {"url": down}},
        ],
        "rules": [{"condition": {"matchAny": True}, "configNames": ["gone", "lb"]}],
    }}))
    status, version = call(gw, "refused", tok, client)
    expect_version(client, version)
    assert status == 200
    assert len(good.requests) == 1
    assert entries(gw, "refused")[0]["attempts"] == ["gone:connect", "lb[0]:connect", "lb[1]:200"]


# -------------------------------------------------------------- state survives a re-apply
def answered_by(gw, svc: str, tok: str) -> str:
    with gw.http() as c:
        r = c.post(gw.url(svc, "/chat/completions"), json=chat_body(),
                   headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200, r.text
    return r.headers["x-standin"]


def test_round_robin_continues_across_apply(env):
    gw, tok, stack = env
    e0 = stack.enter_context(StandIn("e0"))
    e1 = stack.enter_context(StandIn("e1"))

    def spec(connect: str) -> str:
        return service("rot", {"config": {"upstream": {
            "loadBalance": {"policy": "ROUND_ROBIN", "endpoints": [{"url": e0.url}, {"url": e1.url}]},
            "timeout": {"connect": connect}}}})

    gw.apply_text(spec("5s"))
    assert answered_by(gw, "rot", tok) == "e0"
    out = gw.apply_text(spec("6s")).stdout
    assert "updated" in out, out
    assert answered_by(gw, "rot", tok) == "e1", "a changed re-apply continues the rotation"
    assert "unchanged" in gw.apply_text(spec("6s")).stdout
    assert answered_by(gw, "rot", tok) == "e0"
    gw.create_secret("unrelated", "x")  # any change rebuilds the compiled view
    assert answered_by(gw, "rot", tok) == "e1"
    gw.ctl("delete", "service", "rot")
    gw.apply_text(spec("6s"))
    assert answered_by(gw, "rot", tok) == "e0", "a deleted Service starts afresh"


def test_retry_budget_is_not_refilled_by_apply(env):
    gw, tok, stack = env
    busy = stack.enter_context(StandIn("busy", fail_first=100, fail_status=503))

    def spec(backoff: str) -> str:
        return service("budget", {"config": {"upstream": {"url": busy.url, "retry": {
            "attempts": 2, "on": ["STATUS_5XX"], "backoff": backoff,
            "budget": {"percent": 0, "minRetries": 1, "window": "1m"}}}}})

    gw.apply_text(spec("10ms"))
    with gw.http() as c:
        def one() -> int:
            return c.post(gw.url("budget", "/chat/completions"), json=chat_body(),
                          headers={"Authorization": f"Bearer {tok}"}).status_code

        assert one() == 503
        assert len(busy.requests) == 2, "the one retry the budget allows"
        assert "updated" in gw.apply_text(spec("20ms")).stdout
        assert one() == 503
        assert len(busy.requests) == 3, "the budget spent before the apply stays spent"
