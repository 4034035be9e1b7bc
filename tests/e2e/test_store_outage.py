"""PostgreSQL stops under two gateways serving traffic (docs/operations.md, "High
availability"): requests go on from memory, changes are refused with a 503 naming the
unreachable store, ``/healthz`` says so, usage made meanwhile is written once PostgreSQL is
back, and the gateways resync. The cluster is the test's own (``start_pg``): stopping the
session's cluster would hit other tests."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import free_port
from postgres import CHAT, service_yaml, user_yaml, wait_for
from standin import StandIn
from tls_helpers import LoadLoop

pytest_plugins = ["postgres"]


def healthz(gw) -> dict:
    with gw.http() as h:
        r = h.get(gw.url(None, "/healthz"))
    assert r.status_code == 200, r.text
    return r.json()


def metrics(gw) -> dict[str, float]:
    addr = gw.extra_args[gw.extra_args.index("--metrics-listen") + 1]
    text = httpx.get(f"http://{addr}/metrics", timeout=5).text
    return {k: float(v) for k, v in (l.rsplit(" ", 1) for l in text.splitlines() if l and not l.startswith("#"))}


def app_usage(gw) -> int | None:
    out = gw.ctl("usage", "--by", "user", "-o", "json").stdout
    return {i["key"]: i for i in json.loads(out)["items"]}.get("app", {}).get("requests")


@pytest.fixture
def outage(start_gateway, start_pg):
    pg = start_pg()
    url = pg.createdb("postern")
    with StandIn("llm", api_key=None, prefix="") as up:
        a = start_gateway(store=url, gateway_name="gw-a", extra_args=["--metrics-listen", f"127.0.0.1:{free_port()}"])
        b = start_gateway(store=url, gateway_name="gw-b", copy_of=a)
        a.apply_text(service_yaml(up.url))
        a.apply_text(user_yaml("app"))
        cid, secret = a.create_oauth2("app", "app-oauth2")
        yield pg, a, b, up, (cid, secret)
        if not pg.running:
            pg.start()


def test_store_outage_keeps_traffic_refuses_changes_and_catches_up(outage):
    pg, a, b, up, (cid, secret) = outage
    token = a.token(cid, secret)
    auth = {"Authorization": f"Bearer {token}"}
    chat_url = {gw.gateway_name: gw.url("llm", "/v1/chat/completions") for gw in (a, b)}

    def chats(n: int) -> None:
        for gw in (a, b):
            with gw.http() as h:
                for _ in range(n):
                    r = h.post(chat_url[gw.gateway_name], json=CHAT, headers=auth)
                    assert r.status_code == 200, (gw.gateway_name, r.status_code, r.text)

    wait_for("B serves the Service", lambda: b.curl(b.url("llm", "/v1/models"), "-H",
                                                    f"Authorization: Bearer {token}").status == 200, 1.0)
    chats(2)
    wait_for("usage before the outage is stored", lambda: app_usage(a) == 4, 5.0, interval=0.2)

    with LoadLoop(a.url("llm", "/v1/models"), a.port, a.ca, auth) as on_a, \
            LoadLoop(b.url("llm", "/v1/models"), b.port, b.ca, auth) as on_b:
        pg.stop()
        stopped = time.monotonic()
        # requests keep flowing from memory on both gateways, with the token minted before
        on_a.wait_progress(5)
        on_b.wait_progress(5)
        chats(3)

        for gw in (a, b):
            t = wait_for(f"{gw.gateway_name} /healthz says the store is unreachable",
                         lambda: healthz(gw)["store"]["reachable"] is False, 5.0, interval=0.1)
            print(f"\n{gw.gateway_name}: store unreachable in /healthz {t:.2f} s after the check began")
            h = healthz(gw)
            assert h["status"] == "ok" and h["store"]["backend"] == "postgres", h
            assert h["store"]["feed"] == "lost", h
            with gw.http() as c:
                ready = c.get(gw.url(None, "/readyz"))
            assert ready.status_code == 200, ready.text

        # A's usage rows of the outage wait in its backlog; nothing is dropped
        wait_for("A's usage backlog", lambda: metrics(a).get("postern_usage_buffered") == 3, 5.0, interval=0.1)
        m = metrics(a)
        assert m["postern_store_reachable"] == 0 and m["postern_usage_dropped_total"] == 0, m

        # changes are refused with a 503 that names the store, and nothing changes in memory
        r = a.apply_text(service_yaml(up.url, effect="DENY"), check=False)
        said = r.stdout + r.stderr
        assert r.returncode != 0, said
        assert "the store (postgres) is unreachable" in said, said
        # the API answer under the CLI: 503, code "unavailable", the message saying what to do
        admin = json.loads((a.home / "session.json").read_text())["accessToken"]
        with a.http() as c:
            raw = c.post(a.url(None, "/api/v1/apply"), headers={"Authorization": f"Bearer {admin}"},
                         json={"files": [{"file": "x.yaml", "content": service_yaml(up.url, name="x")}]})
        assert raw.status_code == 503, raw.text
        err = raw.json()["error"]
        assert err["code"] == "unavailable" and "unreachable" in err["message"], err
        assert "postgres" in err["message"], err
        # no new tokens while the store is down: 503 temporarily_unavailable
        with a.http() as c:
            grant = c.post(a.token_endpoint, data={"grant_type": "client_credentials",
                                                   "client_id": cid, "client_secret": secret})
        assert grant.status_code == 503, grant.text
        assert grant.json()["error"] == "temporarily_unavailable", grant.text
        on_a.wait_progress(3)
        on_b.wait_progress(3)
        outage_s = time.monotonic() - stopped
    assert on_a.failures() == [], on_a.failures()
    assert on_b.failures() == [], on_b.failures()
    print(f"served during the {outage_s:.1f} s outage: gw-a {on_a.counts()}, gw-b {on_b.counts()}")
    assert len([q for q in up.requests if q.path.endswith("/chat/completions")]) == 10

    # the policy did not change: the refused apply left ALLOW in place
    with a.http() as c:
        assert c.post(chat_url["gw-a"], json=CHAT, headers=auth).status_code == 200

    pg.start()
    back = time.monotonic()
    for gw in (a, b):
        wait_for(f"{gw.gateway_name} /healthz says the store is back",
                 lambda: healthz(gw)["store"] == {"backend": "postgres", "reachable": True, "feed": "live"},
                 15.0, interval=0.1)
    wait_for("A's backlog written", lambda: metrics(a).get("postern_usage_buffered") == 0, 15.0, interval=0.1)
    assert metrics(a)["postern_store_reachable"] == 1
    # usage made during the outage (6 chats + 1 just above) is written after PostgreSQL returns
    t = wait_for("usage from the outage written", lambda: app_usage(b) == 11, 15.0, interval=0.2)
    print(f"usage written {time.monotonic() - back:.2f} s after PostgreSQL came back (waited {t:.2f} s)")

    log = a.stderr()
    assert log.count("store unreachable: keeping") == 1, "the backlog is announced once per outage"
    assert "store: change feed lost" in log and "store: change feed back; resyncing" in log

    # changes work again and reach the other gateway within a second
    a.apply_text(service_yaml(up.url, effect="DENY"))
    with b.http() as c:
        wait_for("a change after the outage reaches B",
                 lambda: c.post(chat_url["gw-b"], json=CHAT, headers=auth).status_code == 403, 1.0)
    assert a.token(cid, secret)


def test_a_change_made_on_one_gateway_while_the_other_lost_its_feed_is_resynced(outage):
    """The feed connection of B is cut (PostgreSQL restarts) and A writes right after it is
    back: B must not miss that change (full resync after a lost feed)."""
    pg, a, b, up, (cid, secret) = outage
    token = a.token(cid, secret)
    auth = {"Authorization": f"Bearer {token}"}
    pg.stop()
    wait_for("B sees the feed lost", lambda: healthz(b)["store"]["feed"] == "lost", 5.0, interval=0.1)
    pg.start()
    wait_for("A reaches the store again", lambda: healthz(a)["store"]["reachable"] is True, 15.0, interval=0.1)
    a.apply_text(service_yaml(up.url, name="later"))
    with b.http() as c:
        t = wait_for("B serves a Service applied on A as the feed came back",
                     lambda: c.get(b.url("later", "/v1/models"), headers=auth).status_code == 200, 15.0)
    print(f"\nB served the change {t:.2f} s after A applied it")
    assert healthz(b)["store"]["feed"] == "live"


def test_a_gateway_started_while_postgres_is_down_waits_for_it(outage, start_gateway):
    pg, a, b, up, (cid, secret) = outage
    token = a.token(cid, secret)
    pg.stop()
    back = threading.Timer(2.0, pg.start)
    back.start()
    started = time.monotonic()
    try:
        c = start_gateway(store=b.store, gateway_name="gw-c", copy_of=a)
    finally:
        back.join()
    waited = time.monotonic() - started
    print(f"\ngw-c listened {waited:.2f} s after it was started, PostgreSQL returning at 2 s")
    assert waited >= 2.0, "gw-c listened before its store was reachable"
    assert "waiting for the store" in c.stderr()
    with c.http() as h:
        r = h.post(c.url("llm", "/v1/chat/completions"), json=CHAT, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def _burst(gateways, url_of, token: str, n: int) -> list[int]:
    clients = {gw.gateway_name: gw.http(limits=httpx.Limits(max_connections=n)) for gw in gateways}

    def one(gw) -> int:
        return clients[gw.gateway_name].post(url_of(gw), json=CHAT,
                                             headers={"Authorization": f"Bearer {token}"}).status_code

    try:
        with ThreadPoolExecutor(max_workers=n * len(gateways)) as pool:
            return list(pool.map(one, list(gateways) * n))
    finally:
        for c in clients.values():
            c.close()


def test_shared_limit_while_postgres_is_down_stays_within_the_offline_bound(outage):
    """docs/operations.md "Limits across gateways": cut off from the store, each gateway admits
    up to limit/N (N = --limit-gateways, 2) on its own; what it admitted is charged on
    reconnect, so the rest of the window is shared correctly."""
    pg, a, b, up, (cid, secret) = outage
    limit = 20
    a.apply_text(service_yaml(up.url, name="capped", limits=f"- {{name: rph, requests: {limit}, per: 1h}}"))
    token = a.token(cid, secret)

    def url_of(gw) -> str:
        return gw.url("capped", "/v1/chat/completions")

    left = 3600 - time.time() % 3600
    if left < 60:
        time.sleep(left + 0.2)
    with b.http() as h:
        wait_for("B serves the capped Service", lambda: h.get(b.url("capped", "/v1/models"),
                 headers={"Authorization": f"Bearer {token}"}).status_code == 200, 1.0)
    before = len([q for q in up.requests if q.path.endswith("/models")])  # admitted by the wait
    pg.stop()
    for gw in (a, b):
        wait_for(f"{gw.gateway_name} sees the store down", lambda: healthz(gw)["store"]["reachable"] is False,
                 5.0, interval=0.1)
    # a few requests on each gateway, within what each may admit on its own (limit/N = 10)
    during = _burst((a, b), url_of, token, 5)
    assert during.count(200) == 10, during

    pg.start()
    for gw in (a, b):
        wait_for(f"{gw.gateway_name} reaches the store", lambda: healthz(gw)["store"]["reachable"] is True,
                 15.0, interval=0.1)
    time.sleep(2.5)  # the next flush (every second) charges what each admitted offline
    after = _burst((a, b), url_of, token, 25)
    print(f"\nlimit {limit}/h: {before} before, 10 while PostgreSQL was down, {after.count(200)} after it returned")
    assert set(after) <= {200, 429}, after
    # charged on reconnect: the window holds exactly the limit across both gateways
    assert after.count(200) == limit - before - 10, (before, after.count(200))

    # a flood while cut off again: each gateway admits at most limit/N on its own
    pg.stop()
    for gw in (a, b):
        wait_for(f"{gw.gateway_name} sees the store down", lambda: healthz(gw)["store"]["reachable"] is False,
                 5.0, interval=0.1)
    flood = _burst((a, b), url_of, token, 50)
    print(f"flood while cut off again: {flood.count(200)} admitted")
    assert set(flood) <= {200, 429}, flood
    assert flood.count(200) <= 2 * (limit // 2), flood.count(200)
