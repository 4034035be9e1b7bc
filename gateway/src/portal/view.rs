//! The portal page as a pure function of [`PortalView`]: who is signed in, the Services they
//! may use, recent requests and token usage. Tests render it without a gateway.

use super::chart::{swatch, usage_svg, DailyUsage};
use super::html::{escape, page};
use std::fmt::Write;

/// Everything the portal shows, as plain values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortalView {
    pub user: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// The IdentityProvider that signed this session in (its displayName or name).
    pub identity_provider: Option<String>,
    /// RFC 3339 UTC.
    pub session_expires: String,
    /// Admins see everyone's requests and usage.
    pub is_admin: bool,
    /// The gateway's domain, for the `postern login` line.
    pub domain: String,
    pub services: Vec<ServiceItem>,
    /// Newest first.
    pub requests: Vec<RequestRow>,
    pub usage: UsageView,
}

/// One Service the person may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceItem {
    pub name: String,
    pub reach: Reach,
    /// `false` when a plain `GET /` (or a tunnel connection) is not allowed but some rule
    /// could allow other requests.
    pub allowed_for_plain_request: bool,
}

/// How a Service is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// `https://<svc>.<domain>[:port]/`.
    Public { url: String },
    /// Through the tunnel: the address inside it and the `postern connect` line.
    Private { address: String, connect: String },
}

/// One recent request, as the access log recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRow {
    pub time: String,
    pub user: Option<String>,
    pub service: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `allow` or `deny`, when policies decided.
    pub decision: Option<String>,
    pub model: Option<String>,
    pub tokens: Option<u64>,
}

/// Token usage over the last days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageView {
    /// Why usage cannot be shown (accounting off, store error); `None` when it can.
    pub unavailable: Option<String>,
    pub daily: DailyUsage,
    /// Where the numbers come from, shown under the chart.
    pub source: String,
    /// Admins: the total per user over the same days, largest first.
    pub by_user: Vec<(String, u64)>,
}

/// The portal page's HTML.
pub fn render_portal(v: &PortalView) -> String {
    let mut b = String::with_capacity(8192);
    let _ = write!(b, "<h1>Welcome, {}</h1>", escape(&v.user));
    who(&mut b, v);
    services(&mut b, v);
    requests(&mut b, v);
    usage(&mut b, v);
    page("Portal", Some(&v.user), &b)
}

fn who(b: &mut String, v: &PortalView) {
    b.push_str("<section aria-labelledby=\"who\"><h2 id=\"who\">Your account</h2><dl>");
    let _ = write!(b, "<dt>User</dt><dd>{}</dd>", escape(&v.user));
    let email = v.email.as_deref().map(escape);
    let _ = write!(
        b,
        "<dt>Email</dt><dd>{}</dd>",
        email
            .as_deref()
            .unwrap_or("<span class=\"muted\">none</span>")
    );
    let groups = if v.groups.is_empty() {
        "<span class=\"muted\">none</span>".to_string()
    } else {
        v.groups
            .iter()
            .map(|g| escape(g))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(b, "<dt>Groups</dt><dd>{groups}</dd>");
    let idp = v.identity_provider.as_deref().map(escape);
    let _ = write!(
        b,
        "<dt>Signed in with</dt><dd>{}</dd>",
        idp.as_deref()
            .unwrap_or("<span class=\"muted\">a Postern credential</span>")
    );
    let _ = write!(
        b,
        "<dt>Session expires</dt><dd><time datetime=\"{0}\">{1}</time></dd>",
        escape(&v.session_expires),
        escape(&v.session_expires.replace('T', " ").replace('Z', " UTC"))
    );
    if v.is_admin {
        b.push_str("<dt>Role</dt><dd>administrator (you see everyone's requests and usage)</dd>");
    }
    b.push_str("</dl></section>");
}

fn services(b: &mut String, v: &PortalView) {
    b.push_str("<section aria-labelledby=\"svcs\"><h2 id=\"svcs\">Your Services</h2>");
    if v.services.is_empty() {
        b.push_str(
            "<p>No Service allows you yet. Ask an administrator for access \
             (a Policy that allows your User or one of your Groups).</p></section>",
        );
        return;
    }
    let (public, private): (Vec<_>, Vec<_>) = v
        .services
        .iter()
        .partition(|s| matches!(s.reach, Reach::Public { .. }));
    if !public.is_empty() {
        b.push_str("<h3>In the browser</h3><ul class=\"plain\">");
        for s in public {
            if let Reach::Public { url } = &s.reach {
                let _ = write!(
                    b,
                    "<li><a href=\"{0}\">{1}</a> <span class=\"muted\">{0}</span>{2}</li>",
                    escape(url),
                    escape(&s.name),
                    partial_note(s)
                );
            }
        }
        b.push_str("</ul>");
    }
    if !private.is_empty() {
        let _ = write!(
            b,
            "<h3>Through the tunnel</h3><p>Sign in once with <code>postern login --domain {}</code>, \
             then run the line shown (or <code>sudo postern connect</code> to reach every \
             address directly).</p><ul class=\"plain\">",
            escape(&v.domain)
        );
        for s in private {
            if let Reach::Private { address, connect } = &s.reach {
                let _ = write!(
                    b,
                    "<li><strong>{}</strong> at <code>{}</code>{}<br><code>{}</code></li>",
                    escape(&s.name),
                    escape(address),
                    partial_note(s),
                    escape(connect)
                );
            }
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
}

fn partial_note(s: &ServiceItem) -> &'static str {
    if s.allowed_for_plain_request {
        ""
    } else {
        " <span class=\"muted\">(only some requests are allowed)</span>"
    }
}

fn requests(b: &mut String, v: &PortalView) {
    let title = if v.is_admin {
        "Recent requests (everyone)"
    } else {
        "Your recent requests"
    };
    let _ = write!(
        b,
        "<section aria-labelledby=\"reqs\"><h2 id=\"reqs\">{title}</h2>"
    );
    if v.requests.is_empty() {
        b.push_str("<p>No requests since the gateway started.</p></section>");
        return;
    }
    b.push_str(&scroll_open("Recent requests"));
    b.push_str("<table><caption>Newest first</caption><thead><tr>");
    b.push_str("<th scope=\"col\">Time (UTC)</th>");
    if v.is_admin {
        b.push_str("<th scope=\"col\">User</th>");
    }
    b.push_str(
        "<th scope=\"col\">Service</th><th scope=\"col\">Request</th>\
         <th scope=\"col\" class=\"num\">Status</th><th scope=\"col\">Decision</th>\
         <th scope=\"col\">Model</th><th scope=\"col\" class=\"num\">Tokens</th></tr></thead><tbody>",
    );
    let dash = |o: &Option<String>| o.as_deref().map(escape).unwrap_or_else(|| "-".into());
    for r in &v.requests {
        let _ = write!(b, "<tr><td>{}</td>", escape(&short_time(&r.time)));
        if v.is_admin {
            let _ = write!(b, "<td>{}</td>", dash(&r.user));
        }
        let _ = write!(
            b,
            "<td>{}</td><td>{} {}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            dash(&r.service),
            escape(&r.method),
            escape(&ellipsize(&r.path, 80)),
            r.status,
            dash(&r.decision),
            dash(&r.model),
            r.tokens.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        );
    }
    b.push_str("</tbody></table></div></section>");
}

fn usage(b: &mut String, v: &PortalView) {
    let u = &v.usage;
    let days = u.daily.days.len();
    let title = if v.is_admin {
        format!("LLM token usage, last {days} days (everyone)")
    } else {
        format!("Your LLM token usage, last {days} days")
    };
    let _ = write!(
        b,
        "<section aria-labelledby=\"usage\"><h2 id=\"usage\">{}</h2>",
        escape(&title)
    );
    if let Some(why) = &u.unavailable {
        let _ = write!(b, "<p>{}</p></section>", escape(why));
        return;
    }
    if !u.source.is_empty() {
        let _ = write!(b, "<p class=\"muted\">{}</p>", escape(&u.source));
    }
    b.push_str(&usage_svg(&u.daily));
    if !u.daily.is_empty() {
        b.push_str(&scroll_open("Tokens per day and model"));
        b.push_str("<table><caption>Tokens per day and model</caption><thead><tr><th scope=\"col\">Model</th>");
        for d in &u.daily.days {
            let _ = write!(
                b,
                "<th scope=\"col\" class=\"num\">{}</th>",
                escape(d.get(5..).unwrap_or(d))
            );
        }
        b.push_str("<th scope=\"col\" class=\"num\">Total</th></tr></thead><tbody>");
        for (i, (model, values)) in u.daily.models.iter().enumerate() {
            let _ = write!(
                b,
                "<tr><th scope=\"row\">{}{}</th>",
                swatch(i),
                escape(model)
            );
            for n in values {
                let _ = write!(b, "<td class=\"num\">{n}</td>");
            }
            let total = values.iter().fold(0u64, |a, &n| a.saturating_add(n));
            let _ = write!(b, "<td class=\"num\">{total}</td></tr>");
        }
        b.push_str("</tbody></table></div>");
    }
    if v.is_admin && !u.by_user.is_empty() {
        b.push_str(&scroll_open("Tokens per user"));
        b.push_str("<table><caption>Tokens per user</caption><thead><tr><th scope=\"col\">User</th><th scope=\"col\" class=\"num\">Tokens</th></tr></thead><tbody>");
        for (user, n) in &u.by_user {
            let _ = write!(
                b,
                "<tr><th scope=\"row\">{}</th><td class=\"num\">{n}</td></tr>",
                escape(user)
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");
}

/// A sideways-scrolling box for a wide table, reachable and named for keyboard and screen
/// reader users.
fn scroll_open(label: &str) -> String {
    format!(
        "<div class=\"scroll\" role=\"region\" tabindex=\"0\" aria-label=\"{}\">",
        escape(label)
    )
}

/// `2026-11-20T10:11:12.345Z` as `11-20 10:11:12`.
fn short_time(t: &str) -> String {
    match (t.get(5..10), t.get(11..19)) {
        (Some(d), Some(h)) if t.len() >= 19 => format!("{d} {h}"),
        _ => t.to_string(),
    }
}

fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
