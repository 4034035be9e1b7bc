"""Certificates and TLS observations for the certificate tests (files and ACME alike).

* ``TestCA``: a root and an intermediate made with ``cryptography``; ``issue`` writes a leaf
  (RSA, ECDSA P-256 or Ed25519 key) as a full chain (leaf + intermediate) and its key, as an
  operator's renewal tool would. Clients trust only the root, so the gateway must serve the
  chain it was given.
* ``served``: the certificate the gateway presents for a name (or for no SNI), read from a
  real handshake; ``wait_served`` polls until a predicate holds; ``peer_serial`` is the serial
  on the connection that carried an httpx response.
* ``write_atomic``: write to a temporary file and rename over the target (what certbot and
  most renewal tools do).
* ``curl``: curl with one CA file and ``--connect-to`` 127.0.0.1, HTTP/2 or HTTP/1.1.
* ``LoadLoop``: callers that keep requesting while certificates change: one keep-alive
  HTTP/1.1 client, one keep-alive HTTP/2 client, one that opens a new connection per request,
  and curl; every failure is recorded.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


# --------------------------------------------------------------------------------------------
# Test CAs and certificates.
def new_key(kind: str):
    """A new private key: ``rsa`` (2048), ``ecdsa`` (P-256) or ``ed25519``."""
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


def cn_name(cn: str) -> x509.Name:
    """A subject or issuer made of one common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def random_serial() -> int:
    """16 random bytes with the top bit set: the DER length never varies, so two leaves of the
    same key type and names have PEM files of exactly the same size (the SIGHUP test needs it)."""
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
        self.root_cert = self._ca_cert(cn_name(name), self.root_key, cn_name(name), self.root_key, now, None)
        self.int_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.int_cert = self._ca_cert(cn_name(name + " Intermediate"), self.int_key, cn_name(name), self.root_key, now, 0)
        self.root = directory / "root.pem"
        self.root.write_bytes(cert_pem(self.root_cert))

    @staticmethod
    def _ca_cert(subject, key, issuer, issuer_key, now, path_length):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(random_serial())
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
        b = (x509.CertificateBuilder().subject_name(cn_name(names[0])).issuer_name(self.int_cert.subject)
             .public_key(key.public_key()).serial_number(random_serial())
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
