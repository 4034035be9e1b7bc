use super::table::{names_cover, CertTable, Coverage, Entry, Source};
use super::*;
use std::path::PathBuf;

fn entry(names: &[&str], source: Source) -> Entry {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
    let l = pem::load(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    Entry {
        certified: l.certified,
        names: l.names,
        not_after: l.not_after,
        source,
    }
}

fn file(names: &[&str]) -> Entry {
    entry(
        names,
        Source::File(PathBuf::from(format!("/etc/{}.pem", names[0]))),
    )
}

fn first_name(t: &CertTable, sni: Option<&str>) -> Option<String> {
    t.select(sni).map(|e| e.names[0].clone())
}

#[test]
fn exact_name_beats_wildcard_and_files_beat_acme_beat_internal() {
    let internal = entry(&["p.test", "*.p.test"], Source::Internal);
    let t = CertTable::new(
        vec![file(&["*.p.test"]), file(&["api.p.test"])],
        Some(internal),
    )
    .with_acme(
        "gemini.p.test",
        Some(entry(&["gemini.p.test"], Source::Acme)),
    )
    .with_acme("api.p.test", Some(entry(&["api.p.test"], Source::Acme)));
    assert_eq!(
        first_name(&t, Some("api.p.test")).as_deref(),
        Some("api.p.test")
    );
    assert!(matches!(
        t.select(Some("api.p.test")).unwrap().source,
        Source::File(_)
    ));
    // The file's wildcard covers gemini too, and files win over ACME.
    assert!(matches!(
        t.select(Some("gemini.p.test")).unwrap().source,
        Source::File(_)
    ));
    assert_eq!(t.coverage("gemini.p.test").label(), "file");
    // The apex is covered by the internal certificate only.
    assert_eq!(t.select(Some("p.test")).unwrap().source, Source::Internal);
    assert_eq!(t.coverage("p.test"), Coverage::Internal);
}

#[test]
fn acme_beats_internal_and_can_be_removed() {
    let internal = entry(&["p.test", "*.p.test"], Source::Internal);
    let t = CertTable::new(vec![], Some(internal)).with_acme(
        "gemini.p.test",
        Some(entry(&["gemini.p.test"], Source::Acme)),
    );
    assert_eq!(
        t.select(Some("gemini.p.test")).unwrap().source,
        Source::Acme
    );
    assert_eq!(t.coverage("gemini.p.test"), Coverage::Acme);
    assert_eq!(
        t.select(Some("other.p.test")).unwrap().source,
        Source::Internal
    );
    let t = t.with_acme("gemini.p.test", None);
    assert_eq!(
        t.select(Some("gemini.p.test")).unwrap().source,
        Source::Internal
    );
    assert_eq!(t.entries().count(), 1);
}

#[test]
fn an_uncovered_name_gets_the_first_file_and_is_reported_as_none() {
    let t = CertTable::new(vec![file(&["a.test"]), file(&["b.test"])], None);
    assert_eq!(first_name(&t, Some("c.test")).as_deref(), Some("a.test"));
    assert_eq!(first_name(&t, None).as_deref(), Some("a.test"));
    assert_eq!(t.coverage("c.test"), Coverage::None);
    assert_eq!(
        CertTable::default().select(Some("a.test")).map(|_| ()),
        None
    );
}

#[test]
fn a_wildcard_covers_exactly_one_label() {
    let names = vec!["*.p.test".to_string()];
    assert!(names_cover(&names, "a.p.test"));
    assert!(!names_cover(&names, "p.test"));
    assert!(!names_cover(&names, "a.b.p.test"));
    assert!(!names_cover(&names, ".p.test"));
    let t = CertTable::new(vec![file(&["*.p.test"])], None);
    assert_eq!(t.coverage("a.b.p.test"), Coverage::None);
}

/// A real rustls handshake in memory against the resolver.
async fn handshake(
    certs: &Arc<Certificates>,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(Vec<String>, Option<Vec<u8>>), String> {
    use tokio_rustls::{TlsAcceptor, TlsConnector};
    #[derive(Debug)]
    struct AcceptAll(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll(provider)))
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(certs.server_config().unwrap());
    let server = tokio::spawn(async move { acceptor.accept(b).await.map(|_| ()) });
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = TlsConnector::from(Arc::new(client))
        .connect(name, a)
        .await
        .map_err(|e| e.to_string())?;
    let _ = server.await;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let (names, _, _) = pem::leaf_facts(&leaf).unwrap();
    Ok((names, conn.alpn_protocol().map(|p| p.to_vec())))
}

use super::files::tests::{tempdir as scratch, write_pair as write};

#[tokio::test]
async fn handshakes_pick_by_sni_and_acme_tls_alpn_gets_only_the_challenge() {
    let d = scratch("sni");
    let a = write(&d, "a", &["a.p.test"]);
    let internal = write(&d, "internal", &["p.test", "*.p.test"]);
    let certs = Certificates::new(
        "p.test".into(),
        FileSources::new(vec![a], vec![]),
        Some(internal),
    )
    .unwrap();
    let h2: &[&[u8]] = &[b"h2", b"http/1.1"];
    let (names, alpn) = handshake(&certs, "a.p.test", h2).await.unwrap();
    assert_eq!(names, ["a.p.test"]);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (names, _) = handshake(&certs, "b.p.test", h2).await.unwrap();
    assert_eq!(names, ["p.test", "*.p.test"]);

    // A client offering only acme-tls/1 gets no certificate until a challenge is put.
    assert!(handshake(&certs, "b.p.test", &[ACME_TLS_ALPN])
        .await
        .is_err());
    let challenge = entry(&["b.p.test"], Source::Acme).certified;
    certs.put_alpn_challenge("B.p.test.", challenge);
    let (names, alpn) = handshake(&certs, "b.p.test", &[ACME_TLS_ALPN])
        .await
        .unwrap();
    assert_eq!(names, ["b.p.test"]);
    assert!(is_acme_challenge(alpn.as_deref()));
    // Offering acme-tls/1 next to h2 is an ordinary client: never the challenge certificate.
    let (names, alpn) = handshake(&certs, "b.p.test", &[b"h2", ACME_TLS_ALPN])
        .await
        .unwrap();
    assert_eq!(names, ["p.test", "*.p.test"]);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    certs.remove_alpn_challenge("b.p.test");
    assert!(handshake(&certs, "b.p.test", &[ACME_TLS_ALPN])
        .await
        .is_err());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_reload_waits_for_stable_files_and_a_bad_file_keeps_the_old_certificates() {
    let d = scratch("reload");
    let pair = write(&d, "s", &["a.p.test"]);
    let certs = Certificates::new(
        "p.test".into(),
        FileSources::new(vec![pair.clone()], vec![]),
        None,
    )
    .unwrap();
    assert!(matches!(
        certs.reload_files(false),
        ReloadOutcome::Unchanged
    ));
    let serial =
        |c: &Certificates| c.table().select(Some("a.p.test")).unwrap().certified.cert[0].clone();
    let before = serial(&certs);

    // A new pair: seen once (not yet stable), then taken on the next poll.
    let new = write(&d, "n", &["a.p.test"]);
    std::fs::rename(&new.cert, &pair.cert).unwrap();
    std::fs::rename(&new.key, &pair.key).unwrap();
    assert!(matches!(
        certs.reload_files(false),
        ReloadOutcome::Unchanged
    ));
    assert!(matches!(
        certs.reload_files(false),
        ReloadOutcome::Reloaded(1)
    ));
    let after = serial(&certs);
    assert_ne!(before, after);

    // A garbage certificate: the reload fails and the previous certificate stays.
    std::fs::write(&pair.cert, "garbage").unwrap();
    assert!(matches!(certs.reload_files(true), ReloadOutcome::Failed(_)));
    assert_eq!(serial(&certs), after);
    assert_eq!(certs.reload_failures(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}
