"""``posternctl policy explain|test`` against a real gateway and offline over the shared
examples: explain's decision is the decision a real request gets (200/403), nothing reaches
the upstream while explaining, and a case file covers the ALLOW and each DENY condition."""

import json
from contextlib import ExitStack
from pathlib import Path

import pytest

from conftest import chat_body, seed_path, with_upstreams
from standin import StandIn

SHARED = Path("/work/shared/examples")


def example(name: str) -> Path:
    """The shared example when present (the seeds are copies of them), else the seed."""
    p = SHARED / f"{name}.yaml"
    return p if p.exists() else seed_path(name)


GOOD = dict(model="gpt-4o-mini", n_messages=3, temperature=0.5)

# (case name, user, body, expected effect): the ALLOW and each condition broken alone
SCENARIOS = [
    ("all conditions met", "ci-bot", chat_body(**GOOD), "ALLOW"),
    ("other listed model", "ci-bot", chat_body(**dict(GOOD, model="gpt-3.5-turbo")), "ALLOW"),
    ("user only in dev", "alice", chat_body(**GOOD), "DENY"),
    ("four messages", "ci-bot", chat_body(**dict(GOOD, n_messages=4)), "DENY"),
    ("model not listed", "ci-bot", chat_body(**dict(GOOD, model="gpt-4o")), "DENY"),
    ("temperature 0.7", "ci-bot", chat_body(**dict(GOOD, temperature=0.7)), "DENY"),
    ("temperature missing", "ci-bot", chat_body(model="gpt-4o-mini", n_messages=3), "DENY"),
    ("model missing", "ci-bot", {"messages": [{"role": "user", "content": "x"}], "temperature": 0.1}, "DENY"),
]

RULE = "my-api/inline-0/rule-0"


def cases_yaml() -> str:
    cases = [
        {"name": name, "user": user, "service": "my-api",
         "request": {"method": "POST", "path": "/v1/chat/completions", "body": body, "ip": "10.1.2.3"},
         "expect": expect, "rule": RULE if expect == "ALLOW" else "none"}
        for name, user, body, expect in SCENARIOS
    ]
    return json.dumps({"cases": cases}, indent=1)  # JSON is YAML


class MyApi:
    def __init__(self, gw, up):
        self.gw, self.up = gw, up
        self.creds = {u: gw.create_oauth2(u, f"{u}-oauth2") for u in ("ci-bot", "alice")}

    def post(self, user, body, headers=None):
        token = self.gw.token(*self.creds[user])
        with self.gw.http() as h:
            return h.post(self.gw.url("my-api", "/v1/chat/completions"), json=body,
                          headers={"Authorization": f"Bearer {token}", **(headers or {})})

    def explain(self, user, body, *extra):
        f = self.gw.write(json.dumps(body), None)
        r = self.gw.ctl("policy", "explain", "--user", user, "--service", "my-api", "--method", "POST",
                        "--path", "/v1/chat/completions", "--body", str(f), "-o", "json", *extra)
        return json.loads(r.stdout)


@pytest.fixture
def myapi(gateway):
    with ExitStack() as stack:
        up = stack.enter_context(StandIn("my-api"))
        gateway.apply_files(example("identities"))
        gateway.apply_text(with_upstreams(example("my-api").read_text(), lambda _: up.url, make_public=True),
                           "my-api-test.yaml")
        yield MyApi(gateway, up)


@pytest.mark.parametrize("name,user,body,expect", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_explain_against_the_gateway_matches_a_real_request(myapi, name, user, body, expect):
    e = myapi.explain(user, body)
    assert not myapi.up.requests, "explain must never reach the upstream"
    assert e["decision"]["effect"] == expect, (name, e)
    assert [r["policy"] + "/" + r["rule"] for r in e["rules"]] == [RULE]
    assert e["rules"][0]["matched"] == (expect == "ALLOW")
    r = myapi.post(user, body)
    assert r.status_code == (200 if expect == "ALLOW" else 403), (name, r.status_code, r.text)


def test_explain_table_with_a_global_header_rule(myapi):
    myapi.gw.apply_text("""\
kind: Policy
metadata: {name: blocklist}
spec:
  global: true
  rules:
    - name: blocked-team
      effect: DENY
      priority: -4
      condition:
        match: ctx.request.http.headers["x-team"] == "blocked" && ctx.request.http.host.startsWith("my-api.")
""", "blocklist.yaml")
    body = chat_body(**GOOD)
    f = myapi.gw.write(json.dumps(body), "body.json")
    args = ["policy", "explain", "--user", "ci-bot", "--service", "my-api", "--method", "POST",
            "--path", "/v1/chat/completions", "--body", str(f)]
    out = myapi.gw.ctl(*args, "-H", "X-Team: blocked").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["#", "POLICY", "RULE", "EFFECT", "PRIORITY", "MATCHED"], out
    assert "blocklist" in lines[1] and "blocked-team" in lines[1] and "<- decides" in lines[1], out
    assert RULE.rsplit("/", 1)[0] in lines[2] and lines[2].rstrip().endswith("yes"), out
    assert "Decision: DENY by policy blocklist rule blocked-team (priority -4)" in out
    assert myapi.post("ci-bot", body, {"X-Team": "blocked"}).status_code == 403

    out = myapi.gw.ctl(*args, "-H", "X-Team: a").stdout
    assert f"Decision: ALLOW by policy {RULE.rsplit('/', 1)[0]} rule rule-0 (priority 0)" in out, out
    assert "Config: default (spec.config)" in out, out
    assert myapi.post("ci-bot", body, {"X-Team": "a"}).status_code == 200
    assert len(myapi.up.requests) == 1, "only the real request reached the upstream"


def test_case_file_offline_over_the_shared_examples(gateway):
    cases = gateway.write(cases_yaml(), "cases.yaml")
    files = ["-f", str(example("my-api")), "-f", str(example("identities"))]
    r = gateway.ctl("policy", "test", str(cases), *files, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[:-1] == [f"PASS {s[0]}" for s in SCENARIOS]
    assert lines[-1] == f"{len(SCENARIOS)} passed, 0 failed"

    wrong = cases_yaml().replace('"expect": "DENY"', '"expect": "ALLOW"', 1)
    r = gateway.ctl("policy", "test", str(gateway.write(wrong, "wrong.yaml")), *files, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL user only in dev: expected ALLOW by none, got DENY by none" in r.stdout, r.stdout
    assert r.stdout.splitlines()[-1] == f"{len(SCENARIOS) - 1} passed, 1 failed"


def test_case_file_against_the_gateway(myapi):
    cases = myapi.gw.write(cases_yaml(), "cases.yaml")
    r = myapi.gw.ctl("policy", "test", str(cases), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == f"{len(SCENARIOS)} passed, 0 failed"
    assert not myapi.up.requests


def test_case_file_parse_error_names_file_and_line(gateway):
    bad = gateway.write("cases:\n  - name: x\n    user: alice\n    service: my-api\n    expect: PERMIT\n", "bad.yaml")
    r = gateway.ctl("policy", "test", str(bad), "-f", str(example("my-api")), "-f", str(example("identities")),
                    check=False)
    assert r.returncode != 0
    assert f"{bad}:5" in r.stderr and "cases[0].expect" in r.stderr, r.stderr


def test_explain_sees_the_normalised_path_like_a_real_request(myapi):
    """A rule on the path judges the path the gateway would see: an encoded or dotted spelling
    of a denied path is denied by explain as by the gateway, and a path the gateway refuses
    with 400 is reported as such instead of being evaluated."""
    myapi.gw.apply_text("""\
kind: Policy
metadata: {name: no-admin}
spec:
  global: true
  rules:
    - name: admin-path
      effect: DENY
      priority: -4
      condition:
        match: ctx.request.http.path.startsWith("/v1/admin/")
""", "no-admin.yaml")
    body = chat_body(**GOOD)
    f = myapi.gw.write(json.dumps(body), "body.json")
    for path in ("/v1/%61dmin/x", "/v1/chat/../admin/x", "/v1//admin/x"):
        out = myapi.gw.ctl("policy", "explain", "--user", "ci-bot", "--service", "my-api", "--method", "POST",
                           "--path", path, "--body", str(f)).stdout
        assert "Decision: DENY by policy no-admin rule admin-path" in out, (path, out)
        token = myapi.gw.token(*myapi.creds["ci-bot"])
        r = myapi.gw.curl("-X", "POST", "--path-as-is", "-H", f"Authorization: Bearer {token}",
                          "-H", "Content-Type: application/json", "--data-binary", json.dumps(body),
                          myapi.gw.url("my-api", path))
        assert r.status == 403, (path, r.status, r.body)
    r = myapi.gw.ctl("policy", "explain", "--user", "ci-bot", "--service", "my-api",
                     "--path", "/v1/admin;x/y", check=False)
    assert r.returncode != 0 and "400" in r.stderr and "/v1/admin;x/y" in r.stderr, r
    assert not myapi.up.requests, "nothing reached the upstream"
