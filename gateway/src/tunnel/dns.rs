//! The tunnel name server's protocol, apart from its socket: one DNS message in, the answer
//! out. Messages are read and written with `hickory-proto` (RFC 1035 and EDNS, name
//! compression followed with loop and length limits); what is decided here is only which
//! names this server speaks for and what it answers.

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The UDP payload size advertised in EDNS answers: answers here are a few dozen bytes, and
/// 1232 is the size that avoids IP fragmentation on any path (DNS flag day 2020).
const EDNS_PAYLOAD: u16 = 1232;

/// The answer to datagram `msg`, or `None` when nothing must be sent (shorter than a DNS
/// header, or a response rather than a query: answering those could loop two servers).
///
/// `lookup` gets the Service label of a name this server speaks for (see [`service_label`])
/// and returns the Service's tunnel addresses when the asker may see it. The answer is
/// authoritative: the addresses whose family the question asks for (A or AAAA, class IN)
/// with `ttl` seconds; NXDOMAIN for other names in the zone ([`in_zone`]); REFUSED outside
/// it; FORMERR for a malformed message or one without exactly one question; NOTIMP for an
/// opcode other than QUERY.
pub fn respond(
    msg: &[u8],
    domain: &str,
    ttl: u32,
    lookup: impl FnOnce(&str) -> Option<(Ipv4Addr, Ipv6Addr)>,
) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(msg)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let request = match Message::from_vec(msg) {
        Ok(m) if m.queries.len() == 1 => m,
        _ => return encode(error_reply(&header, ResponseCode::FormErr)),
    };
    let question = &request.queries[0];
    let mut reply = Message::new(header.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata = hickory_proto::op::Metadata::response_from_request(&request.metadata);
    reply.metadata.authoritative = true;
    reply.add_query(question.clone());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    if request.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return encode(reply);
    }
    let name = question_name(question.name());
    let found = name
        .as_deref()
        .and_then(|n| service_label(n, domain))
        .and_then(lookup);
    reply.metadata.response_code = match (&found, &name) {
        (Some(_), _) => ResponseCode::NoError,
        (None, Some(n)) if in_zone(n, domain) => ResponseCode::NXDomain,
        (None, _) => ResponseCode::Refused,
    };
    if let Some((v4, v6)) = found {
        reply.add_answers(answers(question, v4, v6, ttl));
    }
    encode(reply)
}

/// The records answering `question` for a Service at `v4`/`v6`: the family it asks for.
fn answers(question: &Query, v4: Ipv4Addr, v6: Ipv6Addr, ttl: u32) -> Vec<Record> {
    if question.query_class() != DNSClass::IN {
        return Vec::new();
    }
    let rdata = match question.query_type() {
        RecordType::A => RData::A(A(v4)),
        RecordType::AAAA => RData::AAAA(AAAA(v6)),
        _ => return Vec::new(),
    };
    vec![Record::from_rdata(question.name().clone(), ttl, rdata)]
}

/// A reply with no question to a query that could not be read, echoing its id, opcode and RD.
fn error_reply(header: &Header, code: ResponseCode) -> Message {
    let mut reply = Message::error_msg(header.metadata.id, header.metadata.op_code, code);
    reply.metadata.recursion_desired = header.metadata.recursion_desired;
    reply
}

fn encode(reply: Message) -> Option<Vec<u8>> {
    match reply.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::debug!(error = %e, "DNS answer could not be encoded");
            None
        }
    }
}

/// The question's name as matched against Services: lowercase labels joined by dots, no
/// trailing dot. `None` when a label holds a dot itself (legal on the wire, but it would
/// read as two labels and could name a Service the query never asked for).
fn question_name(name: &Name) -> Option<String> {
    let mut labels = Vec::new();
    for label in name.iter() {
        if label.contains(&b'.') {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    Some(labels.join("."))
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
#[path = "dns_tests.rs"]
mod tests;
