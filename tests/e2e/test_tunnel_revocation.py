"""Tunnel revocation and agent recovery, through the real binaries in network namespaces.

The topology of ``test_tunnel_e2e`` (gateway in A, private upstream in B, agents in C). The
upstream in B (``tunnel_holders.py upstream``) serves HTTP/1.1 with keep-alive (and a
``/stream`` response that never finishes) and echoes on a raw TCP port; the gateway has an
HTTP Service ``web`` and a TCP Service ``raw`` in front of them.

A holder process in C (``tunnel_holders.py hold``) opens, through an agent, a keep-alive HTTP
connection that got one answer, an HTTP response still streaming, and a raw TCP connection,
then reports when each ended. Before revocation was enforced these stalled for ever (the
peer was removed, nothing told the client).

* ``test_deleted_session_and_disabled_user_are_cut``: deleting alice's Session (kernel-mode
  agent) and disabling bob (userspace agent) end all their connections within 1.5 s
  (with an RST, passed on to the local connection in userspace mode), their peers go and
  nothing answers them any more; the others are untouched.
* ``test_expiry_cuts_and_the_agent_logs_in_again_or_says_it_cannot``: with ``--token-ttl`` and
  ``--login-ttl`` short, carol's OAuth2 agent is cut at expiry with nothing arriving, logs in
  again by itself and reaches the Services again; dave's agent (a ``postern login`` session,
  nothing to log in again with) says so in ``postern status`` and its log.
* ``test_agent_reconnects_after_gateway_restart``: the gateway restarts on the same data
  directory under a connected agent, which handshakes again and reaches the Service.
* ``test_kernel_agent_logs_in_again_with_its_auth_token``: a kernel-mode agent started with
  an auth token is cut (RST) when its Session is deleted and logs in again by itself.
* ``test_userspace_agent_comes_back_on_a_new_address_after_login``: a cut agent with nothing
  to log in with waits; after ``postern login`` it rebuilds the tunnel on a new address (its
  old one was taken meanwhile) and serves the same local port again.

Root, ``ip``, ``curl``, ``python3`` and /dev/net/tun are needed; otherwise skipped with the
reason printed.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pytest

from conftest import DOMAIN, free_port
from test_tunnel_e2e import (A_C, B_A, WG_PORT, GatewayInA, Topology, in_netns, skip_reason,
                             wait_for)

HOLDERS = Path(__file__).with_name("tunnel_holders.py")
UP_HTTP, UP_TCP = 8000, 9001
WEB_PORT, RAW_PORT = 8080, 9000
LIMIT = 1.5  # seconds: the 1 s promise plus margin for process and scheduling noise

RESOURCES = f"""\
kind: User
metadata: {{name: alice}}
spec: {{type: HUMAN}}
---
kind: User
metadata: {{name: bob}}
spec: {{type: HUMAN, isDisabled: BOB_DISABLED}}
---
kind: User
metadata: {{name: carol}}
spec: {{type: WORKLOAD}}
---
kind: User
metadata: {{name: dave}}
spec: {{type: HUMAN}}
---
kind: Service
metadata: {{name: web}}
spec:
  mode: HTTP
  port: {WEB_PORT}
  config: {{upstream: {{url: "http://{B_A}:{UP_HTTP}"}}}}
  authorization:
    inlinePolicies:
      - spec: {{rules: [{{name: all, effect: ALLOW, condition: {{match: "true"}}}}]}}
---
kind: Service
metadata: {{name: raw}}
spec:
  mode: TCP
  port: {RAW_PORT}
  config: {{upstream: {{url: "tcp://{B_A}:{UP_TCP}"}}}}
  authorization:
    inlinePolicies:
      - spec: {{rules: [{{name: all, effect: ALLOW, condition: {{match: "true"}}}}]}}
"""


def resources(bob_disabled: bool = False) -> str:
    return RESOURCES.replace("BOB_DISABLED", "true" if bob_disabled else "false")


class Holder:
    """``tunnel_holders.py hold`` running in C."""

    def __init__(self, env: "Env", targets: list[str]):
        self.proc = subprocess.Popen(["ip", "netns", "exec", env.topo.c, "python3", str(HOLDERS), "hold", *targets],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        env.stack.callback(self.proc.kill)
        line = self._line(20)
        assert line.strip() == "READY", f"holder: {line!r} {self.proc.stderr.read() if self.proc.poll() is not None else ''}"

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the holder said nothing"
        return self.proc.stdout.readline()

    def ends(self, timeout: float = 35) -> dict[str, list]:
        return json.loads(self._line(timeout))


class Env:
    def __init__(self, bin_dir: Path, tmp_path: Path, stack: ExitStack, serve_extra: list[str]):
        self.bin_dir, self.tmp, self.stack = bin_dir, tmp_path, stack
        self.postern = str(bin_dir / "postern")
        self.topo = stack.enter_context(Topology(str(os.getpid() % 10000), tmp_path))
        up = self.topo.spawn("upstream", self.topo.b, ["python3", "-u", str(HOLDERS), "upstream", B_A,
                                                      str(UP_HTTP), str(UP_TCP)])
        stack.enter_context(in_netns(self.topo.a))

        def upstream_up():
            assert up.poll() is None, self.topo.output("upstream")
            try:
                socket.create_connection((B_A, UP_TCP), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(upstream_up, 10, "the upstream in B")
        root = tmp_path / "gw"
        root.mkdir()
        self.metrics_port = free_port()
        self.gw = GatewayInA(bin_dir, root, ["--wg-listen", f"{A_C}:{WG_PORT}", "--wg-endpoint", f"{A_C}:{WG_PORT}",
                                             "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *serve_extra],
                             None, None)
        stack.callback(self.gw.stop)
        self.gw.start()
        self.topo.restrict_c(self.gw.port)
        self.gw.apply_text(resources(), "services.yaml")

    def peers(self) -> int:
        import httpx
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return int(re.search(r"^postern_tunnel_peers (\d+)$", text, re.M).group(1))

    def agent_env(self, home: Path, **extra: str) -> dict:
        env = dict(os.environ, POSTERN_HOME=str(home), POSTERN_GATEWAY_ADDRESS=f"{A_C}:{self.gw.port}", **extra)
        for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(k, None)
        return env

    def home(self, user: str) -> Path:
        home = self.tmp / f"home-{user}"
        home.mkdir(exist_ok=True)
        return home

    def login(self, user: str) -> tuple[Path, dict]:
        home = self.home(user)
        token = self.gw.create_auth_token(user)
        self.topo.exec_c(self.postern, "login", "--domain", f"{DOMAIN}:{self.gw.port}", "--auth-token", token,
                         "--ca-file", self.gw.ca, env=self.agent_env(home))
        return home, json.loads((home / "session.json").read_text())

    def agent(self, label: str, home: Path, args: list[str], **env: str) -> tuple[subprocess.Popen, dict]:
        proc = self.topo.spawn(label, self.topo.c, [self.postern, "connect", *args], env=self.agent_env(home, **env))

        def ready():
            assert proc.poll() is None, f"{label} exited {proc.returncode}:\n{self.topo.output(label)}"
            p = home / "tunnel.json"
            return json.loads(p.read_text()) if p.exists() else None

        return proc, wait_for(ready, 20, f"{label}'s tunnel.json")

    def status(self, home: Path) -> str:
        r = self.topo.exec_c(self.postern, "status", env=self.agent_env(home), check=False)
        return r.stdout + r.stderr

    def sessions_of(self, user: str) -> list[dict]:
        return [s for s in self.gw.get("sessions") if s.get("user") == user]

    def dump(self) -> None:
        for label, _ in self.topo.procs:
            sys.stderr.write(f"\n----- {label} -----\n{self.topo.output(label)[-6000:]}\n")
        sys.stderr.write(f"\n----- posternd stderr -----\n{self.gw.stderr()[-15000:]}\n")


def addresses(st: dict) -> tuple[str, str]:
    svc = {s["name"]: s["address"] for s in st["services"]}
    return svc["web"], svc["raw"]


def targets(web: str, web_port: int, raw: str, raw_port: int) -> list[str]:
    return [f"http:{web}:{web_port}", f"stream:{web}:{web_port}", f"tcp:{raw}:{raw_port}"]


def assert_cut(ends: dict[str, list], since: float, what: str, kinds: tuple[str, ...]) -> float:
    worst = 0.0
    for target, (at, how) in ends.items():
        assert at is not None, f"{what}: {target} stayed open ({ends})"
        took = at - since
        assert how in kinds, f"{what}: {target} ended with {how} ({ends})"
        assert took < LIMIT, f"{what}: {target} ended {took:.3f}s after ({ends})"
        worst = max(worst, took)
    print(f"{what}: all {len(ends)} connections ended within {worst:.3f}s ({ {t: e[1] for t, e in ends.items()} })")
    return worst


def curl_ok(env: Env, url: str, max_time: float = 2) -> bool:
    status, _ = env.topo.curl_c(url, max_time=max_time)
    return status == 200


def unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def env(bin_dir, tmp_path, request):
    reason = skip_reason()
    if reason:
        print(f"skipping the tunnel revocation tests: {reason}")
        pytest.skip(reason)
    with ExitStack() as stack:
        e = Env(bin_dir, tmp_path, stack, getattr(request, "param", []))
        ok = False
        try:
            yield e
            ok = True
        finally:
            if not ok:
                e.dump()


def test_deleted_session_and_disabled_user_are_cut(env: Env):
    alice_home, alice_session = env.login("alice")
    alice, st = env.agent("alice", alice_home, ["--interface", "ptr0"])
    web, raw = addresses(st)
    bob_home, _ = env.login("bob")
    bob, bst = env.agent("bob", bob_home, ["--userspace", "-p", f"18080:web:{WEB_PORT}", "-p",
                                           f"19000:raw:{RAW_PORT}"])
    assert env.peers() == 2
    alice_hold = Holder(env, targets(web, WEB_PORT, raw, RAW_PORT))
    bob_hold = Holder(env, targets("127.0.0.1", 18080, "127.0.0.1", 19000))

    # alice's Session is deleted: her kernel sockets get an RST.
    t0 = time.time()
    env.gw.ctl("delete", "session", alice_session["session"])
    assert_cut(alice_hold.ends(), t0, "session deleted (kernel mode)", ("reset",))
    assert alice_session["session"] not in env.gw.names("sessions")
    assert env.peers() == 1
    # Once the resets are out her WireGuard peer is gone: nothing answers her any more, not
    # even a refusal.
    time.sleep(0.7)
    status, body = env.topo.curl_c(f"http://{web}:{WEB_PORT}/after", max_time=1)
    assert status == 0, (status, body)

    # bob keeps working while alice is cut; then bob is disabled with an apply.
    assert curl_ok(env, f"http://127.0.0.1:18080/still")
    t0 = time.time()
    env.gw.apply_text(resources(bob_disabled=True), "services.yaml")
    assert_cut(bob_hold.ends(), t0, "user disabled (userspace mode)", ("reset",))
    wait_for(lambda: env.peers() == 0, 2, "bob's peer to go")
    time.sleep(0.7)
    status, body = env.topo.curl_c("http://127.0.0.1:18080/after", max_time=1)
    assert status == 0, (status, body)
    # The gateway logged why, and that it reset the connections.
    log = re.sub(r"\x1b\[[0-9;]*m", "", env.gw.stderr())
    assert re.search(r"tunnel peer revoked.*connections_reset=[1-9]", log), log[-3000:]


@pytest.mark.parametrize("env", [["--token-ttl", "6s", "--login-ttl", "10s"]], indirect=True)
def test_expiry_cuts_and_the_agent_logs_in_again_or_says_it_cannot(env: Env):
    gw = env.gw
    client_id, client_secret = gw.create_oauth2("carol")
    dave_home, _ = env.login("dave")
    dave, dst = env.agent("dave", dave_home, ["--interface", "ptr1", "--check-interval", "1s"])

    carol_home = env.home("carol")
    carol, cst = env.agent("carol", carol_home, ["--userspace", "-p", f"18081:web:{WEB_PORT}", "-p",
                                                 f"19001:raw:{RAW_PORT}", "--check-interval", "1s"],
                           POSTERN_DOMAIN=f"{DOMAIN}:{gw.port}", POSTERN_CLIENT_ID=client_id,
                           POSTERN_CLIENT_SECRET=client_secret, POSTERN_CA_FILE=gw.ca)
    gw.login(gw.admin_token)  # the test's own admin session is short-lived here too
    first = env.sessions_of("carol")
    assert len(first) == 1, first
    expires = unix(first[0]["expiresAt"])
    hold = Holder(env, targets("127.0.0.1", 18081, "127.0.0.1", 19001))
    assert expires - time.time() > 1, "the session expired before the connections were up; raise --token-ttl"
    # Nothing is sent: the gateway must notice the expiry by itself.
    assert_cut(hold.ends(), expires, "session expired (OAuth2 workload)", ("reset",))

    # carol's agent gets a new token and the tunnel works again, without anyone's help.
    t0 = time.monotonic()
    wait_for(lambda: curl_ok(env, f"http://127.0.0.1:18081/again", max_time=1), 15,
             "carol's agent to log in again and reach web", interval=0.2)
    took = time.monotonic() - t0
    print(f"carol's agent logged in again and reached web {took:.2f}s after the expiry cut")
    gw.login(gw.admin_token)
    # The expired Session leaves the store (the gateway's sweep); the new one is listed.
    def only_new_sessions():
        listed = env.sessions_of("carol")
        return listed if all(x["name"] != first[0]["name"] for x in listed) else None

    now = wait_for(only_new_sessions, 5, "the expired Session to leave `get sessions`", interval=0.2)
    assert len(now) == 1, now
    assert "Logged in to" in env.topo.output("carol"), env.topo.output("carol")
    status = env.status(carol_home)
    assert "Reconnects:" in status or "Checked:" in status, status

    # dave's session came from `postern login` alone: once it expires the agent says, in
    # status and in its log, that it cannot log in again and what to do.
    def says_it_cannot():
        text = env.status(dave_home)
        return text if "Problem:" in text else None

    text = wait_for(says_it_cannot, 20, "dave's status to report the problem", interval=0.5)
    assert "expired" in text and "postern login" in text, text
    log = env.topo.output("dave")
    assert "nothing to log in again with" in log, log
    assert dave.poll() is None, "the agent keeps running (a `postern login` would revive it)"
    print(f"dave's status after expiry:\n{text}")


def test_agent_reconnects_after_gateway_restart(env: Env):
    gw = env.gw
    erin_home, _ = env.login("alice")
    erin, st = env.agent("erin", erin_home, ["--userspace", "-p", f"18082:web:{WEB_PORT}", "--check-interval", "1s"])
    assert curl_ok(env, "http://127.0.0.1:18082/before")
    assert gw.stop() == 0
    gw.serve()  # same data directory, port and WireGuard key; the peer table is empty
    t0 = time.monotonic()
    wait_for(lambda: curl_ok(env, "http://127.0.0.1:18082/after", max_time=1), 20,
             "the agent to reach web through the restarted gateway", interval=0.2)
    took = time.monotonic() - t0
    print(f"agent reached web again {took:.2f}s after the gateway restarted")
    assert took < 10, took
    assert env.peers() == 1
    assert erin.poll() is None
    log = env.topo.output("erin")
    assert "registered this agent's key anew" in log or "bringing the tunnel up again" in log, log


def test_kernel_agent_logs_in_again_with_its_auth_token(env: Env):
    gw = env.gw
    token = gw.create_auth_token("alice")
    home = env.home("alice-sidecar")
    agent, st = env.agent("alice-sidecar", home, ["--interface", "ptr2", "--check-interval", "1s"],
                          POSTERN_DOMAIN=f"{DOMAIN}:{gw.port}", POSTERN_AUTH_TOKEN=token, POSTERN_CA_FILE=gw.ca)
    web, raw = addresses(st)
    assert curl_ok(env, f"http://{web}:{WEB_PORT}/before")
    first = json.loads((home / "session.json").read_text())["session"]
    hold = Holder(env, targets(web, WEB_PORT, raw, RAW_PORT))
    t0 = time.time()
    gw.ctl("delete", "session", first)
    assert_cut(hold.ends(), t0, "session deleted (kernel mode, agent with an auth token)", ("reset",))
    m0 = time.monotonic()

    def back():
        st = json.loads((home / "tunnel.json").read_text())
        return curl_ok(env, f"http://{addresses(st)[0]}:{WEB_PORT}/again", max_time=1)

    wait_for(back, 15, "the agent to log in again and reach web", interval=0.2)
    print(f"kernel agent logged in again with its auth token and reached web {time.monotonic() - m0:.2f}s "
          "after its Session was deleted")
    second = json.loads((home / "session.json").read_text())["session"]
    assert second != first and second in gw.names("sessions")
    assert agent.poll() is None
    assert "no longer accepts the session" in env.topo.output("alice-sidecar"), env.topo.output("alice-sidecar")


def test_userspace_agent_comes_back_on_a_new_address_after_login(env: Env):
    """A revoked agent with nothing to log in with waits; a `postern login` revives it, and
    when its old address went to someone else it rebuilds the tunnel on the new one, keeping
    its local ports."""
    gw = env.gw
    home, session = env.login("bob")
    agent, st = env.agent("bob-rebuild", home, ["--userspace", "-p", f"18083:web:{WEB_PORT}",
                                                "--check-interval", "1s"])
    old = st["address"]
    assert curl_ok(env, "http://127.0.0.1:18083/before")
    gw.ctl("delete", "session", session["session"])

    def problem():
        text = env.status(home)
        return text if "Problem:" in text else None

    wait_for(problem, 10, "the agent to report that it cannot log in again", interval=0.3)
    # Someone else takes the freed address (alice registers a peer through the API).
    with gw.http() as http:
        login = http.post(gw.url(None, "/api/v1/login"), json={"authToken": gw.create_auth_token("alice")})
        access = login.json()["accessToken"]
        taken = http.post(gw.url(None, "/api/v1/tunnel/connect"), json={"publicKey": "A" * 43 + "="},
                          headers={"authorization": f"Bearer {access}"})
    assert taken.status_code == 200 and taken.json()["address"] == old, taken.text
    # bob logs in again; the running agent picks the session up on a new address.
    env.topo.exec_c(env.postern, "login", "--domain", f"{DOMAIN}:{gw.port}", "--auth-token",
                    gw.create_auth_token("bob", "bob-token-2"), "--ca-file", gw.ca, env=env.agent_env(home))
    wait_for(lambda: curl_ok(env, "http://127.0.0.1:18083/after", max_time=1), 15,
             "the agent to come back on its local port", interval=0.2)
    st = json.loads((home / "tunnel.json").read_text())
    assert st["address"] != old and st["reconnects"] == 1, st
    assert "Reconnects: 1" in env.status(home)
    assert agent.poll() is None
    print(f"agent rebuilt on {st['address']} (was {old}), same local port")
