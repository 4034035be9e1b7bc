use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    acme: AcmeArgs,
}

fn parse(args: &[&str]) -> Result<Option<AcmeOptions>, AcmeConfigError> {
    let mut argv = vec!["posternd"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap().acme.into_options()
}

fn err(args: &[&str]) -> String {
    parse(args).unwrap_err().to_string()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("postern-acme-args-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
fn without_acme_nothing_runs_and_acme_flags_are_refused() {
    assert!(parse(&[]).unwrap().is_none());
    assert!(parse(&["--http-listen", "127.0.0.1:80"]).unwrap().is_none());
    let e = err(&["--acme-email", "ops@example.com"]);
    assert!(e.contains("--acme-email needs --acme"), "{e}");
    let e = err(&["--acme-directory", "letsencrypt-staging"]);
    assert!(e.contains("--acme-directory needs --acme"), "{e}");
}

#[test]
fn defaults_are_letsencrypt_and_tls_alpn() {
    let o = parse(&["--acme"]).unwrap().unwrap();
    assert_eq!(o.directory, LETSENCRYPT);
    assert_eq!(o.challenge, ChallengeKind::TlsAlpn01);
    assert!(o.contact.is_empty() && o.eab.is_none() && o.dns.is_none());
    assert!(!o.wildcard());
}

#[test]
fn http_listen_makes_http01_the_default_and_tls_alpn_can_be_forced() {
    let o = parse(&["--acme", "--http-listen", "127.0.0.1:8080"])
        .unwrap()
        .unwrap();
    assert_eq!(o.challenge, ChallengeKind::Http01);
    let o = parse(&[
        "--acme",
        "--http-listen",
        "127.0.0.1:8080",
        "--acme-challenge",
        "tls-alpn-01",
    ])
    .unwrap()
    .unwrap();
    assert_eq!(o.challenge, ChallengeKind::TlsAlpn01);
}

#[test]
fn http01_without_a_listener_says_to_add_one() {
    let e = err(&["--acme", "--acme-challenge", "http-01"]);
    assert!(e.contains("needs --http-listen"), "{e}");
}

#[test]
fn unknown_challenge_is_refused_by_the_parser() {
    assert!(Cli::try_parse_from(["posternd", "--acme", "--acme-challenge", "dns-01"]).is_err());
}

#[test]
fn directory_names_and_urls() {
    let o = parse(&["--acme", "--acme-directory", "letsencrypt-staging"])
        .unwrap()
        .unwrap();
    assert_eq!(o.directory, LETSENCRYPT_STAGING);
    let o = parse(&["--acme", "--acme-directory", "https://127.0.0.1:14000/dir"])
        .unwrap()
        .unwrap();
    assert_eq!(o.directory, "https://127.0.0.1:14000/dir");
    for bad in [
        "http://acme.test/dir",
        "acme.test",
        "https://user@acme.test/",
        "staging",
    ] {
        let e = err(&["--acme", "--acme-directory", bad]);
        assert!(e.contains("--acme-directory"), "{bad}: {e}");
    }
}

#[test]
fn email_becomes_a_mailto_contact() {
    let o = parse(&["--acme", "--acme-email", " ops@example.com "])
        .unwrap()
        .unwrap();
    assert_eq!(o.contact, vec!["mailto:ops@example.com".to_string()]);
    for bad in [
        "ops",
        "@example.com",
        "ops@localhost",
        "a@b@example.com",
        "ops@example.com,evil@x.org",
        "o ps@example.com",
        "ops@example.com.",
    ] {
        let e = err(&["--acme", "--acme-email", bad]);
        assert!(e.contains("--acme-email"), "{bad}: {e}");
    }
}

#[test]
fn acme_ca_must_hold_a_certificate() {
    let e = err(&["--acme", "--acme-ca", "/nonexistent/ca.pem"]);
    assert!(
        e.contains("--acme-ca /nonexistent/ca.pem: cannot read it"),
        "{e}"
    );
    let p = temp_file("empty.pem", "not a certificate\n");
    let e = err(&["--acme", "--acme-ca", p.to_str().unwrap()]);
    assert!(e.contains("holds no certificate"), "{e}");
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    let p = temp_file("ca.pem", &ca.cert.pem());
    let o = parse(&["--acme", "--acme-ca", p.to_str().unwrap()])
        .unwrap()
        .unwrap();
    assert_eq!(o.extra_ca_pem.unwrap(), ca.cert.pem().into_bytes());
}

#[test]
fn eab_needs_both_halves_and_a_base64url_key() {
    let key = temp_file(
        "eab.key",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\n",
    );
    let e = err(&["--acme", "--acme-eab-kid", "kid-1"]);
    assert!(e.contains("go together"), "{e}");
    let e = err(&["--acme", "--acme-eab-hmac-key", key.to_str().unwrap()]);
    assert!(e.contains("go together"), "{e}");
    let o = parse(&[
        "--acme",
        "--acme-eab-kid",
        "kid-1",
        "--acme-eab-hmac-key",
        key.to_str().unwrap(),
    ])
    .unwrap()
    .unwrap();
    let eab = o.eab.unwrap();
    assert_eq!(eab.kid, "kid-1");
    assert_eq!(eab.hmac_key.len(), 48);
    assert!(
        !format!("{eab:?}").contains("hmac"),
        "the key is never printed"
    );
    let bad = temp_file("bad.key", "not base64 !!\n");
    let e = err(&[
        "--acme",
        "--acme-eab-kid",
        "kid-1",
        "--acme-eab-hmac-key",
        bad.to_str().unwrap(),
    ]);
    assert!(e.contains("not base64url"), "{e}");
}

#[test]
fn eab_key_accepts_padding_and_refuses_empty() {
    assert_eq!(decode_eab_key("YWJj\n").unwrap().as_slice(), b"abc");
    assert_eq!(decode_eab_key("YWI=").unwrap().as_slice(), b"ab");
    assert!(decode_eab_key("  \n").is_none());
    assert!(
        decode_eab_key("a+b/").is_none(),
        "standard base64 is not base64url"
    );
}

#[test]
fn dns_flag_conflicts_with_a_chosen_challenge() {
    let e = err(&[
        "--acme",
        "--acme-dns-rfc2136",
        "127.0.0.1:53,key,/nonexistent",
        "--acme-challenge",
        "tls-alpn-01",
    ]);
    assert!(e.contains("drop --acme-challenge"), "{e}");
    let e = err(&[
        "--acme",
        "--acme-dns-rfc2136",
        "127.0.0.1:53,key,/nonexistent/key",
    ]);
    assert!(e.starts_with("--acme-dns-rfc2136: "), "{e}");
}

#[test]
fn dns_flag_means_dns01_and_one_wildcard() {
    let key = temp_file(
        "tsig.key",
        "key \"postern-acme\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg==\";\n};\n",
    );
    let spec = format!("127.0.0.1:5353,postern-acme,{}", key.display());
    let o = parse(&[
        "--acme",
        "--acme-dns-rfc2136",
        &spec,
        "--http-listen",
        "127.0.0.1:80",
    ])
    .unwrap()
    .unwrap();
    assert_eq!(o.challenge, ChallengeKind::Dns01);
    assert!(o.wildcard() && o.dns.is_some());
}
