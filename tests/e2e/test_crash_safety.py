"""Crash safety: posternd killed with SIGKILL at a random moment of a storm of
``posternctl apply`` (two files, three documents), ``posternctl create secret``,
``posternctl create/delete credential`` and OAuth2 token grants with requests, then restarted
on the same data directory, loses nothing it acknowledged, opens a clean store and shows no
half-applied change.

What "acknowledged" means (the same definitions are in docs/operations.md, "Durability"):

* apply: ``posternctl apply`` exited 0. Every document of that call is then stored with that
  call's version, or all of them with the version of a later call of the same writer that was
  in flight at the kill. Never a mix: a multi-document apply is all or nothing.
* create credential: ``posternctl create credential --type oauth2 -o json`` exited 0 and
  printed the client secret. The Credential is listed after the restart and its secret still
  gets a token.
* create secret: ``posternctl create secret`` exited 0. The Secret is listed after the restart.
* delete credential: ``posternctl delete credential`` exited 0. The Credential stays gone
  and the tokens it issued stay refused.
* token: ``/oauth2/token`` answered 200 with an ``access_token``. The token is accepted after
  the restart (until it expires), because its Session was committed before the answer.

Rounds: ``POSTERN_CRASH_ROUNDS`` (default 20); ``POSTERN_CRASH_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from conftest import APP_USER, name_of, parse_json

ROUNDS = int(os.environ.get("POSTERN_CRASH_ROUNDS", "20"))
APPLY_WRITERS = 2
TOKEN_USERS = 2
KILL_AFTER = (0.2, 1.5)  # seconds of storm before SIGKILL, uniform
LABEL = "crash-version"

SERVICE = """\
kind: Service
metadata:
  name: crash
spec:
  mode: HTTP
  isPublic: true
  config:
    upstream:
      url: {url}
  limits:
    - name: rpm
      requests: 100000000
      per: 1m
"""


class Upstream:
    """A minimal HTTP/1.1 upstream answering every GET with 200 at once (keep-alive, no Nagle
    delay), so checking many tokens after each restart stays fast."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                body = b'{"ok":true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # connections the kill cut short

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def writer_files(w: int, version: int, url: str) -> tuple[str, str]:
    """Two files, three documents, every one labelled with ``version``."""
    labels = f'  labels:\n    {LABEL}: "{version}"\n'
    first = (
        f"kind: Group\nmetadata:\n  name: crash-w{w}\n{labels}spec: {{}}\n---\n"
        f"kind: Policy\nmetadata:\n  name: crash-w{w}\n{labels}spec:\n  rules:\n"
        f"    - effect: ALLOW\n      condition:\n"
        f"        match: ctx.user.metadata.name == \"w{w}-{version}\"\n"
    )
    second = (
        f"kind: Service\nmetadata:\n  name: crash-w{w}\n{labels}spec:\n  mode: HTTP\n"
        f"  config:\n    upstream:\n      url: {url}\n"
        f"  authorization:\n    policies: [crash-w{w}]\n"
    )
    return first, second


@dataclass
class Ledger:
    """What each client was told, filled by the storm threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    applied: dict[int, int] = field(default_factory=dict)  # writer -> last acknowledged version
    attempted: dict[int, int] = field(default_factory=dict)  # writer -> last version sent
    created: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (id, secret)
    deleting: set[str] = field(default_factory=set)  # deletes sent, maybe not acknowledged
    deleted: set[str] = field(default_factory=set)  # deletes acknowledged
    secrets: list[str] = field(default_factory=list)  # secrets acknowledged
    revoked_tokens: list[str] = field(default_factory=list)  # tokens of acknowledged deletes
    tokens: list[str] = field(default_factory=list)  # tokens acknowledged this round
    errors: list[str] = field(default_factory=list)  # failures while the gateway was up
    ops: dict[str, int] = field(default_factory=dict)  # acknowledged operations by kind

    def count(self, kind: str):
        with self.lock:
            self.ops[kind] = self.ops.get(kind, 0) + 1


class Storm:
    def __init__(self, gw, upstream_url: str, ledger: Ledger, round_no: int, rng: random.Random,
                 base: tuple[str, str]):
        self.gw, self.url, self.ledger, self.round = gw, upstream_url, ledger, round_no
        self.rng, self.base = rng, base
        self.killed = threading.Event()
        self.threads: list[threading.Thread] = []

    def failed(self, what: str):
        if not self.killed.is_set():
            with self.ledger.lock:
                self.ledger.errors.append(what)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.gw.run("posternctl", *args, check=False)

    def apply_writer(self, w: int):
        while not self.killed.is_set():
            with self.ledger.lock:
                version = self.ledger.attempted.get(w, 0) + 1
                self.ledger.attempted[w] = version
            first, second = writer_files(w, version, self.url)
            a = self.gw.write(first, f"w{w}-groups-{version}.yaml")
            b = self.gw.write(second, f"w{w}-service-{version}.yaml")
            r = self.ctl("apply", str(a), str(b))
            if r.returncode == 0:
                with self.ledger.lock:
                    self.ledger.applied[w] = version
                self.ledger.count("apply")
            else:
                self.failed(f"apply w{w} v{version}: {r.stdout}{r.stderr}")

    def credential_writer(self):
        k = 0
        while not self.killed.is_set():
            k += 1
            if k % 2:
                secret = f"s{self.round}-{k}"
                r = self.ctl("create", "secret", secret, "--value", f"value-{secret}")
                if r.returncode == 0:
                    with self.ledger.lock:
                        self.ledger.secrets.append(secret)
                    self.ledger.count("create secret")
                else:
                    self.failed(f"create secret {secret}: {r.stdout}{r.stderr}")
            name = f"c{self.round}-{k}"
            r = self.ctl("create", "credential", name, "--user", "app", "--type", "oauth2", "-o", "json")
            if r.returncode != 0:
                self.failed(f"create credential {name}: {r.stdout}{r.stderr}")
                continue
            d = parse_json(r.stdout, "posternctl create credential -o json")
            with self.ledger.lock:
                self.ledger.created[name] = (d["clientId"], d["clientSecret"])
            self.ledger.count("create credential")
            if k % 3:
                continue
            token = self.grant(d["clientId"], d["clientSecret"])
            with self.ledger.lock:
                self.ledger.deleting.add(name)
            r = self.ctl("delete", "credential", name)
            if r.returncode == 0:
                with self.ledger.lock:
                    self.ledger.deleted.add(name)
                    if token:
                        self.ledger.revoked_tokens.append(token)
                self.ledger.count("delete credential")
            else:
                self.failed(f"delete credential {name}: {r.stdout}{r.stderr}")

    def grant(self, client_id: str, secret: str, client: httpx.Client | None = None) -> str | None:
        try:
            c = client or self.gw.http(timeout=5)
            try:
                r = c.post(self.gw.token_endpoint, data={"grant_type": "client_credentials",
                                                         "client_id": client_id, "client_secret": secret})
            finally:
                if client is None:
                    c.close()
        except httpx.HTTPError as e:
            self.failed(f"token grant: {e!r}")
            return None
        if r.status_code != 200:
            self.failed(f"token grant: {r.status_code} {r.text}")
            return None
        return r.json()["access_token"]

    def token_user(self):
        with self.gw.http(timeout=5) as c:
            while not self.killed.is_set():
                token = self.grant(*self.base, client=c)
                if token is None:
                    continue
                with self.ledger.lock:
                    self.ledger.tokens.append(token)
                self.ledger.count("token")
                try:
                    r = c.get(self.gw.url("crash", "/storm"), headers={"authorization": f"Bearer {token}"})
                    if r.status_code != 200:
                        self.failed(f"request: {r.status_code} {r.text}")
                except httpx.HTTPError as e:
                    self.failed(f"request: {e!r}")

    def run_until_kill(self) -> float:
        targets = [lambda w=w: self.apply_writer(w) for w in range(APPLY_WRITERS)]
        targets += [self.credential_writer] + [self.token_user] * TOKEN_USERS
        self.threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for t in self.threads:
            t.start()
        delay = self.rng.uniform(*KILL_AFTER)
        time.sleep(delay)
        self.killed.set()  # set first: failures from here on are the kill's
        self.gw.proc.kill()
        self.gw.proc.wait(timeout=10)
        self.gw._stderr.close()
        for t in self.threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a storm thread hung after the kill"
        return delay


def check_store(db: str) -> None:
    """The file opens clean and holds no record that a half-done delete would leave."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute(
            "SELECT name, credential FROM sessions WHERE credential NOT IN (SELECT name FROM credentials)"
        ).fetchall()
        assert orphans == [], f"sessions left by deleted credentials: {orphans[:5]}"
        orphans = conn.execute(
            "SELECT name, user FROM credentials WHERE user NOT IN "
            "(SELECT name FROM resources WHERE kind = 'User')"
        ).fetchall()
        assert orphans == [], f"credentials left by deleted users: {orphans[:5]}"
    finally:
        conn.close()


def check_after_restart(gw, ledger: Ledger, base: tuple[str, str]) -> None:
    # apply: every writer's three documents carry one version, acknowledged or in flight.
    stored: dict[str, dict[str, int]] = {}
    for kind in ("groups", "policies", "services"):
        for item in gw.get(kind):
            name = name_of(item)
            if name.startswith("crash-w"):
                v = int(item["metadata"].get("labels", {}).get(LABEL, "0"))
                stored.setdefault(name, {})[kind] = v
    for w, attempted in ledger.attempted.items():
        acked = ledger.applied.get(w, 0)
        versions = stored.get(f"crash-w{w}", {})
        if acked:
            assert len(versions) == 3, f"writer {w}: acknowledged v{acked} but stored {versions}"
        if versions:
            assert len(set(versions.values())) == 1 and len(versions) == 3, \
                f"writer {w}: half-applied change visible: {versions}"
            v = next(iter(versions.values()))
            assert acked <= v <= attempted, \
                f"writer {w}: stored v{v}, acknowledged v{acked}, last sent v{attempted}"

    lost = set(ledger.secrets) - set(gw.names("secrets"))
    assert not lost, f"acknowledged secrets lost: {sorted(lost)[:10]}"

    # credentials: acknowledged creates listed and usable, acknowledged deletes gone.
    listed = set(gw.names("credentials"))
    kept = set(ledger.created) - ledger.deleting
    missing = kept - listed
    assert not missing, f"acknowledged credentials lost: {sorted(missing)[:10]}"
    back = ledger.deleted & listed
    assert not back, f"acknowledged deletes undone: {sorted(back)[:10]}"
    with gw.http(timeout=10) as c:
        for name in [n for n in ledger.created if n in kept][-6:]:  # the newest, most at risk
            cid, secret = ledger.created[name]
            r = c.post(gw.token_endpoint, data={"grant_type": "client_credentials", "client_id": cid,
                                                "client_secret": secret})
            assert r.status_code == 200, f"credential {name} refused after restart: {r.status_code} {r.text}"

        # tokens: every one acknowledged this round.
        for t in ledger.tokens:
            r = c.get(gw.url("crash", "/after"), headers={"authorization": f"Bearer {t}"})
            assert r.status_code == 200, f"acknowledged token refused after restart: {r.status_code} {r.text}"
        for t in ledger.revoked_tokens:
            r = c.get(gw.url("crash", "/after"), headers={"authorization": f"Bearer {t}"})
            assert r.status_code == 401, f"token of a deleted credential accepted after restart: {r.status_code}"
        r = c.post(gw.token_endpoint, data={"grant_type": "client_credentials", "client_id": base[0],
                                            "client_secret": base[1]})
        assert r.status_code == 200, r.text


def test_kill_9_during_storm_loses_nothing_acknowledged(start_gateway):
    seed = int(os.environ.get("POSTERN_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    print(f"POSTERN_CRASH_SEED={seed} POSTERN_CRASH_ROUNDS={ROUNDS}")
    with Upstream() as up:
        gw = start_gateway()
        gw.apply_text(APP_USER, "app-user.yaml")
        gw.apply_text(SERVICE.format(url=up.url), "crash-service.yaml")
        base = gw.create_oauth2("app", "storm")
        ledger = Ledger()
        started = time.monotonic()
        survived = 0
        for round_no in range(1, ROUNDS + 1):
            ledger.tokens, ledger.revoked_tokens = [], []
            storm = Storm(gw, up.url, ledger, round_no, rng, base)
            delay = storm.run_until_kill()
            assert not ledger.errors, f"round {round_no}: failures before the kill:\n" + "\n".join(ledger.errors[:5])
            gw.serve()
            try:
                check_after_restart(gw, ledger, base)
                check_store(str(gw.data_dir / "postern.db"))
            except AssertionError as e:
                raise AssertionError(f"round {round_no} (seed {seed}, killed after {delay:.3f}s): {e}") from None
            survived += 1
        elapsed = time.monotonic() - started
        print(f"survived {survived} kill -9 rounds in {elapsed:.1f}s; acknowledged: {ledger.ops}")
        sys.stdout.flush()
