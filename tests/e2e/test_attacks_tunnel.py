"""WireGuard source spoofing, the attack table's tunnel row, through the real gateway and
the real kernel-mode agent: a peer that sends packets from an address it does not own (here,
another connected user's tunnel address) gets nothing through; its own address works.

Everything runs in one network namespace (``wt-attack-spoof-<pid>``): the gateway with
``--wg-listen 127.0.0.1:<port>``, the upstream, and ``postern connect`` with its TUN device.
The agent encrypts whatever the device gives it, so adding a second address to the device
and binding curl to it is exactly a peer lying about its source. Skipped, with the reason
printed, unless root with ``ip`` and ``/dev/net/tun``."""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import DOMAIN, free_port
from standin import StandIn

CLONE_NEWNET = 0x40000000
DEV = "wtatk0"
SVC_PORT = 8080
_libc = ctypes.CDLL(None, use_errno=True)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None or shutil.which("curl") is None:
        return "ip or curl is not installed"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    return None


def sh(*cmd: str, check: bool = True, env=None, timeout: float = 20) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout} {r.stderr}")
    return r


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextmanager
def netns(name: str):
    """A fresh namespace ``name``; this thread (and what it starts) runs inside it."""
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(orig)
        finally:
            os.close(orig)
            os.close(target)
    finally:
        sh("ip", "netns", "del", name, check=False)


def curl(url: str, *extra: str) -> tuple[int, str]:
    r = sh("curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "3", *extra, url, check=False)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def test_spoofed_tunnel_source_is_dropped(start_gateway, tmp_path, monkeypatch):
    reason = skip_reason()
    if reason:
        print(f"skipping the tunnel spoofing test: {reason}")
        pytest.skip(reason)
    # A spoofed SYN gets no answer either way (the reply would go to the address's owner), so
    # the gateway's own account of the drop is what shows the check ran.
    monkeypatch.setenv("RUST_LOG", "info,postern_common::wireguard=debug")
    agent: subprocess.Popen | None = None
    with netns(f"wt-attack-spoof-{os.getpid() % 100000}"):
        up = StandIn("private").start()
        gw = start_gateway(extra_args=["--wg-listen", f"127.0.0.1:{free_port()}"])
        try:
            gw.apply_text(f"""\
kind: User
metadata: {{name: alice}}
spec: {{type: HUMAN}}
---
kind: User
metadata: {{name: bob}}
spec: {{type: HUMAN}}
---
kind: Service
metadata: {{name: web}}
spec:
  mode: HTTP
  port: {SVC_PORT}
  config: {{upstream: {{url: "{up.url}"}}}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition: {{match: 'ctx.user.metadata.name == "bob"'}}
""")
            # bob is connected (a registered peer with an address), his agent elsewhere.
            bob_tok = gw.token(*gw.create_oauth2("bob", "bob-oauth2"))
            bob_key = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            with gw.http() as h:
                r = h.post(gw.url(None, "/api/v1/tunnel/connect"), headers={"Authorization": f"Bearer {bob_tok}"},
                           json={"publicKey": base64.b64encode(bob_key).decode()})
            assert r.status_code == 200, r.text
            bob_addr = r.json()["address"].split("/")[0]

            # alice's kernel-mode agent.
            home = tmp_path / "alice-home"
            home.mkdir()
            resolv = tmp_path / "resolv.conf"
            resolv.write_text("nameserver 127.0.0.53\n")
            env = dict(gw.env, POSTERN_HOME=str(home), POSTERN_RESOLV_CONF=str(resolv))
            sh(str(gw.bin_dir / "postern"), "login", "--domain", f"{DOMAIN}:{gw.port}", "--auth-token",
               gw.create_auth_token("alice"), "--ca-file", gw.ca, env=env)
            log = open(tmp_path / "agent.log", "wb")
            agent = subprocess.Popen([str(gw.bin_dir / "postern"), "connect", "--interface", DEV], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while not (home / "tunnel.json").exists():
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()
                assert time.monotonic() < deadline, "no tunnel.json after 20 s"
                time.sleep(0.1)
            st = json.loads((home / "tunnel.json").read_text())
            alice_addr = st["address"].split("/")[0]
            web = {s["name"]: s for s in st["services"]}["web"]
            assert alice_addr != bob_addr, (alice_addr, bob_addr)

            # Control: alice's own address reaches the gateway, which denies alice.
            status, body = curl(f"http://{web['address']}:{SVC_PORT}/own")
            assert status == 403, (status, body, (tmp_path / "agent.log").read_text())
            gw.wait_access(lambda e: e.get("via") == "tunnel" and e.get("user") == "alice" and e.get("status") == 403)

            # The lie: alice's peer sends from bob's address (and from an unassigned one).
            for lie in (bob_addr, "100.64.3.3"):
                sh("ip", "addr", "add", f"{lie}/32", "dev", DEV)
                status, body = curl(f"http://{web['address']}:{SVC_PORT}/spoofed", "--interface", lie)
                assert status == 0, (lie, status, body)
            time.sleep(0.5)
            plain = re.sub(r"\x1b\[[0-9;]*m", "", gw.stderr())
            dropped = [line for line in plain.splitlines() if "spoofed inner source" in line]
            said = lambda a: any(re.search(rf"src={re.escape(a)}(\s|$)", line) for line in dropped)  # noqa: E731
            assert said(bob_addr) and said("100.64.3.3"), dropped[-5:]
            assert not said(alice_addr), dropped[-5:]
            assert [q.path for q in up.requests] == [], [q.path for q in up.requests]
            entries = gw.access_entries()
            assert not [e for e in entries if e.get("path") == "/spoofed"], entries
            assert not [e for e in entries if e.get("user") == "bob"], entries

            # alice's own address still works after the lies (the peer was not disturbed).
            assert curl(f"http://{web['address']}:{SVC_PORT}/own")[0] == 403
        finally:
            if agent is not None and agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    agent.kill()
            gw.stop()
            up.stop()
