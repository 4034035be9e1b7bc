"""Rate limits and budgets (``spec.limits``) through the real gateway and the stand-in, which
reports usage 11/7/18 on every completion: refusals with 429 + Retry-After + an OpenAI-shaped
error and no upstream call, token rates settled from reported usage, a budget under 50
concurrent requests, counters surviving a restart, Group and User limits."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import assert_error_body
from standin import StandIn

USAGE_TOTAL = 18


def wait_away_from_boundary(period: int, margin: float = 8.0) -> None:
    """Sleeps past the end of the current fixed window when fewer than ``margin`` seconds
    remain, so a test's requests all land in one window."""
    left = period - (time.time() % period)
    if left < margin:
        time.sleep(left + 0.2)


SERVICE = """\
kind: Service
metadata:
  name: llm
spec:
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
                matchAny: true
{limits}"""


def limits_yaml(limits: str, indent: int = 2) -> str:
    if not limits:
        return ""
    pad = " " * indent
    return f"{pad}limits:\n" + "".join(f"{pad}  {line}\n" for line in limits.strip().splitlines())


class Env:
    def __init__(self, gw, up: StandIn):
        self.gw, self.up = gw, up
        self.tokens: dict[str, str] = {}

    def service(self, limits: str = "") -> None:
        self.gw.apply_text(SERVICE.format(url=self.up.url, limits=limits_yaml(limits)))

    def user(self, name: str, groups: list[str] | None = None, limits: str = "") -> None:
        text = f"kind: User\nmetadata:\n  name: {name}\nspec:\n  type: WORKLOAD\n  groups: {groups or []}\n"
        self.gw.apply_text(text + limits_yaml(limits))
        cid, secret = self.gw.create_oauth2(name, f"{name}-oauth2")
        self.tokens[name] = self.gw.token(cid, secret)

    def group(self, name: str, limits: str = "") -> None:
        self.gw.apply_text(f"kind: Group\nmetadata:\n  name: {name}\nspec:\n" + (limits_yaml(limits) or "  {}\n"))

    def chat(self, user: str, **extra):
        body = {"model": "m", "messages": [{"role": "user", "content": "message 0"}], **extra}
        with self.gw.http() as h:
            return h.post(self.gw.url("llm", "/v1/chat/completions"), json=body,
                          headers={"Authorization": f"Bearer {self.tokens[user]}"})


@pytest.fixture
def env(gateway):
    with StandIn("llm", api_key=None, prefix="") as up:
        yield Env(gateway, up)


def assert_limited(r, *, error_type: str = "rate_limit_error", max_retry: int = 3600) -> dict:
    assert r.status_code == 429, r.text
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= max_retry, retry
    err = assert_error_body(r.json())
    assert err["type"] == error_type, err
    return err


def test_requests_per_minute_refuses_exactly_the_next_request(env):
    env.group("team")
    env.service("- {name: rpm, requests: 3, per: 1m}")
    env.user("app")
    wait_away_from_boundary(60)
    for _ in range(3):
        assert env.chat("app").status_code == 200
    r = env.chat("app")
    err = assert_limited(r, max_retry=60)
    assert err["code"] == "rate_limit_exceeded"
    assert "Service/llm/rpm" in err["message"]
    assert len(env.up.requests) == 3, "the refused request must not reach the upstream"
    entry = env.gw.wait_access(lambda e: e.get("status") == 429)
    assert entry["reason"] == "limit Service/llm/rpm"
    assert entry["user"] == "app"


def test_tokens_per_hour_refuses_once_usage_crosses_it(env):
    # each request reserves 20 (max_tokens 10 + 3 for the prompt text + 7 chat framing) and
    # settles at 18: 0 -> 18 -> 36 -> 54; the fourth (54 + 20 > 60) is refused
    env.service("- {name: tph, tokens: 60, per: 1h}")
    env.user("app")
    wait_away_from_boundary(3600)
    for _ in range(3):
        r = env.chat("app", max_tokens=10)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["total_tokens"] == USAGE_TOTAL
    err = assert_limited(env.chat("app", max_tokens=10))
    assert "tokens" in err["message"]
    assert len(env.up.requests) == 3


def test_budget_holds_under_50_concurrent_requests(env):
    budget = 100
    env.service(f"- {{name: monthly, tokens: {budget}, per: month, by: service}}")
    env.user("app")
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: env.chat("app", max_tokens=10), range(50)))
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert ok, "at least one request fits the budget"
    assert len(ok) * USAGE_TOTAL <= budget
    for r in refused:
        err = assert_limited(r, error_type="insufficient_quota", max_retry=31 * 86400)
        assert err["code"] == "insufficient_quota"
    assert len(env.up.requests) == len(ok)
    # once settled, the budget is what it is: the next request is refused too
    time.sleep(0.2)
    assert_limited(env.chat("app", max_tokens=10), error_type="insufficient_quota", max_retry=31 * 86400)


def test_counters_survive_a_restart(env):
    env.service("- {name: rph, requests: 2, per: 1h}\n- {name: tph, tokens: 1000, per: 1h}")
    env.user("app")
    wait_away_from_boundary(3600)
    assert env.chat("app", max_tokens=10).status_code == 200
    assert env.chat("app", max_tokens=10).status_code == 200
    env.gw.stop()
    env.gw.serve()
    err = assert_limited(env.chat("app", max_tokens=10))
    assert "Service/llm/rph" in err["message"]
    assert len(env.up.requests) == 2


def test_group_limit_is_shared_by_its_members(env):
    env.group("team", "- {name: shared, requests: 3, per: 1h, by: group}")
    env.service()
    env.user("u1", ["team"])
    env.user("u2", ["team"])
    env.user("outsider")
    wait_away_from_boundary(3600)
    assert env.chat("u1").status_code == 200
    assert env.chat("u2").status_code == 200
    assert env.chat("u1").status_code == 200
    err = assert_limited(env.chat("u2"))
    assert "Group/team/shared" in err["message"]
    assert_limited(env.chat("u1"))
    assert env.chat("outsider").status_code == 200


def test_user_limit_does_not_affect_another_user(env):
    env.service()
    env.user("limited", limits="- {name: one, requests: 1, per: 1h}")
    env.user("free")
    wait_away_from_boundary(3600)
    assert env.chat("limited").status_code == 200
    err = assert_limited(env.chat("limited"))
    assert "User/limited/one" in err["message"]
    for _ in range(3):
        assert env.chat("free").status_code == 200


def test_invalid_limits_are_refused_with_field_paths(env):
    r = env.gw.apply_text(SERVICE.format(url=env.up.url, limits=limits_yaml(
        "- {name: both, requests: 1, tokens: 1, per: 1m}\n- {name: slow, requests: 1, per: 2h}")), check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "spec.limits[0]" in out, out
    assert "spec.limits[1].per" in out, out
