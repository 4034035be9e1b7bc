use super::*;

/// DER of the acmeIdentifier extension (RFC 8737 section 3): OID 1.3.6.1.5.5.7.1.31,
/// critical TRUE, extnValue = OCTET STRING { OCTET STRING (32 bytes) }.
fn acme_extension(digest: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f, // OID
        0x01, 0x01, 0xff, // critical
        0x04, 0x22, 0x04, 0x20, // OCTET STRING { OCTET STRING (32) }
    ];
    der.extend_from_slice(digest);
    der
}

/// DER of a SAN dNSName entry ([2] IA5String).
fn dns_san(name: &str) -> Vec<u8> {
    let mut der = vec![0x82, name.len() as u8];
    der.extend_from_slice(name.as_bytes());
    der
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn alpn_certificate_carries_the_digest_and_only_the_name() {
    let digest = [7u8; 32];
    let ck = alpn_certificate("svc.example.com", &digest).unwrap();
    assert_eq!(ck.cert.len(), 1);
    let der = ck.cert[0].as_ref();
    assert!(contains(der, &acme_extension(&digest)));
    assert!(contains(der, &dns_san("svc.example.com")));
    assert!(!contains(der, &dns_san("example.com")));
    // keys_match() would parse the certificate with webpki, which refuses the critical
    // extension; the signer's public key must be the certificate's SPKI.
    let spki = ck.key.public_key().expect("ECDSA keys expose their SPKI");
    assert!(
        contains(der, spki.as_ref()),
        "the signing key is the certificate's"
    );
}

#[test]
fn alpn_certificate_differs_per_digest() {
    let a = alpn_certificate("example.com", &[1u8; 32]).unwrap();
    let der = a.cert[0].as_ref();
    assert!(contains(der, &acme_extension(&[1u8; 32])));
    assert!(!contains(der, &acme_extension(&[2u8; 32])));
}

#[test]
fn alpn_certificate_refuses_a_digest_that_is_not_sha256() {
    assert!(matches!(
        alpn_certificate("example.com", &[0u8; 20]),
        Err(ChallengeError::DigestLength(20))
    ));
}

#[test]
fn dns01_record_of_a_wildcard_is_its_base() {
    assert_eq!(dns01_record("*.example.com"), "_acme-challenge.example.com");
    assert_eq!(dns01_record("example.com."), "_acme-challenge.example.com");
    assert_eq!(
        dns01_record("a.example.com"),
        "_acme-challenge.a.example.com"
    );
}

#[test]
fn certificate_request_names_every_identifier_with_a_p256_key() {
    let names = vec!["example.com".to_string(), "*.example.com".to_string()];
    let req = certificate_request(&names).unwrap();
    assert!(contains(&req.csr_der, &dns_san("example.com")));
    assert!(contains(&req.csr_der, &dns_san("*.example.com")));
    // id-ecPublicKey with prime256v1.
    assert!(contains(
        &req.csr_der,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
    ));
    assert!(req.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = certificate_request(&names).unwrap();
    assert_ne!(*req.key_pem, *again.key_pem, "a fresh key per order");
}
