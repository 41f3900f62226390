//! Group commit: one task owns the writer's chain and commits many requests' events
//! per transaction (one fsync for all of them), while each request waits for the
//! commit of its own event.
//!
//! There is no timer in the loop: while one transaction commits, new events queue up,
//! and the next transaction takes all of them (up to [`WriterConfig::max_batch`]). A
//! quiet service therefore commits each event at once, and a busy one in batches.
//!
//! Every wait is bounded: a full queue refuses at once, and a caller waits at most
//! [`WriterConfig::wait`] for its commit. A caller that gave up is dropped from the
//! batch if its event has not started committing yet. After a failed commit the next
//! one reloads the chain head, so the writer recovers by itself when the store returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::db::{Appended, AuditDb, ChainConflict, ChainState, LookupPass, StoreError};
use super::keys::{ChainKey, NoteSigner};
use super::watch::{Head, SharedTrail};
use super::{AuditError, AuditEvent, Link};
use crate::metrics::AuditWriterMetrics;

/// Limits of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Events waiting for a transaction; beyond this, `record` fails at once.
    pub queue: usize,
    /// Most events in one transaction.
    pub max_batch: usize,
    /// Longest a caller waits for its event to be committed: more than two
    /// transactions (the one in progress and its own), so a caller that is told
    /// "failed" is not one whose event was committed after all.
    pub wait: Duration,
    /// Longest one transaction may take before the writer abandons it.
    pub commit_timeout: Duration,
    /// Least time between two signed checkpoints of the chain (with a signing key).
    pub checkpoint_every: Duration,
    /// How often a background task checks what the writer committed against the
    /// database (see [`super::watch`]); `None`: no such check (benchmarks of the writer).
    pub watch_every: Option<Duration>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue: 16_384,
            max_batch: 2_048,
            wait: Duration::from_secs(5),
            commit_timeout: Duration::from_secs(2),
            checkpoint_every: Duration::from_secs(10),
            watch_every: None,
        }
    }
}

struct Pending {
    event: AuditEvent,
    done: oneshot::Sender<Result<Link, AuditError>>,
}

// Events are nearly every message: boxing them would add an allocation to each.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Pending),
    /// Sign the chain's head now (at shutdown), then answer.
    Checkpoint(oneshot::Sender<()>),
}

/// What the writer keys and signs with.
#[derive(Clone)]
pub struct WriterKeys {
    pub chain: ChainKey,
    pub signer: Option<Arc<NoteSigner>>,
}

/// Handle to the writer task; cheap to clone. The task ends when every handle is gone.
#[derive(Clone)]
pub struct GroupCommitWriter {
    tx: mpsc::Sender<Msg>,
    wait: Duration,
    failing: Arc<AtomicBool>,
    metrics: AuditWriterMetrics,
    heads: tokio::sync::watch::Receiver<Option<Head>>,
    trail: SharedTrail,
}

impl GroupCommitWriter {
    /// Starts the writer task on the current tokio runtime, with a new chain.
    pub fn start(db: AuditDb, config: WriterConfig, keys: WriterKeys) -> Self {
        Self::start_reporting(db, config, keys, AuditWriterMetrics::default())
    }

    /// Like [`Self::start`], reporting batch sizes, commit times and failures, and the
    /// queue's depth into `metrics`.
    pub fn start_reporting(
        db: AuditDb,
        config: WriterConfig,
        keys: WriterKeys,
        metrics: AuditWriterMetrics,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let failing = Arc::new(AtomicBool::new(false));
        let (heads_tx, heads) = tokio::sync::watch::channel(None);
        let trail = SharedTrail::default();
        tokio::spawn(run(
            db,
            rx,
            config,
            failing.clone(),
            keys,
            metrics.clone(),
            (heads_tx, trail.clone()),
        ));
        Self {
            tx,
            wait: config.wait,
            failing,
            metrics,
            heads,
            trail,
        }
    }

    /// The trail's state: the writer records its signed checkpoints and chain
    /// conflicts there, the background check what it verified.
    pub fn trail(&self) -> SharedTrail {
        self.trail.clone()
    }

    /// The heads the writer commits, latest first.
    pub fn heads(&self) -> tokio::sync::watch::Receiver<Option<Head>> {
        self.heads.clone()
    }

    /// Queues the event and waits until it is committed; returns its place in the chain.
    pub async fn record(&self, event: AuditEvent) -> Result<Link, AuditError> {
        let (done, committed) = oneshot::channel();
        self.tx
            .try_send(Msg::Event(Pending { event, done }))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    AuditError::Unavailable("the audit queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    AuditError::Unavailable("the audit writer has stopped".into())
                }
            })?;
        self.metrics
            .queue_depth(self.tx.max_capacity() - self.tx.capacity());
        match tokio::time::timeout(self.wait, committed).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::Unavailable(
                "the audit writer has stopped".into(),
            )),
            Err(_) => Err(AuditError::Timeout),
        }
    }

    /// Signs a checkpoint of the chain's head now, if it moved since the last one
    /// (at shutdown). Waits at most the writer's wait.
    pub async fn checkpoint(&self) {
        let (done, signed) = oneshot::channel();
        if self.tx.send(Msg::Checkpoint(done)).await.is_ok() {
            let _ = tokio::time::timeout(self.wait, signed).await;
        }
    }

    /// Whether the last transaction failed (cleared by the next one that commits).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

struct Checkpointer {
    signer: Option<Arc<NoteSigner>>,
    every: Duration,
    timeout: Duration,
    /// The chain and head the last stored checkpoint signed.
    signed_chain: String,
    signed_seq: i64,
    next_due: Instant,
    trail: SharedTrail,
}

impl Checkpointer {
    /// Whether the chain has committed events no checkpoint signed yet.
    fn dirty(&self, chain: &ChainState) -> bool {
        self.signer.is_some()
            && chain.known
            && chain.head_seq > 0
            && (chain.head_seq > self.signed_seq || chain.id != self.signed_chain)
    }

    /// Signs and stores the head (also on the `audit` log target); a failure only
    /// delays it to the next try.
    async fn sign(&mut self, db: &AuditDb, chain: &ChainState) {
        let Some(signer) = &self.signer else { return };
        if !self.dirty(chain) {
            return;
        }
        self.next_due = Instant::now() + self.every;
        match tokio::time::timeout(self.timeout, db.write_checkpoint(chain, signer)).await {
            Ok(Ok(note)) => {
                self.signed_seq = chain.head_seq;
                self.signed_chain.clone_from(&chain.id);
                self.trail
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .signed(&chain.id, chain.head_seq);
                tracing::info!(
                    target: "audit",
                    chain_id = %chain.id,
                    chain_seq = chain.head_seq,
                    hash = %chain.head_hash,
                    checkpoint = %note,
                    "audit checkpoint"
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "audit checkpoint could not be stored"),
            Err(_) => tracing::warn!("audit checkpoint timed out"),
        }
    }
}

async fn run(
    db: AuditDb,
    mut rx: mpsc::Receiver<Msg>,
    config: WriterConfig,
    failing: Arc<AtomicBool>,
    keys: WriterKeys,
    metrics: AuditWriterMetrics,
    (heads, trail): (tokio::sync::watch::Sender<Option<Head>>, SharedTrail),
) {
    let mut chain = ChainState::new(keys.chain);
    let mut checkpoints = Checkpointer {
        signer: keys.signer,
        every: config.checkpoint_every,
        timeout: config.commit_timeout,
        signed_chain: chain.id.clone(),
        signed_seq: 0,
        next_due: Instant::now() + config.checkpoint_every,
        trail: trail.clone(),
    };
    let mut lookups = Lookups::new();
    lookups.catch_up(&db, &config).await;
    let mut msgs: Vec<Msg> = Vec::with_capacity(config.max_batch);
    loop {
        let (dirty, indexing, index_due) =
            (checkpoints.dirty(&chain), lookups.busy(), lookups.due_at());
        let received = tokio::select! {
            biased;
            n = rx.recv_many(&mut msgs, config.max_batch.max(1)) => n,
            () = tokio::time::sleep_until(checkpoints.next_due), if dirty => {
                checkpoints.sign(&db, &chain).await;
                continue;
            }
            // A quiet writer finishes the lookup pass under way, and starts one when
            // an event has waited LOOKUP_EVERY.
            () = lookups.ready(), if indexing => {
                lookups.write_next(&db, &config).await;
                continue;
            }
            () = tokio::time::sleep_until(index_due.unwrap_or_else(Instant::now)), if index_due.is_some() => {
                lookups.start_reading(&db, &config);
                continue;
            }
        };
        metrics.queue_depth(rx.len());
        if received == 0 {
            checkpoints.sign(&db, &chain).await;
            return;
        }
        let mut asked = Vec::new();
        let mut batch = Vec::with_capacity(msgs.len());
        for m in msgs.drain(..) {
            match m {
                // A caller that timed out was told "no"; its event must not be stored late.
                Msg::Event(p) if p.done.is_closed() => {}
                Msg::Event(p) => batch.push(p),
                Msg::Checkpoint(done) => asked.push(done),
            }
        }
        if !batch.is_empty() {
            let events = batch.len();
            if commit(&db, &mut chain, batch, &config, &failing, &metrics, &trail).await {
                heads.send_replace(Some(Head {
                    chain_id: chain.id.clone(),
                    seq: chain.head_seq,
                    hash: chain.head_hash.clone(),
                }));
                lookups.committed(&db, events, &config).await;
            }
            if Instant::now() >= checkpoints.next_due {
                checkpoints.sign(&db, &chain).await;
            }
        }
        if !asked.is_empty() {
            checkpoints.sign(&db, &chain).await;
            for done in asked {
                let _ = done.send(());
            }
        }
    }
}

/// Commits the batch and answers each caller; returns whether it committed.
async fn commit(
    db: &AuditDb,
    chain: &mut ChainState,
    batch: Vec<Pending>,
    config: &WriterConfig,
    failing: &AtomicBool,
    metrics: &AuditWriterMetrics,
    trail: &SharedTrail,
) -> bool {
    let events: Vec<&AuditEvent> = batch.iter().map(|p| &p.event).collect();
    let started = Instant::now();
    let mut result = append(db, chain, &events, config).await;
    if let Err(Failure::Conflict(conflict)) = &result {
        // The batch did not commit: it goes on a new chain, after the event that
        // records the conflict.
        chain_conflict(chain, conflict, metrics, trail);
        result = append(db, chain, &events, config).await;
    }
    let result = result.map_err(|f| match f {
        Failure::Conflict(c) => AuditError::Unavailable(c.to_string()),
        Failure::Other(e) => e,
    });
    metrics.commit(batch.len(), started.elapsed(), result.is_ok());
    match &result {
        Err(e) => {
            // The commit may or may not have happened: check the head first next time.
            chain.known = false;
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, events = batch.len(), "audit commit failed; refusing tokens until the store is back");
            }
        }
        Ok(_) => {
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!("audit store is writable again");
            }
        }
    }
    let chain_id: Arc<str> = Arc::from(chain.id.as_str());
    match result {
        Ok(appended) => {
            for ((p, hash), seq) in batch
                .into_iter()
                .zip(appended.hashes)
                .zip(appended.first_seq..)
            {
                let _ = p.done.send(Ok(Link {
                    chain_id: chain_id.clone(),
                    seq,
                    hash,
                }));
            }
            true
        }
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
            false
        }
    }
}

enum Failure {
    Conflict(Box<ChainConflict>),
    Other(AuditError),
}

async fn append(
    db: &AuditDb,
    chain: &mut ChainState,
    events: &[&AuditEvent],
    config: &WriterConfig,
) -> Result<Appended, Failure> {
    match tokio::time::timeout(config.commit_timeout, db.append(chain, events)).await {
        Ok(Ok(appended)) => Ok(appended),
        Ok(Err(StoreError::ChainConflict(c))) => Err(Failure::Conflict(c)),
        Ok(Err(e)) => Err(Failure::Other(AuditError::Unavailable(e.to_string()))),
        Err(_) => Err(Failure::Other(AuditError::Timeout)),
    }
}

/// The chain's stored head is not one this writer wrote: someone removed or rewrote
/// events under the running service. Reported loudly; the writer goes on with a new
/// chain whose first event records the conflict (the old chain stays as found, for
/// `audit verify` and the signed checkpoints to judge).
fn chain_conflict(
    chain: &mut ChainState,
    conflict: &ChainConflict,
    metrics: &AuditWriterMetrics,
    trail: &SharedTrail,
) {
    metrics.chain_conflict();
    let next = ChainState::after_conflict(chain.key.clone(), conflict);
    tracing::error!(
        target: "audit",
        chain_id = %conflict.chain_id,
        expected_seq = conflict.expected.0,
        expected_hash = %conflict.expected.1,
        found_seq = conflict.found.as_ref().map(|f| f.0),
        found_hash = conflict.found.as_ref().map(|f| f.1.as_str()),
        new_chain_id = %next.id,
        "audit chain conflict: the chain's head in the database is not the one this service wrote (events removed or rewritten under it); continuing on a new chain"
    );
    trail
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .conflicted(format!("{conflict}; chain {} continues the trail", next.id));
    *chain = next;
}

/// Events committed since SQLite's lookup table was last brought up to date, after
/// which a new pass starts (see `db::lookup`); large passes write each B-tree page once
/// for many entries. Until an event is indexed, queries scan it directly.
const LOOKUP_EVERY_EVENTS: usize = 16_384;
/// Longest an event waits before a pass that covers it starts.
const LOOKUP_EVERY: Duration = Duration::from_secs(1);

/// When the writer brings SQLite's lookup table up to date. A pass is read on another
/// connection while the writer goes on committing, then written one short transaction
/// after each commit of events, on the writer's connection (so its page cache stays
/// valid), after that batch's callers were answered: no caller waits for a whole pass.
struct Lookups {
    reading: Option<tokio::task::JoinHandle<Result<Option<LookupPass>, StoreError>>>,
    pass: Option<LookupPass>,
    /// Events committed since the last pass started, and since when the first waits.
    unindexed: usize,
    waiting_since: Option<Instant>,
    failing: bool,
}

impl Lookups {
    fn new() -> Self {
        Self {
            reading: None,
            pass: None,
            unindexed: 0,
            waiting_since: None,
            failing: false,
        }
    }

    /// At start: index whatever an earlier run (or an older binary) left unindexed.
    async fn catch_up(&mut self, db: &AuditDb, config: &WriterConfig) {
        loop {
            let read = bounded(config.commit_timeout, db.read_lookup_pass()).await;
            let Some(mut pass) = self.outcome(read).flatten() else {
                return;
            };
            loop {
                let written = bounded(config.commit_timeout, db.write_lookups(&mut pass)).await;
                match self.outcome(written) {
                    Some(true) => break,
                    Some(false) => {}
                    None => return,
                }
            }
        }
    }

    /// Whether a pass is being read or written.
    fn busy(&self) -> bool {
        self.reading.is_some() || self.pass.is_some()
    }

    /// Returns once a pass is ready to write (or its read failed or found nothing).
    /// Cancel-safe: an unfinished read stays where it was.
    async fn ready(&mut self) {
        if self.pass.is_some() {
            return;
        }
        if let Some(reading) = self.reading.as_mut() {
            let read = match reading.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            self.reading = None;
            self.pass = self.outcome(read).flatten();
        }
    }

    /// Writes the next transaction of the pass under way, if there is one.
    async fn write_next(&mut self, db: &AuditDb, config: &WriterConfig) {
        if let Some(pass) = self.pass.as_mut() {
            let written = bounded(config.commit_timeout, db.write_lookups(pass)).await;
            if self.outcome(written) == Some(true) {
                self.pass = None;
            }
        }
    }

    async fn committed(&mut self, db: &AuditDb, events: usize, config: &WriterConfig) {
        self.unindexed += events;
        self.waiting_since.get_or_insert_with(Instant::now);
        if self.reading.as_ref().is_some_and(|r| r.is_finished()) {
            self.ready().await;
        }
        if self.pass.is_some() {
            self.write_next(db, config).await;
        } else if self.unindexed >= LOOKUP_EVERY_EVENTS
            || self.due_at().is_some_and(|t| t <= Instant::now())
        {
            self.start_reading(db, config);
        }
    }

    /// When the oldest unindexed event will have waited [`LOOKUP_EVERY`], unless a pass
    /// is under way (it may cover it).
    fn due_at(&self) -> Option<Instant> {
        match self.waiting_since {
            Some(t) if !self.busy() => Some(t + LOOKUP_EVERY),
            _ => None,
        }
    }

    /// Starts reading the next pass on the lookup connection.
    fn start_reading(&mut self, db: &AuditDb, config: &WriterConfig) {
        if self.busy() {
            return;
        }
        self.unindexed = 0;
        self.waiting_since = None;
        let (db, timeout) = (db.clone(), config.commit_timeout);
        self.reading = Some(tokio::spawn(async move {
            match tokio::time::timeout(timeout, db.read_lookup_pass()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout),
            }
        }));
    }

    /// The value of a step that succeeded; `None` (logged once until one succeeds) if
    /// it failed.
    fn outcome<T>(&mut self, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("audit lookup table is being updated again");
                }
                Some(v)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %e, "audit lookup table could not be updated; queries by subject or fingerprint scan the newer events until it is");
                }
                None
            }
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}
