//! The two gateway calls the tunnel benchmark needs: an access token from `/oauth2/token`
//! (client credentials, one new Session per call) and `POST /api/v1/tunnel/connect` with a
//! WireGuard public key. Blocking ureq over rustls, verifying the gateway's CA, with TCP sent
//! to a fixed address while SNI and `Host` use the domain (the gateway is not in DNS).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postern_common::api::{TokenResponse, TunnelConnectRequest, TunnelConnectResponse};

/// Where the gateway's HTTPS API is and how to trust it.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// `https://<domain>:<port>`.
    pub base: String,
    agent: ureq::Agent,
}

impl Gateway {
    /// A client for `https://domain` whose TCP connections go to `connect_to`.
    pub fn new(domain: &str, connect_to: SocketAddr, ca_file: &Path) -> Result<Self, String> {
        let tls = postern_client::http::tls_config(Some(ca_file)).map_err(|e| e.to_string())?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .https_only(true)
            .timeout(Duration::from_secs(30))
            .resolver(move |_: &str| Ok(vec![connect_to]))
            .build();
        Ok(Gateway {
            base: format!("https://{domain}"),
            agent,
        })
    }

    /// A fresh access token (and so a fresh Session) for an OAuth2 credential.
    pub fn token(&self, client_id: &str, client_secret: &str) -> Result<String, String> {
        let resp = self
            .agent
            .post(&format!("{}/oauth2/token", self.base))
            .send_form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
            ])
            .map_err(describe)?;
        let tok: TokenResponse = resp.into_json().map_err(|e| e.to_string())?;
        Ok(tok.access_token)
    }

    /// Registers `public_key` as the tunnel peer of the Session behind `token`.
    pub fn connect(&self, token: &str, public_key: &str) -> Result<TunnelConnectResponse, String> {
        let resp = self
            .agent
            .post(&format!("{}/api/v1/tunnel/connect", self.base))
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(TunnelConnectRequest {
                public_key: public_key.to_string(),
            })
            .map_err(describe)?;
        resp.into_json().map_err(|e| e.to_string())
    }
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => {
            format!("HTTP {code}: {}", resp.into_string().unwrap_or_default())
        }
        other => other.to_string(),
    }
}
