//! Reading the `Cookie` header and writing `Set-Cookie` for the gateway's own cookies.
//! Only what the browser sign-in needs, strictly bounded: a stranger's header never costs
//! more than one pass over bytes hyper already limited.

use http::header::{HeaderMap, HeaderValue, COOKIE};

/// The browser Session cookie, scoped to `.<domain>` so every Service sees it.
pub const SESSION_COOKIE: &str = "postern_session";

/// The value of cookie `name` from the request's `Cookie` headers (the first one), if any.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a cookie the browser sends back over HTTPS only and scripts cannot read.
/// `domain` widens it to every subdomain; `max_age` 0 deletes it.
pub fn set(name: &str, value: &str, domain: Option<&str>, max_age: u64) -> HeaderValue {
    let domain = domain.map(|d| format!("; Domain={d}")).unwrap_or_default();
    let v = format!(
        "{name}={value}{domain}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
    );
    HeaderValue::from_str(&v).expect("cookie names and values are header-safe")
}

/// `Set-Cookie` that removes cookie `name`.
pub fn clear(name: &str, domain: Option<&str>) -> HeaderValue {
    set(name, "", domain, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_many() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; postern_session=tok"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(get(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(get(&h, "b"), Some("2"));
        assert_eq!(get(&h, "postern"), None);
        assert_eq!(get(&h, "c"), None);
    }

    #[test]
    fn set_cookie_attributes() {
        let v = set(SESSION_COOKIE, "t", Some("example.test"), 60);
        assert_eq!(
            v.to_str().unwrap(),
            "postern_session=t; Domain=example.test; Path=/; Max-Age=60; Secure; HttpOnly; SameSite=Lax"
        );
        assert!(clear("x", None).to_str().unwrap().contains("Max-Age=0"));
    }
}
