//! The relying party against a real provider on a loopback socket ([`super::test_idp`]):
//! discovery, the token request on the wire and every ID-token check.

use super::test_idp::{Canned, TestIdp, TestKey};
use super::*;
use serde_json::json;

const CLIENT_ID: &str = "postern";
const SECRET: &str = "s3cret-client-value";
const REDIRECT: &str = "https://example.test/callback";
const NONCE: &str = "nonce-of-this-sign-in";
const CODE: &str = "code-abc123";
const VERIFIER: &str = "verifier-0123456789-0123456789-0123456789-0123456789";

fn config(issuer: &str, secret: Option<&str>) -> OidcConfig {
    OidcConfig {
        issuer_url: issuer.to_string(),
        client_id: CLIENT_ID.to_string(),
        client_secret: secret.map(str::to_string),
        scopes: Vec::new(),
        extra_root_ca_pem: None,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims that pass every check.
fn good_claims(issuer: &str) -> Value {
    json!({
        "iss": issuer, "aud": CLIENT_ID, "sub": "user-1",
        "email": "ada@example.com", "email_verified": true,
        "groups": ["eng", "ops"], "nonce": NONCE, "at_hash": "abc", "c_hash": "def",
        "iat": now(), "exp": now() + 300,
    })
}

async fn setup() -> (TestIdp, TestKey, OidcClient) {
    let (idp, key) = TestIdp::start().await;
    let client = OidcClient::discover(config(&idp.issuer, Some(SECRET)))
        .await
        .expect("discovery");
    (idp, key, client)
}

async fn exchange(
    idp: &TestIdp,
    client: &OidcClient,
    id_token: String,
) -> Result<VerifiedIdentity, OidcError> {
    idp.state().id_token = Some(id_token);
    client.exchange(CODE, VERIFIER, REDIRECT, NONCE).await
}

fn assert_no_secret(e: &OidcError) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(SECRET), "secret in error: {shown}");
    assert!(!shown.contains(CODE), "code in error: {shown}");
}

/// Runs an exchange that must fail with an ID-token error and returns it.
async fn refused(idp: &TestIdp, client: &OidcClient, id_token: String) -> IdTokenError {
    let err = exchange(idp, client, id_token).await.unwrap_err();
    assert_no_secret(&err);
    match err {
        OidcError::IdToken(e) => e,
        other => panic!("expected an ID-token error, got {other}"),
    }
}

#[tokio::test]
async fn a_good_token_is_accepted_and_the_token_request_is_right() {
    let (idp, key, client) = setup().await;
    let verifier = new_pkce_verifier();
    let id = idp_exchange_with_verifier(
        &idp,
        &client,
        key.sign(&good_claims(&idp.issuer)),
        &verifier,
    )
    .await;
    assert_eq!(id.subject, "user-1");
    assert_eq!(id.email.as_deref(), Some("ada@example.com"));
    assert_eq!(id.email_verified, Some(true));
    assert_eq!(id.claims["groups"], json!(["eng", "ops"]));
    assert_eq!(id.claims["iss"], json!(idp.issuer));
    for flow_only in ["nonce", "at_hash", "c_hash"] {
        assert!(!id.claims.contains_key(flow_only), "{flow_only} kept");
    }

    let reqs = idp.state().token_requests.clone();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    let basic = STANDARD.encode(format!("{CLIENT_ID}:{SECRET}"));
    assert_eq!(
        r.authorization.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(r.form["grant_type"], "authorization_code");
    assert_eq!(r.form["code"], CODE);
    assert_eq!(r.form["code_verifier"], verifier);
    assert_eq!(r.form["redirect_uri"], REDIRECT);
    assert!(!r.form.contains_key("client_secret"));
}

use base64::engine::general_purpose::STANDARD;

async fn idp_exchange_with_verifier(
    idp: &TestIdp,
    client: &OidcClient,
    id_token: String,
    verifier: &str,
) -> VerifiedIdentity {
    idp.state().id_token = Some(id_token);
    client
        .exchange(CODE, verifier, REDIRECT, NONCE)
        .await
        .expect("accepted")
}

#[tokio::test]
async fn the_authorization_url_carries_pkce_state_nonce_and_scopes() {
    let (idp, _key, client) = setup().await;
    let verifier = new_pkce_verifier();
    let url =
        url::Url::parse(&client.authorization_url(REDIRECT, "st-1", "n-1", &verifier)).unwrap();
    assert_eq!(
        url.as_str().split('?').next().unwrap(),
        format!("{}/authorize", idp.issuer)
    );
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let challenge =
        URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], REDIRECT);
    assert_eq!(q["state"], "st-1");
    assert_eq!(q["nonce"], "n-1");
    assert_eq!(q["code_challenge"], challenge);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "openid email profile");
}

#[tokio::test]
async fn configured_scopes_keep_openid_first() {
    let (idp, _key) = TestIdp::start().await;
    let mut cfg = config(&idp.issuer, None);
    cfg.scopes = vec!["email".into(), "groups".into()];
    let client = OidcClient::discover(cfg).await.unwrap();
    let url = url::Url::parse(&client.authorization_url(REDIRECT, "s", "n", &new_pkce_verifier()))
        .unwrap();
    let scope = url
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .unwrap()
        .1
        .to_string();
    assert_eq!(scope, "openid email groups");
}

#[tokio::test]
async fn an_invalid_pkce_verifier_never_panics_and_fails_closed() {
    let (idp, key, client) = setup().await;
    let url = url::Url::parse(&client.authorization_url(REDIRECT, "s", "n", "short")).unwrap();
    let challenge = url
        .query_pairs()
        .find(|(k, _)| k == "code_challenge")
        .unwrap()
        .1
        .to_string();
    let of_short = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(b"short"));
    assert_ne!(challenge, of_short);
    idp.state().id_token = Some(key.sign(&good_claims(&idp.issuer)));
    let err = client
        .exchange(CODE, "short", REDIRECT, NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::BadPkceVerifier), "{err}");
    assert!(idp.state().token_requests.is_empty());
}

#[test]
fn random_values_are_long_and_distinct() {
    let v = new_pkce_verifier();
    assert_eq!(v.len(), 43);
    assert!(v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert_ne!(v, new_pkce_verifier());
    assert_eq!(random_state().len(), 43);
    assert_ne!(random_state(), random_state());
}

#[tokio::test]
async fn client_secret_post_when_basic_is_not_advertised() {
    let (idp, key) = TestIdp::start().await;
    idp.state().auth_methods = Some(vec!["client_secret_post"]);
    let client = OidcClient::discover(config(&idp.issuer, Some(SECRET)))
        .await
        .unwrap();
    exchange(&idp, &client, key.sign(&good_claims(&idp.issuer)))
        .await
        .unwrap();
    let r = idp.state().token_requests[0].clone();
    assert_eq!(r.authorization, None);
    assert_eq!(r.form["client_id"], CLIENT_ID);
    assert_eq!(r.form["client_secret"], SECRET);
}

#[tokio::test]
async fn a_public_client_sends_no_secret() {
    let (idp, key) = TestIdp::start().await;
    let client = OidcClient::discover(config(&idp.issuer, None))
        .await
        .unwrap();
    exchange(&idp, &client, key.sign(&good_claims(&idp.issuer)))
        .await
        .unwrap();
    let r = idp.state().token_requests[0].clone();
    assert_eq!(r.authorization, None);
    assert_eq!(r.form["client_id"], CLIENT_ID);
    assert!(!r.form.contains_key("client_secret"));
}

#[tokio::test]
async fn only_unsupported_client_auth_is_refused_at_discovery() {
    let (idp, _key) = TestIdp::start().await;
    idp.state().auth_methods = Some(vec!["private_key_jwt"]);
    let err = OidcClient::discover(config(&idp.issuer, Some(SECRET)))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::UnsupportedClientAuth(_)), "{err}");
    assert!(err.to_string().contains("private_key_jwt"), "{err}");
}

#[tokio::test]
async fn email_verified_is_none_when_absent() {
    let (idp, key, client) = setup().await;
    let mut c = good_claims(&idp.issuer);
    c.as_object_mut().unwrap().remove("email_verified");
    let id = exchange(&idp, &client, key.sign(&c)).await.unwrap();
    assert_eq!(id.email_verified, None);
    // Some IdPs (Amazon Cognito) send the boolean as a string.
    c["email_verified"] = json!("true");
    let id = exchange(&idp, &client, key.sign(&c)).await.unwrap();
    assert_eq!(id.email_verified, Some(true));
    c["email_verified"] = json!(false);
    let id = exchange(&idp, &client, key.sign(&c)).await.unwrap();
    assert_eq!(id.email_verified, Some(false));
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let (idp, key, client) = setup().await;
    let mut c = good_claims(&idp.issuer);
    // Exact match: not even a trailing slash more.
    for iss in [
        "https://evil.example.com".to_string(),
        format!("{}/", idp.issuer),
    ] {
        c["iss"] = json!(iss);
        assert!(matches!(
            refused(&idp, &client, key.sign(&c)).await,
            IdTokenError::Issuer(_)
        ));
    }
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let (idp, key, client) = setup().await;
    let mut c = good_claims(&idp.issuer);
    c["aud"] = json!("someone-else");
    assert!(matches!(
        refused(&idp, &client, key.sign(&c)).await,
        IdTokenError::Audience(_)
    ));
}

#[tokio::test]
async fn several_audiences_need_azp_naming_this_client() {
    let (idp, key, client) = setup().await;
    let mut c = good_claims(&idp.issuer);
    c["aud"] = json!([CLIENT_ID, "other-api"]);
    let e = refused(&idp, &client, key.sign(&c)).await;
    assert!(matches!(e, IdTokenError::AuthorizedParty(_)), "{e}");
    c["azp"] = json!("other-api");
    let e = refused(&idp, &client, key.sign(&c)).await;
    assert!(matches!(e, IdTokenError::AuthorizedParty(_)), "{e}");
    c["azp"] = json!(CLIENT_ID);
    exchange(&idp, &client, key.sign(&c))
        .await
        .expect("azp names this client");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let (idp, key, client) = setup().await;
    let mut c = good_claims(&idp.issuer);
    c["iat"] = json!(now() - 600);
    c["exp"] = json!(now() - 1);
    assert!(matches!(
        refused(&idp, &client, key.sign(&c)).await,
        IdTokenError::Expired(_)
    ));
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let (idp, key, client) = setup().await;
    let mut c = good_claims(&idp.issuer);
    c["iat"] = json!(now() + 3600);
    c["exp"] = json!(now() + 7200);
    assert!(matches!(
        refused(&idp, &client, key.sign(&c)).await,
        IdTokenError::IssueTime(_)
    ));
}

#[tokio::test]
async fn a_wrong_or_missing_nonce_is_refused() {
    let (idp, key, client) = setup().await;
    let mut c = good_claims(&idp.issuer);
    c["nonce"] = json!("another-sign-in");
    assert!(matches!(
        refused(&idp, &client, key.sign(&c)).await,
        IdTokenError::Nonce(_)
    ));
    c.as_object_mut().unwrap().remove("nonce");
    assert!(matches!(
        refused(&idp, &client, key.sign(&c)).await,
        IdTokenError::Nonce(_)
    ));
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let (idp, key, client) = setup().await;
    // Another key claiming the published key's id.
    let forger = TestKey::generate(&key.kid);
    let e = refused(&idp, &client, forger.sign(&good_claims(&idp.issuer))).await;
    assert!(matches!(e, IdTokenError::Signature(_)), "{e}");
    // A real signature over other claims.
    let good = key.sign(&good_claims(&idp.issuer));
    let mut c = good_claims(&idp.issuer);
    c["sub"] = json!("admin");
    let forged_payload = URL_SAFE_NO_PAD.encode(c.to_string());
    let parts: Vec<&str> = good.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let e = refused(&idp, &client, spliced).await;
    assert!(matches!(e, IdTokenError::Signature(_)), "{e}");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (idp, key, client) = setup().await;
    let c = good_claims(&idp.issuer);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": key.kid}).to_string()),
        URL_SAFE_NO_PAD.encode(c.to_string())
    );
    let e = refused(&idp, &client, unsigned).await;
    assert!(matches!(e, IdTokenError::Unsigned), "{e}");
}

#[tokio::test]
async fn hs256_with_the_client_secret_is_refused_when_not_advertised() {
    let (idp, key, client) = setup().await;
    let c = good_claims(&idp.issuer);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": key.kid}).to_string()),
        URL_SAFE_NO_PAD.encode(c.to_string())
    );
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
    let e = refused(&idp, &client, token).await;
    assert!(matches!(e, IdTokenError::Algorithm(_)), "{e}");
}

#[tokio::test]
async fn a_rotated_key_works_after_one_refetch() {
    let (idp, _old, client) = setup().await;
    assert_eq!(idp.state().jwks_fetches, 1);
    let new = TestKey::generate("k2");
    idp.state().keys = vec![new.clone()];
    let id = exchange(&idp, &client, new.sign(&good_claims(&idp.issuer)))
        .await
        .unwrap();
    assert_eq!(id.subject, "user-1");
    assert_eq!(idp.state().jwks_fetches, 2);
    // The refreshed keys are cached: no fetch for the next token.
    exchange(&idp, &client, new.sign(&good_claims(&idp.issuer)))
        .await
        .unwrap();
    assert_eq!(idp.state().jwks_fetches, 2);
}

#[tokio::test]
async fn the_refetch_rate_limit_holds() {
    let (idp, _old, client) = setup().await;
    let k2 = TestKey::generate("k2");
    idp.state().keys = vec![k2.clone()];
    exchange(&idp, &client, k2.sign(&good_claims(&idp.issuer)))
        .await
        .unwrap();
    assert_eq!(idp.state().jwks_fetches, 2);
    // A second rotation within 10 s: refused without fetching.
    let k3 = TestKey::generate("k3");
    idp.state().keys = vec![k3.clone()];
    let e = refused(&idp, &client, k3.sign(&good_claims(&idp.issuer))).await;
    assert_eq!(e, IdTokenError::UnknownKey);
    assert!(e.to_string().contains("10 seconds"), "{e}");
    assert_eq!(idp.state().jwks_fetches, 2);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_refetch() {
    let (idp, _old, client) = setup().await;
    let k2 = TestKey::generate("k2");
    idp.state().keys = vec![k2.clone()];
    idp.state().id_token = Some(k2.sign(&good_claims(&idp.issuer)));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.exchange(CODE, VERIFIER, REDIRECT, NONCE).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("accepted with the refetched key");
    }
    assert_eq!(idp.state().jwks_fetches, 2);
}

#[tokio::test]
async fn an_http_issuer_on_a_remote_host_is_refused() {
    let err = OidcClient::discover(config("http://idp.example.com", None))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::InsecureIssuer { .. }), "{err}");
    assert!(err.to_string().contains("use https://"), "{err}");
    let err = OidcClient::discover(config("http://10.1.2.3:8080/realms/x", None))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::InsecureIssuer { .. }), "{err}");
}

#[tokio::test]
async fn a_localhost_issuer_is_accepted() {
    let (idp, _key) = TestIdp::start().await;
    let issuer = idp.issuer.replace("127.0.0.1", "localhost");
    idp.state().advertised_issuer = Some(issuer.clone());
    let client = OidcClient::discover(config(&issuer, None)).await.unwrap();
    assert_eq!(client.issuer(), issuer);
}

#[tokio::test]
async fn a_discovery_issuer_mismatch_is_refused() {
    let (idp, _key) = TestIdp::start().await;
    let advertised = format!("{}/", idp.issuer);
    idp.state().advertised_issuer = Some(advertised.clone());
    let err = OidcClient::discover(config(&idp.issuer, None))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::IssuerMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "set spec.oidc.issuerURL to exactly `{advertised}`"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_cleartext_remote_jwks_uri_is_refused() {
    let (idp, _key) = TestIdp::start().await;
    idp.state().jwks_uri = Some("http://keys.example.com/jwks".into());
    let err = OidcClient::discover(config(&idp.issuer, None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OidcError::InsecureEndpoint {
                field: "jwks_uri",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_discovery_answer_is_refused() {
    let (idp, _key) = TestIdp::start().await;
    idp.state().discovery_answer = Some(Canned {
        status: 200,
        header: None,
        body: vec![b' '; (1 << 20) + 1],
    });
    let err = OidcClient::discover(config(&idp.issuer, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OidcError::Http(http::HttpError::TooLarge { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_discovery_redirect_is_not_followed() {
    let (idp, _key) = TestIdp::start().await;
    let target = format!("{}/elsewhere", idp.issuer);
    idp.state().discovery_answer = Some(Canned {
        status: 302,
        header: Some(("location", target)),
        body: Vec::new(),
    });
    let err = OidcClient::discover(config(&idp.issuer, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OidcError::DiscoveryStatus { status: 302, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_refused_code_names_the_error_but_not_the_code_or_secret() {
    let (idp, _key, client) = setup().await;
    idp.state().token_answer = Some((
        400,
        json!({"error": "invalid_grant", "error_description": format!("code {CODE} already used by {SECRET}")}),
    ));
    let err = client
        .exchange(CODE, VERIFIER, REDIRECT, NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::TokenRefused { .. }), "{err}");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    assert_no_secret(&err);
}

#[tokio::test]
async fn a_token_response_without_id_token_is_refused() {
    let (_idp, _key, client) = setup().await;
    let err = client
        .exchange(CODE, VERIFIER, REDIRECT, NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::NoIdToken), "{err}");
}

#[tokio::test]
async fn an_https_idp_with_a_private_ca_works_only_with_that_ca() {
    let (idp, key) = TestIdp::start_tls().await;
    let err = OidcClient::discover(config(&idp.issuer, Some(SECRET)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OidcError::Http(http::HttpError::Transport { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("trusts its certificate"), "{err}");

    let mut cfg = config(&idp.issuer, Some(SECRET));
    cfg.extra_root_ca_pem = idp.ca_pem.clone().map(String::into_bytes);
    let client = OidcClient::discover(cfg)
        .await
        .expect("trusted with the CA");
    let id = exchange(&idp, &client, key.sign(&good_claims(&idp.issuer)))
        .await
        .unwrap();
    assert_eq!(id.subject, "user-1");
}

#[tokio::test]
async fn rs256_tokens_verify_and_rsa_keys_rotate_in() {
    let (idp, _es, client) = setup().await;
    let rsa = TestKey::rsa("rsa-1");
    idp.state().keys.push(rsa.clone());
    let id = exchange(&idp, &client, rsa.sign(&good_claims(&idp.issuer)))
        .await
        .unwrap();
    assert_eq!(id.subject, "user-1");
    assert_eq!(idp.state().jwks_fetches, 2);
    let mut c = good_claims(&idp.issuer);
    c["aud"] = json!("someone-else");
    let e = refused(&idp, &client, rsa.sign(&c)).await;
    assert!(matches!(e, IdTokenError::Audience(_)), "{e}");
}
