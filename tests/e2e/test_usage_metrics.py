"""Observability of AI traffic: token usage recorded in the store (`posternctl usage`),
estimated when a stream carries none, surviving a restart; Prometheus metrics on
--metrics-listen; recent and live request logs (`posternctl logs [-f]`)."""

from __future__ import annotations

import json
import math
import queue
import subprocess
import threading
import time
from contextlib import ExitStack

import httpx
import pytest

from conftest import chat_body, free_port, setup_ai
from standin import closed_port

METER_USER = """\
kind: User
metadata:
  name: meter
spec:
  type: WORKLOAD
  groups: [dev, ops]
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                matchAny: true
"""

DOWN_SERVICE = """\
kind: Service
metadata:
  name: down
spec:
  mode: HTTP
  isPublic: true
  config:
    upstream:
      url: http://127.0.0.1:{port}
"""

STREAM_TEXT = "Hello from gemini!"


class Metered:
    def __init__(self, ai, metrics_url: str):
        self.ai, self.gw, self.metrics_url = ai, ai.gw, metrics_url
        self.gw.apply_text(METER_USER, "meter.yaml")
        self.cid, self.secret = self.gw.create_oauth2("meter", "meter-oauth2")
        self.tok = self.gw.token(self.cid, self.secret)

    def client(self, service: str = "gemini"):
        return self.gw.openai(service, self.tok)

    def plain(self, model: str = "gemini-2.0-flash"):
        return self.client().chat.completions.create(**chat_body(model))

    def stream(self, include_usage: bool) -> str:
        extra = {"stream_options": {"include_usage": True}} if include_usage else {}
        text = ""
        for chunk in self.client().chat.completions.create(**chat_body(), stream=True, **extra):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        return text

    def usage(self, by: str, *extra: str) -> dict:
        out = self.gw.ctl("usage", "--by", by, "-o", "json", *extra).stdout
        return {i["key"]: i for i in json.loads(out)["items"]}

    def wait_usage(self, by: str, key: str, requests: int, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got = self.usage(by)
            if got.get(key, {}).get("requests") == requests:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"usage by {by}: wanted {key} x{requests}, got {got}")
            time.sleep(0.1)

    def scrape(self) -> tuple[httpx.Response, dict[str, float]]:
        r = httpx.get(self.metrics_url, timeout=5)
        samples = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return r, samples

    def wait_sample(self, name: str, value: float, timeout: float = 5.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            _, samples = self.scrape()
            if samples.get(name) == value:
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} is {samples.get(name)}, wanted {value}; samples:\n{samples}")
            time.sleep(0.05)


@pytest.fixture
def metered(start_gateway):
    port = free_port()
    gw = start_gateway(extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
    with ExitStack() as stack:
        yield Metered(setup_ai(gw, stack), f"http://127.0.0.1:{port}/metrics")


def test_usage_totals_estimates_and_restart(metered):
    m = metered
    r = m.plain()
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 7, 18)
    assert m.stream(include_usage=True) == STREAM_TEXT
    assert m.stream(include_usage=False) == STREAM_TEXT
    app = m.gw.openai("total-ai", m.ai.token()).chat.completions.create(**chat_body("gpt-4o-mini"))
    assert app.usage.total_tokens == 18

    by_user = m.wait_usage("user", "meter", 3)
    by_user = m.wait_usage("user", "app", 1)
    meter, app_row = by_user["meter"], by_user["app"]
    est_completion = math.ceil(len(STREAM_TEXT) / 4)
    assert meter["estimated"] == 1
    assert meter["completionTokens"] == 7 * 2 + est_completion
    # the estimated prompt counts "message 0" only when a policy made the gateway read the body
    assert meter["promptTokens"] in (11 * 2, 11 * 2 + math.ceil(len("message 0") / 4))
    assert meter["totalTokens"] == meter["promptTokens"] + meter["completionTokens"]
    assert {k: app_row[k] for k in ("requests", "promptTokens", "completionTokens", "totalTokens", "estimated")} \
        == {"requests": 1, "promptTokens": 11, "completionTokens": 7, "totalTokens": 18, "estimated": 0}

    by_model = m.usage("model")
    assert by_model["gpt-4o-mini"]["totalTokens"] == 18
    assert by_model["gemini-2.0-flash"]["requests"] == 3
    by_group = m.usage("group")
    assert by_group["dev"]["requests"] == 3 and by_group["ops"]["requests"] == 3
    assert by_group["dev"]["totalTokens"] == meter["totalTokens"]
    assert m.usage("service")["total-ai"]["requests"] == 1
    assert m.usage("config")["openai"]["requests"] == 1
    assert m.usage("user", "--since", "all")["meter"] == meter

    table = m.gw.ctl("usage", "--by", "user").stdout.splitlines()
    assert table[0].split() == ["KEY", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "ESTIMATED"]
    assert table[1].split()[:2] == ["meter", "3"]

    est = m.gw.wait_access(lambda e: e.get("usageEstimated") is True)
    assert est["user"] == "meter" and est["groups"] == ["dev", "ops"]
    assert est["credential"] == "meter-oauth2"
    assert est["usage"]["completion_tokens"] == est_completion
    reported = m.gw.wait_access(lambda e: e.get("user") == "app" and "usage" in e)
    assert "usageEstimated" not in reported

    m.gw.stop()
    m.gw.serve()
    after = m.usage("user")
    assert after["meter"] == meter and after["app"] == app_row


def test_usage_is_admin_only_and_validates(metered):
    m = metered
    with m.gw.http() as h:
        r = h.get(m.gw.url(None, "/api/v1/usage"), headers={"Authorization": f"Bearer {m.tok}"})
        assert r.status_code == 403
        r = h.get(m.gw.url(None, "/api/v1/logs"), headers={"Authorization": f"Bearer {m.tok}"})
        assert r.status_code == 403
    bad = m.gw.ctl("usage", "--since", "forever", check=False)
    assert bad.returncode != 0 and "since" in bad.stderr


def test_prometheus_metrics(metered):
    m = metered
    m.plain()
    with m.gw.http() as h:
        assert h.post(m.gw.url("gemini", "/chat/completions"), json=chat_body()).status_code == 401
    m.gw.apply_text(DOWN_SERVICE.format(port=closed_port()), "down.yaml")
    with m.gw.http() as h:
        r = h.post(m.gw.url("down", "/x"), json={}, headers={"Authorization": f"Bearer {m.tok}"})
        assert r.status_code == 502

    samples = m.wait_sample('postern_upstream_errors_total{service="down",config="-",kind="connect"}', 1)
    resp, samples = m.scrape()
    assert resp.status_code == 200
    assert "version=0.0.4" in resp.headers["content-type"]
    text = resp.text
    for family, kind in [("postern_requests_total", "counter"), ("postern_request_duration_seconds", "histogram"),
                         ("postern_decisions_total", "counter"), ("postern_upstream_errors_total", "counter"),
                         ("postern_tokens_total", "counter"), ("postern_active_sessions", "gauge"),
                         ("postern_tunnel_peers", "gauge"), ("postern_access_log_dropped_total", "counter")]:
        assert f"# TYPE {family} {kind}\n" in text, family
        assert f"# HELP {family} " in text, family
    assert samples['postern_requests_total{service="gemini",status="200",decision="allow"}'] == 1
    assert samples['postern_requests_total{service="gemini",status="401",decision="deny"}'] == 1
    assert samples['postern_requests_total{service="down",status="502",decision="allow"}'] == 1
    assert samples['postern_tokens_total{model="gemini-2.0-flash",type="prompt"}'] == 11
    assert samples['postern_tokens_total{model="gemini-2.0-flash",type="completion"}'] == 7
    assert samples['postern_decisions_total{decision="deny",reason="unauthenticated"}'] == 1
    assert samples['postern_request_duration_seconds_count{service="gemini"}'] == 2
    assert samples['postern_request_duration_seconds_bucket{service="gemini",le="+Inf"}'] == 2
    allow = [k for k in samples if k.startswith('postern_decisions_total{decision="allow",reason="')]
    assert allow and all("/" in k for k in allow), allow
    assert samples["postern_active_sessions"] >= 2
    assert samples["postern_tunnel_peers"] == 0
    assert samples["postern_access_log_dropped_total"] == 0
    assert samples["postern_usage_dropped_total"] == 0
    assert httpx.get(m.metrics_url.replace("/metrics", "/other"), timeout=5).status_code == 404


def _reader(proc: subprocess.Popen) -> "queue.Queue[str]":
    q: queue.Queue[str] = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_logs_tail_filters_and_follow(metered):
    m = metered
    m.plain()
    m.stream(include_usage=True)
    m.gw.openai("total-ai", m.ai.token()).chat.completions.create(**chat_body("deepseek-chat"))
    m.gw.wait_access(lambda e: e.get("model") == "deepseek-chat")
    time.sleep(0.2)

    lines = m.gw.ctl("logs", "--tail", "5").stdout.splitlines()
    assert 3 <= len(lines) <= 5
    assert any(" 200 meter gemini POST /chat/completions gemini-2.0-flash 11/7/18 ALLOW" in l for l in lines), lines
    assert any(" app total-ai " in l and "deepseek-chat" in l for l in lines), lines

    recs = [json.loads(l) for l in m.gw.ctl("logs", "--tail", "5", "-o", "json").stdout.splitlines()]
    assert {r["service"] for r in recs} >= {"gemini", "total-ai"}
    only = [json.loads(l) for l in m.gw.ctl("logs", "--user", "meter", "--service", "gemini", "-o", "json").stdout.splitlines()]
    assert len(only) == 2 and all(r["user"] == "meter" and r["service"] == "gemini" for r in only)
    assert m.gw.ctl("logs", "--user", "nobody").stdout == ""

    proc = subprocess.Popen([m.gw.bin("posternctl"), "logs", "-f", "--tail", "1", "--service", "gemini"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=m.gw.env)
    try:
        q = _reader(proc)
        first = q.get(timeout=10)  # the tail line: the follow stream is attached
        assert "gemini" in first
        m.client().chat.completions.create(**chat_body("gemini-1.5-pro"))
        done = time.monotonic()
        line = q.get(timeout=5)
        assert time.monotonic() - done < 1.0, "followed line arrived late"
        assert "gemini-1.5-pro" in line and " meter gemini POST " in line
        assert proc.poll() is None
        # a follower does not hold up a graceful shutdown: the stream ends and the CLI exits
        started = time.monotonic()
        m.gw.stop()
        assert time.monotonic() - started < 5
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait(timeout=5)
