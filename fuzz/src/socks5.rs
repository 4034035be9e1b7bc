//! The agent's SOCKS5 server side: greeting and request parsing (RFC 1928).
//!
//! Properties: arbitrary bytes never panic or read past what the message says; a target
//! read is well-formed (a domain is non-empty UTF-8 of at most 255 bytes); every target
//! written as a CONNECT request reads back the same; replies have the RFC's length.

use arbitrary::{Arbitrary, Unstructured};
use postern_client::tunnel::socks5::{read_greeting, read_request, reply, Reply, Target};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Arbitrary)]
struct Input {
    stream: Vec<u8>,
    target: ArbTarget,
}

#[derive(Debug, Arbitrary)]
enum ArbTarget {
    Addr(SocketAddr),
    Domain(String, u16),
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fn request_bytes(target: &Target) -> Vec<u8> {
    let mut out = vec![5, 1, 0];
    let port = match target {
        Target::Addr(a) => {
            match a.ip() {
                IpAddr::V4(ip) => {
                    out.push(1);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
            }
            a.port()
        }
        Target::Domain(name, port) => {
            out.push(3);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            *port
        }
    };
    out.extend_from_slice(&port.to_be_bytes());
    out
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    runtime().block_on(async {
        let mut rest = &input.stream[..];
        if read_greeting(&mut rest).await.is_ok() {
            if let Ok(Target::Domain(name, _)) = read_request(&mut rest).await {
                assert!(!name.is_empty() && name.len() <= 255, "{name:?}");
            }
        }
        let target = match input.target {
            ArbTarget::Addr(a) => Target::Addr(SocketAddr::new(a.ip(), a.port())),
            ArbTarget::Domain(name, port) if !name.is_empty() && name.len() <= 255 => {
                Target::Domain(name, port)
            }
            ArbTarget::Domain(..) => return,
        };
        let bytes = request_bytes(&target);
        let read = read_request(&mut &bytes[..])
            .await
            .expect("a valid CONNECT");
        assert_eq!(read, target);
        if let Target::Addr(a) = target {
            let r = reply(Reply::Succeeded, Some(a));
            assert_eq!(r.len(), if a.is_ipv4() { 10 } else { 22 });
        }
    });
}
