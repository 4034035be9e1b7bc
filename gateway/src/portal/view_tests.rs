//! The portal page rendered from plain views: content, the admin variant, and hostile
//! strings in every field.

use super::*;

fn sample() -> PortalView {
    PortalView {
        user: "alice".into(),
        email: Some("alice@example.com".into()),
        groups: vec!["dev".into(), "ops".into()],
        identity_provider: Some("Corp SSO".into()),
        session_expires: "2026-11-27T10:00:00Z".into(),
        is_admin: false,
        domain: "example.com".into(),
        services: vec![
            ServiceItem {
                name: "wiki".into(),
                reach: Reach::Public {
                    url: "https://wiki.example.com:8443/".into(),
                },
                allowed_for_plain_request: true,
            },
            ServiceItem {
                name: "db".into(),
                reach: Reach::Private {
                    address: "db.local:5432".into(),
                    connect: "postern connect --userspace -p 5432:db:5432".into(),
                },
                allowed_for_plain_request: false,
            },
        ],
        requests: vec![RequestRow {
            time: "2026-11-26T12:34:56.789Z".into(),
            user: Some("alice".into()),
            service: Some("ai".into()),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: 200,
            decision: Some("allow".into()),
            model: Some("gpt-x".into()),
            tokens: Some(42),
        }],
        usage: UsageView {
            unavailable: None,
            daily: DailyUsage {
                days: vec!["2026-11-25".into(), "2026-11-26".into()],
                models: vec![("gpt-x".into(), vec![10, 32])],
            },
            source: "from memory".into(),
            by_user: vec![("alice".into(), 42)],
        },
    }
}

#[test]
fn shows_who_the_person_is() {
    let html = render_portal(&sample());
    for part in [
        "<dt>User</dt><dd>alice</dd>",
        "<dt>Email</dt><dd>alice@example.com</dd>",
        "<dt>Groups</dt><dd>dev, ops</dd>",
        "<dt>Signed in with</dt><dd>Corp SSO</dd>",
        "<time datetime=\"2026-11-27T10:00:00Z\">2026-11-27 10:00:00 UTC</time>",
    ] {
        assert!(html.contains(part), "missing {part:?} in {html}");
    }
    assert!(!html.contains("administrator (you see"));
}

#[test]
fn lists_public_services_as_links_and_private_ones_with_the_connect_line() {
    let html = render_portal(&sample());
    assert!(html.contains("<a href=\"https://wiki.example.com:8443/\">wiki</a>"));
    assert!(html.contains("<code>postern connect --userspace -p 5432:db:5432</code>"));
    assert!(html.contains("<code>db.local:5432</code>"));
    assert!(html.contains("<code>postern login --domain example.com</code>"));
    // db is allowed for some requests only; wiki for a plain one.
    let db = &html[html.find("<strong>db</strong>").unwrap()..];
    assert!(db[..db.find("</li>").unwrap()].contains("only some requests"));
    let wiki = &html[html.find(">wiki</a>").unwrap()..];
    assert!(!wiki[..wiki.find("</li>").unwrap()].contains("only some requests"));
}

#[test]
fn no_service_says_whom_to_ask() {
    let mut v = sample();
    v.services.clear();
    assert!(render_portal(&v).contains("No Service allows you yet"));
}

#[test]
fn recent_requests_have_no_user_column_for_a_person_and_one_for_an_admin() {
    let html = render_portal(&sample());
    assert!(html.contains("Your recent requests"));
    assert!(!html.contains("<th scope=\"col\">User</th>"));
    assert!(html.contains(
        "<tr><td>11-26 12:34:56</td><td>ai</td><td>POST /v1/chat/completions</td><td class=\"num\">200</td><td>allow</td><td>gpt-x</td><td class=\"num\">42</td></tr>"
    ), "{html}");
    let mut admin = sample();
    admin.is_admin = true;
    let html = render_portal(&admin);
    assert!(html.contains("Recent requests (everyone)"));
    assert!(html.contains("<th scope=\"col\">User</th>"));
    assert!(html.contains("<tr><td>11-26 12:34:56</td><td>alice</td><td>ai</td>"));
    assert!(html.contains("<caption>Tokens per user</caption>"));
    assert!(html.contains("<tr><th scope=\"row\">alice</th><td class=\"num\">42</td></tr>"));
}

#[test]
fn usage_is_a_chart_and_a_table_of_the_same_numbers() {
    let html = render_portal(&sample());
    assert!(html.contains("Your LLM token usage, last 2 days"));
    assert!(html.contains("<svg"));
    assert!(html.contains(
        "gpt-x</th><td class=\"num\">10</td><td class=\"num\">32</td><td class=\"num\">42</td></tr>"
    ));
    // The row's swatch has the colour of the model's bars.
    let row = &html[html.find("<tr><th scope=\"row\"><svg").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(&format!("fill=\"{}\"", crate::portal::chart::colour(0))));
    assert!(row.contains("aria-hidden=\"true\""));
    assert!(html.contains("role=\"region\" tabindex=\"0\" aria-label=\"Tokens per day and model\""));
    // The person does not see the per-user table even if the view had one.
    assert!(!html.contains("Tokens per user"));
}

#[test]
fn usage_unavailable_says_why_and_draws_nothing() {
    let mut v = sample();
    v.usage.unavailable = Some("Usage accounting is off in this gateway.".into());
    let html = render_portal(&v);
    assert!(html.contains("<p>Usage accounting is off in this gateway.</p>"));
    assert!(!html.contains("<svg"));
}

#[test]
fn no_requests_and_no_usage_say_so() {
    let mut v = sample();
    v.requests.clear();
    v.usage.daily.models.clear();
    let html = render_portal(&v);
    assert!(html.contains("No requests since the gateway started."));
    assert!(html.contains("no usage yet"));
    assert!(!html.contains("Tokens per day and model"));
}

#[test]
fn the_page_has_sign_out_as_a_post_form_and_a_link() {
    let html = render_portal(&sample());
    assert!(html.contains("<form class=\"inline\" method=\"post\" action=\"/logout\">"));
    assert!(html.contains("<a href=\"/logout\">"));
    assert!(!html.contains("<script"));
}

#[test]
fn hostile_strings_in_every_field_stay_text() {
    let evil = "\"'><script>alert(1)</script><img src=x onerror=alert(2)>";
    let s = || evil.to_string();
    let v = PortalView {
        user: s(),
        email: Some(s()),
        groups: vec![s()],
        identity_provider: Some(s()),
        session_expires: s(),
        is_admin: true,
        domain: s(),
        services: vec![
            ServiceItem {
                name: s(),
                reach: Reach::Public { url: s() },
                allowed_for_plain_request: false,
            },
            ServiceItem {
                name: s(),
                reach: Reach::Private {
                    address: s(),
                    connect: s(),
                },
                allowed_for_plain_request: true,
            },
        ],
        requests: vec![RequestRow {
            time: s(),
            user: Some(s()),
            service: Some(s()),
            method: s(),
            path: s(),
            status: 403,
            decision: Some(s()),
            model: Some(s()),
            tokens: None,
        }],
        usage: UsageView {
            unavailable: None,
            daily: DailyUsage {
                days: vec![s()],
                models: vec![(s(), vec![5])],
            },
            source: s(),
            by_user: vec![(s(), 5)],
        },
    };
    let html = render_portal(&v);
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("\"'>"), "{html}");
    assert!(html.contains("&quot;&#39;&gt;&lt;script&gt;"));
    // Only the page's own elements: every `<` opens a tag this module writes.
    let allowed = [
        "!doctype", "html", "head", "meta", "title", "style", "body", "header", "p", "div",
        "strong", "form", "button", "main", "h1", "h2", "h3", "section", "dl", "dt", "dd", "span",
        "time", "ul", "li", "a", "code", "br", "table", "caption", "thead", "tbody", "tr", "th",
        "td", "svg", "desc", "line", "text", "rect", "footer",
    ];
    for tag in html.split('<').skip(1) {
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
            .collect::<String>()
            .to_ascii_lowercase();
        assert!(
            allowed.contains(&name.as_str()),
            "unexpected <{name} in {html}"
        );
    }
}

#[test]
fn long_paths_are_shortened() {
    let mut v = sample();
    v.requests[0].path = format!("/{}", "a".repeat(300));
    let html = render_portal(&v);
    assert!(html.contains(&format!("/{}…", "a".repeat(78))));
    assert!(!html.contains(&"a".repeat(100)));
}

/// Checks that every element opened in `html` is closed in order (void and self-closed
/// elements aside), so a change cannot leave a table or section open.
fn assert_balanced(html: &str) {
    const VOID: [&str; 3] = ["meta", "br", "!doctype"];
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').expect("a tag is closed by >");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = open.pop();
            assert_eq!(top.as_deref(), Some(name), "</{name}> closes {top:?}");
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect::<String>()
            .to_ascii_lowercase();
        if VOID.contains(&name.as_str()) || tag.ends_with('/') {
            continue;
        }
        if name == "style" {
            let close = rest.find("</style>").expect("style is closed");
            rest = &rest[close + "</style>".len()..];
            continue;
        }
        open.push(name);
    }
    assert!(open.is_empty(), "left open: {open:?}");
}

#[test]
fn every_page_is_well_nested() {
    let mut admin = sample();
    admin.is_admin = true;
    assert_balanced(&render_portal(&sample()));
    assert_balanced(&render_portal(&admin));
    let mut empty = sample();
    empty.services.clear();
    empty.requests.clear();
    empty.usage.daily.models.clear();
    assert_balanced(&render_portal(&empty));
    use crate::portal::signin::*;
    assert_balanced(&render_choice(&ChoiceView {
        providers: vec![ProviderChoice {
            name: "a".into(),
            display_name: "A".into(),
        }],
        return_url: None,
        carry: vec![],
    }));
    assert_balanced(&render_choice(&ChoiceView::default()));
    for p in [
        SignInProblem::UnknownEmail { email: "e".into() },
        SignInProblem::DisabledUser { user: "u".into() },
        SignInProblem::Refused { reason: "r".into() },
        SignInProblem::Failed { reason: "r".into() },
        SignInProblem::NoIdentityProvider,
        SignInProblem::BadReturnAddress { url: "u".into() },
    ] {
        assert_balanced(&render_problem(&p, Some("/login")));
    }
    assert_balanced(&render_signed_out("/login"));
}

#[test]
fn the_balance_check_catches_an_unclosed_element() {
    let r = std::panic::catch_unwind(|| assert_balanced("<main><table></main>"));
    assert!(r.is_err());
}
