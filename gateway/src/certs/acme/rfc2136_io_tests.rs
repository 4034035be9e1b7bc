//! The socket side against a scripted server on loopback: stray datagrams are ignored, a lost
//! datagram is sent again, a truncated answer is fetched over TCP, and a forged answer that
//! arrives first is not taken as success.

use super::{answer_to, b64, SECRET};
use crate::certs::acme::rfc2136::{Rfc2136, Rfc2136Error};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Clone, Copy)]
enum Script {
    /// A datagram with another id, then the signed answer.
    StrayThenAnswer,
    /// The first update datagram is lost; the second is answered.
    LoseFirst,
    /// UDP answers truncated; the signed answer comes over TCP.
    Truncate,
    /// An unsigned NOERROR, as an off-path forger would send.
    Forge,
}

/// The answer to an SOA question: NXDOMAIN with `acme.test`'s SOA in the authority section.
fn soa_reply(query: &Message) -> Vec<u8> {
    let mut resp = Message::response(query.metadata.id, OpCode::Query);
    resp.metadata.response_code = ResponseCode::NXDomain;
    resp.add_query(query.queries[0].clone());
    let soa = SOA::new(
        Name::from_ascii("ns.acme.test.").unwrap(),
        Name::from_ascii("h.acme.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    resp.add_authority(Record::from_rdata(
        Name::from_ascii("acme.test.").unwrap(),
        60,
        RData::SOA(soa),
    ));
    resp.to_vec().unwrap()
}

fn signed_ok(request: &[u8]) -> Vec<u8> {
    answer_to(
        request,
        ResponseCode::NoError,
        Some((&SECRET, super::unix_now())),
    )
}

/// Serves `script` on a loopback port (UDP and TCP); returns the port and the number of update
/// datagrams received.
async fn serve(script: Script) -> (u16, Arc<AtomicUsize>) {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, tcp);
        }
    };
    let port = udp.local_addr().unwrap().port();
    let updates = Arc::new(AtomicUsize::new(0));
    let seen = updates.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from): (usize, SocketAddr) = udp.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..n]).unwrap();
            if query.metadata.op_code == OpCode::Query {
                udp.send_to(&soa_reply(&query), from).await.unwrap();
                continue;
            }
            let count = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let reply = match script {
                Script::StrayThenAnswer => {
                    let mut stray =
                        Message::response(query.metadata.id.wrapping_add(1), OpCode::Update);
                    stray.metadata.response_code = ResponseCode::NoError;
                    udp.send_to(&stray.to_vec().unwrap(), from).await.unwrap();
                    signed_ok(&buf[..n])
                }
                Script::LoseFirst if count == 1 => continue,
                Script::LoseFirst => signed_ok(&buf[..n]),
                Script::Truncate => {
                    let mut tc = Message::response(query.metadata.id, OpCode::Update);
                    tc.metadata.truncation = true;
                    tc.to_vec().unwrap()
                }
                Script::Forge => answer_to(&buf[..n], ResponseCode::NoError, None),
            };
            udp.send_to(&reply, from).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tcp.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut request = vec![0u8; usize::from(len)];
            stream.read_exact(&mut request).await.unwrap();
            let reply = signed_ok(&request);
            let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await.unwrap();
        }
    });
    (port, updates)
}

async fn add_txt(port: u16) -> Result<(), Rfc2136Error> {
    let dir =
        std::env::temp_dir().join(format!("postern-rfc2136-io-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("k.key");
    std::fs::write(&file, b64(&SECRET)).unwrap();
    let dns = Rfc2136::from_flag(&format!("127.0.0.1:{port},postern-acme,{}", file.display()));
    std::fs::remove_dir_all(&dir).unwrap();
    dns.unwrap()
        .add_txt("_acme-challenge.acme.test", "value")
        .await
}

#[tokio::test]
async fn a_datagram_with_another_id_is_ignored() {
    let (port, updates) = serve(Script::StrayThenAnswer).await;
    add_txt(port).await.unwrap();
    assert_eq!(updates.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_lost_datagram_is_sent_again_after_the_timeout() {
    let (port, updates) = serve(Script::LoseFirst).await;
    add_txt(port).await.unwrap();
    assert_eq!(updates.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_truncated_answer_is_fetched_again_over_tcp() {
    let (port, updates) = serve(Script::Truncate).await;
    add_txt(port).await.unwrap();
    assert_eq!(updates.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_forged_unsigned_success_is_an_error() {
    let (port, _) = serve(Script::Forge).await;
    let err = add_txt(port).await.unwrap_err();
    assert!(matches!(err, Rfc2136Error::Unverified { .. }), "{err:?}");
}

#[tokio::test]
async fn a_closed_port_is_reported_at_once_with_what_to_check() {
    let port = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap().port()
    };
    let started = std::time::Instant::now();
    let err = add_txt(port).await.unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{err}"
    );
    let text = err.to_string();
    assert!(matches!(err, Rfc2136Error::Io { .. }), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        text.contains("check the SERVER part of --acme-dns-rfc2136"),
        "{text}"
    );
}

#[tokio::test]
async fn an_address_the_server_does_not_listen_on_is_skipped_for_the_next() {
    let closed = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap()
    };
    let (port, _) = serve(Script::StrayThenAnswer).await;
    let open: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = std::env::temp_dir().join(format!("postern-rfc2136-any-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("k.key");
    std::fs::write(&file, b64(&SECRET)).unwrap();
    let dns = Rfc2136::from_flag(&format!("localhost:{port},postern-acme,{}", file.display()));
    std::fs::remove_dir_all(&dir).unwrap();
    let name = Name::from_ascii("_acme-challenge.acme.test.").unwrap();
    let (addr, zone) = dns
        .unwrap()
        .find_zone_at_any(&[closed, open], &name)
        .await
        .unwrap();
    assert_eq!((addr, zone.to_ascii()), (open, "acme.test.".to_string()));
}
