//! `-p LOCAL:SERVICE:PORT`: a Service port published on `127.0.0.1:LOCAL` in userspace mode.

use super::error::TunnelError;
use std::fmt;
use std::str::FromStr;

/// One published port, as parsed from `-p`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    /// The local port on 127.0.0.1 (0 lets the system pick one).
    pub local_port: u16,
    /// The Service's name, as listed by the gateway.
    pub service: String,
    /// The port on the Service's tunnel address.
    pub port: u16,
}

impl FromStr for Publish {
    type Err = TunnelError;

    fn from_str(input: &str) -> Result<Self, TunnelError> {
        let bad = |why: &str| {
            TunnelError::Invalid(format!(
                "invalid -p {input:?}: {why}; use LOCAL:SERVICE:PORT such as 8080:internal-api:8080"
            ))
        };
        let parts: Vec<&str> = input.trim().split(':').collect();
        let [local, service, port] = parts.as_slice() else {
            return Err(bad("expected three parts separated by ':'"));
        };
        let local_port = local
            .parse::<u16>()
            .map_err(|_| bad("LOCAL is not a port number"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("PORT is not a port number"))?;
        if port == 0 {
            return Err(bad("PORT must not be 0"));
        }
        let service = service.trim();
        if service.is_empty() {
            return Err(bad("SERVICE is empty"));
        }
        Ok(Publish {
            local_port,
            service: service.to_string(),
            port,
        })
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.local_port, self.service, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_service_port() {
        let p: Publish = "8080:internal-api:80".parse().unwrap();
        assert_eq!(
            p,
            Publish {
                local_port: 8080,
                service: "internal-api".into(),
                port: 80
            }
        );
        assert_eq!(p.to_string(), "8080:internal-api:80");
        assert_eq!("0:db:5432".parse::<Publish>().unwrap().local_port, 0);
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in [
            "8080",
            "8080:svc",
            "a:svc:80",
            "8080::80",
            "8080:svc:0",
            "1:2:3:4",
            "70000:svc:80",
        ] {
            let err = bad.parse::<Publish>().unwrap_err().to_string();
            assert!(err.contains("LOCAL:SERVICE:PORT"), "{bad}: {err}");
        }
    }
}
