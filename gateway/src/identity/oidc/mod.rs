//! The OpenID Connect relying party: one [`OidcClient`] per IdentityProvider signs people in
//! with the authorization code flow (PKCE S256, state, nonce) and verifies their ID tokens.
//!
//! The protocol itself (metadata, token request, JWS and claim checks) is the `openidconnect`
//! crate's; this module supplies its HTTP client (the gateway's hyper + rustls stack, bounded
//! in size and time), the key cache with rate-limited refetch on an unknown `kid`, and the
//! rules the crate leaves to its user (`azp`, `iat`, which URLs may be plain http).

mod checks;
mod error;
mod http;
mod jwks;

pub use error::{IdTokenError, OidcError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use checks::{ClientAuth, UrlProblem};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, TokenResponse, TokenUrl,
};
use rand::RngCore;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// What the gateway needs to know about one IdentityProvider (from its `spec.oidc`).
#[derive(Clone)]
pub struct OidcConfig {
    /// `spec.oidc.issuerURL`; must equal the discovery document's `issuer` exactly.
    pub issuer_url: String,
    /// `spec.oidc.clientID`.
    pub client_id: String,
    /// The secret `spec.oidc.clientSecret.fromSecret` names; `None` for a public client.
    pub client_secret: Option<String>,
    /// `spec.oidc.scopes`; empty means `openid email profile`; `openid` is always added.
    pub scopes: Vec<String>,
    /// A PEM CA bundle trusted for the IdP besides the Mozilla roots (a private IdP).
    pub extra_root_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Who the IdP says signed in, after every check passed.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedIdentity {
    /// `sub`: the IdP's stable id for the person.
    pub subject: String,
    /// `email`, if the IdP sent one.
    pub email: Option<String>,
    /// `email_verified`; `None` when the claim is absent (Entra ID never sends it).
    pub email_verified: Option<bool>,
    /// Every ID-token claim except `nonce`, `at_hash` and `c_hash`: what policies see.
    pub claims: Map<String, Value>,
}

type Client = CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The relying party for one IdentityProvider. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct OidcClient {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: IssuerUrl,
    client_id: String,
    client_secret: Option<String>,
    scopes: Vec<String>,
    client: Client,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    jwks_url: String,
    jwks: jwks::JwksCache,
    http: http::IdpHttp,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.inner.issuer.as_str())
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

impl OidcClient {
    /// Discovery + JWKS fetch. Refuses http:// unless the host is loopback.
    pub async fn discover(cfg: OidcConfig) -> Result<OidcClient, OidcError> {
        let issuer = cfg.issuer_url.clone();
        checks::check_issuer_url(&issuer).map_err(|p| match p {
            UrlProblem::Cleartext => OidcError::InsecureIssuer {
                issuer: issuer.clone(),
            },
            UrlProblem::Scheme(s) => OidcError::BadIssuerUrl {
                issuer: issuer.clone(),
                reason: format!("scheme `{s}`; it must be https://"),
            },
            UrlProblem::Unparseable(e) => OidcError::BadIssuerUrl {
                issuer: issuer.clone(),
                reason: e,
            },
            UrlProblem::Extra(what) => OidcError::BadIssuerUrl {
                issuer: issuer.clone(),
                reason: format!("an issuer has no {}", what.trim_start_matches("a ")),
            },
        })?;
        let http =
            http::IdpHttp::new(cfg.extra_root_ca_pem.as_deref()).map_err(OidcError::RootCa)?;

        let url = checks::discovery_url(&issuer);
        let resp = http.get(&url).await?;
        if resp.status() != ::http::StatusCode::OK {
            return Err(OidcError::DiscoveryStatus {
                url,
                status: resp.status().as_u16(),
            });
        }
        let metadata: CoreProviderMetadata = serde_path_to_error::deserialize(
            &mut serde_json::Deserializer::from_slice(resp.body()),
        )
        .map_err(|e| OidcError::DiscoveryDocument {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if metadata.issuer().as_str() != issuer {
            return Err(OidcError::IssuerMismatch {
                url,
                advertised: metadata.issuer().as_str().to_string(),
            });
        }

        let endpoint = |field: &'static str, u: &str| {
            checks::check_idp_url(u)
                .map(|_| ())
                .map_err(|p| OidcError::InsecureEndpoint {
                    field,
                    url: u.split('?').next().unwrap_or_default().to_string(),
                    reason: match p {
                        UrlProblem::Cleartext => "http:// on a host that is not loopback".into(),
                        UrlProblem::Scheme(s) => format!("scheme `{s}`"),
                        UrlProblem::Unparseable(e) => e,
                        UrlProblem::Extra(w) => w.into(),
                    },
                })
        };
        let auth_url = metadata.authorization_endpoint().clone();
        endpoint("authorization_endpoint", auth_url.as_str())?;
        let token_url = metadata
            .token_endpoint()
            .cloned()
            .ok_or(OidcError::NoTokenEndpoint)?;
        endpoint("token_endpoint", token_url.as_str())?;
        let jwks_url = metadata.jwks_uri().as_str().to_string();
        endpoint("jwks_uri", &jwks_url)?;

        let algorithms: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| **a != CoreJwsSigningAlgorithm::None)
            .cloned()
            .collect();
        if algorithms.is_empty() {
            return Err(OidcError::NoUsableAlgorithm(
                "none (alg none or no algorithm at all)".into(),
            ));
        }
        let advertised_auth: Option<Vec<String>> =
            metadata.token_endpoint_auth_methods_supported().map(|m| {
                m.iter()
                    .filter_map(|m| serde_json::to_value(m).ok()?.as_str().map(String::from))
                    .collect()
            });
        let auth =
            checks::choose_client_auth(cfg.client_secret.is_some(), advertised_auth.as_deref())
                .map_err(|m| OidcError::UnsupportedClientAuth(m.join(", ")))?;

        let keys = fetch_jwks(&http, &jwks_url).await?;
        let mut client = CoreClient::new(
            ClientId::new(cfg.client_id.clone()),
            metadata.issuer().clone(),
            CoreJsonWebKeySet::new(Vec::new()),
        )
        .set_auth_uri(AuthUrl::from_url(auth_url.url().clone()))
        .set_token_uri(TokenUrl::from_url(token_url.url().clone()));
        if let Some(secret) = &cfg.client_secret {
            client = client
                .set_client_secret(ClientSecret::new(secret.clone()))
                .set_auth_type(match auth {
                    ClientAuth::Post => AuthType::RequestBody,
                    ClientAuth::Basic | ClientAuth::None => AuthType::BasicAuth,
                });
        }
        tracing::info!(
            issuer = %issuer,
            keys = keys.keys().len(),
            "OpenID Connect provider discovered"
        );
        Ok(OidcClient {
            inner: Arc::new(Inner {
                issuer: metadata.issuer().clone(),
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                scopes: checks::effective_scopes(&cfg.scopes),
                client,
                algorithms,
                jwks_url,
                jwks: jwks::JwksCache::new(keys, jwks::REFETCH_INTERVAL),
                http,
            }),
        })
    }

    /// The issuer exactly as discovery confirmed it.
    pub fn issuer(&self) -> &str {
        self.inner.issuer.as_str()
    }

    /// The authorization URL (code flow, PKCE S256, state, nonce, scopes).
    ///
    /// A `redirect_uri` that is not a URL is left out, so the IdP refuses the request rather
    /// than the gateway failing here; build it as `https://<domain>[:port]/callback`.
    pub fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> String {
        let (state, nonce) = (state.to_string(), nonce.to_string());
        let challenge = if checks::is_valid_pkce_verifier(pkce_verifier) {
            PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
                pkce_verifier.to_string(),
            ))
        } else {
            // Fail closed without panicking: a challenge nobody holds the verifier of, so the
            // code exchange fails (and `exchange` refuses this verifier anyway).
            tracing::warn!(
                issuer = %self.issuer(),
                "the PKCE verifier is not 43-128 unreserved characters; use new_pkce_verifier()"
            );
            PkceCodeChallenge::new_random_sha256().0
        };
        let mut req = self
            .inner
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scopes(
                self.inner
                    .scopes
                    .iter()
                    .filter(|s| *s != "openid")
                    .map(|s| openidconnect::Scope::new(s.clone())),
            )
            .set_pkce_challenge(challenge);
        match RedirectUrl::new(redirect_uri.to_string()) {
            Ok(r) => req = req.set_redirect_uri(Cow::Owned(r)),
            Err(_) => tracing::warn!(
                issuer = %self.issuer(),
                "the sign-in redirect URI is not a URL; the IdP will refuse the request"
            ),
        }
        req.url().0.to_string()
    }

    /// Code exchange (with the verifier) and ID-token verification: signature (JWKS; an
    /// unknown kid refetches the JWKS, at most once per 10 s), iss, aud, azp, exp, nonce.
    pub async fn exchange(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        if !checks::is_valid_pkce_verifier(pkce_verifier) {
            return Err(OidcError::BadPkceVerifier);
        }
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|_| OidcError::BadRedirectUri(redirect_uri.to_string()))?;
        // Owned futures keep `exchange` Send (a borrowing closure is not, for every lifetime).
        let http = self.inner.http.clone();
        let http_client = move |req| {
            let http = http.clone();
            async move { http.send(req).await }
        };
        let response = self
            .inner
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&http_client)
            .await
            .map_err(|e| self.token_error(e, code))?;
        let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
        self.verify_id_token(id_token, nonce).await
    }

    fn token_error(
        &self,
        e: RequestTokenError<
            http::HttpError,
            openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
        >,
        code: &str,
    ) -> OidcError {
        let secrets = [
            code,
            self.inner.client_secret.as_deref().unwrap_or_default(),
        ];
        match e {
            RequestTokenError::ServerResponse(r) => OidcError::TokenRefused {
                error: error::scrub(r.error().as_ref(), &secrets),
                description: r
                    .error_description()
                    .map(|d| format!(": {}", error::scrub(d, &secrets)))
                    .unwrap_or_default(),
            },
            RequestTokenError::Request(h) => OidcError::Http(h),
            // Only the path: serde's message may quote a token.
            RequestTokenError::Parse(p, _) if p.path().to_string() == "id_token" => {
                OidcError::IdToken(IdTokenError::Malformed(
                    "the id_token field is not a signed JWT the gateway can read".into(),
                ))
            }
            RequestTokenError::Parse(p, _) => {
                OidcError::TokenResponse(format!("its JSON could not be read at `{}`", p.path()))
            }
            RequestTokenError::Other(m) => OidcError::TokenResponse(error::scrub(&m, &secrets)),
        }
    }

    /// The ID-token checks: the crate's (signature, iss, aud, exp, iat through our rule,
    /// nonce), with one JWKS refetch when the key is unknown, then `azp`.
    async fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        nonce: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        if id_token.signing_alg() == Ok(&CoreJwsSigningAlgorithm::None) {
            return Err(IdTokenError::Unsigned.into());
        }
        let (generation, keys) = self.inner.jwks.current();
        let identity = match self.verify_with(&keys, id_token, nonce) {
            Err(IdTokenError::UnknownKey) => {
                let fresh = self
                    .inner
                    .jwks
                    .refresh_after_miss(generation, || async {
                        tracing::info!(
                            issuer = %self.issuer(),
                            "an ID token names a key not in the cached JWKS; fetching the JWKS again"
                        );
                        fetch_jwks(&self.inner.http, &self.inner.jwks_url).await
                    })
                    .await?;
                match fresh {
                    Some(keys) => self.verify_with(&keys, id_token, nonce)?,
                    None => return Err(IdTokenError::UnknownKey.into()),
                }
            }
            other => other?,
        };
        Ok(identity)
    }

    fn verify_with(
        &self,
        keys: &CoreJsonWebKeySet,
        id_token: &CoreIdToken,
        nonce: &str,
    ) -> Result<VerifiedIdentity, IdTokenError> {
        let inner = &self.inner;
        let client_id = ClientId::new(inner.client_id.clone());
        let verifier = match &inner.client_secret {
            Some(s) => openidconnect::core::CoreIdTokenVerifier::new_confidential_client(
                client_id,
                ClientSecret::new(s.clone()),
                inner.issuer.clone(),
                keys.clone(),
            ),
            None => openidconnect::core::CoreIdTokenVerifier::new_public_client(
                client_id,
                inner.issuer.clone(),
                keys.clone(),
            ),
        }
        .set_allowed_algs(inner.algorithms.iter().cloned())
        // Extra audiences are accepted only with azp naming this client (checked below).
        .set_other_audience_verifier_fn(|_| true)
        .set_issue_time_verifier_fn(|iat| {
            checks::check_issue_time(iat.timestamp(), chrono::Utc::now().timestamp())
        });
        let claims = id_token.claims(&verifier, &Nonce::new(nonce.to_string()))?;
        let audiences: Vec<String> = claims.audiences().iter().map(|a| a.to_string()).collect();
        checks::check_authorized_party(
            &audiences,
            claims.authorized_party().map(|a| a.as_str()),
            &inner.client_id,
        )
        .map_err(IdTokenError::AuthorizedParty)?;
        Ok(VerifiedIdentity {
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified(),
            claims: checks::policy_claims(raw_claims(id_token)?),
        })
    }
}

/// The claims exactly as the IdP sent them, read from the token's payload after the crate
/// verified it (the crate's typed claims drop what it does not model, like `groups`).
fn raw_claims(id_token: &CoreIdToken) -> Result<Map<String, Value>, IdTokenError> {
    let compact = id_token.to_string();
    let payload = compact
        .split('.')
        .nth(1)
        .ok_or_else(|| IdTokenError::Malformed("not a compact JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| IdTokenError::Malformed("payload is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| IdTokenError::Malformed("payload is not a JSON object".into()))
}

/// Fetches and parses the IdP's JWKS; keys of unknown types are skipped by the crate.
async fn fetch_jwks(http: &http::IdpHttp, url: &str) -> Result<CoreJsonWebKeySet, OidcError> {
    let resp = http.get(url).await?;
    if resp.status() != ::http::StatusCode::OK {
        return Err(OidcError::Jwks {
            url: url.to_string(),
            reason: format!("HTTP {}", resp.status().as_u16()),
        });
    }
    let keys: CoreJsonWebKeySet =
        serde_json::from_slice(resp.body()).map_err(|e| OidcError::Jwks {
            url: url.to_string(),
            reason: format!("not a JWK set: {e}"),
        })?;
    if keys.keys().is_empty() {
        return Err(OidcError::Jwks {
            url: url.to_string(),
            reason: "it holds no signing key the gateway supports".into(),
        });
    }
    Ok(keys)
}

/// A fresh PKCE code verifier (RFC 7636): 32 random bytes, base64url, 43 characters.
pub fn new_pkce_verifier() -> String {
    random_b64(32)
}

/// A fresh unguessable value for `state` or `nonce`: 32 random bytes, base64url.
pub fn random_state() -> String {
    random_b64(32)
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod test_idp;
#[cfg(test)]
mod tests;
