"""The BIND helper for the DNS-01 tests (``dns_server.py``) on its own, with BIND's own
clients: the zone answers A 127.0.0.1 for the apex and any name under it (what Pebble
resolves the gateway's names with), the key file it hands out signs updates of TXT records
(``nsupdate -k``, as the gateway will), other record types are refused, and ``stop`` ends it.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dns_server import start_named


def _dig(port: int, rtype: str, name: str) -> list[str]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), rtype, name, "+short", "+norecurse"],
        check=True, capture_output=True, text=True,
    ).stdout
    return out.split()


def _nsupdate(key_file, port: int, update: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsupdate", "-k", str(key_file)],
        input=f"server 127.0.0.1 {port}\n{update}\nsend\n",
        capture_output=True, text=True, timeout=30,
    )


def test_zone_resolves_every_name_to_loopback_and_takes_signed_txt_updates(tmp_path):
    if not (shutil.which("dig") and shutil.which("nsupdate")):
        pytest.skip("dig/nsupdate are not installed: apt-get install bind9-dnsutils")
    named = start_named(tmp_path, "postern.test", ['extra IN TXT "seeded"'])
    try:
        server, key_name, key_file = named.flag_value().split(",")
        assert server == f"127.0.0.1:{named.port}"
        assert (key_name, key_file) == (named.key_name, str(named.key_file))
        assert f'key "{key_name}"' in named.key_file.read_text()

        assert _dig(named.port, "A", "postern.test") == ["127.0.0.1"]
        assert _dig(named.port, "A", "gemini.postern.test") == ["127.0.0.1"]
        assert named.txt("extra.postern.test") == ["seeded"]
        assert named.txt("_acme-challenge.postern.test") == []

        added = _nsupdate(key_file, named.port, "update add _acme-challenge.postern.test 60 TXT digest")
        assert added.returncode == 0, added.stdout + added.stderr
        assert named.txt("_acme-challenge.postern.test") == ["digest"]

        other = _nsupdate(key_file, named.port, "update add www.postern.test 60 A 192.0.2.1")
        assert other.returncode != 0 and "REFUSED" in other.stdout + other.stderr
        assert _dig(named.port, "A", "www.postern.test") == ["127.0.0.1"]
    finally:
        named.stop()
    assert named._proc.poll() is not None
