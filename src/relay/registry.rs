//! The live streams of this replica: the per-user and per-replica limits, and the
//! operator's reach into running streams (the deny list, shutdown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::background::lock;
use crate::deny::NewlyDenied;

/// Why the service ends a stream that neither side closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its subject was added to the deny list (or `*` was).
    Deny,
    /// The replica is stopping and the drain grace is over.
    Shutdown,
}

/// A refused reservation: which limit was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    User,
    Replica,
}

struct Entry {
    subject: String,
    stop: watch::Sender<Option<Stop>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    streams: HashMap<u64, Entry>,
    per_user: HashMap<String, u32>,
}

/// Every open relayed stream, by subject.
pub struct Registry {
    max_per_user: u32,
    max_total: u32,
    inner: Mutex<Inner>,
}

/// One stream's place in the registry, released when dropped.
pub struct Slot {
    id: u64,
    subject: String,
    registry: Arc<Registry>,
    /// Set once the operator (deny list) or a shutdown ends the stream.
    pub stop: watch::Receiver<Option<Stop>>,
}

impl Registry {
    pub fn new(max_per_user: u32, max_total: u32) -> Arc<Self> {
        Arc::new(Self {
            max_per_user,
            max_total,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// A place for one more stream of `subject`, unless a limit is met.
    pub fn reserve(self: &Arc<Self>, subject: &str) -> Result<Slot, Full> {
        let mut inner = lock(&self.inner);
        if inner.streams.len() >= self.max_total as usize {
            return Err(Full::Replica);
        }
        let count = inner.per_user.get(subject).copied().unwrap_or(0);
        if count >= self.max_per_user {
            return Err(Full::User);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let (stop, watch) = watch::channel(None);
        inner.streams.insert(
            id,
            Entry {
                subject: subject.to_owned(),
                stop,
            },
        );
        *inner.per_user.entry(subject.to_owned()).or_default() += 1;
        Ok(Slot {
            id,
            subject: subject.to_owned(),
            registry: self.clone(),
            stop: watch,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        lock(&self.inner).streams.len()
    }

    /// Ends the open streams of subjects that became denied; answers how many.
    pub fn deny(&self, denied: &NewlyDenied) -> usize {
        let inner = lock(&self.inner);
        let mut stopped = 0;
        for entry in inner.streams.values() {
            let hit = match denied {
                NewlyDenied::Everyone => true,
                NewlyDenied::Subjects(subjects) => subjects.contains(&entry.subject),
            };
            if hit {
                entry.stop.send_replace(Some(Stop::Deny));
                stopped += 1;
            }
        }
        stopped
    }

    /// Ends every open stream (the drain grace is over).
    pub fn stop_all(&self, why: Stop) -> usize {
        let inner = lock(&self.inner);
        for entry in inner.streams.values() {
            entry.stop.send_replace(Some(why));
        }
        inner.streams.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = lock(&self.registry.inner);
        inner.streams.remove(&self.id);
        if let Some(count) = inner.per_user.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                inner.per_user.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_slots_come_back_when_dropped() {
        let registry = Registry::new(2, 3);
        let a1 = registry.reserve("alice").unwrap();
        let _a2 = registry.reserve("alice").unwrap();
        assert_eq!(registry.reserve("alice").err(), Some(Full::User));
        let _b = registry.reserve("bob").unwrap();
        assert_eq!(registry.reserve("carol").err(), Some(Full::Replica));
        drop(a1);
        assert_eq!(registry.open(), 2);
        assert!(registry.reserve("alice").is_ok());
    }

    #[test]
    fn a_denial_reaches_only_the_denied_subjects_streams() {
        let registry = Registry::new(4, 10);
        let alice = registry.reserve("alice").unwrap();
        let bob = registry.reserve("bob").unwrap();
        assert_eq!(
            registry.deny(&NewlyDenied::Subjects(vec!["alice".into()])),
            1
        );
        assert_eq!(*alice.stop.borrow(), Some(Stop::Deny));
        assert_eq!(*bob.stop.borrow(), None);
        assert_eq!(registry.deny(&NewlyDenied::Everyone), 2);
        assert_eq!(*bob.stop.borrow(), Some(Stop::Deny));
    }
}
