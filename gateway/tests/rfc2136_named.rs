//! DNS-01 updates against a real BIND 9: `named` serves a zone that takes TSIG-signed updates
//! with a key made by `tsig-keygen`, `Rfc2136` adds and removes TXT records in it, and `dig`
//! (an independent client) reads what the zone then holds. Skips, saying why, when BIND or
//! dig is not installed (CI installs `bind9` and `bind9-dnsutils`).

use postern_gateway::certs::acme::rfc2136::Rfc2136;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY_NAME: &str = "postern-acme";
const NAME: &str = "_acme-challenge.acme.test";

fn find(tool: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(tool))
    .find(|p| p.exists())
}

/// A `named` in the foreground on a free loopback port, killed and its directory removed on
/// drop.
struct Named {
    child: Child,
    dir: PathBuf,
    port: u16,
    key_file: PathBuf,
    dig: PathBuf,
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP at the time of asking.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Where named's files go: under `/var/cache/bind` when this user may write there (root in
/// CI), because Debian's AppArmor profile for named, enforced wherever AppArmor is on, lets
/// it read and write almost nowhere else; else the temp directory.
fn base_dir() -> PathBuf {
    let cache = Path::new("/var/cache/bind");
    let probe = cache.join(format!(".postern-probe-{}", std::process::id()));
    if std::fs::create_dir(&probe).is_ok() {
        let _ = std::fs::remove_dir(&probe);
        return cache.to_path_buf();
    }
    std::env::temp_dir()
}

fn tsig_keygen(tool: &Path, algorithm: &str, name: &str) -> String {
    let out = Command::new(tool)
        .args(["-a", algorithm, name])
        .output()
        .expect("run tsig-keygen");
    assert!(out.status.success(), "tsig-keygen failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn start(tag: &str) -> Option<Named> {
    let (Some(named), Some(keygen), Some(dig)) = (find("named"), find("tsig-keygen"), find("dig"))
    else {
        eprintln!(
            "skipping: BIND 9 (named, tsig-keygen) or dig is not installed; \
             apt-get install bind9 bind9-dnsutils"
        );
        return None;
    };
    let dir = base_dir().join(format!("postern-rfc2136-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("postern-acme.key");
    std::fs::write(&key_file, tsig_keygen(&keygen, "hmac-sha256", KEY_NAME)).unwrap();
    let zone_file = dir.join("acme.test.zone");
    std::fs::write(
        &zone_file,
        "$TTL 60\n\
         @ IN SOA ns.acme.test. hostmaster.acme.test. 1 3600 600 86400 60\n\
         @ IN NS ns.acme.test.\n\
         ns IN A 127.0.0.1\n",
    )
    .unwrap();
    let locked_file = dir.join("locked.test.zone");
    std::fs::write(
        &locked_file,
        "$TTL 60\n\
         @ IN SOA ns.locked.test. hostmaster.locked.test. 1 3600 600 86400 60\n\
         @ IN NS ns.acme.test.\n",
    )
    .unwrap();
    let port = free_port();
    let d = dir.display();
    let conf = dir.join("named.conf");
    std::fs::write(
        &conf,
        format!(
            "include \"{key}\";\n\
             options {{\n\
               directory \"{d}\";\n\
               pid-file \"{d}/named.pid\";\n\
               session-keyfile \"{d}/session.key\";\n\
               listen-on port {port} {{ 127.0.0.1; }};\n\
               listen-on-v6 {{ none; }};\n\
               recursion no;\n\
               dnssec-validation no;\n\
             }};\n\
             controls {{ }};\n\
             zone \"acme.test\" {{\n\
               type primary;\n\
               file \"{zone}\";\n\
               update-policy {{ grant \"{KEY_NAME}\" name {NAME}. TXT; }};\n\
             }};\n\
             zone \"locked.test\" {{\n\
               type primary;\n\
               file \"{locked}\";\n\
               allow-update {{ none; }};\n\
             }};\n",
            key = key_file.display(),
            zone = zone_file.display(),
            locked = locked_file.display(),
        ),
    )
    .unwrap();
    let child = Command::new(&named)
        .arg("-g")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("named.log")).unwrap(),
        ))
        .spawn()
        .expect("start named");
    let server = Named {
        child,
        dir,
        port,
        key_file,
        dig,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.dig_short("acme.test", "SOA").is_empty() {
        assert!(
            Instant::now() < deadline,
            "named did not answer within 20 s; its log:\n{}",
            std::fs::read_to_string(server.dir.join("named.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}

impl Named {
    /// What `dig +short` reads for `name`/`rtype` from this server, one record a line.
    fn dig_short(&self, name: &str, rtype: &str) -> String {
        let out = Command::new(&self.dig)
            .arg("@127.0.0.1")
            .args(["-p", &self.port.to_string(), rtype, name])
            .args(["+short", "+norecurse", "+time=2", "+tries=1"])
            .output()
            .expect("run dig");
        if !out.status.success() {
            return String::new();
        }
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with(";;"))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines.join("\n")
    }

    fn flag(&self, key_file: &Path) -> String {
        format!("127.0.0.1:{},{KEY_NAME},{}", self.port, key_file.display())
    }
}

#[tokio::test]
async fn txt_records_are_added_and_removed_through_a_tsig_signed_update() {
    let Some(named) = start("addremove") else {
        return;
    };
    let dns = Rfc2136::from_flag(&named.flag(&named.key_file)).unwrap();
    assert_eq!(named.dig_short(NAME, "TXT"), "");

    dns.add_txt(NAME, "first-value").await.unwrap();
    assert_eq!(named.dig_short(NAME, "TXT"), "\"first-value\"");
    // A wildcard and its apex are validated with two values under one name at once.
    dns.add_txt(&format!("{NAME}."), "second-value")
        .await
        .unwrap();
    assert_eq!(
        named.dig_short(NAME, "TXT"),
        "\"first-value\"\n\"second-value\""
    );

    dns.remove_txt(NAME, "first-value").await.unwrap();
    assert_eq!(named.dig_short(NAME, "TXT"), "\"second-value\"");
    dns.remove_txt(NAME, "second-value").await.unwrap();
    assert_eq!(named.dig_short(NAME, "TXT"), "");
    // Removing what is already gone is not an error (a retried cleanup).
    dns.remove_txt(NAME, "second-value").await.unwrap();
}

#[tokio::test]
async fn a_wrong_secret_or_key_name_is_refused_and_the_error_names_the_tsig_failure() {
    let Some(named) = start("wrongkey") else {
        return;
    };
    let keygen = find("tsig-keygen").unwrap();
    let other_secret = named.dir.join("other-secret.key");
    std::fs::write(&other_secret, tsig_keygen(&keygen, "hmac-sha256", KEY_NAME)).unwrap();
    let err = Rfc2136::from_flag(&named.flag(&other_secret))
        .unwrap()
        .add_txt(NAME, "value")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("TSIG") && err.contains("BADSIG"), "{err}");
    assert!(err.contains("the secret differs"), "{err}");

    let unknown = named.dir.join("unknown.key");
    std::fs::write(
        &unknown,
        tsig_keygen(&keygen, "hmac-sha512", "not-on-the-server"),
    )
    .unwrap();
    let flag = format!(
        "127.0.0.1:{},not-on-the-server,{}",
        named.port,
        unknown.display()
    );
    let err = Rfc2136::from_flag(&flag)
        .unwrap()
        .add_txt(NAME, "value")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("TSIG") && err.contains("BADKEY"), "{err}");

    assert_eq!(named.dig_short(NAME, "TXT"), "", "nothing was added");
}

#[tokio::test]
async fn a_zone_closed_to_the_key_or_not_on_the_server_says_what_to_check() {
    let Some(named) = start("refused") else {
        return;
    };
    let dns = Rfc2136::from_flag(&named.flag(&named.key_file)).unwrap();
    let err = dns
        .add_txt("_acme-challenge.locked.test", "value")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("answered REFUSED"), "{err}");
    assert!(err.contains("update-policy/allow-update"), "{err}");
    assert_eq!(named.dig_short("_acme-challenge.locked.test", "TXT"), "");

    let err = dns
        .add_txt("_acme-challenge.elsewhere.test", "value")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("authoritative for no zone containing"),
        "{err}"
    );
}
