//! `postern login` without an auth token, end to end against a fake gateway: the built
//! binary prints the sign-in address, the test plays the browser on the loopback redirect,
//! and the fake `/oauth2/token` checks the code exchange (PKCE verifier, redirect URI).

#[allow(dead_code)] // shared with cli.rs, which uses all of it
mod fake_gateway;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fake_gateway::{FakeGateway, Recorded};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "postern-browser-{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fake gateway's token endpoint: `code-1` is good, anything else is `invalid_grant`.
fn token_endpoint(r: &Recorded) -> (u16, Value) {
    let form: HashMap<String, String> = url::form_urlencoded::parse(r.body.as_bytes())
        .into_owned()
        .collect();
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/oauth2/token") if form.get("code").map(String::as_str) == Some("code-1") => (
            200,
            json!({"access_token": "acc-h", "token_type": "Bearer", "expires_in": 3600,
                   "session": "sess-h", "user": "ann"}),
        ),
        ("POST", "/oauth2/token") => (
            400,
            json!({"error": "invalid_grant", "error_description": "the code was already used"}),
        ),
        _ => (404, json!({"error": {"message": "no such route"}})),
    }
}

/// A running `postern login` and what it printed on stderr so far.
struct Login {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Login {
    fn start(home: &Path, g: &FakeGateway, browser_log: &Path, extra: &[&str]) -> Login {
        let script = home.parent().unwrap().join("browser.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$1\" >> '{}'\n", browser_log.display()),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let ca = g.ca_file.to_str().unwrap();
        let domain = g.domain();
        let mut args = vec!["login", "--domain", &domain, "--ca-file", ca];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(&args)
            .env("POSTERN_HOME", home)
            .env("POSTERN_GATEWAY_ADDRESS", g.addr.to_string())
            .env("BROWSER", &script)
            .env_remove("POSTERN_DOMAIN")
            .env_remove("POSTERN_AUTH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Login {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// The sign-in address, as printed.
    fn sign_in_url(&mut self) -> url::Url {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no sign-in address; stderr: {:?}", self.stderr));
            self.stderr.push(line.clone());
            if let Some(at) = line.find("https://") {
                return url::Url::parse(line[at..].trim()).unwrap();
            }
        }
    }

    /// Exit code, stdout and all of stderr.
    fn finish(mut self) -> (i32, String, String) {
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        (status.code().unwrap_or(-1), out, self.stderr.join("\n"))
    }
}

impl Drop for Login {
    /// A failed assertion must not leave `postern login` waiting for minutes.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn query(url: &url::Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// What a browser gets from `GET <redirect>?<query>` (or another path on its host).
fn browser_get(redirect: &str, path_and_query: &str) -> String {
    let u = url::Url::parse(redirect).unwrap();
    let addr = u.socket_addrs(|| None).unwrap()[0];
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\n\r\n",
        u.authority()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn callback(state: &str, rest: &str) -> String {
    let state: String = url::form_urlencoded::byte_serialize(state.as_bytes()).collect();
    format!("/callback?state={state}&{rest}")
}

#[test]
fn signing_in_saves_the_session_like_a_token_login() {
    let dir = temp_dir("ok");
    let home = dir.join("home");
    let browser_log = dir.join("browser.log");
    let g = FakeGateway::start(&dir, token_endpoint);
    let mut login = Login::start(
        &home,
        &g,
        &browser_log,
        &["--no-browser", "--idp", "corp-sso"],
    );
    let url = login.sign_in_url();
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some(fake_gateway::HOST));
    assert_eq!(url.port(), Some(g.addr.port()));
    assert_eq!(url.path(), "/login");
    let q = query(&url);
    let redirect = q["cli_redirect"].clone();
    let state = q["cli_state"].clone();
    assert!(
        redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/callback"),
        "{redirect}"
    );
    assert!(state.len() >= 43, "{state}");
    assert_eq!(q["cli_challenge"].len(), 43);
    assert_eq!(q["idp"], "corp-sso");

    // Strangers and side requests neither finish nor abort the login, and idle connections
    // (a browser's preconnects, a stalled stranger) do not hold up the others.
    let addr = url::Url::parse(&redirect)
        .unwrap()
        .socket_addrs(|| None)
        .unwrap()[0];
    let _idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(browser_get(&redirect, "/favicon.ico").starts_with("HTTP/1.1 404 "));
    let huge = format!("/callback?state=x&pad={}", "a".repeat(9000));
    assert!(browser_get(&redirect, &huge).starts_with("HTTP/1.1 431 "));
    let wrong = browser_get(&redirect, &callback("not-the-state", "code=code-1"));
    assert!(wrong.starts_with("HTTP/1.1 403 "), "{wrong}");
    assert!(wrong.contains("does not match"), "{wrong}");
    let missing = browser_get(&redirect, "/callback?code=code-1");
    assert!(missing.starts_with("HTTP/1.1 403 "), "{missing}");
    assert!(
        g.requests().is_empty(),
        "no exchange for a refused callback"
    );

    let page = browser_get(&redirect, &callback(&state, "code=code-1"));
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Signed in to"), "{page}");
    assert!(page.contains("close this tab"), "{page}");

    let (code, out, err) = login.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("Logged in to {} as ann (session sess-h)\n", g.domain())
    );
    assert!(err.contains("open this address in a browser"), "{err}");
    assert!(
        !browser_log.exists(),
        "--no-browser must not start a browser"
    );

    let reqs = g.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", "/oauth2/token")
    );
    let form: HashMap<String, String> = url::form_urlencoded::parse(reqs[0].body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "code-1");
    assert_eq!(form["client_id"], "postern-cli");
    assert_eq!(form["redirect_uri"], redirect);
    let verifier = &form["code_verifier"];
    assert!((43..=128).contains(&verifier.len()));
    assert_eq!(
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
        q["cli_challenge"],
        "the verifier must match the challenge sent in the sign-in URL"
    );

    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("session.json")).unwrap()).unwrap();
    assert_eq!(saved["domain"], g.domain());
    assert_eq!(saved["accessToken"], "acc-h");
    assert_eq!(saved["session"], "sess-h");
    assert_eq!(saved["user"], "ann");
    assert_eq!(saved["caFile"], g.ca_file.to_str().unwrap());
    let whoami = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("whoami")
        .env("POSTERN_HOME", &home)
        .output()
        .unwrap();
    assert!(whoami.status.success());
    assert!(String::from_utf8_lossy(&whoami.stdout).contains("User:    ann\nSession: sess-h\n"));
}

#[test]
fn the_browser_is_opened_with_the_sign_in_address() {
    let dir = temp_dir("open");
    let home = dir.join("home");
    let browser_log = dir.join("browser.log");
    let g = FakeGateway::start(&dir, token_endpoint);
    let mut login = Login::start(&home, &g, &browser_log, &[]);
    let printed = login.sign_in_url();
    let mut opened = String::new();
    for _ in 0..200 {
        opened = std::fs::read_to_string(&browser_log).unwrap_or_default();
        if !opened.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(opened.trim(), printed.as_str());
    let q = query(&printed);
    assert!(!q.contains_key("idp"));
    browser_get(
        &q["cli_redirect"],
        &callback(&q["cli_state"], "code=code-1"),
    );
    let (code, out, err) = login.finish();
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Logged in to"), "{out}");
}

#[test]
fn a_refusal_in_the_browser_is_reported_and_nothing_is_saved() {
    let dir = temp_dir("denied");
    let home = dir.join("home");
    let g = FakeGateway::start(&dir, token_endpoint);
    let mut login = Login::start(&home, &g, &dir.join("b.log"), &["--no-browser"]);
    let q = query(&login.sign_in_url());
    let page = browser_get(
        &q["cli_redirect"],
        &callback(
            &q["cli_state"],
            "error=access_denied&error_description=no+User+has+the+email+%3Cx%40y.z%3E%1B%5B2J%3B+ask+an+admin",
        ),
    );
    assert!(page.starts_with("HTTP/1.1 403 "), "{page}");
    assert!(
        page.contains("no User has the email &lt;x@y.z&gt;"),
        "{page}"
    );
    let (code, out, err) = login.finish();
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.contains(
            "error: the sign-in was refused: access_denied: no User has the email <x@y.z>\\u{1b}[2J; ask an admin"
        ),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "escape sequences must not reach the terminal"
    );
    assert!(err.contains("to try again"), "{err}");
    assert!(g.requests().is_empty());
    assert!(!home.join("session.json").exists());
}

#[test]
fn a_refused_code_is_reported_with_its_description() {
    let dir = temp_dir("grant");
    let home = dir.join("home");
    let g = FakeGateway::start(&dir, token_endpoint);
    let mut login = Login::start(&home, &g, &dir.join("b.log"), &["--no-browser"]);
    let q = query(&login.sign_in_url());
    let page = browser_get(&q["cli_redirect"], &callback(&q["cli_state"], "code=stale"));
    assert!(page.starts_with("HTTP/1.1 400 "), "{page}");
    assert!(page.contains("invalid_grant"), "{page}");
    let (code, _, err) = login.finish();
    assert_eq!(code, 1);
    assert!(
        err.contains("error: the gateway refused the sign-in code: invalid_grant: the code was already used; run `postern login --domain"),
        "{err}"
    );
    assert!(!home.join("session.json").exists());
}

#[test]
fn waiting_ends_after_the_timeout() {
    let dir = temp_dir("timeout");
    let home = dir.join("home");
    let g = FakeGateway::start(&dir, token_endpoint);
    let started = std::time::Instant::now();
    let mut login = Login::start(
        &home,
        &g,
        &dir.join("b.log"),
        &["--no-browser", "--timeout", "2s"],
    );
    let q = query(&login.sign_in_url());
    // An idle connection (a browser's preconnect) does not keep the login alive.
    let _idle = TcpStream::connect(
        url::Url::parse(&q["cli_redirect"])
            .unwrap()
            .socket_addrs(|| None)
            .unwrap()[0],
    )
    .unwrap();
    let (code, _, err) = login.finish();
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("error: no sign-in arrived within 2s"), "{err}");
    assert!(err.contains("--timeout"), "{err}");
    assert!(!home.join("session.json").exists());
}

#[test]
fn browser_flags_do_not_mix_with_a_token() {
    let dir = temp_dir("mix");
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "login",
            "--domain",
            "gw.example.com",
            "--auth-token",
            "t",
            "--no-browser",
        ])
        .env("POSTERN_HOME", dir.join("home"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-browser"), "{err}");
    assert!(err.contains("drop one or the other"), "{err}");
}
