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
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::db::{AuditDb, ChainState};
use super::{AuditError, AuditEvent};
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
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue: 16_384,
            max_batch: 2_048,
            wait: Duration::from_secs(5),
            commit_timeout: Duration::from_secs(2),
        }
    }
}

struct Pending {
    event: AuditEvent,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// Handle to the writer task; cheap to clone. The task ends when every handle is gone.
#[derive(Clone)]
pub struct GroupCommitWriter {
    tx: mpsc::Sender<Pending>,
    wait: Duration,
    failing: Arc<AtomicBool>,
    metrics: AuditWriterMetrics,
}

impl GroupCommitWriter {
    /// Starts the writer task on the current tokio runtime, with a new chain.
    pub fn start(db: AuditDb, config: WriterConfig) -> Self {
        Self::start_reporting(db, config, AuditWriterMetrics::default())
    }

    /// Like [`Self::start`], reporting batch sizes, commit times and failures, and the
    /// queue's depth into `metrics`.
    pub fn start_reporting(db: AuditDb, config: WriterConfig, metrics: AuditWriterMetrics) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let failing = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(db, rx, config, failing.clone(), metrics.clone()));
        Self {
            tx,
            wait: config.wait,
            failing,
            metrics,
        }
    }

    /// Queues the event and waits until it is committed.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (done, committed) = oneshot::channel();
        self.tx
            .try_send(Pending { event, done })
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

    /// Whether the last transaction failed (cleared by the next one that commits).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

async fn run(
    db: AuditDb,
    mut rx: mpsc::Receiver<Pending>,
    config: WriterConfig,
    failing: Arc<AtomicBool>,
    metrics: AuditWriterMetrics,
) {
    let mut chain = ChainState::new();
    let mut batch: Vec<Pending> = Vec::with_capacity(config.max_batch);
    while rx.recv_many(&mut batch, config.max_batch.max(1)).await > 0 {
        metrics.queue_depth(rx.len());
        // A caller that timed out was told "no"; its event must not be stored late.
        batch.retain(|p| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let events: Vec<&AuditEvent> = batch.iter().map(|p| &p.event).collect();
        let started = Instant::now();
        let result =
            match tokio::time::timeout(config.commit_timeout, db.append(&mut chain, &events)).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(AuditError::Unavailable(e.to_string())),
                Err(_) => Err(AuditError::Timeout),
            };
        metrics.commit(batch.len(), started.elapsed(), result.is_ok());
        if let Err(e) = &result {
            // The commit may or may not have happened: learn the head again.
            chain.known = false;
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, events = batch.len(), "audit commit failed; refusing tokens until the store is back");
            }
        } else if failing.swap(false, Ordering::Relaxed) {
            tracing::info!("audit store is writable again");
        }
        for p in batch.drain(..) {
            let _ = p.done.send(result.clone());
        }
    }
}
