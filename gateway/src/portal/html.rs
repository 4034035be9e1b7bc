//! The pieces every page shares: the one escaping function all dynamic text goes through,
//! the page shell with its small inline stylesheet, and the response with the headers that
//! keep the pages out of caches, frames and other sites' referrers.

use crate::frontdoor::respond::full;
use crate::proxy::BoxBody;
use http::{header, HeaderValue, Response, StatusCode};
use std::fmt::Write;

/// The Content-Security-Policy of every page: no scripts, no frames, styles only inline,
/// forms (the sign-out button) only to the gateway itself.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Escapes `s` for HTML text and for double- or single-quoted attribute values.
///
/// Every string that does not come from this module's own literals goes through here, so a
/// user name, e-mail, model or path can never open a tag or leave an attribute. Control
/// characters other than tab, newline and carriage return become U+FFFD, as an HTML parser
/// would treat them, so none reach the browser raw.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '`' => out.push_str("&#96;"),
            '=' => out.push_str("&#61;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The stylesheet shared by all pages: system fonts, AA-contrast colours, one column that
/// fits a 320 px screen, tables that scroll sideways instead of overflowing.
const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;color:#1a1a1a;background:#fff}\
header,main,footer{max-width:60rem;margin:0 auto;padding:0 1rem}\
header{display:flex;flex-wrap:wrap;align-items:center;justify-content:space-between;gap:.5rem;border-bottom:1px solid #c8c8c8;padding-top:.5rem;padding-bottom:.5rem}\
header p{margin:0;font-weight:600}\
h1{font-size:1.5rem;margin:1rem 0 .5rem}\
h2{font-size:1.2rem;margin:1.5rem 0 .5rem}\
a{color:#0b57d0}\
a:focus,button:focus{outline:3px solid #1a1a1a;outline-offset:2px}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}\
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}\
ul.plain{list-style:none;padding:0}ul.plain li{margin:.5rem 0}\
code{font:.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f1f1f1;padding:.1em .3em;overflow-wrap:anywhere}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
caption{text-align:left;font-weight:600;padding:.25rem 0}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #dcdcdc;white-space:nowrap}\
td.num,th.num{text-align:right}\
.muted{color:#555}\
.error{border-left:4px solid #b3261e;padding:.25rem 1rem;background:#fdf1f0}\
button{font:inherit;padding:.4rem .9rem;border:1px solid #0b57d0;border-radius:4px;background:#0b57d0;color:#fff;cursor:pointer}\
form.inline{display:inline;margin:0}\
.chart{width:100%;max-width:40rem;height:auto}\
@media (max-width:30rem){dl{grid-template-columns:1fr}dd{margin-bottom:.5rem}}";

/// A whole page: `title` and `body` are HTML already (the caller escaped what it put in).
/// `signed_in` adds the header with the sign-out button and link.
pub fn page(title: &str, signed_in: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + STYLE.len() + 1024);
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str("<meta name=\"referrer\" content=\"no-referrer\">");
    let _ = write!(
        out,
        "<title>{title} · Postern</title><style>{STYLE}</style></head><body>"
    );
    out.push_str("<header><p>Postern</p>");
    if let Some(user) = signed_in {
        let _ = write!(
            out,
            "<div>Signed in as <strong>{}</strong> \
             <form class=\"inline\" method=\"post\" action=\"/logout\">\
             <button type=\"submit\">Sign out</button></form></div>",
            escape(user)
        );
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main>");
    if signed_in.is_some() {
        out.push_str(
            "<footer><p class=\"muted\">Sign-out button not working? \
             <a href=\"/logout\">Sign out with this link</a>.</p></footer>",
        );
    }
    out.push_str("</body></html>\n");
    out
}

/// The HTML response for a rendered page, with the headers every page carries.
pub fn response(status: StatusCode, html: String) -> Response<BoxBody> {
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &[&str] = &[
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "' onmouseover='alert(1)",
        "` onfocus=`x",
        "&lt;already escaped&gt;",
        "</title><script>",
        "<!--",
        "]]><svg onload=alert(1)>",
        "a\0b\u{1}c\u{7f}d\u{9b}e",
        "javascript:alert(1)",
        "\u{202e}reversed",
    ];

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&`=</a>"#),
            "&lt;a href&#61;&quot;x&quot; title&#61;&#39;y&#39;&gt;&amp;&#96;&#61;&lt;/a&gt;"
        );
        assert_eq!(escape(""), "");
        assert_eq!(escape("plain text, ünïcödé ✓"), "plain text, ünïcödé ✓");
        assert_eq!(escape("tab\tnl\ncr\r"), "tab\tnl\ncr\r");
    }

    #[test]
    fn escaped_text_never_contains_a_markup_character() {
        for s in HOSTILE {
            let e = escape(s);
            for bad in [
                '<', '>', '"', '\'', '`', '=', '\0', '\u{1}', '\u{7f}', '\u{9b}',
            ] {
                assert!(!e.contains(bad), "{s:?} escaped to {e:?} still has {bad:?}");
            }
            // Every `&` starts an entity this function wrote.
            for (i, _) in e.match_indices('&') {
                let rest = &e[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#96;", "&#61;"]
                        .iter()
                        .any(|ent| rest.starts_with(ent)),
                    "{e:?}"
                );
            }
        }
    }

    #[test]
    fn escaping_is_not_idempotent_so_double_escaping_shows() {
        // An already-escaped string is escaped again rather than trusted.
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn control_characters_become_the_replacement_character() {
        assert_eq!(escape("a\0b\u{1b}c"), "a\u{FFFD}b\u{FFFD}c");
    }

    #[test]
    fn the_page_escapes_the_signed_in_name_and_has_the_sign_out_form() {
        let html = page("T", Some("<b>eve</b>"), "<p>x</p>");
        assert!(html.contains("&lt;b&gt;eve&lt;/b&gt;"));
        assert!(!html.contains("<b>eve"));
        assert!(html.contains("method=\"post\" action=\"/logout\""));
        assert!(html.contains("href=\"/logout\""));
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("lang=\"en\""));
        assert!(html.contains("name=\"viewport\""));
        assert!(!html.contains("<script"));
        let anon = page("T", None, "");
        assert!(!anon.contains("/logout"));
    }

    #[test]
    fn responses_carry_the_security_headers() {
        let r = response(StatusCode::FORBIDDEN, page("T", None, ""));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let h = r.headers();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let csp = h["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "style-src 'unsafe-inline'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        assert!(!csp.contains("script-src"));
    }
}
