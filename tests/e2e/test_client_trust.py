"""``postern`` and ``posternctl`` trust the system's CA store as well as the saved ``--ca-file``
(issue 14, item 4): a gateway moved from its own CA to a publicly trusted certificate breaks
no logged-in client.

The admin logs in with ``--ca-file`` = the gateway's own CA, as today. The gateway is then
restarted on the same data dir with ``posternd serve --tls-cert/--tls-key`` holding a
certificate for ``postern.test`` and ``*.postern.test`` from ANOTHER CA (made here with
``cryptography``, standing in for a public CA). With ``SSL_CERT_FILE`` (or ``SSL_CERT_DIR``)
naming that other CA, the saved session keeps working: ``posternctl get services``, and
``postern connect --userspace`` reaches a private Service while ``postern status`` reports
it; a new ``postern login`` needs no ``--ca-file``. Without it, both fail with a certificate error that says what to do. A system store
that cannot be read or holds garbage never locks the client out of a gateway its
``--ca-file`` covers.

No root needed: the tunnel runs in userspace mode over 127.0.0.1.
"""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import DOMAIN, Gateway, free_port
from standin import StandIn

SVC_PORT = 8080
WAIT = 60.0


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def other_ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA unrelated to the gateway's, and a leaf for DOMAIN and *.DOMAIN it signed.
    Returns (ca.pem, fullchain.pem, privkey.pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stand-in Public Root")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN), x509.DNSName("*." + DOMAIN)]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, chain, privkey = tmp / "other-ca.pem", tmp / "fullchain.pem", tmp / "privkey.pem"
    ca_path.write_bytes(pem(ca))
    chain.write_bytes(pem(leaf) + pem(ca))
    privkey.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_path, chain, privkey


def web_service(upstream: str) -> str:
    return f"""\
kind: Service
metadata:
  name: web
spec:
  mode: HTTP
  port: {SVC_PORT}
  config:
    upstream:
      url: {upstream}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                matchAny: true
"""


def client_env(gw: Gateway, **trust: str) -> dict[str, str]:
    """The CLI's environment with exactly the system-store variables given in ``trust``."""
    env = gw.env
    for k in ("SSL_CERT_FILE", "SSL_CERT_DIR", "POSTERN_CA_FILE", "POSTERN_DOMAIN", "POSTERN_AUTH_TOKEN"):
        env.pop(k, None)
    env.update(trust)
    return env


def run(gw: Gateway, env: dict[str, str], binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([gw.bin(binary), *args], capture_output=True, text=True, timeout=WAIT, env=env,
                          stdin=subprocess.DEVNULL)


def service_names(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0, (r.stdout, r.stderr)
    data = json.loads(r.stdout)
    items = data["items"] if isinstance(data, dict) else data
    return [i["metadata"]["name"] for i in items]


def assert_refused_with_advice(r: subprocess.CompletedProcess) -> None:
    assert r.returncode != 0, (r.stdout, r.stderr)
    err = r.stderr.lower()
    assert "certificate" in err, r.stderr
    # The message names both ways out: the saved --ca-file and the system store.
    assert "--ca-file" in r.stderr and "SSL_CERT_FILE" in r.stderr, r.stderr


def test_clients_follow_the_gateway_to_another_ca(start_gateway, tmp_path):
    udp = free_udp_port()
    gw = start_gateway(["--wg-listen", f"127.0.0.1:{udp}", "--wg-endpoint", f"127.0.0.1:{udp}"])
    own_ca = gw.ca
    ca_pem, chain, privkey = other_ca(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    (cert_dir / "other.pem").write_bytes(ca_pem.read_bytes())
    (cert_dir / "broken.pem").write_text(garbage.read_text())
    (cert_dir / "README").write_text("not a certificate\n")

    with StandIn("web") as web:
        gw.apply_text(web_service(web.url), "web.yaml")

        # A broken or missing system store does not stand in the way of the saved --ca-file.
        for trust in ({"SSL_CERT_FILE": str(garbage)}, {"SSL_CERT_FILE": str(tmp_path / "missing.pem")},
                      {"SSL_CERT_DIR": str(tmp_path / "no-such-dir")}):
            r = run(gw, client_env(gw, **trust), "posternctl", "get", "services", "-o", "json")
            assert service_names(r) == ["web"], trust

        # The operator moves the gateway to a certificate from another CA.
        gw.stop()
        gw.extra_args += ["--tls-cert", str(chain), "--tls-key", str(privkey)]
        gw.ca = str(ca_pem)  # wait_ready verifies the new chain
        gw.serve()
        saved = json.loads((gw.home / "session.json").read_text())
        assert saved["caFile"] == own_ca, saved  # the saved CA no longer matches what is served

        # Without the other CA in the system store: refused, with advice.
        plain = client_env(gw)
        assert_refused_with_advice(run(gw, plain, "posternctl", "get", "services"))
        assert_refused_with_advice(run(gw, plain, "postern", "connect", "--userspace",
                                       "-p", f"{free_port()}:web:{SVC_PORT}"))

        # With it, by file and by directory (a directory that also holds non-certificates).
        by_dir = client_env(gw, SSL_CERT_DIR=str(cert_dir))
        assert service_names(run(gw, by_dir, "posternctl", "get", "services", "-o", "json")) == ["web"]
        by_file = client_env(gw, SSL_CERT_FILE=str(ca_pem))
        assert service_names(run(gw, by_file, "posternctl", "get", "services", "-o", "json")) == ["web"]

        # A new login needs no --ca-file when the system store trusts the gateway.
        fresh = dict(by_file, POSTERN_HOME=str(tmp_path / "fresh-home"))
        r = run(gw, fresh, "postern", "login", "--domain", f"{DOMAIN}:{gw.port}", "--auth-token", gw.admin_token)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "caFile" not in json.loads((tmp_path / "fresh-home" / "session.json").read_text())
        assert service_names(run(gw, fresh, "posternctl", "get", "services", "-o", "json")) == ["web"]

        # The agent: connect (HTTPS to /api/v1/tunnel/connect, then check-ins) and status.
        local = free_port()
        err_path = tmp_path / "agent.err"
        agent = subprocess.Popen([gw.bin("postern"), "connect", "--userspace", "-p", f"{local}:web:{SVC_PORT}",
                                  "--check-interval", "1s"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(err_path, "wb"),
                                 env=by_file, text=True)
        try:
            deadline = time.monotonic() + WAIT
            while not (gw.home / "tunnel.json").exists():
                assert agent.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "no tunnel.json: " + err_path.read_text()
                time.sleep(0.1)
            r = httpx.get(f"http://127.0.0.1:{local}/through-the-tunnel", timeout=20)
            assert r.status_code == 200 and r.json()["path"] == "/through-the-tunnel", r.text
            assert any(q.path == "/through-the-tunnel" for q in web.requests)
            status = ""
            while time.monotonic() < deadline:  # a check-in over HTTPS has happened
                st = run(gw, by_file, "postern", "status")
                assert st.returncode == 0, (st.stdout, st.stderr)
                status = st.stdout
                if "Checked:" in status and "not yet" not in status:
                    break
                time.sleep(0.2)
            assert "userspace" in status and "web" in status and "Problem" not in status, status
            assert "Checked:" in status and "not yet" not in status, status
        finally:
            agent.terminate()
            out, _ = agent.communicate(timeout=20)
        assert agent.returncode == 0 and "Disconnected" in out, (out, err_path.read_text())
