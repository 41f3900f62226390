//! Rollback: an older binary starts on an audit database migrated by a newer one.
//!
//! - `this_release_serves_a_database_migrated_by_a_newer_one`: this binary on a
//!   database a newer release has migrated further (its migration recorded, an
//!   additive table and column made). Runs in every `cargo test`.
//! - `the_previous_release_serves_a_database_migrated_by_this_one`: the previous
//!   release's binary (`TV_PREVIOUS_BIN`, built by `scripts/rollback-test.sh`) on a
//!   database this binary migrated and wrote to: it starts, vends, its events verify
//!   with this binary (and its own), and this binary then carries on (roll forward).
//!   Without `TV_PREVIOUS_BIN` it says it skipped; under `CI=true` it fails.
//!
//! Both on SQLite and, when one is at hand (always under `CI=true`), PostgreSQL.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::serve_process::ServeProcess;
use crate::support::{Backend, Secrets, SessionSigner, TestDb};
use serde_json::Value;
use sqlx::Executor;
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};

const THIS: &str = env!("CARGO_BIN_EXE_token-vendor");

/// A version no release will reach, for "a migration this binary does not know".
const NEWER_VERSION: i64 = 29_991_231_000_000;

struct Setup {
    standin: AuthStandIn,
    secrets: Secrets,
    signing_key: String,
    db: TestDb,
}

impl Setup {
    async fn new(backend: Backend) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        let secrets = Secrets::fresh();
        let standin = AuthStandIn::start(StandInConfig {
            client_id: "test-client".into(),
            client_secret: secrets.client.clone(),
            token_lifetime: Duration::from_secs(300),
        })
        .expect("stand-in starts");
        let signer = token_vendor::audit::keys::NoteSigner::generate("rollback-test").expect("key");
        let signing_key = secrecy::ExposeSecret::expose_secret(&signer.private_text()).to_owned();
        Some(Self {
            standin,
            secrets,
            signing_key,
            db,
        })
    }

    /// The settings both releases are run with.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
            ("CORTI_ENVIRONMENT", "eu".into()),
            ("CORTI_AUTH_URL", self.standin.base_url().to_owned()),
            ("CORTI_CLIENT_ID", "test-client".into()),
            ("CORTI_CLIENT_SECRET", self.secrets.client.clone()),
            ("SESSION_JWT_SECRET", self.secrets.session.clone()),
            ("AUDIT_HMAC_KEY", self.secrets.audit.clone()),
            ("AUDIT_SIGNING_KEY", self.signing_key.clone()),
            ("DATABASE_URL", self.db.url.clone()),
            ("RATE_LIMIT_PER_USER", "100000/second".into()),
            ("RATE_LIMIT_PER_IP", "100000/second".into()),
            ("TOKEN_REUSE_MIN_TTL", "0".into()),
        ]
    }

    /// Runs a command of `bin` with these settings.
    fn cli(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("run token-vendor")
    }

    /// `bin` serves, vends `count` tokens to `user`, and stops on SIGTERM.
    async fn serve_and_vend(&self, bin: &str, user: &str, count: usize) -> Vec<String> {
        let mut service = ServeProcess::start_bin(bin, &self.env());
        let http = reqwest::Client::new();
        let mut request_ids = Vec::new();
        for i in 0..count {
            let request_id = format!("{user}-{i}");
            let response = http
                .post(format!("{}/v1/tokens", service.address))
                .header("Content-Type", "application/json")
                .header("X-Request-Id", &request_id)
                .bearer_auth(SessionSigner::new(&self.secrets.session).session(user))
                .body(r#"{"scope":"transcribe"}"#)
                .send()
                .await
                .expect("vend");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 200, "{bin} vending to {user}: {body}");
            request_ids.push(request_id);
        }
        service.sigterm();
        let stopped = tokio::task::block_in_place(|| service.wait_exit(Duration::from_secs(20)));
        let (status, _) = stopped.expect("the service stops on SIGTERM");
        assert!(status.success(), "{bin} stopped with {status:?}");
        request_ids
    }

    /// `audit verify` of `bin` passes.
    fn verifies_with(&self, bin: &str) {
        let out = self.cli(bin, &["audit", "verify"]);
        assert!(
            out.status.success(),
            "audit verify ({bin}) failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Request ids of the `issued` events, as this binary reads them.
    fn issued(&self) -> Vec<String> {
        let out = self.cli(
            THIS,
            &[
                "audit",
                "query",
                "--outcome",
                "issued",
                "--format",
                "json",
                "--limit",
                "1000",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let page: Value = serde_json::from_slice(&out.stdout).expect("JSON page");
        let mut ids: Vec<String> = page["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["request_id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    fn migrate(&self) {
        let out = self.cli(THIS, &["migrate"]);
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn finish(self) {
        self.standin.stop().await;
        self.db.cleanup().await;
    }
}

/// What a newer release's migration leaves: its row in `_sqlx_migrations`, a new
/// table and a new nullable column (the additive changes docs/audit.md allows).
async fn migrate_as_a_newer_release(db: &TestDb) {
    let pool = db.raw().await;
    let record = match db.backend {
        Backend::Sqlite => format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({NEWER_VERSION}, 'a newer release', TRUE, x'00', 0)"
        ),
        Backend::Postgres => format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({NEWER_VERSION}, 'a newer release', TRUE, '\\x00'::bytea, 0)"
        ),
    };
    for sql in [
        record.as_str(),
        "CREATE TABLE audit_newer_release (id TEXT PRIMARY KEY)",
        "ALTER TABLE audit_events ADD COLUMN newer_note TEXT",
    ] {
        pool.execute(sql)
            .await
            .expect("a newer release's migration");
    }
    pool.close().await;
}

async fn this_release_on_a_newer_schema(backend: Backend) {
    let Some(s) = Setup::new(backend).await else {
        return;
    };
    s.migrate();
    s.serve_and_vend(THIS, "before", 1).await;
    migrate_as_a_newer_release(&s.db).await;

    let mut service = ServeProcess::start_bin(THIS, &s.env());
    assert!(
        service.log_has("migrated by a newer token-vendor"),
        "start-up says the database is ahead of this binary"
    );
    service.sigterm();
    tokio::task::block_in_place(|| service.wait_exit(Duration::from_secs(20)));
    s.serve_and_vend(THIS, "after", 2).await;
    // `migrate` of the older binary leaves the newer schema as it is.
    s.migrate();
    s.verifies_with(THIS);
    assert_eq!(s.issued(), ["after-0", "after-1", "before-0"]);
    s.finish().await;
}

/// This release, rolled back to after a newer one migrated its database, starts,
/// vends and verifies (sqlx would refuse a database holding a migration it does not
/// know; the schema check would refuse the newer release's table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_release_serves_a_database_migrated_by_a_newer_one_sqlite() {
    let _turn = crate::shared_turn().await;
    this_release_on_a_newer_schema(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_release_serves_a_database_migrated_by_a_newer_one_postgres() {
    let _turn = crate::shared_turn().await;
    this_release_on_a_newer_schema(Backend::Postgres).await;
}

/// The previous release's binary, from `TV_PREVIOUS_BIN`: `None`, said on stderr, when
/// it is not set; a failure under `CI=true`.
fn previous_bin() -> Option<String> {
    let Some(bin) = std::env::var("TV_PREVIOUS_BIN")
        .ok()
        .filter(|b| !b.trim().is_empty())
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "TV_PREVIOUS_BIN is required when CI=true: run scripts/rollback-test.sh \
             (or `TV_PREVIOUS_BIN=$(scripts/rollback-test.sh --build | tail -n 1)`)"
        );
        // Straight to stderr: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED ({}): TV_PREVIOUS_BIN is not set, so the previous release was not run; \
             scripts/rollback-test.sh builds it and runs this test (required under CI=true)",
            std::thread::current().name().unwrap_or("a test")
        );
        return None;
    };
    assert!(
        std::path::Path::new(&bin).is_file(),
        "TV_PREVIOUS_BIN={bin} is not a file"
    );
    Some(bin)
}

async fn previous_release_on_this_schema(backend: Backend) {
    let Some(previous) = previous_bin() else {
        return;
    };
    let Some(s) = Setup::new(backend).await else {
        return;
    };
    s.migrate();
    let mut expected = s.serve_and_vend(THIS, "new-release", 2).await;
    // Rolled back: the previous release serves on the database this one migrated.
    expected.extend(s.serve_and_vend(&previous, "rolled-back", 2).await);
    s.verifies_with(THIS);
    s.verifies_with(&previous);
    // Rolled forward again.
    expected.extend(s.serve_and_vend(THIS, "forward-again", 1).await);
    s.verifies_with(THIS);
    expected.sort();
    assert_eq!(s.issued(), expected);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_serves_a_database_migrated_by_this_one_sqlite() {
    let _turn = crate::shared_turn().await;
    previous_release_on_this_schema(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_serves_a_database_migrated_by_this_one_postgres() {
    let _turn = crate::shared_turn().await;
    previous_release_on_this_schema(Backend::Postgres).await;
}
