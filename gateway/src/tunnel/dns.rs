//! A minimal DNS message codec for the tunnel's name server: it reads one question and
//! writes an authoritative answer (RFC 1035 sections 4.1.1-4.1.4). Compression pointers are
//! only written (the answer names point at the question), never followed when reading,
//! since a query's single question is never compressed.

use std::net::IpAddr;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Response code: no error.
pub const RCODE_OK: u8 = 0;
/// Response code: format error.
pub const RCODE_FORMERR: u8 = 1;
/// Response code: not implemented (opcode other than QUERY).
pub const RCODE_NOTIMP: u8 = 4;
/// Response code: the name does not exist.
pub const RCODE_NXDOMAIN: u8 = 3;
/// Response code: refused (a name outside the tunnel's zone; stub resolvers then ask their
/// next server, where NXDOMAIN would end the lookup).
pub const RCODE_REFUSED: u8 = 5;

/// Why a datagram is not a query this server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message shorter than its header or question")]
    Truncated,
    #[error("not a query")]
    NotQuery,
    #[error("expected exactly one question, got {0}")]
    QuestionCount(u16),
    #[error("compressed or extended label in a question")]
    BadLabel,
    #[error("name longer than 255 bytes")]
    NameTooLong,
}

/// One parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The opcode and RD bits of the query, echoed in the answer.
    pub flags: u16,
    /// Lowercase, dot-separated, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as sent (name, type, class), echoed in the answer.
    question: Vec<u8>,
}

impl Query {
    /// The opcode (0 is a standard query).
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0x0f) as u8
    }
}

/// Reads the header and the single question of `msg`.
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Truncated);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(DnsError::NotQuery);
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount != 1 {
        return Err(DnsError::QuestionCount(qdcount));
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err(DnsError::BadLabel);
        }
        let label = msg.get(pos..pos + len).ok_or(DnsError::Truncated)?;
        wire_len += len + 1;
        if wire_len > 255 {
            return Err(DnsError::NameTooLong);
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let tail = msg.get(pos..pos + 4).ok_or(DnsError::Truncated)?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Query {
        id,
        flags,
        name: labels.join("."),
        qtype,
        qclass,
        question: msg[12..pos + 4].to_vec(),
    })
}

/// The answer to `q`: `rcode`, and one record per address whose family matches the
/// question type (A for IPv4, AAAA for IPv6), with `ttl` seconds.
pub fn build_answer(q: &Query, rcode: u8, addresses: &[IpAddr], ttl: u32) -> Vec<u8> {
    let records: Vec<&IpAddr> = if q.qclass == CLASS_IN {
        addresses
            .iter()
            .filter(|a| match a {
                IpAddr::V4(_) => q.qtype == TYPE_A,
                IpAddr::V6(_) => q.qtype == TYPE_AAAA,
            })
            .collect()
    } else {
        Vec::new()
    };
    // QR, the query's opcode and RD, AA; RA stays 0 (no recursion offered).
    let flags: u16 = 0x8000 | (q.flags & 0x7900) | 0x0400 | u16::from(rcode & 0x0f);
    let mut out = Vec::with_capacity(12 + q.question.len() + records.len() * 28);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // NSCOUNT, ARCOUNT
    out.extend_from_slice(&q.question);
    for addr in records {
        out.extend_from_slice(&0xc00cu16.to_be_bytes()); // the question's name
        let (rtype, data): (u16, Vec<u8>) = match addr {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// An error answer for a datagram that has a header but no usable question.
pub fn build_error(msg: &[u8], rcode: u8) -> Option<Vec<u8>> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return None;
    }
    let flags = 0x8000 | (u16::from_be_bytes([msg[2], msg[3]]) & 0x7900) | u16::from(rcode);
    let mut out = msg[..2].to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// The Service a query name refers to: `<svc>.local`, `<svc>.local.<domain>` or bare
/// `<svc>` (already lowercase, no trailing dot). Returns the candidate label; the caller
/// checks it is a Service.
pub fn service_label<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    let label = if let Some(rest) = name.strip_suffix(domain) {
        rest.strip_suffix('.')?.strip_suffix(".local")?
    } else if let Some(l) = name.strip_suffix(".local") {
        l
    } else {
        name
    };
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

/// Whether the tunnel's DNS server speaks for `name` (lowercase, no trailing dot):
/// `local`, `*.local`, `*.local.<domain>` and bare labels. For any other name it answers
/// REFUSED, not NXDOMAIN: an agent without systemd-resolved lists this server first in
/// resolv.conf, and an NXDOMAIN would stop the lookup of every other name on the machine.
pub fn in_zone(name: &str, domain: &str) -> bool {
    !name.contains('.')
        || name.ends_with(".local")
        || name
            .strip_suffix(domain)
            .is_some_and(|r| r == "local." || r.ends_with(".local."))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A query as `dig` sends it (with an EDNS OPT record in the additional section).
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[test]
    fn parses_a_question_case_insensitively() {
        let q = parse_query(&query("Web.LOCAL", TYPE_A)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name, "web.local");
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(q.opcode(), 0);
    }

    #[test]
    fn answers_a_with_pointer_and_address() {
        let q = parse_query(&query("web.local", TYPE_A)).unwrap();
        let addrs = [
            "100.65.1.2".parse().unwrap(),
            "fd70:7376::102".parse().unwrap(),
        ];
        let a = build_answer(&q, RCODE_OK, &addrs, 60);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[2] & 0x80, 0x80, "QR set");
        assert_eq!(a[2] & 0x04, 0x04, "AA set");
        assert_eq!(a[2] & 0x01, 0x01, "RD echoed");
        assert_eq!(a[3] & 0x0f, RCODE_OK);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one A record");
        assert_eq!(&a[a.len() - 4..], &[100, 65, 1, 2]);
        let qv6 = parse_query(&query("web.local", TYPE_AAAA)).unwrap();
        let a6 = build_answer(&qv6, RCODE_OK, &addrs, 60);
        assert_eq!(u16::from_be_bytes([a6[6], a6[7]]), 1);
        assert_eq!(&a6[a6.len() - 2..], &[0x01, 0x02]);
        // The answer parses back as the same question once QR is cleared.
        let mut again = a.clone();
        again[2] &= 0x7f;
        assert_eq!(
            parse_query(&again[..12 + q.question.len()]).unwrap().name,
            "web.local"
        );
    }

    #[test]
    fn nxdomain_has_no_records() {
        let q = parse_query(&query("nope.local", TYPE_A)).unwrap();
        let a = build_answer(&q, RCODE_NXDOMAIN, &[], 60);
        assert_eq!(a[3] & 0x0f, RCODE_NXDOMAIN);
        assert_eq!(&a[6..8], &[0, 0]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Truncated));
        let mut m = query("a.local", TYPE_A);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m), Err(DnsError::NotQuery));
        let mut m = query("a.local", TYPE_A);
        m[5] = 2;
        assert_eq!(parse_query(&m), Err(DnsError::QuestionCount(2)));
        let mut m = query("a.local", TYPE_A);
        m[12] = 0xc0;
        assert_eq!(parse_query(&m), Err(DnsError::BadLabel));
        assert_eq!(
            parse_query(&query("a.local", TYPE_A)[..16]),
            Err(DnsError::Truncated)
        );
        let long = vec!["abcdefghij"; 30].join(".");
        assert_eq!(
            parse_query(&query(&long, TYPE_A)),
            Err(DnsError::NameTooLong)
        );
        let e = build_error(&query("a.local", TYPE_A), RCODE_FORMERR).unwrap();
        assert_eq!(e[3] & 0x0f, RCODE_FORMERR);
        assert!(build_error(&[1, 2], RCODE_FORMERR).is_none());
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
}
