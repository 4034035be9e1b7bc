//! A throwaway PostgreSQL cluster for tests: `initdb` + `pg_ctl` from Debian's `postgresql`
//! package on a free port, its data and Unix socket in a temporary directory, `trust`
//! authentication on 127.0.0.1. PostgreSQL refuses to run as root, so as root the cluster
//! runs as the `postgres` user (`runuser`). Stopped with `pg_ctl stop -m immediate` on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The newest `/usr/lib/postgresql/*/bin` holding `initdb` and `pg_ctl`, with its major
/// version.
fn bin_dir() -> Option<(u32, PathBuf)> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TLS for the server: certificate and key PEM.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A running throwaway cluster.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// `-o` options for `pg_ctl start`.
    options: String,
}

impl Cluster {
    /// Starts a cluster, or says why not (PostgreSQL is not installed) and returns `None`.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(None)
    }

    /// Starts a cluster with `ssl = on` and the given certificate when `tls` is set.
    pub fn start_with(tls: Option<ServerTls>) -> Option<Cluster> {
        let Some((version, bin)) = bin_dir() else {
            eprintln!(
                "SKIP: PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
            );
            return None;
        };
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "postern-pg-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let mut options = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            port = 0,
            sock = dir.display()
        );
        if let Some(tls) = &tls {
            let cert = dir.join("server.crt");
            let key = dir.join("server.key");
            std::fs::write(&cert, &tls.cert_pem).unwrap();
            std::fs::write(&key, &tls.key_pem).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of {} to postgres failed", dir.display());
        }
        let mut cluster = Cluster {
            bin,
            dir,
            data,
            port: 0,
            as_postgres,
            options,
        };
        let mut args = vec![
            "-D",
            cluster.data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ];
        if version >= 15 {
            // A natural-language default collation (where "alice" sorts before "Zed"), as
            // on most real servers, so the store's bytewise ordering is tested.
            args.extend(["--locale-provider=icu", "--icu-locale=en-US"]);
        }
        let out = cluster.run("initdb", &args);
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        cluster.port = free_port();
        cluster.options = cluster
            .options
            .replacen("-p 0", &format!("-p {}", cluster.port), 1);
        cluster.start_again();
        Some(cluster)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir(&self.dir);
        cmd.output().unwrap()
    }

    /// Starts the (stopped) server again on the same port and waits until it accepts.
    pub fn start_again(&self) {
        let log = self.dir.join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-o",
                &self.options,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL does not accept");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (as a crash would: no checkpoint, connections cut).
    pub fn stop(&self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// The server and its backends, by process id (from `postmaster.pid`).
    fn pids(&self) -> Vec<String> {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let main = pidfile.lines().next().unwrap().trim().to_string();
        let children = Command::new("pgrep").args(["-P", &main]).output().unwrap();
        let mut pids = vec![main];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
        pids
    }

    /// Freezes the server and its backends (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        let ok = Command::new("kill")
            .arg("-STOP")
            .args(self.pids())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Undoes [`Cluster::freeze`].
    pub fn thaw(&self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .args(self.pids())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// A URL to database `db` over TCP without TLS.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates database `db` and returns its URL.
    pub fn create_database(&self, db: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE {db}"));
        self.url(db)
    }

    /// Runs SQL in `db` as the superuser, as an operator with `psql` could.
    pub fn sql(&self, db: &str, sql: &str) {
        let url = self.url(db);
        let sql = sql.to_string();
        block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("admin connection");
            tokio::spawn(conn);
            client.batch_execute(&sql).await.expect("admin SQL");
        });
    }

    /// The first column of the first row of a query, as text.
    pub fn query_text(&self, db: &str, sql: &str) -> Option<String> {
        let url = self.url(db);
        let sql = sql.to_string();
        block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("admin connection");
            tokio::spawn(conn);
            let rows = client.simple_query(&sql).await.expect("admin query");
            rows.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            self.thaw();
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{nanos:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}
