use super::keyfile::{self, TsigKey};
use super::message::{self, Change, Context, SoaAnswer};
use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{SOA, TXT};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType, TSigResponseContext, TSigner};

const SECRET: [u8; 32] = [7; 32];

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn path() -> PathBuf {
    PathBuf::from("/etc/postern/acme.key")
}

fn key(secret: &[u8]) -> TsigKey {
    keyfile::parse(&b64(secret), &path(), "postern-acme").unwrap()
}

fn name(s: &str) -> Name {
    message::owner_name(s).unwrap()
}

fn key_error(text: &str, key_name: &str) -> String {
    let err = keyfile::parse(text, &path(), key_name).unwrap_err();
    assert!(matches!(err, Rfc2136Error::KeyFile { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn tsig_keygen_output_is_read_with_its_algorithm() {
    let text = format!(
        "key \"postern-acme\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
        b64(&SECRET)
    );
    let key = keyfile::parse(&text, &path(), "postern-acme").unwrap();
    assert_eq!(key.name.to_ascii(), "postern-acme.");
    assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
    assert_eq!(key.secret, SECRET);

    let text = format!(
        "key postern-acme. {{ algorithm hmac-sha512; secret \"{}\"; }};",
        b64(&[9; 64])
    );
    let key = keyfile::parse(&text, &path(), "Postern-ACME").unwrap();
    assert_eq!(key.algorithm, TsigAlgorithm::HmacSha512);
    assert_eq!(key.secret, [9; 64]);
}

#[test]
fn the_key_named_in_the_flag_is_chosen_among_several_and_comments_are_skipped() {
    let text = format!(
        "# made by tsig-keygen\n// two keys\n/* the second\n is ours */\n\
         key \"other\" {{ algorithm hmac-sha256; secret \"{}\"; }};\n\
         key \"postern-acme\" {{ algorithm hmac-sha384; secret \"{}\"; }}; # ours\n",
        b64(&[1; 32]),
        b64(&SECRET)
    );
    let key = keyfile::parse(&text, &path(), "postern-acme").unwrap();
    assert_eq!(key.algorithm, TsigAlgorithm::HmacSha384);
    assert_eq!(key.secret, SECRET);
}

#[test]
fn a_file_with_only_the_base64_secret_is_hmac_sha256_under_the_flag_name() {
    let key = keyfile::parse(&format!("  {}\n", b64(&SECRET)), &path(), "acme-key").unwrap();
    assert_eq!(key.name.to_ascii(), "acme-key.");
    assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
    assert_eq!(key.secret, SECRET);
}

#[test]
fn key_file_errors_name_the_file_and_line_and_say_what_is_expected() {
    let secret = b64(&SECRET);
    let err = key_error(
        &format!("key \"postern-acme\" {{\n algorithm hmac-sha256\n secret \"{secret}\";\n}};"),
        "postern-acme",
    );
    assert!(
        err.starts_with("/etc/postern/acme.key:3: expected `;`"),
        "{err}"
    );
    assert!(err.contains("tsig-keygen"), "{err}");

    let err = key_error(
        &format!("key \"postern-acme\" {{\n algorithm hmac-md5;\n secret \"{secret}\";\n}};"),
        "postern-acme",
    );
    assert!(
        err.starts_with("/etc/postern/acme.key:1: algorithm hmac-md5 is not supported"),
        "{err}"
    );
    assert!(err.contains("tsig-keygen -a hmac-sha256"), "{err}");

    let err = key_error(
        &format!("key \"someone-else\" {{ algorithm hmac-sha256; secret \"{secret}\"; }};"),
        "postern-acme",
    );
    assert!(
        err.contains("no key named \"postern-acme\" here (found: \"someone-else\")"),
        "{err}"
    );

    let err = key_error(
        "key \"postern-acme\" {\n algorithm hmac-sha256;\n};",
        "postern-acme",
    );
    assert!(
        err.contains(":1: key \"postern-acme\" has no `secret`"),
        "{err}"
    );

    let err = key_error("options { directory \"/var\"; };", "postern-acme");
    assert!(
        err.starts_with("/etc/postern/acme.key:1: expected tsig-keygen's output"),
        "{err}"
    );

    let err = key_error(
        "key \"postern-acme\" {\n algorithm hmac-sha256;\n",
        "postern-acme",
    );
    assert!(err.contains(":2: the file ends where"), "{err}");

    assert!(key_error("", "postern-acme").contains("the file is empty"));
    assert!(key_error("key \"a\" {\n secret \"abc", "a")
        .contains(":2: a quoted string is never closed"));
}

#[test]
fn a_bad_secret_is_reported_without_its_text() {
    let err = key_error(
        "key \"postern-acme\" {\n algorithm hmac-sha256;\n secret \"not*base64!SeCrEt\";\n};",
        "postern-acme",
    );
    assert!(err.contains(":3: the secret is not valid base64"), "{err}");
    assert!(!err.contains("SeCrEt"), "{err}");
}

#[test]
fn debug_output_never_shows_the_secret() {
    let dir = std::env::temp_dir().join(format!("postern-rfc2136-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("k.key");
    std::fs::write(&file, b64(&SECRET)).unwrap();
    let dns = Rfc2136::from_flag(&format!("ns1.example.com,postern-acme,{}", file.display()));
    std::fs::remove_dir_all(&dir).unwrap();
    let shown = format!("{:?}", dns.unwrap());
    assert!(
        shown.contains("ns1.example.com:53") && shown.contains("<redacted>"),
        "{shown}"
    );
    assert!(
        !shown.contains(&b64(&SECRET)) && !shown.contains("7, 7"),
        "{shown}"
    );
}

#[test]
fn the_flag_is_server_key_name_and_key_file() {
    assert_eq!(
        server_address("ns1.example.com").unwrap(),
        "ns1.example.com:53"
    );
    assert_eq!(server_address("192.0.2.1:5353").unwrap(), "192.0.2.1:5353");
    assert_eq!(
        server_address("[2001:db8::1]:53").unwrap(),
        "[2001:db8::1]:53"
    );
    assert_eq!(server_address("2001:db8::1").unwrap(), "[2001:db8::1]:53");
    for bad in ["", "host:0", "host:x", "host:70000", ":53"] {
        assert!(server_address(bad).is_err(), "{bad}");
    }
    let err = Rfc2136::from_flag("ns1.example.com,postern-acme").unwrap_err();
    assert!(
        err.to_string()
            .contains("expected SERVER,KEY_NAME,KEY_FILE"),
        "{err}"
    );
    let err = Rfc2136::from_flag("ns1.example.com:x,k,/nonexistent").unwrap_err();
    assert!(err.to_string().contains("invalid port"), "{err}");
    let err = Rfc2136::from_flag("ns1.example.com,k,/nonexistent/postern.key").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read the TSIG key file /nonexistent/postern.key"),
        "{err}"
    );
}

#[test]
fn names_and_values_that_cannot_be_a_challenge_record_are_refused() {
    assert_eq!(
        name("_acme-challenge.Example.com").to_ascii(),
        "_acme-challenge.Example.com."
    );
    assert!(message::owner_name("*.example.com").is_err());
    assert!(message::owner_name("").is_err());
    assert!(message::owner_name("a..b").is_err());
    assert!(message::txt_value(&"x".repeat(43)).is_ok());
    for bad in [String::new(), "x".repeat(256), "a\nb".into(), "é".into()] {
        assert!(
            matches!(message::txt_value(&bad), Err(Rfc2136Error::Value)),
            "{bad:?}"
        );
    }
}

fn decoded_update(zone: &str, owner: &str, change: Change) -> Message {
    let txt = message::txt_value("digest-value").unwrap();
    let msg = message::update(&name(zone), &name(owner), txt, change).unwrap();
    Message::from_vec(&msg.to_vec().unwrap()).unwrap()
}

#[test]
fn the_update_adds_the_txt_record_in_the_zone_with_ttl_60() {
    let msg = decoded_update("example.com", "_acme-challenge.example.com", Change::Add);
    assert_eq!(msg.metadata.op_code, OpCode::Update);
    assert_eq!(msg.zones().len(), 1);
    assert_eq!(msg.zones()[0].name().to_ascii(), "example.com.");
    assert_eq!(msg.zones()[0].query_type(), RecordType::SOA);
    assert_eq!(msg.zones()[0].query_class(), DNSClass::IN);
    assert!(msg.prerequisites().is_empty());
    let [record] = msg.updates() else {
        panic!("one update record: {msg:?}")
    };
    assert_eq!(record.name.to_ascii(), "_acme-challenge.example.com.");
    assert_eq!((record.dns_class, record.ttl), (DNSClass::IN, 60));
    assert_eq!(
        record.data,
        RData::TXT(TXT::new(vec!["digest-value".into()]))
    );
}

#[test]
fn the_removal_deletes_exactly_that_record() {
    let msg = decoded_update("example.com", "_acme-challenge.example.com", Change::Remove);
    let [record] = msg.updates() else {
        panic!("one update record: {msg:?}")
    };
    assert_eq!((record.dns_class, record.ttl), (DNSClass::NONE, 0));
    assert_eq!(
        record.data,
        RData::TXT(TXT::new(vec!["digest-value".into()]))
    );
}

#[test]
fn a_name_outside_the_zone_is_not_sent() {
    let txt = message::txt_value("v").unwrap();
    let err = message::update(
        &name("example.org"),
        &name("_acme-challenge.example.com"),
        txt,
        Change::Add,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not inside the zone example.org."),
        "{err}"
    );
}

#[test]
fn the_update_is_signed_with_the_key() {
    let k = key(&SECRET);
    let msg = message::update(
        &name("example.com"),
        &name("_acme-challenge.example.com"),
        message::txt_value("v").unwrap(),
        Change::Add,
    )
    .unwrap();
    let (bytes, _) = message::sign(msg, &k, 1_800_000_000).unwrap();
    let ours = TSigner::new(
        SECRET.to_vec(),
        TsigAlgorithm::HmacSha256,
        name("postern-acme"),
        300,
    )
    .unwrap();
    let (_, time, _) = ours.verify_message_byte(&bytes, None, true).unwrap();
    assert_eq!(time, 1_800_000_000);
    let other = TSigner::new(
        vec![8; 32],
        TsigAlgorithm::HmacSha256,
        name("postern-acme"),
        300,
    )
    .unwrap();
    assert!(other.verify_message_byte(&bytes, None, true).is_err());
}

/// A server's answer to the signed request `request`: `sign` is the server's key and clock,
/// `None` for an unsigned answer.
fn answer_to(request: &[u8], rcode: ResponseCode, sign: Option<(&[u8], u64)>) -> Vec<u8> {
    let req = Message::from_vec(request).unwrap();
    let mut resp = Message::response(req.metadata.id, OpCode::Update);
    resp.metadata.response_code = rcode;
    resp.add_zone(req.zones()[0].clone());
    if let Some((secret, time)) = sign {
        let signer = TSigner::new(
            secret.to_vec(),
            TsigAlgorithm::HmacSha256,
            name("postern-acme"),
            300,
        )
        .unwrap();
        let mac = req.signature().unwrap().data.mac.clone();
        let cx = TSigResponseContext::new(req.metadata.id, time, signer, mac, None);
        let tsig = cx.sign(&resp.to_vec().unwrap()).unwrap();
        resp.set_signature(tsig);
    }
    resp.to_vec().unwrap()
}

/// The answer carrying only a TSIG error, unsigned, as servers send for BADKEY and BADSIG.
fn tsig_error_answer(request: &[u8], badkey: bool, now: u64) -> Vec<u8> {
    let req = Message::from_vec(request).unwrap();
    let id = req.metadata.id;
    let mut resp = Message::response(id, OpCode::Update);
    resp.metadata.response_code = ResponseCode::NotAuth;
    let signer = TSigner::new(
        vec![0; 32],
        TsigAlgorithm::HmacSha256,
        name("postern-acme"),
        300,
    )
    .unwrap();
    let cx = if badkey {
        TSigResponseContext::unknown_key(id, now, name("postern-acme"))
    } else {
        TSigResponseContext::bad_signature(id, now, signer)
    };
    let tsig = cx.sign(&resp.to_vec().unwrap()).unwrap();
    resp.set_signature(tsig);
    resp.to_vec().unwrap()
}

fn check(answer: impl FnOnce(&[u8], u64) -> Vec<u8>) -> Result<(), Rfc2136Error> {
    let now = unix_now();
    let k = key(&SECRET);
    let (zone, owner) = (name("example.com"), name("_acme-challenge.example.com"));
    let msg =
        message::update(&zone, &owner, message::txt_value("v").unwrap(), Change::Add).unwrap();
    let id = msg.metadata.id;
    let (request, mut verifier) = message::sign(msg, &k, now).unwrap();
    let bytes = answer(&request, now);
    let cx = Context {
        server: "ns1.example.com:53",
        key: &k,
        zone: &zone,
        name: &owner,
    };
    message::check_update_answer(&bytes, id, &mut verifier, &cx)
}

#[test]
fn a_signed_noerror_is_success() {
    check(|req, now| answer_to(req, ResponseCode::NoError, Some((&SECRET, now)))).unwrap();
}

#[test]
fn an_unsigned_or_forged_success_is_an_error() {
    for forged in [
        check(|req, _| answer_to(req, ResponseCode::NoError, None)),
        check(|req, now| answer_to(req, ResponseCode::NoError, Some((&[8; 32], now)))),
        check(|req, now| answer_to(req, ResponseCode::NoError, Some((&SECRET, now + 3600)))),
    ] {
        let err = forged.unwrap_err();
        assert!(matches!(err, Rfc2136Error::Unverified { .. }), "{err:?}");
        assert!(err.to_string().contains("may be forged"), "{err}");
    }
}

#[test]
fn a_refusal_says_what_the_server_answered_and_what_to_check() {
    let err =
        check(|req, now| answer_to(req, ResponseCode::Refused, Some((&SECRET, now)))).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("the DNS server ns1.example.com:53 answered REFUSED"),
        "{text}"
    );
    assert!(
        text.contains("check the key name and the server's update-policy/allow-update"),
        "{text}"
    );
    let err = check(|req, _| answer_to(req, ResponseCode::NotAuth, None)).unwrap_err();
    assert!(err.to_string().contains("answered NOTAUTH"), "{err}");
    let err = check(|req, _| answer_to(req, ResponseCode::ServFail, None)).unwrap_err();
    assert!(err.to_string().contains("answered SERVFAIL"), "{err}");
}

#[test]
fn tsig_errors_are_named_with_what_to_fix() {
    let err = check(|req, now| tsig_error_answer(req, true, now))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rejected the TSIG signature with key postern-acme. (BADKEY)"),
        "{err}"
    );
    assert!(
        err.contains("knows no key named postern-acme. with algorithm hmac-sha256"),
        "{err}"
    );
    let err = check(|req, now| tsig_error_answer(req, false, now))
        .unwrap_err()
        .to_string();
    assert!(err.contains("(BADSIG): the secret differs"), "{err}");
}

#[test]
fn an_answer_to_another_question_is_malformed() {
    let err = check(|req, now| {
        let mut bytes = answer_to(req, ResponseCode::NoError, Some((&SECRET, now)));
        bytes[0] ^= 0xff;
        bytes
    })
    .unwrap_err();
    assert!(matches!(err, Rfc2136Error::Malformed { .. }), "{err:?}");
    assert!(matches!(
        check(|_, _| vec![1, 2, 3]),
        Err(Rfc2136Error::Malformed { .. })
    ));
}

fn soa_answer_bytes(
    id: u16,
    rcode: ResponseCode,
    answer: Option<&str>,
    authority: Option<&str>,
) -> Vec<u8> {
    let mut resp = Message::response(id, OpCode::Query);
    resp.metadata.response_code = rcode;
    let soa = |owner: &str| {
        let data = SOA::new(name("ns.x"), name("h.x"), 1, 3600, 600, 86400, 60);
        Record::from_rdata(name(owner), 60, RData::SOA(data))
    };
    if let Some(owner) = answer {
        resp.add_answer(soa(owner));
    }
    if let Some(owner) = authority {
        resp.add_authority(soa(owner));
    }
    resp.to_vec().unwrap()
}

#[test]
fn the_zone_is_the_owner_of_the_enclosing_soa() {
    let asked = name("_acme-challenge.www.Example.com");
    let zone = |bytes: Vec<u8>| message::soa_answer(&bytes, 7, &asked).unwrap();
    assert_eq!(
        zone(soa_answer_bytes(
            7,
            ResponseCode::NXDomain,
            None,
            Some("example.com")
        )),
        SoaAnswer::Zone(name("example.com"))
    );
    assert_eq!(
        zone(soa_answer_bytes(
            7,
            ResponseCode::NoError,
            Some("www.example.com"),
            None
        )),
        SoaAnswer::Zone(name("www.example.com"))
    );
    assert_eq!(
        zone(soa_answer_bytes(7, ResponseCode::Refused, None, None)),
        SoaAnswer::NotHere
    );
    assert_eq!(
        zone(soa_answer_bytes(
            7,
            ResponseCode::NoError,
            None,
            Some("example.org")
        )),
        SoaAnswer::NotHere
    );
    assert!(message::soa_answer(
        &soa_answer_bytes(8, ResponseCode::NoError, Some("example.com"), None),
        7,
        &asked
    )
    .is_err());
    let query = message::soa_query(&asked);
    assert_eq!(query.metadata.message_type, MessageType::Query);
    assert!(!query.metadata.recursion_desired);
    assert_eq!(query.queries[0].query_type(), RecordType::SOA);
}

#[test]
fn only_answers_to_our_question_are_read_and_truncation_is_seen() {
    let mut resp = Message::response(42, OpCode::Update);
    assert_eq!(message::answers(&resp.to_vec().unwrap(), 42), Some(false));
    assert_eq!(message::answers(&resp.to_vec().unwrap(), 43), None);
    resp.metadata.truncation = true;
    assert_eq!(message::answers(&resp.to_vec().unwrap(), 42), Some(true));
    let query = Message::new(42, MessageType::Query, OpCode::Update);
    assert_eq!(message::answers(&query.to_vec().unwrap(), 42), None);
    assert_eq!(message::answers(&[0, 42], 42), None);
}

#[path = "rfc2136_io_tests.rs"]
mod io;
