//! The OAuth2 token request: the form body and the Basic header, read before any
//! credential is checked.
//!
//! Properties: arbitrary headers and bodies are refused or yield one client, never both
//! methods at once (the agent's authorization code grant carries no client authentication
//! at all); any client id and secret sent by either method (each encoded as RFC 6749 says)
//! read back exactly.

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, HeaderMap, HeaderValue};
use postern_gateway::frontdoor::oauth2::{read_request, TokenRequest};

#[derive(Debug, Arbitrary)]
struct Input {
    content_type: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
    id: String,
    secret: String,
    extra: Vec<(String, String)>,
}

const FORM: &str = "application/x-www-form-urlencoded";

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

fn encode_component(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    // Arbitrary request: any outcome but a panic, and a client only from one method.
    let mut headers = HeaderMap::new();
    if let Some(v) = input
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = input
        .authorization
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    if read_request(&headers, &input.body).is_ok() {
        let posted = url::form_urlencoded::parse(&input.body)
            .any(|(k, _)| k == "client_id" || k == "client_secret");
        let basic = headers.contains_key(header::AUTHORIZATION);
        assert!(!(posted && basic), "both methods accepted");
    }

    // client_secret_post round trip, with unrelated parameters around it.
    let mut pairs: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    pairs.extend(
        input
            .extra
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "grant_type"
                        | "client_id"
                        | "client_secret"
                        | "code"
                        | "code_verifier"
                        | "redirect_uri"
                )
            })
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    pairs.push(("client_id", &input.id));
    pairs.push(("client_secret", &input.secret));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FORM));
    let client = Ok(TokenRequest::ClientCredentials {
        id: input.id.clone(),
        secret: input.secret.clone(),
    });
    assert_eq!(read_request(&headers, &form(&pairs)), client);

    // client_secret_basic round trip (RFC 6749 2.3.1: form-encoded, then Base64).
    let basic = STANDARD.encode(format!(
        "{}:{}",
        encode_component(&input.id),
        encode_component(&input.secret)
    ));
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {basic}")).expect("base64 is a valid header"),
    );
    let body = form(&[("grant_type", "client_credentials")]);
    assert_eq!(read_request(&headers, &body), client);
    // Both methods at once: refused.
    assert!(read_request(&headers, &form(&pairs)).is_err());
}
