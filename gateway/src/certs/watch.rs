//! The certificates' background duties: re-reading the operator's files when they change or on
//! `SIGHUP`, and telling the operator which public Service names no certificate covers, at
//! startup and after every change.

use super::{Certificates, Coverage, ReloadOutcome, FILE_POLL};
use crate::state::Gateway;
use std::collections::HashMap;
use std::sync::Arc;

/// Polls the files every [`FILE_POLL`] and reloads them at once on `SIGHUP`.
pub async fn reload_files(certs: Arc<Certificates>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; certificate files are still re-read every 2 s");
            None
        }
    };
    let mut tick = tokio::time::interval(FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
        };
        let c = certs.clone();
        let outcome = match tokio::task::spawn_blocking(move || c.reload_files(forced)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "certificate reload panicked");
                continue;
            }
        };
        match outcome {
            ReloadOutcome::Unchanged if forced => {
                tracing::info!("SIGHUP: no --tls-cert or --tls-dir certificate to reload")
            }
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Reloaded(n) => {
                tracing::info!("TLS certificates reloaded: {n} certificates")
            }
            ReloadOutcome::Failed(e) => tracing::warn!(
                "TLS certificate reload failed, keeping the previous certificate: {e}"
            ),
        }
    }
}

/// Logs each public Service whose name is not covered (or, while the operator's files or ACME
/// serve the domain, only by the internal CA), at startup and whenever the Services or the
/// certificates change; a name is logged again only when its coverage changes.
pub async fn report_coverage(gw: Arc<Gateway>, certs: Arc<Certificates>, acme: bool) {
    let mut changes = gw.changes();
    let mut last: HashMap<String, Coverage> = HashMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        let files = certs.table().file_count() > 0;
        let mut now = HashMap::new();
        for (service, host) in gw.public_service_hosts() {
            let coverage = certs.coverage(&host);
            if last.get(&service) != Some(&coverage) {
                if let Some(advice) = advice(&coverage, files, acme) {
                    tracing::warn!(
                        "certificate does not cover service {service} ({host}): {advice}"
                    );
                }
            }
            now.insert(service, coverage);
        }
        last = now;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// What to tell the operator about a name covered this way, or nothing when it is fine.
pub fn advice(coverage: &Coverage, files: bool, acme: bool) -> Option<&'static str> {
    match coverage {
        Coverage::File { .. } | Coverage::Acme => None,
        Coverage::Internal if acme => None,
        Coverage::Internal if files => Some(
            "it is served with the internal CA's certificate, which only clients given --ca-file trust; add a certificate for it to --tls-cert/--tls-dir or use --acme",
        ),
        Coverage::Internal => None,
        Coverage::None => Some(
            "clients will see a certificate for another name; add a certificate for it (--tls-cert, --tls-dir) or use --acme",
        ),
    }
}

/// Appends the certificate metrics: expiry of each served certificate and failed reloads.
pub fn render_metrics(certs: &Certificates, out: &mut String) {
    use std::fmt::Write;
    out.push_str("# HELP postern_certificate_expiry_timestamp_seconds When each served certificate expires (Unix time).\n");
    out.push_str("# TYPE postern_certificate_expiry_timestamp_seconds gauge\n");
    let table = certs.table();
    for e in table.entries() {
        let source = match &e.source {
            super::Source::File(_) => "file",
            super::Source::Acme => "acme",
            super::Source::Internal => "internal-ca",
        };
        let name = e.names.first().map(String::as_str).unwrap_or("");
        let _ = writeln!(
            out,
            "postern_certificate_expiry_timestamp_seconds{{name=\"{}\",source=\"{source}\"}} {}",
            escape_label(name),
            e.not_after
        );
    }
    out.push_str("# HELP postern_tls_reload_failures_total Reloads of certificate files that kept the previous certificates because a file was bad.\n");
    out.push_str("# TYPE postern_tls_reload_failures_total counter\n");
    let _ = writeln!(
        out,
        "postern_tls_reload_failures_total {}",
        certs.reload_failures()
    );
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_is_given_for_uncovered_names_and_internal_only_beside_files() {
        let file = Coverage::File {
            path: "/x.pem".into(),
        };
        assert_eq!(advice(&file, true, false), None);
        assert_eq!(advice(&Coverage::Acme, false, true), None);
        assert_eq!(advice(&Coverage::Internal, false, false), None);
        assert_eq!(advice(&Coverage::Internal, false, true), None);
        assert!(advice(&Coverage::Internal, true, false).is_some());
        assert!(advice(&Coverage::None, false, false).is_some());
        assert!(advice(&Coverage::None, true, true).is_some());
    }
}
