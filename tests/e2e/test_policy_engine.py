"""Policies through the real gateway beyond the seed Services: the seed's OPA/Rego rule
(identities.yaml) deciding requests, global Policies applying to every Service, deleting a
Policy in use refused, and `apply --dry-run` changing nothing while reporting what would."""

from contextlib import ExitStack

import pytest

from conftest import assert_error_body, chat_body, seed_path
from standin import StandIn

OPA_SERVICE = """
kind: Service
metadata:
  name: opa-api
spec:
  isPublic: true
  config:
    upstream:
      url: {url}
  authorization:
    policies: [no-expensive-models-for-dev]
"""


class Env:
    def __init__(self, gw, up):
        self.gw, self.up = gw, up
        self.creds = {u: gw.create_oauth2(u, f"{u}-cred") for u in ("alice", "ci-bot")}

    def call(self, user, service, body=None, method="POST"):
        tok = self.gw.token(*self.creds[user])
        with self.gw.http() as h:
            return h.request(method, self.gw.url(service, "/v1/chat/completions"),
                             json=body if body is not None else chat_body("gpt-3.5-turbo"),
                             headers={"Authorization": f"Bearer {tok}"})


@pytest.fixture
def env(gateway):
    with ExitStack() as stack:
        up = stack.enter_context(StandIn("opa"))
        gateway.apply_files(seed_path("identities"))
        gateway.apply_text(OPA_SERVICE.format(url=up.url))
        yield Env(gateway, up)


def test_rego_rule_allows_human_post(env):
    r = env.call("alice", "opa-api")
    assert r.status_code == 200, r.text
    e = env.gw.wait_access(lambda e: e.get("service") == "opa-api" and e.get("status") == 200)
    assert e["reason"] == "policy no-expensive-models-for-dev rule opa-weekday-humans priority 0"


def test_rego_rule_does_not_match_workload(env):
    r = env.call("ci-bot", "opa-api")
    assert r.status_code == 403
    assert_error_body(r.json(), request_id=True)
    e = env.gw.wait_access(lambda e: e.get("service") == "opa-api" and e.get("user") == "ci-bot")
    assert e["decision"] == "DENY" and "no matching rule" in e["reason"]
    assert env.up.requests == []


def test_cel_deny_at_lower_priority_beats_rego_allow(env):
    r = env.call("alice", "opa-api", chat_body("gpt-4o"))
    assert r.status_code == 403
    e = env.gw.wait_access(lambda e: e.get("service") == "opa-api" and e.get("status") == 403)
    assert e["reason"] == "policy no-expensive-models-for-dev rule deny-gpt4 priority -1"


def test_rego_method_condition(env):
    # the Rego rule allows only GET and POST
    r = env.call("alice", "opa-api", method="PUT")
    assert r.status_code == 403


def test_global_policy_applies_to_every_service(env):
    assert env.call("alice", "opa-api").status_code == 200
    env.gw.apply_text("""
kind: Policy
metadata:
  name: read-only-weekend
spec:
  global: true
  rules:
    - name: no-puts-anywhere
      effect: DENY
      priority: -4
      condition:
        match: ctx.request.http.bodyMap.model == "gpt-3.5-turbo"
""")
    r = env.call("alice", "opa-api")
    assert r.status_code == 403
    e = env.gw.wait_access(lambda e: e.get("service") == "opa-api" and e.get("status") == 403)
    assert e["reason"] == "policy read-only-weekend rule no-puts-anywhere priority -4"
    # another model is not caught by the global rule and the Service's own rules allow it
    assert env.call("alice", "opa-api", chat_body("gemini-2.0-flash")).status_code == 200
    # disabling the global Policy lifts it at once
    env.gw.apply_text("""
kind: Policy
metadata:
  name: read-only-weekend
spec:
  global: true
  isDisabled: true
  rules:
    - name: no-puts-anywhere
      effect: DENY
      priority: -4
      condition:
        match: ctx.request.http.bodyMap.model == "gpt-3.5-turbo"
""")
    assert env.call("alice", "opa-api").status_code == 200


def test_inline_policy_cannot_be_global(env):
    r = env.gw.apply_text("""
kind: Service
metadata:
  name: sneaky
spec:
  config: {upstream: {url: "http://127.0.0.1:9"}}
  authorization:
    inlinePolicies:
      - spec:
          global: true
          rules: [{effect: ALLOW, condition: {matchAny: true}}]
""", check=False)
    assert r.returncode == 1
    assert "inlinePolicies[0].spec.global" in r.stderr, r.stderr
    assert "sneaky" not in env.gw.names("services")


def test_referenced_policy_delete_refused_with_referrers(env):
    r = env.gw.ctl("delete", "policy", "no-expensive-models-for-dev", check=False)
    assert r.returncode == 1
    assert "Service/opa-api" in r.stderr, r.stderr
    assert "no-expensive-models-for-dev" in env.gw.names("policies")
    assert env.call("alice", "opa-api").status_code == 200


def test_bad_rego_rejected_with_line_and_column(env):
    r = env.gw.apply_text("""kind: Policy
metadata:
  name: broken-rego
spec:
  rules:
    - effect: ALLOW
      condition:
        opa:
          inline: |
            package x
            match if {{ input.ctx
""", "broken.yaml", check=False)
    assert r.returncode == 1
    assert "broken.yaml:" in r.stderr and "spec.rules[0].condition.opa.inline" in r.stderr, r.stderr
    assert "line" in r.stderr and "column" in r.stderr, r.stderr
    assert "broken-rego" not in env.gw.names("policies")


def test_dry_run_reports_and_changes_nothing(env):
    before = env.gw.get("services", "opa-api")
    changed = OPA_SERVICE.format(url=env.up.url).replace("isPublic: true", "isPublic: false")
    path = env.gw.write(changed + "---\nkind: Group\nmetadata:\n  name: brand-new\n")
    r = env.gw.ctl("apply", "--dry-run", str(path))
    assert "Service/opa-api updated (dry run)" in r.stdout, r.stdout
    assert "Group/brand-new created (dry run)" in r.stdout, r.stdout
    assert env.gw.get("services", "opa-api") == before
    assert "brand-new" not in env.gw.names("groups")
    assert env.call("alice", "opa-api").status_code == 200
    # a dry run reports compile errors like a real apply
    bad = env.gw.write(changed.replace("policies: [no-expensive-models-for-dev]",
                                       "policies: [no-such-policy]"))
    r = env.gw.ctl("apply", "--dry-run", str(bad), check=False)
    assert r.returncode == 1 and "no-such-policy" in r.stderr
