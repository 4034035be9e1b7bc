"""A real BIND 9 ``named`` for the DNS-01 tests: one primary zone on a free loopback port that
takes TSIG-signed RFC 2136 updates of TXT records, with the key made by ``tsig-keygen``.

The zone holds ``@ A 127.0.0.1`` and ``* A 127.0.0.1``, so an ACME server using it as its
resolver (Pebble's ``-dnsserver 127.0.0.1:PORT``) finds the gateway on loopback for every
name, and reads the ``_acme-challenge`` TXT records the gateway puts there.

    named = start_named(tmp_path, "postern.test", [])
    posternd serve ... --acme-dns-rfc2136 named.flag_value()
    named.txt("_acme-challenge.postern.test")   # what dig reads there now
    named.stop()

Skips the calling test (``pytest.skip``) when BIND is not installed: CI installs ``bind9``
and ``bind9-dnsutils``.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

KEY_NAME = "postern-acme"
WAIT = 20.0  # seconds for named to answer after start


def _tool(name: str) -> str | None:
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"):
        path = Path(d) / name
        if path.exists():
            return str(path)
    return shutil.which(name)


def _free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP at the time of asking."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _key_statement(key_name: str) -> str:
    """The key statement ``tsig-keygen`` prints, made with it when installed."""
    keygen = _tool("tsig-keygen")
    if keygen:
        return subprocess.run(
            [keygen, "-a", "hmac-sha256", key_name], check=True, capture_output=True, text=True
        ).stdout
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    return f'key "{key_name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'


def _soa_answered(port: int, zone: str) -> bool:
    """Whether a non-recursive SOA question for the zone gets an authoritative answer."""
    qname = b"".join(bytes([len(l)]) + l.encode() for l in zone.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x5053, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 6, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(query, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError:
            return False
    if len(data) < 12:
        return False
    ident, flags, _, ancount = struct.unpack("!HHHH", data[:8])
    return ident == 0x5053 and flags & 0x8000 and flags & 0x0400 and flags & 0x000F == 0 and ancount > 0


def _named_dir(tmp_path: Path, zone: str) -> Path:
    """Where named's files go: under /var/cache/bind when this user may write there (root in
    CI), because Debian's AppArmor profile for named, enforced wherever AppArmor is on, lets
    it read and write almost nowhere else; else under tmp_path. ``stop`` removes the former."""
    try:
        return Path(tempfile.mkdtemp(prefix=f"postern-{zone}-", dir="/var/cache/bind"))
    except OSError:
        directory = tmp_path / f"named-{zone}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory


class Named:
    """A running ``named -g`` with its directory (config, zone, journal, key, log)."""

    def __init__(self, directory: Path, zone: str, port: int, key_file: Path, proc: subprocess.Popen):
        self.directory = directory
        self.zone = zone
        self.port = port
        self.key_file = key_file
        self.key_name = KEY_NAME
        self.log_path = directory / "named.log"
        self._proc = proc

    def flag_value(self) -> str:
        """The ``--acme-dns-rfc2136`` value: ``127.0.0.1:PORT,KEY_NAME,KEY_FILE``."""
        return f"127.0.0.1:{self.port},{self.key_name},{self.key_file}"

    def txt(self, name: str) -> list[str]:
        """The TXT values ``dig`` reads for ``name`` now (sorted, quotes removed)."""
        dig = _tool("dig")
        if not dig:
            pytest.skip("dig is not installed: apt-get install bind9-dnsutils")
        out = subprocess.run(
            [dig, "@127.0.0.1", "-p", str(self.port), "TXT", name, "+short", "+norecurse",
             "+time=2", "+tries=2"],
            check=True, capture_output=True, text=True,
        ).stdout
        return sorted(line.strip().strip('"') for line in out.splitlines() if line.strip())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self.directory.parent == Path("/var/cache/bind"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Named:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_named(tmp_path: Path, zone: str, records: list[str]) -> Named:
    """Starts ``named`` serving ``zone`` (apex and wildcard A 127.0.0.1, plus ``records``,
    zone-file lines relative to the apex) on a free loopback port; key ``postern-acme`` may
    update TXT records anywhere in the zone. Returns once it answers."""
    named = _tool("named")
    if not named:
        pytest.skip("BIND 9 is not installed: apt-get install bind9 bind9-dnsutils")
    zone = zone.rstrip(".")
    directory = _named_dir(Path(tmp_path), zone)
    key_file = directory / f"{KEY_NAME}.key"
    key_file.write_text(_key_statement(KEY_NAME))
    key_file.chmod(0o600)
    zone_file = directory / f"{zone}.zone"
    zone_file.write_text(
        "\n".join(
            [
                "$TTL 60",
                f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60",
                f"@ IN NS ns.{zone}.",
                "@ IN A 127.0.0.1",
                "* IN A 127.0.0.1",
                "ns IN A 127.0.0.1",
                *records,
                "",
            ]
        )
    )
    port = _free_port()
    conf = directory / "named.conf"
    conf.write_text(
        f"""include "{key_file}";
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{zone_file}";
    update-policy {{ grant "{KEY_NAME}" zonesub TXT; }};
}};
"""
    )
    log = open(directory / "named.log", "wb")
    proc = subprocess.Popen([named, "-g", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    server = Named(directory, zone, port, key_file, proc)
    deadline = time.monotonic() + WAIT
    while not _soa_answered(port, zone):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"named did not start on port {port}; its log:\n{server.log()}")
        time.sleep(0.1)
    return server
