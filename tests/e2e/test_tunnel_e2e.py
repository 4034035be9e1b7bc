"""Our agent against our gateway: ``postern connect`` through ``posternd serve --wg-listen``.

Topology (three network namespaces, no host networking involved):

* **A** runs ``posternd serve`` (HTTPS control API on ``0.0.0.0:<port>`` inside A, WireGuard
  on ``10.234.2.1:51820``). The test process itself enters A (``setns``) while the gateway
  runs, so the ``conftest`` helpers (``posternctl``, ``wait_access``) work unchanged.
* **B** runs the private upstream (``python3 -m http.server`` on ``10.234.1.2``), reachable
  only from A over the veth pair A<->B. A does not forward, and C has no route to B.
* **C** runs the agents. It reaches A over the veth pair A<->C; when ``nft`` is available
  an output rule in C lets through only UDP to the WireGuard port and TCP to the HTTPS control
  port (the agent logs in and calls ``/api/v1/tunnel/connect`` over HTTPS). Without ``nft``
  C can also reach A's other TCP ports; the test prints a note and goes on.

Checked, in one run (the topology is shared):

1. alice's kernel-mode agent (``postern login`` + ``postern connect``, root, its own
   POSTERN_HOME, ``POSTERN_RESOLV_CONF`` = C's ``/etc/netns/<C>/resolv.conf``):
   ``curl http://web.local:8080/`` in C gets 200 from the upstream in B; the access log says
   ``via: tunnel``, user alice; ``postern status`` shows the address and a recent handshake.
2. bob's userspace agent (``--userspace -p 18080:web:8080 --socks5 127.0.0.1:1080``) runs
   at the same time: 403 through 127.0.0.1:18080; after ``posternctl apply`` grants him, 200
   within a second (hot reload through the tunnel); ``curl --socks5-hostname`` reaches
   ``web.local``.
3. Deleting alice's Session with ``posternctl`` makes her next request fail within a second.
4. SIGTERM to alice's agent: exit 0, resolv.conf restored byte for byte, device gone,
   ``tunnel.json`` removed.

Skipped, with the reason printed, unless root with ``ip``, ``curl``, ``python3`` and
/dev/net/tun. Namespaces, /etc/netns/<C> and processes are removed whatever happens.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from conftest import DOMAIN, Gateway, free_port
from test_tunnel_gateway import DNS_QUERY

A_B, B_A = "10.234.1.1", "10.234.1.2"  # veth A<->B
A_C, C_A = "10.234.2.1", "10.234.2.2"  # veth A<->C
WG_PORT = 51820
UP_PORT = 8000
SVC_PORT = 8080
LOCAL_PORT = 18080
SOCKS = "127.0.0.1:1080"
DEV = "pte0"

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "curl", "python3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    return None


def sh(*cmd: str, check: bool = True, timeout: float = 20, env=None, input=None) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout.strip()} {r.stderr.strip()}")
    return r


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextmanager
def in_netns(name: str):
    """Moves this (single) thread, and the processes it starts, into namespace ``name``."""
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


class Topology:
    def __init__(self, tag: str, workdir: Path):
        self.a, self.b, self.c = f"pte{tag}a", f"pte{tag}b", f"pte{tag}c"
        self.etc_c = Path(f"/etc/netns/{self.c}")
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.firewall = False

    def __enter__(self) -> "Topology":
        try:
            self._setup()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _setup(self) -> None:
        a, b, c = self.a, self.b, self.c
        for ns in (a, b, c):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "pteab", "netns", a, "type", "veth", "peer", "name", "pteba", "netns", b)
        sh("ip", "link", "add", "pteac", "netns", a, "type", "veth", "peer", "name", "pteca", "netns", c)
        for ns, dev, addr in ((a, "pteab", A_B), (b, "pteba", B_A), (a, "pteac", A_C), (c, "pteca", C_A)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        # `ip netns exec C` bind-mounts this over /etc/resolv.conf; the kernel agent edits it
        # through POSTERN_RESOLV_CONF.
        self.etc_c.mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text("# test resolver of namespace C\nnameserver 192.0.2.1\n")
        if shutil.which("nft"):
            rules = f"""
table inet postern_e2e {{
  chain out {{
    type filter hook output priority 0; policy accept;
    oifname "pteca" ip daddr {A_C} udp dport {WG_PORT} accept
    oifname "pteca" ip daddr {A_C} tcp dport {{HTTPS_PORT}} accept
    oifname "pteca" drop
  }}
}}
"""
            self._rules = rules
        else:
            self._rules = None

    def restrict_c(self, https_port: int) -> None:
        if self._rules is None:
            print("note: nft is not installed; C can reach every TCP port of A, not only the control port")
            return
        r = sh("ip", "netns", "exec", self.c, "nft", "-f", "-", check=False,
               input=self._rules.replace("{HTTPS_PORT}", str(https_port)))
        if r.returncode != 0:
            print(f"note: nft rules not loaded ({r.stderr.strip()}); C can reach every TCP port of A")
            return
        self.firewall = True

    @property
    def resolv_conf(self) -> Path:
        return self.etc_c / "resolv.conf"

    def spawn(self, label: str, ns: str, args: list[str], env=None) -> subprocess.Popen:
        out = open(self.workdir / f"{label}.out", "wb")
        err = open(self.workdir / f"{label}.err", "wb")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=err, env=env)
        out.close()
        err.close()
        self.procs.append((label, p))
        return p

    def output(self, label: str) -> str:
        text = ""
        for ext in ("out", "err"):
            p = self.workdir / f"{label}.{ext}"
            if p.exists():
                text += p.read_text(errors="replace")
        return text

    def stop(self, p: subprocess.Popen, timeout: float = 10) -> int:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        return p.returncode

    def __exit__(self, *exc) -> None:
        for _, p in reversed(self.procs):
            try:
                self.stop(p, timeout=5)
            except Exception:
                pass
        for ns in (self.a, self.b, self.c):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.etc_c, ignore_errors=True)

    def exec_c(self, *cmd: str, env=None, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.c, *cmd, env=env, check=check, timeout=timeout)

    def curl_c(self, url: str, *extra: str, max_time: float = 5) -> tuple[int, str]:
        r = self.exec_c("curl", "-sS", "--max-time", str(max_time), "-o", "/dev/stdout", "-w", "\n%{http_code}",
                        *extra, url, check=False, timeout=max_time + 5)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body + r.stderr


class GatewayInA(Gateway):
    """conftest's Gateway, listening on every address of namespace A (so C can reach it)."""

    def serve_args(self) -> list[str]:
        return [f"0.0.0.0:{self.port}" if a == f"127.0.0.1:{self.port}" else a for a in super().serve_args()]


def services_yaml(upstream: str, bob_allowed: bool) -> str:
    bob_rule = """\
            - name: bob-too
              effect: ALLOW
              condition:
                match: ctx.user.metadata.name == "bob"
""" if bob_allowed else ""
    return f"""\
kind: User
metadata:
  name: alice
spec:
  type: HUMAN
---
kind: User
metadata:
  name: bob
spec:
  type: HUMAN
---
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
            - name: alice-only
              effect: ALLOW
              condition:
                match: ctx.user.metadata.name == "alice"
{bob_rule}"""


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def test_agent_against_gateway(bin_dir, tmp_path):
    reason = skip_reason()
    if reason:
        print(f"skipping the tunnel end-to-end test: {reason}")
        pytest.skip(reason)
    tag = str(os.getpid() % 10000)
    postern = str(bin_dir / "postern")
    gw: GatewayInA | None = None
    ok = False
    with Topology(tag, tmp_path) as topo, ExitStack() as stack:
        try:
            # The private upstream in B.
            site = tmp_path / "site"
            site.mkdir()
            (site / "index.html").write_text("private upstream in B\n")
            upstream = topo.spawn("upstream", topo.b, ["python3", "-u", "-m", "http.server", str(UP_PORT),
                                                       "--bind", B_A, "--directory", str(site)])
            stack.enter_context(in_netns(topo.a))

            def upstream_up():
                try:
                    socket.create_connection((B_A, UP_PORT), timeout=0.5).close()
                    return True
                except OSError:
                    assert upstream.poll() is None, topo.output("upstream")
                    return False

            wait_for(upstream_up, 10, "the upstream in B")

            root = tmp_path / "gw"
            root.mkdir()
            metrics_port = free_port()
            gw = GatewayInA(bin_dir, root, ["--wg-listen", f"{A_C}:{WG_PORT}",
                                            "--wg-endpoint", f"{A_C}:{WG_PORT}",
                                            "--metrics-listen", f"127.0.0.1:{metrics_port}"], None, None)

            def tunnel_peers() -> int:
                import httpx
                text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
                return int(re.search(r"^postern_tunnel_peers (\d+)$", text, re.M).group(1))

            stack.callback(gw.stop)
            gw.start()
            topo.restrict_c(gw.port)
            gw.apply_text(services_yaml(f"http://{B_A}:{UP_PORT}", bob_allowed=False), "web.yaml")

            # C reaches neither B nor (with the firewall) anything of A but the two ports.
            status, _ = topo.curl_c(f"http://{B_A}:{UP_PORT}/", max_time=1)
            assert status == 0, "C reached the upstream in B directly"
            if topo.firewall:
                r = topo.exec_c("python3", "-c", f"import socket; socket.create_connection(('{A_C}', 22), 1)",
                                check=False)
                assert r.returncode != 0 and ("Operation not permitted" in r.stderr or "timed out" in r.stderr), r.stderr

            def agent_env(home: Path, **extra: str) -> dict:
                env = dict(os.environ, POSTERN_HOME=str(home), POSTERN_GATEWAY_ADDRESS=f"{A_C}:{gw.port}", **extra)
                for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                          "POSTERN_DOMAIN", "POSTERN_AUTH_TOKEN"):
                    env.pop(k, None)
                return env

            def login(user: str) -> tuple[Path, dict]:
                home = tmp_path / f"home-{user}"
                home.mkdir()
                token = gw.create_auth_token(user)
                topo.exec_c(postern, "login", "--domain", f"{DOMAIN}:{gw.port}", "--auth-token", token,
                            "--ca-file", gw.ca, env=agent_env(home))
                return home, json.loads((home / "session.json").read_text())

            def wait_tunnel(home: Path, proc: subprocess.Popen, label: str) -> dict:
                def ready():
                    assert proc.poll() is None, f"{label} exited {proc.returncode}:\n{topo.output(label)}"
                    p = home / "tunnel.json"
                    return json.loads(p.read_text()) if p.exists() else None
                return wait_for(ready, 20, f"{label}'s tunnel.json")

            # ---- 1. alice, kernel mode -------------------------------------------------
            original_resolv = topo.resolv_conf.read_bytes()
            alice_home, alice_session = login("alice")
            alice = topo.spawn("alice", topo.c, [postern, "connect", "--interface", DEV],
                               env=agent_env(alice_home, POSTERN_RESOLV_CONF=str(topo.resolv_conf)))
            st = wait_tunnel(alice_home, alice, "alice")
            assert st["mode"] == "kernel" and st["interface"] == DEV, st
            web = {s["name"]: s for s in st["services"]}["web"]
            assert web["port"] == SVC_PORT, st
            routes = topo.exec_c("ip", "route").stdout
            assert f"100.65.0.0/16 dev {DEV}" in routes and "default" not in routes, routes
            resolv = topo.resolv_conf.read_text()
            assert resolv.startswith("nameserver 100.65.0.53") or "\nnameserver 100.65.0.53" in resolv, resolv

            status, body = topo.curl_c(f"http://web.local:{SVC_PORT}/")
            assert status == 200 and "private upstream in B" in body, (status, body, topo.output("alice"))
            line = gw.wait_access(lambda e: e.get("via") == "tunnel" and e.get("user") == "alice"
                                  and e.get("status") == 200)
            assert line["service"] == "web" and line["session"] == alice_session["session"], line
            # The upstream saw A's address: the request went C -> (UDP) -> A -> B.
            wait_for(lambda: f'{A_B} - - ' in topo.output("upstream"), 5, "the upstream's log line")

            def status_text() -> str | None:
                r = topo.exec_c(postern, "status", env=agent_env(alice_home), check=False)
                assert r.returncode == 0, r.stdout + r.stderr
                return r.stdout if re.search(r"Handshake: \d+s ago", r.stdout) else None

            # The tunnel's DNS server is first in resolv.conf: it must refuse names outside
            # its zone (the resolver then asks the next server), not NXDOMAIN them, which
            # would break every other lookup on the machine (it did before the fix).
            def dns_rcode(name: str) -> int:
                return int(topo.exec_c("python3", "-c", DNS_QUERY, name, "1").stdout.split()[0])

            assert dns_rcode("example.com") == 5
            assert dns_rcode("nope.local") == 3 and dns_rcode("web.local") == 0

            # IPv6 through the device too (the Service's address carries the same index).
            hi, lo = map(int, web["address"].split(".")[2:])
            status, body = topo.curl_c(f"http://[fd70:7376::{hi * 256 + lo:x}]:{SVC_PORT}/v6", "-g")
            assert status == 404, (status, body)  # http.server has no /v6: it answered

            text = wait_for(status_text, 6, "a handshake in `postern status`", interval=0.5)
            assert st["address"] in text and st["address"].startswith("100.64.0."), text
            age = int(re.search(r"Handshake: (\d+)s ago", text).group(1))
            assert age < 30, text
            print(f"alice (kernel): {st['address']}, status:\n{text}")

            # ---- 2. bob, userspace, at the same time -------------------------------------
            bob_home, _ = login("bob")
            bob = topo.spawn("bob", topo.c, [postern, "connect", "--userspace", "-p",
                                             f"{LOCAL_PORT}:web:{SVC_PORT}", "--socks5", SOCKS],
                             env=agent_env(bob_home))
            bst = wait_tunnel(bob_home, bob, "bob")
            assert bst["mode"] == "userspace" and bst["address"] != st["address"], bst
            assert alice.poll() is None
            assert tunnel_peers() == 2  # was always 0 before the metrics fix
            status, body = topo.curl_c(f"http://127.0.0.1:{LOCAL_PORT}/")
            assert status == 403, (status, body, topo.output("bob"))
            gw.wait_access(lambda e: e.get("via") == "tunnel" and e.get("user") == "bob" and e.get("status") == 403)
            # alice still gets through while bob's agent runs.
            assert topo.curl_c(f"http://web.local:{SVC_PORT}/")[0] == 200

            gw.apply_text(services_yaml(f"http://{B_A}:{UP_PORT}", bob_allowed=True), "web.yaml")
            t0 = time.monotonic()
            while True:
                status, body = topo.curl_c(f"http://127.0.0.1:{LOCAL_PORT}/", max_time=2)
                if status == 200 or time.monotonic() - t0 > 5:
                    break
                time.sleep(0.05)
            took = time.monotonic() - t0
            assert status == 200, (status, body)
            assert took < 1.0, f"bob's grant took {took:.2f}s to apply"
            print(f"bob (userspace): 403, then 200 {took:.2f}s after apply")
            gw.wait_access(lambda e: e.get("via") == "tunnel" and e.get("user") == "bob" and e.get("status") == 200)

            # ---- 5. SOCKS5 ---------------------------------------------------------------
            status, body = topo.curl_c(f"http://web.local:{SVC_PORT}/", "--socks5-hostname", SOCKS)
            assert status == 200 and "private upstream in B" in body, (status, body, topo.output("bob"))

            # ---- 3. deleting alice's Session cuts her off --------------------------------
            gw.ctl("delete", "session", alice_session["session"])
            t0 = time.monotonic()
            status, body = topo.curl_c(f"http://{web['address']}:{SVC_PORT}/after", max_time=1)
            took = time.monotonic() - t0
            assert status != 200, body
            assert took < 2.5, took
            print(f"alice after session deletion: status {status} ({body.strip()[-80:]!r}) in {took:.2f}s")
            assert tunnel_peers() == 1
            # bob is unaffected.
            assert topo.curl_c(f"http://127.0.0.1:{LOCAL_PORT}/")[0] == 200

            # ---- 4. SIGTERM restores the machine -----------------------------------------
            rc = topo.stop(alice, timeout=15)
            assert rc == 0, f"alice's agent exited {rc}:\n{topo.output('alice')}"
            assert topo.resolv_conf.read_bytes() == original_resolv
            assert topo.exec_c("ip", "link", "show", DEV, check=False).returncode != 0, "device left behind"
            assert "100.65.0.0/16" not in topo.exec_c("ip", "route").stdout
            assert not (alice_home / "tunnel.json").exists()

            r = topo.exec_c(postern, "disconnect", env=agent_env(bob_home), timeout=20)
            assert "Disconnected" in r.stdout, r.stdout + r.stderr
            assert bob.wait(timeout=5) == 0
            assert tunnel_peers() == 0
            for label in ("alice", "bob"):
                print(f"----- {label}'s agent output -----\n{topo.output(label).strip()}")
            ok = True
        finally:
            if not ok:
                for label, _ in topo.procs:
                    sys.stderr.write(f"\n----- {label} -----\n{topo.output(label)[-6000:]}\n")
                if gw is not None:
                    sys.stderr.write(f"\n----- posternd stderr -----\n{gw.stderr()[-15000:]}\n")
