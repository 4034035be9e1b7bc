//! The discovered OpenID Connect client of each IdentityProvider, made on first use and
//! kept until the IdentityProvider or its client secret changes.

use crate::identity::oidc::{OidcClient, OidcConfig, OidcError};
use crate::state::{Gateway, IdentityProviderEntry};
use postern_common::resources::OidcSpec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why an IdentityProvider cannot be used right now.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "its client secret {0:?} does not exist; create it with `posternctl create secret {0}`"
    )]
    MissingSecret(String),
    #[error(transparent)]
    Oidc(#[from] OidcError),
    #[error("{0} (tried less than 5 s ago; the gateway tries again after that)")]
    RecentlyFailed(String),
}

struct Cached {
    spec: OidcSpec,
    secret: Option<String>,
    client: Arc<OidcClient>,
}

/// A discovery that failed, remembered briefly so that a stranger reloading `/login` while
/// the provider is down does not make the gateway hammer it.
struct Failed {
    spec: OidcSpec,
    at: Instant,
    message: String,
}

/// How long a failed discovery is answered from memory.
pub const RETRY_DISCOVERY_AFTER: Duration = Duration::from_secs(5);

/// Clients by IdentityProvider name.
#[derive(Default)]
pub struct ProviderClients {
    clients: Mutex<HashMap<String, Cached>>,
    failed: Mutex<HashMap<String, Failed>>,
}

impl ProviderClients {
    /// The client for `idp`, discovering it (outside the lock) when its spec or secret is new.
    pub async fn get(
        &self,
        gw: &Gateway,
        idp: &IdentityProviderEntry,
    ) -> Result<Arc<OidcClient>, ProviderError> {
        let oidc = &idp.spec.oidc;
        let secret = match &oidc.client_secret {
            Some(s) => Some(
                gw.snapshot()
                    .secret(&s.from_secret)
                    .ok_or_else(|| ProviderError::MissingSecret(s.from_secret.clone()))?,
            ),
            None => None,
        };
        if let Some(c) = self.clients.lock().expect("clients lock").get(&idp.name) {
            if &c.spec == oidc && c.secret == secret {
                return Ok(c.client.clone());
            }
        }
        if let Some(f) = self.failed.lock().expect("failed lock").get(&idp.name) {
            if &f.spec == oidc && f.at.elapsed() < RETRY_DISCOVERY_AFTER {
                return Err(ProviderError::RecentlyFailed(f.message.clone()));
            }
        }
        let discovered = OidcClient::discover(OidcConfig {
            issuer_url: oidc.issuer_url.clone(),
            client_id: oidc.client_id.clone(),
            client_secret: secret.clone(),
            scopes: oidc.effective_scopes(),
            extra_root_ca_pem: gw.settings.idp_extra_ca_pem.clone(),
        })
        .await;
        let client = match discovered {
            Ok(c) => Arc::new(c),
            Err(e) => {
                self.failed.lock().expect("failed lock").insert(
                    idp.name.clone(),
                    Failed {
                        spec: oidc.clone(),
                        at: Instant::now(),
                        message: e.to_string(),
                    },
                );
                return Err(e.into());
            }
        };
        self.failed.lock().expect("failed lock").remove(&idp.name);
        self.clients.lock().expect("clients lock").insert(
            idp.name.clone(),
            Cached {
                spec: oidc.clone(),
                secret,
                client: client.clone(),
            },
        );
        Ok(client)
    }
}
