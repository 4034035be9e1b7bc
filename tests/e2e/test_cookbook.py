"""Every recipe of docs/policies.md is run with `posternctl policy test` (offline, the
gateway's own engine), and a few through a real gateway, so the cookbook cannot rot."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from standin import StandIn

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
RECIPE = re.compile(r"<!-- recipe: ([\w-]+) -->\s*```yaml\n(.*?)```\s*```yaml\n(.*?)```", re.S)


def recipes():
    found = RECIPE.findall(DOC.read_text())
    assert len(found) >= 7, f"expected the cookbook's recipes in {DOC}, found {len(found)}"
    return found


def run_cases(bin_dir, tmp_path, name, resources, cases):
    res, cs = tmp_path / f"{name}-resources.yaml", tmp_path / f"{name}-cases.yaml"
    res.write_text(resources)
    cs.write_text(cases)
    return subprocess.run([str(bin_dir / "posternctl"), "policy", "test", str(cs), "-f", str(res)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name,resources,cases", recipes(), ids=[r[0] for r in recipes()])
def test_recipe_cases_pass(bin_dir, tmp_path, name, resources, cases):
    n = len(yaml.safe_load(cases)["cases"])
    r = run_cases(bin_dir, tmp_path, name, resources, cases)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{n} passed, 0 failed" in r.stdout, r.stdout


@pytest.mark.parametrize("name,resources,cases", recipes()[:3], ids=[r[0] for r in recipes()[:3]])
def test_recipe_with_flipped_expectation_fails(bin_dir, tmp_path, name, resources, cases):
    data = yaml.safe_load(cases)
    first = data["cases"][0]
    first["expect"] = "DENY" if first["expect"] == "ALLOW" else "ALLOW"
    first.pop("rule", None)
    r = run_cases(bin_dir, tmp_path, name, resources, yaml.safe_dump(data))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAIL {first['name']}" in r.stdout


def test_models_recipe_through_the_gateway(gateway):
    """The same recipe, applied to a real gateway: its decisions are the ones the cases state."""
    name, resources, cases = next(r for r in recipes() if r[0] == "models-by-group")
    with StandIn("llm") as up:
        gateway.apply_text(resources.replace("https://api.openai.com", up.url))
        creds = {u: gateway.create_oauth2(u, f"{u}-cred") for u in ("dev1", "ml1")}
        for case in yaml.safe_load(cases)["cases"]:
            tok = gateway.token(*creds[case["user"]])
            with gateway.http() as h:
                resp = h.post(gateway.url("llm", case["request"]["path"]), json=case["request"]["body"],
                              headers={"Authorization": f"Bearer {tok}"})
            want = 200 if case["expect"] == "ALLOW" else 403
            assert resp.status_code == want, (case["name"], resp.text)
