//! The saved session: `$POSTERN_HOME/session.json` (default `~/.config/postern`).
//!
//! The directory is created with mode 0700 and the file written with mode 0600, atomically
//! (a temporary file in the same directory, then a rename), so a crash never leaves half a
//! token behind.

use crate::error::{ClientError, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The session file's name inside the Postern home directory.
pub const SESSION_FILE: &str = "session.json";

/// What `postern login` saves and `posternctl` reuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The gateway, as `host` or `host:port`.
    pub domain: String,
    /// The bearer token for the control API.
    pub access_token: String,
    /// The session's name on the gateway.
    pub session: String,
    /// The user the session belongs to.
    pub user: String,
    /// When the access token stops working.
    pub expires_at: DateTime<Utc>,
    /// An extra CA certificate (absolute path) trusted for this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Session {
    /// Whether the token is past its expiry at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }

    /// Fails with a "log in again" error when the token has expired.
    pub fn ensure_valid(&self, now: DateTime<Utc>) -> Result<()> {
        if self.is_expired(now) {
            return Err(ClientError::SessionExpired {
                domain: self.domain.clone(),
                expires_at: self.expires_at.to_rfc3339(),
            });
        }
        Ok(())
    }
}

/// The Postern home directory: `explicit` (from `--home` or `POSTERN_HOME`), else
/// `$HOME/.config/postern`.
pub fn home_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".config").join("postern")),
        _ => Err(ClientError::Invalid(
            "cannot find the home directory: $HOME is not set; pass --home DIR or set POSTERN_HOME"
                .to_string(),
        )),
    }
}

/// The session file's path inside `home`.
pub fn session_path(home: &Path) -> PathBuf {
    home.join(SESSION_FILE)
}

/// Reads the saved session; a missing file is [`ClientError::NotLoggedIn`].
pub fn load(home: &Path) -> Result<Session> {
    let path = session_path(home);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClientError::NotLoggedIn { path })
        }
        Err(e) => return Err(ClientError::io("cannot read", path, e)),
    };
    serde_json::from_str(&text).map_err(|e| ClientError::BadSessionFile {
        path,
        detail: e.to_string(),
    })
}

/// Writes the session atomically with mode 0600, creating `home` (mode 0700) if needed.
pub fn save(home: &Path, session: &Session) -> Result<()> {
    create_private_dir(home)?;
    let path = session_path(home);
    let tmp = home.join(format!(".{SESSION_FILE}.{}.tmp", std::process::id()));
    let json = serde_json::to_vec_pretty(session).expect("a session always serializes");
    let write = || -> std::io::Result<()> {
        let mut file = private_file(&tmp)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ClientError::io("cannot write", &path, e)
    })
}

/// Deletes the saved session. Returns whether there was one.
pub fn remove(home: &Path) -> Result<bool> {
    let path = session_path(home);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ClientError::io("cannot delete", path, e)),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ClientError::io("cannot create", dir, e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| ClientError::io("cannot create", dir, e))
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn temp_home(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "postern-config-test-{tag}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir.join("nested").join("postern")
    }

    fn sample() -> Session {
        Session {
            domain: "example.com:8443".into(),
            access_token: "tok-123".into(),
            session: "sess-1".into(),
            user: "alice".into(),
            expires_at: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
            ca_file: Some(PathBuf::from("/etc/postern/ca.pem")),
        }
    }

    #[test]
    fn round_trip() {
        let home = temp_home("roundtrip");
        save(&home, &sample()).unwrap();
        assert_eq!(load(&home).unwrap(), sample());
        // Overwriting works and leaves no temporary files behind.
        let mut other = sample();
        other.ca_file = None;
        save(&home, &other).unwrap();
        assert_eq!(load(&home).unwrap(), other);
        let names: Vec<_> = fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SESSION_FILE)]);
        assert!(remove(&home).unwrap());
        assert!(!remove(&home).unwrap());
        fs::remove_dir_all(home.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn wire_format_is_camel_case_rfc3339() {
        let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["accessToken"], "tok-123");
        assert_eq!(json["expiresAt"], "2030-01-02T03:04:05Z");
        assert_eq!(json["caFile"], "/etc/postern/ca.pem");
    }

    #[cfg(unix)]
    #[test]
    fn private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let home = temp_home("modes");
        save(&home, &sample()).unwrap();
        let file_mode = fs::metadata(session_path(&home))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        fs::remove_dir_all(home.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn missing_file_says_to_log_in() {
        let home = temp_home("missing");
        let err = load(&home).unwrap_err();
        assert!(matches!(err, ClientError::NotLoggedIn { .. }));
        assert!(err.to_string().contains("postern login"), "{err}");
    }

    #[test]
    fn expiry() {
        let s = sample();
        assert!(s
            .ensure_valid(s.expires_at - chrono::Duration::seconds(1))
            .is_ok());
        let err = s.ensure_valid(s.expires_at).unwrap_err();
        assert!(err.to_string().contains("postern login"), "{err}");
    }
}
