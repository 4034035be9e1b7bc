"""Issue #14, certificate files at serve time: `posternd serve --tls-cert/--tls-key`
(repeatable, chosen per name by SNI) and `--tls-dir` (X.pem/X.key pairs, certbot's live/
layout), read where the renewal tool writes them and reloaded without a restart (2 s poll and
SIGHUP) while callers keep going; a broken replacement keeps the old certificate; names no
certificate covers are reported; `--hsts`.

Every certificate here comes from a test CA (root + intermediate, ``acme.TestCA``); clients
trust that root only (the gateway must serve the full chain). No ACME, no Pebble."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from contextlib import ExitStack

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

pytest.register_assert_rewrite("tls_helpers")  # before the import, so its asserts explain themselves
from tls_helpers import (Issued, LoadLoop, TestCA, curl, peer_serial, sans, served, wait_log, wait_served,
                  write_atomic)
from conftest import APP_USER, DOMAIN, free_port, items_of, public_service
from standin import StandIn

WILDCARD = [DOMAIN, f"*.{DOMAIN}"]
RELOADED = "TLS certificates reloaded"
RELOAD_FAILED = "TLS certificate reload failed, keeping the previous certificate"


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return TestCA(tmp_path / "test-ca")


def ca_context(cafile) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def tls_args(*pairs: Issued) -> list[str]:
    out: list[str] = []
    for p in pairs:
        out += ["--tls-cert", str(p.chain), "--tls-key", str(p.key)]
    return out


def with_caller(gw, standin: StandIn, service: str = "svc") -> dict[str, str]:
    """Public Service ``service`` -> ``standin``, the workload user ``app`` and its bearer."""
    gw.apply_text(public_service(service, standin.url), f"{service}.yaml")
    gw.apply_text(APP_USER, "app-user.yaml")
    cid, secret = gw.create_oauth2("app", "app-oauth2")
    return {"Authorization": f"Bearer {gw.token(cid, secret)}"}


def tls_column(gw) -> dict[str, str]:
    """Service name -> the ``TLS`` column of the ``posternctl get services`` table."""
    lines = [ln for ln in gw.ctl("get", "services").stdout.splitlines() if ln.strip()]
    header = lines[0]
    assert "TLS" in header.split(), f"no TLS column in `posternctl get services`:\n{header}"
    at = header.index(" TLS") + 1 if not header.startswith("TLS") else 0
    return {ln.split()[0]: ln[at:].split()[0] for ln in lines[1:]}


def tls_status(gw, service: str) -> dict:
    [item] = items_of(gw.ctl("get", "services", service, "-o", "json").stdout)
    return (item.get("status") or {}).get("tls") or {}


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
def test_certificate_files_served_and_verified_by_clients(start_gateway, ca, kind):
    pair = ca.issue(WILDCARD, kind)
    gw = start_gateway(extra_args=tls_args(pair), trust=[str(ca.root)])
    key_class = {"rsa": rsa.RSAPublicKey, "ecdsa": ec.EllipticCurvePublicKey,
                 "ed25519": ed25519.Ed25519PublicKey}[kind]

    for host in (DOMAIN, f"gemini.{DOMAIN}", f"anything.{DOMAIN}"):
        cert = served(gw.port, host, cafile=ca.root)  # verifies chain and name against the test root only
        assert cert.serial_number == pair.serial, host
        assert isinstance(cert.public_key(), key_class), (host, type(cert.public_key()))
        assert sorted(sans(cert)) == sorted(WILDCARD)

    # curl: HTTP/2 by ALPN, only the test root trusted (nothing else can verify this chain).
    meta = f"https://{DOMAIN}:{gw.port}/.well-known/oauth-authorization-server"
    r = curl(meta, gw.port, ca.root)
    assert (r.rc, r.status, r.http_version) == (0, 200, "2"), r
    r = curl(meta, gw.port, ca.root, http="1.1")
    assert (r.rc, r.status, r.http_version) == (0, 200, "1.1"), r
    # The internal CA no longer verifies the front door (the files replaced it).
    r = curl(meta, gw.port, gw.internal_ca)
    assert r.rc != 0 and r.status == 0, r

    with StandIn("svc") as up:
        headers = with_caller(gw, up)
        with httpx.Client(verify=ca_context(ca.root), timeout=15) as c:
            resp = c.get(gw.url("svc", "/v1/models"), headers=headers)
            assert resp.status_code == 200, resp.text
            assert peer_serial(resp) == pair.serial
        assert up.requests and up.requests[-1].path == "/v1/models"


def test_sni_selects_the_certificate_of_each_name(start_gateway, ca):
    wild = ca.issue(WILDCARD, "ecdsa")
    gemini = ca.issue([f"gemini.{DOMAIN}"], "rsa")
    listed = ca.issue([f"openai.{DOMAIN}", f"deepseek.{DOMAIN}"], "ed25519")
    gw = start_gateway(extra_args=tls_args(wild, gemini, listed), trust=[str(ca.root)])

    expect = {DOMAIN: wild, f"gemini.{DOMAIN}": gemini, f"openai.{DOMAIN}": listed,
              f"deepseek.{DOMAIN}": listed, f"total-ai.{DOMAIN}": wild, f"GEMINI.{DOMAIN}": gemini}
    for host, pair in expect.items():
        cert = served(gw.port, host, cafile=ca.root)
        assert cert.serial_number == pair.serial, (host, sans(cert))
        r = curl(f"https://{host}:{gw.port}/.well-known/oauth-authorization-server", gw.port, ca.root)
        assert r.rc == 0, (host, r.stderr)
    # An exact name wins over a wildcard even when the wildcard's pair is given first; no SNI
    # gets the first pair.
    assert served(gw.port, None).serial_number == wild.serial


def test_tls_dir_pairs_and_certbot_live_layout(start_gateway, ca, tmp_path):
    d = tmp_path / "tls"
    main = ca.issue(WILDCARD, "ecdsa", chain=d / "main.pem", key=d / "main.key")
    other = ca.issue([f"openai.{DOMAIN}"], "rsa", chain=d / "other.crt", key=d / "other.key")
    # certbot: live/NAME/{fullchain,privkey}.pem are symlinks into archive/NAME/*N.pem.
    archive, live = tmp_path / "archive" / "gemini", d / f"gemini.{DOMAIN}"
    first = ca.issue([f"gemini.{DOMAIN}"], "ecdsa", chain=archive / "fullchain1.pem", key=archive / "privkey1.pem")
    live.mkdir(parents=True)
    (live / "fullchain.pem").symlink_to(archive / "fullchain1.pem")
    (live / "privkey.pem").symlink_to(archive / "privkey1.pem")
    (d / "README").write_text("not a certificate; ignored\n")

    gw = start_gateway(extra_args=["--tls-dir", str(d)], trust=[str(ca.root)])
    for host, pair in {DOMAIN: main, f"x.{DOMAIN}": main, f"openai.{DOMAIN}": other,
                       f"gemini.{DOMAIN}": first}.items():
        assert served(gw.port, host, cafile=ca.root).serial_number == pair.serial, host

    # certbot renew: new archive files, then the live symlinks are swapped atomically.
    second = ca.issue([f"gemini.{DOMAIN}"], "ecdsa", chain=archive / "fullchain2.pem", key=archive / "privkey2.pem")
    for link, target in (("privkey.pem", "privkey2.pem"), ("fullchain.pem", "fullchain2.pem")):
        tmp = live / f".{link}.new"
        tmp.symlink_to(archive / target)
        os.replace(tmp, live / link)
    wait_served(gw.port, f"gemini.{DOMAIN}", lambda c: c.serial_number == second.serial, timeout=15,
                what="the renewed certbot certificate", cafile=ca.root, log=gw.stderr)
    assert served(gw.port, DOMAIN).serial_number == main.serial
    wait_log(gw.stderr, RELOADED)


def test_reload_under_load_by_poll_and_by_sighup(start_gateway, ca, tmp_path):
    files = tmp_path / "live"
    old = ca.issue(WILDCARD, "ecdsa", chain=files / "fullchain.pem", key=files / "privkey.pem")
    gw = start_gateway(extra_args=tls_args(old), trust=[str(ca.root)])
    with ExitStack() as stack:
        up = stack.enter_context(StandIn("svc"))
        headers = with_caller(gw, up)
        url = gw.url("svc", "/v1/models")
        # A keep-alive connection opened before any swap, used again after each one.
        held = stack.enter_context(httpx.Client(verify=ca_context(ca.root), timeout=15))
        first = held.get(url, headers=headers)
        assert first.status_code == 200 and peer_serial(first) == old.serial
        stream = first.extensions["network_stream"]

        loop = stack.enter_context(LoadLoop(url, gw.port, ca.root, headers))

        # 1. Replaced like certbot does (temp file + rename): the poll picks it up.
        new = ca.issue(WILDCARD, "ecdsa", chain=old.chain, key=old.key)
        wait_served(gw.port, f"svc.{DOMAIN}", lambda c: c.serial_number == new.serial, timeout=15,
                    what="the replaced certificate (2 s poll)", cafile=ca.root, log=gw.stderr)
        loop.wait_progress(3)
        again = held.get(url, headers=headers)
        assert again.status_code == 200
        assert again.extensions["network_stream"] is stream, "the open connection was replaced"
        assert peer_serial(again) == old.serial  # still the connection made before the swap

        # 2. SIGHUP: rewritten in place with the same size, inode and mtime, so the poll cannot
        # see it; only the signal makes the gateway read it.
        third = ca.issue(WILDCARD, "ecdsa", write=False)
        assert (len(third.chain_pem), len(third.key_pem)) == (len(new.chain_pem), len(new.key_pem))
        for path, data in ((new.key, third.key_pem), (new.chain, third.chain_pem)):
            st = path.stat()
            with open(path, "r+b") as f:
                f.write(data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) == \
                (st.st_ino, st.st_size, st.st_mtime_ns)
        reloads = gw.stderr().count(RELOADED)
        gw.proc.send_signal(signal.SIGHUP)
        wait_served(gw.port, f"svc.{DOMAIN}", lambda c: c.serial_number == third.serial, timeout=15,
                    what="the certificate re-read on SIGHUP", cafile=ca.root, log=gw.stderr)
        wait_log(gw.stderr, RELOADED, reloads + 1)
        loop.wait_progress(3)
        assert gw.proc.poll() is None, "SIGHUP ended the gateway"
        again = held.get(url, headers=headers)
        assert again.status_code == 200 and again.extensions["network_stream"] is stream

    assert loop.failures() == [], "\n".join(loop.failures())
    assert sum(loop.counts().values()) >= 24, loop.counts()
    assert RELOAD_FAILED not in gw.stderr()


def test_broken_replacement_keeps_the_previous_certificate(start_gateway, ca, tmp_path):
    metrics_port = free_port()
    files = tmp_path / "live"
    good = ca.issue(WILDCARD, "ecdsa", chain=files / "fullchain.pem", key=files / "privkey.pem")
    gw = start_gateway(extra_args=tls_args(good) + ["--metrics-listen", f"127.0.0.1:{metrics_port}"],
                       trust=[str(ca.root)])
    other_key = ca.issue(WILDCARD, "ecdsa", write=False).key_pem  # valid, but not this cert's key
    garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    with ExitStack() as stack:
        up = stack.enter_context(StandIn("svc"))
        headers = with_caller(gw, up)
        loop = stack.enter_context(LoadLoop(gw.url("svc", "/v1/models"), gw.port, ca.root, headers))
        cases = [("garbage PEM", good.chain, garbage), ("a key of another certificate", good.key, other_key),
                 ("an empty file", good.chain, b"")]
        for n, (what, path, data) in enumerate(cases, start=1):
            write_atomic(path, data)
            log = wait_log(gw.stderr, RELOAD_FAILED, n, timeout=15)
            line = [ln for ln in log.splitlines() if RELOAD_FAILED in ln][-1]
            # A key that does not match may be reported on either file of the pair.
            named = (good.chain, good.key) if path == good.key else (good.chain,)
            assert any(str(p) in line for p in named), (what, line)
            for host in (DOMAIN, f"svc.{DOMAIN}"):
                assert served(gw.port, host, cafile=ca.root).serial_number == good.serial, (what, host)
            loop.wait_progress(3)
            # Put the good file back and let the gateway take it before the next case.
            reloads = gw.stderr().count(RELOADED)
            write_atomic(path, good.key_pem if path == good.key else good.chain_pem)
            wait_log(gw.stderr, RELOADED, reloads + 1)

        m = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        fails = [ln for ln in m.splitlines() if ln.startswith("postern_tls_reload_failures_total")]
        assert fails and sum(float(ln.split()[-1]) for ln in fails) >= 3, fails or m[:3000]

        # After the failures, a good replacement is still taken.
        renewed = ca.issue(WILDCARD, "ecdsa", chain=good.chain, key=good.key)
        wait_served(gw.port, DOMAIN, lambda c: c.serial_number == renewed.serial, timeout=15,
                    what="a good certificate after broken ones", cafile=ca.root, log=gw.stderr)
        loop.wait_progress(3)
    assert loop.failures() == [], "\n".join(loop.failures())


def test_service_not_covered_is_reported(start_gateway, ca):
    pair = ca.issue([DOMAIN, f"gemini.{DOMAIN}"], "ecdsa")
    gw = start_gateway(extra_args=tls_args(pair), trust=[str(ca.root)])
    with StandIn("up") as up:
        gw.apply_text(public_service("gemini", up.url), "gemini.yaml")
        gw.apply_text(public_service("other", up.url), "other.yaml")
        wait_log(gw.stderr, f"certificate does not cover service other (other.{DOMAIN})")
        assert "certificate does not cover service gemini" not in gw.stderr()

        col = tls_column(gw)
        assert col.get("gemini") == "file", col
        assert tls_status(gw, "gemini").get("source") == "file"
        assert tls_status(gw, "gemini").get("notAfter"), tls_status(gw, "gemini")
        # `init` made the internal CA, whose certificate covers *.DOMAIN and stays the fallback
        # beside the operator's files: `other` is reported and served as `internal-ca`.
        assert col.get("other") == "internal-ca", col
        assert tls_status(gw, "other").get("source") == "internal-ca"
        served(gw.port, f"other.{DOMAIN}", cafile=gw.internal_ca)
        assert f"serving other.{DOMAIN} with the internal CA's certificate" in gw.stderr()

        # At startup too, for the Services already in the store.
        gw.stop()
        size = len(gw.stderr())
        gw.serve()
        wait_log(lambda: gw.stderr()[size:], f"certificate does not cover service other (other.{DOMAIN})")
        assert "certificate does not cover service gemini" not in gw.stderr()[size:]


def test_hsts_only_when_asked(start_gateway, tmp_path):
    value = "max-age=63072000"
    with ExitStack() as stack:
        up = stack.enter_context(StandIn("svc"))
        plain = start_gateway()
        hsts = start_gateway(extra_args=["--hsts", value])
        for gw, want in ((plain, None), (hsts, value)):
            headers = with_caller(gw, up)
            with gw.http() as c:
                made = c.get(gw.url(None, "/.well-known/oauth-authorization-server"))
                denied = c.get(gw.url("svc", "/v1/models"))  # no bearer: the gateway's 401
                proxied = c.get(gw.url("svc", "/v1/models"), headers=headers)
            assert (made.status_code, denied.status_code, proxied.status_code) == (200, 401, 200)
            for r in (made, denied, proxied):
                assert r.headers.get("strict-transport-security") == want, (r.url, r.headers)
            h2 = curl(gw.url("svc", "/v1/models"), gw.port, gw.ca, "-H", f"Authorization: {headers['Authorization']}")
            assert (h2.status, h2.http_version) == (200, "2"), h2
            assert h2.headers.get("strict-transport-security") == want, h2.headers

    # A value that is not an HSTS policy is refused at start, saying what is expected.
    hsts.stop()
    assert "max-age" in refused_serve(hsts, ["--hsts", "includeSubDomains"])


def refused_serve(gw, args: list[str]) -> str:
    """Runs ``posternd serve`` on ``gw``'s (stopped) data dir with ``args``, expecting it to
    refuse to start; returns what it printed."""
    p = subprocess.Popen([gw.bin("posternd"), "serve", "--data-dir", str(gw.data_dir),
                          "--https-listen", f"127.0.0.1:{free_port()}", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=gw.env)
    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"posternd serve {' '.join(args)} started instead of refusing") from None
    assert p.returncode != 0, (args, out, err)
    return out + err


def test_bad_files_at_start_are_refused_naming_the_file(start_gateway, ca, tmp_path):
    gw = start_gateway()
    gw.stop()
    good = ca.issue(WILDCARD, "ecdsa")
    other = ca.issue(WILDCARD, "ecdsa")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    cases = {
        "a key of another certificate": (["--tls-cert", str(good.chain), "--tls-key", str(other.key)], good.chain),
        "not PEM": (["--tls-cert", str(garbage), "--tls-key", str(good.key)], garbage),
        "a missing file": (["--tls-cert", str(missing), "--tls-key", str(good.key)], missing),
    }
    for what, (args, named) in cases.items():
        text = refused_serve(gw, args)
        assert str(named) in text, (what, text)
    # Two certificates and one key cannot be paired.
    refused_serve(gw, ["--tls-cert", str(good.chain), "--tls-key", str(good.key), "--tls-cert", str(other.chain)])
    # Nothing was half-started: the same data dir still serves.
    gw.serve()


def _raw_http(port: int, head: bytes, timeout: float = 25.0) -> bytes:
    """Sends ``head`` on a new connection to 127.0.0.1:``port`` and reads until the server
    closes it (or ``timeout``: then what was read, and the test sees no close)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                return out + b"<closed>"
            out += chunk
    return out


def test_http_listener_redirects_only_our_names_within_limits(start_gateway):
    """`--http-listen` without ACME: 308 to https for the gateway's own names (path and query
    kept), never a redirect to a name a stranger chose, 404 for an unknown challenge token,
    and a bounded request head (8 KiB, 10 s)."""
    http_port = free_port()
    gw = start_gateway(extra_args=["--http-listen", f"127.0.0.1:{http_port}"])
    base = f"http://127.0.0.1:{http_port}"
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        for host in (DOMAIN, f"gemini.{DOMAIN}", f"GEMINI.{DOMAIN}:{http_port}"):
            r = c.get(f"{base}/v1/models?page=2&q=a%20b", headers={"Host": host})
            assert r.status_code == 308, (host, r.status_code, r.text)
            want = f"https://{host.split(':')[0].lower()}:{gw.port}/v1/models?page=2&q=a%20b"
            assert r.headers["location"] == want, (host, r.headers.get("location"))
        r = c.get(f"{base}//evil.example/x", headers={"Host": DOMAIN})
        assert r.headers.get("location", "").startswith(f"https://{DOMAIN}:{gw.port}/"), r.headers
        for host in ("evil.example", f"{DOMAIN}.evil.example", f"a.b.{DOMAIN}", f"evil.example:{http_port}"):
            r = c.get(f"{base}/login", headers={"Host": host})
            assert r.status_code in (400, 404) and "location" not in r.headers, (host, r.status_code, r.headers)
        r = c.get(f"{base}/.well-known/acme-challenge/no-such-token", headers={"Host": DOMAIN})
        assert r.status_code == 404 and "location" not in r.headers, r

    # A request head over 8 KiB is refused (431 or closed), not redirected.
    big = _raw_http(http_port, b"GET / HTTP/1.1\r\nHost: " + DOMAIN.encode() + b"\r\nX-Pad: "
                    + b"a" * 16384 + b"\r\n\r\n")
    assert b" 308 " not in big.split(b"\r\n", 1)[0] and (big.startswith(b"HTTP/1.1 431") or big.endswith(b"<closed>")), big[:200]
    # A head that never ends is cut off (header timeout 10 s; 25 s is the generous bound).
    slow = _raw_http(http_port, b"GET / HTTP/1.1\r\nHost: " + DOMAIN.encode() + b"\r\n")
    assert slow.endswith(b"<closed>") and b" 308 " not in slow, slow[:200]
