"""A throwaway PostgreSQL cluster for the high-availability tests.

Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``): ``initdb`` + ``pg_ctl`` on
a free port, data directory and Unix socket in a temporary directory of its own, ``trust``
authentication on 127.0.0.1, ``fsync`` off (the cluster lives for one test session).
PostgreSQL refuses to run as root, so as root every server-side tool runs as the
``postgres`` user (``runuser -u postgres --``) on a directory it owns.

Fixtures (test modules load them with ``pytest_plugins = ["postgres"]``):

* ``pg_cluster`` (session): one cluster for the session; skips, saying why, without the
  binaries.
* ``pg_db`` (function): a fresh, empty database in it; its ``postgres://`` URL.
* ``start_pg`` (function): a factory for a cluster of the test's own, for tests that stop
  and start the server (an outage must not hit other tests' databases).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_ROOT = Path("/usr/lib/postgresql")
_names = itertools.count()


def pg_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding ``initdb`` and ``pg_ctl``."""
    found = []
    for d in PG_ROOT.glob("*/bin") if PG_ROOT.is_dir() else []:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            try:
                found.append((int(d.parent.name), d))
            except ValueError:
                continue
    return max(found)[1] if found else None


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PgCluster:
    """One PostgreSQL server: ``start()``, ``stop()`` (immediate, as a crash), ``url(db)``,
    ``createdb()``, ``sql(db, text)``."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.as_postgres = os.geteuid() == 0
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="postern-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = _free_port()
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        r = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--no-sync", "-E", "UTF8")
        if r.returncode != 0:
            raise AssertionError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        self.running = False

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, timeout=timeout)

    def start(self) -> "PgCluster":
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c full_page_writes=off -c max_connections=200")
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                      "-o", opts, "start")
        if r.returncode != 0:
            raise AssertionError(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{self.server_log()}")
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"PostgreSQL does not accept on {self.port}\n{self.server_log()}")
                time.sleep(0.05)
        self.running = True
        return self

    def stop(self) -> None:
        """Stops the server at once (``-m immediate``): connections are cut as in a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.running = False

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def createdb(self, name: str | None = None) -> str:
        """Creates an empty database (``createdb``) and returns its URL."""
        name = name or f"postern_{os.getpid()}_{next(_names)}"
        r = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        if r.returncode != 0:
            raise AssertionError(f"createdb {name} failed:\n{r.stderr}")
        return self.url(name)

    def sql(self, db: str, text: str) -> str:
        """Runs SQL in ``db`` with ``psql`` as the superuser; the unaligned, tuples-only output."""
        r = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
                      "-v", "ON_ERROR_STOP=1", "-At", "-c", text)
        if r.returncode != 0:
            raise AssertionError(f"psql failed: {text}\n{r.stderr}")
        return r.stdout.strip()


def db_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def _need_bin() -> Path:
    b = pg_bin_dir()
    if b is None:
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin "
                    "(apt-get install -y postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root needs runuser to start PostgreSQL as the postgres user")
    return b


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = PgCluster(_need_bin()).start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_db(pg_cluster) -> str:
    return pg_cluster.createdb()


@pytest.fixture
def start_pg():
    made: list[PgCluster] = []

    def start() -> PgCluster:
        c = PgCluster(_need_bin()).start()
        made.append(c)
        return c

    yield start
    for c in made:
        c.destroy()


# --------------------------------------------------------------------------------------------
# Several gateways on one database.
def wait_for(what: str, check, timeout: float, interval: float = 0.01) -> float:
    """Polls ``check()`` until it returns true; the seconds it took. Fails naming ``what``
    (and the last value ``check`` returned) after ``timeout``."""
    start = time.monotonic()
    last = None
    while True:
        last = check()
        if last:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


LLM_SERVICE = """\
kind: Service
metadata:
  name: {name}
spec:
  isPublic: true
  config:
    upstream:
      url: {url}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: {effect}
              condition:
                matchAny: true
{limits}"""


def service_yaml(url: str, name: str = "llm", effect: str = "ALLOW", limits: str = "") -> str:
    """A public Service forwarding to ``url``, allowing (or denying) everyone; ``limits`` is
    YAML list text placed under ``spec.limits``."""
    block = ""
    if limits:
        block = "  limits:\n" + "".join(f"    {line}\n" for line in limits.strip().splitlines())
    return LLM_SERVICE.format(name=name, url=url, effect=effect, limits=block)


def user_yaml(name: str, disabled: bool = False) -> str:
    return (f"kind: User\nmetadata:\n  name: {name}\nspec:\n  type: WORKLOAD\n"
            f"  isDisabled: {'true' if disabled else 'false'}\n")


CHAT = {"model": "m", "messages": [{"role": "user", "content": "message 0"}]}
