//! HTTP/1.1 through the netstack: a hyper server on an accepted stream answers a
//! hyper client on the dialling side, as the gateway will serve HTTP Services.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use postern_common::netstack::{IpAddress, IpCidr, NetConfig, NetStack};
use tokio::sync::mpsc;

#[tokio::test]
async fn hyper_server_answers_hyper_client() {
    let (a_out, b_in) = mpsc::channel(256);
    let (b_out, a_in) = mpsc::channel(256);
    let gateway = NetStack::new(
        NetConfig {
            addresses: vec![IpCidr::new(IpAddress::v4(10, 100, 0, 1), 16)],
            any_ip: true,
            ..NetConfig::default()
        },
        a_in,
        a_out,
    )
    .expect("gateway");
    let agent = NetStack::new(
        NetConfig {
            addresses: vec![IpCidr::new(IpAddress::v4(10, 0, 0, 2), 32)],
            ..NetConfig::default()
        },
        b_in,
        b_out,
    )
    .expect("agent");

    let listener = gateway
        .listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80))
        .expect("listen");
    let server = tokio::spawn(async move {
        let (stream, local, remote) = listener.accept().await.expect("accept");
        let service =
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let text = format!(
                    "service {local} for {} got {} bytes",
                    remote.ip(),
                    body.len()
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
            .expect("serve");
    });

    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 100, 0, 7)), 80);
    let stream = tokio::time::timeout(Duration::from_secs(10), agent.connect(target))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    for round in 0..3 {
        let req = Request::post("http://svc.local/echo")
            .header("host", "svc.local")
            .body(Full::new(Bytes::from(vec![b'x'; 1000 * (round + 1)])))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            body,
            format!(
                "service 10.100.0.7:80 for 10.0.0.2 got {} bytes",
                1000 * (round + 1)
            )
        );
    }
    drop(sender);
    conn.await.unwrap().expect("client connection");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server ends when the client closes")
        .unwrap();
}
