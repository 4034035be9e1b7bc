//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): reading a caller's
//! `traceparent` and `tracestate`, and the headers that continue its trace upstream with this
//! gateway's span as the parent.
//!
//! Pure. The pipeline reads the headers once per request ([`TraceContext::from_headers`]),
//! sets the upstream's ([`set_upstream_headers`]) and keeps the ids in the access record, from
//! which the OTLP exporter builds the span (same trace id, the caller's span as its parent).
//! A request without a valid `traceparent` starts a new trace: nothing is allocated for it
//! and no trace header is sent upstream, whatever the caller sent.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` request header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` request header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on; the specification asks for at least 512 characters and
/// lets longer lists lose members from the end.
const MAX_TRACESTATE: usize = 512;
/// Most list members in a `tracestate`.
const MAX_MEMBERS: usize = 32;
/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const TRACEPARENT_LEN: usize = 55;
/// The only trace flag version 00 defines; others are not passed on.
const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: the caller's trace and its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The whole trace's id; never all zero.
    pub trace_id: [u8; 16],
    /// The caller's span, the parent of ours; never all zero.
    pub parent_id: [u8; 8],
    /// The caller's trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Why a `traceparent` was ignored (the request then starts a new trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("traceparent is shorter than 55 characters, or longer for version 00")]
    Length,
    #[error("traceparent version ff is forbidden")]
    Version,
    #[error("traceparent fields are not lowercase hex separated by '-'")]
    Format,
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
}

/// Parses one `traceparent` value. Versions above 00 are read as 00 (their first four
/// fields), as the specification asks; `ff`, uppercase hex and all-zero ids are refused.
pub fn parse_traceparent(v: &[u8]) -> Result<TraceParent, TraceParentError> {
    if v.len() < TRACEPARENT_LEN {
        return Err(TraceParentError::Length);
    }
    let version = hex_byte(&v[0..2]).ok_or(TraceParentError::Format)?;
    if version == 0xff {
        return Err(TraceParentError::Version);
    }
    if version == 0 && v.len() != TRACEPARENT_LEN {
        return Err(TraceParentError::Length);
    }
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return Err(TraceParentError::Format);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(TraceParentError::Format);
    }
    let trace_id: [u8; 16] = hex_array(&v[3..35]).ok_or(TraceParentError::Format)?;
    let parent_id: [u8; 8] = hex_array(&v[36..52]).ok_or(TraceParentError::Format)?;
    let flags = hex_byte(&v[53..55]).ok_or(TraceParentError::Format)?;
    if trace_id == [0; 16] {
        return Err(TraceParentError::ZeroTraceId);
    }
    if parent_id == [0; 8] {
        return Err(TraceParentError::ZeroParentId);
    }
    Ok(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// The `tracestate` to pass on: members trimmed and joined by `,`, dropping members from the
/// end past 512 characters. `None` (discard the header) when a member is malformed, a key
/// repeats or there are more than 32 members.
pub fn parse_tracestate<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut members: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
    let mut n = 0;
    for value in values {
        for member in value.split(|b| *b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            let key = valid_member(member)?;
            if members[..n]
                .iter()
                .any(|m| m.split(|b| *b == b'=').next() == Some(key))
            {
                return None;
            }
            *members.get_mut(n)? = member;
            n += 1;
        }
    }
    let mut out = String::new();
    for m in &members[..n] {
        let extra = m.len() + usize::from(!out.is_empty());
        if out.len() + extra > MAX_TRACESTATE {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        // Checked ASCII by `valid_member`.
        out.push_str(std::str::from_utf8(m).ok()?);
    }
    (!out.is_empty()).then_some(out)
}

/// The key of a `key=value` list member, if both are well formed.
fn valid_member(member: &[u8]) -> Option<&[u8]> {
    let eq = member.iter().position(|b| *b == b'=')?;
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    let key_char = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    let key_ok = match key.iter().position(|b| *b == b'@') {
        None => key.len() <= 256 && key.first().is_some_and(u8::is_ascii_lowercase),
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant[0].is_ascii_alphanumeric()
                && !tenant[0].is_ascii_uppercase()
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system.iter().all(key_char)
                && tenant.iter().all(key_char)
        }
    };
    let key_ok = key_ok && key.iter().filter(|b| **b != b'@').all(key_char);
    let value_ok = (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|b| matches!(b, 0x20..=0x7e) && *b != b',' && *b != b'=')
        && value.last() != Some(&b' ');
    (key_ok && value_ok).then_some(key)
}

/// This gateway's span in the caller's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The caller's trace id, kept.
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the exported span.
    pub parent_id: [u8; 8],
    /// This gateway's span: the exported span's id and the upstream's parent-id (the
    /// caller's span again when no span is exported).
    pub span_id: [u8; 8],
    /// Trace flags passed on (only `sampled` is defined).
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged when well formed.
    pub state: Option<Box<str>>,
}

impl TraceContext {
    /// The trace a request continues: `None` when it has no `traceparent`, more than one, or
    /// a malformed one. When this gateway's span is `recorded` (exported), it gets a fresh id
    /// and becomes the upstream's parent; otherwise the upstream gets the caller's span as
    /// its parent, so no trace points at a span nobody recorded.
    pub fn from_headers(headers: &HeaderMap, recorded: bool) -> Option<TraceContext> {
        Self::read(
            headers,
            |p| {
                if recorded {
                    new_span_id()
                } else {
                    p.parent_id
                }
            },
        )
    }

    /// [`TraceContext::from_headers`] with the span id chosen by `span_id`, only called for
    /// a valid `traceparent`.
    fn read(
        headers: &HeaderMap,
        span_id: impl FnOnce(&TraceParent) -> [u8; 8],
    ) -> Option<TraceContext> {
        let mut all = headers.get_all(TRACEPARENT).iter();
        let first = all.next()?;
        if all.next().is_some() {
            return None;
        }
        let parent = parse_traceparent(first.as_bytes()).ok()?;
        let state = parse_tracestate(headers.get_all(TRACESTATE).iter().map(|v| v.as_bytes()));
        Some(TraceContext {
            trace_id: parent.trace_id,
            parent_id: parent.parent_id,
            span_id: span_id(&parent),
            flags: parent.flags & SAMPLED,
            state: state.map(String::into_boxed_str),
        })
    }

    /// The `traceparent` the upstream gets: this trace, this gateway's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[..3].copy_from_slice(b"00-");
        write_hex(&mut buf[3..35], &self.trace_id);
        buf[35] = b'-';
        write_hex(&mut buf[36..52], &self.span_id);
        buf[52] = b'-';
        write_hex(&mut buf[53..55], &[self.flags]);
        HeaderValue::from_bytes(&buf).expect("hex and '-' are valid header bytes")
    }
}

/// Replaces the trace headers the caller sent with the ones that continue `trace` upstream
/// (none when the request started a new trace), so a malformed `traceparent` is never passed
/// on as it came.
pub fn set_upstream_headers(headers: &mut HeaderMap, trace: Option<&TraceContext>) {
    match trace {
        Some(t) => {
            headers.insert(TRACEPARENT, t.traceparent());
            match t.state.as_deref().map(HeaderValue::from_str) {
                Some(Ok(v)) => {
                    headers.insert(TRACESTATE, v);
                }
                _ => {
                    headers.remove(TRACESTATE);
                }
            }
        }
        None => {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
        }
    }
}

/// A fresh random span id, never all zero.
pub fn new_span_id() -> [u8; 8] {
    let mut id: [u8; 8] = rand::random();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

fn hex_array<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_byte(&s[2 * i..2 * i + 2])?;
    }
    Some(out)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
#[path = "trace_context_tests.rs"]
mod tests;
