//! A minimal DNS client message codec (RFC 1035): one question out, the A/AAAA answers in.
//! The transport (UDP through the tunnel's netstack) lives in [`super::userspace`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Why a name could not be encoded or an answer not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name has an empty or over-long label, or is too long overall.
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    /// The answer is cut short or malformed.
    #[error("malformed DNS answer")]
    Malformed,
    /// The answer is for another query.
    #[error("DNS answer id does not match the query")]
    WrongId,
    /// The server answered with an error code (3 = no such name).
    #[error("DNS server answered with code {0}")]
    Rcode(u8),
}

/// A query for `name` (type `qtype`) with recursion desired.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(DnsError::BadName(name.to_string()));
    }
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // RD
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1, AN=NS=AR=0
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName(name.to_string()));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// The A and AAAA addresses in an answer to query `id`.
pub fn parse_answer(id: u16, msg: &[u8]) -> Result<Vec<IpAddr>, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed);
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err(DnsError::WrongId);
    }
    if msg[2] & 0x80 == 0 {
        return Err(DnsError::Malformed); // not a response
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    let (questions, answers) = (count(4), count(6));
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..answers {
        pos = skip_name(msg, pos)?;
        let fixed = msg.get(pos..pos + 10).ok_or(DnsError::Malformed)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = msg
            .get(pos + 10..pos + 10 + len)
            .ok_or(DnsError::Malformed)?;
        match (rtype, len) {
            (TYPE_A, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                addrs.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {} // CNAME and others: the server also lists the final addresses
        }
        pos += 10 + len;
    }
    Ok(addrs)
}

/// The position after a (possibly compressed) name starting at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, DnsError> {
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Malformed)?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => {
                msg.get(pos + 1).ok_or(DnsError::Malformed)?;
                return Ok(pos + 2);
            }
            l if l & 0xc0 == 0 => pos += 1 + usize::from(l),
            _ => return Err(DnsError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(query: &[u8], records: &[(u16, &[u8])], rcode: u8) -> Vec<u8> {
        let mut msg = query.to_vec();
        msg[2] = 0x81;
        msg[3] = 0x80 | rcode;
        msg[7] = records.len() as u8;
        for (rtype, data) in records {
            msg.extend_from_slice(&[0xc0, 12]); // pointer to the question name
            msg.extend_from_slice(&rtype.to_be_bytes());
            msg.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
            msg.extend_from_slice(&(data.len() as u16).to_be_bytes());
            msg.extend_from_slice(data);
        }
        msg
    }

    #[test]
    fn builds_a_query() {
        let q = build_query(0x1234, "api.local.", TYPE_A).unwrap();
        assert_eq!(
            q,
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'p', b'i', 5, b'l', b'o', b'c',
                b'a', b'l', 0, 0, 1, 0, 1
            ]
        );
        assert!(build_query(1, "a..b", TYPE_A).is_err());
        assert!(build_query(1, "", TYPE_A).is_err());
        assert!(build_query(1, &"x".repeat(64), TYPE_A).is_err());
    }

    #[test]
    fn parses_compressed_answers() {
        let q = build_query(7, "api.local", TYPE_A).unwrap();
        let cname: &[u8] = &[3, b'x', b'y', b'z', 0xc0, 12];
        let v6 = "fd70::3".parse::<Ipv6Addr>().unwrap().octets();
        let msg = answer(
            &q,
            &[(5, cname), (TYPE_A, &[100, 65, 0, 3]), (TYPE_AAAA, &v6)],
            0,
        );
        assert_eq!(
            parse_answer(7, &msg).unwrap(),
            vec![
                "100.65.0.3".parse::<IpAddr>().unwrap(),
                "fd70::3".parse().unwrap()
            ]
        );
    }

    #[test]
    fn reports_errors() {
        let q = build_query(7, "nope.local", TYPE_A).unwrap();
        assert_eq!(
            parse_answer(7, &answer(&q, &[], 3)),
            Err(DnsError::Rcode(3))
        );
        assert_eq!(parse_answer(8, &answer(&q, &[], 0)), Err(DnsError::WrongId));
        assert_eq!(parse_answer(7, &q), Err(DnsError::Malformed));
        let mut cut = answer(&q, &[(TYPE_A, &[1, 2, 3, 4])], 0);
        cut.truncate(cut.len() - 2);
        assert_eq!(parse_answer(7, &cut), Err(DnsError::Malformed));
        assert_eq!(parse_answer(7, &[0; 5]), Err(DnsError::Malformed));
    }
}
