//! `token-vendor migrate` and `token-vendor audit query|verify|export|prune|keygen`:
//! what ops run against the audit database. They need `DATABASE_URL`; `verify` and
//! `prune` also need `AUDIT_HMAC_KEY` (the chains are keyed with it) and, once the
//! database holds signed checkpoints, their verifier key (`AUDIT_VERIFIER_KEY`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
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
use crate::config::{ConfigError, AUDIT_SIGNING_KEY, AUDIT_VERIFIER_KEY};

/// Why an audit command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
    #[error("bad filter --{0}")]
    Filter(#[from] FilterError),
    #[error("TAMPERED: {0}")]
    Tampered(super::chain::Finding),
    /// A checkpoint in `--checkpoints FILE` whose signature does not verify.
    #[error("TAMPERED: {0}")]
    ForgedCheckpoint(String),
    #[error("{0}")]
    Setting(#[from] ConfigError),
    #[error("cannot write the output: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Usage(String),
}

impl CommandError {
    /// Whether the audit data itself failed the check (an event, a chain or a signed
    /// checkpoint is not what was written), as opposed to the check not being made.
    pub fn is_tampered(&self) -> bool {
        matches!(
            self,
            CommandError::Tampered(_)
                | CommandError::ForgedCheckpoint(_)
                | CommandError::Store(StoreError::Corrupt(_))
        )
    }
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

/// The shortest retention `audit prune` takes without `--force`.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Retention of `audit prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Delete events older than this, e.g. 90d (under one day needs --force).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub older_than: Duration,
    /// Verify and count the events a prune would delete, print the count and the
    /// cut-off, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow an --older-than under one day, which deletes all but the last hours.
    #[arg(long)]
    pub force: bool,
    /// The checkpoints' verifier key, to check the events against the signed
    /// checkpoints in the database before deleting them (as for `audit verify`:
    /// AUDIT_VERIFIER_KEY or AUDIT_VERIFIER_KEY_FILE, else derived from
    /// AUDIT_SIGNING_KEY).
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
    /// The checkpoints' verifier key (`<name>+<id>+<key>`, made by `audit keygen`).
    /// Usually given as AUDIT_VERIFIER_KEY or AUDIT_VERIFIER_KEY_FILE instead; given
    /// both ways, the two must be the same key. Without either it is derived from
    /// AUDIT_SIGNING_KEY when that is set.
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

/// The keys `audit verify` and `audit prune` take from the settings.
pub struct VerifySecrets {
    /// AUDIT_HMAC_KEY.
    pub hmac: SecretString,
    /// AUDIT_SIGNING_KEY, if set: the verifier key is derived from it when none is given.
    pub signing: Option<SecretString>,
    /// AUDIT_VERIFIER_KEY (or the content of AUDIT_VERIFIER_KEY_FILE), if set.
    pub verifier: Option<String>,
}

/// The verifier key: `--verifier-key` or AUDIT_VERIFIER_KEY (both: the same key),
/// else the one of AUDIT_SIGNING_KEY, else none.
fn verifier_of(
    flag: Option<&String>,
    secrets: &VerifySecrets,
) -> Result<Option<NoteVerifier>, CommandError> {
    let flag = flag
        .map(|text| NoteVerifier::parse(text.trim()))
        .transpose()
        .map_err(|e| CommandError::Usage(format!("--verifier-key: {e}")))?;
    let setting = secrets
        .verifier
        .as_deref()
        .map(|text| NoteVerifier::parse(text.trim()))
        .transpose()
        .map_err(|e| AUDIT_VERIFIER_KEY.error(e.to_string()))?;
    match (flag, setting) {
        (Some(flag), Some(setting)) if flag.text() != setting.text() => {
            Err(CommandError::Usage(format!(
                "--verifier-key and {} name different keys ({} and {}); give one",
                AUDIT_VERIFIER_KEY.name,
                key_name(&flag),
                key_name(&setting)
            )))
        }
        (Some(key), _) | (None, Some(key)) => Ok(Some(key)),
        (None, None) => match &secrets.signing {
            Some(key) => NoteSigner::parse(key)
                .map(|s| Some(s.verifier()))
                .map_err(|e| AUDIT_SIGNING_KEY.error(e.to_string()).into()),
            None => Ok(None),
        },
    }
}

/// `<name>+<id>` of a verifier key: enough to tell two keys apart in a message.
fn key_name(key: &NoteVerifier) -> String {
    // A name has no `+`; the base64 key after the id may.
    let text = key.text();
    let mut parts = text.splitn(3, '+');
    match (parts.next(), parts.next()) {
        (Some(name), Some(id)) => format!("{name}+{id}"),
        _ => text,
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
                "--checkpoints needs the verifier key (AUDIT_VERIFIER_KEY, \
                 AUDIT_VERIFIER_KEY_FILE or --verifier-key; or AUDIT_SIGNING_KEY)"
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
                CommandError::ForgedCheckpoint(format!(
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

/// The file `audit keygen --out DIR` writes the signing key to (the Secret key name
/// the shipped manifests mount).
pub const SIGNING_KEY_FILE: &str = "audit_signing_key";
/// The file `audit keygen --out DIR` writes the verifier key to.
pub const VERIFIER_KEY_FILE: &str = "audit_verifier_key";

/// Makes a new checkpoint signing key and its verifier key: printed, or with `dir`
/// written to two files there (mode 0600; existing ones are replaced only with `force`).
pub fn keygen(
    name: &str,
    dir: Option<&Path>,
    force: bool,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let signer =
        NoteSigner::generate(name).map_err(|e| CommandError::Usage(format!("--name: {e}")))?;
    if let Some(dir) = dir {
        let signing = dir.join(SIGNING_KEY_FILE);
        let verifier = dir.join(VERIFIER_KEY_FILE);
        write_key_files(
            dir,
            force,
            &[
                (&signing, signer.private_text()),
                (&verifier, SecretString::from(signer.verifier().text())),
            ],
        )?;
        writeln!(
            out,
            "wrote {}: the signing key (secret: for `serve` only, beside AUDIT_HMAC_KEY)",
            signing.display()
        )?;
        writeln!(
            out,
            "wrote {}: its verifier key (public: for `audit verify` and `audit prune`; \
             keep a copy off the database's host)",
            verifier.display()
        )?;
        writeln!(out, "Mount them as files and name them with:")?;
        writeln!(
            out,
            "  {}_FILE={}    (serve)",
            AUDIT_SIGNING_KEY.name,
            signing.display()
        )?;
        writeln!(
            out,
            "  {}_FILE={}    (audit verify, audit prune)",
            AUDIT_VERIFIER_KEY.name,
            verifier.display()
        )?;
        return Ok(());
    }
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

/// Writes each `(path, content)` readable by its owner only. Without `force`, nothing
/// is written when one of the files exists; with it, each is replaced by a rename, so
/// a symbolic link in its place is replaced rather than followed.
fn write_key_files(
    dir: &Path,
    force: bool,
    files: &[(&PathBuf, SecretString)],
) -> Result<(), CommandError> {
    let failed = |path: &Path, e: io::Error| {
        CommandError::Usage(format!("keygen --out: {}: {e}", path.display()))
    };
    create_private_dir(dir).map_err(|e| failed(dir, e))?;
    if !force {
        if let Some((path, _)) = files.iter().find(|(p, _)| p.symlink_metadata().is_ok()) {
            return Err(CommandError::Usage(format!(
                "keygen --out: {} already exists; nothing was written (--force replaces \
                 both keys, and the checkpoints signed so far then need the old verifier key)",
                path.display()
            )));
        }
    }
    let mut written: Vec<&Path> = Vec::new();
    for (path, content) in files {
        let text = format!("{}\n", content.expose_secret());
        let result = if force {
            replace_private(path, &text)
        } else {
            create_private(path, &text)
        };
        if let Err(e) = result {
            if !force {
                // Not half a pair: the one written is of no use without the other.
                for done in written {
                    let _ = std::fs::remove_file(done);
                }
            }
            return Err(failed(path, e));
        }
        written.push(path);
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A new file (never an existing one, nor through a link), mode 0600.
fn create_private(path: &Path, text: &str) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // The mode above is reduced by the umask only, never widened: set it exactly.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Writes `text` beside `path` and renames it over `path`.
fn replace_private(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    create_private(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
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
///
/// An `--older-than` under [`MIN_RETENTION`] is refused without `--force`; a dry run
/// verifies and counts the same events and changes nothing.
pub async fn prune(
    url: &str,
    args: &PruneArgs,
    secrets: &VerifySecrets,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let short = args.older_than < MIN_RETENTION;
    if short && !args.force && !args.dry_run {
        return Err(CommandError::Usage(format!(
            "--older-than {} is under one day: it would delete all of the audit log but \
             its last {0}. Add --force if that is meant (--dry-run shows what would go)",
            humantime::format_duration(args.older_than)
        )));
    }
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
            args.dry_run,
        )
        .await?
        .map_err(CommandError::Tampered)?;
    if args.dry_run {
        writeln!(
            out,
            "dry run: would prune {} events older than {} (verified, checked against {} \
             signed checkpoint{}); nothing deleted",
            pruned.events,
            cutoff.format(&Rfc3339).unwrap_or_default(),
            pruned.checkpoints,
            if pruned.checkpoints == 1 { "" } else { "s" },
        )?;
        if short && !args.force {
            writeln!(
                out,
                "note: --older-than is under one day; the real run needs --force"
            )?;
        }
        return Ok(());
    }
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
