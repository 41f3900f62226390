//! Re-reading files without a restart: on SIGHUP every registered item reloads; between
//! signals each item's files are polled once a second and an item reloads when one of
//! its files changed (so a change is picked up within 2 s).
//!
//! An item re-reads and checks its new value itself; when that fails it keeps the old
//! value and says why, and the reloader logs the refusal. Items: the deny list, every
//! `_FILE` secret (Corti client secrets, session keys, the audit HMAC key).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::background::spawn_while_alive;

/// Something that can be re-read from its files.
pub trait Reloadable: Send + Sync {
    /// What it is, for log lines (a setting name such as `DENY_LIST_FILE`).
    fn name(&self) -> String;
    /// The files it is read from; a change of any of them triggers [`Reloadable::reload`].
    fn paths(&self) -> Vec<PathBuf>;
    /// Re-reads the files. On `Err` the old value stays in force.
    fn reload(&self) -> Result<(), String>;
}

/// What a file looked like at the last poll: enough to notice a replaced or edited file
/// (Kubernetes swaps a symlink, editors write a new inode, `echo >` keeps it).
#[derive(Clone, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    })
}

struct Entry {
    item: Arc<dyn Reloadable>,
    stamps: Vec<(PathBuf, Option<Stamp>)>,
}

impl Entry {
    fn new(item: Arc<dyn Reloadable>) -> Self {
        let stamps = item.paths().into_iter().map(|p| {
            let s = stamp(&p);
            (p, s)
        });
        Self {
            stamps: stamps.collect(),
            item,
        }
    }

    /// Whether a file changed since the last look; remembers what it saw.
    fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.stamps {
            let now = stamp(path);
            if now != *seen {
                *seen = now;
                changed = true;
            }
        }
        changed
    }
}

/// The registered items. Cheap to share; register before or after [`Reloader::spawn`].
#[derive(Clone, Default)]
pub struct Reloader {
    entries: Arc<Mutex<Vec<Entry>>>,
    /// Told the item's name whenever a reload refuses a new value (a metric).
    on_refused: Arc<Mutex<Option<RefusedHook>>>,
}

type RefusedHook = Box<dyn Fn(&str) + Send + Sync>;

/// How one reload went, per item name: `Ok` or why the new value was refused.
pub type ReloadReport = Vec<(String, Result<(), String>)>;

impl Reloader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `hook` with the item's name each time a reload refuses a new value.
    pub fn on_refused(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *crate::background::lock(&self.on_refused) = Some(Box::new(hook));
    }

    fn report(&self, outcome: &(String, Result<(), String>)) {
        if outcome.1.is_err() {
            if let Some(hook) = &*crate::background::lock(&self.on_refused) {
                hook(&outcome.0);
            }
        }
    }

    pub fn register(&self, item: Arc<dyn Reloadable>) {
        let entry = Entry::new(item);
        crate::background::lock(&self.entries).push(entry);
    }

    /// Reloads every item (what SIGHUP does).
    pub fn reload_all(&self) -> ReloadReport {
        let items: Vec<Arc<dyn Reloadable>> = {
            let mut entries = crate::background::lock(&self.entries);
            entries.iter_mut().for_each(|e| {
                e.changed();
            });
            entries.iter().map(|e| e.item.clone()).collect()
        };
        items
            .iter()
            .map(|item| {
                let outcome = run(item.as_ref());
                self.report(&outcome);
                outcome
            })
            .collect()
    }

    /// Reloads the items whose files changed since the last poll.
    pub fn reload_changed(&self) -> ReloadReport {
        let items: Vec<Arc<dyn Reloadable>> = {
            let mut entries = crate::background::lock(&self.entries);
            entries
                .iter_mut()
                .filter_map(|e| e.changed().then(|| e.item.clone()))
                .collect()
        };
        items
            .iter()
            .map(|item| {
                let outcome = run(item.as_ref());
                self.report(&outcome);
                outcome
            })
            .collect()
    }

    /// Polls the files every `interval` and reloads everything on SIGHUP, while `owner`
    /// is alive.
    pub fn spawn<T: Send + Sync + 'static>(&self, owner: &Arc<T>, interval: Duration) {
        let this = self.clone();
        let weak = Arc::downgrade(owner);
        spawn_while_alive(interval, move || {
            weak.upgrade()?;
            this.reload_changed();
            Some(async {})
        });
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let weak = Arc::downgrade(owner);
            let this = self.clone();
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            if weak.upgrade().is_none() {
                                break;
                            }
                            tracing::info!("SIGHUP: re-reading files");
                            this.reload_all();
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; files are still re-read on change")
                }
            }
        }
    }
}

fn run(item: &dyn Reloadable) -> (String, Result<(), String>) {
    let name = item.name();
    let result = item.reload();
    match &result {
        Ok(()) => tracing::info!(item = %name, "reloaded"),
        Err(why) => {
            tracing::warn!(item = %name, error = %why, "new value refused; the old one stays in force")
        }
    }
    (name, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        path: PathBuf,
        loads: AtomicUsize,
    }

    impl Reloadable for Counting {
        fn name(&self) -> String {
            "COUNTING".into()
        }
        fn paths(&self) -> Vec<PathBuf> {
            vec![self.path.clone()]
        }
        fn reload(&self) -> Result<(), String> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&self.path).map_err(|e| e.to_string())?;
            if text.trim().is_empty() {
                return Err("empty".into());
            }
            Ok(())
        }
    }

    #[test]
    fn reloads_only_what_changed_and_reports_refusals() {
        let dir = std::env::temp_dir().join(format!("tv-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("value");
        std::fs::write(&path, "one").expect("write");
        let item = Arc::new(Counting {
            path: path.clone(),
            loads: AtomicUsize::new(0),
        });
        let reloader = Reloader::new();
        reloader.register(item.clone());
        assert!(reloader.reload_changed().is_empty(), "nothing changed yet");

        std::fs::write(&path, "two, longer").expect("write");
        let report = reloader.reload_changed();
        assert_eq!(report, vec![("COUNTING".to_string(), Ok(()))]);
        assert!(reloader.reload_changed().is_empty(), "seen once, not again");

        std::fs::write(&path, "").expect("write");
        let report = reloader.reload_changed();
        assert_eq!(
            report,
            vec![("COUNTING".to_string(), Err("empty".to_string()))]
        );

        assert_eq!(reloader.reload_all().len(), 1);
        assert_eq!(item.loads.load(Ordering::SeqCst), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
