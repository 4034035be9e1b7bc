"""Hot reload (an applied change governs the next request within a second, no restart) and the
JSON access log (model and usage of a streamed request, decision and reason of a denial)."""

import time
from contextlib import ExitStack

import pytest

from conftest import KEYS, assert_error_body, chat_body
from standin import StandIn

ACCESS_KEYS = {"time", "requestId", "user", "session", "service", "config", "decision", "reason", "method", "path",
               "status", "bytesIn", "bytesOut", "latencyMs", "model", "usage"}


def svc_inline(name, url, model):
    return f"""\
kind: Service
metadata:
  name: {name}
spec:
  mode: HTTP
  isPublic: true
  config:
    upstream:
      url: {url}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                match: ctx.request.http.bodyMap.model == "{model}"
"""


def svc_named(name, url, policy):
    return f"""\
kind: Service
metadata:
  name: {name}
spec:
  mode: HTTP
  isPublic: true
  config:
    upstream:
      url: {url}
  authorization:
    policies: [{policy}]
"""


def policy(name, model):
    return f"""\
kind: Policy
metadata:
  name: {name}
spec:
  rules:
    - effect: ALLOW
      condition:
        match: ctx.request.http.bodyMap.model == "{model}"
"""


class Env:
    def __init__(self, gw, up, up2):
        self.gw, self.up, self.up2 = gw, up, up2
        gw.apply_text("kind: User\nmetadata:\n  name: reloader\nspec:\n  type: WORKLOAD\n")
        self.tok = gw.token(*gw.create_oauth2("reloader", "reloader-oauth2"))

    def status(self, service, model):
        with self.gw.http() as h:
            return h.post(self.gw.url(service, "/chat/completions"), json=chat_body(model),
                          headers={"Authorization": f"Bearer {self.tok}"})


@pytest.fixture
def env(gateway):
    with ExitStack() as stack:
        up = stack.enter_context(StandIn("first"))
        up2 = stack.enter_context(StandIn("second"))
        yield Env(gateway, up, up2)


def follows_within(env, service, expect: dict[str, int], limit=1.0):
    """Poll (bounded by ``limit`` seconds) until every model gets its expected status."""
    deadline = time.monotonic() + limit
    while True:
        got = {m: env.status(service, m).status_code for m in expect}
        if got == expect:
            return
        assert time.monotonic() < deadline, f"not reloaded within {limit}s: {got} != {expect}"
        time.sleep(0.05)


def test_inline_policy_change_applies_without_restart(env):
    pid = env.gw.proc.pid
    env.gw.apply_text(svc_inline("reload", env.up.url, "model-a"))
    follows_within(env, "reload", {"model-a": 200, "model-b": 403})
    r = env.gw.apply_text(svc_inline("reload", env.up.url, "model-b"))
    assert "Service/reload updated" in r.stdout
    follows_within(env, "reload", {"model-a": 403, "model-b": 200})
    assert env.gw.proc.pid == pid and env.gw.proc.poll() is None


def test_named_policy_change_applies(env):
    env.gw.apply_text(policy("reload-pol", "model-a") + "---\n" + svc_named("reload2", env.up.url, "reload-pol"))
    follows_within(env, "reload2", {"model-a": 200, "model-b": 403})
    r = env.gw.apply_text(policy("reload-pol", "model-b"))
    assert "Policy/reload-pol updated" in r.stdout
    follows_within(env, "reload2", {"model-a": 403, "model-b": 200})


def test_policy_in_use_cannot_be_deleted_and_unreferencing_denies(env):
    env.gw.apply_text(policy("gone-pol", "model-a") + "---\n" + svc_named("reload3", env.up.url, "gone-pol"))
    follows_within(env, "reload3", {"model-a": 200})
    r = env.gw.ctl("delete", "policy", "gone-pol", check=False)
    assert r.returncode == 1
    assert "Service/reload3" in r.stderr, r.stderr
    assert "gone-pol" in env.gw.names("policies")
    follows_within(env, "reload3", {"model-a": 200})
    # Dropping the reference leaves the Service with no rule: deny by default.
    env.gw.apply_text(svc_named("reload3", env.up.url, "gone-pol").replace("policies: [gone-pol]", "policies: []"))
    follows_within(env, "reload3", {"model-a": 403})
    env.gw.ctl("delete", "policy", "gone-pol")
    assert "gone-pol" not in env.gw.names("policies")


def test_upstream_change_applies(env):
    env.gw.apply_text(svc_inline("moving", env.up.url, "m"))
    assert env.status("moving", "m").json()["choices"][0]["message"]["content"] == "Hello from first!"
    env.gw.apply_text(svc_inline("moving", env.up2.url, "m"))
    deadline = time.monotonic() + 1.0
    while env.status("moving", "m").json()["choices"][0]["message"]["content"] != "Hello from second!":
        assert time.monotonic() < deadline, "upstream change not followed within 1 s"
        time.sleep(0.05)


def test_service_made_private_is_404(env):
    env.gw.apply_text(svc_inline("flip", env.up.url, "m"))
    follows_within(env, "flip", {"m": 200})
    env.gw.apply_text(svc_inline("flip", env.up.url, "m").replace("isPublic: true", "isPublic: false"))
    follows_within(env, "flip", {"m": 404})


# ---------------------------------------------------------------------------------------- access log
def test_access_log_streamed_allowed_request(ai):
    tok = ai.token()
    stream = ai.gw.openai("total-ai", tok).chat.completions.create(
        **chat_body("gpt-4o-mini"), stream=True, stream_options={"include_usage": True})
    for _ in stream:
        pass
    e = ai.gw.wait_access(lambda e: e.get("service") == "total-ai" and e.get("status") == 200)
    assert ACCESS_KEYS <= set(e), f"missing keys {ACCESS_KEYS - set(e)}: {e}"
    assert e["decision"] == "ALLOW"
    assert e["user"] == "app"
    assert e["config"] == "openai"
    assert e["method"] == "POST"
    assert e["path"].endswith("/chat/completions")
    assert e["model"] == "gpt-4o-mini"
    assert e["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert isinstance(e["requestId"], str) and e["requestId"]
    assert isinstance(e["session"], str) and e["session"]
    assert isinstance(e["bytesIn"], int) and e["bytesIn"] > 0
    assert isinstance(e["bytesOut"], int) and e["bytesOut"] > 0
    assert isinstance(e["latencyMs"], (int, float)) and e["latencyMs"] >= 0
    assert isinstance(e["time"], str) and e["time"]


def test_access_log_plain_request_usage(ai):
    ai.gw.openai("gemini", ai.token()).chat.completions.create(**chat_body("gemini-2.0-flash"))
    e = ai.gw.wait_access(lambda e: e.get("service") == "gemini" and e.get("status") == 200)
    assert e["model"] == "gemini-2.0-flash"
    assert e["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert e["decision"] == "ALLOW"


def test_access_log_denied_request(env):
    env.gw.apply_text(svc_inline("guarded", env.up.url, "model-a"))
    r = env.status("guarded", "model-b")
    assert r.status_code == 403
    err = assert_error_body(r.json(), request_id=True)
    e = env.gw.wait_access(lambda e: e.get("service") == "guarded" and e.get("status") == 403)
    assert ACCESS_KEYS - {"usage", "config"} <= set(e), e
    assert e["decision"] == "DENY"
    assert isinstance(e["reason"], str) and e["reason"]
    assert e["requestId"] == err["request_id"]
    assert e["user"] == "reloader"
    assert e["model"] == "model-b"
    assert env.up.requests == []


def test_access_log_unauthenticated_request(ai):
    with ai.gw.http() as h:
        assert h.post(ai.gw.url("gemini", "/chat/completions"), json=chat_body()).status_code == 401
    e = ai.gw.wait_access(lambda e: e.get("service") == "gemini" and e.get("status") == 401)
    assert e["decision"] == "DENY"
    assert e["reason"]


def test_access_log_holds_no_secrets(ai):
    tok = ai.token()
    for model in ("gpt-4o-mini", "deepseek-chat", "x"):
        ai.gw.openai("total-ai", tok).chat.completions.create(**chat_body(model))
    ai.gw.wait_access(lambda e: e.get("model") == "x")
    text = ai.gw.access_log.read_text()
    assert tok not in text
    assert ai.client_secret not in text
    for k in KEYS.values():
        assert k not in text
    assert tok not in ai.gw.stderr()
    assert ai.client_secret not in ai.gw.stderr()
