//! `token-vendor migrate` and `token-vendor audit query|verify|export|prune|keygen`:
//! what ops run against the audit database. They need `DATABASE_URL`; `verify` and
//! `prune` also need `AUDIT_HMAC_KEY` (the chains are keyed with it).

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use secrecy::{ExposeSecret, SecretString};

use super::chain::Policy;
use super::checkpoint::{self, Checkpoint};
use super::db::{AuditDb, OpenMode, StoreError};
use super::keys::{ChainKey, Keyring, NoteSigner, NoteVerifier};
use super::query::{AuditQuery, FilterError, FilterParams, TimeSyntax};
use super::AuditEvent;

/// Why an audit command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
    #[error("bad filter --{0}")]
    Filter(#[from] FilterError),
    #[error("TAMPERED: {0}")]
    Tampered(super::chain::Finding),
    #[error("cannot write the output: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Usage(String),
}

/// Output of `audit query`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// `{"events": […], "next_cursor": …}`, as the HTTP API answers.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// Filters of `audit query`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Only this user (the session's `sub`).
    #[arg(long)]
    pub subject: Option<String>,
    /// Only this outcome (issued, reused, invalid_request, unauthenticated, forbidden,
    /// rate_limited, upstream_error, unavailable).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only events whose scope holds all these values, e.g. "transcribe".
    #[arg(long)]
    pub scope: Option<String>,
    /// Only the event of this token (see `audit hash`).
    #[arg(long, value_name = "FINGERPRINT")]
    pub token_fingerprint: Option<String>,
    /// Only this client address.
    #[arg(long)]
    pub client_ip: Option<String>,
    /// Only events for this tenant (as configured, or as asked when it was not).
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this time on: RFC 3339, or a duration ago (15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Events per page (1-1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Continue after a previous page (its `next_cursor`).
    #[arg(long)]
    pub cursor: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Range of `audit export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// From this time on: RFC 3339, or a duration ago (15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
}

/// Retention of `audit prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Delete events older than this, e.g. 90d.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub older_than: Duration,
    /// The checkpoints' verifier key, to check the events against the signed
    /// checkpoints in the database before deleting them; derived from
    /// AUDIT_SIGNING_KEY when that is set instead.
    #[arg(long, value_name = "KEY")]
    pub verifier_key: Option<String>,
    /// A file holding a previous AUDIT_HMAC_KEY, for chains written before a key
    /// rotation (repeat for several).
    #[arg(long, value_name = "FILE")]
    pub previous_key_file: Vec<PathBuf>,
}

/// Applies the schema migrations.
pub async fn migrate(url: &str, out: &mut impl Write) -> Result<(), CommandError> {
    let db = AuditDb::open(url, OpenMode::Create).await?;
    db.migrate().await?;
    writeln!(out, "ok, the audit database is up to date")?;
    Ok(())
}

/// Prints one page of events.
pub async fn query(url: &str, args: &QueryArgs, out: &mut impl Write) -> Result<(), CommandError> {
    let params = FilterParams {
        subject: args.subject.clone(),
        outcome: args.outcome.clone(),
        scope: args.scope.clone(),
        token_fingerprint: args.token_fingerprint.clone(),
        client_ip: args.client_ip.clone(),
        tenant: args.tenant.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        limit: Some(args.limit.to_string()),
        cursor: args.cursor.clone(),
    };
    let q = AuditQuery::parse(&params, TimeSyntax::Rfc3339OrAgo)?;
    let db = AuditDb::open(url, OpenMode::Existing).await?;
    let page = db.query(&q).await?;
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &page).map_err(io::Error::from)?;
            writeln!(out)?;
        }
        Format::Csv => write_csv(&page.events, out)?,
        Format::Table => {
            write_table(&page.events, out)?;
            if let Some(c) = &page.next_cursor {
                eprintln!("more events: add --cursor {c}");
            }
        }
    }
    Ok(())
}

/// What `audit verify` checks against, besides the database.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Also check against the signed checkpoints in this file, kept off the database's
    /// host: raw signed notes, or `audit` log lines whose `checkpoint` field holds one.
    #[arg(long, value_name = "FILE")]
    pub checkpoints: Option<PathBuf>,
    /// The checkpoints' verifier key (`<name>+<id>+<key>`, printed by `audit keygen`);
    /// derived from AUDIT_SIGNING_KEY when that is set instead.
    #[arg(long, value_name = "KEY")]
    pub verifier_key: Option<String>,
    /// A file holding a previous AUDIT_HMAC_KEY, for chains written before a key
    /// rotation (repeat for several).
    #[arg(long, value_name = "FILE")]
    pub previous_key_file: Vec<PathBuf>,
    /// Accept this chain although it has no keyed hashes (plain SHA-256: written
    /// before chains were keyed, and computable by anyone); repeat for several. Each
    /// one accepted is printed.
    #[arg(long, value_name = "CHAIN_ID")]
    pub allow_unkeyed: Vec<String>,
}

/// The secrets `audit verify` needs from the settings.
pub struct VerifySecrets {
    /// AUDIT_HMAC_KEY.
    pub hmac: SecretString,
    /// AUDIT_SIGNING_KEY, if set: the verifier key is derived from it.
    pub signing: Option<SecretString>,
}

fn verifier_of(
    verifier_key: Option<&String>,
    secrets: &VerifySecrets,
) -> Result<Option<NoteVerifier>, CommandError> {
    if let Some(text) = verifier_key {
        return NoteVerifier::parse(text)
            .map(Some)
            .map_err(|e| CommandError::Usage(format!("--verifier-key: {e}")));
    }
    match &secrets.signing {
        Some(key) => NoteSigner::parse(key)
            .map(|s| Some(s.verifier()))
            .map_err(|e| CommandError::Usage(format!("AUDIT_SIGNING_KEY: {e}"))),
        None => Ok(None),
    }
}

/// Checks every chain against its key and the signed checkpoints (those in the
/// database, and those in `--checkpoints FILE`); `Tampered` names the first altered,
/// inserted or removed event, or the truncated, rewritten or missing chain.
pub async fn verify(
    url: &str,
    args: &VerifyArgs,
    secrets: &VerifySecrets,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let keys = keyring(&secrets.hmac, &args.previous_key_file)?;
    let verifier = verifier_of(args.verifier_key.as_ref(), secrets)?;
    let mut checkpoints = Vec::new();
    if let Some(path) = &args.checkpoints {
        let Some(verifier) = &verifier else {
            return Err(CommandError::Usage(
                "--checkpoints needs the verifier key (--verifier-key, or AUDIT_SIGNING_KEY)"
                    .into(),
            ));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| CommandError::Usage(format!("--checkpoints {}: {e}", path.display())))?;
        let notes = checkpoint::notes_in(&text);
        if notes.is_empty() {
            return Err(CommandError::Usage(format!(
                "--checkpoints {}: no signed checkpoints in it",
                path.display()
            )));
        }
        for (i, note) in notes.iter().enumerate() {
            let cp = Checkpoint::open(note, verifier).map_err(|e| {
                CommandError::Usage(format!(
                    "--checkpoints {}: checkpoint {} does not verify: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
            checkpoints.push(cp);
        }
    }
    let policy = Policy {
        keys,
        checkpoints,
        allow_unkeyed: args.allow_unkeyed.iter().cloned().collect(),
    };
    let db = AuditDb::open(url, OpenMode::Existing).await?;
    match db.verify(&policy, verifier.as_ref()).await? {
        Ok(intact) => {
            for chain_id in &intact.unkeyed {
                writeln!(
                    out,
                    "accepted unkeyed chain {chain_id} (--allow-unkeyed): its hashes are plain SHA-256, which anyone can recompute"
                )?;
            }
            writeln!(
                out,
                "ok, {} events ({} chain{}), checked against {} signed checkpoint{}",
                intact.events,
                intact.chains,
                if intact.chains == 1 { "" } else { "s" },
                intact.checkpoints,
                if intact.checkpoints == 1 { "" } else { "s" },
            )?;
            Ok(())
        }
        Err(finding) => Err(CommandError::Tampered(finding)),
    }
}

/// The chain keys: AUDIT_HMAC_KEY's and those of `--previous-key-file`s.
fn keyring(hmac: &SecretString, previous: &[PathBuf]) -> Result<Keyring, CommandError> {
    let mut keys = vec![ChainKey::derive(hmac)];
    for path in previous {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CommandError::Usage(format!("--previous-key-file {}: {e}", path.display()))
        })?;
        keys.push(ChainKey::derive(&SecretString::from(
            text.trim().to_owned(),
        )));
    }
    Ok(Keyring::new(keys))
}

/// Prints a new checkpoint signing key and its verifier key.
pub fn keygen(name: &str, out: &mut impl Write) -> Result<(), CommandError> {
    let signer =
        NoteSigner::generate(name).map_err(|e| CommandError::Usage(format!("--name: {e}")))?;
    writeln!(
        out,
        "# Keep the signing key secret, beside AUDIT_HMAC_KEY; give the verifier key to\n\
         # whoever runs `audit verify` and keep a copy off the database's host."
    )?;
    writeln!(
        out,
        "AUDIT_SIGNING_KEY={}",
        signer.private_text().expose_secret()
    )?;
    writeln!(out, "AUDIT_VERIFIER_KEY={}", signer.verifier().text())?;
    Ok(())
}

/// Writes every event in the range as JSON lines, oldest first, streaming.
pub async fn export(
    url: &str,
    args: &ExportArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let q = AuditQuery::parse(
        &FilterParams {
            since: args.since.clone(),
            until: args.until.clone(),
            ..FilterParams::default()
        },
        TimeSyntax::Rfc3339OrAgo,
    )?;
    let db = AuditDb::open(url, OpenMode::Existing).await?;
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut events = db.export(q.since, q.until);
    while let Some(event) = events.next().await {
        let event = event?;
        match serde_json::to_writer(&mut out, &event)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
        {
            Ok(()) => {}
            // `| head` closing the pipe is a normal way to stop reading.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Deletes events older than the retention, keeping the chains verifiable: each new
/// prune anchor is tagged with the chain key of AUDIT_HMAC_KEY. The events are verified
/// (chain key, signed checkpoints) before they are deleted; `Tampered` names the first
/// bad one, and nothing of its run is deleted.
pub async fn prune(
    url: &str,
    args: &PruneArgs,
    secrets: &VerifySecrets,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let older_than = time::Duration::try_from(args.older_than)
        .map_err(|_| CommandError::Usage("--older-than is too long".into()))?;
    let cutoff = OffsetDateTime::now_utc()
        .checked_sub(older_than)
        .ok_or_else(|| CommandError::Usage("--older-than is too long".into()))?;
    let policy = Policy {
        keys: keyring(&secrets.hmac, &args.previous_key_file)?,
        ..Policy::default()
    };
    let verifier = verifier_of(args.verifier_key.as_ref(), secrets)?;
    let db = AuditDb::open(url, OpenMode::Existing).await?;
    let pruned = db
        .prune(
            cutoff,
            &policy,
            verifier.as_ref(),
            &ChainKey::derive(&secrets.hmac),
        )
        .await?
        .map_err(CommandError::Tampered)?;
    writeln!(
        out,
        "ok, pruned {} events older than {} (verified, checked against {} signed checkpoint{})",
        pruned.events,
        cutoff.format(&Rfc3339).unwrap_or_default(),
        pruned.checkpoints,
        if pruned.checkpoints == 1 { "" } else { "s" },
    )?;
    Ok(())
}

const CSV_HEADER: [&str; 19] = [
    "id",
    "time",
    "request_id",
    "outcome",
    "status",
    "subject",
    "session_id",
    "client_ip",
    "user_agent",
    "origin",
    "scope",
    "tenant",
    "environment",
    "token_fingerprint",
    "token_expires_at",
    "upstream_ms",
    "duration_ms",
    "detail",
    "count",
];

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn csv_fields(e: &AuditEvent) -> [String; 19] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        e.id.clone(),
        rfc3339(e.time),
        e.request_id.clone(),
        e.outcome.to_string(),
        e.status.to_string(),
        opt(&e.subject),
        opt(&e.session_id),
        opt(&e.client_ip),
        opt(&e.user_agent),
        opt(&e.origin),
        opt(&e.scope),
        e.tenant.clone(),
        e.environment.clone(),
        opt(&e.token_fingerprint),
        e.token_expires_at.map(rfc3339).unwrap_or_default(),
        e.upstream_ms.map(|v| v.to_string()).unwrap_or_default(),
        e.duration_ms.to_string(),
        opt(&e.detail),
        e.count.to_string(),
    ]
}

fn csv_cell(s: &str) -> String {
    // Cells starting like a formula are prefixed so spreadsheets show them as text.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn write_csv(events: &[AuditEvent], out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", CSV_HEADER.join(","))?;
    for e in events {
        let row: Vec<String> = csv_fields(e).iter().map(|f| csv_cell(f)).collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

fn write_table(events: &[AuditEvent], out: &mut impl Write) -> io::Result<()> {
    if events.is_empty() {
        return writeln!(out, "no events");
    }
    let header = [
        "TIME",
        "OUTCOME",
        "STATUS",
        "SUBJECT",
        "TENANT",
        "CLIENT_IP",
        "SCOPE",
        "COUNT",
        "TOKEN",
        "DETAIL",
    ];
    let dash = || "-".to_owned();
    let clip = |s: &str, n: usize| -> String {
        let s: String = s.chars().filter(|c| !c.is_control()).collect();
        if s.chars().count() > n {
            format!("{}…", s.chars().take(n - 1).collect::<String>())
        } else {
            s
        }
    };
    let rows: Vec<[String; 10]> = events
        .iter()
        .map(|e| {
            [
                e.time
                    .replace_nanosecond(0)
                    .map(rfc3339)
                    .unwrap_or_else(|_| rfc3339(e.time)),
                e.outcome.to_string(),
                e.status.to_string(),
                e.subject
                    .as_deref()
                    .map(|s| clip(&crate::text::escape_invisible(s), 32))
                    .unwrap_or_else(dash),
                clip(&e.tenant, 24),
                e.client_ip.clone().unwrap_or_else(dash),
                e.scope.as_deref().map(|s| clip(s, 32)).unwrap_or_else(dash),
                e.count.to_string(),
                e.token_fingerprint
                    .as_deref()
                    .map(|f| clip(f, 24))
                    .unwrap_or_else(dash),
                e.detail
                    .as_deref()
                    .map(|s| clip(s, 60))
                    .unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(&header.map(str::to_owned)))?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
    }
}
