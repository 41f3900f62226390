//! The command line: `serve`, `dev`, `migrate`, `check-config`, `healthcheck`, `audit …`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::audit::commands::{self as audit_commands, CommandError};
use crate::audit::Fingerprinter;
use crate::config::{ConfigError, Settings, Sources, AUDIT_HMAC_KEY};
use crate::startup::{Application, StartupError};
use crate::telemetry;

/// Exit code for a missing or malformed setting.
pub const EXIT_CONFIG: u8 = 2;
/// `audit verify` / `audit prune`: the audit data failed the check.
pub const EXIT_TAMPERED: u8 = 1;
/// `audit verify` / `audit prune`: the check could not be made (settings, arguments,
/// files, the store); the same code as a bad setting or a bad argument.
pub const EXIT_COULD_NOT_CHECK: u8 = 2;

const VERIFY_HELP: &str = "\
The verifier key of the signed checkpoints comes from AUDIT_VERIFIER_KEY or
AUDIT_VERIFIER_KEY_FILE (a mounted file), or --verifier-key (given together, they
must be the same key); without any, it is derived from AUDIT_SIGNING_KEY when that is
set. Needs DATABASE_URL and AUDIT_HMAC_KEY (or AUDIT_HMAC_KEY_FILE).

Exit status:
  0  every chain verified (against every signed checkpoint used)
  1  tampered: an event altered, inserted or removed, a chain truncated, rewritten
     or gone, a moved prune anchor, a checkpoint whose signature does not verify, a
     stored event that cannot be read (the line starts with TAMPERED:)
  2  could not check: a missing or malformed setting or argument (AUDIT_HMAC_KEY,
     the verifier key), a file that cannot be read, the store unreachable or not
     migrated";

const PRUNE_HELP: &str = "\
Needs DATABASE_URL and AUDIT_HMAC_KEY (or AUDIT_HMAC_KEY_FILE), and the verifier key
as `audit verify` takes it once the database holds signed checkpoints.

Exit status:
  0  pruned (or, with --dry-run, counted)
  1  tampered: the events to delete do not verify; nothing of that run is deleted
  2  could not prune: a missing or malformed setting or argument, --older-than
     under one day without --force, the store unreachable or not migrated (chains
     pruned before the store failed stay pruned)";

#[derive(Parser, Debug)]
#[command(
    name = "token-vendor",
    version,
    about = "Vends limited-scope Corti tokens to signed-in browsers"
)]
pub struct Cli {
    /// TOML file with settings (same keys as the environment, lower-case).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service.
    Serve,
    /// One-command local demo: service, stand-in Corti auth, demo session.
    Dev,
    /// Apply the audit database migrations (DATABASE_URL).
    Migrate,
    /// Print the effective settings (secrets redacted) and check them.
    CheckConfig {
        /// Also try each dependency once: connect to the audit store, ping Redis,
        /// fetch the session keys and make one token call per tenant; one line per
        /// check, exit 1 when one fails.
        #[arg(long)]
        probe: bool,
    },
    /// Exit 0 when the local service answers `/healthz` at LISTEN_ADDR (for a HEALTHCHECK).
    Healthcheck,
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print the fingerprint of a token, to find it in the audit log: one line per key
    /// (AUDIT_HMAC_KEY first, then each previous key); standard error names each key id.
    Hash {
        /// The token (or `-` to read it from standard input).
        token: String,
        /// A file holding a previous AUDIT_HMAC_KEY, for events fingerprinted before a
        /// key rotation (repeat for several), as for `audit verify`.
        #[arg(long, value_name = "FILE")]
        previous_key_file: Vec<PathBuf>,
    },
    /// Show stored events, newest first (table, json or csv).
    Query(audit_commands::QueryArgs),
    /// Check the hash chains against AUDIT_HMAC_KEY and the signed checkpoints; names
    /// the first altered, inserted or removed event, or the truncated or missing chain.
    #[command(after_help = VERIFY_HELP)]
    Verify(audit_commands::VerifyArgs),
    /// Make a new checkpoint signing key (AUDIT_SIGNING_KEY) and its verifier key
    /// (AUDIT_VERIFIER_KEY): printed, or written to two files with --out.
    Keygen {
        /// The key's name, shown in every signature line.
        #[arg(long, default_value = "token-vendor-audit")]
        name: String,
        /// Write the keys to DIR/audit_signing_key and DIR/audit_verifier_key (mode
        /// 0600; DIR is made if missing) instead of printing them.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// With --out: replace key files that already exist.
        #[arg(long, requires = "out")]
        force: bool,
    },
    /// Write events as JSON lines, oldest first.
    Export(audit_commands::ExportArgs),
    /// Delete events past the retention period, keeping the chains verifiable.
    #[command(after_help = PRUNE_HELP)]
    Prune(audit_commands::PruneArgs),
}

/// Runs a parsed command line to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    crate::session::jwt_crypto::install();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("token-vendor: configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(message)) => {
            eprintln!("token-vendor: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Code(code, message)) => {
            eprintln!("token-vendor: {message}");
            ExitCode::from(code)
        }
    }
}

enum Failure {
    Config(ConfigError),
    Other(String),
    /// A failure with an exit code of its own (`audit verify`, `audit prune`).
    Code(u8, String),
}

/// `audit verify` and `audit prune` that cannot start their runtime could not check.
fn could_not_run(f: Failure) -> Failure {
    match f {
        Failure::Other(m) => Failure::Code(EXIT_COULD_NOT_CHECK, m),
        other => other,
    }
}

/// How `audit verify` and `audit prune` end when they fail: tampered data, or a check
/// that could not be made (`doing` says which, e.g. "could not check").
fn check_failure(e: CommandError, doing: &str) -> Failure {
    if e.is_tampered() {
        Failure::Code(EXIT_TAMPERED, e.to_string())
    } else {
        match e {
            CommandError::Setting(c) => Failure::Config(c),
            other => Failure::Code(EXIT_COULD_NOT_CHECK, format!("{doing}: {other}")),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<CommandError> for Failure {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Setting(c) => Failure::Config(c),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// Runs an audit command against `DATABASE_URL`, writing to standard output.
fn with_database<F, Fut>(cli: &Cli, command: F) -> Result<(), Failure>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), CommandError>>,
{
    let settings = load(cli)?;
    runtime()?.block_on(command(settings.audit.database_url))?;
    Ok(())
}

impl From<StartupError> for Failure {
    fn from(e: StartupError) -> Self {
        match e {
            StartupError::Config(c) => Failure::Config(c),
            other => Failure::Other(other.to_string()),
        }
    }
}

fn audit_hmac_key(settings: &Settings, why: &str) -> Result<SecretString, ConfigError> {
    settings
        .audit
        .hmac_key
        .clone()
        .ok_or_else(|| ConfigError::new("AUDIT_HMAC_KEY", format!("is required {why}")))
}

fn load(cli: &Cli) -> Result<Settings, ConfigError> {
    Settings::load(&Sources::from_process(cli.config.as_deref())?)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Serve => {
            let settings = load(&cli)?;
            let warnings = settings.warnings().to_vec();
            // Missing settings are named first; then the signing key. A start that stops
            // here says first which variables it did not know (`SESSION_JWT_SECRT`): they
            // are often why a setting is missing.
            let signed = settings.check_signed();
            let settings = settings.for_serve().and_then(|s| signed.map(|()| s));
            let settings = settings.inspect_err(|_| {
                for warning in &warnings {
                    eprintln!("token-vendor: warning: {warning}");
                }
            })?;
            let runtime = runtime()?;
            let traces = telemetry::otlp::Traces::from_env(runtime.handle().clone())
                .map_err(|e| ConfigError::new(e.name, e.problem))?;
            telemetry::init_with_traces(
                telemetry::env_filter(telemetry::DEFAULT_FILTER),
                std::io::stdout,
                traces.as_ref(),
            );
            for warning in &warnings {
                tracing::warn!(%warning, "configuration: a variable that is no setting");
            }
            crate::startup::raise_open_file_limit();
            let served = runtime.block_on(async {
                let app = Application::build(settings).await?;
                let port = app.port();
                let server = app.run_until_stopped();
                tokio::pin!(server);
                // Poll the server once first: that installs its SIGTERM handler, so a
                // supervisor that signals right after this line gets a graceful stop.
                tokio::select! {
                    biased;
                    stopped = &mut server => {
                        return stopped.map_err(|e| Failure::Other(format!("server stopped: {e}")));
                    }
                    () = std::future::ready(()) => {}
                }
                tracing::info!(port, "token-vendor listening");
                server
                    .await
                    .map_err(|e| Failure::Other(format!("server stopped: {e}")))
            });
            // The runtime still runs the exports: the last spans leave before it stops.
            if let Some(traces) = traces {
                traces.shutdown(TRACES_FLUSH_TIMEOUT);
            }
            served
        }
        Command::Dev => {
            let settings = load(&cli)?;
            telemetry::init(
                telemetry::env_filter(telemetry::DEFAULT_FILTER),
                std::io::stderr,
            );
            runtime()?
                .block_on(crate::dev::run(settings))
                .map_err(|e| match e {
                    StartupError::Config(c) => Failure::Config(c),
                    other => Failure::Other(other.to_string()),
                })
        }
        Command::Migrate => with_database(&cli, |url| async move {
            audit_commands::migrate(&url, &mut std::io::stdout()).await
        }),
        Command::Audit(AuditCommand::Query(args)) => with_database(&cli, |url| async move {
            audit_commands::query(&url, args, &mut std::io::stdout()).await
        }),
        Command::Audit(AuditCommand::Verify(args)) => {
            // Every way this fails that is not tampering is "could not check" (2), as
            // a bad setting or argument is.
            let settings = load(&cli)?;
            let secrets = audit_commands::VerifySecrets {
                hmac: audit_hmac_key(&settings, "to check the keyed chains")?,
                signing: settings.audit.signing_key.clone(),
                verifier: settings.audit.verifier_key.clone(),
            };
            runtime()
                .map_err(could_not_run)?
                .block_on(audit_commands::verify(
                    &settings.audit.database_url,
                    args,
                    &secrets,
                    &mut std::io::stdout(),
                ))
                .map_err(|e| check_failure(e, "could not check"))
        }
        Command::Audit(AuditCommand::Keygen { name, out, force }) => {
            audit_commands::keygen(name, out.as_deref(), *force, &mut std::io::stdout())?;
            Ok(())
        }
        Command::Audit(AuditCommand::Export(args)) => with_database(&cli, |url| async move {
            audit_commands::export(&url, args, &mut std::io::stdout().lock()).await
        }),
        Command::Audit(AuditCommand::Prune(args)) => {
            let settings = load(&cli)?;
            let secrets = audit_commands::VerifySecrets {
                hmac: audit_hmac_key(
                    &settings,
                    "to verify the events it deletes and tag the new prune anchors",
                )?,
                signing: settings.audit.signing_key.clone(),
                verifier: settings.audit.verifier_key.clone(),
            };
            runtime()
                .map_err(could_not_run)?
                .block_on(audit_commands::prune(
                    &settings.audit.database_url,
                    args,
                    &secrets,
                    &mut std::io::stdout(),
                ))
                .map_err(|e| check_failure(e, "audit prune"))
        }
        Command::CheckConfig { probe } => {
            let settings = load(&cli)?;
            for warning in settings.warnings() {
                eprintln!("token-vendor: warning: {warning}");
            }
            for line in settings
                .redacted_lines()
                .into_iter()
                .chain(telemetry::otlp::redacted_lines())
            {
                println!("{line}");
            }
            telemetry::otlp::check().map_err(|e| ConfigError::new(e.name, e.problem))?;
            let signed = settings.check_signed();
            let settings = settings.for_serve()?;
            signed?;
            let tenants: Vec<String> = settings
                .tenants
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let default = if i == 0 { ", default" } else { "" };
                    format!("{} ({}{default})", t.tenant, t.environment.as_str())
                })
                .collect();
            println!("tenants: {}", tenants.join(", "));
            let http = reqwest::Client::new();
            crate::session::SessionVerifier::from_settings(&settings.session, http)?;
            if let Some(path) = &settings.deny_list_file {
                crate::deny::DenyList::load(path)
                    .map_err(|e| ConfigError::new(crate::deny::SETTING, e))?;
            }
            println!("ok: settings are complete for `serve`");
            if *probe {
                let verdicts = runtime()?.block_on(crate::probe::run(&settings));
                for v in &verdicts {
                    println!("{v}");
                }
                let failed = verdicts.iter().filter(|v| !v.ok).count();
                if failed > 0 {
                    return Err(Failure::Other(format!(
                        "probe: {failed} of {} checks failed",
                        verdicts.len()
                    )));
                }
                println!("ok: every probe passed");
            }
            Ok(())
        }
        Command::Healthcheck => {
            let settings = load(&cli)?;
            healthcheck(settings.server.listen_addr, HEALTHCHECK_TIMEOUT).map_err(Failure::Other)
        }
        Command::Audit(AuditCommand::Hash {
            token,
            previous_key_file,
        }) => {
            let settings = load(&cli)?;
            let key = settings
                .audit
                .hmac_key
                .ok_or_else(|| AUDIT_HMAC_KEY.error("is required to fingerprint a token"))?;
            let token = if token == "-" {
                let mut buf = String::new();
                std::io::stdin()
                    .read_line(&mut buf)
                    .map_err(|e| Failure::Other(format!("cannot read standard input: {e}")))?;
                buf.trim().to_owned()
            } else {
                token.trim().to_owned()
            };
            let mut keys = vec![("current".to_owned(), Fingerprinter::new(key))];
            for path in previous_key_file {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::Other(format!("--previous-key-file {}: {e}", path.display()))
                })?;
                let key = text.trim_end_matches(['\n', '\r']);
                if key.is_empty() {
                    return Err(Failure::Other(format!(
                        "--previous-key-file {}: the file is empty",
                        path.display()
                    )));
                }
                keys.push((
                    format!("previous ({})", path.display()),
                    Fingerprinter::new(SecretString::from(key)),
                ));
            }
            for (which, fingerprinter) in &keys {
                println!("{}", fingerprinter.fingerprint(&token));
                if keys.len() > 1 {
                    eprintln!("key {}: {which}", fingerprinter.key_id());
                }
            }
            Ok(())
        }
    }
}

/// Bound for exporting the last spans at shutdown, when traces are on.
const TRACES_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound for each step of `healthcheck`: well under a container runtime's own timeout.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the service at `listen` for `/healthz` over plain HTTP/1.1 and wants a 200.
/// A wildcard bind address (`0.0.0.0`, `::`) is reached through loopback.
fn healthcheck(listen: SocketAddr, timeout: Duration) -> Result<(), String> {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let target = SocketAddr::new(ip, listen.port());
    let failed = |e: std::io::Error| format!("healthcheck: {target}: {e}");
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(failed)?;
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream.set_write_timeout(Some(timeout)).map_err(failed)?;
    // One write: a server may answer and close as soon as it has the request line.
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(failed)?;
    // The status line is all we need; it fits well within the first read(s).
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).map_err(failed)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!(
            "healthcheck: {target}/healthz answered {:?}",
            status_line.trim()
        )),
    }
}
