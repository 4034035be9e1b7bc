//! Forwarding: turning an authorized request into an upstream request and streaming the answer back.
//!
//! Pure logic (path and header rewriting, CORS) lives apart from I/O ([`upstream`]) so it can be
//! unit-tested without sockets.

pub mod balance;
pub mod buffer;
pub mod cors;
pub mod forward;
pub mod inbound;
pub mod pipeline;
pub mod replay;
pub mod retry;
pub mod rewrite;
pub mod rule_cache;
pub mod upstream;
pub mod upstream_oauth;
pub mod upstream_state;

/// The error type every boxed body in the gateway carries, so bodies from different sources
/// (hyper, buffered bytes, observed streams) can be mixed behind one type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type the forwarding path uses for requests and responses; unsync so that
/// non-`Sync` streams (hyper's `Incoming`, our observers) fit without extra locking.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
