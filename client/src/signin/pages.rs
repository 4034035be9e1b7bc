//! What the loopback listener answers the browser: complete HTTP/1.1 responses with a small
//! HTML page. The page sits on a URL that carried a one-time code, so it is never cached,
//! never sends a referrer and loads nothing.

/// A complete response: status line, headers, body; the connection is closed after it.
pub fn response(status: u16, title: &str, message: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let body = page(title, message);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         Referrer-Policy: no-referrer\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The browser's answer once the session is saved.
pub fn signed_in(domain: &str, user: &str) -> Vec<u8> {
    response(
        200,
        "Signed in",
        &format!(
            "Signed in to {} as {}. You can close this tab and return to the terminal.",
            escape(domain),
            escape(user)
        ),
    )
}

/// The browser's answer when the sign-in failed; `detail` is shown escaped.
pub fn failed(status: u16, detail: &str) -> Vec<u8> {
    response(
        status,
        "Sign-in failed",
        &format!(
            "{}<br><br>The terminal says what to do next. You can close this tab.",
            escape(detail)
        ),
    )
}

fn page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Postern: {title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;\
         padding:0 1rem;line-height:1.5;color:#1b1b1b}}h1{{font-size:1.4rem}}</style>\
         </head><body><main><h1>{title}</h1><p>{message}</p></main></body></html>\n",
        title = escape(title)
    )
}

/// HTML-escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_complete_uncached_and_escaped() {
        let r = String::from_utf8(failed(400, "<script>alert(1)</script> & \"x\"")).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("Cache-Control: no-store"));
        assert!(head.contains("Referrer-Policy: no-referrer"));
        assert!(head.contains("Connection: close"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
    }

    #[test]
    fn the_success_page_names_the_user() {
        let r = String::from_utf8(signed_in("gw.example.com", "ann<")).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Signed in to gw.example.com as ann&lt;."), "{r}");
        assert!(r.contains("close this tab"));
    }
}
