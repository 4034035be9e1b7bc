//! Objects the PostgreSQL store tests write, shaped as in the SQLite store tests.

#![allow(dead_code)]

use super::pg::Cluster;
use postern_common::resources::{
    Authentication, CredentialInfo, CredentialType, GroupSpec, Metadata, Resource, SessionInfo,
    SessionKind, SessionType, UserSpec,
};
use postern_gateway::store::usage::UsageRow;
use postern_gateway::store::{CredentialRecord, PgStore};

/// The notice key every test gateway shares (the gateways of a store share `secret.key`).
pub fn sealer() -> std::sync::Arc<dyn postern_gateway::store::feed::NoticeSealer> {
    std::sync::Arc::new(postern_gateway::identity::SecretBox::from_key(&[42; 32]))
}

/// A cluster and a store on a fresh database in it.
pub fn setup() -> Option<(Cluster, PgStore)> {
    let cluster = Cluster::start()?;
    let url = cluster.create_database("postern");
    let store = PgStore::connect(&url, "gw-test", sealer()).expect("connect");
    Some((cluster, store))
}

pub fn meta(name: &str) -> Metadata {
    Metadata {
        name: name.into(),
        ..Default::default()
    }
}

pub fn user(name: &str, email: Option<&str>) -> Resource {
    Resource::User {
        metadata: meta(name),
        spec: UserSpec {
            email: email.map(str::to_string),
            ..Default::default()
        },
    }
}

pub fn group(name: &str) -> Resource {
    Resource::Group {
        metadata: meta(name),
        spec: GroupSpec::default(),
    }
}

pub fn credential(name: &str, user: &str, lookup_id: &str) -> CredentialRecord {
    CredentialRecord {
        info: CredentialInfo {
            name: name.into(),
            user: user.into(),
            credential_type: CredentialType::Oauth2,
            client_id: Some(lookup_id.into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
        },
        lookup_id: lookup_id.into(),
        secret_hash: [9u8; 32],
    }
}

pub fn session(name: &str, user: &str, credential: &str, expires_at: &str) -> SessionInfo {
    SessionInfo {
        name: name.into(),
        user: user.into(),
        session_type: SessionType::Clientless,
        kind: SessionKind::Workload,
        credential: credential.into(),
        authentication: Authentication::credential(CredentialType::Oauth2),
        created_at: "2026-01-01T00:00:00Z".into(),
        expires_at: expires_at.into(),
    }
}

pub fn names(v: Vec<SessionInfo>) -> Vec<String> {
    v.into_iter().map(|s| s.name).collect()
}

pub fn usage_row(
    time: &str,
    user: &str,
    groups: &[&str],
    model: &str,
    p: u64,
    c: u64,
    est: bool,
) -> UsageRow {
    UsageRow {
        time: time.into(),
        user: Some(user.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        service: Some("ai".into()),
        config: None,
        model: Some(model.into()),
        prompt: p,
        completion: c,
        total: p + c,
        estimated: est,
        gateway: Some("gw-a".into()),
    }
}
