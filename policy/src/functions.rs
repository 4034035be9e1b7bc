//! Custom CEL functions promised by the policy docs and not built into cel-interpreter,
//! plus the list of every function name a condition may call (checked at compile time).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cel_interpreter::{Context, ExecutionError, FunctionContext, Value};
use cel_parser::ast::{Expr, IdedExpr};
use chrono::{DateTime, Datelike, FixedOffset, TimeZone, Timelike, Utc};
use regex::{Regex, RegexBuilder};

use super::context::json_to_value;
use super::limits::{LOOP_STEP_FUNCTION, MAX_LOOP_COST, MAX_REGEX_BYTES, REGEX_SIZE_LIMIT};

/// Functions built into `cel_interpreter::Context::default()` (features `regex`, `chrono`).
const BUILTIN_FUNCTIONS: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// Functions this module registers on every [`super::EvalContext`] (namespaced ones are
/// written `net.isIPInRange(...)` in conditions; see [`qualify_namespaces`]).
const CUSTOM_FUNCTIONS: &[&str] = &[
    "hasAll",
    "hasAny",
    "lowerAscii",
    "lower",
    "upperAscii",
    "upper",
    "trim",
    "split",
    "now",
    "isIPInRange",
    "isPrivateIP",
    "net.isIPInRange",
    "net.isPrivateIP",
    "json.parse",
];

/// Namespaces whose functions are called as `ns.function(...)`.
const NAMESPACES: &[&str] = &["net", "json"];

/// True when `name` can be called from a condition: a built-in, one of ours, or an operator
/// (`_<_`, `@in`, `!_`, `-_`, ...), which the parser names with punctuation.
pub(crate) fn is_known_function(name: &str) -> bool {
    let is_operator = name.starts_with(['_', '@', '!', '-']);
    is_operator || BUILTIN_FUNCTIONS.contains(&name) || CUSTOM_FUNCTIONS.contains(&name)
}

/// Rewrites calls on a namespace identifier, `net.isIPInRange(a, b)` (parsed as the method
/// `isIPInRange` called on a variable `net`), into calls of the global function
/// `net.isIPInRange(a, b)`, so that no `net` or `json` variable is needed and an unknown
/// `net.foo()` is reported as such at compile time.
pub(crate) fn qualify_namespaces(e: &mut IdedExpr) {
    if let Expr::Call(c) = &mut e.expr {
        let namespace = match c.target.as_deref() {
            Some(IdedExpr {
                expr: Expr::Ident(ns),
                ..
            }) if NAMESPACES.contains(&ns.as_str()) => Some(ns.clone()),
            _ => None,
        };
        if let Some(ns) = namespace {
            c.target = None;
            c.func_name = format!("{ns}.{}", c.func_name);
        }
    }
    crate::ast::for_each_child_mut(e, &mut qualify_namespaces);
}

/// The variable holding the request's time, read by `now()`. A CEL identifier cannot start
/// with `@`, so no expression can read or shadow it.
pub(crate) const NOW_VARIABLE: &str = "@now";

/// The functions every condition may call, registered once for the process: each request's
/// context is a child scope of this one (see `EvalContext::new`), because registering ~40
/// functions per request showed as a tenth of the gateway's CPU per request.
///
/// Per-request state stays per request: `now()` reads [`NOW_VARIABLE`] from the request's
/// scope, and the loop budget and the regex cache are per thread (an evaluation never leaves
/// its thread; the budget is reset before each expression).
pub(crate) fn base_context() -> &'static Context<'static> {
    static BASE: OnceLock<Context<'static>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut ctx = Context::default();
        register(&mut ctx);
        ctx
    })
}

/// The request's time as `now()` returns it.
pub(crate) fn now_value(now: DateTime<Utc>) -> Value {
    Value::Timestamp(now.fixed_offset())
}

/// Registers every custom function on the base context (the loop budget's step function is
/// explained in [`super::limits::instrument_loops`]).
fn register(ctx: &mut Context<'static>) {
    ctx.add_function(LOOP_STEP_FUNCTION, loop_step);
    ctx.add_function("hasAll", has_all);
    ctx.add_function("hasAny", has_any);
    ctx.add_function("lowerAscii", lower_ascii);
    ctx.add_function("lower", lower_ascii);
    ctx.add_function("upperAscii", upper_ascii);
    ctx.add_function("upper", upper_ascii);
    ctx.add_function("trim", trim);
    ctx.add_function("split", split);
    ctx.add_function("isIPInRange", is_ip_in_range);
    ctx.add_function("net.isIPInRange", is_ip_in_range);
    ctx.add_function("isPrivateIP", is_private_ip);
    ctx.add_function("net.isPrivateIP", is_private_ip);
    ctx.add_function("json.parse", json_parse);
    ctx.add_function("now", |ftx: &FunctionContext| {
        if ftx.this.is_some() || !ftx.args.is_empty() {
            return Err(ftx.error("takes no arguments"));
        }
        ftx.ptx.get_variable(NOW_VARIABLE)
    });
    // Replace the built-in `matches`, which compiles its pattern on every call without
    // limits, by one with length and size limits and a cache.
    ctx.add_function("matches", matches);
    // Replace the built-in timestamp accessors, which ignore a time zone argument.
    for (name, part) in [
        ("getFullYear", TimePart::FullYear),
        ("getMonth", TimePart::Month),
        ("getDayOfYear", TimePart::DayOfYear),
        ("getDayOfMonth", TimePart::DayOfMonth),
        ("getDate", TimePart::Date),
        ("getDayOfWeek", TimePart::DayOfWeek),
        ("getHours", TimePart::Hours),
        ("getMinutes", TimePart::Minutes),
        ("getSeconds", TimePart::Seconds),
        ("getMilliseconds", TimePart::Milliseconds),
    ] {
        ctx.add_function(name, move |ftx: &FunctionContext| time_part(ftx, part));
    }
}

thread_local! {
    /// Work done in list macros by the expression being evaluated on this thread.
    static LOOP_COST: Cell<u64> = const { Cell::new(0) };
    /// Compiled regular expressions by pattern, for `matches`.
    static REGEX_CACHE: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

/// Starts a new loop budget on this thread, before evaluating one expression.
pub(crate) fn reset_loop_cost() {
    LOOP_COST.with(|c| c.set(0));
}

/// The receiver of a function usable both as a method and as a function (`s.f(x)` or
/// `f(s, x)`), with the index of the first remaining argument.
fn receiver(ftx: &FunctionContext) -> Result<(Value, usize), ExecutionError> {
    match &ftx.this {
        Some(v) => Ok((v.clone(), 0)),
        None => match ftx.args.first() {
            Some(e) => Ok((ftx.ptx.resolve(e)?, 1)),
            None => Err(ExecutionError::missing_argument_or_target()),
        },
    }
}

/// The arguments from index `from`, resolved, checking that there are between `min` and
/// `max` of them.
fn rest_args(
    ftx: &FunctionContext,
    from: usize,
    min: usize,
    max: usize,
) -> Result<Vec<Value>, ExecutionError> {
    let rest = ftx.args.get(from..).unwrap_or_default();
    if rest.len() < min || rest.len() > max {
        return Err(ftx.error(format!(
            "expects {} argument(s), got {}",
            if min == max {
                min.to_string()
            } else {
                format!("{min} to {max}")
            },
            rest.len()
        )));
    }
    rest.iter().map(|e| ftx.ptx.resolve(e)).collect()
}

fn string_arg(ftx: &FunctionContext, v: Value) -> Result<Arc<String>, ExecutionError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(ftx.error(format!("expects a string, got {other:?}"))),
    }
}

/// A string receiver and no other argument.
fn string_receiver(ftx: &FunctionContext) -> Result<Arc<String>, ExecutionError> {
    let (this, from) = receiver(ftx)?;
    rest_args(ftx, from, 0, 0)?;
    match this {
        Value::String(s) => Ok(s),
        other => Err(ExecutionError::unsupported_target_type(other)),
    }
}

/// The receiver list and the wanted values of `list.hasAll(...)` / `list.hasAny(...)`.
///
/// Accepts `list.f("a", "b")`, `list.f(["a", "b"])`, and the function forms
/// `f(list, "a", "b")` / `f(list, ["a", "b"])`.
fn receiver_and_wanted(
    ftx: &FunctionContext,
) -> Result<(Arc<Vec<Value>>, Vec<Value>), ExecutionError> {
    let mut args = ftx.args.iter();
    let this = match &ftx.this {
        Some(v) => v.clone(),
        None => match args.next() {
            Some(e) => ftx.ptx.resolve(e)?,
            None => return Err(ExecutionError::missing_argument_or_target()),
        },
    };
    let list = match this {
        Value::List(l) => l,
        other => return Err(ExecutionError::unsupported_target_type(other)),
    };
    let mut wanted = Vec::with_capacity(ftx.args.len());
    for e in args {
        wanted.push(ftx.ptx.resolve(e)?);
    }
    if wanted.is_empty() {
        return Err(ftx.error("expects a list or at least one value"));
    }
    if wanted.len() == 1 {
        if let Value::List(inner) = &wanted[0] {
            let inner = inner.as_ref().clone();
            return Ok((list, inner));
        }
    }
    Ok((list, wanted))
}

/// `list.hasAll(a, b, ...)` / `list.hasAll([a, b])`: every wanted value is in the list
/// (true for an empty wanted list).
fn has_all(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (list, wanted) = receiver_and_wanted(ftx)?;
    Ok(Value::Bool(wanted.iter().all(|w| list.contains(w))))
}

/// `list.hasAny(a, b, ...)` / `list.hasAny([a, b])`: at least one wanted value is in the
/// list (false for an empty wanted list).
fn has_any(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (list, wanted) = receiver_and_wanted(ftx)?;
    Ok(Value::Bool(wanted.iter().any(|w| list.contains(w))))
}

/// `s.lowerAscii()` (and its alias `s.lower()`): ASCII lower-casing, as in CEL's strings
/// extension; other characters are unchanged.
fn lower_ascii(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let s = string_receiver(ftx)?;
    Ok(Value::String(Arc::new(s.to_ascii_lowercase())))
}

/// `s.upperAscii()` (and its alias `s.upper()`): ASCII upper-casing; other characters are
/// unchanged.
fn upper_ascii(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let s = string_receiver(ftx)?;
    Ok(Value::String(Arc::new(s.to_ascii_uppercase())))
}

/// `s.trim()`: `s` without leading and trailing Unicode white space.
fn trim(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let s = string_receiver(ftx)?;
    Ok(Value::String(Arc::new(s.trim().to_owned())))
}

/// `s.split(sep)` / `s.split(sep, n)`: the list of substrings between occurrences of `sep`
/// (CEL strings extension): `n < 0` (default) splits everywhere, `n == 0` gives `[]`,
/// `n > 0` gives at most `n` substrings, the last one holding the rest. An empty `sep`
/// splits into characters.
fn split(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (this, from) = receiver(ftx)?;
    let s = match this {
        Value::String(s) => s,
        other => return Err(ExecutionError::unsupported_target_type(other)),
    };
    let mut args = rest_args(ftx, from, 1, 2)?.into_iter();
    let sep = string_arg(ftx, args.next().unwrap_or(Value::Null))?;
    let limit = match args.next() {
        None => -1,
        Some(Value::Int(n)) => n,
        Some(other) => return Err(ftx.error(format!("expects an int limit, got {other:?}"))),
    };
    let to_value = |p: &str| Value::String(Arc::new(p.to_owned()));
    let parts: Vec<Value> = match (limit, sep.is_empty()) {
        (0, _) => Vec::new(),
        (n, true) => {
            let chars: Vec<char> = s.chars().collect();
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(chars.len());
            let mut out: Vec<Value> = chars
                .iter()
                .take(n.saturating_sub(1))
                .map(|c| to_value(c.encode_utf8(&mut [0; 4])))
                .collect();
            if n > 0 {
                out.push(to_value(&chars[n - 1..].iter().collect::<String>()));
            }
            out
        }
        (n, false) if n < 0 => s.split(sep.as_str()).map(to_value).collect(),
        (n, false) => s
            .splitn(usize::try_from(n).unwrap_or(usize::MAX), sep.as_str())
            .map(to_value)
            .collect(),
    };
    Ok(Value::List(Arc::new(parts)))
}

/// An IP address argument; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is read as the
/// IPv4 address.
fn ip_arg(ftx: &FunctionContext, v: Value) -> Result<IpAddr, ExecutionError> {
    let s = string_arg(ftx, v)?;
    IpAddr::from_str(&s)
        .map(|ip| ip.to_canonical())
        .map_err(|_| ftx.error(format!("'{s}' is not an IP address")))
}

/// `address/prefix`, with a prefix of at most 32 (IPv4) or 128 (IPv6) bits.
fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u32 = prefix.parse().ok()?;
    let addr = IpAddr::from_str(addr).ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

/// `net.isIPInRange(ip, cidr)` (also `isIPInRange(ip, cidr)`): whether `ip` is inside the
/// network `cidr` (`10.0.0.0/8`, `2001:db8::/32`; host bits of `cidr` are ignored). An IP
/// of the other family is not in range (false); an invalid IP or CIDR is an error, so the
/// condition does not match.
fn is_ip_in_range(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (this, from) = receiver(ftx)?;
    let mut args = rest_args(ftx, from, 1, 1)?.into_iter();
    let ip = ip_arg(ftx, this)?;
    let cidr = string_arg(ftx, args.next().unwrap_or(Value::Null))?;
    let (net, prefix) =
        parse_cidr(&cidr).ok_or_else(|| ftx.error(format!("'{cidr}' is not a CIDR range")))?;
    let inside = match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    };
    Ok(Value::Bool(inside))
}

/// `net.isPrivateIP(ip)` (also `isPrivateIP(ip)`): whether `ip` is in one of
/// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` (RFC 1918), `127.0.0.0/8` (loopback),
/// `169.254.0.0/16` (link-local), `::1/128` (loopback), `fe80::/10` (link-local) or
/// `fc00::/7` (unique local); IPv4-mapped IPv6 addresses are checked as IPv4. An invalid IP
/// is an error, so the condition does not match.
fn is_private_ip(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (this, from) = receiver(ftx)?;
    rest_args(ftx, from, 0, 0)?;
    let private = match ip_arg(ftx, this)? {
        IpAddr::V4(ip) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            ip.is_loopback() || first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
    };
    Ok(Value::Bool(private))
}

/// `json.parse(s)`: the JSON text `s` as a CEL value, converted like `bodyMap` (objects
/// are maps with string keys, integers `int` or `uint`, other numbers `double`). Invalid
/// JSON is an error, so the condition does not match.
fn json_parse(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (this, from) = receiver(ftx)?;
    rest_args(ftx, from, 0, 0)?;
    let s = string_arg(ftx, this)?;
    let parsed: serde_json::Value =
        serde_json::from_str(&s).map_err(|e| ftx.error(format!("invalid JSON: {e}")))?;
    Ok(json_to_value(&parsed))
}

/// Most patterns kept by a thread's cache; when it is full it starts again empty, so patterns
/// computed from request data cannot grow it or pin it (at most this many times
/// `REGEX_SIZE_LIMIT` per thread).
const REGEX_CACHE_ENTRIES: usize = 16;

/// Compiles `pattern` with the limits of `matches`: at most [`MAX_REGEX_BYTES`] long and at
/// most [`REGEX_SIZE_LIMIT`] bytes once compiled. `Err` holds a message for the user.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(format!(
            "regular expression is {} bytes long, over the limit of {MAX_REGEX_BYTES} bytes",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression '{pattern}': {e}"))
}

/// `s.matches(re)` / `matches(s, re)`: whether `re` (RE2 syntax, the `regex` crate) matches
/// anywhere in `s` (anchor with `^...$` for a full match). Matching takes linear time. A
/// compiled pattern is kept in the thread's cache; an invalid or oversized pattern is an
/// error.
fn matches(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (this, from) = receiver(ftx)?;
    let mut args = rest_args(ftx, from, 1, 1)?.into_iter();
    let s = match this {
        Value::String(s) => s,
        other => return Err(ExecutionError::unsupported_target_type(other)),
    };
    let pattern = string_arg(ftx, args.next().unwrap_or(Value::Null))?;
    let cached = REGEX_CACHE.with(|c| c.borrow().get(pattern.as_str()).map(|re| re.is_match(&s)));
    if let Some(found) = cached {
        return Ok(Value::Bool(found));
    }
    let re = compile_regex(&pattern).map_err(|e| ftx.error(e))?;
    let found = re.is_match(&s);
    REGEX_CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if cache.len() >= REGEX_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(pattern.as_str().to_owned(), re);
    });
    Ok(Value::Bool(found))
}

/// A field of a timestamp (or, for the time units, of a duration).
#[derive(Debug, Clone, Copy)]
enum TimePart {
    FullYear,
    Month,
    DayOfYear,
    DayOfMonth,
    Date,
    DayOfWeek,
    Hours,
    Minutes,
    Seconds,
    Milliseconds,
}

/// A time zone argument: an IANA name (`Europe/Berlin`, `UTC`) or a fixed offset
/// (`+02:00`, `-05:30`).
enum Zone {
    Named(chrono_tz::Tz),
    Fixed(FixedOffset),
}

fn parse_zone(name: &str) -> Option<Zone> {
    if let Ok(tz) = chrono_tz::Tz::from_str(name) {
        return Some(Zone::Named(tz));
    }
    let (sign, rest) = match name.as_bytes().first()? {
        b'+' => (1, &name[1..]),
        b'-' => (-1, &name[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).map(Zone::Fixed)
}

fn part_of<Tz: TimeZone>(t: &DateTime<Tz>, part: TimePart) -> i64 {
    i64::from(match part {
        TimePart::FullYear => t.year(),
        TimePart::Month => t.month0() as i32,
        TimePart::DayOfYear => t.ordinal0() as i32,
        TimePart::DayOfMonth => t.day0() as i32,
        TimePart::Date => t.day() as i32,
        TimePart::DayOfWeek => t.weekday().num_days_from_sunday() as i32,
        TimePart::Hours => t.hour() as i32,
        TimePart::Minutes => t.minute() as i32,
        TimePart::Seconds => t.second() as i32,
        TimePart::Milliseconds => (t.timestamp_subsec_millis() % 1000) as i32,
    })
}

/// `t.getHours()`, `t.getHours("Europe/Berlin")`, ... (standard CEL accessors): the field
/// of timestamp `t` in the given time zone, UTC by default. Months, days of the month and
/// days of the year count from 0, `getDate` from 1, `getDayOfWeek` is 0 for Sunday. On a
/// duration, `getHours`, `getMinutes`, `getSeconds` and `getMilliseconds` give the whole
/// duration in that unit. An unknown time zone is an error, so the condition does not
/// match.
fn time_part(ftx: &FunctionContext, part: TimePart) -> Result<Value, ExecutionError> {
    let (this, from) = receiver(ftx)?;
    let args = rest_args(ftx, from, 0, 1)?;
    match this {
        Value::Timestamp(t) => {
            let utc = t.with_timezone(&Utc);
            let value = match args.into_iter().next() {
                None => part_of(&utc, part),
                Some(zone) => {
                    let name = string_arg(ftx, zone)?;
                    match parse_zone(&name) {
                        Some(Zone::Named(tz)) => part_of(&utc.with_timezone(&tz), part),
                        Some(Zone::Fixed(offset)) => part_of(&utc.with_timezone(&offset), part),
                        None => return Err(ftx.error(format!("unknown time zone '{name}'"))),
                    }
                }
            };
            Ok(Value::Int(value))
        }
        Value::Duration(d) if args.is_empty() => match part {
            TimePart::Hours => Ok(Value::Int(d.num_hours())),
            TimePart::Minutes => Ok(Value::Int(d.num_minutes())),
            TimePart::Seconds => Ok(Value::Int(d.num_seconds())),
            TimePart::Milliseconds => Ok(Value::Int(d.num_milliseconds())),
            _ => Err(ExecutionError::unsupported_target_type(Value::Duration(d))),
        },
        other => Err(ExecutionError::unsupported_target_type(other)),
    }
}

/// `@postern_loop_step(cond, weight, accumulator)`, inserted around the loop condition of
/// every list macro: charges `weight` plus 1/16 of the accumulator's length to the budget of
/// the evaluation, failing past [`MAX_LOOP_COST`], and returns `cond`.
fn loop_step(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (Some(cond), Some(weight), Some(accu)) =
        (ftx.args.first(), ftx.args.get(1), ftx.args.get(2))
    else {
        return Err(ExecutionError::missing_argument_or_target());
    };
    let weight = match ftx.ptx.resolve(weight)? {
        Value::Int(w) => u64::try_from(w).unwrap_or(u64::MAX),
        _ => u64::MAX,
    };
    let accumulated = match ftx.ptx.resolve(accu)? {
        Value::String(name) => match ftx.ptx.get_variable(name.as_str()) {
            Ok(Value::List(l)) => l.len(),
            Ok(Value::Map(m)) => m.map.len(),
            _ => 0,
        },
        _ => 0,
    };
    let charge = weight.saturating_add(u64::try_from(accumulated / 16).unwrap_or(u64::MAX));
    let spent = LOOP_COST.with(|c| {
        let spent = c.get().saturating_add(charge);
        c.set(spent);
        spent
    });
    if spent > MAX_LOOP_COST {
        return Err(ftx.error(format!(
            "list macros exceeded the evaluation budget of {MAX_LOOP_COST}"
        )));
    }
    ftx.ptx.resolve(cond)
}
