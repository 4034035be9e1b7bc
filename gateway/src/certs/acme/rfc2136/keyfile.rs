//! TSIG keys as operators already have them: the `key` statement `tsig-keygen` prints and
//! BIND's `named.conf` includes, or a file holding only the base64 secret. Pure: text in, key
//! out, with errors that name the file and line and say what was expected.

use super::Rfc2136Error;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::Name;
use std::fmt;
use std::path::Path;

/// What a well-formed key file looks like, quoted in every structural error.
const EXPECTED: &str =
    "tsig-keygen's output `key \"NAME\" { algorithm hmac-sha256; secret \"BASE64\"; };` \
     or a file holding only the base64 secret";

/// A TSIG key (RFC 8945): the name both sides know it by, its HMAC and the shared secret.
/// `Debug` never shows the secret.
#[derive(Clone)]
pub struct TsigKey {
    pub name: Name,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name.to_ascii())
            .field("algorithm", &self.algorithm.to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Punct(char),
}

/// Reads the key called `key_name` from the text of the key file at `path` (the path only
/// names the file in errors). A bare base64 secret is taken as `key_name` with HMAC-SHA256.
pub fn parse(text: &str, path: &Path, key_name: &str) -> Result<TsigKey, Rfc2136Error> {
    let err = |line: usize, message: String| Rfc2136Error::KeyFile {
        path: path.to_path_buf(),
        line,
        message,
    };
    let name = key_name_of(key_name).map_err(|m| err(1, m))?;
    if let Some(secret) = bare_secret(text) {
        return Ok(TsigKey {
            name,
            algorithm: TsigAlgorithm::HmacSha256,
            secret,
        });
    }
    let tokens = tokenize(text).map_err(|(line, m)| err(line, m))?;
    match tokens.first() {
        None => return Err(err(1, format!("the file is empty; expected {EXPECTED}"))),
        Some((_, Token::Word(w))) if w == "key" => {}
        Some((line, _)) => return Err(err(*line, format!("expected {EXPECTED}"))),
    }
    let last_line = tokens.last().map_or(1, |t| t.0);
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        last_line,
    };
    let mut found = Vec::new();
    while parser.at < tokens.len() {
        let (line, statement) = parser.key_statement().map_err(|(l, m)| err(l, m))?;
        found.push((line, statement));
    }
    let names: Vec<String> = found.iter().map(|(_, s)| s.name.clone()).collect();
    let Some((line, statement)) = found
        .into_iter()
        .find(|(_, s)| key_name_of(&s.name).is_ok_and(|n| n == name))
    else {
        return Err(err(
            1,
            format!(
                "no key named \"{key_name}\" here (found: \"{}\"); the key name in \
                 --acme-dns-rfc2136 must be the one in the file and on the DNS server",
                names.join("\", \"")
            ),
        ));
    };
    let algorithm = algorithm_of(&statement.algorithm).map_err(|m| err(line, m))?;
    Ok(TsigKey {
        name,
        algorithm,
        secret: statement.secret,
    })
}

/// The key name as a DNS name: TSIG sends it in canonical form (RFC 8945 section 4.3.3).
fn key_name_of(key_name: &str) -> Result<Name, String> {
    let trimmed = key_name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("the key name is empty".into());
    }
    let mut name = Name::from_ascii(trimmed)
        .map_err(|e| format!("the key name \"{key_name}\" is not a DNS name: {e}"))?
        .to_lowercase();
    name.set_fqdn(true);
    Ok(name)
}

fn algorithm_of(text: &str) -> Result<TsigAlgorithm, String> {
    match text.trim_end_matches('.').to_ascii_lowercase().as_str() {
        "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
        other => Err(format!(
            "algorithm {other} is not supported; expected hmac-sha256, hmac-sha384 or \
             hmac-sha512 (make a new key with `tsig-keygen -a hmac-sha256 NAME`)"
        )),
    }
}

/// The secret of a file holding only base64 (whitespace allowed), if it is that.
fn bare_secret(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(compact).ok().filter(|s| !s.is_empty())
}

struct Statement {
    name: String,
    algorithm: String,
    secret: Vec<u8>,
}

struct Parser<'a> {
    tokens: &'a [(usize, Token)],
    at: usize,
    last_line: usize,
}

impl Parser<'_> {
    fn next(&mut self, expected: &str) -> Result<(usize, &Token), (usize, String)> {
        let Some((line, token)) = self.tokens.get(self.at) else {
            return Err((
                self.last_line,
                format!("the file ends where {expected} was expected; expected {EXPECTED}"),
            ));
        };
        self.at += 1;
        Ok((*line, token))
    }

    fn punct(&mut self, c: char) -> Result<(), (usize, String)> {
        let expected = format!("`{c}`");
        match self.next(&expected)? {
            (_, Token::Punct(p)) if *p == c => Ok(()),
            (line, _) => Err((line, format!("expected {expected}; expected {EXPECTED}"))),
        }
    }

    fn value(&mut self, what: &str) -> Result<(usize, String), (usize, String)> {
        match self.next(what)? {
            (line, Token::Word(w) | Token::Quoted(w)) => Ok((line, w.clone())),
            (line, Token::Punct(_)) => Err((line, format!("expected {what}"))),
        }
    }

    /// `key NAME { algorithm ALG; secret "B64"; };`
    fn key_statement(&mut self) -> Result<(usize, Statement), (usize, String)> {
        let start = match self.next("`key`")? {
            (line, Token::Word(w)) if w == "key" => line,
            (line, _) => {
                return Err((
                    line,
                    format!(
                        "expected `key` (only key statements belong here); expected {EXPECTED}"
                    ),
                ))
            }
        };
        let (_, name) = self.value("the key name")?;
        self.punct('{')?;
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match self.next("`algorithm`, `secret` or `}`")? {
                (_, Token::Punct('}')) => break,
                (_, Token::Word(w)) if w == "algorithm" => {
                    algorithm = Some(self.value("the algorithm name")?.1);
                }
                (_, Token::Word(w)) if w == "secret" => {
                    let (line, b64) = self.value("the base64 secret")?;
                    let bytes = STANDARD
                        .decode(b64.trim())
                        .ok()
                        .filter(|s| !s.is_empty())
                        .ok_or((line, "the secret is not valid base64".to_string()))?;
                    secret = Some(bytes);
                }
                (line, _) => {
                    return Err((
                        line,
                        format!("expected `algorithm`, `secret` or `}}` in key \"{name}\""),
                    ))
                }
            }
            self.punct(';')?;
        }
        self.punct(';')?;
        let algorithm = algorithm.ok_or((
            start,
            format!("key \"{name}\" has no `algorithm` (expected e.g. `algorithm hmac-sha256;`)"),
        ))?;
        let secret = secret.ok_or((
            start,
            format!("key \"{name}\" has no `secret` (expected `secret \"BASE64\";`)"),
        ))?;
        Ok((
            start,
            Statement {
                name,
                algorithm,
                secret,
            },
        ))
    }
}

/// Words, quoted strings and `{ } ;`, each with its line; `#`, `//` and `/* */` comments are
/// skipped as in named.conf.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, (usize, String)> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'*') => {
                let start = line;
                chars.next();
                let mut prev = ' ';
                loop {
                    match chars.next() {
                        None => return Err((start, "the comment `/*` is never closed".into())),
                        Some('/') if prev == '*' => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            prev = c;
                        }
                    }
                }
            }
            '{' | '}' | ';' => tokens.push((line, Token::Punct(c))),
            '"' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err((start, "a quoted string is never closed".into())),
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            s.push(c);
                        }
                    }
                }
                tokens.push((start, Token::Quoted(s)));
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                tokens.push((line, Token::Word(s)));
            }
        }
    }
    Ok(tokens)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize) {
    for c in chars.by_ref() {
        if c == '\n' {
            *line += 1;
            break;
        }
    }
}
