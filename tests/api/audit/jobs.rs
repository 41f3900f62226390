//! The audit commands as scheduled jobs: `verify` takes its verifier key from
//! `AUDIT_VERIFIER_KEY` (`_FILE`) and tells "tampered" (exit 1) from "could not check"
//! (exit 2); `keygen --out DIR` writes the two keys to files; `prune` previews with
//! `--dry-run` and refuses a cut-off under one day without `--force`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use sqlx::Row;
use token_vendor::audit::keys::{ChainKey, NoteSigner};
use token_vendor::audit::store::SqlAuditStore;
use token_vendor::audit::writer::WriterKeys;
use token_vendor::audit::{AuditEvent, AuditStore, Outcome};
use token_vendor::dev::random_hex;

use crate::both_backends;
use crate::support::*;

/// Exit code of `audit verify` / `audit prune` when the log does not verify.
const TAMPERED: i32 = 1;
/// Exit code when the check could not be made (settings, arguments, store).
const COULD_NOT_CHECK: i32 = 2;

fn said(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tv-{what}-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A service on `db` that signs checkpoints with a fresh key; returns its verifier key.
async fn signing_app(db: &TestDb) -> (TestApp, String) {
    let signer = NoteSigner::generate("jobs-audit").expect("key");
    let private = secrecy::ExposeSecret::expose_secret(&signer.private_text()).to_owned();
    let app = TestApp::builder()
        .store(Store::db(db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .env("AUDIT_SIGNING_KEY", private)
        .spawn()
        .await;
    (app, signer.verifier().text())
}

async fn exec(db: &TestDb, sql: &str) {
    let pool = db.raw().await;
    sqlx::query(sql).execute(&pool).await.expect(sql);
    pool.close().await;
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let pool = db.raw().await;
    let n = sqlx::query(sql)
        .fetch_one(&pool)
        .await
        .expect(sql)
        .get::<i64, _>(0);
    pool.close().await;
    n
}

async fn verify_reads_the_verifier_key_from_the_environment_or_a_file(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (app, verifier) = signing_app(&db).await;
    app.vend_token("alice").await;
    app.auditor.checkpoint().await;
    let dir = temp_dir("verifier");
    let file = dir.join("audit_verifier_key");
    std::fs::write(&file, format!("{verifier}\n")).expect("write");
    let file = file.display().to_string();

    let from_env = cli(
        &db.url,
        &["audit", "verify"],
        &[("AUDIT_VERIFIER_KEY", &verifier)],
    );
    assert_eq!(from_env.status.code(), Some(0), "{}", said(&from_env));
    assert!(
        stdout(&from_env).contains("1 signed checkpoint"),
        "{}",
        said(&from_env)
    );

    let from_file = cli(
        &db.url,
        &["audit", "verify"],
        &[("AUDIT_VERIFIER_KEY_FILE", &file)],
    );
    assert_eq!(from_file.status.code(), Some(0), "{}", said(&from_file));

    // The flag keeps working, alone or naming the same key as the environment.
    let flag = cli(
        &db.url,
        &["audit", "verify", "--verifier-key", &verifier],
        &[],
    );
    assert_eq!(flag.status.code(), Some(0), "{}", said(&flag));
    let same = cli(
        &db.url,
        &["audit", "verify", "--verifier-key", &verifier],
        &[("AUDIT_VERIFIER_KEY_FILE", &file)],
    );
    assert_eq!(same.status.code(), Some(0), "{}", said(&same));

    // Mistakes in how the key is given are "could not check", never "tampered".
    let both = cli(
        &db.url,
        &["audit", "verify"],
        &[
            ("AUDIT_VERIFIER_KEY", &verifier),
            ("AUDIT_VERIFIER_KEY_FILE", &file),
        ],
    );
    assert_eq!(both.status.code(), Some(COULD_NOT_CHECK), "{}", said(&both));
    assert!(
        stderr(&both).contains("AUDIT_VERIFIER_KEY_FILE"),
        "{}",
        said(&both)
    );
    let other = NoteSigner::generate("jobs-audit")
        .expect("key")
        .verifier()
        .text();
    let disagree = cli(
        &db.url,
        &["audit", "verify", "--verifier-key", &other],
        &[("AUDIT_VERIFIER_KEY", &verifier)],
    );
    assert_eq!(
        disagree.status.code(),
        Some(COULD_NOT_CHECK),
        "{}",
        said(&disagree)
    );
    assert!(
        stderr(&disagree).contains("--verifier-key")
            && stderr(&disagree).contains("AUDIT_VERIFIER_KEY"),
        "{}",
        said(&disagree)
    );
    let malformed = cli(
        &db.url,
        &["audit", "verify"],
        &[("AUDIT_VERIFIER_KEY", "not-a-key")],
    );
    assert_eq!(
        malformed.status.code(),
        Some(COULD_NOT_CHECK),
        "{}",
        said(&malformed)
    );
    assert!(
        stderr(&malformed).contains("AUDIT_VERIFIER_KEY"),
        "{}",
        said(&malformed)
    );
    let _ = std::fs::remove_dir_all(&dir);
    db.cleanup().await;
}
both_backends!(verify_reads_the_verifier_key_from_the_environment_or_a_file);

async fn verify_exits_1_when_tampered_and_2_when_it_could_not_check(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (app, verifier) = signing_app(&db).await;
    for i in 0..3 {
        app.vend_token(&format!("user-{i}")).await;
    }
    app.auditor.checkpoint().await;
    let key = [("AUDIT_VERIFIER_KEY", verifier.as_str())];

    let intact = cli(&db.url, &["audit", "verify"], &key);
    assert_eq!(intact.status.code(), Some(0), "{}", said(&intact));

    // Could not check: no verifier key for the stored checkpoints, no chain key, bad
    // arguments, a file that cannot be read.
    let no_verifier = cli(&db.url, &["audit", "verify"], &[]);
    assert_eq!(
        no_verifier.status.code(),
        Some(COULD_NOT_CHECK),
        "{}",
        said(&no_verifier)
    );
    assert!(
        stderr(&no_verifier).contains("verifier key"),
        "{}",
        said(&no_verifier)
    );
    let no_hmac = cli(
        &db.url,
        &["audit", "verify"],
        &[key[0], ("AUDIT_HMAC_KEY", "")],
    );
    assert_eq!(
        no_hmac.status.code(),
        Some(COULD_NOT_CHECK),
        "{}",
        said(&no_hmac)
    );
    assert!(
        stderr(&no_hmac).contains("AUDIT_HMAC_KEY"),
        "{}",
        said(&no_hmac)
    );
    let bad_flag = cli(&db.url, &["audit", "verify", "--no-such-flag"], &key);
    assert_eq!(bad_flag.status.code(), Some(COULD_NOT_CHECK));
    let missing_file = cli(
        &db.url,
        &[
            "audit",
            "verify",
            "--checkpoints",
            "/nonexistent/tv-checkpoints",
        ],
        &key,
    );
    assert_eq!(
        missing_file.status.code(),
        Some(COULD_NOT_CHECK),
        "{}",
        said(&missing_file)
    );

    // Tampered: an event's field changed in the database.
    exec(
        &db,
        "UPDATE audit_events SET subject = 'mallory' WHERE subject = 'user-1'",
    )
    .await;
    let tampered = cli(&db.url, &["audit", "verify"], &key);
    assert_eq!(
        tampered.status.code(),
        Some(TAMPERED),
        "{}",
        said(&tampered)
    );
    assert!(
        stderr(&tampered).contains("TAMPERED") && stderr(&tampered).contains("altered"),
        "{}",
        said(&tampered)
    );
    db.cleanup().await;
}
both_backends!(verify_exits_1_when_tampered_and_2_when_it_could_not_check);

#[test]
fn verify_exits_2_when_the_store_cannot_be_reached() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let missing = temp_dir("verify-missing").join("nowhere/audit.db");
    for url in [
        format!("postgres://token_vendor:fake-db-password@127.0.0.1:{port}/token_vendor"),
        format!("sqlite://{}", missing.display()),
    ] {
        let out = cli(&url, &["audit", "verify"], &[]);
        assert_eq!(
            out.status.code(),
            Some(COULD_NOT_CHECK),
            "{url}: {}",
            said(&out)
        );
        assert!(!stderr(&out).contains("TAMPERED"), "{}", said(&out));
    }
}

#[test]
fn verify_help_documents_the_exit_codes() {
    let out = cli("sqlite://unused.db", &["audit", "verify", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let help = stdout(&out);
    assert!(help.contains("AUDIT_VERIFIER_KEY_FILE"), "{help}");
    for code in ["0 ", "1 ", "2 "] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(code) && l.len() > 10),
            "exit code {code} explained: {help}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_out_writes_both_keys_to_files_the_service_and_verify_read() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let dir = temp_dir("keygen").join("keys");
    let dir_arg = dir.display().to_string();

    let out = cli(&db.url, &["audit", "keygen", "--out", &dir_arg], &[]);

    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let signing_file = dir.join("audit_signing_key");
    let verifier_file = dir.join("audit_verifier_key");
    let signing = std::fs::read_to_string(&signing_file).expect("signing key file");
    let verifier = std::fs::read_to_string(&verifier_file).expect("verifier key file");
    assert!(signing.starts_with("PRIVATE+KEY+"), "{signing}");
    assert_eq!(mode(&signing_file), 0o600);
    assert_eq!(mode(&verifier_file), 0o600);
    let text = stdout(&out);
    for expected in [
        "AUDIT_SIGNING_KEY_FILE",
        "AUDIT_VERIFIER_KEY_FILE",
        &signing_file.display().to_string(),
        &verifier_file.display().to_string(),
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    assert!(
        !text.contains(signing.trim()),
        "the signing key is not printed: {text}"
    );

    // The service signs with the one file, verify checks with the other.
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .env("AUDIT_SIGNING_KEY_FILE", signing_file.display().to_string())
        .spawn()
        .await;
    app.vend_token("alice").await;
    app.auditor.checkpoint().await;
    let verified = cli(
        &db.url,
        &["audit", "verify"],
        &[(
            "AUDIT_VERIFIER_KEY_FILE",
            &verifier_file.display().to_string(),
        )],
    );
    assert_eq!(verified.status.code(), Some(0), "{}", said(&verified));
    assert!(
        stdout(&verified).contains("1 signed checkpoint"),
        "{}",
        said(&verified)
    );

    // Existing keys are not overwritten unless asked to.
    let again = cli(&db.url, &["audit", "keygen", "--out", &dir_arg], &[]);
    assert_ne!(again.status.code(), Some(0), "{}", said(&again));
    assert!(stderr(&again).contains("--force"), "{}", said(&again));
    assert_eq!(
        std::fs::read_to_string(&signing_file).expect("file"),
        signing
    );
    assert_eq!(
        std::fs::read_to_string(&verifier_file).expect("file"),
        verifier
    );
    std::fs::set_permissions(&verifier_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let forced = cli(
        &db.url,
        &["audit", "keygen", "--out", &dir_arg, "--force"],
        &[],
    );
    assert_eq!(forced.status.code(), Some(0), "{}", said(&forced));
    assert_ne!(
        std::fs::read_to_string(&signing_file).expect("file"),
        signing
    );
    assert_eq!(mode(&signing_file), 0o600);
    assert_eq!(mode(&verifier_file), 0o600);
    let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    db.cleanup().await;
}

/// A log of `old` events written `age` ago (subjects `old-N`), then `recent` ones
/// written now, through the service's own store and chain key: no test waits on the
/// clock. Keep the store until the test ends.
async fn log_old_and_recent(
    db: &TestDb,
    old: usize,
    age: time::Duration,
    recent: usize,
) -> SqlAuditStore {
    let store = SqlAuditStore::open(
        &db.url,
        WriterKeys {
            chain: ChainKey::derive(&secrecy::SecretString::from(audit_key().to_owned())),
            signer: None,
        },
    )
    .await
    .expect("store");
    let now = time::OffsetDateTime::now_utc();
    let event = |subject: String, time| AuditEvent {
        time,
        outcome: Outcome::Unauthenticated,
        status: 401,
        subject: Some(subject),
        ..AuditEvent::begin(&new_request_id(), TENANT, "eu")
    };
    let events: Vec<AuditEvent> = (0..old)
        .map(|i| event(format!("old-{i}"), now - age))
        .chain((0..recent).map(|i| event(format!("recent-{i}"), now)))
        .collect();
    // Many at once, so the writer commits them in groups.
    for chunk in events.chunks(500) {
        let written = futures_util::future::join_all(chunk.iter().map(|e| store.record(e))).await;
        assert!(written.iter().all(Result::is_ok), "events written");
    }
    store
}

async fn prune_dry_run_prints_the_count_and_cutoff_and_changes_nothing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _store = log_old_and_recent(&db, 4, time::Duration::hours(2), 3).await;
    let before = count(&db, "SELECT COUNT(*) FROM audit_events").await;
    let anchors = "SELECT COUNT(*) FROM audit_chains WHERE anchor_seq > 0";

    let out = cli(
        &db.url,
        &["audit", "prune", "--older-than", "1h", "--dry-run"],
        &[],
    );

    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = stdout(&out);
    assert!(text.contains("would prune 4 events"), "{text}");
    let this_year = time::OffsetDateTime::now_utc().year().to_string();
    assert!(
        text.contains(&format!("older than {this_year}-")),
        "the cut-off in RFC 3339: {text}"
    );
    assert!(text.contains("nothing deleted"), "{text}");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM audit_events").await,
        before
    );
    assert_eq!(count(&db, anchors).await, 0, "no anchor written");
    let verified = cli(&db.url, &["audit", "verify"], &[]);
    assert!(
        stdout(&verified).starts_with(&format!("ok, {before} events")),
        "{}",
        said(&verified)
    );

    // The dry run verifies what it counts, as the real run does.
    exec(
        &db,
        "UPDATE audit_events SET subject = 'mallory' WHERE subject = 'old-1'",
    )
    .await;
    let tampered = cli(
        &db.url,
        &["audit", "prune", "--older-than", "1h", "--dry-run"],
        &[],
    );
    assert_eq!(
        tampered.status.code(),
        Some(TAMPERED),
        "{}",
        said(&tampered)
    );
    assert!(
        stderr(&tampered).contains("TAMPERED"),
        "{}",
        said(&tampered)
    );
    db.cleanup().await;
}
both_backends!(prune_dry_run_prints_the_count_and_cutoff_and_changes_nothing);

async fn prune_refuses_a_cutoff_under_one_day_without_force(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _store = log_old_and_recent(&db, 2, time::Duration::hours(2), 1).await;

    for short in ["1s", "1h", "23h"] {
        let out = cli(&db.url, &["audit", "prune", "--older-than", short], &[]);
        assert_eq!(
            out.status.code(),
            Some(COULD_NOT_CHECK),
            "{short}: {}",
            said(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains("one day") && err.contains("--force"),
            "{short}: {err}"
        );
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events").await, 3);

    let day = cli(&db.url, &["audit", "prune", "--older-than", "1d"], &[]);
    assert_eq!(day.status.code(), Some(0), "{}", said(&day));
    assert!(stdout(&day).contains("pruned 0 events"), "{}", said(&day));

    let forced = cli(
        &db.url,
        &["audit", "prune", "--older-than", "1h", "--force"],
        &[],
    );
    assert_eq!(forced.status.code(), Some(0), "{}", said(&forced));
    assert!(
        stdout(&forced).contains("pruned 2 events"),
        "{}",
        said(&forced)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events").await, 1);
    db.cleanup().await;
}
both_backends!(prune_refuses_a_cutoff_under_one_day_without_force);

/// More old events than one prune transaction takes (5,000): the dry run counts on
/// from where each of its steps stopped, verifying as it goes, and agrees with the run
/// that deletes.
async fn prune_dry_run_counts_across_transactions_as_the_real_run_deletes(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    const OLD: usize = 5_100;
    let store = log_old_and_recent(&db, OLD, time::Duration::days(2), 3).await;
    let prune = |extra: &[&str]| {
        let mut args = vec!["audit", "prune", "--older-than", "1d"];
        args.extend_from_slice(extra);
        cli(&db.url, &args, &[])
    };

    let dry = prune(&["--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", said(&dry));
    assert!(
        stdout(&dry).contains(&format!("would prune {OLD} events")),
        "{}",
        said(&dry)
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM audit_events").await,
        (OLD + 3) as i64
    );

    // Past the first transaction's events, a changed one is still found.
    // A column the lookup table does not index: a lookup pass meanwhile must not
    // index a tampered subject, which the final verify would rightly report.
    exec(
        &db,
        "UPDATE audit_events SET status = status + 1 WHERE subject = 'old-5050'",
    )
    .await;
    let tampered = prune(&["--dry-run"]);
    assert_eq!(
        tampered.status.code(),
        Some(TAMPERED),
        "{}",
        said(&tampered)
    );
    exec(
        &db,
        "UPDATE audit_events SET status = status - 1 WHERE subject = 'old-5050'",
    )
    .await;

    let real = prune(&[]);
    assert_eq!(real.status.code(), Some(0), "{}", said(&real));
    assert!(
        stdout(&real).contains(&format!("pruned {OLD} events")),
        "{}",
        said(&real)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events").await, 3);
    let verified = cli(&db.url, &["audit", "verify"], &[]);
    assert!(
        stdout(&verified).starts_with("ok, 3 events"),
        "{}",
        said(&verified)
    );
    drop(store);
    db.cleanup().await;
}
both_backends!(prune_dry_run_counts_across_transactions_as_the_real_run_deletes);
