//! End-to-end tests of the built `postern` and `posternctl` binaries against a fake HTTPS
//! control API, checking the requests they send and what they print.

mod fake_gateway;

use fake_gateway::{error_body, FakeGateway, Recorded, HOST};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A fresh, empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "postern-cli-{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(bin: &str, home: &Path, gateway: Option<&FakeGateway>, args: &[&str], stdin: &str) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("POSTERN_HOME", home)
        .env_remove("POSTERN_DOMAIN")
        .env_remove("POSTERN_AUTH_TOKEN")
        .env_remove("POSTERN_GATEWAY_ADDRESS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(g) = gateway {
        cmd.env("POSTERN_GATEWAY_ADDRESS", g.addr.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn postern(home: &Path, g: Option<&FakeGateway>, args: &[&str]) -> Run {
    run(env!("CARGO_BIN_EXE_postern"), home, g, args, "")
}

fn ctl(home: &Path, g: Option<&FakeGateway>, args: &[&str], stdin: &str) -> Run {
    run(env!("CARGO_BIN_EXE_posternctl"), home, g, args, stdin)
}

/// Writes a session for `g` directly, as `postern login` would.
fn write_session(home: &Path, g: &FakeGateway, expires_at: &str) {
    let session = json!({"domain": g.domain(), "accessToken": "acc-1", "session": "sess-1",
                         "user": "admin", "expiresAt": expires_at, "caFile": g.ca_file});
    std::fs::write(home.join("session.json"), session.to_string()).unwrap();
}

fn service(name: &str) -> Value {
    json!({"kind": "Service", "metadata": {"name": name},
           "spec": {"mode": "HTTP", "isPublic": true, "config": {"upstream": {"url": "https://up.example"}}}})
}

/// The routes a well-behaved gateway would answer.
fn api(r: &Recorded) -> (u16, Value) {
    let authorized = r.header("authorization") == Some("Bearer acc-1");
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/login") => {
            if r.json()["authToken"] == "tok-1" {
                (
                    200,
                    json!({"accessToken": "acc-1", "expiresIn": 3600, "session": "sess-1", "user": "admin"}),
                )
            } else {
                (401, error_body("invalid auth token", "invalid_token"))
            }
        }
        _ if !authorized => (
            401,
            error_body("missing or invalid access token", "unauthorized"),
        ),
        ("POST", "/api/v1/apply") => (
            200,
            json!({
            "results": [{"kind": "Service", "name": "gemini", "action": "created"},
                        {"kind": "Group", "name": "dev", "action": "unchanged"}],
            "dryRun": r.json()["dryRun"]}),
        ),
        ("GET", "/api/v1/services") => (
            200,
            json!({"items": [service("gemini"), service("claude")]}),
        ),
        ("GET", "/api/v1/services/gemini") => (200, service("gemini")),
        ("GET", p) if p.starts_with("/api/v1/services/") => {
            (404, error_body("Service \"nope\" not found", "not_found"))
        }
        ("POST", "/api/v1/credentials") => (
            201,
            json!({"name": "ci", "clientId": "cid-1", "clientSecret": "csec-1"}),
        ),
        ("POST", "/api/v1/secrets") => (201, json!({"name": r.json()["name"]})),
        ("DELETE", "/api/v1/services/gemini") => (
            200,
            json!({"deleted": {"kind": "Service", "name": "gemini"}}),
        ),
        ("POST", "/api/v1/logout") => (200, json!({})),
        _ => (404, error_body("no such route", "not_found")),
    }
}

#[test]
fn login_whoami_and_logout() {
    let dir = temp_dir("login");
    let home = dir.join("home");
    let g = FakeGateway::start(&dir, api);
    let ca = g.ca_file.to_str().unwrap();

    let r = postern(
        &home,
        Some(&g),
        &[
            "login",
            "--domain",
            &g.domain(),
            "--auth-token",
            "tok-1",
            "--ca-file",
            ca,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("Logged in to {} as admin (session sess-1)\n", g.domain())
    );
    let reqs = g.requests();
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", "/api/v1/login")
    );
    assert_eq!(reqs[0].json(), json!({"authToken": "tok-1"}));
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(reqs[0].header("host"), Some(g.domain().as_str()));

    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("session.json")).unwrap()).unwrap();
    assert_eq!(saved["domain"], g.domain());
    assert_eq!(saved["accessToken"], "acc-1");
    assert_eq!(saved["caFile"], ca);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("session.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let r = postern(&home, None, &["whoami"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("User:    admin\nSession: sess-1\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("Domain:  {}", g.domain())),
        "{}",
        r.stdout
    );

    let r = postern(&home, Some(&g), &["logout"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let last = g.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/api/v1/logout")
    );
    assert_eq!(last.header("authorization"), Some("Bearer acc-1"));
    assert!(!home.join("session.json").exists());

    // A wrong token: the gateway's message, the hint, exit 1, nothing saved.
    let r = postern(
        &home,
        Some(&g),
        &[
            "login",
            "--domain",
            &g.domain(),
            "--auth-token",
            "bad",
            "--ca-file",
            ca,
        ],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error: invalid auth token"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("postern login --domain"), "{}", r.stderr);
    assert!(!home.join("session.json").exists());
}

#[test]
fn apply_sends_all_files_in_one_request() {
    let dir = temp_dir("apply");
    let g = FakeGateway::start(&dir, api);
    write_session(&dir, &g, "2099-01-01T00:00:00Z");
    let file = dir.join("svc.yaml");
    std::fs::write(&file, "kind: Service\nmetadata:\n  name: gemini\n").unwrap();

    let r = ctl(
        &dir,
        Some(&g),
        &["apply", file.to_str().unwrap(), "-", "--dry-run"],
        "kind: Group\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "Service/gemini created (dry run)\nGroup/dev unchanged (dry run)\n"
    );
    let reqs = g.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/v1/apply")
    );
    assert_eq!(req.header("authorization"), Some("Bearer acc-1"));
    assert_eq!(req.header("host"), Some(g.domain().as_str()));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.json(),
        json!({"files": [
            {"file": file.to_str().unwrap(), "content": "kind: Service\nmetadata:\n  name: gemini\n"},
            {"file": "<stdin>", "content": "kind: Group\n"}
        ], "dryRun": true})
    );

    let r = ctl(&dir, Some(&g), &["apply", file.to_str().unwrap()], "");
    assert_eq!(r.stdout, "Service/gemini created\nGroup/dev unchanged\n");
    assert_eq!(g.requests()[1].json()["dryRun"], false);
}

#[test]
fn apply_stops_at_the_first_error() {
    let dir = temp_dir("apply-error");
    let g = FakeGateway::start(&dir, |_| {
        (
            400,
            error_body(
                "bad.yaml:3: spec.config.upstrem: unknown field, did you mean `upstream`?",
                "invalid_resource",
            ),
        )
    });
    write_session(&dir, &g, "2099-01-01T00:00:00Z");
    let (a, b) = (dir.join("bad.yaml"), dir.join("good.yaml"));
    std::fs::write(&a, "kind: Service\n").unwrap();
    std::fs::write(&b, "kind: Group\n").unwrap();
    let r = ctl(
        &dir,
        Some(&g),
        &["apply", a.to_str().unwrap(), b.to_str().unwrap()],
        "",
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "error: bad.yaml:3: spec.config.upstrem: unknown field, did you mean `upstream`?\n"
    );
    assert_eq!(g.requests().len(), 1, "all files go in one request");

    // A missing file fails before anything is sent.
    let r = ctl(
        &dir,
        Some(&g),
        &["apply", b.to_str().unwrap(), "/nonexistent.yaml"],
        "",
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("/nonexistent.yaml"), "{}", r.stderr);
    assert_eq!(g.requests().len(), 1);
}

#[test]
fn get_table_yaml_json_and_not_found() {
    let dir = temp_dir("get");
    let g = FakeGateway::start(&dir, api);
    write_session(&dir, &g, "2099-01-01T00:00:00Z");

    let r = ctl(&dir, Some(&g), &["get", "svc"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "NAME     PUBLIC   MODE   UPSTREAM/CONFIGS     TLS\n\
         gemini   true     HTTP   https://up.example   -\n\
         claude   true     HTTP   https://up.example   -\n"
    );
    let r = ctl(
        &dir,
        Some(&g),
        &["get", "service", "gemini", "-o", "json"],
        "",
    );
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        service("gemini")
    );
    let r = ctl(&dir, Some(&g), &["get", "services", "-o", "json"], "");
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        json!([service("gemini"), service("claude")])
    );
    let r = ctl(&dir, Some(&g), &["get", "Services", "-o", "yaml"], "");
    let docs = postern_common::resources::parse_documents("out.yaml", &r.stdout).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].resource.name(), "claude");

    let paths: Vec<String> = g
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        [
            "GET /api/v1/services",
            "GET /api/v1/services/gemini",
            "GET /api/v1/services",
            "GET /api/v1/services"
        ]
    );

    let r = ctl(&dir, Some(&g), &["get", "services", "nope"], "");
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "error: Service \"nope\" not found\n");

    let r = ctl(&dir, Some(&g), &["get", "widgets"], "");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("unknown kind \"widgets\""),
        "{}",
        r.stderr
    );
}

#[test]
fn create_credential_json_secret_and_delete() {
    let dir = temp_dir("create");
    let g = FakeGateway::start(&dir, api);
    write_session(&dir, &g, "2099-01-01T00:00:00Z");

    let r = ctl(
        &dir,
        Some(&g),
        &[
            "create",
            "credential",
            "ci",
            "--user",
            "bot",
            "--type",
            "oauth2",
            "--ttl",
            "24h",
            "-o",
            "json",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "{\"clientId\":\"cid-1\",\"clientSecret\":\"csec-1\"}\n"
    );
    let req = g.requests().pop().unwrap();
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/v1/credentials")
    );
    assert_eq!(req.header("authorization"), Some("Bearer acc-1"));
    assert_eq!(
        req.json(),
        json!({"name": "ci", "user": "bot", "type": "oauth2", "ttlSeconds": 86400})
    );

    let r = ctl(
        &dir,
        Some(&g),
        &[
            "create",
            "credential",
            "ci",
            "--user",
            "bot",
            "--type",
            "oauth2",
        ],
        "",
    );
    assert!(r.stdout.contains("Client secret: csec-1"), "{}", r.stdout);
    assert!(r.stdout.contains("cannot be shown again"), "{}", r.stdout);
    assert_eq!(g.requests().pop().unwrap().json().get("ttlSeconds"), None);

    let r = ctl(
        &dir,
        Some(&g),
        &["create", "secret", "gemini-key", "--overwrite"],
        "s3cret\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Secret/gemini-key saved\n");
    let req = g.requests().pop().unwrap();
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/v1/secrets")
    );
    assert_eq!(
        req.json(),
        json!({"name": "gemini-key", "value": "s3cret", "overwrite": true})
    );

    let r = ctl(&dir, Some(&g), &["delete", "svc", "gemini"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Service/gemini deleted\n");
    let req = g.requests().pop().unwrap();
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("DELETE", "/api/v1/services/gemini")
    );
    assert_eq!(req.header("authorization"), Some("Bearer acc-1"));

    let sent = g.requests().len();
    let r = ctl(
        &dir,
        Some(&g),
        &[
            "create",
            "credential",
            "x",
            "--user",
            "u",
            "--type",
            "oauth2",
            "--ttl",
            "soon",
        ],
        "",
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("invalid duration \"soon\""),
        "{}",
        r.stderr
    );
    let r = ctl(&dir, Some(&g), &["create", "secret", "empty"], "\n");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    assert_eq!(g.requests().len(), sent, "invalid input is not sent");
}

#[test]
fn session_problems_say_to_log_in() {
    let dir = temp_dir("session");
    let g = FakeGateway::start(&dir, |_| (401, error_body("token revoked", "unauthorized")));

    let r = ctl(&dir, Some(&g), &["get", "services"], "");
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: not logged in"), "{}", r.stderr);
    assert!(r.stderr.contains("postern login"), "{}", r.stderr);

    write_session(&dir, &g, "2000-01-01T00:00:00Z");
    let r = ctl(&dir, Some(&g), &["get", "services"], "");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("expired"), "{}", r.stderr);
    assert!(r.stderr.contains("postern login"), "{}", r.stderr);
    assert!(g.requests().is_empty(), "an expired token is not sent");

    write_session(&dir, &g, "2099-01-01T00:00:00Z");
    let r = ctl(&dir, Some(&g), &["get", "services"], "");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!(
            "error: token revoked; run `postern login --domain {}` (add `--auth-token <token>` to log in with a token)\n",
            g.domain()
        )
    );
}

#[test]
fn tls_is_verified_and_connection_errors_are_explained() {
    let dir = temp_dir("tls");
    let g = FakeGateway::start(&dir, api);
    let home = dir.join("home");

    // Without --ca-file the test CA is not trusted: no request gets through.
    let r = postern(
        &home,
        Some(&g),
        &["login", "--domain", &g.domain(), "--auth-token", "tok-1"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
    assert!(r.stderr.contains("--ca-file"), "{}", r.stderr);
    assert!(g.requests().is_empty());

    // The certificate is for gw.postern.test, not another name.
    let other = format!("other.test:{}", g.addr.port());
    let r = postern(
        &home,
        Some(&g),
        &[
            "login",
            "--domain",
            &other,
            "--auth-token",
            "tok-1",
            "--ca-file",
            g.ca_file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(g.requests().is_empty());

    // Nothing listening: the address and what to check.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = run(
        env!("CARGO_BIN_EXE_postern"),
        &home,
        None,
        &[
            "login",
            "--domain",
            &format!("{HOST}:{}", closed.port()),
            "--auth-token",
            "t",
        ],
        "",
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("cannot reach the gateway"),
        "{}",
        r.stderr
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
    let out = cmd
        .args([
            "login",
            "--domain",
            &format!("{HOST}:{}", closed.port()),
            "--auth-token",
            "t",
        ])
        .env("POSTERN_HOME", &home)
        .env("POSTERN_GATEWAY_ADDRESS", closed.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&closed.to_string()), "{stderr}");
    assert!(stderr.contains("posternd is running"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = temp_dir("usage");
    assert_eq!(ctl(&dir, None, &["get"], "").code, 2);
    assert_eq!(
        ctl(
            &dir,
            None,
            &["create", "secret", "k", "--value", "a", "--file", "f"],
            ""
        )
        .code,
        2
    );
    assert_eq!(
        ctl(
            &dir,
            None,
            &["create", "credential", "c", "--user", "u", "--type", "ssh"],
            ""
        )
        .code,
        2
    );
    assert_eq!(postern(&dir, None, &["login"]).code, 2);
    let help = ctl(&dir, None, &["--help"], "");
    assert!(
        help.stdout.contains("POSTERN_GATEWAY_ADDRESS"),
        "{}",
        help.stdout
    );
}
