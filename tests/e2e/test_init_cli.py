"""posternd init/serve and the posternctl / postern CLIs."""

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import yaml

from conftest import DOMAIN, parse_json, SEED_RESOURCES, Gateway, name_of, seed_path


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_init_prints_json_with_ca_and_admin_token(bin_dir, tmp_path):
    gw = Gateway(bin_dir, tmp_path, [], None, None)
    r = gw.init()
    assert r.returncode == 0, r.stderr
    out = parse_json(r.stdout, "posternd init -o json")
    assert out["domain"] == DOMAIN
    assert isinstance(out["adminToken"], str) and len(out["adminToken"]) >= 16
    ca = Path(out["caCert"])
    assert ca.is_file()
    assert b"-----BEGIN CERTIFICATE-----" in ca.read_bytes()


def test_init_twice_refuses_and_changes_nothing(bin_dir, tmp_path):
    gw = Gateway(bin_dir, tmp_path, [], None, None)
    first = gw.init()
    assert first.returncode == 0, first.stderr
    before = tree_digest(gw.data_dir)
    assert before, "init wrote nothing into the data dir"
    second = gw.init()
    assert second.returncode != 0
    assert (second.stderr + second.stdout).strip(), "refusal must say why"
    assert json.loads(first.stdout)["adminToken"] not in second.stdout + second.stderr
    assert tree_digest(gw.data_dir) == before


def test_serve_logs_listening_and_stops_on_sigterm(gateway):
    assert "listening on" in gateway.stderr()
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.wait(timeout=10)
    assert gateway.proc.returncode is not None


def test_admin_session_survives_gateway_restart(gateway):
    gateway.create_secret("kept", "v1")
    gateway.stop()
    gateway.serve()
    assert "kept" in gateway.names("secrets")


def test_apply_seeds_unchanged_then_unchanged_again(gateway):
    seeds = [seed_path(n) for n in ("identities", "gemini", "total-ai", "my-api")]
    for n in ("gemini", "openai", "deepseek"):
        gateway.create_secret(f"{n}-api-key", f"key-{n}")
    r = gateway.apply_files(*seeds)
    for res in SEED_RESOURCES:
        assert f"{res} created" in r.stdout, r.stdout
    again = gateway.apply_files(*seeds)
    for res in SEED_RESOURCES:
        assert f"{res} unchanged" in again.stdout, again.stdout
    assert set(gateway.names("services")) >= {"gemini", "total-ai", "my-api"}
    assert set(gateway.names("users")) >= {"ci-bot", "alice"}
    assert set(gateway.names("groups")) >= {"dev", "ops"}
    assert "no-expensive-models-for-dev" in gateway.names("policies")


def test_apply_update_and_get_formats(gateway):
    gateway.create_secret("gemini-api-key", "k")
    gateway.apply_files(seed_path("gemini"))
    changed = seed_path("gemini").read_text().replace("/v1beta/openai", "/v1beta/other")
    r = gateway.apply_text(changed)
    assert "Service/gemini updated" in r.stdout
    [svc] = gateway.get("services", "gemini")
    assert name_of(svc) == "gemini"
    assert svc["spec"]["config"]["http"]["path"]["addPrefix"] == "/v1beta/other"
    assert svc["spec"]["isPublic"] is True
    y = gateway.ctl("get", "services", "gemini", "-o", "yaml").stdout
    docs = [d for d in yaml.safe_load_all(y) if d]
    flat = docs[0]["items"][0] if isinstance(docs[0], dict) and "items" in docs[0] else docs[0]
    assert flat["spec"]["config"]["upstream"]["url"] == "https://generativelanguage.googleapis.com"
    plain = gateway.ctl("get", "services").stdout
    assert "gemini" in plain


def test_secret_values_are_never_shown(gateway):
    gateway.ctl("create", "secret", "by-flag", "--value", "s3cr3t-by-flag-value")
    gateway.ctl("create", "secret", "by-stdin", input="s3cr3t-by-stdin-value\n")
    assert {"by-flag", "by-stdin"} <= set(gateway.names("secrets"))
    for fmt in ("json", "yaml"):
        out = gateway.ctl("get", "secrets", "-o", fmt).stdout
        assert "s3cr3t" not in out
    assert "s3cr3t" not in gateway.ctl("get", "secrets").stdout


def test_delete_service(gateway):
    gateway.create_secret("gemini-api-key", "k")
    gateway.apply_files(seed_path("gemini"))
    gateway.ctl("delete", "service", "gemini")
    assert "gemini" not in gateway.names("services")
    r = gateway.ctl("get", "services", "gemini", check=False)
    assert r.returncode != 0


def test_oauth2_credential_listed_without_secret(gateway):
    gateway.apply_files(seed_path("identities"))
    cid, secret = gateway.create_oauth2("ci-bot", "ci-bot-oauth2")
    assert cid and secret and cid != secret
    creds = gateway.get("credentials")
    assert "ci-bot-oauth2" in [name_of(c) for c in creds]
    assert secret not in json.dumps(creds)
    assert secret not in gateway.ctl("get", "credentials", "-o", "yaml").stdout


def test_credential_for_unknown_user_fails(gateway):
    r = gateway.ctl("create", "credential", "x", "--user", "nobody-here", "--type", "oauth2", "-o", "json", check=False)
    assert r.returncode != 0


def test_auth_token_credential_logs_in(gateway, tmp_path):
    gateway.apply_files(seed_path("identities"))
    token = gateway.create_auth_token("alice", "alice-token")
    assert token
    other_home = tmp_path / "alice-home"
    other_home.mkdir()
    env = dict(gateway.env, POSTERN_HOME=str(other_home))
    r = subprocess.run(
        [gateway.bin("postern"), "login", "--domain", f"{DOMAIN}:{gateway.port}", "--auth-token", token,
         "--ca-file", gateway.ca], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    sessions = gateway.get("sessions")
    assert any(s.get("user") == "alice" for s in sessions), sessions


def test_login_with_bad_token_fails(gateway, tmp_path):
    other_home = tmp_path / "bad-home"
    other_home.mkdir()
    env = dict(gateway.env, POSTERN_HOME=str(other_home))
    r = subprocess.run(
        [gateway.bin("postern"), "login", "--domain", f"{DOMAIN}:{gateway.port}", "--auth-token", "not-a-token",
         "--ca-file", gateway.ca], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0


def test_ctl_without_login_fails(gateway, tmp_path):
    empty = tmp_path / "empty-home"
    empty.mkdir()
    env = dict(gateway.env, POSTERN_HOME=str(empty))
    r = subprocess.run([gateway.bin("posternctl"), "get", "services"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0

