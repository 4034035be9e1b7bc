//! The evaluation context of one request: `ctx.user`, `ctx.session`, `ctx.groups`,
//! `ctx.service` and `ctx.request`, built in exactly one place.
//!
//! CEL sees `ctx` as interpreter values built eagerly; Rego (OPA conditions) sees the same
//! `ctx` as JSON, built lazily the first time an OPA condition is evaluated for the
//! request, from JSON copies of the resources and the CEL request value.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, Value};
use chrono::{DateTime, Utc};

use super::functions;
use super::Reads;

/// A resource converted once to a CEL value (users, services, sessions are precomputed
/// when configuration changes, not per request), so building a request context only
/// clones `Arc`s.
///
/// It also keeps its source JSON (shared, not copied), from which the Rego view of `ctx`
/// is built when an OPA condition needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct CelValue(pub cel_interpreter::Value, Arc<serde_json::Value>);

impl CelValue {
    /// Converts a JSON value (typically a serialized resource) to a CEL value: objects
    /// become maps with string keys, integers `Int` (or `UInt` past `i64::MAX`), other
    /// numbers `Float`. A copy of `v` is kept for OPA conditions.
    pub fn from_json(v: &serde_json::Value) -> Self {
        CelValue(json_to_value(v), Arc::new(v.clone()))
    }

    /// An empty map, for an absent resource (e.g. no session yet): any field lookup on it
    /// is a missing field, hence "not matched".
    pub fn empty_map() -> Self {
        CelValue(
            map_value(HashMap::new()),
            Arc::new(serde_json::Value::Object(serde_json::Map::new())),
        )
    }

    /// An empty list, e.g. for a user without groups.
    pub fn empty_list() -> Self {
        CelValue(
            Value::List(Arc::new(Vec::new())),
            Arc::new(serde_json::Value::Array(Vec::new())),
        )
    }

    /// The JSON this value was built from (what OPA conditions see).
    pub fn json(&self) -> &serde_json::Value {
        &self.1
    }
}

impl Default for CelValue {
    fn default() -> Self {
        CelValue::empty_map()
    }
}

pub(crate) fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(json_to_value).collect())),
        serde_json::Value::Object(o) => {
            let map = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_value(v)))
                .collect();
            map_value(map)
        }
    }
}

fn map_value(map: HashMap<Key, Value>) -> Value {
    Value::Map(Map { map: Arc::new(map) })
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_owned()))
}

/// The names `ctx` itself is made of, allocated once per process and shared by every
/// request's context (an `Arc` clone instead of an allocation each).
struct Keys {
    method: Key,
    path: Key,
    host: Key,
    scheme: Key,
    headers: Key,
    query_params: Key,
    body_map: Key,
    size: Key,
    http: Key,
    ip: Key,
    user: Key,
    session: Key,
    groups: Key,
    service: Key,
    request: Key,
    /// An empty map, for the parts of `ctx` a request's conditions do not read.
    empty: Value,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        method: key("method"),
        path: key("path"),
        host: key("host"),
        scheme: key("scheme"),
        headers: key("headers"),
        query_params: key("queryParams"),
        body_map: key("bodyMap"),
        size: key("size"),
        http: key("http"),
        ip: key("ip"),
        user: key("user"),
        session: key("session"),
        groups: key("groups"),
        service: key("service"),
        request: key("request"),
        empty: map_value(HashMap::new()),
    })
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_owned()))
}

/// Facts about the HTTP request, borrowed from the proxy so that the policy module needs no
/// HTTP types of its own beyond the header map.
pub struct RequestFacts<'a> {
    /// Request method, e.g. `GET`.
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Host (authority) the client asked for.
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Request headers; names are already lowercase in `http::HeaderMap`.
    pub headers: &'a http::HeaderMap,
    /// Raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// The parsed JSON body, when the body was buffered (some rule reads `bodyMap`).
    pub body: Option<&'a serde_json::Value>,
    /// Request body size in bytes (Content-Length or buffered length).
    pub size: u64,
    /// The client address, when known.
    pub client_ip: Option<IpAddr>,
    /// The time of the request, which `now()` returns; `None` means the time at which the
    /// [`EvalContext`] is built (`Utc::now()`). Tests pass a fixed time.
    pub now: Option<DateTime<Utc>>,
}

/// The evaluation context of one request, built once and shared by every rule and
/// dynamicConfig condition, so the per-rule cost is only the expression itself.
///
/// The JSON (and Rego) view of `ctx` is built at most once, on first use by an OPA
/// condition; requests evaluated only by CEL never pay for it.
pub struct EvalContext {
    cel: Context<'static>,
    /// Sources of the JSON view: the resources' JSON and the CEL `ctx.request` value.
    parts: JsonParts,
    json: OnceLock<serde_json::Value>,
    rego: OnceLock<regorus::Value>,
}

/// What [`EvalContext::ctx_json`] is built from (cheap `Arc` clones).
struct JsonParts {
    user: Arc<serde_json::Value>,
    session: Arc<serde_json::Value>,
    groups: Arc<serde_json::Value>,
    service: Arc<serde_json::Value>,
    request: Value,
}

impl EvalContext {
    /// Builds `ctx` from precomputed resources (cheap `Arc` clones) and the request facts.
    pub fn new(
        user: &CelValue,
        session: &CelValue,
        groups: &CelValue,
        service: &CelValue,
        request: &RequestFacts<'_>,
    ) -> Self {
        Self::reading(user, session, groups, service, request, Reads::ALL)
    }

    /// Like [`EvalContext::new`], building only the costly parts of `ctx.request.http`
    /// that `reads` names (the union of what the conditions to evaluate may read, see
    /// [`crate::RuleSet::reads`]); the others are empty maps that no such condition can
    /// observe.
    pub fn reading(
        user: &CelValue,
        session: &CelValue,
        groups: &CelValue,
        service: &CelValue,
        request: &RequestFacts<'_>,
        reads: Reads,
    ) -> Self {
        let k = keys();
        let mut http = HashMap::with_capacity(8);
        http.insert(k.method.clone(), string(request.method));
        http.insert(k.path.clone(), string(request.path));
        http.insert(k.host.clone(), string(request.host));
        http.insert(k.scheme.clone(), string(request.scheme));
        let unread = || k.empty.clone();
        http.insert(
            k.headers.clone(),
            if reads.headers {
                headers_value(request.headers)
            } else {
                unread()
            },
        );
        http.insert(
            k.query_params.clone(),
            if reads.query {
                query_value(request.query)
            } else {
                unread()
            },
        );
        http.insert(
            k.body_map.clone(),
            match request.body {
                Some(body) if reads.body => json_to_value(body),
                _ => unread(),
            },
        );
        http.insert(
            k.size.clone(),
            Value::Int(i64::try_from(request.size).unwrap_or(i64::MAX)),
        );

        let mut req = HashMap::with_capacity(2);
        req.insert(k.http.clone(), map_value(http));
        if let Some(ip) = request.client_ip {
            req.insert(k.ip.clone(), Value::String(Arc::new(ip.to_string())));
        }
        let req = map_value(req);

        let mut root = HashMap::with_capacity(5);
        root.insert(k.user.clone(), user.0.clone());
        root.insert(k.session.clone(), session.0.clone());
        root.insert(k.groups.clone(), groups.0.clone());
        root.insert(k.service.clone(), service.0.clone());
        root.insert(k.request.clone(), req.clone());

        let mut cel = functions::base_context().new_inner_scope();
        cel.add_variable_from_value(
            functions::NOW_VARIABLE,
            functions::now_value(request.now.unwrap_or_else(Utc::now)),
        );
        cel.add_variable_from_value("ctx", map_value(root));
        EvalContext {
            cel,
            parts: JsonParts {
                user: user.1.clone(),
                session: session.1.clone(),
                groups: groups.1.clone(),
                service: service.1.clone(),
                request: req,
            },
            json: OnceLock::new(),
            rego: OnceLock::new(),
        }
    }

    /// The underlying CEL context, for evaluating compiled expressions.
    pub(crate) fn cel(&self) -> &Context<'static> {
        &self.cel
    }

    /// Starts a new loop budget, before evaluating one expression. The budget is per thread:
    /// an evaluation runs start to end on the thread that started it.
    pub(crate) fn reset_loop_cost(&self) {
        functions::reset_loop_cost();
    }

    /// `ctx` as JSON, with the same content as the CEL `ctx` (what OPA conditions see as
    /// `input.ctx`). Built on first call, then cached for the request.
    pub fn ctx_json(&self) -> &serde_json::Value {
        self.json.get_or_init(|| {
            let p = &self.parts;
            let mut root = serde_json::Map::with_capacity(5);
            root.insert("user".into(), (*p.user).clone());
            root.insert("session".into(), (*p.session).clone());
            root.insert("groups".into(), (*p.groups).clone());
            root.insert("service".into(), (*p.service).clone());
            root.insert("request".into(), value_to_json(&p.request));
            serde_json::Value::Object(root)
        })
    }

    /// `ctx` as a Rego value, built from [`EvalContext::ctx_json`] on first call.
    pub(crate) fn rego_ctx(&self) -> &regorus::Value {
        self.rego.get_or_init(|| {
            use serde::Deserialize;
            regorus::Value::deserialize(self.ctx_json()).unwrap_or_else(|error| {
                tracing::debug!(%error, "ctx could not be converted for Rego; OPA sees it undefined");
                regorus::Value::Undefined
            })
        })
    }
}

/// The inverse of `json_to_value` for the values a context holds (maps, lists, scalars).
/// Other CEL types do not occur in a context; they become `null`.
fn value_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::UInt(u) => serde_json::Value::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::String(s) => serde_json::Value::String(s.as_str().to_owned()),
        Value::List(l) => serde_json::Value::Array(l.iter().map(value_to_json).collect()),
        Value::Map(m) => serde_json::Value::Object(
            m.map
                .iter()
                .map(|(k, v)| (key_to_string(k), value_to_json(v)))
                .collect(),
        ),
        _ => serde_json::Value::Null,
    }
}

fn key_to_string(k: &Key) -> String {
    match k {
        Key::String(s) => s.as_str().to_owned(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

/// Header names (lowercase) to their values joined by `", "`; non-UTF-8 bytes are replaced.
fn headers_value(headers: &http::HeaderMap) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::with_capacity(headers.keys_len());
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        let mut joined = values
            .next()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        for v in values {
            joined.push_str(", ");
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        map.insert(
            Key::String(Arc::new(name.as_str().to_owned())),
            Value::String(Arc::new(joined)),
        );
    }
    map_value(map)
}

/// Query parameter names to their first value, percent-decoded (`+` is a space).
fn query_value(query: Option<&str>) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            map.entry(Key::String(Arc::new(k.into_owned())))
                .or_insert_with(|| Value::String(Arc::new(v.into_owned())));
        }
    }
    map_value(map)
}
