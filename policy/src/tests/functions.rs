//! The function library of `FUNCTIONS.md`: network, time, JSON and string functions, and
//! the compile-time size limits. Each table row is `(expression, expected)`, where
//! `Some(b)` is the boolean result and `None` an evaluation error (the condition matches
//! neither as `match` nor as `not`).

use std::net::IpAddr;

use chrono::{DateTime, TimeZone, Utc};
use http::{HeaderMap, HeaderValue};
use serde_json::json;

use super::{compile, m, not};
use crate::{
    CelValue, CompiledCondition, EvalContext, RequestFacts, MAX_AST_NODES, MAX_EXPRESSION_BYTES,
    MAX_NESTING, MAX_REGEX_BYTES,
};

/// Sunday 2026-03-01 22:30:15.250 UTC (Monday morning in Tokyo, still Sunday in Berlin).
fn sunday_night() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 22, 30, 15).unwrap() + chrono::Duration::milliseconds(250)
}

/// A context with client address `ip`, request time `now`, a JSON header `x-meta`, a
/// regex header `x-re` and two `x-tag` values; path `/v1/chat`.
fn ctx(
    ip: Option<&str>,
    now: Option<DateTime<Utc>>,
    re: &str,
    body: Option<serde_json::Value>,
) -> EvalContext {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-meta",
        HeaderValue::from_static(r#"{"tier":"gold","n":3,"tags":["a","b"]}"#),
    );
    headers.insert("x-re", HeaderValue::from_str(re).unwrap());
    headers.append("x-tag", HeaderValue::from_static("one"));
    headers.append("x-tag", HeaderValue::from_static("two"));
    let facts = RequestFacts {
        method: "GET",
        path: "/v1/chat",
        host: "api.example.com",
        scheme: "https",
        headers: &headers,
        query: None,
        body: body.as_ref(),
        size: 0,
        client_ip: ip.map(|s| s.parse::<IpAddr>().unwrap()),
        now,
    };
    let empty = CelValue::empty_map();
    EvalContext::new(&empty, &empty, &CelValue::empty_list(), &empty, &facts)
}

/// `Some(result)` of a boolean expression, `None` when it fails to evaluate.
fn outcome(expr: &str, c: &EvalContext) -> Option<bool> {
    let matched = compile(&m(expr)).evaluate(c);
    let negated = compile(&not(expr)).evaluate(c);
    match (matched, negated) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
        (true, true) => panic!("{expr}: matched both as match and as not"),
    }
}

fn check_table(c: &EvalContext, cases: &[(&str, Option<bool>)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(expr, want)| {
            let got = outcome(expr, c);
            (got != *want).then(|| format!("{expr}: expected {want:?}, got {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Compile errors of `expr` as a `match` at `spec.rules[0].condition`.
fn compile_errors(expr: &str) -> Vec<crate::CompileError> {
    match CompiledCondition::compile(&m(expr), "spec.rules[0].condition") {
        Ok(_) => Vec::new(),
        Err(e) => e,
    }
}

#[test]
fn ip_in_range_ipv4_client() {
    let c = ctx(Some("10.0.0.7"), None, "x", None);
    check_table(
        &c,
        &[
            (
                r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/8")"#,
                Some(true),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "10.0.0.7/32")"#,
                Some(true),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "10.0.0.4/30")"#,
                Some(true),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/30")"#,
                Some(false),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "10.9.9.9/8")"#,
                Some(true),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "0.0.0.0/0")"#,
                Some(true),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "192.168.0.0/16")"#,
                Some(false),
            ),
            (r#"net.isIPInRange(ctx.request.ip, "::/0")"#, Some(false)),
            (r#"isIPInRange(ctx.request.ip, "10.0.0.0/8")"#, Some(true)),
            (
                r#"net.isIPInRange("::ffff:10.0.0.7", "10.0.0.0/8")"#,
                Some(true),
            ),
            (
                r#"["10.0.0.0/8", "192.168.0.0/16"].exists(r, net.isIPInRange(ctx.request.ip, r))"#,
                Some(true),
            ),
            // Bad IPs and CIDRs: an error, neither true nor false.
            (r#"net.isIPInRange("10.0.0.300", "10.0.0.0/8")"#, None),
            (r#"net.isIPInRange("not an ip", "10.0.0.0/8")"#, None),
            (r#"net.isIPInRange("", "10.0.0.0/8")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/33")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "10.0.0.0")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "10.0.0/8")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/+8")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/-1")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "fd00::/129")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, "")"#, None),
            (r#"net.isIPInRange(ctx.request.ip, 8)"#, None),
            (r#"net.isIPInRange(ctx.request.ip)"#, None),
            (r#"net.isIPInRange(7, "10.0.0.0/8")"#, None),
        ],
    );
}

#[test]
fn ip_in_range_ipv6_and_missing_client() {
    let c = ctx(Some("2001:db8::1"), None, "x", None);
    check_table(
        &c,
        &[
            (
                r#"net.isIPInRange(ctx.request.ip, "2001:db8::/32")"#,
                Some(true),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "2001:db8::1/128")"#,
                Some(true),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "2001:db9::/32")"#,
                Some(false),
            ),
            (r#"net.isIPInRange(ctx.request.ip, "::/0")"#, Some(true)),
            (
                r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/8")"#,
                Some(false),
            ),
            (
                r#"net.isIPInRange(ctx.request.ip, "0.0.0.0/0")"#,
                Some(false),
            ),
            (r#"net.isPrivateIP(ctx.request.ip)"#, Some(false)),
        ],
    );
    // No client address: `ctx.request.ip` is missing, nothing matches.
    let c = ctx(None, None, "x", None);
    check_table(
        &c,
        &[
            (r#"net.isIPInRange(ctx.request.ip, "0.0.0.0/0")"#, None),
            (r#"net.isPrivateIP(ctx.request.ip)"#, None),
        ],
    );
}

#[test]
fn private_ip_ranges() {
    let c = ctx(Some("192.168.1.20"), None, "x", None);
    let cases: Vec<(String, Option<bool>)> = [
        ("10.1.2.3", Some(true)),
        ("172.16.0.1", Some(true)),
        ("172.31.255.255", Some(true)),
        ("172.32.0.1", Some(false)),
        ("192.168.1.1", Some(true)),
        ("192.169.0.1", Some(false)),
        ("127.0.0.1", Some(true)),
        ("127.255.0.9", Some(true)),
        ("169.254.1.1", Some(true)),
        ("8.8.8.8", Some(false)),
        ("100.64.0.1", Some(false)),
        ("0.0.0.0", Some(false)),
        ("::1", Some(true)),
        ("fe80::1", Some(true)),
        ("febf::1", Some(true)),
        ("fec0::1", Some(false)),
        ("fc00::1", Some(true)),
        ("fd12:3456::1", Some(true)),
        ("fe00::1", Some(false)),
        ("2001:db8::1", Some(false)),
        ("::", Some(false)),
        ("::ffff:192.168.0.1", Some(true)),
        ("::ffff:8.8.8.8", Some(false)),
        ("garbage", None),
        ("10.0.0.0/8", None),
        ("fe80::1%eth0", None),
    ]
    .into_iter()
    .map(|(ip, want)| (format!(r#"net.isPrivateIP("{ip}")"#), want))
    .collect();
    let mut cases: Vec<(&str, Option<bool>)> =
        cases.iter().map(|(e, w)| (e.as_str(), *w)).collect();
    cases.extend([
        ("net.isPrivateIP(ctx.request.ip)", Some(true)),
        ("isPrivateIP(ctx.request.ip)", Some(true)),
        ("!net.isPrivateIP(ctx.request.ip)", Some(false)),
        ("net.isPrivateIP(42)", None),
        ("net.isPrivateIP()", None),
    ]);
    check_table(&c, &cases);
}

#[test]
fn time_of_day_and_weekday_in_time_zones() {
    let c = ctx(None, Some(sunday_night()), "x", None);
    check_table(
        &c,
        &[
            ("now().getHours() == 22", Some(true)),
            (r#"now().getHours("UTC") == 22"#, Some(true)),
            (r#"now().getHours("Europe/Berlin") == 23"#, Some(true)),
            (r#"now().getHours("America/New_York") == 17"#, Some(true)),
            (r#"now().getHours("Asia/Tokyo") == 7"#, Some(true)),
            (r#"now().getMinutes() == 30"#, Some(true)),
            (r#"now().getMinutes("Asia/Kolkata") == 0"#, Some(true)),
            (r#"now().getSeconds() == 15"#, Some(true)),
            (r#"now().getMilliseconds() == 250"#, Some(true)),
            ("now().getDayOfWeek() == 0", Some(true)),
            (r#"now().getDayOfWeek("Europe/Berlin") == 0"#, Some(true)),
            (r#"now().getDayOfWeek("Asia/Tokyo") == 1"#, Some(true)),
            ("now().getDate() == 1", Some(true)),
            (r#"now().getDate("Asia/Tokyo") == 2"#, Some(true)),
            ("now().getDayOfMonth() == 0", Some(true)),
            ("now().getMonth() == 2", Some(true)),
            ("now().getDayOfYear() == 59", Some(true)),
            ("now().getFullYear() == 2026", Some(true)),
            (r#"now().getHours("+02:00") == 0"#, Some(true)),
            (r#"now().getHours("-08:00") == 14"#, Some(true)),
            (r#"now().getMinutes("+05:45") == 15"#, Some(true)),
            // Business hours in Berlin: Sunday night is outside.
            (
                r#"now().getDayOfWeek("Europe/Berlin") in [1, 2, 3, 4, 5] && now().getHours("Europe/Berlin") >= 9 && now().getHours("Europe/Berlin") < 18"#,
                Some(false),
            ),
            (r#"now() > timestamp("2026-03-01T22:00:00Z")"#, Some(true)),
            (r#"now() < timestamp("2026-03-01T22:00:00Z")"#, Some(false)),
            (
                r#"now() == timestamp("2026-03-01T22:30:15.250Z")"#,
                Some(true),
            ),
            // Summer time, and timestamps with an offset read in UTC by default.
            (
                r#"timestamp("2026-07-01T12:00:00Z").getHours("Europe/Berlin") == 14"#,
                Some(true),
            ),
            (
                r#"timestamp("2026-01-01T10:00:00+02:00").getHours() == 8"#,
                Some(true),
            ),
            (r#"duration("90m").getHours() == 1"#, Some(true)),
            (r#"duration("90m").getMinutes() == 90"#, Some(true)),
            (r#"duration("1.5s").getMilliseconds() == 1500"#, Some(true)),
            // Unknown or malformed time zones, bad arguments: errors.
            (r#"now().getHours("Mars/Olympus_Mons") == 1"#, None),
            (r#"now().getHours("europe/berlin") == 23"#, None),
            (r#"now().getHours("") == 22"#, None),
            (r#"now().getHours("+25:00") == 1"#, None),
            (r#"now().getHours("+2:00") == 0"#, None),
            (r#"now().getHours(1) == 22"#, None),
            (r#"now().getHours("UTC", "UTC") == 22"#, None),
            (r#"duration("1h").getDate() == 1"#, None),
            (r#"duration("1h").getHours("UTC") == 1"#, None),
            (r#""x".getHours() == 1"#, None),
            ("now(1) > now()", None),
        ],
    );
}

#[test]
fn now_defaults_to_the_current_time() {
    let c = ctx(None, None, "x", None);
    check_table(
        &c,
        &[
            (r#"now() > timestamp("2025-01-01T00:00:00Z")"#, Some(true)),
            (r#"now() < timestamp("2200-01-01T00:00:00Z")"#, Some(true)),
        ],
    );
}

#[test]
fn json_parse() {
    let body = json!({"payload": "{\"a\": 1}"});
    let c = ctx(None, None, "x", Some(body));
    check_table(
        &c,
        &[
            (
                r#"json.parse(ctx.request.http.headers["x-meta"]).tier == "gold""#,
                Some(true),
            ),
            (
                r#"json.parse(ctx.request.http.headers["x-meta"]).n == 3"#,
                Some(true),
            ),
            (
                r#"json.parse(ctx.request.http.headers["x-meta"]).n < 2"#,
                Some(false),
            ),
            (
                r#""b" in json.parse(ctx.request.http.headers["x-meta"]).tags"#,
                Some(true),
            ),
            (
                r#"json.parse(ctx.request.http.headers["x-meta"]).tags.size() == 2"#,
                Some(true),
            ),
            (
                r#"has(json.parse(ctx.request.http.headers["x-meta"]).tier)"#,
                Some(true),
            ),
            (
                r#"json.parse(ctx.request.http.bodyMap.payload).a == 1"#,
                Some(true),
            ),
            (r#"json.parse("[1, 2]") == [1, 2]"#, Some(true)),
            (r#"json.parse("1.5") == 1.5"#, Some(true)),
            (r#"json.parse("true")"#, Some(true)),
            (r#"json.parse("null") == null"#, Some(true)),
            (r#"json.parse("\"s\"") == "s""#, Some(true)),
            // Invalid JSON, wrong types, missing keys: errors.
            (r#"json.parse("{").a == 1"#, None),
            (r#"json.parse("") == null"#, None),
            (r#"json.parse("{\"a\": 1} trailing").a == 1"#, None),
            (
                r#"json.parse(ctx.request.http.headers["x-tag"]) == 1"#,
                None,
            ),
            (r#"json.parse(1) == 1"#, None),
            (r#"json.parse() == 1"#, None),
            (
                r#"json.parse(ctx.request.http.headers["x-meta"]).missing == 1"#,
                None,
            ),
            (r#"json.parse("1e999") == 1"#, None),
        ],
    );
    // Deeply nested JSON is rejected by the parser's recursion limit, not a crash.
    let deep = format!(
        r#"json.parse("{}{}") == []"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(outcome(&deep, &c), None);
}

#[test]
fn string_helpers() {
    let c = ctx(None, None, "(", None);
    check_table(
        &c,
        &[
            (r#""MiXed".upper() == "MIXED""#, Some(true)),
            (r#""MiXed".upperAscii() == "MIXED""#, Some(true)),
            (r#""MiXed".lower() == "mixed""#, Some(true)),
            (r#""MiXed".lowerAscii() == "mixed""#, Some(true)),
            (r#""straße".upper() == "STRAßE""#, Some(true)),
            (r#"upper("abc") == "ABC""#, Some(true)),
            (r#"ctx.request.http.method.lower() == "get""#, Some(true)),
            (r#""  a b \t\n".trim() == "a b""#, Some(true)),
            (r#""".trim() == """#, Some(true)),
            (r#""a,b,c".split(",") == ["a", "b", "c"]"#, Some(true)),
            (r#""a,b,c".split(",", 2) == ["a", "b,c"]"#, Some(true)),
            (r#""a,b,c".split(",", 0) == []"#, Some(true)),
            (r#""a,b,c".split(",", -1) == ["a", "b", "c"]"#, Some(true)),
            (r#""abc".split("") == ["a", "b", "c"]"#, Some(true)),
            (r#""abc".split("", 2) == ["a", "bc"]"#, Some(true)),
            (r#""".split(",") == [""]"#, Some(true)),
            (
                r#""a, b".split(",").map(s, s.trim()) == ["a", "b"]"#,
                Some(true),
            ),
            (
                r#"ctx.request.http.headers["x-tag"].split(", ") == ["one", "two"]"#,
                Some(true),
            ),
            (
                r#""two" in ctx.request.http.headers["x-tag"].split(", ")"#,
                Some(true),
            ),
            // Built-ins.
            (r#"ctx.request.http.path.startsWith("/v1/")"#, Some(true)),
            (r#"ctx.request.http.path.startsWith("/v2/")"#, Some(false)),
            (r#"ctx.request.http.path.endsWith("/chat")"#, Some(true)),
            (r#"ctx.request.http.path.endsWith("/cha")"#, Some(false)),
            (r#"ctx.request.http.path.contains("1/c")"#, Some(true)),
            (r#"ctx.request.http.path.contains("v2")"#, Some(false)),
            (
                r#"ctx.request.http.host.endsWith(".example.com")"#,
                Some(true),
            ),
            (r#"ctx.request.http.path.size() == 8"#, Some(true)),
            // matches: RE2 syntax, unanchored unless anchored.
            (
                r#"ctx.request.http.path.matches("^/v1/(chat|completions)$")"#,
                Some(true),
            ),
            (r#"ctx.request.http.path.matches("chat")"#, Some(true)),
            (r#"ctx.request.http.path.matches("^chat")"#, Some(false)),
            (r#"matches(ctx.request.http.path, "^/v1")"#, Some(true)),
            (
                r#"["a1", "b2"].all(x, x.matches("^[a-z][0-9]$"))"#,
                Some(true),
            ),
            (
                r#"["a1", "bb"].all(x, x.matches("^[a-z][0-9]$"))"#,
                Some(false),
            ),
            // Wrong types and bad computed patterns: errors.
            (r#"1.upper() == "1""#, None),
            (r#""a".upper(1) == "A""#, None),
            (r#""a".trim(1) == "a""#, None),
            (r#"1.split(",") == []"#, None),
            (r#""a".split(1) == []"#, None),
            (r#""a".split() == []"#, None),
            (r#""a".split(",", "2") == []"#, None),
            (r#"1.startsWith("a")"#, None),
            (
                r#"ctx.request.http.path.matches(ctx.request.http.headers["x-re"])"#,
                None,
            ),
            (r#"ctx.request.http.path.matches(1)"#, None),
            (r#"1.matches("a")"#, None),
        ],
    );
}

#[test]
fn oversized_computed_regex_does_not_match() {
    let c = ctx(None, None, &"a".repeat(MAX_REGEX_BYTES + 1), None);
    let expr = r#""aaa".matches(ctx.request.http.headers["x-re"])"#;
    assert_eq!(outcome(expr, &c), None);
    // A computed pattern within the limits works.
    let c = ctx(None, None, &"a?".repeat(10), None);
    assert_eq!(outcome(expr, &c), Some(true));
}

#[test]
fn reads_body_with_new_functions() {
    let cases = [
        (
            r#"json.parse(ctx.request.http.headers["x-meta"]).tier == "gold""#,
            false,
        ),
        (
            r#"json.parse(ctx.request.http.bodyMap.payload).a == 1"#,
            true,
        ),
        (r#"net.isIPInRange(ctx.request.ip, "10.0.0.0/8")"#, false),
        (r#"net.isPrivateIP(ctx.request.ip)"#, false),
        (r#"now().getHours("Europe/Berlin") > 8"#, false),
        (r#"ctx.request.http.path.matches("^/v1")"#, false),
        (r#"ctx.request.http.bodyMap.model.matches("^gpt")"#, true),
        (
            r#"ctx.request.http.bodyMap.model.split("-")[0] == "gpt""#,
            true,
        ),
        (r#"json.parse(string(ctx.request.http)).x == 1"#, true),
        (r#""bodyMap".upper() == "BODYMAP""#, true),
    ];
    for (expr, want) in cases {
        assert_eq!(compile(&m(expr)).reads_body(), want, "{expr}");
    }
}

#[test]
fn unknown_namespaced_functions_are_compile_errors() {
    for (expr, name) in [
        (
            r#"net.isIPInRanges(ctx.request.ip, "10.0.0.0/8")"#,
            "net.isIPInRanges",
        ),
        (r#"json.stringify(1) == "1""#, "json.stringify"),
        (r#"ctx.request.ip.isInNet("x")"#, "isInNet"),
    ] {
        let errs = compile_errors(expr);
        assert_eq!(errs.len(), 1, "{expr}: {errs:?}");
        assert_eq!(errs[0].field, "spec.rules[0].condition.match");
        assert_eq!(
            errs[0].message,
            format!("unknown function '{name}'"),
            "{expr}"
        );
    }
}

#[test]
fn regex_literals_are_checked_at_compile_time() {
    let too_long = format!(r#""a".matches("{}")"#, "a".repeat(MAX_REGEX_BYTES + 1));
    let exact = format!(r#""a".matches("{}")"#, "a?".repeat(MAX_REGEX_BYTES / 2));
    let cases: [(&str, Option<&str>); 5] = [
        (
            r#""a".matches("(")"#,
            Some("invalid regular expression '('"),
        ),
        (
            r#"matches("a", "[z-a]")"#,
            Some("invalid regular expression '[z-a]'"),
        ),
        (
            r#""a".matches("a{1000}{1000}")"#,
            Some("invalid regular expression"),
        ),
        (
            &too_long,
            Some("regular expression is 1025 bytes long, over the limit of 1024 bytes"),
        ),
        (&exact, None),
    ];
    for (expr, want) in cases {
        let errs = compile_errors(expr);
        match want {
            None => assert!(errs.is_empty(), "{expr}: {errs:?}"),
            Some(msg) => {
                assert_eq!(errs.len(), 1, "{errs:?}");
                assert_eq!(errs[0].field, "spec.rules[0].condition.match");
                assert!(errs[0].message.contains(msg), "{}", errs[0].message);
            }
        }
    }
}

#[test]
fn size_limits_are_compile_errors() {
    // Length: exactly the limit is accepted, one byte more is not.
    let pad = |n: usize| {
        let base = r#""" == """#.len();
        format!(r#""{}" == """#, "a".repeat(n - base))
    };
    assert_eq!(pad(MAX_EXPRESSION_BYTES).len(), MAX_EXPRESSION_BYTES);
    assert!(compile_errors(&pad(MAX_EXPRESSION_BYTES)).is_empty());
    let nested = |n: usize| format!("{}1{} == 1", "(".repeat(n), ")".repeat(n));
    let lists = |n: usize| format!("{}1{} != []", "[".repeat(n), "]".repeat(n));
    let list_of = |n: usize| format!("[{}].size() > 0", vec!["1"; n].join(","));
    let nots = |n: usize| format!("{}true", "!".repeat(n));
    let sums = |n: usize| format!("{} > 0", vec!["1"; n].join(" + "));
    let cases: Vec<(String, Option<String>)> = vec![
        (
            pad(MAX_EXPRESSION_BYTES + 1),
            Some(format!(
                "expression is 4097 bytes long, over the limit of {MAX_EXPRESSION_BYTES} bytes"
            )),
        ),
        (nested(30), None),
        (
            nested(MAX_NESTING + 1),
            Some(format!(
                "expression nests brackets 33 deep, over the limit of {MAX_NESTING}"
            )),
        ),
        (
            nested(1500),
            Some("expression nests brackets 1500 deep".into()),
        ),
        (lists(20), None),
        (
            lists(MAX_NESTING),
            Some(format!("levels deep, over the limit of {MAX_NESTING}")),
        ),
        (list_of(500), None),
        (
            list_of(MAX_AST_NODES),
            Some(format!("nodes, over the limit of {MAX_AST_NODES}")),
        ),
        (nots(2), None),
        (
            nots(40),
            Some("prefix operators, over the nesting limit of 32".into()),
        ),
        (
            format!("{}1 == 1", "-".repeat(2000)),
            Some("prefix operators".into()),
        ),
        (sums(10), None),
        (
            sums(40),
            Some(format!("levels deep, over the limit of {MAX_NESTING}")),
        ),
        (sums(1300), Some("over the limit".into())),
        (
            format!("ctx{} == 1", ".a".repeat(2000)),
            Some("over the limit".into()),
        ),
        // Brackets inside string literals do not count.
        (format!(r#""{}" == "x""#, "(".repeat(100)), None),
    ];
    for (expr, want) in cases {
        let errs = compile_errors(&expr);
        let short = &expr[..expr.len().min(60)];
        match want {
            None => assert!(errs.is_empty(), "{short}: {errs:?}"),
            Some(msg) => {
                assert!(!errs.is_empty(), "{short}: accepted");
                assert!(
                    errs.iter()
                        .all(|e| e.field == "spec.rules[0].condition.match"),
                    "{errs:?}"
                );
                assert!(
                    errs.iter().any(|e| e.message.contains(&msg)),
                    "{short}: {errs:?}"
                );
            }
        }
    }
}

#[test]
fn list_macros_have_an_evaluation_budget() {
    let items: Vec<i64> = (0..2000).collect();
    let c = ctx(
        None,
        None,
        "x",
        Some(json!({"items": items, "few": [1, 2, 3]})),
    );
    check_table(
        &c,
        &[
            ("ctx.request.http.bodyMap.items.all(x, x >= 0)", Some(true)),
            ("ctx.request.http.bodyMap.items.exists(x, x == 1999)", Some(true)),
            ("ctx.request.http.bodyMap.items.filter(x, x < 500).size() == 500", Some(true)),
            ("ctx.request.http.bodyMap.items.map(x, x * 2).size() == 2000", Some(true)),
            (
                "ctx.request.http.bodyMap.few.all(x, ctx.request.http.bodyMap.few.exists(y, y == x))",
                Some(true),
            ),
            // Quadratic and worse: stopped by the budget, so not matched.
            (
                "ctx.request.http.bodyMap.items.all(x, ctx.request.http.bodyMap.items.all(y, y >= 0))",
                None,
            ),
            (
                "ctx.request.http.bodyMap.items.all(a, ctx.request.http.bodyMap.items.all(b, ctx.request.http.bodyMap.items.all(c, true)))",
                None,
            ),
        ],
    );
    // The budget is per expression evaluation: the same context evaluates again.
    assert_eq!(
        outcome("ctx.request.http.bodyMap.items.all(x, x >= 0)", &c),
        Some(true)
    );
}
