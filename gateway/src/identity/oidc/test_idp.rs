//! A small OpenID provider on a loopback socket for the relying party's tests: it serves
//! discovery, a JWKS the test can rotate and a token endpoint answering with whatever ID
//! token the test signed, and it records what the gateway sent.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::RngCore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// A signing key with its key id: ES256 (fast to make) or RS256 (what most IdPs use).
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    key: KeyKind,
}

#[derive(Clone)]
enum KeyKind {
    Es256(p256::ecdsa::SigningKey),
    Rs256(Box<rsa::RsaPrivateKey>),
}

/// One RSA key per test binary, 1024 bits: the checks do not depend on the size, and a
/// 2048-bit key takes about 30 s to make in a debug build.
fn shared_rsa_key() -> rsa::RsaPrivateKey {
    static KEY: std::sync::OnceLock<rsa::RsaPrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap())
        .clone()
}

impl TestKey {
    /// A fresh ES256 key.
    pub fn generate(kid: &str) -> Self {
        loop {
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&secret) {
                return Self {
                    kid: kid.to_string(),
                    key: KeyKind::Es256(key),
                };
            }
        }
    }

    /// An RS256 key (the same one for every call in a test run).
    pub fn rsa(kid: &str) -> Self {
        Self {
            kid: kid.to_string(),
            key: KeyKind::Rs256(Box::new(shared_rsa_key())),
        }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            KeyKind::Es256(_) => "ES256",
            KeyKind::Rs256(_) => "RS256",
        }
    }

    pub fn jwk(&self) -> Value {
        match &self.key {
            KeyKind::Es256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                let bytes = point.as_bytes();
                json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(&bytes[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&bytes[33..65]),
                })
            }
            KeyKind::Rs256(k) => {
                use rsa::traits::PublicKeyParts;
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": URL_SAFE_NO_PAD.encode(k.n().to_bytes_be()),
                    "e": URL_SAFE_NO_PAD.encode(k.e().to_bytes_be()),
                })
            }
        }
    }

    /// A compact JWS of `claims` with the usual header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match &self.key {
            KeyKind::Es256(k) => {
                let sig: p256::ecdsa::Signature =
                    p256::ecdsa::signature::Signer::sign(k, input.as_bytes());
                sig.to_bytes().to_vec()
            }
            KeyKind::Rs256(k) => {
                use rsa::signature::{SignatureEncoding, Signer};
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone());
                signer.sign(input.as_bytes()).to_vec()
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// One request the token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub authorization: Option<String>,
    pub form: HashMap<String, String>,
}

/// What the provider answers; tests change it between calls.
pub struct IdpState {
    /// Overrides the `issuer` in discovery (the mismatch test).
    pub advertised_issuer: Option<String>,
    /// Overrides `jwks_uri` in discovery.
    pub jwks_uri: Option<String>,
    pub auth_methods: Option<Vec<&'static str>>,
    /// Keys published in the JWKS.
    pub keys: Vec<TestKey>,
    pub jwks_fetches: usize,
    /// The ID token the next token response carries.
    pub id_token: Option<String>,
    /// Replaces the token response: status and JSON body.
    pub token_answer: Option<(u16, Value)>,
    pub token_requests: Vec<TokenRequest>,
    /// Replaces the discovery answer.
    pub discovery_answer: Option<Canned>,
}

/// A fixed answer: status, one optional header and a body.
#[derive(Clone)]
pub struct Canned {
    pub status: u16,
    pub header: Option<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub struct TestIdp {
    pub issuer: String,
    /// The CA that signed the TLS certificate, for [`TestIdp::start_tls`].
    pub ca_pem: Option<String>,
    pub state: Arc<Mutex<IdpState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIdp {
    /// Starts the provider on http://127.0.0.1 with one key, `k1`.
    pub async fn start() -> (Self, TestKey) {
        Self::start_on(None).await
    }

    /// Starts the provider on https://localhost with a certificate from a fresh private CA,
    /// whose PEM is in `ca_pem`.
    pub async fn start_tls() -> (Self, TestKey) {
        Self::start_on(Some(private_ca_tls())).await
    }

    async fn start_on(tls: Option<(tokio_rustls::TlsAcceptor, String)>) -> (Self, TestKey) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let issuer = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://127.0.0.1:{}", addr.port()),
        };
        let (acceptor, ca_pem) = tls.unzip();
        let key = TestKey::generate("k1");
        let state = Arc::new(Mutex::new(IdpState {
            advertised_issuer: None,
            jwks_uri: None,
            auth_methods: Some(vec!["client_secret_basic", "client_secret_post"]),
            keys: vec![key.clone()],
            jwks_fetches: 0,
            id_token: None,
            token_answer: None,
            token_requests: Vec::new(),
            discovery_answer: None,
        }));
        let (st, iss) = (state.clone(), issuer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, iss, acceptor) = (st.clone(), iss.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (st, iss) = (st.clone(), iss.clone());
                        async move { Ok::<_, hyper::Error>(answer(req, &st, &iss).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        Some(a) => match a.accept(stream).await {
                            Ok(tls) => conn.serve_connection(TokioIo::new(tls), svc).await,
                            Err(_) => return,
                        },
                        None => conn.serve_connection(TokioIo::new(stream), svc).await,
                    };
                });
            }
        });
        (
            Self {
                issuer,
                ca_pem,
                state,
                task,
            },
            key,
        )
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, IdpState> {
        self.state.lock().unwrap()
    }
}

/// A TLS acceptor for `localhost` with a certificate from a fresh private CA, and that CA's PEM.
fn private_ca_tls() -> (tokio_rustls::TlsAcceptor, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), ca.pem())
}

fn json_response(status: u16, body: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    state: &Mutex<IdpState>,
    issuer: &str,
) -> http::Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut st = state.lock().unwrap();
    match path.as_str() {
        "/.well-known/openid-configuration" => {
            if let Some(c) = st.discovery_answer.clone() {
                let mut b = http::Response::builder().status(c.status);
                if let Some((name, value)) = c.header {
                    b = b.header(name, value);
                }
                return b.body(Full::new(Bytes::from(c.body))).unwrap();
            }
            let mut doc = json!({
                "issuer": st.advertised_issuer.clone().unwrap_or_else(|| issuer.to_string()),
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": st.jwks_uri.clone().unwrap_or_else(|| format!("{issuer}/jwks")),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            if let Some(m) = &st.auth_methods {
                doc["token_endpoint_auth_methods_supported"] = json!(m);
            }
            json_response(200, &doc)
        }
        "/jwks" => {
            st.jwks_fetches += 1;
            let keys: Vec<Value> = st.keys.iter().map(TestKey::jwk).collect();
            json_response(200, &json!({ "keys": keys }))
        }
        "/token" => {
            let form = url::form_urlencoded::parse(&body).into_owned().collect();
            st.token_requests.push(TokenRequest {
                authorization,
                form,
            });
            if let Some((status, body)) = &st.token_answer {
                return json_response(*status, body);
            }
            let mut resp =
                json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 300});
            if let Some(t) = &st.id_token {
                resp["id_token"] = json!(t);
            }
            json_response(200, &resp)
        }
        _ => json_response(404, &json!({"error": "not_found"})),
    }
}
