"""Pebble, Let's Encrypt's ACME test server, for the ACME tests.

* ``Pebble``: Debian's ``pebble`` with ``pebble-challtestsrv`` as its DNS server (every name
  resolves to 127.0.0.1) unless a DNS server is given (the BIND server of the DNS-01 test).
  It validates challenges at the gateway's real HTTP/HTTPS ports. Its HTTPS uses a
  certificate of a throwaway CA made per session (``pebble_https``); its issuing root and
  intermediate are read from its management endpoint and verified with that CA. Fixture
  ``start_pebble`` starts any number and stops them; without ``/usr/bin/pebble`` the ACME
  tests skip, saying why.
* ``acme_gateway`` (fixture factory): a Pebble and a gateway ordering from it (TLS-ALPN-01, or
  HTTP-01 with ``--http-listen``, or DNS-01 through a given RFC 2136 server), its metrics
  endpoint, and ``wait_acme(name)``: the certificate once it verifies against Pebble's root.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from tls_helpers import TestCA, cert_pem, key_pem, cn_name, new_key, random_serial, wait_served

if TYPE_CHECKING:
    from conftest import Gateway

WAIT = 30.0


# --------------------------------------------------------------------------------------------
# Pebble.
PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


def require_pebble() -> None:
    if not (os.access(PEBBLE, os.X_OK) and os.access(CHALLTESTSRV, os.X_OK)):
        msg = "ACME tests need Debian's `pebble` package (/usr/bin/pebble, /usr/bin/pebble-challtestsrv)"
        print(f"SKIP: {msg}", file=sys.stderr)
        pytest.skip(msg)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP (a DNS server binds both)."""
    for _ in range(50):
        port = free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
    raise RuntimeError("no port free for both UDP and TCP")


@dataclass
class PebbleHttps:
    """Pebble's own HTTPS certificate (localhost, 127.0.0.1) and the CA that signed it."""
    ca: Path
    cert: Path
    key: Path


def make_pebble_https(directory: Path) -> PebbleHttps:
    ca = TestCA(directory, "Pebble HTTPS Throwaway CA")
    key = new_key("ecdsa")
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(cn_name("localhost")).issuer_name(ca.root_cert.subject)
            .public_key(key.public_key()).serial_number(random_serial())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.root_key, hashes.SHA256()))
    out = PebbleHttps(ca.root, directory / "pebble.pem", directory / "pebble.key")
    out.cert.write_bytes(cert_pem(cert))
    out.key.write_bytes(key_pem(key))
    return out


@pytest.fixture(scope="session")
def pebble_https(tmp_path_factory) -> PebbleHttps:
    return make_pebble_https(tmp_path_factory.mktemp("pebble-https"))


class Pebble:
    """One Pebble (and its challtestsrv unless ``dns_server`` is given). ``directory`` is the
    ACME directory URL; after ``start``, ``root`` is a PEM file with Pebble's issuing root
    (the only CA a client needs) and ``intermediate`` its intermediate."""

    def __init__(self, root: Path, https: PebbleHttps, http_port: int, tls_port: int,
                 validity_seconds: int | None = None, dns_server: str | None = None):
        self.dir = root
        root.mkdir(parents=True, exist_ok=True)
        self.https = https
        self.port = free_port()
        self.mgmt_port = free_port()
        self.http_port, self.tls_port = http_port, tls_port
        self.validity_seconds = validity_seconds
        self.dns_server = dns_server
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.root = root / "pebble-root.pem"
        self.intermediate = root / "pebble-intermediate.pem"
        self.log_path = root / "pebble.log"
        self.procs: list[subprocess.Popen] = []
        self._logs: list = []

    def _spawn(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        f = open(log, "ab")
        self._logs.append(f)
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=self.dir)
        self.procs.append(p)
        return p

    def start(self) -> "Pebble":
        dns = self.dns_server
        if dns is None:
            dns_port, mgmt = free_udp_tcp_port(), free_port()
            self._spawn([CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                         "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                         "-management", f"127.0.0.1:{mgmt}"], self.dir / "challtestsrv.log")
            dns = f"127.0.0.1:{dns_port}"
        cfg = {"pebble": {"listenAddress": f"127.0.0.1:{self.port}",
                          "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                          "certificate": str(self.https.cert), "privateKey": str(self.https.key),
                          "httpPort": self.http_port, "tlsPort": self.tls_port,
                          "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        if self.validity_seconds:
            cfg["pebble"]["certificateValidityPeriod"] = self.validity_seconds
        path = self.dir / "pebble-config.json"
        path.write_text(json.dumps(cfg))
        env = dict(os.environ)
        # No random validation delays, no random nonce rejections (the latter are a test of
        # the client's nonce retry, not of certificates; it would make timings vary).
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self._spawn([PEBBLE, "-config", str(path), "-dnsserver", dns], self.log_path, env)
        self._wait_ready()
        self.root.write_text(self._mgmt("/roots/0"))
        self.intermediate.write_text(self._mgmt("/intermediates/0"))
        return self

    def _verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.https.ca))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        last: object = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"pebble exited with {p.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.directory, verify=self._verify(), timeout=2)
                if r.status_code == 200 and "newOrder" in r.json():
                    return
                last = r.status_code
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError(f"pebble directory not answering after {WAIT}s: {last}\n{self.log()}")

    def _mgmt(self, path: str) -> str:
        r = httpx.get(f"https://127.0.0.1:{self.mgmt_port}{path}", verify=self._verify(), timeout=5)
        assert r.status_code == 200 and "BEGIN CERTIFICATE" in r.text, (path, r.status_code, r.text[:300])
        return r.text

    def log(self) -> str:
        out = []
        for p in sorted(self.dir.glob("*.log")):
            out.append(f"--- {p.name} ---\n{p.read_text(errors='replace')[-8000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()


@pytest.fixture
def start_pebble(pebble_https, tmp_path, request):
    """Factory: ``start_pebble(http_port, tls_port, validity_seconds=None, dns_server=None,
    start=True)``; ports are the gateway's, where Pebble validates challenges."""
    require_pebble()
    made: list[Pebble] = []

    def start(http_port: int, tls_port: int, validity_seconds: int | None = None,
              dns_server: str | None = None, start: bool = True) -> Pebble:
        p = Pebble(tmp_path / f"pebble{len(made)}", pebble_https, http_port, tls_port, validity_seconds,
                   dns_server)
        made.append(p)
        return p.start() if start else p

    yield start
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    for p in made:
        p.stop()
        if failed:
            sys.stderr.write(f"\n----- pebble ({p.dir}) -----\n{p.log()}\n")


# --------------------------------------------------------------------------------------------
# A gateway ordering from a Pebble.
ISSUE_WAIT = 60.0  # generous bound for one order (Pebble answers in about a second)


@dataclass
class AcmeGateway:
    gw: Gateway
    pebble: Pebble
    http_port: int
    metrics: str

    def log(self) -> str:
        return self.gw.stderr()

    def wait_acme(self, name: str, pred=lambda c: True, timeout: float = ISSUE_WAIT, what: str = ""):
        """The certificate served for ``name`` once it verifies against Pebble's root only."""
        return wait_served(self.gw.port, name, pred, timeout=timeout, cafile=self.pebble.root,
                           what=what or "a certificate from Pebble", log=self.log)

    def trust_pebble(self) -> None:
        """Adds Pebble's root (known once it started) to the CAs the test's CLI trusts."""
        Path(self.gw.ca).write_text(Path(self.gw.internal_ca).read_text() + self.pebble.root.read_text())

    def metric_lines(self, prefix: str) -> list[str]:
        text = httpx.get(self.metrics, timeout=5).text
        return [ln for ln in text.splitlines() if ln.startswith(prefix)]


@pytest.fixture
def acme_gateway(start_gateway, start_pebble, tmp_path):
    """Factory: a Pebble and a gateway ordering from it. ``http01`` adds ``--http-listen``;
    ``validity`` is Pebble's certificate lifetime in seconds; ``dns`` is ``(server addr,
    --acme-dns-rfc2136 value)``; ``pebble_first=False`` starts the gateway while nothing
    listens at the directory URL (start Pebble later with ``env.pebble.start()``)."""

    def make(http01: bool = False, validity: int | None = None, dns: tuple[str, str] | None = None,
             pebble_first: bool = True) -> AcmeGateway:
        https_port, http_port, metrics_port = free_port(), free_port(), free_port()
        pebble = start_pebble(http_port, https_port, validity_seconds=validity,
                              dns_server=dns[0] if dns else None, start=pebble_first)
        args = ["--acme", "--acme-directory", pebble.directory, "--acme-ca", str(pebble.https.ca),
                "--acme-email", "ops@example.com", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
        if http01:
            args += ["--http-listen", f"127.0.0.1:{http_port}"]
        if dns:
            args += ["--acme-dns-rfc2136", dns[1]]
        placeholder = tmp_path / "no-pebble-root-yet.pem"
        placeholder.write_text("")
        gw = start_gateway(extra_args=args, port=https_port,
                           trust=[str(pebble.root if pebble_first else placeholder)])
        return AcmeGateway(gw, pebble, http_port, f"http://127.0.0.1:{metrics_port}/metrics")

    return make
