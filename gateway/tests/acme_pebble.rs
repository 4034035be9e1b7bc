//! The ACME client (`certs::acme::client`) against a real Pebble, Let's Encrypt's test CA:
//! an account made and found again from its stored credentials, orders by HTTP-01 and by
//! TLS-ALPN-01 (on a TLS listener using the front door's certificate resolver) whose chains
//! carry the ordered names, and a failed validation. The HTTP-01 listener here records the
//! tokens Pebble asks for, so the test can check every answer is withdrawn afterwards,
//! whether the order succeeded or failed. Skips, saying why, when Pebble is not installed
//! (CI installs Debian's `pebble`).

use postern_gateway::certs::acme::args::AcmeOptions;
use postern_gateway::certs::acme::challenge::ChallengeKind;
use postern_gateway::certs::acme::client::{AcmeClient, Installer, RetryAfter};
use postern_gateway::certs::{pem, Certificates, FileSources};
use std::net::{TcpListener as StdListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn find(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Pebble and its DNS (pebble-challtestsrv: every name is 127.0.0.1), killed on drop.
struct Pebble {
    children: Vec<Child>,
    dir: PathBuf,
    directory: String,
    ca_pem: Vec<u8>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, for Pebble's own HTTPS.
fn pebble_tls(dir: &Path) -> Vec<u8> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca.pem().into_bytes()
}

fn start_pebble(tag: &str, http_port: u16, tls_port: u16) -> Option<Pebble> {
    let (Some(pebble), Some(dns)) = (find("pebble"), find("pebble-challtestsrv")) else {
        eprintln!("skipping: Pebble is not installed; apt-get install pebble");
        return None;
    };
    let dir =
        std::env::temp_dir().join(format!("postern-acme-pebble-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_pem = pebble_tls(&dir);
    let (acme_port, mgmt_port, dns_port, dns_mgmt) =
        (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": dir.join("cert.pem"),
        "privateKey": dir.join("key.pem"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
    let mut p = Pebble {
        children: Vec::new(),
        directory: format!("https://127.0.0.1:{acme_port}/dir"),
        ca_pem,
        dir: dir.clone(),
    };
    p.children.push(
        Command::new(dns)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv"),
    );
    p.children.push(
        Command::new(pebble)
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", acme_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "Pebble did not listen within 20 s; its log:\n{}",
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(p)
}

/// An HTTP-01 responder that answers from `certs` (or, for `wrong_for`, a wrong value) and
/// records every token asked for.
async fn http01_responder(
    listener: tokio::net::TcpListener,
    certs: Arc<Certificates>,
    asked: Arc<Mutex<Vec<String>>>,
    wrong_for: Option<&'static str>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (certs, asked) = (certs.clone(), asked.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                let path = req.uri().path().to_string();
                let host = req.headers()[http::header::HOST]
                    .to_str()
                    .unwrap()
                    .to_string();
                let token = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .unwrap_or("")
                    .to_string();
                asked.lock().unwrap().push(token.clone());
                let body = match certs.http01(&token) {
                    Some(_) if wrong_for.is_some_and(|h| host.starts_with(h)) => "wrong".into(),
                    Some(ka) => ka,
                    None => String::new(),
                };
                async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(body)),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn options(p: &Pebble, challenge: ChallengeKind) -> AcmeOptions {
    AcmeOptions {
        directory: p.directory.clone(),
        contact: vec!["mailto:ops@example.com".into()],
        extra_ca_pem: Some(p.ca_pem.clone()),
        eab: None,
        challenge,
        dns: None,
    }
}

fn certs() -> Arc<Certificates> {
    Certificates::new("example.com".into(), FileSources::default(), None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_orders_reuse_the_account_and_withdraw_every_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = listener.local_addr().unwrap().port();
    let Some(pebble) = start_pebble("http01", http_port, free_port()) else {
        return;
    };
    let certs = certs();
    let asked = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(http01_responder(
        listener,
        certs.clone(),
        asked.clone(),
        Some("bad."),
    ));
    let opts = options(&pebble, ChallengeKind::Http01);
    let (client, creds) = AcmeClient::connect(&opts, None, RetryAfter::default())
        .await
        .unwrap();
    let creds = creds.expect("a new account's credentials, to store");
    let installer = Installer {
        certs: certs.clone(),
        dns: None,
    };
    let names = vec!["example.com".to_string(), "svc.example.com".to_string()];
    let issued = client
        .order(&names, ChallengeKind::Http01, &installer)
        .await
        .unwrap();
    let loaded = pem::load(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    let mut got = loaded.names.clone();
    got.sort();
    assert_eq!(got, names);
    assert!(loaded.not_after > loaded.not_before);
    let tokens: Vec<String> = asked.lock().unwrap().drain(..).collect();
    assert!(
        tokens.len() >= 2,
        "Pebble fetched each name's token: {tokens:?}"
    );
    for t in &tokens {
        assert_eq!(certs.http01(t), None, "token {t} withdrawn after success");
    }

    let (again, none) = AcmeClient::connect(&opts, Some(&creds), RetryAfter::default())
        .await
        .unwrap();
    assert!(none.is_none(), "the stored account is used, not a new one");
    let err = again
        .order(
            &["bad.example.com".to_string()],
            ChallengeKind::Http01,
            &installer,
        )
        .await
        .err()
        .expect("a wrong key authorization fails the order");
    let err = err.to_string();
    assert!(err.contains("bad.example.com"), "{err}");
    let tokens: Vec<String> = asked.lock().unwrap().drain(..).collect();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(certs.http01(t), None, "token {t} withdrawn after failure");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_is_answered_by_the_front_door_resolver() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_port = listener.local_addr().unwrap().port();
    let Some(pebble) = start_pebble("tlsalpn", free_port(), tls_port) else {
        return;
    };
    let certs = certs();
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    let opts = options(&pebble, ChallengeKind::TlsAlpn01);
    let (client, _) = AcmeClient::connect(&opts, None, RetryAfter::default())
        .await
        .unwrap();
    let installer = Installer {
        certs: certs.clone(),
        dns: None,
    };
    let issued = client
        .order(
            &["gemini.example.com".to_string()],
            ChallengeKind::TlsAlpn01,
            &installer,
        )
        .await
        .unwrap();
    let loaded = pem::load(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    assert_eq!(loaded.names, vec!["gemini.example.com".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_fails_with_the_reason() {
    let opts = AcmeOptions {
        directory: format!("https://127.0.0.1:{}/dir", free_port()),
        contact: Vec::new(),
        extra_ca_pem: None,
        eab: None,
        challenge: ChallengeKind::Http01,
        dns: None,
    };
    let err = AcmeClient::connect(&opts, None, RetryAfter::default())
        .await
        .err()
        .expect("nothing listens");
    assert!(err.to_string().contains("Connection refused"), "{err}");
}
