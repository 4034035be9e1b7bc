//! The benchmark upstream: a fast multi-threaded HTTP/1.1 server (keep-alive) answering every
//! request (POST /v1/chat/completions or any other path) with a fixed ~1 KiB OpenAI-shaped
//! chat-completions JSON body. The request body is read and discarded.
//!
//! Usage: bench-upstream [ADDR]   (default 127.0.0.1:0; prints "listening on <addr>")

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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

async fn handle(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the request body so the connection stays reusable.
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("static response"))
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
