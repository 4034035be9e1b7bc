"""Issue #14, ACME (RFC 8555) against Pebble, Let's Encrypt's test CA (Debian's `pebble`).

The gateway orders certificates for its domain and for each public Service's name by
TLS-ALPN-01 on its HTTPS listener or by HTTP-01 on `--http-listen`, a wildcard by DNS-01
through a real BIND server (RFC 2136), renews them at two thirds of their lifetime, drops the
name of a deleted Service, orders nothing again after a restart, and serves with its internal
CA while the ACME CA cannot be reached. Clients here trust only Pebble's root, read from its
management endpoint (its HTTPS verified with a throwaway CA): the gateway must serve the whole
chain. Pebble validates challenges against 127.0.0.1 at the gateway's real ports.

Skipped, saying why, when /usr/bin/pebble is missing (CI installs the package)."""

from __future__ import annotations

import datetime as dt
import re
import time

import httpx
import pytest
import yaml

pytest.register_assert_rewrite("acme", "tls_helpers")  # before the imports, so their asserts explain themselves
from acme import require_pebble
from tls_helpers import LoadLoop, curl, issuer_cn, sans, served, wait_log, wait_served
from conftest import APP_USER, DOMAIN, Gateway, public_service
from standin import StandIn

pytest_plugins = ["acme"]  # fixtures start_pebble, acme_gateway


@pytest.fixture(autouse=True)
def _pebble_installed():
    require_pebble()


def private_service(name: str, url: str) -> str:
    doc = yaml.safe_load(public_service(name, url))
    doc["spec"]["isPublic"] = False
    return yaml.safe_dump(doc, sort_keys=False)


def caller(gw: Gateway) -> dict[str, str]:
    gw.apply_text(APP_USER, "app-user.yaml")
    cid, secret = gw.create_oauth2("app", "app-oauth2")
    return {"Authorization": f"Bearer {gw.token(cid, secret)}"}


ORDER_RE = re.compile(r"ACME: ordering a certificate for (?P<names>.+?) \((?P<challenge>[a-z0-9-]+)\)")
ISSUED_RE = re.compile(r"ACME: certificate for (?P<names>.+?) issued, expires (?P<expires>\S+?),? renews at "
                       r"(?P<renews>\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d))")


def _names(text: str) -> frozenset[str]:
    return frozenset(x for x in re.split(r"[,\s\[\]\"']+", text) if x)


def orders(log: str) -> list[tuple[frozenset[str], str]]:
    """(names, challenge) of every `ACME: ordering a certificate for NAMES (CHALLENGE)` line."""
    return [(_names(m["names"]), m["challenge"]) for m in ORDER_RE.finditer(log)]


def issuances(log: str) -> list[tuple[frozenset[str], dt.datetime]]:
    """(names, renews at) of every `ACME: certificate for NAMES issued, ...` line."""
    return [(_names(m["names"]), dt.datetime.fromisoformat(m["renews"].replace("Z", "+00:00")))
            for m in ISSUED_RE.finditer(log)]


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_orders_domain_and_public_services(acme_gateway, challenge):
    env = acme_gateway(http01=challenge == "http-01")
    gw = env.gw
    names = [DOMAIN, f"alpha.{DOMAIN}", f"beta.{DOMAIN}"]
    with StandIn("up") as up:
        for svc in ("alpha", "beta"):
            gw.apply_text(public_service(svc, up.url), f"{svc}.yaml")
        gw.apply_text(private_service("hidden", up.url), "hidden.yaml")
        headers = caller(gw)

        certs = {n: env.wait_acme(n) for n in names}
        for n, cert in certs.items():
            assert n in sans(cert), (n, sans(cert))
            assert issuer_cn(cert).startswith("Pebble Intermediate CA"), issuer_cn(cert)
        log = env.log()
        ordered, issued = orders(log), issuances(log)
        for n in names:
            assert (frozenset([n]), challenge) in ordered, (n, challenge, ordered)
            assert any(ns == {n} for ns, _ in issued), (n, issued)
        assert f"hidden.{DOMAIN}" not in log, "a private Service's name was ordered"

        # curl with Pebble's root as its only CA: the served chain carries the intermediate.
        for http in ("2", "1.1"):
            r = curl(f"https://{DOMAIN}:{gw.port}/.well-known/oauth-authorization-server", gw.port,
                     env.pebble.root, http=http)
            assert (r.rc, r.status, r.http_version) == (0, 200, http), r
            for svc in ("alpha", "beta"):
                r = curl(gw.url(svc, "/v1/models"), gw.port, env.pebble.root,
                         "-H", f"Authorization: {headers['Authorization']}", http=http)
                assert (r.rc, r.status, r.http_version) == (0, 200, http), (svc, r)
        assert {r.path for r in up.requests} == {"/v1/models"}

    # Pebble's own log says how it validated (it logs HTTP-01 attempts only).
    tried = set(re.findall(rf"Attempting to validate w/ HTTP: http://([a-z0-9.-]+):{env.http_port}"
                           r"/\.well-known/acme-challenge/([A-Za-z0-9_-]+)", env.pebble.log()))
    if challenge == "http-01":
        assert {host for host, _ in tried} == set(names), tried
        base = f"http://alpha.{DOMAIN}:{env.http_port}"
        with httpx.Client(timeout=10, follow_redirects=False) as c:
            for host, token in tried:  # answered while Pebble validated, removed after
                r = c.get(f"http://{host}:{env.http_port}/.well-known/acme-challenge/{token}")
                assert r.status_code == 404, (host, r.status_code, r.text)
            r = c.get(f"{base}/v1/models?page=2&q=a%20b")
            assert r.status_code == 308, r
            assert r.headers["location"] == f"https://alpha.{DOMAIN}:{gw.port}/v1/models?page=2&q=a%20b"
            assert c.get(f"{base}/.well-known/acme-challenge/not-a-token").status_code == 404
            assert c.post(f"{base}/oauth2/token", content=b"x" * 100).status_code == 308
    else:
        assert not tried and "validate w/ HTTP" not in env.pebble.log()
        # Nothing pending: a client offering only acme-tls/1 gets no certificate at all.
        with pytest.raises(OSError):
            served(gw.port, f"alpha.{DOMAIN}", alpn=["acme-tls/1"])

    expiry = env.metric_lines("postern_certificate_expiry_timestamp_seconds")
    for n, cert in certs.items():
        mine = [ln for ln in expiry if f'name="{n}"' in ln and 'source="acme"' in ln]
        assert len(mine) == 1, (n, expiry)
        line = mine[0]
        assert abs(float(line.split()[-1]) - cert.not_valid_after_utc.timestamp()) <= 1, (line, cert.not_valid_after_utc)
    issued = [ln for ln in env.metric_lines("postern_acme_orders_total") if 'result="issued"' in ln]
    assert issued and float(issued[0].split()[-1]) >= 3, env.metric_lines("postern_acme_orders_total")


def test_dns01_wildcard_covers_a_service_applied_later(acme_gateway, tmp_path):
    from dns_server import start_named  # the BIND server of the RFC 2136 tests

    named = start_named(tmp_path / "named", DOMAIN, [])
    try:
        env = acme_gateway(dns=(f"127.0.0.1:{named.port}", named.flag_value()))
        gw = env.gw
        cert = env.wait_acme(DOMAIN, lambda c: f"*.{DOMAIN}" in sans(c), what="the wildcard certificate")
        assert sorted(sans(cert)) == sorted([DOMAIN, f"*.{DOMAIN}"])
        wildcard = frozenset([DOMAIN, f"*.{DOMAIN}"])
        assert orders(env.log()) and set(orders(env.log())) == {(wildcard, "dns-01")}, orders(env.log())
        with StandIn("up") as up:
            gw.apply_text(public_service("late", up.url), "late.yaml")
            headers = caller(gw)
            late = served(gw.port, f"late.{DOMAIN}", cafile=env.pebble.root)
            assert late.serial_number == cert.serial_number
            r = curl(gw.url("late", "/v1/models"), gw.port, env.pebble.root,
                     "-H", f"Authorization: {headers['Authorization']}")
            assert (r.rc, r.status) == (0, 200), r
        assert set(orders(env.log())) == {(wildcard, "dns-01")}, "a Service under the wildcard was ordered"
        # The challenge's TXT record was taken out of the zone again.
        deadline = time.monotonic() + 15
        while named.txt(f"_acme-challenge.{DOMAIN}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert named.txt(f"_acme-challenge.{DOMAIN}") == [], named.log()[-3000:]
    finally:
        named.stop()


def test_renewal_before_expiry_under_load(acme_gateway):
    lifetime = 30
    env = acme_gateway(validity=lifetime)
    gw = env.gw
    first = env.wait_acme(DOMAIN)
    [(names, renews_at)] = issuances(env.log())
    assert names == {DOMAIN}
    nb, na = first.not_valid_before_utc, first.not_valid_after_utc
    planned = nb + (na - nb) * 2 / 3
    assert abs((renews_at - planned).total_seconds()) <= 2, (renews_at, nb, na)

    url = f"https://{DOMAIN}:{gw.port}/.well-known/oauth-authorization-server"
    with LoadLoop(url, gw.port, env.pebble.root) as loop:
        second = env.wait_acme(DOMAIN, lambda c: c.serial_number != first.serial_number,
                               timeout=lifetime + 30, what="a renewed certificate")
        loop.wait_progress(3)
    assert second.not_valid_after_utc > na
    assert loop.failures() == [], "\n".join(loop.failures())
    assert [ns for ns, _ in issuances(env.log())].count(frozenset([DOMAIN])) >= 2


def test_deleted_service_dropped_and_restart_orders_nothing(acme_gateway):
    env = acme_gateway()
    gw = env.gw
    with StandIn("up") as up:
        for svc in ("alpha", "beta"):
            gw.apply_text(public_service(svc, up.url), f"{svc}.yaml")
        serials = {n: env.wait_acme(n).serial_number for n in (DOMAIN, f"alpha.{DOMAIN}", f"beta.{DOMAIN}")}

        gw.ctl("delete", "service", "alpha")
        wait_log(env.log, f"ACME: alpha.{DOMAIN} no longer served; certificate dropped")
        # The name is no longer served with the ACME certificate: the internal CA's is back.
        wait_served(gw.port, f"alpha.{DOMAIN}", lambda c: True, cafile=gw.internal_ca,
                    what="the internal CA's certificate", log=env.log)
        assert served(gw.port, f"beta.{DOMAIN}", cafile=env.pebble.root).serial_number == serials[f"beta.{DOMAIN}"]

        pebble_orders = env.pebble.log().count("POST /order-plz")
        assert pebble_orders >= 3, env.pebble.log()
        gw.stop()
        size = len(env.log())
        gw.serve()
        for n in (DOMAIN, f"beta.{DOMAIN}"):
            env.wait_acme(n, lambda c, n=n: c.serial_number == serials[n], timeout=15,
                          what="the stored certificate after a restart")
        served(gw.port, f"alpha.{DOMAIN}", cafile=gw.internal_ca)
        # Absence of an order cannot be polled for: give a re-order a few seconds to show up.
        time.sleep(3)
        after = env.log()[size:]
        assert orders(after) == [], after
        assert env.pebble.log().count("POST /order-plz") == pebble_orders, "the restarted gateway ordered again"


def test_ca_unreachable_at_start_then_certificate_arrives(acme_gateway):
    env = acme_gateway(pebble_first=False)
    gw = env.gw
    # Serving at once, with the internal CA, and saying why.
    log = wait_log(env.log, f"ACME: order for {DOMAIN} failed:", timeout=30)
    assert re.search(rf"ACME: order for {re.escape(DOMAIN)} failed: .+; retrying in \S+", log), log
    served(gw.port, DOMAIN, cafile=gw.internal_ca)
    wait_log(env.log, f"serving {DOMAIN} with the internal CA's certificate")

    env.pebble.start()
    env.trust_pebble()
    cert = env.wait_acme(DOMAIN, timeout=60.0, what="the certificate once the CA is reachable")
    assert DOMAIN in sans(cert)
    failures = [ln for ln in env.metric_lines("postern_acme_orders_total") if 'result="failed"' in ln]
    assert failures and float(failures[0].split()[-1]) >= 1, env.metric_lines("postern_acme_orders_total")
    assert gw.ctl("get", "services").returncode == 0  # the CLI still trusts the front door
