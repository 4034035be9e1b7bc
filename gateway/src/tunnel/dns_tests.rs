//! The responder's decisions, checked on the wire bytes it sends.
use super::*;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_MX: u16 = 15;
const DOMAIN: &str = "postern.test";
const V4: Ipv4Addr = Ipv4Addr::new(100, 65, 1, 2);

fn v6() -> Ipv6Addr {
    "fd70:7376::102".parse().unwrap()
}

/// A query as `dig` sends it (with an EDNS OPT record in the additional section).
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut m = plain_query(name, qtype);
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    m
}

/// A query with the question only (as `getaddrinfo` sends it).
fn plain_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// Answers with one Service, `web`, visible to the asker.
fn ask(msg: &[u8]) -> Option<Vec<u8>> {
    respond(msg, DOMAIN, 30, |label| {
        (label == "web").then(|| (V4, v6()))
    })
}

fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

fn answer_count(reply: &[u8]) -> u16 {
    u16::from_be_bytes([reply[6], reply[7]])
}

#[test]
fn zone_is_local_names_only() {
    for n in [
        "web",
        "web.local",
        "local",
        "web.local.example.com",
        "nope.local",
    ] {
        assert!(in_zone(n, "example.com"), "{n}");
    }
    for n in [
        "example.com",
        "www.google.com",
        "web.example.com",
        "localhost.lan",
        "web.local.other.org",
    ] {
        assert!(!in_zone(n, "example.com"), "{n}");
    }
}

#[test]
fn answers_a_question_case_insensitively() {
    let a = ask(&query("Web.LOCAL", TYPE_A)).unwrap();
    assert_eq!(&a[..2], &[0x12, 0x34]);
    assert_eq!(a[2] & 0x80, 0x80, "QR set");
    assert_eq!(a[2] & 0x04, 0x04, "AA set");
    assert_eq!(a[2] & 0x01, 0x01, "RD echoed");
    assert_eq!(a[3] & 0x80, 0, "no recursion offered");
    assert_eq!(rcode(&a), 0);
    assert_eq!(answer_count(&a), 1, "one A record");
    // The question is echoed as asked (0x20 case randomisation survives).
    assert!(a.windows(10).any(|w| w == b"\x03Web\x05LOCAL"));
    let m = Message::from_vec(&a).unwrap();
    assert_eq!(m.answers[0].data, RData::A(A(V4)));
    assert_eq!(m.answers[0].ttl, 30);
}

#[test]
fn aaaa_gets_the_v6_address_only() {
    for name in ["web.local", "web.local.postern.test", "web"] {
        let a = ask(&plain_query(name, TYPE_AAAA)).unwrap();
        assert_eq!(rcode(&a), 0, "{name}");
        assert_eq!(answer_count(&a), 1, "{name}");
        assert_eq!(&a[a.len() - 16..], &v6().octets(), "{name}");
    }
    // A name that exists but has no record of the asked type: NOERROR, no answer.
    let a = ask(&plain_query("web.local", TYPE_MX)).unwrap();
    assert_eq!((rcode(&a), answer_count(&a)), (0, 0));
}

#[test]
fn edns_queries_get_an_opt_record_back() {
    let m = Message::from_vec(&ask(&query("web.local", TYPE_A)).unwrap()).unwrap();
    assert_eq!(m.edns.unwrap().max_payload(), EDNS_PAYLOAD);
    let m = Message::from_vec(&ask(&plain_query("web.local", TYPE_A)).unwrap()).unwrap();
    assert!(m.edns.is_none());
}

#[test]
fn unknown_names_in_zone_are_nxdomain_others_refused() {
    let a = ask(&query("nope.local", TYPE_A)).unwrap();
    assert_eq!((rcode(&a), answer_count(&a)), (3, 0));
    let a = ask(&query("www.example.com", TYPE_A)).unwrap();
    assert_eq!((rcode(&a), answer_count(&a)), (5, 0));
    // Not visible to this asker: the lookup says no, the answer is NXDOMAIN.
    let a = respond(&query("web.local", TYPE_A), DOMAIN, 30, |_| None).unwrap();
    assert_eq!((rcode(&a), answer_count(&a)), (3, 0));
}

#[test]
fn a_label_holding_a_dot_names_no_service() {
    // One label "web.local": it must not read as the two labels of `web.local`.
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 9];
    m.extend_from_slice(b"web.local");
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    let a = ask(&m).unwrap();
    assert_eq!((rcode(&a), answer_count(&a)), (5, 0));
}

#[test]
fn other_opcodes_are_not_implemented() {
    let mut m = query("web.local", TYPE_A);
    m[2] = (m[2] & 0x87) | (2 << 3); // STATUS
    let a = ask(&m).unwrap();
    assert_eq!((rcode(&a), answer_count(&a)), (4, 0));
    assert_eq!((a[2] >> 3) & 0x0f, 2, "opcode echoed");
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    // Shorter than a header, or a response: nothing is sent.
    assert_eq!(ask(&[0; 5]), None);
    let mut m = query("a.local", TYPE_A);
    m[2] |= 0x80;
    assert_eq!(ask(&m), None);
    // Two questions, a truncated question, a bad label, a name over 255 bytes: FORMERR
    // echoing the id and RD, with no question.
    let mut two = query("a.local", TYPE_A);
    two[5] = 2;
    let mut bad_label = query("a.local", TYPE_A);
    bad_label[12] = 0x80;
    let long = vec!["abcdefghij"; 30].join(".");
    for m in [
        two,
        query("a.local", TYPE_A)[..16].to_vec(),
        bad_label,
        query(&long, TYPE_A),
    ] {
        let a = ask(&m).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(rcode(&a), 1);
        assert_eq!(a[2] & 0x01, 0x01, "RD echoed");
        assert_eq!(&a[4..12], &[0; 8]);
    }
}

#[test]
fn compression_loops_are_refused() {
    // The question's name points at itself.
    let m = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ];
    assert_eq!(rcode(&ask(&m).unwrap()), 1);
}

#[test]
fn name_matching() {
    let d = "postern.test";
    assert_eq!(service_label("web.local", d), Some("web"));
    assert_eq!(service_label("web.local.postern.test", d), Some("web"));
    assert_eq!(service_label("web", d), Some("web"));
    assert_eq!(service_label("web.postern.test", d), None);
    assert_eq!(service_label("a.b.local", d), None);
    assert_eq!(service_label("local", d), Some("local"));
    assert_eq!(service_label(".local", d), None);
    assert_eq!(service_label("example.com", d), None);
    assert_eq!(service_label("", d), None);
}
