//! `posternctl create secret` and `posternctl create credential`.

use super::{resource_ref, writeln_out, Context};
use crate::duration::{format_duration, parse_duration};
use crate::error::{ClientError, Result};
use postern_common::api::{CreateCredentialRequest, CreateCredentialResponse, CreateSecretRequest};
use postern_common::resources::CredentialType;
use serde_json::{json, Value};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

/// What `posternctl create` makes.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CreateCommand {
    /// Store a secret (an upstream API key, say) that Services reference with `fromSecret`.
    Secret(CreateSecretArgs),
    /// Issue a credential for a user; its secret is shown once.
    Credential(CreateCredentialArgs),
}

/// Arguments of `posternctl create secret`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateSecretArgs {
    /// The secret's name.
    pub name: String,
    /// The value (visible in shell history and `ps`; prefer --file, stdin or the prompt).
    #[arg(long, conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file (one trailing newline is removed).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Replace the value if the secret exists.
    #[arg(long)]
    pub overwrite: bool,
}

/// Arguments of `posternctl create credential`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateCredentialArgs {
    /// The credential's name.
    pub name: String,
    /// The user it authenticates as.
    #[arg(long)]
    pub user: String,
    /// oauth2 (client id + secret for /oauth2/token) or auth-token (for `postern login`).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_credential_type)]
    pub credential_type: CredentialType,
    /// Lifetime such as 30m, 24h or 7d; without it the credential does not expire.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// `json` prints only the secret fields, for scripts.
    #[arg(short, long, value_enum, default_value_t = CredentialOutput::Text)]
    pub output: CredentialOutput,
}

/// Output formats of `create credential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialOutput {
    /// The secret with a reminder to save it.
    Text,
    /// `{"clientId","clientSecret"}` or `{"authToken"}`.
    Json,
}

fn parse_credential_type(s: &str) -> std::result::Result<CredentialType, String> {
    CredentialType::parse(s)
        .ok_or_else(|| format!("unknown credential type {s:?}; use oauth2 or auth-token"))
}

/// Runs `posternctl create ...`.
pub fn run(ctx: &Context, cmd: &CreateCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        CreateCommand::Secret(args) => secret(ctx, args, out),
        CreateCommand::Credential(args) => credential(ctx, args, out),
    }
}

fn secret(ctx: &Context, args: &CreateSecretArgs, out: &mut dyn Write) -> Result<()> {
    // Check the session first, so nobody types a secret only to be told to log in.
    let (client, _) = ctx.authenticated()?;
    let stdin = std::io::stdin();
    let value = secret_value(args, &mut stdin.lock(), stdin.is_terminal(), &prompt_twice)?;
    let _: Value = client.post(
        &["secrets"],
        &CreateSecretRequest {
            name: args.name.clone(),
            value,
            overwrite: args.overwrite,
        },
    )?;
    let verb = if args.overwrite { "saved" } else { "created" };
    writeln_out(
        out,
        format_args!("{} {verb}", resource_ref("Secret", &args.name)),
    )
}

/// The secret's value from `--value`, `--file`, piped stdin, or (on a terminal) `prompt`.
/// One trailing newline of a file or stdin is removed; an empty value is an error.
pub fn secret_value(
    args: &CreateSecretArgs,
    stdin: &mut dyn Read,
    stdin_is_terminal: bool,
    prompt: &dyn Fn() -> Result<String>,
) -> Result<String> {
    let value = if let Some(v) = &args.value {
        v.clone()
    } else if let Some(path) = &args.file {
        let text =
            std::fs::read_to_string(path).map_err(|e| ClientError::io("cannot read", path, e))?;
        strip_one_newline(text)
    } else if !stdin_is_terminal {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .map_err(|e| ClientError::io("cannot read", "<stdin>", e))?;
        strip_one_newline(text)
    } else {
        prompt()?
    };
    if value.is_empty() {
        return Err(ClientError::Invalid(
            "the secret value is empty; pass --value, --file, pipe it on stdin or type it at the prompt"
                .to_string(),
        ));
    }
    Ok(value)
}

fn strip_one_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

fn prompt_twice() -> Result<String> {
    let ask = |text: &str| {
        rpassword::prompt_password(text)
            .map_err(|e| ClientError::io("cannot read from", "the terminal", e))
    };
    let first = ask("Secret value: ")?;
    let second = ask("Again: ")?;
    if first != second {
        return Err(ClientError::Invalid(
            "the two values differ; run the command again".to_string(),
        ));
    }
    Ok(first)
}

fn credential(ctx: &Context, args: &CreateCredentialArgs, out: &mut dyn Write) -> Result<()> {
    let ttl_seconds = args.ttl.as_deref().map(parse_duration).transpose()?;
    let (client, _) = ctx.authenticated()?;
    let response: CreateCredentialResponse = client.post(
        &["credentials"],
        &CreateCredentialRequest {
            name: args.name.clone(),
            user: args.user.clone(),
            credential_type: args.credential_type,
            ttl_seconds,
        },
    )?;
    let text = match args.output {
        CredentialOutput::Json => credential_json(args.credential_type, &response)?,
        CredentialOutput::Text => credential_text(args, ttl_seconds, &response)?,
    };
    out.write_all(text.as_bytes())
        .map_err(|e| ClientError::io("cannot write to", "stdout", e))
}

fn missing(field: &str) -> ClientError {
    ClientError::BadResponse {
        url: "/api/v1/credentials".to_string(),
        detail: format!("the response has no {field}"),
    }
}

/// Exactly `{"clientId","clientSecret"}` (oauth2) or `{"authToken"}` (auth-token).
pub fn credential_json(kind: CredentialType, r: &CreateCredentialResponse) -> Result<String> {
    let value = match kind {
        CredentialType::Oauth2 => json!({
            "clientId": r.client_id.as_deref().ok_or_else(|| missing("clientId"))?,
            "clientSecret": r.client_secret.as_deref().ok_or_else(|| missing("clientSecret"))?,
        }),
        CredentialType::AuthToken => json!({
            "authToken": r.auth_token.as_deref().ok_or_else(|| missing("authToken"))?,
        }),
    };
    Ok(format!("{value}\n"))
}

fn credential_text(
    args: &CreateCredentialArgs,
    ttl_seconds: Option<u64>,
    r: &CreateCredentialResponse,
) -> Result<String> {
    let expiry = ttl_seconds.map_or("does not expire".to_string(), |s| {
        format!("expires in {}", format_duration(s))
    });
    let mut text = format!(
        "{} created for user {} ({}, {expiry})\n",
        resource_ref("Credential", &r.name),
        args.user,
        args.credential_type.as_str()
    );
    match args.credential_type {
        CredentialType::Oauth2 => {
            let id = r.client_id.as_deref().ok_or_else(|| missing("clientId"))?;
            let secret = r
                .client_secret
                .as_deref()
                .ok_or_else(|| missing("clientSecret"))?;
            text.push_str(&format!("Client ID:     {id}\nClient secret: {secret}\n"));
        }
        CredentialType::AuthToken => {
            let token = r
                .auth_token
                .as_deref()
                .ok_or_else(|| missing("authToken"))?;
            text.push_str(&format!("Auth token: {token}\n"));
        }
    }
    text.push_str("\nSave the secret now: it cannot be shown again.\n");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(value: Option<&str>, file: Option<PathBuf>) -> CreateSecretArgs {
        CreateSecretArgs {
            name: "k".into(),
            value: value.map(str::to_string),
            file,
            overwrite: false,
        }
    }

    fn no_prompt() -> Result<String> {
        panic!("must not prompt")
    }

    #[test]
    fn value_sources() {
        let got = secret_value(
            &args(Some("v1"), None),
            &mut "ignored".as_bytes(),
            false,
            &no_prompt,
        );
        assert_eq!(got.unwrap(), "v1");
        let got = secret_value(
            &args(None, None),
            &mut "piped\n\n".as_bytes(),
            false,
            &no_prompt,
        );
        assert_eq!(got.unwrap(), "piped\n", "only one newline is stripped");
        let got = secret_value(
            &args(None, None),
            &mut "crlf\r\n".as_bytes(),
            false,
            &no_prompt,
        );
        assert_eq!(got.unwrap(), "crlf");
        let got = secret_value(&args(None, None), &mut "".as_bytes(), true, &|| {
            Ok("typed".into())
        });
        assert_eq!(got.unwrap(), "typed");
        let path = std::env::temp_dir().join(format!("postern-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let got = secret_value(
            &args(None, Some(path.clone())),
            &mut "".as_bytes(),
            true,
            &no_prompt,
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got.unwrap(), "from-file");
    }

    #[test]
    fn empty_value_is_an_error() {
        let err =
            secret_value(&args(None, None), &mut "\n".as_bytes(), false, &no_prompt).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(
            secret_value(&args(Some(""), None), &mut "".as_bytes(), false, &no_prompt).is_err()
        );
    }

    #[test]
    fn json_output_is_exact() {
        let r = CreateCredentialResponse {
            name: "ci".into(),
            client_id: Some("id".into()),
            client_secret: Some("sec".into()),
            auth_token: None,
        };
        assert_eq!(
            credential_json(CredentialType::Oauth2, &r).unwrap(),
            "{\"clientId\":\"id\",\"clientSecret\":\"sec\"}\n"
        );
        assert!(credential_json(CredentialType::AuthToken, &r).is_err());
    }
}
