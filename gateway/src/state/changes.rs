//! Every change to the gateway's configuration and identities: store first, then a new
//! snapshot swapped in. A change that would not compile, or that breaks a reference, is
//! refused whole and leaves both the store and the running gateway as they were.

use super::snapshot::{BuildError, Snapshot};
use super::{now_rfc3339, now_unix, Gateway};
use crate::identity::{secrets, Claims};
use crate::store::{CredentialRecord, StoreError};
use postern_common::api::{
    ApplyAction, ApplyFile, ApplyResponse, ApplyResult, CreateCredentialRequest,
    CreateCredentialResponse, TokenResponse,
};
use postern_common::resources::{
    parse_documents, Authentication, CredentialInfo, CredentialType, Kind, Resource, SessionInfo,
    SessionKind, SessionType,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a change was refused. Messages are shown to the admin as they are.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name:?} already exists{hint}")]
    AlreadyExists {
        kind: Kind,
        name: String,
        hint: &'static str,
    },
    #[error("{0}")]
    InUse(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("stored data does not compile (was it written by a newer posternd?): {0}")]
    Corrupt(String),
    #[error("{0}")]
    Crypto(String),
}

impl ChangeError {
    /// The store could not be reached, so nothing changed: answer 503 and let the caller
    /// retry.
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, ChangeError::Store(e) if e.is_unavailable())
    }
}

/// What [`Gateway::start_session`] records.
pub(super) struct NewSession {
    pub user: String,
    pub kind: SessionKind,
    /// Empty for a sign-in through an IdentityProvider.
    pub credential: String,
    pub authentication: Authentication,
}

/// What a successful login returns.
pub struct LoginOutcome {
    pub access_token: String,
    pub expires_in: u64,
    pub session: String,
    pub user: String,
}

/// Whether User `name` had another email (ignoring case) in `before`; a new User has none.
fn email_changed(before: &Snapshot, name: &str, email: Option<&str>) -> bool {
    let old = match before.resources.get(&(Kind::User, name.to_string())) {
        Some(Resource::User { spec, .. }) => spec.email.as_deref(),
        _ => return false,
    };
    let lower = |e: Option<&str>| e.map(str::to_ascii_lowercase);
    lower(old) != lower(email)
}

fn join(errors: &[BuildError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Gateway {
    /// Rebuilds the snapshot from the store.
    pub fn reload(&self) -> Result<(), ChangeError> {
        let snap = self.build_from_store(None)?;
        let live = snap.upstream_keys();
        self.snapshot.store(Arc::new(snap));
        self.upstream_states.keep_only(&live);
        self.changes.send_modify(|generation| *generation += 1);
        Ok(())
    }

    fn build_from_store(&self, resources: Option<Vec<Resource>>) -> Result<Snapshot, ChangeError> {
        let resources = match resources {
            Some(r) => r,
            None => self.store.list_resources()?,
        };
        let mut secrets = Vec::new();
        for (info, ciphertext) in self.store.list_secrets()? {
            let plain = self.secretbox.open(&ciphertext).map_err(|e| {
                ChangeError::Crypto(format!(
                    "secret {:?} cannot be decrypted with secret.key ({e}); restore the data directory's secret.key",
                    info.name
                ))
            })?;
            secrets.push((info, String::from_utf8_lossy(&plain).into_owned()));
        }
        let credentials = self.store.list_credentials()?;
        Snapshot::build_with(resources, secrets, credentials, &self.upstream_states)
            .map_err(|e| ChangeError::Corrupt(join(&e)))
    }

    /// Brings the Sessions in memory in line with the store: those the store no longer has
    /// go (and their tunnel peers with them); the others are inserted or kept. Never empties
    /// the map first, so a resync cuts no agent and fails no request that is in flight.
    pub(super) fn reload_sessions(&self) -> Result<(), ChangeError> {
        self.store.delete_expired_sessions(&now_rfc3339())?;
        let all = self.store.list_sessions()?;
        let names: std::collections::HashSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        self.remove_sessions_where(|s| !names.contains(s.name.as_str()));
        for s in all {
            self.insert_session_entry(s);
        }
        Ok(())
    }

    /// Parses, checks and applies the resources of every file, all or nothing.
    pub fn apply(&self, files: &[ApplyFile], dry_run: bool) -> Result<ApplyResponse, ChangeError> {
        let mut docs = Vec::new();
        for f in files {
            let parsed = parse_documents(&f.file, &f.content)
                .map_err(|e| ChangeError::Invalid(format!("{e}\nnothing was applied")))?;
            if parsed.is_empty() {
                return Err(ChangeError::Invalid(format!(
                    "{}: no resources in the file\nnothing was applied",
                    f.file
                )));
            }
            docs.extend(parsed);
        }
        let mut seen = HashMap::new();
        for d in &docs {
            let key = (d.resource.kind(), d.resource.name().to_string());
            if let Some(first) = seen.insert(key, d.location()) {
                return Err(ChangeError::Invalid(format!(
                    "{}: declared twice (first at {first})\nnothing was applied",
                    d.location()
                )));
            }
        }
        let _guard = self.write_lock.lock().expect("write lock");
        let current = self.snapshot();
        let mut merged = current.resources.clone();
        let mut results = Vec::new();
        let mut changed = Vec::new();
        for d in &docs {
            let r = &d.resource;
            let key = (r.kind(), r.name().to_string());
            let action = match merged.get(&key) {
                None => ApplyAction::Created,
                Some(old) if old.without_server_fields() == r.without_server_fields() => {
                    ApplyAction::Unchanged
                }
                Some(_) => ApplyAction::Updated,
            };
            if action != ApplyAction::Unchanged {
                changed.push(r.without_server_fields());
                merged.insert(key, r.without_server_fields());
            }
            results.push(ApplyResult {
                kind: r.kind().to_string(),
                name: r.name().to_string(),
                action,
            });
        }
        let candidate: Vec<Resource> = merged.into_values().collect();
        let secrets = current
            .secrets
            .values()
            .map(|s| (s.info.clone(), s.value.clone()))
            .collect();
        let creds = current
            .credentials
            .values()
            .map(|c| (**c).clone())
            .collect();
        if let Err(errors) = Snapshot::build(candidate, secrets, creds) {
            let msgs: Vec<String> = errors
                .iter()
                .map(|e| {
                    match docs
                        .iter()
                        .find(|d| d.resource.kind() == e.kind && d.resource.name() == e.name)
                    {
                        Some(d) => {
                            format!("{}: {}: {}", d.location_of(&e.field), e.field, e.message)
                        }
                        None => e.to_string(),
                    }
                })
                .collect();
            return Err(ChangeError::Invalid(format!(
                "{}\nnothing was applied",
                msgs.join("\n")
            )));
        }
        if !dry_run && !changed.is_empty() {
            self.store.upsert_resources(&changed)?;
            // A disabled User's Sessions end: signing in again is refused while disabled, and
            // enabling the User later brings no old Session back.
            // A User whose email changed is linked to another person: the Sessions the old
            // person signed in end (those of its credentials stay).
            for r in &changed {
                if let Resource::User { metadata, spec } = r {
                    if spec.is_disabled {
                        self.store.delete_sessions_of_user(&metadata.name)?;
                        self.remove_sessions_where(|s| s.user == metadata.name);
                    } else if email_changed(&current, &metadata.name, spec.email.as_deref()) {
                        self.store
                            .delete_signed_in_sessions_of_user(&metadata.name)?;
                        self.remove_sessions_where(|s| {
                            s.user == metadata.name && s.authentication.identity_provider.is_some()
                        });
                    }
                }
            }
            self.reload()?;
        }
        Ok(ApplyResponse { results, dry_run })
    }

    /// Deletes one resource, refusing when others depend on it.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<(), ChangeError> {
        let _guard = self.write_lock.lock().expect("write lock");
        let snap = self.snapshot();
        let not_found = || ChangeError::NotFound {
            kind,
            name: name.to_string(),
        };
        match kind {
            Kind::Service | Kind::User | Kind::Group | Kind::Policy | Kind::IdentityProvider => {
                if !snap.resources.contains_key(&(kind, name.to_string())) {
                    return Err(not_found());
                }
                if kind == Kind::Policy {
                    let refs = snap.policy_referrers(name);
                    if !refs.is_empty() {
                        return Err(ChangeError::InUse(format!(
                            "Policy {name:?} is used by {}; remove it from them first",
                            refs.join(", ")
                        )));
                    }
                }
                if kind == Kind::User
                    && name == crate::datadir::ADMIN_USER
                    && self.admin_count(&snap) <= 1
                {
                    // Deleting the last admin would lock everyone out of the API.
                    return Err(ChangeError::InUse(
                        "User \"admin\" is the only member of group admins; add another admin first".into(),
                    ));
                }
                self.store.delete_resource(kind, name)?;
                if kind == Kind::User {
                    self.store.delete_sessions_of_user(name)?;
                    self.store.delete_credentials_of_user(name)?;
                    self.remove_sessions_where(|s| s.user == name);
                }
                if kind == Kind::IdentityProvider {
                    self.store.delete_sessions_of_identity_provider(name)?;
                    self.remove_sessions_where(|s| {
                        s.authentication.identity_provider.as_deref() == Some(name)
                    });
                }
                self.reload()?;
            }
            Kind::Secret => {
                if !snap.secrets.contains_key(name) {
                    return Err(not_found());
                }
                self.store.delete_secret(name)?;
                self.reload()?;
            }
            Kind::Credential => {
                if !snap.credentials.contains_key(name) {
                    return Err(not_found());
                }
                self.store.delete_credential(name)?;
                self.store.delete_sessions_of_credential(name)?;
                self.remove_sessions_where(|s| s.credential == name);
                self.reload()?;
            }
            Kind::Session => {
                if !self.list_sessions().iter().any(|s| s.name == name) {
                    return Err(not_found());
                }
                self.store.delete_session(name)?;
                self.session_deleted_here(name);
                self.remove_sessions_where(|s| s.name == name);
            }
        }
        Ok(())
    }

    fn admin_count(&self, snap: &Snapshot) -> usize {
        snap.users
            .values()
            .filter(|u| {
                u.spec
                    .groups
                    .iter()
                    .any(|g| g == crate::datadir::ADMINS_GROUP)
            })
            .count()
    }

    /// Stores a Secret's value, encrypted.
    pub fn create_secret(
        &self,
        name: &str,
        value: &str,
        overwrite: bool,
    ) -> Result<(), ChangeError> {
        postern_common::resources::validate::check_name(name)
            .map_err(|m| ChangeError::Invalid(format!("secret name: {m}")))?;
        if value.is_empty() {
            return Err(ChangeError::Invalid("the secret's value is empty".into()));
        }
        let _guard = self.write_lock.lock().expect("write lock");
        let sealed = self.secretbox.seal(value.as_bytes());
        self.store
            .put_secret(name, &sealed, overwrite)
            .map_err(|e| match e {
                StoreError::AlreadyExists { .. } => ChangeError::AlreadyExists {
                    kind: Kind::Secret,
                    name: name.to_string(),
                    hint: "; pass --overwrite to replace its value",
                },
                e => e.into(),
            })?;
        self.reload()
    }

    /// Makes a Credential for an existing User; the secret is returned once.
    pub fn create_credential(
        &self,
        req: &CreateCredentialRequest,
    ) -> Result<CreateCredentialResponse, ChangeError> {
        postern_common::resources::validate::check_name(&req.name)
            .map_err(|m| ChangeError::Invalid(format!("credential name: {m}")))?;
        let _guard = self.write_lock.lock().expect("write lock");
        let snap = self.snapshot();
        if !snap.users.contains_key(&req.user) {
            return Err(ChangeError::Invalid(format!(
                "User {:?} does not exist; apply it first (kind: User)",
                req.user
            )));
        }
        if snap.credentials.contains_key(&req.name) {
            return Err(ChangeError::AlreadyExists {
                kind: Kind::Credential,
                name: req.name.clone(),
                hint: "; delete it first or choose another name",
            });
        }
        let expires_at = req.ttl_seconds.map(|s| {
            (chrono::Utc::now() + chrono::Duration::seconds(s as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        let mut resp = CreateCredentialResponse {
            name: req.name.clone(),
            client_id: None,
            client_secret: None,
            auth_token: None,
        };
        let (lookup_id, secret_hash, client_id) = match req.credential_type {
            CredentialType::Oauth2 => {
                let (id, secret, hash) = secrets::new_client_credentials();
                resp.client_id = Some(id.clone());
                resp.client_secret = Some(secret);
                (id.clone(), hash, Some(id))
            }
            CredentialType::AuthToken => {
                let (token, lookup, hash) = secrets::new_auth_token();
                resp.auth_token = Some(token);
                (lookup, hash, None)
            }
        };
        self.store.insert_credential(&CredentialRecord {
            info: CredentialInfo {
                name: req.name.clone(),
                user: req.user.clone(),
                credential_type: req.credential_type,
                client_id,
                created_at: now_rfc3339(),
                expires_at,
            },
            lookup_id,
            secret_hash,
        })?;
        self.reload()?;
        Ok(resp)
    }

    /// Finds the credential of `lookup_id` of type `ty` and checks `secret` in constant time.
    fn check_credential(
        &self,
        ty: CredentialType,
        lookup_id: &str,
        secret: &str,
    ) -> Option<Arc<CredentialRecord>> {
        let snap = self.snapshot();
        let found = snap
            .credentials_by_lookup
            .get(lookup_id)
            .and_then(|n| snap.credentials.get(n))
            .filter(|c| c.info.credential_type == ty)
            .cloned();
        // Compare against a dummy hash when absent, so timing does not tell ids apart.
        let hash = found.as_ref().map(|c| c.secret_hash).unwrap_or([0u8; 32]);
        let ok = secrets::verify_secret(secret, &hash) && found.is_some();
        let c = found.filter(|_| ok)?;
        if let Some(exp) = &c.info.expires_at {
            let expired = chrono::DateTime::parse_from_rfc3339(exp)
                .map(|t| t.timestamp() <= now_unix())
                .unwrap_or(true);
            if expired {
                return None;
            }
        }
        let user_ok = snap
            .users
            .get(&c.info.user)
            .is_some_and(|u| !u.spec.is_disabled);
        user_ok.then_some(c)
    }

    fn new_session(
        &self,
        cred: &CredentialRecord,
        ty: SessionType,
        ttl: std::time::Duration,
    ) -> Result<(String, SessionInfo), ChangeError> {
        let kind = match ty {
            SessionType::Client => SessionKind::Agent,
            SessionType::Clientless => SessionKind::Workload,
        };
        self.start_session(
            NewSession {
                user: cred.info.user.clone(),
                kind,
                credential: cred.info.name.clone(),
                authentication: Authentication::credential(cred.info.credential_type),
            },
            ttl,
        )
    }

    /// Stores a new Session and signs its access token.
    pub(super) fn start_session(
        &self,
        new: NewSession,
        ttl: std::time::Duration,
    ) -> Result<(String, SessionInfo), ChangeError> {
        let now = now_unix();
        // Whole seconds, rounded up: a token never expires before the `expires_in` it was
        // issued with.
        let exp = now + ttl.as_secs() as i64 + 1;
        let info = SessionInfo {
            name: secrets::random_id("sess"),
            user: new.user,
            session_type: match new.kind {
                SessionKind::Agent => SessionType::Client,
                SessionKind::Browser | SessionKind::Workload => SessionType::Clientless,
            },
            kind: new.kind,
            credential: new.credential,
            authentication: new.authentication,
            created_at: now_rfc3339(),
            expires_at: chrono::DateTime::from_timestamp(exp, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        self.store.insert_session(&info)?;
        self.insert_session_entry(info.clone());
        let token = self.signer.issue(&Claims {
            sid: info.name.clone(),
            tid: secrets::random_id("tok"),
            iat: now,
            exp,
        });
        Ok((token, info))
    }

    /// OAuth2 client credentials grant: a new client-less Session and its access token.
    /// `None` means `invalid_client`.
    pub fn grant_client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Option<TokenResponse>, ChangeError> {
        let Some(cred) = self.check_credential(CredentialType::Oauth2, client_id, client_secret)
        else {
            return Ok(None);
        };
        let ttl = self.settings.token_ttl;
        let (token, _) = self.new_session(&cred, SessionType::Clientless, ttl)?;
        Ok(Some(TokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: ttl.as_secs(),
        }))
    }

    /// `postern login`: an auth token for a Session. `None` means the token is not valid.
    pub fn login(&self, auth_token: &str) -> Result<Option<LoginOutcome>, ChangeError> {
        let Some((lookup, secret)) = secrets::parse_auth_token(auth_token) else {
            return Ok(None);
        };
        let Some(cred) = self.check_credential(CredentialType::AuthToken, lookup, secret) else {
            return Ok(None);
        };
        let ttl = self.settings.login_ttl;
        let (token, info) = self.new_session(&cred, SessionType::Client, ttl)?;
        Ok(Some(LoginOutcome {
            access_token: token,
            expires_in: ttl.as_secs(),
            session: info.name,
            user: info.user,
        }))
    }

    /// Drops expired sessions from memory and the store; run periodically.
    pub fn expire_sessions(&self) -> Result<usize, ChangeError> {
        let now = now_unix();
        self.remove_sessions_where(|s| {
            chrono::DateTime::parse_from_rfc3339(&s.expires_at)
                .map(|t| t.timestamp() <= now)
                .unwrap_or(true)
        });
        Ok(self.store.delete_expired_sessions(&now_rfc3339())?)
    }
}
