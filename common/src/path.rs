//! The one request-path normaliser: the gateway runs it before policy and forwards its
//! output, and `posternctl policy explain`/`policy test` run it on hypothetical requests, so
//! a rule is always evaluated against the path the gateway would see.

/// Why a path is refused (the gateway answers 400 before any policy runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub &'static str);

/// Canonical form of a request path, used before policy so rules see exactly the path the
/// upstream will get (RFC 3986 section 6.2.2): percent-encoded unreserved characters
/// (ALPHA, DIGIT, `-`, `.`, `_`, `~`) are decoded (`/%61dmin` is `/admin`), other escapes
/// keep their encoding with uppercase hex, `.`/`..` are resolved (never above `/`) and
/// duplicate slashes collapse. Refused, because upstreams disagree about what they mean:
/// encoded `/`, `\` and NUL, raw backslash and NUL, `;` raw or encoded (matrix parameters,
/// `..;/`), a double-encoded escape (`%25` followed by two hex digits, e.g. `%252e`) and a
/// `%` not followed by two hex digits. Idempotent. Takes the path only (no query).
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError("the path must start with '/'"));
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(PathError("backslashes and NUL are not allowed in paths"));
    }
    let mut out: Vec<String> = Vec::new();
    let mut trailing = false;
    for seg in path.split('/').skip(1) {
        let seg = canonical_segment(seg)?;
        trailing = false;
        match seg.as_str() {
            "" | "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            _ => out.push(seg),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if out.is_empty() || trailing {
        s.push('/');
    }
    Ok(s)
}

/// One path segment in canonical percent-encoding (see [`normalize`]).
fn canonical_segment(seg: &str) -> Result<String, PathError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => {
                return Err(PathError(
                    "';' (matrix parameters) is not allowed in paths: send parameters in the query string",
                ))
            }
            b'%' => {
                out.push_str(&seg[run..i]);
                let byte = match (hex_digit(bytes.get(i + 1)), hex_digit(bytes.get(i + 2))) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => {
                        return Err(PathError(
                            "'%' in a path must start an escape of two hex digits: encode a literal '%' as %25",
                        ))
                    }
                };
                match byte {
                    b'/' | b'\\' | 0 => {
                        return Err(PathError(
                            "encoded '/', '\\' or NUL is not allowed in paths",
                        ))
                    }
                    b';' => {
                        return Err(PathError(
                            "encoded ';' is not allowed in paths: send parameters in the query string",
                        ))
                    }
                    b if is_unreserved(b) => out.push(b as char),
                    b => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
                        out.push(char::from(HEX_UPPER[usize::from(b & 0xf)]));
                    }
                }
                i += 3;
                run = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&seg[run..]);
    if out
        .as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit())
    {
        return Err(PathError(
            "double percent-encoding (such as %252e) is not allowed in paths: encode once",
        ));
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_digit(b: Option<&u8>) -> Option<u8> {
    match *b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 section 2.3: characters whose percent-encoding means the same as the character.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}
