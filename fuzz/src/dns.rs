//! The tunnel's DNS responder, fed arbitrary datagrams as any tunnel peer can send them.
//!
//! Properties: no reply to anything shorter than a header or to a response; every reply
//! is a well-formed DNS response with the query's id; records are only ever the owned
//! Service's addresses, for a question naming that Service in the zone, with NOERROR;
//! names outside the zone are never answered NXDOMAIN.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::RData;
use postern_gateway::tunnel::dns::{in_zone, respond, service_label};
use std::net::{Ipv4Addr, Ipv6Addr};

const DOMAIN: &str = "postern.test";
const OWNED: &str = "web";
const V4: Ipv4Addr = Ipv4Addr::new(100, 65, 1, 2);
const V6: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x7376, 0, 0, 0, 0, 0, 0x102);

fn lowercase_name(m: &Message) -> Option<String> {
    let q = m.queries.first()?;
    let mut labels = Vec::new();
    for l in q.name().iter() {
        if l.contains(&b'.') {
            return None;
        }
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
    }
    Some(labels.join("."))
}

pub fn run(data: &[u8]) {
    let mut asked = None;
    let reply = respond(data, DOMAIN, 30, |label| {
        asked = Some(label.to_owned());
        (label == OWNED).then_some((V4, V6))
    });
    let Some(reply) = reply else {
        assert!(data.len() < 12 || data[2] & 0x80 != 0, "silent on a query");
        return;
    };
    assert!(
        data.len() >= 12 && data[2] & 0x80 == 0,
        "answered a non-query"
    );
    let m = Message::from_vec(&reply).expect("a reply hickory can read back");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
    assert!(m.answers.len() <= 1, "{} answers", m.answers.len());
    let name = lowercase_name(&m);
    if !m.answers.is_empty() {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let name = name.as_deref().expect("an answer has its question");
        assert_eq!(
            service_label(name, DOMAIN),
            Some(OWNED),
            "answered {name:?}"
        );
        for r in &m.answers {
            assert!(
                r.data == RData::A(A(V4)) || r.data == RData::AAAA(AAAA(V6)),
                "{r:?}"
            );
        }
    }
    if m.metadata.response_code == ResponseCode::NXDomain {
        let name = name.as_deref().expect("NXDOMAIN has its question");
        assert!(in_zone(name, DOMAIN), "NXDOMAIN outside the zone: {name:?}");
    }
    if let Some(label) = asked {
        let name = name.expect("a looked-up name has its question");
        assert_eq!(service_label(&name, DOMAIN), Some(label.as_str()));
    }
}
