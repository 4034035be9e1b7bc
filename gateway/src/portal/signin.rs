//! The pages around signing in: the identity-provider choice, the refusals and failures,
//! and the signed-out page. Pure functions of plain values; the response builders in
//! `portal::pages` wrap them.

use super::html::{escape, page};
use std::fmt::Write;
use url::form_urlencoded;

/// One IdentityProvider on the choice page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderChoice {
    /// `metadata.name`, sent back as `idp=`.
    pub name: String,
    /// `spec.displayName`, what people read.
    pub display_name: String,
}

/// The identity-provider choice page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChoiceView {
    pub providers: Vec<ProviderChoice>,
    /// Where to go after signing in (`rd`), passed through as given.
    pub return_url: Option<String>,
    /// Extra query parameters to carry to `/login` (the CLI flow's `cli_redirect`,
    /// `cli_state`, `cli_challenge`), in order.
    pub carry: Vec<(String, String)>,
}

/// The `/login` link for one provider: `idp`, then `rd`, then the carried parameters, each
/// percent-encoded (the caller HTML-escapes the whole link).
pub fn login_link(idp: &str, return_url: Option<&str>, carry: &[(String, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("idp", idp);
    if let Some(rd) = return_url {
        q.append_pair("rd", rd);
    }
    for (k, v) in carry {
        q.append_pair(k, v);
    }
    format!("/login?{}", q.finish())
}

/// The choice page's HTML: one link per provider, by display name.
pub fn render_choice(v: &ChoiceView) -> String {
    let mut b = String::from("<h1>Sign in</h1>");
    if v.providers.is_empty() {
        b.push_str("<p>No identity provider is configured.</p>");
        return page("Sign in", None, &b);
    }
    b.push_str(
        "<p>Choose how to sign in:</p><nav aria-label=\"Identity providers\"><ul class=\"plain\">",
    );
    for p in &v.providers {
        let href = login_link(&p.name, v.return_url.as_deref(), &v.carry);
        let _ = write!(
            b,
            "<li><a href=\"{}\">{}</a></li>",
            escape(&href),
            escape(&p.display_name)
        );
    }
    b.push_str("</ul></nav>");
    page("Sign in", None, &b)
}

/// Why a sign-in page is shown instead of the Service or portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInProblem {
    /// The verified email matches no User's `spec.email`.
    UnknownEmail { email: String },
    /// The User exists but `spec.isDisabled` is set.
    DisabledUser { user: String },
    /// Another refusal a new sign-in cannot fix (no or unverified email, a WORKLOAD User);
    /// `reason` says which and what to do.
    Refused { reason: String },
    /// The flow failed; a short reason from the caller (bad state, provider error, ...).
    Failed { reason: String },
    /// No IdentityProvider is declared.
    NoIdentityProvider,
    /// `rd` is not the gateway's domain or one of its subdomains.
    BadReturnAddress { url: String },
}

impl SignInProblem {
    /// The status code the page is sent with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            SignInProblem::UnknownEmail { .. }
            | SignInProblem::DisabledUser { .. }
            | SignInProblem::Refused { .. } => http::StatusCode::FORBIDDEN,
            SignInProblem::Failed { .. } | SignInProblem::BadReturnAddress { .. } => {
                http::StatusCode::BAD_REQUEST
            }
            SignInProblem::NoIdentityProvider => http::StatusCode::NOT_FOUND,
        }
    }
}

/// The error page for `problem`. `retry` is the link offered to start again (for example
/// `/login` or `/login?rd=...`); none for problems a retry cannot fix.
pub fn render_problem(problem: &SignInProblem, retry: Option<&str>) -> String {
    let (title, body) = match problem {
        SignInProblem::UnknownEmail { email } => (
            "No Postern account",
            format!(
                "<p><strong>{0}</strong> has no Postern account; ask an administrator to add \
                 a User with <code>spec.email: {0}</code>.</p>",
                escape(email)
            ),
        ),
        SignInProblem::DisabledUser { user } => (
            "Account disabled",
            format!(
                "<p>The Postern User <strong>{}</strong> is disabled; ask an administrator to \
                 enable it (remove <code>spec.isDisabled</code>).</p>",
                escape(user)
            ),
        ),
        SignInProblem::Refused { reason } => (
            "Sign-in refused",
            format!(
                "<p>Postern did not sign you in: {}.</p><p>Ask an administrator if you \
                 think this is wrong.</p>",
                escape(reason.trim_end_matches('.'))
            ),
        ),
        SignInProblem::Failed { reason } => (
            "Sign-in failed",
            format!(
                "<p>Signing in did not complete: {}.</p><p>Start again; if it keeps failing, \
                 tell an administrator the time and this message.</p>",
                escape(reason.trim_end_matches('.'))
            ),
        ),
        SignInProblem::NoIdentityProvider => (
            "No identity provider",
            "<p>This gateway has no identity provider configured, so people cannot sign in \
             with a browser. An administrator can add one with \
             <code>kind: IdentityProvider</code>; until then use <code>postern login \
             --auth-token</code>.</p>"
                .to_string(),
        ),
        SignInProblem::BadReturnAddress { url } => (
            "Bad return address",
            format!(
                "<p>After signing in you can only be sent back to this gateway's domain or \
                 one of its subdomains over HTTPS, not to <code>{}</code>.</p>",
                escape(url)
            ),
        ),
    };
    let mut b = format!("<h1>{title}</h1><div class=\"error\" role=\"alert\">{body}</div>");
    let retry = match problem {
        SignInProblem::Failed { .. } | SignInProblem::BadReturnAddress { .. } => retry,
        _ => None,
    };
    if let Some(href) = retry {
        let _ = write!(b, "<p><a href=\"{}\">Sign in again</a></p>", escape(href));
    }
    page(title, None, &b)
}

/// The page after signing out. `sign_in` is the link to sign in again.
pub fn render_signed_out(sign_in: &str) -> String {
    let b = format!(
        "<h1>Signed out</h1><p>Your session has ended on the gateway; this browser no longer \
         has access.</p><p><a href=\"{}\">Sign in again</a></p>",
        escape(sign_in)
    );
    page("Signed out", None, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(name: &str, display: &str) -> ProviderChoice {
        ProviderChoice {
            name: name.into(),
            display_name: display.into(),
        }
    }

    #[test]
    fn the_choice_page_links_each_provider_with_the_return_url() {
        let v = ChoiceView {
            providers: vec![choice("corp-sso", "Corp SSO"), choice("google", "Google")],
            return_url: Some("https://app.example.com/a?b=1&c=<x>".into()),
            carry: vec![],
        };
        let html = render_choice(&v);
        assert!(html.contains(
            "<a href=\"/login?idp&#61;corp-sso&amp;rd&#61;https%3A%2F%2Fapp.example.com%2Fa%3Fb%3D1%26c%3D%3Cx%3E\">Corp SSO</a>"
        ), "{html}");
        assert!(html.contains(">Google</a>"));
        assert!(!html.contains("<x>"));
        assert!(!html.contains("/logout"));
    }

    #[test]
    fn the_choice_page_escapes_hostile_names_and_urls() {
        let v = ChoiceView {
            providers: vec![choice("a\"><script>", "<img src=x onerror=alert(1)>")],
            return_url: Some("javascript:alert(1)\"><script>".into()),
            carry: vec![("cli_state".into(), "\"'<>".into())],
        };
        let html = render_choice(&v);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src&#61;x onerror&#61;alert(1)&gt;"));
        // The return URL is a query value, never the link itself.
        assert!(html.contains("href=\"/login?idp&#61;"));
        assert!(html.contains("cli_state&#61;%22%27%3C%3E"));
    }

    #[test]
    fn login_links_carry_the_cli_parameters() {
        let carry = vec![
            (
                "cli_redirect".to_string(),
                "http://127.0.0.1:5000/cb".to_string(),
            ),
            ("cli_state".to_string(), "s t".to_string()),
        ];
        assert_eq!(
            login_link("okta", None, &carry),
            "/login?idp=okta&cli_redirect=http%3A%2F%2F127.0.0.1%3A5000%2Fcb&cli_state=s+t"
        );
        let parsed: Vec<(String, String)> = form_urlencoded::parse(
            login_link("a&b=c", Some("https://x.example.com/?q=1#f"), &[])
                .trim_start_matches("/login?")
                .as_bytes(),
        )
        .into_owned()
        .collect();
        assert_eq!(
            parsed,
            vec![
                ("idp".to_string(), "a&b=c".to_string()),
                ("rd".to_string(), "https://x.example.com/?q=1#f".to_string())
            ]
        );
    }

    #[test]
    fn unknown_email_names_the_email_and_what_to_do() {
        let p = SignInProblem::UnknownEmail {
            email: "eve@example.com".into(),
        };
        let html = render_problem(&p, Some("/login"));
        assert!(html.contains(
            "<strong>eve@example.com</strong> has no Postern account; ask an administrator to add a User with <code>spec.email: eve@example.com</code>"
        ), "{html}");
        assert_eq!(p.status(), http::StatusCode::FORBIDDEN);
        // Signing in again would give the same answer.
        assert!(!html.contains("Sign in again"));
        let hostile = render_problem(
            &SignInProblem::UnknownEmail {
                email: "<script>@x".into(),
            },
            None,
        );
        assert!(!hostile.contains("<script"));
        assert!(hostile.contains("&lt;script&gt;@x"));
    }

    #[test]
    fn each_problem_has_its_page_and_status() {
        let disabled = SignInProblem::DisabledUser { user: "bob".into() };
        assert!(render_problem(&disabled, None).contains("<strong>bob</strong> is disabled"));
        assert_eq!(disabled.status(), http::StatusCode::FORBIDDEN);

        let failed = SignInProblem::Failed {
            reason: "the sign-in state did not match <this browser>.".into(),
        };
        let html = render_problem(&failed, Some("/login?rd=https%3A%2F%2Fa.example.com%2F"));
        assert!(html
            .contains("did not complete: the sign-in state did not match &lt;this browser&gt;."));
        assert!(html.contains(
            "<a href=\"/login?rd&#61;https%3A%2F%2Fa.example.com%2F\">Sign in again</a>"
        ));
        assert_eq!(failed.status(), http::StatusCode::BAD_REQUEST);

        let refused = SignInProblem::Refused {
            reason: "the identity provider says eve@example.com is not verified".into(),
        };
        let html = render_problem(&refused, Some("/login"));
        assert!(html.contains(
            "did not sign you in: the identity provider says eve@example.com is not verified."
        ));
        assert!(!html.contains("Sign in again"));
        assert_eq!(refused.status(), http::StatusCode::FORBIDDEN);

        let none = SignInProblem::NoIdentityProvider;
        assert!(render_problem(&none, None).contains("kind: IdentityProvider"));
        assert_eq!(none.status(), http::StatusCode::NOT_FOUND);

        let bad = SignInProblem::BadReturnAddress {
            url: "https://evil.example.net/\"><b>".into(),
        };
        let html = render_problem(&bad, None);
        assert!(html.contains("<code>https://evil.example.net/&quot;&gt;&lt;b&gt;</code>"));
        assert!(!html.contains("<b>"));
        assert_eq!(bad.status(), http::StatusCode::BAD_REQUEST);
        for p in [disabled, refused, failed, none, bad] {
            assert!(render_problem(&p, None).contains("role=\"alert\""));
        }
    }

    #[test]
    fn the_signed_out_page_offers_to_sign_in_again() {
        let html = render_signed_out("/login?rd=https%3A%2F%2Fexample.com%2F");
        assert!(html.contains("<h1>Signed out</h1>"));
        assert!(html
            .contains("<a href=\"/login?rd&#61;https%3A%2F%2Fexample.com%2F\">Sign in again</a>"));
        assert!(!html.contains("action=\"/logout\""));
        assert!(render_signed_out("\"><script>").contains("&quot;&gt;&lt;script&gt;"));
    }

    #[tokio::test]
    async fn the_page_responses_carry_status_headers_and_body() {
        use http_body_util::BodyExt;
        let body = |r: http::Response<crate::proxy::BoxBody>| async move {
            let b = r.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(b.to_vec()).unwrap()
        };
        let r = crate::portal::failure_page(
            http::StatusCode::BAD_GATEWAY,
            "cannot reach <idp>",
            Some(&crate::portal::sign_in_link("https://example.com/")),
        );
        assert_eq!(r.status(), http::StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let html = body(r).await;
        assert!(html.contains("cannot reach &lt;idp&gt;"));
        assert!(html.contains("href=\"/login?rd&#61;https%3A%2F%2Fexample.com%2F\""));

        let r = crate::portal::problem_page(
            &SignInProblem::UnknownEmail {
                email: "e@x".into(),
            },
            None,
        );
        assert_eq!(r.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert!(body(r)
            .await
            .contains("e@x</strong> has no Postern account"));

        let r = crate::portal::choice_page(
            &[choice("a", "A")],
            None,
            &[("rd".into(), "https://example.com/".into())],
        );
        assert_eq!(r.status(), http::StatusCode::OK);
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert!(body(r)
            .await
            .contains("/login?idp&#61;a&amp;rd&#61;https%3A%2F%2Fexample.com%2F"));
        assert_eq!(
            crate::portal::choice_page(&[], None, &[]).status(),
            http::StatusCode::NOT_FOUND
        );

        let r = crate::portal::signed_out_page("/login");
        assert_eq!(r.status(), http::StatusCode::OK);
        assert!(body(r).await.contains("Sign in again"));
    }

    #[test]
    fn an_empty_choice_says_no_provider() {
        let html = render_choice(&ChoiceView::default());
        assert!(html.contains("No identity provider is configured."));
    }
}
