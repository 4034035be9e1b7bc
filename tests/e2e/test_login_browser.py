"""``postern login`` by browser (RFC 8252), end to end: the real ``postern`` binary, the real
gateway and a real OpenID provider (``oidc-provider``, from ``oidc.py``), with a scripted
browser following the sign-in address that ``postern login`` prints.

* ``test_person_logs_in_and_connects_under_their_policy``: alice and grace each run
  ``postern login --no-browser``; the browser signs in at the provider's own form and is sent
  back to the agent's loopback redirect; each gets a saved agent Session (``whoami``, the
  admin's view of the Session, ``posternctl`` working for alice, an admin, and refused for
  grace), ``BROWSER`` is never started, and ``postern connect --userspace`` reaches the private Service ``web``: 200 for alice, 403 by policy for grace,
  both ``via: tunnel`` under their own names.
* ``test_wrong_state_on_the_loopback_is_refused``: the gateway's redirect with a changed or
  missing ``state`` gets 403 from the loopback and does not end the login (nor spend the
  code); the genuine redirect then completes it.
* ``test_the_browser_is_started_without_no_browser``: ``$BROWSER`` gets the printed address.
* ``test_a_person_without_a_user_is_refused_in_the_terminal``: the gateway's
  ``error=access_denied`` reaches the terminal with its description; nothing is saved.

The tunnel runs in userspace mode in the test's own network namespace (WireGuard over
127.0.0.1), so no root is needed.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import DOMAIN, free_port
from standin import StandIn

pytest.register_assert_rewrite("oidc")  # before the import, so its asserts explain themselves
from oidc import (ALICE, BOB, CLIENT_ID, IDP_NAME, SECRET_NAME, account, client, human,
                  identity_provider, query_of, with_query)

pytest_plugins = ["oidc"]  # fixture idp_factory

GRACE = account("grace", "grace@corp.example", groups=["sales"])
SVC_PORT = 8080
WAIT = 60.0


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def web_service(upstream: str) -> str:
    """A private Service that only alice may use."""
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
            - name: alice-only
              effect: ALLOW
              condition:
                match: ctx.user.metadata.name == "alice"
"""


class Env:
    def __init__(self, gw, idp, web, tmp: Path):
        self.gw, self.idp, self.web, self.tmp = gw, idp, web, tmp
        self.procs: list[subprocess.Popen] = []

    @property
    def domain(self) -> str:
        return f"{DOMAIN}:{self.gw.port}"

    def home(self, who: str) -> Path:
        h = self.tmp / f"home-{who}"
        h.mkdir(exist_ok=True)
        return h

    def env(self, home: Path, browser_log: Path | None = None) -> dict:
        env = dict(self.gw.env, POSTERN_HOME=str(home))
        for k in ("POSTERN_DOMAIN", "POSTERN_AUTH_TOKEN", "POSTERN_CLIENT_ID", "POSTERN_CLIENT_SECRET",
                  "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(k, None)
        if browser_log is not None:
            script = self.tmp / f"browser-{browser_log.stem}.sh"
            script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{browser_log}'\n")
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
            env["BROWSER"] = str(script)
        return env

    def run(self, home: Path, binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([self.gw.bin(binary), *args], capture_output=True, text=True, timeout=WAIT,
                           env=self.env(home))
        if check:
            assert r.returncode == 0, (binary, args, r.stdout, r.stderr)
        return r

    def postern(self, home: Path, *args: str) -> subprocess.CompletedProcess:
        return self.run(home, "postern", *args)

    def browser(self):
        from oidc import Browser
        return Browser(self.gw.ca)


class CliLogin:
    """A running ``postern login`` (no auth token) and its stderr, line by line."""

    def __init__(self, env: Env, home: Path, *args: str, browser_log: Path | None = None):
        self.home = home
        self.browser_log = browser_log or (env.tmp / f"{home.name}-browser.log")
        cmd = [env.gw.bin("postern"), "login", "--domain", env.domain, "--ca-file", env.gw.ca,
               "--timeout", "2m", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env.env(home, self.browser_log))
        env.procs.append(self.proc)
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)

    def sign_in_url(self) -> str:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, f"postern login exited {self.proc.returncode}: {self.err}"
                continue
            self.err.append(line)
            if "https://" in line:
                return line[line.index("https://"):].strip()
        raise AssertionError(f"no sign-in address on stderr after {WAIT}s: {self.err}")

    def finish(self) -> tuple[int, str, str]:
        # stdout only: stderr belongs to the reader thread (communicate() would race it for
        # the same pipe and could swallow the lines the test checks).
        # (What login prints on stdout is a few lines: it fits the pipe while we wait.)
        self.proc.wait(timeout=WAIT)
        out = self.proc.stdout.read()
        # All of stderr is read once the reader sees its end (the process has exited).
        self.reader.join(timeout=WAIT)
        while not self.lines.empty():
            self.err.append(self.lines.get())
        return self.proc.returncode, out, "".join(self.err)


@pytest.fixture
def env(start_gateway, idp_factory, tmp_path):
    udp = free_udp_port()
    gw = start_gateway(["--wg-listen", f"127.0.0.1:{udp}", "--wg-endpoint", f"127.0.0.1:{udp}"])
    secret = "idp-client-" + os.urandom(12).hex()
    with StandIn("web") as web:
        idp = idp_factory([client(CLIENT_ID, secret, gw.url(None, "/callback"))], [ALICE, BOB, GRACE],
                          name="corp")
        gw.create_secret(SECRET_NAME, secret)
        gw.apply_text("---\n".join([identity_provider(IDP_NAME, idp.issuer),
                                    human("alice", ALICE["email"], groups=["admins"]), human("grace", GRACE["email"]),
                                    web_service(web.url)]), "people.yaml")
        e = Env(gw, idp, web, tmp_path)
        try:
            yield e
        finally:
            for p in e.procs:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(timeout=5)


def browser_login(env: Env, who: str) -> tuple[Path, dict, CliLogin]:
    """``postern login --no-browser`` for ``who``, completed by the scripted browser."""
    home = env.home(who)
    login = CliLogin(env, home, "--no-browser")
    url = login.sign_in_url()
    u = urlsplit(url)
    assert (u.scheme, u.netloc, u.path) == ("https", env.domain, "/login"), url
    q = query_of(url)
    assert q["cli_redirect"].startswith("http://127.0.0.1:") and q["cli_redirect"].endswith("/callback"), q
    assert len(q["cli_challenge"]) == 43 and len(q["cli_state"]) >= 43, q
    with env.browser() as b:
        walk = b.walk(url, who)
    final = walk.final
    assert final.url.startswith(q["cli_redirect"] + "?"), walk.hops
    assert final.status == 200 and "Signed in" in final.text, (final, final.text)
    assert "close this tab" in final.text
    # The code came from the gateway's /callback, after the provider's own login form.
    assert any(h.url.startswith(env.idp.issuer) and h.method == "POST" for h in walk.hops), walk.hops
    assert query_of(final.url)["state"] == q["cli_state"]
    rc, out, err = login.finish()
    assert rc == 0, err
    session = json.loads((home / "session.json").read_text())
    assert out == f"Logged in to {env.domain} as {who} (session {session['session']})\n", out
    assert "open this address in a browser" in err, err
    return home, session, login


def connect(env: Env, home: Path, label: str) -> int:
    """Starts ``postern connect --userspace -p LOCAL:web:8080``; returns LOCAL once up."""
    local = free_port()
    p = subprocess.Popen([env.gw.bin("postern"), "connect", "--userspace", "-p", f"{local}:web:{SVC_PORT}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(env.tmp / f"{label}.err", "wb"), env=env.env(home))
    env.procs.append(p)
    deadline = time.monotonic() + WAIT
    while not (home / "tunnel.json").exists():
        assert p.poll() is None, (env.tmp / f"{label}.err").read_text()
        assert time.monotonic() < deadline, "no tunnel.json"
        time.sleep(0.1)
    return local


def test_person_logs_in_and_connects_under_their_policy(env):
    alice_home, alice, alice_login = browser_login(env, "alice")
    grace_home, grace, _ = browser_login(env, "grace")
    assert alice["user"] == "alice" and grace["user"] == "grace"
    assert alice["domain"] == env.domain and alice["caFile"] == env.gw.ca
    assert alice["session"] != grace["session"]
    assert not alice_login.browser_log.exists(), "--no-browser started $BROWSER"

    # The same kind of Session a token login gives, signed in through the provider.
    sessions = {s["name"]: s for s in env.gw.get("sessions")}
    s = sessions[alice["session"]]
    assert s["user"] == "alice" and s["kind"] == "agent", s
    assert s["authentication"]["method"] == "oidc", s
    assert s["authentication"]["identityProvider"] == IDP_NAME, s
    assert "alice" in env.postern(alice_home, "whoami").stdout

    # posternctl uses the saved Session: alice is an admin, grace is not (refused, not unknown).
    r = env.run(alice_home, "posternctl", "get", "services", "-o", "json")
    assert [i["metadata"]["name"] for i in json.loads(r.stdout)] == ["web"], r.stdout
    r = env.run(grace_home, "posternctl", "get", "services", check=False)
    assert r.returncode == 1 and "admins" in r.stderr, (r.stdout, r.stderr)

    # The tunnel as each person: alice is allowed, grace is denied by the policy.
    alice_port = connect(env, alice_home, "alice-agent")
    r = httpx.get(f"http://127.0.0.1:{alice_port}/private", timeout=20)
    assert r.status_code == 200 and r.json()["path"] == "/private", r.text
    line = env.gw.wait_access(lambda e: e.get("via") == "tunnel" and e.get("user") == "alice"
                              and e.get("status") == 200)
    assert line["service"] == "web" and line["session"] == alice["session"], line
    st = env.postern(alice_home, "status").stdout
    assert "userspace" in st and "web" in st, st

    grace_port = connect(env, grace_home, "grace-agent")
    before = len(env.web.requests)
    r = httpx.get(f"http://127.0.0.1:{grace_port}/private", timeout=20)
    assert r.status_code == 403, r.text
    line = env.gw.wait_access(lambda e: e.get("via") == "tunnel" and e.get("user") == "grace"
                              and e.get("status") == 403)
    assert line["session"] == grace["session"], line
    assert len(env.web.requests) == before, "a denied request reached the upstream"


def test_wrong_state_on_the_loopback_is_refused(env):
    home = env.home("alice")
    login = CliLogin(env, home, "--no-browser")
    url = login.sign_in_url()
    redirect = query_of(url)["cli_redirect"]
    with env.browser() as b:
        walk = b.walk(url, "alice", stop_before=lambda u: u.startswith(redirect))
    genuine = walk.pending
    assert genuine, walk.hops
    assert query_of(genuine).get("code") and query_of(genuine)["state"] == query_of(url)["cli_state"]

    forged_state = with_query(genuine, state="A" * 43)
    for forged in (forged_state, with_query(genuine, state=None)):
        r = httpx.get(forged, timeout=10)
        assert r.status_code == 403, (forged, r.status_code, r.text)
        assert "does not match" in r.text and "Signed in" not in r.text, r.text
    assert httpx.get(with_query(genuine, state=None).replace("/callback", "/favicon.ico"),
                     timeout=10).status_code == 404
    time.sleep(0.3)
    assert login.proc.poll() is None, "a forged redirect ended the login"
    assert not (home / "session.json").exists()

    # The code was not spent: the genuine redirect completes the login.
    r = httpx.get(genuine, timeout=WAIT)
    assert r.status_code == 200 and "Signed in" in r.text, r.text
    rc, out, err = login.finish()
    assert rc == 0, err
    assert out.startswith(f"Logged in to {env.domain} as alice (session "), out
    assert json.loads((home / "session.json").read_text())["user"] == "alice"


def test_the_browser_is_started_without_no_browser(env):
    home = env.home("alice")
    log = env.tmp / "opened.log"
    login = CliLogin(env, home, browser_log=log)
    printed = login.sign_in_url()
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text().strip()):
        assert time.monotonic() < deadline, "$BROWSER was not started"
        time.sleep(0.05)
    opened = log.read_text().strip()
    assert opened == printed, (opened, printed)
    with env.browser() as b:
        walk = b.walk(opened, "alice")
    assert walk.final.status == 200 and "Signed in" in walk.final.text, walk.hops
    rc, out, err = login.finish()
    assert rc == 0, err
    assert out.startswith(f"Logged in to {env.domain} as alice"), out


def test_a_person_without_a_user_is_refused_in_the_terminal(env):
    home = env.home("bob")
    login = CliLogin(env, home, "--no-browser")
    url = login.sign_in_url()
    with env.browser() as b:
        walk = b.walk(url, "bob")
    final = walk.final
    assert final.url.startswith(query_of(url)["cli_redirect"] + "?"), walk.hops
    assert query_of(final.url).get("error") == "access_denied", final.url
    assert final.status == 403 and BOB["email"] in final.text, (final, final.text)
    rc, out, err = login.finish()
    assert rc == 1 and out == "", (rc, out, err)
    assert "error: the sign-in was refused: access_denied: " in err, err
    assert BOB["email"] in err, err
    assert f"run `postern login --domain {env.domain}` to try again" in err, err
    assert not (home / "session.json").exists()
    assert not any(s.get("user") == "bob" for s in env.gw.get("sessions"))
