//! The benchmark upstream: a fast multi-threaded HTTP/1.1 server (keep-alive) answering every
//! request (POST /v1/chat/completions or any other path) with a fixed ~1 KiB OpenAI-shaped
//! chat-completions JSON body. The request body is read and discarded.
//!
//! A request whose JSON body has `"stream": true` is answered instead as OpenAI streams a chat
//! completion: `text/event-stream`, [`STREAM_CHUNKS`] `chat.completion.chunk` events, the first
//! at once and each next one [`STREAM_PACE`] after the previous, each written as its own body
//! frame, the last followed by `data: [DONE]`. `scripts/bench-ttft.py` measures what proxies do to that pace.
//!
//! Usage: bench-upstream [ADDR]   (default 127.0.0.1:0; prints "listening on <addr>")

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Completion chunks in a streamed answer (the `[DONE]` marker comes on top).
const STREAM_CHUNKS: usize = 50;
/// Pause after each chunk of a streamed answer before the next.
const STREAM_PACE: Duration = Duration::from_millis(10);

fn body() -> Bytes {
    let content = "This is a fixed benchmark answer. ".repeat(16);
    let json = format!(
        concat!(
            "{{\"id\":\"chatcmpl-bench0000000000000000000000\",\"object\":\"chat.completion\",",
            "\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",",
            "\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{}\",",
            "\"refusal\":null}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],",
            "\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":160,\"total_tokens\":172}},",
            "\"system_fingerprint\":\"fp_bench\"}}"
        ),
        content.trim_end()
    );
    Bytes::from(json)
}

/// The SSE event of chunk `i` (0-based) of [`STREAM_CHUNKS`]; the last one carries the
/// finish reason, the usage and the `[DONE]` marker.
fn sse_chunk(i: usize) -> Bytes {
    let last = i + 1 == STREAM_CHUNKS;
    let delta = if i == 0 {
        "{\"role\":\"assistant\",\"content\":\"\"}".to_string()
    } else {
        format!("{{\"content\":\"tok{i} \"}}")
    };
    let finish = if last { "\"stop\"" } else { "null" };
    let usage = if last {
        format!(
            ",\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{n},\"total_tokens\":{t}}}",
            n = STREAM_CHUNKS - 1,
            t = STREAM_CHUNKS + 11
        )
    } else {
        String::new()
    };
    let mut event = format!(
        concat!(
            "data: {{\"id\":\"chatcmpl-bench0000000000000000000000\",",
            "\"object\":\"chat.completion.chunk\",\"created\":1700000000,",
            "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_bench\",",
            "\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,",
            "\"finish_reason\":{finish}}}]{usage}}}\n\n"
        ),
        delta = delta,
        finish = finish,
        usage = usage
    );
    if last {
        event.push_str("data: [DONE]\n\n");
    }
    Bytes::from(event)
}

/// A response body fed by a channel: each message becomes one data frame, written by hyper
/// as soon as it arrives (no coalescing with the next chunk).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Whether a request body asks for a streamed answer (`"stream": true` at the top level).
/// Only a body that mentions `"stream"` is parsed, so the 100 KiB body of the large-body cases
/// costs the upstream a substring search, not a JSON parse.
fn wants_stream(body: &[u8]) -> bool {
    let mentions = std::str::from_utf8(body).is_ok_and(|s| s.contains("\"stream\""));
    mentions
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("stream").and_then(serde_json::Value::as_bool))
            .unwrap_or(false)
}

fn stream_response() -> BoxBody<Bytes, Infallible> {
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
    tokio::spawn(async move {
        // A pause after each chunk, not a schedule: a late chunk never makes the next one
        // early, so two chunks never leave here closer than STREAM_PACE.
        for i in 0..STREAM_CHUNKS {
            if i > 0 {
                tokio::time::sleep(STREAM_PACE).await;
            }
            if tx.send(sse_chunk(i)).await.is_err() {
                return;
            }
        }
    });
    ChannelBody(rx).boxed()
}

async fn handle(
    req: Request<Incoming>,
    body: Bytes,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    // Drain the request body so the connection stays reusable.
    let request_body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = if wants_stream(&request_body) {
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(stream_response())
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body).boxed())
    };
    Ok(response.expect("static response"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .expect("ADDR like 127.0.0.1:18080");
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let body = body();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, body.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_flag_is_read_from_the_top_level_only() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(
            br#"{"model":"m","messages":[{"stream":true}]}"#
        ));
        assert!(!wants_stream(b"not json"));
    }

    #[test]
    fn chunks_are_sse_events_and_the_last_ends_the_stream() {
        let first = sse_chunk(0);
        assert!(first.starts_with(b"data: {") && first.ends_with(b"}\n\n"));
        let last = String::from_utf8(sse_chunk(STREAM_CHUNKS - 1).to_vec()).unwrap();
        assert!(last.contains("\"finish_reason\":\"stop\""));
        assert!(last.ends_with("data: [DONE]\n\n"));
        for i in 0..STREAM_CHUNKS {
            let c = sse_chunk(i);
            let json = &c[6..c.iter().position(|&b| b == b'\n').unwrap()];
            serde_json::from_slice::<serde_json::Value>(json).expect("valid JSON chunk");
        }
    }
}
