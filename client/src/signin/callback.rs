//! The loopback redirect's protocol, over bytes: where a request head ends, and what a
//! request means. Only `GET /callback` carrying this login's `state` counts; everything else
//! (a favicon, a stranger's probe, a stale tab) is answered and ignored, so it can neither
//! finish nor abort the waiting login.

use super::pages;
use super::urls::CALLBACK_PATH;
use subtle::ConstantTimeEq;

/// The largest request head accepted; a real redirect is far smaller.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How much of a request has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// No blank line yet: read more.
    Incomplete,
    /// The head is the first `len` bytes (including the blank line).
    Complete(usize),
    /// [`MAX_REQUEST_BYTES`] without a blank line.
    TooLarge,
}

/// Finds the end of the request head in what has been read so far.
pub fn find_head(buf: &[u8]) -> Head {
    let limit = buf.len().min(MAX_REQUEST_BYTES);
    match buf[..limit].windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => Head::Complete(i + 4),
        None if buf.len() >= MAX_REQUEST_BYTES => Head::TooLarge,
        None => Head::Incomplete,
    }
}

/// What the gateway sent back through the browser, with the right `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    /// A one-time code to redeem at `/oauth2/token`.
    Code(String),
    /// The gateway or the IdP refused (`error`, optional `error_description`).
    Error {
        error: String,
        description: Option<String>,
    },
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Send this response and keep waiting for the real callback.
    Ignore(Vec<u8>),
    /// The callback. The caller answers the browser once it knows how the login ended.
    Callback(Callback),
}

/// Interprets one request head (see [`find_head`]) for the login waiting with `state`.
pub fn handle(head: &[u8], state: &str) -> Handled {
    let reject = |status, detail: &str| Handled::Ignore(pages::failed(status, detail));
    let Some(line) = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return reject(400, "This is not an HTTP request.");
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return reject(400, "This is not an HTTP request.");
    };
    if !version.starts_with("HTTP/1.") {
        return reject(400, "This is not an HTTP/1 request.");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != CALLBACK_PATH {
        return Handled::Ignore(pages::response(404, "Not found", "Nothing here."));
    }
    let params = match Params::parse(query) {
        Ok(p) => p,
        Err(detail) => return reject(400, &detail),
    };
    let state_matches = params
        .state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(state.as_bytes())));
    if !state_matches {
        return reject(
            403,
            "This sign-in answer does not belong to the waiting `postern login` (its state \
             does not match). Use the sign-in link that `postern login` printed.",
        );
    }
    match (params.code, params.error) {
        (_, Some(error)) => Handled::Callback(Callback::Error {
            error,
            description: params.error_description,
        }),
        (Some(code), None) if !code.is_empty() => Handled::Callback(Callback::Code(code)),
        _ => reject(400, "The sign-in answer has neither a code nor an error."),
    }
}

/// The query parameters that matter; each may appear at most once.
#[derive(Default)]
struct Params {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Result<Params, String> {
        let mut p = Params::default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "code" => &mut p.code,
                "state" => &mut p.state,
                "error" => &mut p.error,
                "error_description" => &mut p.error_description,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(format!("The parameter {key:?} appears more than once."));
            }
        }
        Ok(p)
    }
}

/// `text` safe to print on a terminal: control characters (escape sequences, new lines) are
/// shown escaped instead of acting.
pub fn for_terminal(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "s3cr3t-state";

    fn get(target: &str) -> Handled {
        handle(
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n").as_bytes(),
            STATE,
        )
    }

    fn status(h: &Handled) -> String {
        match h {
            Handled::Ignore(r) => String::from_utf8_lossy(&r[..12]).into_owned(),
            Handled::Callback(c) => format!("{c:?}"),
        }
    }

    #[test]
    fn the_code_with_the_right_state_is_the_callback() {
        assert_eq!(
            get("/callback?code=abc%2B1&state=s3cr3t-state"),
            Handled::Callback(Callback::Code("abc+1".into()))
        );
        assert_eq!(
            get("/callback?state=s3cr3t-state&code=c&extra=1"),
            Handled::Callback(Callback::Code("c".into()))
        );
    }

    #[test]
    fn errors_with_the_right_state_end_the_login() {
        assert_eq!(
            get("/callback?error=access_denied&error_description=no+User+for+a%40b.c&state=s3cr3t-state"),
            Handled::Callback(Callback::Error {
                error: "access_denied".into(),
                description: Some("no User for a@b.c".into())
            })
        );
    }

    #[test]
    fn wrong_missing_or_repeated_state_is_refused() {
        for target in [
            "/callback?code=c&state=other",
            "/callback?code=c&state=s3cr3t-stat",
            "/callback?code=c",
            "/callback?error=access_denied&state=nope",
            "/callback?code=c&state=s3cr3t-state&state=s3cr3t-state",
            "/callback?code=c&code=d&state=s3cr3t-state",
        ] {
            let h = get(target);
            assert!(matches!(h, Handled::Ignore(_)), "{target}: {h:?}");
            assert!(
                status(&h) == "HTTP/1.1 403" || status(&h) == "HTTP/1.1 400",
                "{target}"
            );
        }
        assert_eq!(status(&get("/callback?state=s3cr3t-state")), "HTTP/1.1 400");
        assert_eq!(
            status(&get("/callback?code=&state=s3cr3t-state")),
            "HTTP/1.1 400"
        );
    }

    #[test]
    fn other_paths_and_methods_are_404() {
        for raw in [
            "GET /favicon.ico HTTP/1.1\r\n\r\n",
            "GET /callback/x?code=c&state=s3cr3t-state HTTP/1.1\r\n\r\n",
            "GET /?code=c&state=s3cr3t-state HTTP/1.1\r\n\r\n",
            "POST /callback?code=c&state=s3cr3t-state HTTP/1.1\r\n\r\n",
        ] {
            let h = handle(raw.as_bytes(), STATE);
            assert_eq!(status(&h), "HTTP/1.1 404", "{raw}");
        }
        for raw in [
            "\u{ff}\u{fe}\r\n\r\n",
            "GET /callback\r\n\r\n",
            "GET / SPDY/3\r\n\r\n",
        ] {
            let h = handle(raw.as_bytes(), STATE);
            assert_eq!(status(&h), "HTTP/1.1 400", "{raw:?}");
        }
    }

    #[test]
    fn request_heads_are_bounded() {
        assert_eq!(
            find_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Head::Incomplete
        );
        assert_eq!(find_head(b"GET / HTTP/1.1\r\n\r\nbody"), Head::Complete(18));
        let big = vec![b'a'; MAX_REQUEST_BYTES];
        assert_eq!(find_head(&big), Head::TooLarge);
        let mut late = vec![b'a'; MAX_REQUEST_BYTES];
        late.extend_from_slice(b"\r\n\r\n");
        assert_eq!(find_head(&late), Head::TooLarge);
    }

    #[test]
    fn terminal_text_cannot_carry_escape_sequences() {
        assert_eq!(
            for_terminal("denied\u{1b}[2J\nnext"),
            "denied\\u{1b}[2J\\nnext"
        );
        assert_eq!(for_terminal("plain é"), "plain é");
    }
}
