"""Fixtures for Postern's end-to-end tests.

* ``bin_dir`` (session): builds the binaries with ``cargo build --bins`` unless
  ``POSTERN_BIN_DIR`` names a directory that already holds them.
* ``start_gateway(**opts)`` (function): a factory starting a fresh gateway (own data dir,
  port, POSTERN_HOME, logged-in CLI). ``gateway`` is one started with defaults.
* ``ai`` (function): a gateway with the secrets, the four seed files applied unchanged, then
  test variants pointing at three stand-in upstreams, and a WORKLOAD user ``app`` allowed
  everywhere through a User inline policy, with an OAuth2 credential.

The gateway's domain is not in DNS: ``socket.getaddrinfo`` is patched in this process so
``postern.test`` and ``*.postern.test`` resolve to 127.0.0.1; httpx, openai and authlib then
use real host names and verify TLS against the gateway's CA. curl gets ``--connect-to``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import openai
import pytest
import yaml
from authlib.integrations.httpx_client import OAuth2Client

from standin import StandIn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SEEDS = HERE / "seeds"
DOMAIN = "postern.test"
WAIT = 30.0  # upper bound of every wait for a process/port

# --------------------------------------------------------------------------------------------
# DNS: postern.test and *.postern.test -> 127.0.0.1, in this process only.
_real_getaddrinfo = socket.getaddrinfo


def _is_ours(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.rstrip(".").lower()
    return host == DOMAIN or host.endswith("." + DOMAIN)


def _getaddrinfo(host, *args, **kwargs):
    if _is_ours(host):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo


# --------------------------------------------------------------------------------------------
# Failure reporting: fixtures look at request.node.rep_call to print the gateway's stderr.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bin_dir() -> Path:
    env_dir = os.environ.get("POSTERN_BIN_DIR")
    if env_dir:
        d = Path(env_dir).resolve()
    else:
        r = subprocess.run(
            ["cargo", "build", "--bins"], cwd=REPO, capture_output=True, text=True, timeout=1800
        )
        if r.returncode != 0:
            pytest.fail(f"cargo build --bins failed:\n{r.stderr[-8000:]}", pytrace=False)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        d = target / "debug"
    for b in ("posternd", "postern", "posternctl"):
        if not (d / b).is_file():
            pytest.fail(f"binary {b} not found in {d}", pytrace=False)
    return d


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # lower-cased names, last value wins
    body: bytes
    stderr: str

    def json(self) -> Any:
        return json.loads(self.body)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise AssertionError(f"{what} did not print JSON: {text[:2000]!r}") from None


def items_of(out: str) -> list[dict]:
    """The resources printed by ``posternctl get ... -o json``: a list, ``{"items": [...]}``
    or a single object."""
    data = parse_json(out, "posternctl get -o json") if out.strip() else []
    if isinstance(data, dict):
        return data["items"] if isinstance(data.get("items"), list) else [data]
    return data


def name_of(item: dict) -> str:
    return item.get("metadata", {}).get("name") or item.get("name")


class Gateway:
    def __init__(self, bin_dir: Path, root: Path, extra_args: list[str], max_body: int | None,
                 upstream_ca: str | None, port: int | None = None, trust: list[str] | None = None,
                 store: str | None = None, gateway_name: str | None = None,
                 copy_of: "Gateway | None" = None, store_flag: bool = True):
        self.bin_dir = bin_dir
        self.store = store
        self.gateway_name = gateway_name
        self.copy_of = copy_of
        self.store_flag = store_flag
        self.root = root
        self.data_dir = root / "data"
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.files = root / "files"
        self.files.mkdir(exist_ok=True)
        self.access_log = root / "access.log"
        self.stderr_path = root / "posternd.stderr"
        self.domain = DOMAIN
        self.port = port or free_port()
        self.trust = list(trust or [])
        self.extra_args = extra_args
        self.max_body = max_body
        self.upstream_ca = upstream_ca
        self.proc: subprocess.Popen | None = None
        self.init_output: dict = {}
        self._n = 0

    # -- processes -------------------------------------------------------------------------
    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["POSTERN_HOME"] = str(self.home)
        env["POSTERN_GATEWAY_ADDRESS"] = f"127.0.0.1:{self.port}"
        env.pop("HTTPS_PROXY", None)
        env.pop("https_proxy", None)
        return env

    def init(self) -> subprocess.CompletedProcess:
        store = ["--store", self.store] if self.store else []
        return subprocess.run(
            [self.bin("posternd"), "init", "--data-dir", str(self.data_dir), "--domain", DOMAIN, "-o", "json",
             *store],
            capture_output=True, text=True, timeout=WAIT, env=self.env,
        )

    def serve_args(self) -> list[str]:
        args = [self.bin("posternd"), "serve", "--data-dir", str(self.data_dir),
                "--https-listen", f"127.0.0.1:{self.port}", "--access-log", str(self.access_log)]
        if self.max_body is not None:
            args += ["--max-body-bytes", str(self.max_body)]
        if self.upstream_ca:
            args += ["--upstream-ca", self.upstream_ca]
        if self.store and self.store_flag:
            args += ["--store", self.store]
        if self.gateway_name:
            args += ["--gateway-name", self.gateway_name]
        return args + self.extra_args

    def start(self) -> "Gateway":
        if self.copy_of is not None:
            # Another gateway of the same store: a copy of the first one's data directory
            # (its keys, CA and certificate), as docs/operations.md tells operators to do.
            shutil.copytree(self.copy_of.data_dir, self.data_dir)
            self.init_output = dict(self.copy_of.init_output)
        else:
            r = self.init()
            assert r.returncode == 0, f"posternd init failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            self.init_output = parse_json(r.stdout, "posternd init -o json")
        self.internal_ca = str(self.init_output["caCert"])
        self.ca = self.internal_ca
        if self.trust:
            # The gateway may serve certificates of other CAs (files, ACME): the test's own
            # clients trust the internal CA and those, the CLI through its saved --ca-file.
            bundle = self.root / "trusted-cas.pem"
            bundle.write_text("".join(Path(p).read_text() for p in [self.internal_ca, *self.trust]))
            self.ca = str(bundle)
        self.admin_token = self.init_output["adminToken"]
        self.serve()
        self.login(self.admin_token)
        return self

    def serve(self) -> None:
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.serve_args(), stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     env=self.env, stdin=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self, timeout: float = WAIT) -> None:
        ctx = ssl.create_default_context(cafile=self.ca)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"posternd serve exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    with ctx.wrap_socket(s, server_hostname=DOMAIN):
                        return
            except (OSError, ssl.SSLError) as e:
                last = e
                time.sleep(0.05)
        raise AssertionError(f"gateway not answering TLS on {self.port} after {timeout}s: {last}\n{self.stderr()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            raise AssertionError("posternd did not stop within 10 s of SIGTERM")
        finally:
            self._stderr.close()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- CLI -------------------------------------------------------------------------------
    def run(self, binary: str, *args: str, input: str | None = None, check: bool = True,
            timeout: float = WAIT) -> subprocess.CompletedProcess:
        r = subprocess.run([self.bin(binary), *map(str, args)], input=input, capture_output=True,
                           text=True, timeout=timeout, env=self.env)
        if check and r.returncode != 0:
            raise AssertionError(f"{binary} {' '.join(map(str, args))} exited {r.returncode}:\n"
                                 f"stdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def login(self, token: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("postern", "login", "--domain", f"{DOMAIN}:{self.port}", "--auth-token", token,
                        "--ca-file", self.ca, check=check)

    def ctl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("posternctl", *args, input=input, check=check)

    def write(self, text: str, name: str | None = None) -> Path:
        self._n += 1
        p = self.files / (name or f"test-{self._n}.yaml")
        p.write_text(text)
        return p

    def apply_text(self, text: str, name: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.ctl("apply", str(self.write(text, name)), check=check)

    def apply_files(self, *paths: Path | str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ctl("apply", *map(str, paths), check=check)

    def create_secret(self, name: str, value: str) -> None:
        self.ctl("create", "secret", name, "--value", value)

    def create_oauth2(self, user: str, name: str | None = None) -> tuple[str, str]:
        out = self.ctl("create", "credential", name or f"{user}-oauth2", "--user", user,
                       "--type", "oauth2", "-o", "json").stdout
        d = parse_json(out, "posternctl create credential --type oauth2 -o json")
        return d["clientId"], d["clientSecret"]

    def create_auth_token(self, user: str, name: str | None = None) -> str:
        out = self.ctl("create", "credential", name or f"{user}-token", "--user", user,
                       "--type", "auth-token", "-o", "json").stdout
        return parse_json(out, "posternctl create credential --type auth-token -o json")["authToken"]

    def get(self, kind: str, name: str | None = None, check: bool = True) -> list[dict]:
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        r = self.ctl(*args, check=check)
        return items_of(r.stdout) if r.returncode == 0 else []

    def names(self, kind: str) -> list[str]:
        return [name_of(i) for i in self.get(kind)]

    # -- URLs and clients ------------------------------------------------------------------
    def host(self, service: str | None = None) -> str:
        return f"{service}.{DOMAIN}" if service else DOMAIN

    def url(self, service: str | None = None, path: str = "") -> str:
        return f"https://{self.host(service)}:{self.port}{path}"

    @property
    def token_endpoint(self) -> str:
        return self.url(None, "/oauth2/token")

    def tls(self) -> ssl.SSLContext:
        """A client TLS context trusting only the gateway's CA."""
        return ssl.create_default_context(cafile=self.ca)

    def http(self, **kw) -> httpx.Client:
        kw.setdefault("timeout", 15)
        return httpx.Client(verify=self.tls(), **kw)

    def fetch_token(self, client_id: str, client_secret: str, method: str = "client_secret_post") -> dict:
        with OAuth2Client(client_id, client_secret, token_endpoint=self.token_endpoint,
                          token_endpoint_auth_method=method, verify=self.tls(), timeout=15) as c:
            return dict(c.fetch_token(grant_type="client_credentials"))

    def token(self, client_id: str, client_secret: str, method: str = "client_secret_post") -> str:
        return self.fetch_token(client_id, client_secret, method)["access_token"]

    def openai(self, service: str, access_token: str, base_path: str = "", **kw) -> openai.OpenAI:
        return openai.OpenAI(api_key=access_token, base_url=self.url(service, base_path),
                             http_client=httpx.Client(verify=self.tls(), timeout=15), max_retries=0, **kw)

    def curl(self, *args: str, timeout: float = WAIT) -> CurlResult:
        with tempfile.TemporaryDirectory(dir=self.root) as d:
            hdr, body = Path(d) / "h", Path(d) / "b"
            r = subprocess.run(
                ["curl", "-sS", "--max-time", str(int(timeout)), "--connect-to", f"::127.0.0.1:{self.port}",
                 "--cacert", self.ca, "-D", str(hdr), "-o", str(body), "-w", "%{http_code}", *args],
                capture_output=True, text=True, timeout=timeout + 5,
            )
            headers: dict[str, str] = {}
            if hdr.exists():
                for line in hdr.read_text(errors="replace").splitlines():
                    if ":" in line and not line.startswith("HTTP/"):
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
            status = int(r.stdout.strip() or 0)
            return CurlResult(status, headers, body.read_bytes() if body.exists() else b"", r.stderr)

    # -- access log ------------------------------------------------------------------------
    def access_entries(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def wait_access(self, pred: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.access_entries():
                if pred(e):
                    return e
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching access-log line in {timeout}s; lines:\n"
                                     + "\n".join(json.dumps(e) for e in self.access_entries()))
            time.sleep(0.05)


@pytest.fixture
def start_gateway(bin_dir, tmp_path, request):
    """Factory: ``start_gateway(extra_args=[...], max_body=N, upstream_ca=..., port=N,
    trust=[CA files], store=URL, gateway_name=NAME, copy_of=GW, store_flag=True)``. ``port``
    fixes the HTTPS port (an ACME CA must know it before the gateway starts); ``trust`` adds
    CAs the test's clients and the CLI trust besides the internal one (``gw.ca`` is then a
    bundle; ``gw.internal_ca`` stays the internal CA). ``store`` is passed to ``init`` and
    (unless ``store_flag=False``) ``serve`` as ``--store``; ``copy_of`` starts another gateway
    of the same store on a copy of that gateway's data directory instead of running init."""
    started: list[Gateway] = []

    def start(extra_args: list[str] | None = None, max_body: int | None = None,
              upstream_ca: str | None = None, port: int | None = None,
              trust: list[str] | None = None, store: str | None = None,
              gateway_name: str | None = None, copy_of: Gateway | None = None,
              store_flag: bool = True) -> Gateway:
        root = tmp_path / f"gw{len(started)}"
        root.mkdir()
        gw = Gateway(bin_dir, root, list(extra_args or []), max_body, upstream_ca, port, trust,
                     store, gateway_name, copy_of, store_flag)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        try:
            gw.stop()
        finally:
            if _failed(request):
                sys.stderr.write(f"\n----- posternd stderr ({gw.root}) -----\n{gw.stderr()[-20000:]}\n")


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    return start_gateway()


# --------------------------------------------------------------------------------------------
# Seeds and their test variants.
def seed_path(name: str) -> Path:
    return SEEDS / f"{name}.yaml"


def with_upstreams(text: str, url_for: Callable[[str | None], str], make_public: bool = False) -> str:
    """The YAML ``text`` with each ``upstream.url`` replaced by ``url_for(config_name)``
    (config_name is None for ``spec.config``). ``make_public`` also sets ``spec.isPublic``."""
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        if not doc or doc.get("kind") != "Service":
            continue
        spec = doc["spec"]
        if make_public:
            spec["isPublic"] = True
        if spec.get("config", {}).get("upstream"):
            spec["config"]["upstream"]["url"] = url_for(None)
        for c in (spec.get("dynamicConfig") or {}).get("configs", []):
            if c.get("upstream"):
                c["upstream"]["url"] = url_for(c["name"])
    return yaml.safe_dump_all(docs, sort_keys=False)


ALLOW_ALL = [{"effect": "ALLOW", "condition": {"matchAny": True}}]


def public_service(name: str, url: str, rules: list[dict] | None = None, **spec: Any) -> str:
    """YAML of a public Service ``name`` forwarding to ``url`` with inline policy ``rules``
    (default: allow everyone); extra ``spec`` fields (``limits=[...]``) are added as given."""
    doc = {"kind": "Service", "metadata": {"name": name},
           "spec": {"isPublic": True, "config": {"upstream": {"url": url}},
                    "authorization": {"inlinePolicies": [{"spec": {"rules": rules or ALLOW_ALL}}]},
                    **spec}}
    return yaml.safe_dump(doc, sort_keys=False)


APP_USER = """\
kind: User
metadata:
  name: app
spec:
  type: WORKLOAD
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                matchAny: true
"""

KEYS = {"gemini": "gm-key-3f9a1c", "openai": "sk-openai-7b2e44", "deepseek": "sk-deepseek-c0ffee"}
PREFIX = {"gemini": "/v1beta/openai", "openai": "/v1", "deepseek": "/v1"}
SEED_RESOURCES = [
    "Group/dev", "Group/ops", "User/ci-bot", "User/alice", "Policy/no-expensive-models-for-dev",
    "Service/gemini", "Service/total-ai", "Service/my-api",
]


@dataclass
class AI:
    gw: Gateway
    up: dict[str, StandIn]  # gemini, openai, deepseek, my-api
    client_id: str
    client_secret: str
    seed_apply: subprocess.CompletedProcess

    def token(self, method: str = "client_secret_post") -> str:
        return self.gw.token(self.client_id, self.client_secret, method)

    def all_requests(self):
        return [r for s in self.up.values() for r in s.requests]


def setup_ai(gw: Gateway, stack) -> AI:
    up = {n: stack.enter_context(StandIn(n, api_key=KEYS[n], prefix=PREFIX[n])) for n in KEYS}
    up["my-api"] = stack.enter_context(StandIn("my-api", api_key=None, prefix=""))
    for n, k in KEYS.items():
        gw.create_secret(f"{n}-api-key", k)
    seeds = [seed_path(n) for n in ("identities", "gemini", "total-ai", "my-api")]
    seed_apply = gw.apply_files(*seeds)
    gw.apply_text(with_upstreams(seed_path("gemini").read_text(), lambda _: up["gemini"].url), "gemini-test.yaml")
    gw.apply_text(with_upstreams(seed_path("total-ai").read_text(), lambda c: up[c].url), "total-ai-test.yaml")
    gw.apply_text(APP_USER, "app-user.yaml")
    cid, secret = gw.create_oauth2("app", "app-oauth2")
    return AI(gw, up, cid, secret, seed_apply)


@pytest.fixture
def ai(gateway):
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield setup_ai(gateway, stack)


def chat_body(model: str = "gemini-2.0-flash", n_messages: int = 1, **extra) -> dict:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(n_messages)]
    return {"model": model, "messages": msgs, **extra}


def assert_error_body(body: Any, *, request_id: bool = False) -> dict:
    """``{"error": {"message","type","code"[,"request_id"]}}`` with non-empty strings."""
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    err = body["error"]
    for k in ("message", "type", "code"):
        assert isinstance(err.get(k), str) and err[k], (k, body)
    if request_id:
        assert isinstance(err.get("request_id"), str) and err["request_id"], body
    return err
