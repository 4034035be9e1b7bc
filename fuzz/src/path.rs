//! `normalize_path`, which decides what path policy sees and the upstream gets.
//!
//! Properties: a normalised path starts with `/`, has no empty, `.` or `..` segment (none
//! encoded either), no encoded `/`, `\` or NUL, and normalising it again changes nothing.
//! Once `normalize_path` decodes percent-encoded unreserved characters (RFC 3986 section
//! 6.2.2.2, so `/%61dmin` is `/admin` for policy and upstream alike), none is left encoded.

use postern_gateway::proxy::rewrite::normalize_path;

/// Whether this build's `normalize_path` decodes unreserved characters (checked once), so
/// the property holds from the moment that behaviour lands.
fn decodes_unreserved() -> bool {
    static DECODES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DECODES.get_or_init(|| normalize_path("/%61").ok().as_deref() == Some("/a"))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The byte of each `%XX` escape in `s`.
fn escapes(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.as_bytes().windows(3).filter_map(|w| {
        let hex = std::str::from_utf8(&w[1..]).ok()?;
        (w[0] == b'%')
            .then(|| u8::from_str_radix(hex, 16).ok())
            .flatten()
    })
}

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = normalize_path(input) else {
        return;
    };
    assert!(out.starts_with('/'), "{input:?} -> {out:?}");
    let segments: Vec<&str> = out[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
        let last = i + 1 == segments.len();
        assert!(
            !decoded.is_empty() || last,
            "empty segment: {input:?} -> {out:?}"
        );
        assert!(
            decoded != b"." && decoded != b"..",
            "dot segment survives: {input:?} -> {out:?}"
        );
        assert!(
            !decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)),
            "encoded separator survives: {input:?} -> {out:?}"
        );
    }
    if decodes_unreserved() {
        assert!(
            !escapes(&out).any(is_unreserved),
            "encoded unreserved character survives: {input:?} -> {out:?}"
        );
    }
    let again = normalize_path(&out).ok();
    assert_eq!(again.as_ref(), Some(&out), "not idempotent for {input:?}");
}
