//! The operator's certificate files: explicit `--tls-cert`/`--tls-key` pairs and `--tls-dir`
//! directories, read from where the operator's renewal tool writes them, and a fingerprint of
//! them so a change is noticed without inotify (it also sees a certbot symlink swap).

use super::pem::{self, PemError};
use super::table::{Entry, Source};
use std::path::{Path, PathBuf};

/// Why the files could not be loaded; names the file and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: PemError },
    #[error("{0}: no certificate pairs found; put NAME.pem (or NAME.crt) beside NAME.key, or a subdirectory with fullchain.pem and privkey.pem")]
    EmptyDir(PathBuf),
}

/// A certificate chain file and its key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the operator named on the command line, in order.
#[derive(Debug, Clone, Default)]
pub struct FileSources {
    pairs: Vec<FilePair>,
    dirs: Vec<PathBuf>,
}

/// Size, modification time (seconds, nanoseconds) and inode-and-device of one file.
type FileFacts = (u64, i64, i64, u64);

/// What a set of files looked like when last read: any change means reload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, Option<FileFacts>)>);

impl FileSources {
    /// `pairs` from repeated `--tls-cert`/`--tls-key`, `dirs` from `--tls-dir`.
    pub fn new(pairs: Vec<FilePair>, dirs: Vec<PathBuf>) -> FileSources {
        FileSources { pairs, dirs }
    }

    /// No file was named: the front door serves ACME or the internal certificate only.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.dirs.is_empty()
    }

    /// Every pair now: the explicit ones first, then each directory's in name order.
    pub fn expand(&self) -> Result<Vec<FilePair>, FileError> {
        let mut out = self.pairs.clone();
        for dir in &self.dirs {
            let found = pairs_in_dir(dir)?;
            if found.is_empty() {
                return Err(FileError::EmptyDir(dir.clone()));
            }
            out.extend(found);
        }
        Ok(out)
    }

    /// Reads and checks every pair; the first bad one fails the whole load, so a reload
    /// either takes every file or keeps every previous certificate.
    pub fn load(&self) -> Result<Vec<Entry>, FileError> {
        self.expand()?.iter().map(load_pair).collect()
    }

    /// Size, modification time, inode and device of each file (following symlinks), and the
    /// directories' listings.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut seen = Vec::new();
        let mut note = |p: &Path| {
            let facts = std::fs::metadata(p).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ino() ^ (m.dev() << 32),
                )
            });
            seen.push((p.to_path_buf(), facts));
        };
        let pairs = match self.expand() {
            Ok(p) => p,
            Err(_) => self.pairs.clone(),
        };
        for dir in &self.dirs {
            note(dir);
        }
        for p in &pairs {
            note(&p.cert);
            note(&p.key);
        }
        Fingerprint(seen)
    }
}

fn load_pair(p: &FilePair) -> Result<Entry, FileError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let chain = read(&p.cert)?;
    let key = read(&p.key)?;
    let loaded = pem::load(&chain, &key).map_err(|source| FileError::Pem {
        path: match source {
            PemError::BadKey(_) | PemError::NoKey | PemError::UnsupportedKey(_) => p.key.clone(),
            _ => p.cert.clone(),
        },
        source,
    })?;
    Ok(Entry {
        certified: loaded.certified,
        names: loaded.names,
        not_after: loaded.not_after,
        source: Source::File(p.cert.clone()),
    })
}

/// `NAME.pem`/`NAME.crt` with `NAME.key` beside it, `fullchain.pem` + `privkey.pem` in the
/// directory itself, and the same in each subdirectory (certbot's `live/<name>/`).
pub fn pairs_in_dir(dir: &Path) -> Result<Vec<FilePair>, FileError> {
    let read_err = |source| FileError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let mut out = Vec::new();
    if let Some(p) = certbot_pair(dir) {
        out.push(p);
    }
    for path in names {
        if path.is_dir() {
            out.extend(certbot_pair(&path));
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("pem" | "crt")) {
            continue;
        }
        let key = path.with_extension("key");
        if key.is_file() {
            out.push(FilePair { cert: path, key });
        }
    }
    Ok(out)
}

fn certbot_pair(dir: &Path) -> Option<FilePair> {
    let cert = dir.join("fullchain.pem");
    let key = dir.join("privkey.pem");
    (cert.is_file() && key.is_file()).then_some(FilePair { cert, key })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a self-signed pair for `names` as `dir/stem.pem` and `dir/stem.key`.
    pub(crate) fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> FilePair {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
                .self_signed(&key)
                .unwrap();
        let pair = FilePair {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }

    /// A fresh scratch directory for one test.
    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("postern-certs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_directory_yields_named_pairs_and_certbot_layout() {
        let d = tempdir("dir");
        write_pair(&d, "b", &["b.test"]);
        write_pair(&d, "a", &["a.test"]);
        std::fs::write(d.join("orphan.pem"), "x").unwrap();
        let live = d.join("live-c");
        std::fs::create_dir_all(&live).unwrap();
        let p = write_pair(&live, "x", &["c.test"]);
        std::fs::rename(&p.cert, live.join("fullchain.pem")).unwrap();
        std::fs::rename(&p.key, live.join("privkey.pem")).unwrap();
        let src = FileSources::new(vec![], vec![d.clone()]);
        let entries = src.load().unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.names[0].clone()).collect();
        assert_eq!(names, ["a.test", "b.test", "c.test"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_empty_directory_is_an_error_naming_it() {
        let d = tempdir("empty");
        let err = FileSources::new(vec![], vec![d.clone()])
            .load()
            .unwrap_err();
        assert!(err.to_string().contains(&d.display().to_string()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn one_bad_pair_fails_the_whole_load_and_names_the_file() {
        let d = tempdir("bad");
        let good = write_pair(&d, "good", &["a.test"]);
        let bad = write_pair(&d, "bad", &["b.test"]);
        std::fs::write(&bad.cert, "not a certificate").unwrap();
        let err = FileSources::new(vec![good, bad.clone()], vec![])
            .load()
            .expect_err("a bad file fails the load");
        assert!(err.to_string().contains("bad.pem"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_fingerprint_changes_when_a_file_is_replaced() {
        let d = tempdir("fp");
        let pair = write_pair(&d, "s", &["a.test"]);
        let src = FileSources::new(vec![pair.clone()], vec![]);
        let before = src.fingerprint();
        assert_eq!(before, src.fingerprint());
        let tmp = d.join("new.pem");
        let other = write_pair(&d, "t", &["a.test"]);
        std::fs::copy(&other.cert, &tmp).unwrap();
        std::fs::rename(&tmp, &pair.cert).unwrap();
        assert_ne!(before, src.fingerprint());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
