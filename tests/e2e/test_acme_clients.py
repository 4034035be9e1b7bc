"""Issue #14: the seed's TypeScript client (the `openai` npm package, `ts_client/call.mjs`)
reaches a Service of a gateway whose certificates come from ACME (Pebble), trusting only
Node's standard CA store plus Pebble's root (`NODE_EXTRA_CA_CERTS`): no Postern CA anywhere.
Without Pebble's root the same call fails with a certificate error.

The Services are the seeds' (`ai` fixture's set-up) in front of stand-in upstreams; the
access token comes from the test (OAuth2 client credentials, Python). `ts_client/node_modules`
comes from `npm ci` in that folder (the test runs it once when the folder is missing).
Skipped, saying why, when /usr/bin/pebble is missing."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

pytest.register_assert_rewrite("acme")  # before the import, so its asserts explain themselves
from acme import require_pebble
from conftest import DOMAIN, KEYS, setup_ai

pytest_plugins = ["acme"]  # fixtures start_pebble, acme_gateway

TS_DIR = Path(__file__).resolve().parent / "ts_client"
CERT_ERRORS = {"UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "SELF_SIGNED_CERT_IN_CHAIN", "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
               "DEPTH_ZERO_SELF_SIGNED_CERT", "CERT_UNTRUSTED"}


def ensure_ts_client() -> None:
    if (TS_DIR / "node_modules" / "openai").is_dir() and (TS_DIR / "node_modules" / "undici").is_dir():
        return
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        pytest.fail(f"npm ci in {TS_DIR} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)


def node_env(extra_ca: Path | None) -> dict[str, str]:
    """The environment of an application on this machine: nothing that changes Node's trust
    or routing, except Pebble's root when given."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("NODE_", "SSL_CERT", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"))}
    if extra_ca is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(extra_ca)
    return env


def call(gw, service: str, token: str, env: dict[str, str]) -> dict:
    cfg = {"baseURL": gw.url(service), "apiKey": token, "domain": DOMAIN, "model": "gemini-2.0-flash",
           "content": "Say hello"}
    r = subprocess.run(["node", str(TS_DIR / "call.mjs"), json.dumps(cfg)], cwd=TS_DIR, env=env,
                       capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"call.mjs printed no result (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    out = json.loads(lines[-1])
    assert (r.returncode == 0) == out["ok"], (r.returncode, out, r.stderr)
    return out


def test_typescript_sdk_trusts_pebble_root_and_standard_store_only(acme_gateway):
    require_pebble()
    ensure_ts_client()
    env = acme_gateway()
    gw = env.gw
    with ExitStack() as stack:
        ai = setup_ai(gw, stack)
        for name in (DOMAIN, f"gemini.{DOMAIN}"):
            env.wait_acme(name)
        token = ai.token()
        before = len(ai.up["gemini"].requests)

        ok = call(gw, "gemini", token, node_env(env.pebble.root))
        assert ok["ok"], ok
        assert ok["content"] == "Hello from gemini!" and ok["model"] == "gemini-2.0-flash", ok
        [req] = ai.up["gemini"].requests[before:]
        assert req.path == "/v1beta/openai/chat/completions"
        assert req.header("authorization") == f"Bearer {KEYS['gemini']}"
        assert req.json()["messages"] == [{"role": "user", "content": "Say hello"}]

        # Node's own store alone does not know Pebble's root: a certificate error, no request.
        bad = call(gw, "gemini", token, node_env(None))
        assert not bad["ok"], bad
        assert set(bad["codes"]) & CERT_ERRORS, bad
        # Nor does the internal CA's certificate stand in for it (the name is served by ACME).
        internal = call(gw, "gemini", token, node_env(Path(gw.internal_ca)))
        assert not internal["ok"] and set(internal["codes"]) & CERT_ERRORS, internal
        assert len(ai.up["gemini"].requests) == before + 1
