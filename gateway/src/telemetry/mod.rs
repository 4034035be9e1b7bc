//! What the gateway records about each request: access log lines and LLM token usage,
//! gathered while bodies stream so nothing is buffered just for accounting.

pub mod access_log;
pub mod body;
pub mod usage;
