use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

fn token(v: &str, secs: u64) -> Result<FetchedToken, TokenError> {
    Ok(FetchedToken {
        access_token: v.into(),
        expires_in: Duration::from_secs(secs),
    })
}

#[tokio::test]
async fn one_fetch_until_refresh_point_then_refetch() {
    let cache = TokenCache::default();
    let n = AtomicUsize::new(0);
    let t0 = Instant::now();
    for _ in 0..5 {
        let v = cache
            .get_with("k", t0, || async {
                n.fetch_add(1, Ordering::SeqCst);
                token("a", 100)
            })
            .await;
        assert_eq!(v.unwrap(), "a");
    }
    assert_eq!(n.load(Ordering::SeqCst), 1);
    // at 79% of the lifetime: still cached
    let v = cache
        .get_with("k", t0 + Duration::from_secs(79), || async {
            token("b", 100)
        })
        .await;
    assert_eq!(v.unwrap(), "a");
    // past 80%: refreshed
    let v = cache
        .get_with("k", t0 + Duration::from_secs(81), || async {
            token("b", 100)
        })
        .await;
    assert_eq!(v.unwrap(), "b");
}

#[tokio::test]
async fn failed_refresh_keeps_unexpired_token_and_fails_after_expiry() {
    let cache = TokenCache::default();
    let t0 = Instant::now();
    cache
        .get_with("k", t0, || async { token("a", 10) })
        .await
        .unwrap();
    let err = || async {
        Err(TokenError::Unreachable {
            url: "u".into(),
            reason: "down".into(),
        })
    };
    let v = cache.get_with("k", t0 + Duration::from_secs(9), err).await;
    assert_eq!(v.unwrap(), "a");
    let v = cache.get_with("k", t0 + Duration::from_secs(11), err).await;
    assert!(matches!(v, Err(TokenError::Unreachable { .. })));
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let cache = Arc::new(TokenCache::default());
    let n = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, n) = (cache.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_with("k", Instant::now(), || async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    token("t", 3600)
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "t");
    }
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

#[test]
fn keys_separate_scopes_and_secrets() {
    let mut cfg = OAuth2ClientCredentials {
        token_url: "https://idp/token".into(),
        client_id: "c".into(),
        ..Default::default()
    };
    let a = cache_key(&cfg, "s1");
    assert_ne!(a, cache_key(&cfg, "s2"));
    cfg.scopes = vec!["x".into()];
    assert_ne!(a, cache_key(&cfg, "s1"));
}

#[test]
fn token_responses() {
    let t = parse_token("u", br#"{"access_token":"abc","expires_in":"60"}"#).unwrap();
    assert_eq!(t.expires_in, Duration::from_secs(60));
    let t = parse_token("u", br#"{"access_token":"abc"}"#).unwrap();
    assert_eq!(t.expires_in, DEFAULT_LIFETIME);
    assert!(parse_token("u", b"nope").is_err());
    assert!(parse_token("u", br#"{"token":"x"}"#).is_err());
}

#[test]
fn token_request_post_and_basic() {
    let mut cfg = OAuth2ClientCredentials {
        token_url: "http://idp/token".into(),
        client_id: "id".into(),
        scopes: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    let r = token_request(&cfg, "s&cret").unwrap();
    assert!(r.headers().get("authorization").is_none());
    cfg.auth_method = TokenAuthMethod::ClientSecretBasic;
    let r = token_request(&cfg, "pw").unwrap();
    let v = r.headers()["authorization"].to_str().unwrap();
    assert_eq!(v, "Basic aWQ6cHc=");
}
