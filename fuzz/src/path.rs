//! `normalize_path`, which decides what path policy sees and the upstream gets.
//!
//! Properties: a normalised path starts with `/`, has no empty, `.` or `..` segment (none
//! encoded either), no encoded `/`, `\` or NUL, and normalising it again changes nothing.

use postern_gateway::proxy::rewrite::normalize_path;

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
    let again = normalize_path(&out).ok();
    assert_eq!(again.as_ref(), Some(&out), "not idempotent for {input:?}");
}
