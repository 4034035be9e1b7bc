//! A small OpenID provider on a loopback socket for the relying party's tests: it serves
//! discovery, a JWKS the test can rotate and a token endpoint answering with whatever ID
//! token the test signed, and it records what the gateway sent.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Signer;
use rand::RngCore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// An ES256 signing key with its key id.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    key: p256::ecdsa::SigningKey,
}

impl TestKey {
    pub fn generate(kid: &str) -> Self {
        loop {
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&secret) {
                return Self {
                    kid: kid.to_string(),
                    key,
                };
            }
        }
    }

    pub fn jwk(&self) -> Value {
        let point = self.key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&bytes[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&bytes[33..65]),
        })
    }

    /// A compact JWS of `claims` with the usual ES256 header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
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
    pub state: Arc<Mutex<IdpState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIdp {
    /// Starts the provider on 127.0.0.1 with one key, `k1`.
    pub async fn start() -> (Self, TestKey) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let issuer = format!("http://127.0.0.1:{}", addr.port());
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
                let (st, iss) = (st.clone(), iss.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (st, iss) = (st.clone(), iss.clone());
                        async move { Ok::<_, hyper::Error>(answer(req, &st, &iss).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (
            Self {
                issuer,
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
                "id_token_signing_alg_values_supported": ["ES256"],
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
