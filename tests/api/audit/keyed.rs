//! Tamper evidence that does not trust the database: what someone who can write the
//! audit database (but holds neither AUDIT_HMAC_KEY nor AUDIT_SIGNING_KEY) does to
//! hide events, and `audit verify` catching it: with the chain key, the signed
//! checkpoints in the database, and checkpoints kept elsewhere (`--checkpoints FILE`).

use std::path::PathBuf;

use sqlx::Row;
use token_vendor::audit::chain;
use token_vendor::audit::keys::{ChainKey, NoteSigner};
use token_vendor::audit::AuditEvent;

use crate::both_backends;
use crate::support::*;

/// A service that signs checkpoints; returns it and its verifier key.
async fn signing_app(db: &TestDb) -> (TestApp, String) {
    let signer = NoteSigner::generate("test-audit").unwrap();
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

fn verify(db: &TestDb, args: &[&str]) -> (bool, String) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = cli(&db.url, &all, &[]);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// The signed checkpoints stored so far, copied "off the box" into a file.
async fn keep_checkpoints_elsewhere(db: &TestDb) -> PathBuf {
    let pool = db.raw().await;
    let notes: Vec<String> = sqlx::query("SELECT note FROM audit_checkpoints ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("note"))
        .collect();
    pool.close().await;
    assert!(!notes.is_empty(), "the service signed checkpoints");
    let path = std::env::temp_dir().join(format!(
        "tv-checkpoints-{}.txt",
        token_vendor::dev::random_hex(8)
    ));
    std::fs::write(&path, notes.join("\n")).unwrap();
    path
}

async fn exec(db: &TestDb, sql: &str) {
    let pool = db.raw().await;
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

/// `(chain_id, chain_seq, id, hash)` of every stored event in chain order.
async fn rows(db: &TestDb) -> Vec<(String, i64, String, String)> {
    let pool = db.raw().await;
    let rows = sqlx::query(
        "SELECT chain_id, chain_seq, id, hash FROM audit_events ORDER BY chain_id, chain_seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("chain_id"),
            r.get("chain_seq"),
            r.get("id"),
            r.get("hash"),
        )
    })
    .collect();
    pool.close().await;
    rows
}

/// Every stored event, as `audit export` gives them.
fn exported(db: &TestDb) -> Vec<AuditEvent> {
    let out = cli(&db.url, &["audit", "export"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Deletes the event at `victim` (0-based) of the only chain and rewrites the rest of
/// the chain and its head with `key` (None: plain SHA-256 as unkeyed chains hash),
/// as someone without the real key would.
async fn delete_and_recompute(db: &TestDb, victim: usize, key: Option<&ChainKey>, unkeyed: bool) {
    let events = exported(db);
    let rows = rows(db).await;
    let chain_id = rows[0].0.clone();
    let pool = db.raw().await;
    sqlx::query("DELETE FROM audit_events WHERE id = $1")
        .bind(&rows[victim].2)
        .execute(&pool)
        .await
        .unwrap();
    let mut prev = chain::GENESIS.to_owned();
    let mut seq = 0i64;
    for (i, (_, _, id, _)) in rows.iter().enumerate() {
        if i == victim {
            continue;
        }
        seq += 1;
        let event = events.iter().find(|e| &e.id == id).unwrap();
        let hash = chain::event_hash(key, &prev, &chain_id, seq, event);
        sqlx::query(
            "UPDATE audit_events SET chain_seq = $1, prev_hash = $2, hash = $3 WHERE id = $4",
        )
        .bind(seq)
        .bind(prev.as_str())
        .bind(hash.as_str())
        .bind(id.as_str())
        .execute(&pool)
        .await
        .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_chains SET head_seq = $1, head_hash = $2 WHERE chain_id = $3")
        .bind(seq)
        .bind(prev.as_str())
        .bind(chain_id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    if unkeyed {
        sqlx::query("UPDATE audit_chains SET key_id = NULL")
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

async fn a_deletion_recomputed_without_the_key_is_caught(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    for i in 0..5 {
        app.vend_token(&format!("user-{i}")).await;
    }
    assert!(verify(&db, &[]).0);

    // Recomputed as unkeyed chains hash, claiming the chain is an old unkeyed one.
    delete_and_recompute(&db, 2, None, true).await;
    let (ok, out) = verify(&db, &[]);
    assert!(!ok && out.contains("unkeyed"), "{out}");

    // Recomputed with a guessed key, keeping the chain's key id.
    let guess = ChainKey::derive(&"a-guess".to_string().into());
    let pool = db.raw().await;
    sqlx::query("UPDATE audit_chains SET key_id = $1")
        .bind(ChainKey::derive(&app.secrets.audit.clone().into()).id())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    delete_and_recompute(&db, 1, Some(&guess), false).await;
    let (ok, out) = verify(&db, &[]);
    assert!(!ok && out.contains("altered"), "{out}");
    db.cleanup().await;
}
both_backends!(a_deletion_recomputed_without_the_key_is_caught);

async fn a_deleted_chain_is_caught_by_checkpoints_kept_elsewhere(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (app, verifier) = signing_app(&db).await;
    for i in 0..3 {
        app.vend_token(&format!("user-{i}")).await;
    }
    app.auditor.checkpoint().await;
    let file = keep_checkpoints_elsewhere(&db).await;
    let file_arg = file.to_str().unwrap();
    let (ok, out) = verify(
        &db,
        &["--verifier-key", &verifier, "--checkpoints", file_arg],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("checked against 2 signed checkpoints"),
        "{out}"
    );

    // Everything of the chain goes, its checkpoints in the database too.
    exec(&db, "DELETE FROM audit_events").await;
    exec(&db, "DELETE FROM audit_chains").await;
    exec(&db, "DELETE FROM audit_checkpoints").await;
    let (ok, out) = verify(&db, &["--verifier-key", &verifier]);
    assert!(ok, "the database alone cannot tell: {out}");
    let (ok, out) = verify(
        &db,
        &["--verifier-key", &verifier, "--checkpoints", file_arg],
    );
    assert!(!ok && out.contains("is gone"), "{out}");
    let _ = std::fs::remove_file(&file);
    db.cleanup().await;
}
both_backends!(a_deleted_chain_is_caught_by_checkpoints_kept_elsewhere);

async fn a_truncated_tail_is_caught_by_checkpoints(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (app, verifier) = signing_app(&db).await;
    for i in 0..5 {
        app.vend_token(&format!("user-{i}")).await;
    }
    app.auditor.checkpoint().await;
    let file = keep_checkpoints_elsewhere(&db).await;
    let file_arg = file.to_str().unwrap();
    let kept = rows(&db).await;
    let (chain_id, seq3, _, hash3) = kept[2].clone();

    // The last two events go and the head moves back to the third, whose values are
    // genuine: nothing needs recomputing.
    exec(&db, "DELETE FROM audit_events WHERE chain_seq > 3").await;
    let pool = db.raw().await;
    sqlx::query("UPDATE audit_chains SET head_seq = $1, head_hash = $2 WHERE chain_id = $3")
        .bind(seq3)
        .bind(hash3.as_str())
        .bind(chain_id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (ok, out) = verify(&db, &["--verifier-key", &verifier]);
    assert!(!ok && out.contains("truncated"), "{out}");

    // Also removing the checkpoints from the database: the copy elsewhere still tells.
    exec(&db, "DELETE FROM audit_checkpoints").await;
    assert!(verify(&db, &["--verifier-key", &verifier]).0);
    let (ok, out) = verify(
        &db,
        &["--verifier-key", &verifier, "--checkpoints", file_arg],
    );
    assert!(!ok && out.contains("truncated"), "{out}");

    // A forged checkpoint file is refused.
    let forged = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\n5\n", "\n3\n");
    std::fs::write(&file, forged).unwrap();
    let (ok, out) = verify(
        &db,
        &["--verifier-key", &verifier, "--checkpoints", file_arg],
    );
    assert!(!ok && out.contains("does not verify"), "{out}");
    let _ = std::fs::remove_file(&file);
    db.cleanup().await;
}
both_backends!(a_truncated_tail_is_caught_by_checkpoints);

async fn a_moved_prune_anchor_is_caught(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    for i in 0..5 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let kept = rows(&db).await;
    let (chain_id, seq2, _, hash2) = kept[1].clone();
    // Two events go, and the anchor moves over them as a prune would move it.
    exec(&db, "DELETE FROM audit_events WHERE chain_seq <= 2").await;
    let pool = db.raw().await;
    sqlx::query("UPDATE audit_chains SET anchor_seq = $1, anchor_hash = $2 WHERE chain_id = $3")
        .bind(seq2)
        .bind(hash2.as_str())
        .bind(chain_id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (ok, out) = verify(&db, &[]);
    assert!(!ok && out.contains("prune anchor"), "{out}");
    db.cleanup().await;
}
both_backends!(a_moved_prune_anchor_is_caught);

async fn keygen_makes_a_key_the_service_signs_with(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let out = cli(&db.url, &["audit", "keygen"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_owned()
    };
    let (signing, verifier) = (value("AUDIT_SIGNING_KEY"), value("AUDIT_VERIFIER_KEY"));
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .env("AUDIT_SIGNING_KEY", signing.clone())
        .spawn()
        .await;
    app.vend_token("alice").await;
    app.auditor.checkpoint().await;
    let (ok, out) = verify(&db, &["--verifier-key", &verifier]);
    assert!(ok && out.contains("1 signed checkpoint"), "{out}");
    // The signing key gives the verifier key too.
    let out = cli(
        &db.url,
        &["audit", "verify"],
        &[("AUDIT_SIGNING_KEY", &signing)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Another key's verifier refuses the stored checkpoints.
    let other = NoteSigner::generate("test-audit")
        .unwrap()
        .verifier()
        .text();
    let (ok, out) = verify(&db, &["--verifier-key", &other]);
    assert!(!ok && out.contains("bad checkpoint"), "{out}");
    // Without any verifier key, verify says what it needs.
    let (ok, out) = verify(&db, &[]);
    assert!(!ok && out.contains("verifier key"), "{out}");
    db.cleanup().await;
}
both_backends!(keygen_makes_a_key_the_service_signs_with);

/// Rows' times are whatever the database says: backdating recent events must not make
/// the routine prune delete them (and cover them with a valid anchor).
async fn prune_refuses_backdated_events_and_deletes_nothing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (app, verifier) = signing_app(&db).await;
    for i in 0..20 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let before = rows(&db).await;
    assert_eq!(before.len(), 20);
    exec(
        &db,
        "UPDATE audit_events SET time_us = 1577836800000000 + chain_seq WHERE chain_seq <= 15",
    )
    .await;

    let out = cli(
        &db.url,
        &[
            "audit",
            "prune",
            "--older-than",
            "90d",
            "--verifier-key",
            &verifier,
        ],
        &[],
    );
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("TAMPERED"), "{said}");
    assert!(
        said.contains("altered") && said.contains(&before[0].2),
        "{said}"
    );
    assert_eq!(rows(&db).await, before, "nothing was deleted");
    let (ok, report) = verify(&db, &["--verifier-key", &verifier]);
    assert!(!ok && report.contains(&before[0].2), "{report}");
    db.cleanup().await;
}
both_backends!(prune_refuses_backdated_events_and_deletes_nothing);

/// An event removed from the middle of the run a prune would delete is reported, not
/// pruned over.
async fn prune_refuses_a_gap_in_the_run_it_would_delete(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    for i in 0..6 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let before = rows(&db).await;
    exec(&db, "DELETE FROM audit_events WHERE chain_seq = 3").await;
    let out = cli(
        &db.url,
        &["audit", "prune", "--older-than", "0s", "--force"],
        &[],
    );
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("removed") && said.contains("#3..#3"),
        "{said}"
    );
    assert_eq!(
        rows(&db).await.len(),
        before.len() - 1,
        "nothing else was deleted"
    );
    db.cleanup().await;
}
both_backends!(prune_refuses_a_gap_in_the_run_it_would_delete);

/// A keyed chain downgraded to plain SHA-256 (events dropped, `key_id` cleared, hashes
/// recomputed, the database's checkpoints dropped) is accepted only when named, and
/// then said so.
async fn allow_unkeyed_names_each_chain_it_accepts(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    for i in 0..5 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let chain_id = rows(&db).await[0].0.clone();
    delete_and_recompute(&db, 2, None, true).await;
    exec(&db, "DELETE FROM audit_checkpoints").await;

    let (ok, out) = verify(&db, &["--allow-unkeyed"]);
    assert!(
        !ok,
        "a blanket --allow-unkeyed is no longer accepted: {out}"
    );
    let (ok, out) = verify(&db, &["--allow-unkeyed", "some-other-chain"]);
    assert!(
        !ok && out.contains("unkeyed") && out.contains(&chain_id),
        "{out}"
    );
    let (ok, out) = verify(&db, &["--allow-unkeyed", &chain_id]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("accepted unkeyed chain {chain_id}")),
        "{out}"
    );
    db.cleanup().await;
}
both_backends!(allow_unkeyed_names_each_chain_it_accepts);
