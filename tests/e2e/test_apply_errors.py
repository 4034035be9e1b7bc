"""posternctl apply refuses bad input with exit 1 and a message naming file, line and field,
and applies nothing (not even the valid documents before the bad one)."""

import re

import pytest

GOOD = """\
kind: Service
metadata:
  name: {name}
spec:
  mode: HTTP
  isPublic: true
  config:
    upstream:
      url: http://127.0.0.1:9
"""

SYNTAX = """\
kind: Service
metadata:
  name: syntax-bad
spec:
  mode: HTTP
  isPublic: [true
  config:
    upstream:
      url: http://127.0.0.1:9
"""

UNKNOWN = """\
kind: Service
metadata:
  name: typo-svc
spec:
  mode: HTTP
  isPublic: true
  config:
    upstream:
      url: http://127.0.0.1:9
    upstrem:
      url: http://127.0.0.1:9
"""  # unknown field at line 10

BAD_CEL = """\
kind: Service
metadata:
  name: cel-svc
spec:
  mode: HTTP
  isPublic: true
  config:
    upstream:
      url: http://127.0.0.1:9
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                match: ctx.user.spec.groups.hasAll("dev" &&
"""  # bad CEL at line 16


def lines_named(msg: str, fname: str) -> list[int]:
    return [int(m) for m in re.findall(re.escape(fname) + r":(\d+)", msg)]


def refused(gw, text, fname):
    r = gw.apply_text(text, fname, check=False)
    msg = r.stderr + r.stdout
    assert r.returncode == 1, f"exit {r.returncode}: {msg}"
    assert fname in msg, msg
    return msg


def test_bad_yaml_syntax(gateway):
    msg = refused(gateway, SYNTAX, "bad-syntax.yaml")
    lines = lines_named(msg, "bad-syntax.yaml")
    assert lines and all(5 <= n <= 10 for n in lines), msg
    assert "syntax-bad" not in gateway.names("services")


def test_unknown_field(gateway):
    msg = refused(gateway, UNKNOWN, "bad-unknown.yaml")
    assert "upstrem" in msg, msg
    lines = lines_named(msg, "bad-unknown.yaml")
    assert lines and all(1 <= n <= 10 for n in lines), msg
    assert "typo-svc" not in gateway.names("services")


def test_unknown_field_suggests_or_names_path(gateway):
    msg = refused(gateway, UNKNOWN, "bad-unknown2.yaml")
    assert "config" in msg or "upstream" in msg, msg


def test_bad_cel(gateway):
    msg = refused(gateway, BAD_CEL, "bad-cel.yaml")
    assert "match" in msg, msg
    lines = lines_named(msg, "bad-cel.yaml")
    assert lines and all(1 <= n <= 16 for n in lines), msg
    assert "cel-svc" not in gateway.names("services")


def test_unknown_kind(gateway):
    msg = refused(gateway, "kind: Servise\nmetadata:\n  name: x\nspec: {}\n", "bad-kind.yaml")
    assert "Servise" in msg or "kind" in msg, msg


@pytest.mark.parametrize("bad", [UNKNOWN, BAD_CEL], ids=["unknown-field", "bad-cel"])
def test_bad_second_document_leaves_first_unapplied(gateway, bad):
    text = GOOD.format(name="atomic-first") + "---\n" + bad
    second_start = GOOD.count("\n") + 2  # the line after '---'
    msg = refused(gateway, text, "two-docs.yaml")
    lines = lines_named(msg, "two-docs.yaml")
    assert lines and all(n >= second_start for n in lines), f"error must point into the 2nd document: {msg}"
    assert "atomic-first" not in gateway.names("services")
    r = gateway.ctl("get", "services", "atomic-first", check=False)
    assert r.returncode != 0


def test_bad_second_file_leaves_first_file_unapplied(gateway):
    good = gateway.write(GOOD.format(name="file-one"), "one.yaml")
    bad = gateway.write(UNKNOWN, "two.yaml")
    r = gateway.apply_files(good, bad, check=False)
    assert r.returncode == 1
    assert "two.yaml" in r.stderr + r.stdout
    assert "file-one" not in gateway.names("services")


def test_failed_update_keeps_previous_version(gateway):
    gateway.apply_text(GOOD.format(name="cel-svc"))
    refused(gateway, BAD_CEL, "bad-update.yaml")
    [svc] = gateway.get("services", "cel-svc")
    assert not svc["spec"].get("authorization"), svc

