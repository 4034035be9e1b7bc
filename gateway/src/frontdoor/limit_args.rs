//! The `posternd serve` flags of the client limits (see docs/operations.md, "Limits and
//! overload"), and the parsers of counts and durations every flag uses.

use super::limits::Limits;
use crate::proxy::buffer::BodyTimeouts;
use std::time::Duration;

/// Bounds on what clients may hold or send (see docs/operations.md, "Limits and overload").
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Limits and overload")]
pub struct LimitArgs {
    /// Open connections per listener; past it new connections are closed at once.
    #[arg(long, default_value_t = 10_000, value_parser = parse_count::<usize>)]
    max_connections: usize,
    /// Requests in flight in the gateway; past it requests get 503 with Retry-After at once.
    #[arg(long, default_value_t = 4096, value_parser = parse_count::<usize>)]
    max_inflight_requests: usize,
    /// The Retry-After of a shed request.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    retry_after: Duration,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 256, value_parser = parse_count::<u32>)]
    max_concurrent_streams: u32,
    /// Largest request head / HTTP/2 header list in bytes (431 past it; HTTP/1.1 at least 8192).
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Most header fields in one request (431 past it).
    #[arg(long, default_value_t = 100, value_parser = parse_count::<usize>)]
    max_headers: usize,
    /// Time to finish the TLS handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
    /// Time to send a request head: from connecting to the first request, and (HTTP/1.1)
    /// from the end of a response to the end of the next request head.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Close a connection with no request in flight for this long (HTTP/2: GOAWAY).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Time a client may keep the gateway waiting for a request body, before any byte.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// Bytes per second of request body that earn one more second of --body-timeout
    /// (0: --body-timeout is the total).
    #[arg(long, default_value_t = 1024)]
    body_min_rate: u64,
}

impl LimitArgs {
    /// The bounds these flags describe.
    pub fn limits(&self) -> Limits {
        Limits {
            tls_handshake: self.tls_handshake_timeout,
            header_read: self.header_timeout,
            idle: self.idle_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_h2_streams: self.max_concurrent_streams,
            max_connections: self.max_connections,
            max_inflight: self.max_inflight_requests,
            retry_after: self.retry_after,
            body: BodyTimeouts {
                timeout: self.body_timeout,
                min_rate: self.body_min_rate,
            },
            ..Limits::default()
        }
    }
}

/// A count that must be at least 1.
pub fn parse_count<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!("{s:?}: give a whole number of at least 1")),
    }
}

/// `30s`, `15m`, `1h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 15m, 1h, 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("a duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_at_least_one() {
        assert_eq!(parse_count::<usize>("7"), Ok(7));
        assert!(parse_count::<u32>("0").is_err());
        assert!(parse_count::<usize>("-1").is_err());
    }
}
