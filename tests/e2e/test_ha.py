"""Several gateways on one PostgreSQL database (docs/operations.md, "High availability").

Gateway A is made by ``posternd init --store URL``; B (and C) start on a copy of A's data
directory (B with ``--store URL``, C with the URL ``init`` recorded in ``gateway.json``).
Each test gets a fresh database in the session's throwaway cluster (``postgres.py``). The
latencies the 1 s promises are checked against are printed (``pytest -s`` shows them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from conftest import SEED_RESOURCES, Gateway, chat_body, setup_ai
from postgres import CHAT, db_name, service_yaml, user_yaml, wait_for
from standin import StandIn
import test_otlp as otlp  # its Collector; a module import, so pytest collects no test twice
from tls_helpers import LoadLoop, curl

pytest_plugins = ["postgres"]

WITHIN = 1.0  # the promise: a change on one gateway holds on every gateway within a second


@dataclass
class HA:
    a: Gateway
    b: Gateway
    up: StandIn
    url: str

    def chat(self, gw: Gateway, token: str, client: httpx.Client | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if client is not None:
            return client.post(gw.url("llm", "/v1/chat/completions"), json=CHAT, headers=headers)
        with gw.http() as h:
            return h.post(gw.url("llm", "/v1/chat/completions"), json=CHAT, headers=headers)

    def app(self, gw: Gateway | None = None) -> tuple[str, str]:
        """User ``app`` and its OAuth2 credential, made through ``gw`` (default A)."""
        gw = gw or self.a
        gw.apply_text(user_yaml("app"))
        return gw.create_oauth2("app", "app-oauth2")


@pytest.fixture
def ha(start_gateway, pg_db):
    with StandIn("llm", api_key=None, prefix="") as up:
        a = start_gateway(store=pg_db, gateway_name="gw-a")
        b = start_gateway(store=pg_db, gateway_name="gw-b", copy_of=a)
        yield HA(a, b, up, pg_db)


def health(gw: Gateway, path: str = "/healthz") -> httpx.Response:
    with gw.http() as h:
        return h.get(gw.url(None, path))


def wait_window(period: int, margin: float = 8.0) -> None:
    """Sleeps past the end of the current fixed window when fewer than ``margin`` s remain."""
    left = period - (time.time() % period)
    if left < margin:
        time.sleep(left + 0.2)


def test_both_gateways_report_the_shared_store(ha):
    for gw, name in ((ha.a, "gw-a"), (ha.b, "gw-b")):
        r = health(gw)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok" and body["gateway"] == name, body
        assert body["store"] == {"backend": "postgres", "reachable": True, "feed": "live"}, body
        ready = health(gw, "/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
    # B really is on the database A made: A's admin Session lets the CLI in on B
    assert ha.b.names("users") == ha.a.names("users")
    # a second init against a database that holds an install is refused, naming it
    again = Gateway(ha.a.bin_dir, ha.a.root.parent / "again", [], None, None, store=ha.url)
    r = again.init()
    assert r.returncode != 0, r.stdout
    assert db_name(ha.url) in r.stdout + r.stderr and "adminToken" not in r.stdout, r.stdout + r.stderr
    assert not (again.data_dir / "secret.key").exists()


def test_apply_on_one_gateway_holds_on_the_other_within_a_second(ha):
    a, b = ha.a, ha.b
    cid, secret = ha.app()
    token = a.token(cid, secret)
    with b.http() as hb, a.http() as ha_:
        def on_b() -> int:
            return ha.chat(b, token, hb).status_code

        assert on_b() == 404
        a.apply_text(service_yaml(ha.up.url))
        t_new = wait_for("a Service applied on A, served by B", lambda: on_b() == 200, WITHIN)
        a.apply_text(service_yaml(ha.up.url, effect="DENY"))
        t_policy = wait_for("a policy change on A, enforced by B", lambda: on_b() == 403, WITHIN)
        # and the other way round: a change through B holds on A
        b.apply_text(service_yaml(ha.up.url))
        t_back = wait_for("a change on B, served by A", lambda: ha.chat(a, token, ha_).status_code == 200, WITHIN)
        b.ctl("delete", "service", "llm")
        t_del = wait_for("a Service deleted on B, gone on A", lambda: ha.chat(a, token, ha_).status_code == 404,
                         WITHIN)
    print(f"\nchange feed latency: new Service A->B {t_new * 1000:.0f} ms, policy A->B "
          f"{t_policy * 1000:.0f} ms, B->A {t_back * 1000:.0f} ms, delete B->A {t_del * 1000:.0f} ms")
    assert {name for name in b.names("services")} == set()


def test_token_minted_on_one_gateway_works_on_the_other_at_once(ha):
    a, b = ha.a, ha.b
    a.apply_text(service_yaml(ha.up.url))
    cid, secret = ha.app()
    token = a.token(cid, secret)
    wait_for("B serves the Service", lambda: ha.chat(b, token).status_code == 200, WITHIN)
    # a token minted on A a moment ago works on B at once (openai SDK, then curl HTTP/2 and 1.1)
    fresh = a.token(cid, secret)
    reply = b.openai("llm", fresh, "/v1").chat.completions.create(**CHAT)
    assert reply.usage.total_tokens == 18
    for http in ("2", "1.1"):
        fresh = a.token(cid, secret)
        r = curl(b.url("llm", "/v1/models"), b.port, b.ca, "-H", f"Authorization: Bearer {fresh}", http=http)
        assert (r.status, r.http_version) == (200, "2" if http == "2" else "1.1"), r
    # a credential made through B gives tokens on B that A accepts
    cid_b, secret_b = b.create_oauth2("app", "app-oauth2-b")
    from_b = b.token(cid_b, secret_b)
    first = ha.chat(a, from_b)
    assert first.status_code == 200, (first.text, [e for e in a.access_entries() if e.get("status") == 401])
    # a forged token is refused by both
    for gw in (a, b):
        assert ha.chat(gw, fresh[:-4] + "AAAA").status_code == 401


def test_a_credential_made_on_one_gateway_gives_tokens_the_other_accepts_at_once(ha):
    """The Credential and the Session are both a moment old when the token reaches the other
    gateway: neither notice may have arrived yet."""
    a, b = ha.a, ha.b
    # enough resources that a reload takes a while: the window a notice could leave open
    a.apply_text("---\n".join([service_yaml(ha.up.url)]
                              + [service_yaml(ha.up.url, name=f"filler-{n}") for n in range(300)]))
    ha.app()
    token = a.token(*a.create_oauth2("app", "probe"))
    wait_for("B serves the Service", lambda: ha.chat(b, token).status_code == 200, WITHIN)
    refused = []
    with a.http() as h:
        for i in range(10):
            cid, secret = b.create_oauth2("app", f"fresh-{i}")
            fresh = b.token(cid, secret)
            r = ha.chat(a, fresh, h)
            if r.status_code != 200:
                refused.append((i, r.status_code))
    if refused:
        time.sleep(1)  # the access log is written behind the response
        reasons = [e.get("reason") for e in a.access_entries() if e.get("status") == 401]
        raise AssertionError(f"tokens refused by A: {refused}; reasons: {reasons}")


def _session_of(gw: Gateway, credential: str) -> list[str]:
    return [s["name"] for s in gw.get("sessions") if s.get("credential") == credential]


def test_revocation_on_one_gateway_is_refused_on_the_other_within_a_second(ha):
    a, b = ha.a, ha.b
    a.apply_text(service_yaml(ha.up.url))
    cid, secret = ha.app()
    token = a.token(cid, secret)
    wait_for("B serves the Service", lambda: ha.chat(b, token).status_code == 200, WITHIN)
    with a.http() as h:
        assert ha.chat(a, token, h).status_code == 200  # verified and cached on A
        sessions = _session_of(b, "app-oauth2")
        assert len(sessions) == 1, sessions
        b.ctl("delete", "session", sessions[0])
        t_session = wait_for("a Session deleted on B, refused on A",
                             lambda: ha.chat(a, token, h).status_code == 401, WITHIN)
        other = a.token(cid, secret)
        assert ha.chat(a, other, h).status_code == 200
        b.apply_text(user_yaml("app", disabled=True))
        t_user = wait_for("a User disabled on B, refused on A",
                          lambda: ha.chat(a, other, h).status_code in (401, 403), WITHIN)
        seen = len(ha.up.requests)
        assert ha.chat(a, other, h).status_code in (401, 403)
        assert ha.chat(a, token, h).status_code == 401
    assert ha.chat(b, other).status_code in (401, 403)
    assert len(ha.up.requests) == seen, "a refused request reached the upstream"
    print(f"\nrevocation latency B->A: Session {t_session * 1000:.0f} ms, User {t_user * 1000:.0f} ms")


def _burst(ha: HA, token: str, n: int, **extra) -> list[int]:
    """``n`` concurrent requests against each gateway at once; every status."""
    body = {**CHAT, **extra}
    clients = {gw.port: gw.http(limits=httpx.Limits(max_connections=n)) for gw in (ha.a, ha.b)}

    def one(gw: Gateway) -> int:
        r = clients[gw.port].post(gw.url("llm", "/v1/chat/completions"), json=body,
                                  headers={"Authorization": f"Bearer {token}"})
        return r.status_code

    try:
        with ThreadPoolExecutor(max_workers=2 * n) as pool:
            return list(pool.map(one, [ha.a, ha.b] * n))
    finally:
        for c in clients.values():
            c.close()


def test_request_limit_holds_across_two_gateways(ha):
    ha.a.apply_text(service_yaml(ha.up.url, limits="- {name: rpm, requests: 30, per: 1m}"))
    cid, secret = ha.app()
    token = ha.a.token(cid, secret)
    time.sleep(WITHIN + 0.5)  # B has the Service with its limit (within 1 s, measured above)
    wait_window(60)
    statuses = _burst(ha, token, 50)
    admitted = statuses.count(200)
    print(f"\nrequest limit 30/min, 50 concurrent on each of 2 gateways: {admitted} admitted")
    assert set(statuses) <= {200, 429}, statuses
    assert admitted == 30, f"{admitted} admitted across both gateways for a limit of 30"
    assert len(ha.up.requests) == 30


def test_token_budget_holds_across_two_gateways(ha):
    # each request reserves 20 tokens (max_tokens 10 + 3 for the prompt + 7 chat framing), settles at 18,
    # less than it reserved: the documented bound allows no overshoot here
    budget = 400
    ha.a.apply_text(service_yaml(ha.up.url, limits=f"- {{name: tph, tokens: {budget}, per: 1h}}"))
    cid, secret = ha.app()
    token = ha.a.token(cid, secret)
    time.sleep(WITHIN + 0.5)
    wait_window(3600, margin=30)
    statuses = _burst(ha, token, 50, max_tokens=10)
    admitted = statuses.count(200)
    spent = admitted * 18
    print(f"\ntoken budget {budget}/h, 50 concurrent on each of 2 gateways: {admitted} admitted, {spent} spent")
    assert set(statuses) <= {200, 429}, statuses
    assert spent <= budget, f"{spent} tokens spent across both gateways for a budget of {budget}"
    assert admitted >= budget // 20 // 2, f"only {admitted} admitted: the budget was not used"
    assert len(ha.up.requests) == admitted


def test_usage_sums_every_gateway_and_records_name_the_gateway(ha):
    a, b = ha.a, ha.b
    a.apply_text(service_yaml(ha.up.url))
    cid, secret = ha.app()
    token = a.token(cid, secret)
    wait_for("B serves the Service", lambda: ha.chat(b, token).status_code == 200, WITHIN)
    for _ in range(2):
        assert a.openai("llm", token, "/v1").chat.completions.create(**CHAT).usage.total_tokens == 18
        assert ha.chat(b, token).status_code == 200
    # 3 on B (one was the wait above), 2 on A: every gateway's usage is in one sum
    expected = {"requests": 5, "totalTokens": 5 * 18}

    def usage(gw: Gateway) -> dict:
        out = gw.ctl("usage", "--by", "user", "-o", "json").stdout
        row = {i["key"]: i for i in json.loads(out)["items"]}.get("app", {})
        return {k: row.get(k) for k in expected}

    for gw in (a, b):
        wait_for(f"posternctl usage through {gw.gateway_name} sums both gateways",
                 lambda: usage(gw) == expected, 5.0, interval=0.2)

    for gw in (a, b):
        served = [e for e in gw.access_entries() if e.get("service") == "llm"]
        assert served and {e.get("gateway") for e in served} == {gw.gateway_name}, served
        recs = [json.loads(line) for line in gw.ctl("logs", "--service", "llm", "-o", "json").stdout.splitlines()]
        # the recent log is the answering gateway's own, and each record says who served it
        assert len(recs) == len(served), (recs, served)
        assert {r.get("gateway") for r in recs} == {gw.gateway_name}, recs
        lines = gw.ctl("logs", "--service", "llm").stdout.splitlines()
        assert lines and all(line.endswith(f"@{gw.gateway_name}") for line in lines), lines


def test_kill_9_of_one_gateway_leaves_the_others_serving_and_it_catches_up(ha, start_gateway):
    a, b = ha.a, ha.b
    # a third gateway joined with nothing but the copy: the store URL comes from gateway.json
    c = start_gateway(store=ha.url, gateway_name="gw-c", copy_of=a, store_flag=False)
    assert health(c).json()["store"]["backend"] == "postgres"
    a.apply_text(service_yaml(ha.up.url))
    cid, secret = ha.app()
    token = a.token(cid, secret)
    for gw in (b, c):
        wait_for(f"{gw.gateway_name} serves the Service", lambda: ha.chat(gw, token).status_code == 200, WITHIN)

    auth = {"Authorization": f"Bearer {token}"}
    with LoadLoop(b.url("llm", "/v1/models"), b.port, b.ca, auth) as on_b, \
            LoadLoop(c.url("llm", "/v1/models"), c.port, c.ca, auth) as on_c:
        on_b.wait_progress(3)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        on_b.wait_progress(10)
        on_c.wait_progress(10)
        # changes go on through the survivors while A is dead
        b.apply_text(service_yaml(ha.up.url, name="after"))
        wait_for("C serves what B applied", lambda: c.curl(c.url("after", "/v1/models"), "-H",
                                                           f"Authorization: Bearer {token}").status == 200, WITHIN)
        on_b.wait_progress(3)
    assert on_b.failures() == [], on_b.failures()
    assert on_c.failures() == [], on_c.failures()
    print(f"\nduring kill -9 of gw-a: gw-b served {on_b.counts()}, gw-c {on_c.counts()}")

    # A comes back with what changed while it was dead, and the same tokens
    a._stderr.close()
    started = time.monotonic()
    a.serve()
    ready = health(a, "/readyz")
    assert ready.status_code == 200, ready.text
    r = curl(a.url("after", "/v1/models"), a.port, a.ca, "-H", f"Authorization: Bearer {token}")
    assert r.status == 200, r
    print(f"gw-a restarted and serving the change it missed after {time.monotonic() - started:.2f} s")
    assert health(a).json()["store"] == {"backend": "postgres", "reachable": True, "feed": "live"}


def test_a_gateway_joins_with_a_join_token(ha, start_gateway, tmp_path):
    """The smoother way in: `posternd join-token` on A, `posternd init --join` elsewhere."""
    a = ha.a
    a.apply_text(service_yaml(ha.up.url))
    cid, secret = ha.app()
    out = a.run("posternd", "join-token", "--data-dir", str(a.data_dir)).stdout
    token_line = [w for w in out.split() if w.startswith("pjt_")]
    assert len(token_line) == 1, out
    join = token_line[0]
    data = tmp_path / "joined"
    env = {**a.env, "POSTERN_JOIN_TOKEN": join}
    bad = subprocess.run([a.bin("posternd"), "init", "--join", "--data-dir", str(tmp_path / "bad"),
                          "--store", ha.url], capture_output=True, text=True, timeout=30,
                         env={**a.env, "POSTERN_JOIN_TOKEN": join[:-3] + "xyz"})
    assert bad.returncode != 0 and not (tmp_path / "bad" / "secret.key").exists(), bad.stdout + bad.stderr
    r = subprocess.run([a.bin("posternd"), "init", "--join", "--data-dir", str(data), "--store", ha.url],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert join not in r.stdout + r.stderr
    for key in os.listdir(a.data_dir):
        if key.endswith(".key"):
            assert (data / key).read_bytes() == (a.data_dir / key).read_bytes(), key
    # serve the joined directory: same CA, tokens from A work on it
    root = tmp_path / "joined-gw"
    root.mkdir()
    j = Gateway(a.bin_dir, root, [], None, None, store=ha.url, gateway_name="gw-j")
    j.data_dir = data
    j.init_output = dict(a.init_output)
    j.ca = j.internal_ca = a.internal_ca
    j.admin_token = a.admin_token
    try:
        j.serve()
        j.login(a.admin_token)
        token = a.token(cid, secret)
        assert ha.chat(j, token).status_code == 200
        assert health(j).json()["gateway"] == "gw-j"
    finally:
        j.stop()


def test_the_seed_files_apply_unchanged_on_postgres(start_gateway, pg_db):
    """The same resource files work on both backends: the shared examples, applied unchanged
    through one gateway, serve through another."""
    a = start_gateway(store=pg_db, gateway_name="gw-a")
    b = start_gateway(store=pg_db, gateway_name="gw-b", copy_of=a)
    with ExitStack() as stack:
        ai = setup_ai(a, stack)
        assert ai.seed_apply.returncode == 0
        applied = {line.split()[0] for line in ai.seed_apply.stdout.splitlines() if line.strip()}
        assert applied == set(SEED_RESOURCES), ai.seed_apply.stdout
        token = ai.token()
        wait_for("B serves the seeds", lambda: b.curl(b.url("gemini", "/models"), "-H",
                                                      f"Authorization: Bearer {token}").status == 200, WITHIN)
        reply = b.openai("gemini", token).chat.completions.create(**chat_body())
        assert reply.usage.total_tokens == 18
        # the Secret sealed through A opens on B: the stand-in only answers with the real key
        assert ai.up["gemini"].requests[-1].header("authorization") == "Bearer gm-key-3f9a1c"
        routed = b.openai("total-ai", token).chat.completions.create(**chat_body("deepseek-chat"))
        assert routed.usage.total_tokens == 18 and len(ai.up["deepseek"].requests) == 1


def test_otlp_records_name_the_gateway_that_served(start_gateway, pg_db):
    with otlp.Collector() as col, StandIn("llm", api_key=None, prefix="") as up:
        flags = ["--otlp-endpoint", col.url]
        a = start_gateway(store=pg_db, gateway_name="gw-a", extra_args=flags)
        b = start_gateway(store=pg_db, gateway_name="gw-b", copy_of=a, extra_args=flags)
        a.apply_text(service_yaml(up.url))
        a.apply_text(user_yaml("app"))
        token = a.token(*a.create_oauth2("app", "app-oauth2"))
        pair = HA(a, b, up, pg_db)
        wait_for("B serves the Service", lambda: pair.chat(b, token).status_code == 200, WITHIN)
        assert pair.chat(a, token).status_code == 200

        def served(gateway: str):
            return lambda x: (otlp.attrs(x[1].attributes).get("postern.service") == "llm"
                              and otlp.attrs(x[1].attributes).get("postern.gateway") == gateway)

        for name in ("gw-a", "gw-b"):
            found = col.wait_for(served(name), f"records of {name}")
            kinds = {type(x[1]).__name__ for x in found}
            assert kinds == {"LogRecord", "Span"}, kinds
        with col.lock:
            named = {otlp.attrs(x[1].attributes).get("postern.gateway") for x in col.logs + col.spans}
        assert named == {"gw-a", "gw-b"}, named
