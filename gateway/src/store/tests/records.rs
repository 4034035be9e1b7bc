use super::*;
use postern_common::resources::{AuthMethod, Authentication, SessionKind};

fn credential(name: &str, user: &str, lookup_id: &str) -> CredentialRecord {
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

fn session(name: &str, user: &str, credential: &str, expires_at: &str) -> SessionInfo {
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

#[test]
fn person_sessions_keep_their_provider_and_claims_and_go_with_it() {
    let store = SqliteStore::open_in_memory().unwrap();
    let mut s = session("s-browser", "alice", "", "2030-01-01T00:00:00Z");
    s.kind = SessionKind::Browser;
    s.authentication = Authentication {
        method: AuthMethod::Oidc,
        identity_provider: Some("corp".into()),
        claims: serde_json::json!({"groups": ["eng"], "email": "a@example.com"}),
    };
    store.insert_session(&s).unwrap();
    store
        .insert_session(&session("s-bot", "bot", "ci", "2030-01-01T00:00:00Z"))
        .unwrap();
    let listed = store.list_sessions().unwrap();
    assert_eq!(listed.iter().find(|x| x.name == "s-browser"), Some(&s));
    assert_eq!(
        store.delete_sessions_of_identity_provider("other").unwrap(),
        0
    );
    assert_eq!(
        store.delete_sessions_of_identity_provider("corp").unwrap(),
        1
    );
    let names: Vec<_> = store
        .list_sessions()
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["s-bot"]);
}

#[test]
fn sessions_written_before_kinds_existed_read_as_agent_or_workload() {
    let store = SqliteStore::open_in_memory().unwrap();
    {
        let conn = store.lock();
        conn.execute_batch(
            "INSERT INTO sessions (name, user, type, credential, created_at, expires_at, expires_unix)
             VALUES ('old-agent', 'alice', 'CLIENT', 'laptop', '2026-01-01T00:00:00Z', '2030-01-01T00:00:00Z', 1893456000),
                    ('old-grant', 'bot', 'CLIENTLESS', 'ci', '2026-01-01T00:00:00Z', '2030-01-01T00:00:00Z', 1893456000);",
        )
        .unwrap();
    }
    let listed = store.list_sessions().unwrap();
    assert_eq!(listed[0].kind, SessionKind::Agent);
    assert_eq!(listed[0].authentication.method, AuthMethod::AuthToken);
    assert_eq!(listed[1].kind, SessionKind::Workload);
    assert_eq!(listed[1].authentication.method, AuthMethod::Oauth2);
}

#[test]
fn credentials_insert_clash_lookup_delete() {
    let store = SqliteStore::open_in_memory().unwrap();
    let mut c = credential("ci", "alice", "pcid_1");
    c.info.expires_at = Some("2027-01-01T00:00:00+02:00".into());
    store.insert_credential(&c).unwrap();
    let mut token = credential("laptop", "alice", "abc");
    token.info.credential_type = CredentialType::AuthToken;
    token.info.client_id = None;
    store.insert_credential(&token).unwrap();
    store
        .insert_credential(&credential("bot", "bob", "pcid_2"))
        .unwrap();

    assert!(matches!(
        store.insert_credential(&credential("ci", "bob", "pcid_9")),
        Err(StoreError::AlreadyExists {
            kind: Kind::Credential,
            ..
        })
    ));
    assert!(matches!(
        store.insert_credential(&credential("new", "bob", "pcid_1")),
        Err(StoreError::DuplicateLookupId { .. })
    ));
    let mut bad = credential("bad", "bob", "pcid_3");
    bad.info.created_at = "yesterday".into();
    assert!(matches!(
        store.insert_credential(&bad),
        Err(StoreError::InvalidTimestamp {
            field: "createdAt",
            ..
        })
    ));

    let listed = store.list_credentials().unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|c| c.info.name.as_str())
            .collect::<Vec<_>>(),
        ["bot", "ci", "laptop"]
    );
    assert_eq!(listed[1], c);
    assert_eq!(listed[2], token);
    assert_eq!(
        store.get_credential_by_lookup_id("abc").unwrap(),
        Some(token)
    );
    assert_eq!(store.get_credential_by_lookup_id("nope").unwrap(), None);

    store.delete_credential("bot").unwrap();
    assert!(matches!(
        store.delete_credential("bot"),
        Err(StoreError::NotFound {
            kind: Kind::Credential,
            ..
        })
    ));
    assert_eq!(store.delete_credentials_of_user("alice").unwrap(), 2);
    assert_eq!(store.delete_credentials_of_user("alice").unwrap(), 0);
    assert!(store.list_credentials().unwrap().is_empty());
}

#[test]
fn sessions_insert_list_delete() {
    let store = SqliteStore::open_in_memory().unwrap();
    let s = session("sess-a", "alice", "ci", "2026-06-01T00:00:00Z");
    store.insert_session(&s).unwrap();
    let mut client = session("sess-b", "alice", "laptop", "2026-06-01T00:00:00Z");
    client.session_type = SessionType::Client;
    store.insert_session(&client).unwrap();
    assert!(matches!(
        store.insert_session(&s),
        Err(StoreError::AlreadyExists {
            kind: Kind::Session,
            ..
        })
    ));
    assert!(matches!(
        store.insert_session(&session("sess-c", "bob", "x", "soon")),
        Err(StoreError::InvalidTimestamp {
            field: "expiresAt",
            ..
        })
    ));
    assert_eq!(store.list_sessions().unwrap(), vec![s, client]);
    store.delete_session("sess-a").unwrap();
    assert!(matches!(
        store.delete_session("sess-a"),
        Err(StoreError::NotFound {
            kind: Kind::Session,
            ..
        })
    ));
    assert_eq!(store.list_sessions().unwrap().len(), 1);
}

#[test]
fn expired_sessions_compare_instants_not_strings() {
    let store = SqliteStore::open_in_memory().unwrap();
    // 10:00 at +02:00 is 08:00Z: expired at 09:00Z even though "10" > "09" as text.
    store
        .insert_session(&session("s1", "a", "c", "2026-06-01T10:00:00+02:00"))
        .unwrap();
    store
        .insert_session(&session("s2", "a", "c", "2026-06-01T09:00:00Z"))
        .unwrap();
    store
        .insert_session(&session("s3", "a", "c", "2026-06-01T09:00:01Z"))
        .unwrap();
    assert_eq!(
        store
            .delete_expired_sessions("2026-06-01T09:00:00Z")
            .unwrap(),
        2
    );
    let left = store.list_sessions().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].name, "s3");
    assert!(matches!(
        store.delete_expired_sessions("now"),
        Err(StoreError::InvalidTimestamp { field: "now", .. })
    ));
}

#[test]
fn sessions_of_user_and_credential() {
    let store = SqliteStore::open_in_memory().unwrap();
    for (name, user, cred) in [
        ("s1", "alice", "ci"),
        ("s2", "alice", "laptop"),
        ("s3", "bob", "ci-bob"),
        ("s4", "bob", "ci-bob"),
    ] {
        store
            .insert_session(&session(name, user, cred, "2030-01-01T00:00:00Z"))
            .unwrap();
    }
    assert_eq!(store.delete_sessions_of_credential("ci-bob").unwrap(), 2);
    assert_eq!(store.delete_sessions_of_credential("ci-bob").unwrap(), 0);
    assert_eq!(store.delete_sessions_of_user("alice").unwrap(), 2);
    assert!(store.list_sessions().unwrap().is_empty());
}

#[test]
fn deleting_a_user_or_credential_takes_what_it_made() {
    let store = SqliteStore::open_in_memory().unwrap();
    store
        .upsert_resources(&[super::user("alice", None), super::user("bob", None)])
        .unwrap();
    store
        .insert_credential(&credential("ci", "alice", "pcid_1"))
        .unwrap();
    store
        .insert_credential(&credential("ci-bob", "bob", "pcid_2"))
        .unwrap();
    for (name, user, cred) in [("s1", "alice", "ci"), ("s2", "bob", "ci-bob")] {
        store
            .insert_session(&session(name, user, cred, "2030-01-01T00:00:00Z"))
            .unwrap();
    }
    store.delete_credential("ci-bob").unwrap();
    let names = |v: Vec<SessionInfo>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(names(store.list_sessions().unwrap()), ["s1"]);
    store.delete_resource(Kind::User, "alice").unwrap();
    assert!(store.list_sessions().unwrap().is_empty());
    assert!(store.list_credentials().unwrap().is_empty());
}

#[test]
fn a_user_delete_that_fails_half_way_changes_nothing() {
    let store = SqliteStore::open_in_memory().unwrap();
    store
        .upsert_resources(&[super::user("alice", None)])
        .unwrap();
    store
        .insert_credential(&credential("ci", "alice", "pcid_1"))
        .unwrap();
    store
        .insert_session(&session("s1", "alice", "ci", "2030-01-01T00:00:00Z"))
        .unwrap();
    // Make the last statement of the cascade fail, as a crash there would stop it.
    store
        .lock()
        .execute_batch(
            "CREATE TRIGGER stop BEFORE DELETE ON credentials BEGIN SELECT RAISE(ABORT, 'stop'); END;",
        )
        .unwrap();
    assert!(store.delete_resource(Kind::User, "alice").is_err());
    assert_eq!(store.list_resources().unwrap().len(), 1);
    assert_eq!(store.list_sessions().unwrap().len(), 1);
    assert_eq!(store.list_credentials().unwrap().len(), 1);
}
