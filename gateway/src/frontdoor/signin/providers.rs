//! The discovered OpenID Connect client of each IdentityProvider, made on first use and
//! kept until the IdentityProvider or its client secret changes.

use crate::identity::oidc::{OidcClient, OidcConfig, OidcError};
use crate::state::{Gateway, IdentityProviderEntry};
use postern_common::resources::OidcSpec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why an IdentityProvider cannot be used right now.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("its client secret {0:?} does not exist; create it with `posternctl create secret {0}`")]
    MissingSecret(String),
    #[error(transparent)]
    Oidc(#[from] OidcError),
}

struct Cached {
    spec: OidcSpec,
    secret: Option<String>,
    client: Arc<OidcClient>,
}

/// Clients by IdentityProvider name.
#[derive(Default)]
pub struct ProviderClients {
    clients: Mutex<HashMap<String, Cached>>,
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
        let client = Arc::new(
            OidcClient::discover(OidcConfig {
                issuer_url: oidc.issuer_url.clone(),
                client_id: oidc.client_id.clone(),
                client_secret: secret.clone(),
                scopes: oidc.effective_scopes(),
                extra_root_ca_pem: None,
            })
            .await?,
        );
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
