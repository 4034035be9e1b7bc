//! The `postgres://` store URL: parsed into connection settings (libpq's names and defaults
//! where Postern supports them), and a redacted form for logs and errors. Pure: no I/O.

use std::path::PathBuf;
use std::time::Duration;

/// How long opening a connection may take unless `connect_timeout` says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections one gateway keeps open to the database.
pub const POOL_MAX: usize = 16;
/// How long a store call waits for a free pooled connection.
pub const POOL_WAIT: Duration = Duration::from_secs(5);
/// The server cancels any statement running longer (so a stuck lock cannot hold a caller).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How TLS to the server is used, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked
    /// (libpq's default).
    Prefer,
    /// TLS always; the certificate is not checked (libpq semantics: encryption against
    /// passive eavesdroppers only).
    Require,
    /// TLS; the certificate must chain to a trusted root, whatever name it carries.
    VerifyCa,
    /// TLS; the certificate must chain to a trusted root and name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's Unix socket.
    Unix(PathBuf),
}

/// Everything needed to connect, from the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    /// PEM file of the CA certificates to trust instead of the built-in and system roots.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub pool_max: usize,
    pub pool_wait: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish_non_exhaustive()
    }
}

/// Why a store URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the store URL is not a URL ({0}); write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=verify-full")]
    NotAUrl(String),
    #[error("the store URL scheme {0:?} is not supported; use postgres:// or postgresql://")]
    Scheme(String),
    #[error("the store URL parameter {name}={value:?} is invalid: {why}")]
    BadValue {
        name: String,
        value: String,
        why: &'static str,
    },
    #[error("the store URL parameter {0:?} is not supported; supported: sslmode, sslrootcert, application_name, connect_timeout, host, port, user, password, dbname")]
    Unknown(String),
    #[error("the store URL names no host; add one (postgres://HOST/DATABASE) or a socket directory (?host=/run/postgresql)")]
    NoHost,
    #[error("sslmode={0} needs a TCP host: a Unix socket carries no TLS; use sslmode=disable or a host name")]
    TlsOverSocket(&'static str),
}

impl Settings {
    /// Parses a `postgres://` or `postgresql://` URL. `default_user` is used when the URL
    /// names none (libpq uses the operating-system user).
    pub fn parse(url: &str, default_user: &str) -> Result<Settings, ConfigError> {
        let parsed = url::Url::parse(url).map_err(|e| ConfigError::NotAUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::Scheme(parsed.scheme().to_string()));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let mut host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .map(|h| Host::Tcp(h.trim_start_matches('[').trim_end_matches(']').to_string()));
        let mut port = parsed.port().unwrap_or(5432);
        let mut user = Some(decode(parsed.username())).filter(|u| !u.is_empty());
        let mut password = parsed.password().map(decode);
        let mut dbname =
            Some(decode(parsed.path().trim_start_matches('/'))).filter(|d| !d.is_empty());
        let mut s = Settings {
            host: Host::Tcp(String::new()),
            port,
            user: String::new(),
            password: None,
            dbname: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            application_name: "posternd".into(),
            connect_timeout: CONNECT_TIMEOUT,
            statement_timeout: STATEMENT_TIMEOUT,
            pool_max: POOL_MAX,
            pool_wait: POOL_WAIT,
        };
        for (name, value) in parsed.query_pairs() {
            let value = value.into_owned();
            let bad = |why| ConfigError::BadValue {
                name: name.to_string(),
                value: value.clone(),
                why,
            };
            match &*name {
                "sslmode" => {
                    s.sslmode = SslMode::parse(&value).ok_or_else(|| {
                        bad("use disable, prefer, require, verify-ca or verify-full")
                    })?
                }
                "sslrootcert" => s.sslrootcert = Some(PathBuf::from(&value)),
                "application_name" => s.application_name = value,
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=300).contains(n))
                        .ok_or_else(|| bad("a whole number of seconds, 1 to 300"))?;
                    s.connect_timeout = Duration::from_secs(secs);
                }
                "host" => {
                    host = Some(if value.starts_with('/') {
                        Host::Unix(PathBuf::from(&value))
                    } else {
                        Host::Tcp(value)
                    })
                }
                "port" => port = value.parse().map_err(|_| bad("a TCP port number"))?,
                "user" => user = Some(value),
                "password" => password = Some(value),
                "dbname" => dbname = Some(value),
                _ => return Err(ConfigError::Unknown(name.into_owned())),
            }
        }
        s.host = host.ok_or(ConfigError::NoHost)?;
        s.port = port;
        s.user = user.unwrap_or_else(|| default_user.to_string());
        s.password = password;
        s.dbname = dbname;
        if matches!(s.host, Host::Unix(_)) {
            match s.sslmode {
                SslMode::Require => return Err(ConfigError::TlsOverSocket("require")),
                SslMode::VerifyCa => return Err(ConfigError::TlsOverSocket("verify-ca")),
                SslMode::VerifyFull => return Err(ConfigError::TlsOverSocket("verify-full")),
                SslMode::Disable | SslMode::Prefer => {}
            }
        }
        Ok(s)
    }

    /// The driver's configuration (TLS is chosen separately, see `tls.rs`).
    pub fn driver_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Unix(dir) => c.host_path(dir),
        };
        c.port(self.port)
            .user(&self.user)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(15))
            .options(format!(
                "-c statement_timeout={}",
                self.statement_timeout.as_millis()
            ))
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        if let Some(p) = &self.password {
            c.password(p);
        }
        if let Some(d) = &self.dbname {
            c.dbname(d);
        }
        c
    }
}

/// `url` with its password (in the user part or a `password=` parameter) replaced by `***`,
/// for logs and error messages. Text that is not a URL is replaced whole: it might be a
/// mistyped one holding a password.
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(unparsable store URL)".into();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings, ConfigError> {
        Settings::parse(url, "osuser")
    }

    #[test]
    fn a_full_url_gives_every_setting() {
        let s = parse(
            "postgresql://gw%40corp:p%2Fss@db.example.com:6432/postern?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=gw-a&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(s.host, Host::Tcp("db.example.com".into()));
        assert_eq!(s.port, 6432);
        assert_eq!(s.user, "gw@corp");
        assert_eq!(s.password.as_deref(), Some("p/ss"));
        assert_eq!(s.dbname.as_deref(), Some("postern"));
        assert_eq!(s.sslmode, SslMode::VerifyFull);
        assert_eq!(s.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(s.application_name, "gw-a");
        assert_eq!(s.connect_timeout, Duration::from_secs(3));
        assert!(!format!("{s:?}").contains("p/ss"));
    }

    #[test]
    fn defaults_follow_libpq_and_the_design() {
        let s = parse("postgres://db/postern").unwrap();
        assert_eq!(s.port, 5432);
        assert_eq!(s.user, "osuser");
        assert_eq!(s.password, None);
        assert_eq!(s.sslmode, SslMode::Prefer);
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.statement_timeout, Duration::from_secs(10));
        assert_eq!((s.pool_max, s.pool_wait), (16, Duration::from_secs(5)));
        assert_eq!(s.application_name, "posternd");
        let c = s.driver_config();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(c.get_options(), Some("-c statement_timeout=10000"));
    }

    #[test]
    fn every_sslmode_parses_and_others_are_refused() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let s = parse(&format!("postgres://h/d?sslmode={text}")).unwrap();
            assert_eq!(s.sslmode, mode);
        }
        assert!(matches!(
            parse("postgres://h/d?sslmode=allow"),
            Err(ConfigError::BadValue { .. })
        ));
        assert_eq!(
            Settings::parse("postgres://h/d?sslmode=verify-full", "u")
                .unwrap()
                .driver_config()
                .get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn wrong_urls_are_refused_with_what_to_do() {
        assert!(matches!(parse("mysql://h/d"), Err(ConfigError::Scheme(_))));
        assert!(matches!(parse("not a url"), Err(ConfigError::NotAUrl(_))));
        assert!(matches!(parse("postgres:///d"), Err(ConfigError::NoHost)));
        let e = parse("postgres://h/d?sslcert=x").unwrap_err();
        assert!(matches!(e, ConfigError::Unknown(_)));
        assert!(e.to_string().contains("supported: sslmode"));
        assert!(parse("postgres://h/d?connect_timeout=0").is_err());
        assert!(parse("postgres://h/d?connect_timeout=abc").is_err());
        assert!(parse("postgres://h/d?port=99999").is_err());
    }

    #[test]
    fn socket_directories_and_parameters_override_the_url_parts() {
        let s = parse("postgres:///postern?host=/run/postgresql&port=5433&user=gw").unwrap();
        assert_eq!(s.host, Host::Unix("/run/postgresql".into()));
        assert_eq!((s.port, s.user.as_str()), (5433, "gw"));
        assert!(matches!(
            parse("postgres:///d?host=/run/postgresql&sslmode=verify-full"),
            Err(ConfigError::TlsOverSocket(_))
        ));
        let s = parse("postgres://[::1]:5999/d").unwrap();
        assert_eq!(s.host, Host::Tcp("::1".into()));
    }

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact("postgres://gw:s3cret@db:5432/postern?sslmode=require"),
            "postgres://gw:***@db:5432/postern?sslmode=require"
        );
        let r = redact("postgres://db/postern?user=gw&password=s3cret&sslmode=disable");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(
            r.contains("password=***") || r.contains("password=%2A%2A%2A"),
            "{r}"
        );
        assert!(r.contains("sslmode=disable"), "{r}");
        assert_eq!(redact("postgres://db/postern"), "postgres://db/postern");
        assert!(!redact("postgres//gw:s3cret@db").contains("s3cret"));
    }
}
