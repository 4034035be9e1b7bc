//! `posternctl policy explain|test` offline (`-f`): the built binary on files in a temp dir,
//! no gateway and no session needed.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const IDENTITIES: &str = "kind: Group
metadata: {name: dev}
---
kind: Group
metadata: {name: ops}
---
kind: User
metadata: {name: ci-bot}
spec: {type: WORKLOAD, groups: [dev, ops]}
---
kind: User
metadata: {name: alice}
spec: {groups: [dev]}
---
kind: Policy
metadata: {name: guard}
spec:
  global: true
  rules:
    - {name: no-delete, effect: DENY, priority: -1, condition: {match: 'ctx.request.http.method == \"DELETE\"'}}
";

const SERVICE: &str = "kind: Service
metadata: {name: my-api}
spec:
  config: {upstream: {url: 'https://api.example.com'}}
  dynamicConfig:
    configs: [{name: mini, upstream: {url: 'https://mini.example.com'}}]
    rules: [{configName: mini, condition: {match: 'ctx.request.http.bodyMap.model == \"gpt-4o-mini\"'}}]
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                all:
                  of:
                    - match: ctx.user.spec.groups.hasAll(\"dev\", \"ops\")
                    - match: ctx.request.http.headers[\"x-team\"] == \"a\"
                    - match: ctx.request.http.bodyMap.model in [\"gpt-3.5-turbo\", \"gpt-4o-mini\"]
";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A temp dir with the resource files, and a way to run posternctl in it.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "postern-policy-cli-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let d = Dir(dir);
        d.write("identities.yaml", IDENTITIES);
        d.write("my-api.yaml", SERVICE);
        d
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    fn ctl(&self, args: &[&str]) -> Run {
        let home: &Path = &self.0.join("home");
        let out = Command::new(env!("CARGO_BIN_EXE_posternctl"))
            .args(args)
            .env("POSTERN_HOME", home)
            .env_remove("POSTERN_GATEWAY_ADDRESS")
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    fn explain(&self, extra: &[&str]) -> Run {
        let (ids, svc) = (self.path("identities.yaml"), self.path("my-api.yaml"));
        let mut args = vec!["policy", "explain", "-f", &ids, "-f", &svc];
        args.extend_from_slice(extra);
        self.ctl(&args)
    }

    fn test(&self, cases: &str) -> Run {
        let cases = self.write("cases.yaml", cases);
        let (ids, svc) = (self.path("identities.yaml"), self.path("my-api.yaml"));
        self.ctl(&["policy", "test", &cases, "-f", &ids, "-f", &svc])
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn explain_table_marks_the_deciding_rule_and_shows_the_config() {
    let d = Dir::new("table");
    let body = d.write("body.json", r#"{"model": "gpt-4o-mini", "messages": []}"#);
    let r = d.explain(&[
        "--user",
        "ci-bot",
        "--service",
        "my-api",
        "--method",
        "POST",
        "--path",
        "/v1/chat/completions",
        "-H",
        "X-Team: a",
        "--body",
        &body,
        "--ip",
        "10.1.2.3",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["#", "POLICY", "RULE", "EFFECT", "PRIORITY", "MATCHED"]
    );
    assert!(
        lines[1].starts_with("1") && lines[1].contains("guard") && lines[1].contains("no-delete")
    );
    assert!(lines[1].trim_end().ends_with("no"), "{}", r.stdout);
    assert!(
        lines[2].contains("my-api/inline-0") && lines[2].contains("<- decides"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Decision: ALLOW by policy my-api/inline-0 rule rule-0 (priority 0)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Config: mini (dynamicConfig)"),
        "{}",
        r.stdout
    );
}

#[test]
fn explain_deny_by_default_and_json() {
    let d = Dir::new("json");
    let r = d.explain(&["--user", "alice", "--service", "my-api", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["decision"]["effect"], "DENY");
    assert_eq!(v["decision"]["decidedBy"], "none");
    assert_eq!(v["rules"].as_array().unwrap().len(), 2);
    assert_eq!(v["rules"][1]["matched"], false);
    assert!(v["config"].is_null());

    let r = d.explain(&[
        "--user",
        "alice",
        "--service",
        "my-api",
        "--method",
        "DELETE",
    ]);
    assert!(
        r.stdout
            .contains("Decision: DENY by policy guard rule no-delete (priority -1)"),
        "{}",
        r.stdout
    );
    let r = d.explain(&["--user", "bob", "--service", "my-api"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("User \"bob\" not found in the resources"),
        "{}",
        r.stderr
    );
}

const CASES: &str = "cases:
  - name: ci-bot may use small models
    user: ci-bot
    service: my-api
    request: {method: POST, path: /v1/chat/completions, headers: {x-team: a}, body: {model: gpt-4o-mini, messages: []}, ip: 10.1.2.3}
    expect: ALLOW
    rule: my-api/inline-0/rule-0
  - name: alice is only in dev
    user: alice
    service: my-api
    request: {method: POST, headers: {x-team: a}, body: {model: gpt-4o-mini}}
    expect: DENY
    rule: none
  - name: nobody deletes
    user: ci-bot
    service: my-api
    request: {method: DELETE, headers: {x-team: a}, body: {model: gpt-4o-mini}}
    expect: DENY
    rule: guard/no-delete
";

#[test]
fn test_passes_with_exit_0() {
    let d = Dir::new("pass");
    let r = d.test(CASES);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "PASS ci-bot may use small models\nPASS alice is only in dev\nPASS nobody deletes\n3 passed, 0 failed\n"
    );
}

#[test]
fn test_failure_names_expected_and_actual_and_exits_1() {
    let d = Dir::new("fail");
    let cases = CASES.replace("    expect: DENY\n    rule: none", "    expect: ALLOW");
    let r = d.test(&cases);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("FAIL alice is only in dev: expected ALLOW, got DENY by none\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("2 passed, 1 failed\n"), "{}", r.stdout);
    assert!(
        r.stderr.contains("1 of 3 policy test cases failed"),
        "{}",
        r.stderr
    );

    let cases = CASES.replace("rule: guard/no-delete", "rule: my-api/inline-0/rule-0");
    let r = d.test(&cases);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("FAIL nobody deletes: expected DENY by my-api/inline-0/rule-0, got DENY by guard/no-delete"), "{}", r.stdout);

    let cases = CASES.replace("user: alice", "user: zed");
    let r = d.test(&cases);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("ERROR alice is only in dev: User \"zed\" not found in the resources"),
        "{}",
        r.stdout
    );
}

#[test]
fn parse_errors_name_file_line_and_field() {
    let d = Dir::new("parse");
    let cases = CASES.replace(
        "    expect: DENY\n    rule: none",
        "    expect: DENIED\n    rule: none",
    );
    let r = d.test(&cases);
    assert_eq!(r.code, 1);
    let file = d.path("cases.yaml");
    assert!(r.stderr.contains(&format!("{file}:12:")), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("cases[1].expect: unknown variant `DENIED`, expected `ALLOW` or `DENY`"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());

    // a resource file with a typo: file, line and field
    let svc = d.write("my-api.yaml", &SERVICE.replace("  config: {", "  confg: {"));
    let r = d.explain(&["--user", "alice", "--service", "my-api"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&format!("{svc}:4")), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean `config`?"), "{}", r.stderr);

    // a resource that parses but does not compile: located too
    d.write("my-api.yaml", SERVICE);
    let bad = d.write("bad.yaml", "kind: Policy\nmetadata: {name: broken}\nspec:\n  rules:\n    - effect: ALLOW\n      condition:\n        match: nosuchfn(ctx.user)\n");
    let (ids, svc) = (d.path("identities.yaml"), d.path("my-api.yaml"));
    let r = d.ctl(&[
        "policy",
        "explain",
        "--user",
        "alice",
        "--service",
        "my-api",
        "-f",
        &ids,
        "-f",
        &svc,
        "-f",
        &bad,
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "{bad}:7 (Policy/broken): spec.rules[0].condition.match: unknown function 'nosuchfn'"
        )),
        "{}",
        r.stderr
    );
}
