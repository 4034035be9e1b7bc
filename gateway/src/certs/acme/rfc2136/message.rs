//! The DNS messages of a DNS-01 update, apart from any socket: the SOA question that finds the
//! zone, the RFC 2136 UPDATE that adds or deletes one TXT record, its TSIG signature
//! (RFC 8945) and the check of the server's answer. Messages are read and written with
//! `hickory-proto`, whose TSIG code computes and verifies the HMACs.

use super::keyfile::TsigKey;
use super::Rfc2136Error;
use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// TTL of the challenge record: resolvers (the CA's among them) must not keep a stale value
/// for long when an order is retried with a new one.
pub const TXT_TTL: u32 = 60;

/// Clock skew the server may allow between our time and its own (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

/// Whether an update adds the record or deletes exactly it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Add,
    Remove,
}

/// Who the error messages are about: the server, the key and the name being changed.
pub struct Context<'a> {
    pub server: &'a str,
    pub key: &'a TsigKey,
    pub zone: &'a Name,
    pub name: &'a Name,
}

/// The name as an absolute DNS name, refusing what cannot be a challenge record's owner.
pub fn owner_name(fqdn: &str) -> Result<Name, Rfc2136Error> {
    let bad = |reason: String| Rfc2136Error::Name {
        name: fqdn.to_string(),
        reason,
    };
    let trimmed = fqdn.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.starts_with("*.") || trimmed.contains('*') {
        return Err(bad(
            "expected a host name such as _acme-challenge.example.com".into(),
        ));
    }
    let mut name = Name::from_ascii(trimmed).map_err(|e| bad(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name)
}

/// The TXT data: one character-string of printable ASCII (an ACME DNS-01 value is a 43
/// character base64url digest, RFC 8555 section 8.4).
pub fn txt_value(value: &str) -> Result<TXT, Rfc2136Error> {
    if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Rfc2136Error::Value);
    }
    Ok(TXT::new(vec![value.to_string()]))
}

/// A non-recursive SOA question for `name`, with a random id.
pub fn soa_query(name: &Name) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), RecordType::SOA));
    message
}

/// What an answer to [`soa_query`] says about the zone of `name`.
#[derive(Debug, PartialEq, Eq)]
pub enum SoaAnswer {
    /// The owner of an SOA record (answer or authority section) that encloses `name`.
    Zone(Name),
    /// No enclosing SOA here: ask again for the parent name.
    NotHere,
}

/// Reads the answer to the SOA question `query_id` for `name`: the zone is the owner of an SOA
/// record in the answer section (the name is the apex) or in the authority section (NXDOMAIN
/// or no data below the apex), as long as it encloses `name`.
pub fn soa_answer(bytes: &[u8], query_id: u16, name: &Name) -> Result<SoaAnswer, String> {
    let answer = Message::from_vec(bytes).map_err(|e| format!("cannot parse the answer: {e}"))?;
    if answer.metadata.id != query_id || answer.metadata.message_type != MessageType::Response {
        return Err("the answer does not match the question".into());
    }
    let zone = answer
        .answers
        .iter()
        .chain(answer.authorities.iter())
        .filter(|r| r.record_type() == RecordType::SOA)
        .map(|r| &r.name)
        .find(|owner| owner.zone_of(name) && !owner.is_root());
    Ok(match zone {
        Some(owner) => {
            let mut zone = owner.to_lowercase();
            zone.set_fqdn(true);
            SoaAnswer::Zone(zone)
        }
        None => SoaAnswer::NotHere,
    })
}

/// The UPDATE for zone `zone` that adds `name TXT_TTL IN TXT "value"` (RFC 2136 section
/// 2.5.1) or deletes exactly that record (section 2.5.4: class NONE, TTL 0), with no
/// prerequisite, so adding twice or deleting what is gone both succeed.
pub fn update(
    zone: &Name,
    name: &Name,
    value: TXT,
    change: Change,
) -> Result<Message, Rfc2136Error> {
    if !zone.zone_of(name) {
        return Err(Rfc2136Error::Name {
            name: name.to_ascii(),
            reason: format!("it is not inside the zone {}", zone.to_ascii()),
        });
    }
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut zone_question = Query::query(zone.clone(), RecordType::SOA);
    zone_question.set_query_class(DNSClass::IN);
    message.add_zone(zone_question);
    let mut record = Record::from_rdata(name.clone(), TXT_TTL, RData::TXT(value));
    record.dns_class = DNSClass::IN;
    if change == Change::Remove {
        record.dns_class = DNSClass::NONE;
        record.ttl = 0;
    }
    message.add_update(record);
    Ok(message)
}

/// Signs `message` with `key` at `now` (seconds since the epoch) and encodes it; the verifier
/// checks the server's answer against the request's MAC.
pub fn sign(
    mut message: Message,
    key: &TsigKey,
    now: u64,
) -> Result<(Vec<u8>, TSigVerifier), Rfc2136Error> {
    let internal = Rfc2136Error::Sign;
    let signer = TSigner::new(
        key.secret.clone(),
        key.algorithm.clone(),
        key.name.clone(),
        FUDGE,
    )
    .map_err(|e| internal(e.to_string()))?;
    let verifier = message
        .finalize(&signer, now)
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| internal("no verifier".into()))?;
    let bytes = message.to_vec().map_err(|e| internal(e.to_string()))?;
    Ok((bytes, verifier))
}

/// The id and truncation bit of a datagram that answers question `id`, or `None` when it does
/// not (too short, a question, another id): such datagrams are ignored.
pub fn answers(bytes: &[u8], id: u16) -> Option<bool> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    (header.metadata.id == id && header.metadata.message_type == MessageType::Response)
        .then_some(header.metadata.truncation)
}

/// Checks the answer to a signed UPDATE: success only for NOERROR with a TSIG that verifies
/// with our key over this request (a forged or unsigned success is refused). Failures say
/// what the server answered and what to change.
pub fn check_update_answer(
    bytes: &[u8],
    request_id: u16,
    verifier: &mut TSigVerifier,
    cx: &Context<'_>,
) -> Result<(), Rfc2136Error> {
    let malformed = |reason: String| Rfc2136Error::Malformed {
        server: cx.server.to_string(),
        reason,
    };
    let answer =
        Message::from_vec(bytes).map_err(|e| malformed(format!("cannot parse it: {e}")))?;
    if answer.metadata.id != request_id
        || answer.metadata.message_type != MessageType::Response
        || answer.metadata.op_code != OpCode::Update
    {
        return Err(malformed("it does not answer our update".into()));
    }
    if let Some(error) = answer.signature().and_then(|s| s.data.error) {
        return Err(Rfc2136Error::Tsig {
            server: cx.server.to_string(),
            key: cx.key.name.to_ascii(),
            error: tsig_error_name(error),
            hint: tsig_hint(error, cx.key),
        });
    }
    let verified = verifier.verify(bytes).map(|_| ());
    let rcode = answer.metadata.response_code;
    if rcode != ResponseCode::NoError {
        return Err(Rfc2136Error::Rejected {
            server: cx.server.to_string(),
            name: cx.name.to_ascii(),
            zone: cx.zone.to_ascii(),
            rcode: rcode_name(rcode),
            hint: rcode_hint(rcode),
        });
    }
    verified.map_err(|e| Rfc2136Error::Unverified {
        server: cx.server.to_string(),
        key: cx.key.name.to_ascii(),
        reason: e.to_string(),
    })
}

fn tsig_error_name(error: TsigError) -> String {
    match error {
        TsigError::BadSig => "BADSIG".into(),
        TsigError::BadKey => "BADKEY".into(),
        TsigError::BadTime => "BADTIME".into(),
        TsigError::BadTrunc => "BADTRUNC".into(),
        TsigError::Unknown(code) => format!("TSIG error {code}"),
    }
}

fn tsig_hint(error: TsigError, key: &TsigKey) -> String {
    match error {
        TsigError::BadSig => "the secret differs from the server's: use the key file the server \
                              was configured with"
            .into(),
        TsigError::BadKey => format!(
            "the server knows no key named {} with algorithm {}: use the name and algorithm of \
             the server's key statement",
            key.name.to_ascii(),
            key.algorithm
        ),
        TsigError::BadTime => "this host's clock and the server's differ by more than 5 minutes: \
                               synchronise them (NTP)"
            .into(),
        _ => "check that the key file matches the server's key".into(),
    }
}

/// The RFC mnemonic of a response code, as `dig` and server logs print it.
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

fn rcode_hint(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::Refused => {
            "check the key name and the server's update-policy/allow-update for this zone \
             (it must grant this key TXT updates of the name)"
        }
        ResponseCode::NotAuth => {
            "the server is not authoritative for the zone or does not accept this key: send \
             updates to the zone's primary server and check the key name and algorithm"
        }
        ResponseCode::NotZone => {
            "the name is not inside the zone the server found: check the server's zones"
        }
        ResponseCode::ServFail => {
            "the server could not apply the update: see its log (is its journal file writable?)"
        }
        ResponseCode::FormErr | ResponseCode::NotImp => {
            "the server does not accept RFC 2136 dynamic updates: enable them for the zone"
        }
        _ => "see the server's log for why",
    }
}
