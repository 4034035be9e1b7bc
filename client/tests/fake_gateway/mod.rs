//! A tiny HTTPS server standing in for posternd's control API: it records every request and
//! answers with whatever the test's handler returns. Its certificate is issued for
//! `gw.postern.test` by a throwaway CA, so clients must be given the CA file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The certificate's host name; it is not in DNS, so tests set POSTERN_GATEWAY_ADDRESS.
pub const HOST: &str = "gw.postern.test";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?}: {e}", self.body))
    }
}

type Handler = dyn Fn(&Recorded) -> (u16, serde_json::Value) + Send + Sync;

/// A running fake gateway.
pub struct FakeGateway {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeGateway {
    /// Starts the server; `dir` receives the CA certificate (`ca.pem`).
    pub fn start(
        dir: &Path,
        handler: impl Fn(&Recorded) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> FakeGateway {
        let (ca_pem, config) = tls_setup();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, handler, recorded) =
                    (config.clone(), handler.clone(), recorded.clone());
                std::thread::spawn(move || serve(stream, config, &*handler, &recorded));
            }
        });
        FakeGateway {
            addr,
            ca_file,
            requests,
        }
    }

    /// `gw.postern.test:<port>`, for `--domain`.
    pub fn domain(&self) -> String {
        format!("{HOST}:{}", self.addr.port())
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn tls_setup() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Postern test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    handler: &Handler,
    recorded: &Mutex<Vec<Recorded>>,
) {
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut line = String::new();
    // A failed handshake (an untrusting client) ends here.
    if tls.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        tls.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
    let mut body = vec![0; length];
    tls.read_exact(&mut body).unwrap();
    let request = Recorded {
        method,
        path,
        headers,
        body: String::from_utf8(body).unwrap(),
    };
    let (status, response) = handler(&request);
    recorded.lock().unwrap().push(request);
    let text = response.to_string();
    let mut stream = tls.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
    .unwrap();
    stream.flush().unwrap();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// The error body every failed API call carries.
pub fn error_body(message: &str, code: &str) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})
}
