"""Certificates for the TLS tests: test CAs, what a handshake serves, client loops, Pebble.

* ``TestCA``: a root and an intermediate made with ``cryptography``; ``issue`` writes a leaf
  (RSA, ECDSA P-256 or Ed25519 key) as a full chain (leaf + intermediate) and its key, as an
  operator's renewal tool would. Clients trust only the root, so the gateway must serve the
  chain it was given.
* ``served``: the certificate the gateway presents for a name (or for no SNI), read from a
  real handshake; ``wait_served`` polls until a predicate holds.
* ``write_atomic``: write to a temporary file and rename over the target (what certbot and
  most renewal tools do).
* ``LoadLoop``: callers that keep requesting while certificates change: one keep-alive
  HTTP/1.1 client, one keep-alive HTTP/2 client, one that opens a new connection per request,
  and curl; every failure is recorded.
* ``Pebble``: Let's Encrypt's ACME test server from Debian's ``pebble`` package, with
  ``pebble-challtestsrv`` as its DNS server (every name resolves to 127.0.0.1) unless a DNS
  server is given (the BIND server of the DNS-01 test). Its HTTPS uses a certificate of a
  throwaway CA made per session (``pebble_https``); its issuing root and intermediate are read
  from its management endpoint and verified with that CA. Fixture ``start_pebble`` starts any
  number and stops them; without ``/usr/bin/pebble`` the ACME tests skip, saying why.
* ``acme_gateway`` (fixture factory): a Pebble and a gateway ordering from it (TLS-ALPN-01, or
  HTTP-01 with ``--http-listen``, or DNS-01 through a given RFC 2136 server), its metrics
  endpoint, and ``wait_acme(name)``: the certificate once it verifies against Pebble's root.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from conftest import Gateway

WAIT = 30.0


# --------------------------------------------------------------------------------------------
# Test CAs and certificates.
def new_key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _serial() -> int:
    # 16 random bytes with the top bit set: the DER length never varies, so two leaves of the
    # same key type and names have PEM files of exactly the same size.
    return int.from_bytes(os.urandom(16), "big") | (1 << 127)


@dataclass
class Issued:
    """A leaf written as ``chain`` (leaf + intermediate, PEM) and ``key`` (PKCS#8 PEM)."""
    chain: Path
    key: Path
    cert: x509.Certificate
    chain_pem: bytes
    key_pem: bytes

    @property
    def serial(self) -> int:
        return self.cert.serial_number


class TestCA:
    """A root CA and an intermediate that signs leaves; ``root`` is the PEM file to trust."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "Postern Test Root"):
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        now = dt.datetime.now(dt.timezone.utc)
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.root_cert = self._ca_cert(_name(name), self.root_key, _name(name), self.root_key, now, None)
        self.int_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.int_cert = self._ca_cert(_name(name + " Intermediate"), self.int_key, _name(name), self.root_key, now, 0)
        self.root = directory / "root.pem"
        self.root.write_bytes(cert_pem(self.root_cert))

    @staticmethod
    def _ca_cert(subject, key, issuer, issuer_key, now, path_length):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(_serial())
             .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        return b.sign(issuer_key, hashes.SHA256())

    def leaf(self, names: list[str], key, days: int = 10) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        b = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(self.int_cert.subject)
             .public_key(key.public_key()).serial_number(_serial())
             .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.SubjectAlternativeName(sans), critical=False)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.int_key.public_key()),
                            critical=False))
        return b.sign(self.int_key, hashes.SHA256())

    def issue(self, names: list[str], kind: str = "ecdsa", chain: Path | None = None, key: Path | None = None,
              write: bool = True) -> Issued:
        """A new leaf for ``names`` with a new ``kind`` key. With ``write`` (the default) the
        files are replaced atomically at ``chain``/``key`` (default: in the CA's directory)."""
        k = new_key(kind)
        cert = self.leaf(names, k)
        chain = chain or self.dir / f"{names[0].replace('*', '_')}-{cert.serial_number:x}.pem"
        key = key or chain.with_suffix(".key")
        out = Issued(chain, key, cert, cert_pem(cert) + cert_pem(self.int_cert), key_pem(k))
        if write:
            write_atomic(key, out.key_pem)
            write_atomic(chain, out.chain_pem)
        return out


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s directory and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# What the gateway serves.
def served(port: int, servername: str | None, cafile: str | Path | None = None,
           alpn: list[str] | None = None) -> x509.Certificate:
    """The leaf presented on 127.0.0.1:``port`` for SNI ``servername`` (None: no SNI). With
    ``cafile`` the chain and the name are verified against that file only (else not at all)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile=str(cafile))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=servername) as t:
            der = t.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.DNSName)


def issuer_cn(cert: x509.Certificate) -> str:
    attrs = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else cert.issuer.rfc4514_string()


def wait_served(port: int, servername: str | None, pred: Callable[[x509.Certificate], bool],
                timeout: float = 15.0, what: str = "", cafile: str | Path | None = None,
                log: Callable[[], str] | None = None) -> x509.Certificate:
    """Polls handshakes until the served certificate satisfies ``pred``; returns it."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            cert = served(port, servername, cafile)
            if pred(cert):
                return cert
            last = f"serial {cert.serial_number:x}, issuer {issuer_cn(cert)!r}, SAN {sans(cert)}"
        except (OSError, ssl.SSLError) as e:
            last = e
        if time.monotonic() > deadline:
            tail = f"\n--- gateway log ---\n{log()[-6000:]}" if log else ""
            raise AssertionError(f"{servername}: {what or 'expected certificate'} not served within "
                                 f"{timeout}s; last: {last}{tail}")
        time.sleep(0.1)


def wait_log(log: Callable[[], str], needle: str, count: int = 1, timeout: float = 15.0) -> str:
    """Polls ``log()`` until ``needle`` occurs at least ``count`` times; returns the log."""
    deadline = time.monotonic() + timeout
    while True:
        text = log()
        if text.count(needle) >= count:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not logged {count} time(s) within {timeout}s:\n{text[-6000:]}")
        time.sleep(0.1)


@dataclass
class CurlOut:
    rc: int
    status: int
    http_version: str
    headers: dict[str, str]
    body: bytes
    stderr: str


def curl(url: str, port: int, cacert: str | Path, *args: str, http: str = "2", timeout: int = 20) -> CurlOut:
    """curl ``url`` with 127.0.0.1:``port`` as the address of every host and ``cacert`` as the
    only CA file. ``http`` is ``"2"`` (ALPN h2, curl's default over TLS) or ``"1.1"``."""
    with tempfile.TemporaryDirectory() as d:
        hdr, body = Path(d) / "h", Path(d) / "b"
        r = subprocess.run(
            ["curl", "-sS", "--max-time", str(timeout), "--connect-to", f"::127.0.0.1:{port}",
             "--cacert", str(cacert), "--http2" if http == "2" else "--http1.1",
             "-D", str(hdr), "-o", str(body), "-w", "%{http_code} %{http_version}", *args, url],
            capture_output=True, text=True, timeout=timeout + 5)
        headers: dict[str, str] = {}
        if hdr.exists():
            for line in hdr.read_text(errors="replace").splitlines():
                if ":" in line and not line.startswith("HTTP/"):
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
        parts = (r.stdout.strip() or "0 0").split()
        return CurlOut(r.returncode, int(parts[0]), parts[-1], headers,
                       body.read_bytes() if body.exists() else b"", r.stderr)


def peer_serial(response: httpx.Response) -> int:
    """Serial of the certificate on the connection that carried ``response``."""
    sock = response.extensions["network_stream"].get_extra_info("socket")
    der = sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


# --------------------------------------------------------------------------------------------
# Callers that keep going while certificates change.
@dataclass
class _Worker:
    name: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)


class LoadLoop:
    """Requests ``url`` (expecting ``status``) from four callers until stopped, trusting only
    ``cafile``: keep-alive HTTP/1.1, keep-alive HTTP/2, a new connection per request (httpx),
    and curl (a new process and connection per request). Use as a context manager; after it
    ends, ``failures()`` lists every failed request."""

    def __init__(self, url: str, port: int, cafile: str | Path, headers: dict[str, str] | None = None,
                 status: int = 200):
        self.url, self.port, self.cafile = url, port, str(cafile)
        self.headers = headers or {}
        self.status = status
        self.workers = {n: _Worker(n) for n in ("keepalive-h1", "keepalive-h2", "new-connection", "curl")}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)

    def _record(self, w: _Worker, err: str | None) -> None:
        with self._lock:
            if err is None:
                w.ok += 1
            else:
                w.failures.append(f"{time.strftime('%H:%M:%S')} {err}")

    def _httpx(self, w: _Worker, keep: bool, http2: bool) -> None:
        client = httpx.Client(verify=self._ctx(), http2=http2, timeout=15) if keep else None
        try:
            while not self._stop.is_set():
                try:
                    if keep:
                        r = client.get(self.url, headers=self.headers)
                    else:
                        with httpx.Client(verify=self._ctx(), timeout=15) as c:
                            r = c.get(self.url, headers=self.headers)
                    self._record(w, None if r.status_code == self.status else f"status {r.status_code}: {r.text[:200]}")
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    self._record(w, f"{type(e).__name__}: {e}")
                self._stop.wait(0.02)
        finally:
            if client is not None:
                client.close()

    def _curl(self, w: _Worker) -> None:
        args = [a for k, v in self.headers.items() for a in ("-H", f"{k}: {v}")]
        while not self._stop.is_set():
            try:
                r = curl(self.url, self.port, self.cafile, *args)
                ok = r.rc == 0 and r.status == self.status
                self._record(w, None if ok else f"curl rc={r.rc} status={r.status}: {r.stderr.strip()[:300]}")
            except Exception as e:  # noqa: BLE001
                self._record(w, f"{type(e).__name__}: {e}")
            self._stop.wait(0.02)

    def __enter__(self) -> "LoadLoop":
        targets = {"keepalive-h1": lambda w: self._httpx(w, True, False),
                   "keepalive-h2": lambda w: self._httpx(w, True, True),
                   "new-connection": lambda w: self._httpx(w, False, False),
                   "curl": self._curl}
        for name, fn in targets.items():
            t = threading.Thread(target=fn, args=(self.workers[name],), daemon=True, name=name)
            t.start()
            self._threads.append(t)
        self.wait_progress(1)
        return self

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {n: w.ok for n, w in self.workers.items()}

    def wait_progress(self, n: int = 3, timeout: float = 30.0) -> None:
        """Waits until every caller has made ``n`` more successful requests."""
        start = self.counts()
        deadline = time.monotonic() + timeout
        while True:
            now = self.counts()
            if all(now[k] - start[k] >= n for k in now):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"callers made no progress in {timeout}s: {start} -> {now}; "
                                     f"failures: {self.failures()}")
            time.sleep(0.05)

    def failures(self) -> list[str]:
        with self._lock:
            return [f"{w.name}: {f}" for w in self.workers.values() for f in w.failures]

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


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
    import ipaddress

    ca = TestCA(directory, "Pebble HTTPS Throwaway CA")
    key = new_key("ecdsa")
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.root_cert.subject)
            .public_key(key.public_key()).serial_number(_serial())
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
