//! The deny list (kill switch): `DENY_LIST_FILE` names session subjects that get no
//! token, one per line (`#` starts a comment, blank lines are ignored); a line `*`
//! alone stops vending for everyone.
//!
//! The file is read at start (unreadable then: a configuration error) and re-read by
//! the [`Reloader`](crate::reload::Reloader) within 2 s of a change and on SIGHUP. An
//! unreadable file later keeps the list in force and is logged. Subjects that become
//! denied are reported to the listener, which drops their cached tokens, so a token
//! held from before the denial is never handed out again, even after the subject is
//! lifted from the list.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::background::lock;
use crate::reload::Reloadable;

/// The setting's name, for log lines and errors.
pub const SETTING: &str = "DENY_LIST_FILE";

/// The entries in force.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entries {
    /// `*`: nobody gets a token.
    pub everyone: bool,
    pub subjects: HashSet<String>,
}

impl Entries {
    /// Reads the file's text: one subject per line, `#` comments, `*` for everyone.
    /// A subject is the whole line without surrounding spaces (subjects may hold
    /// inner spaces); a `#` after a subject is part of it only if not preceded by a
    /// space, so `alice # left 2026-11` denies `alice`. A line that starts with `"` is
    /// a JSON string naming the subject exactly (`"\u00a0bob # 2 "`), for subjects
    /// with surrounding spaces, ` #`, or characters that cannot be typed.
    pub fn parse(text: &str) -> Self {
        Self::parse_reporting(text).0
    }

    /// [`Entries::parse`], with what an operator should know about the file: lines
    /// that could not be read, and entries holding invisible or control characters.
    pub fn parse_reporting(text: &str) -> (Self, Vec<String>) {
        let mut entries = Entries::default();
        let mut warnings = Vec::new();
        // An editor's byte-order mark would otherwise become part of the first entry.
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        for (number, line) in text.lines().enumerate() {
            let number = number + 1;
            if line.trim_start().starts_with('"') {
                match quoted(line.trim_start()) {
                    Some(subject) if !subject.is_empty() => {
                        entries.subjects.insert(subject);
                    }
                    _ => warnings.push(format!(
                        "line {number}: not a JSON string followed by nothing or a # comment; ignored"
                    )),
                }
                continue;
            }
            let line = match line.find(" #").or_else(|| line.find("\t#")) {
                Some(at) => &line[..at],
                None => line,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == "*" {
                entries.everyone = true;
                continue;
            }
            if line.chars().any(crate::text::is_invisible) {
                warnings.push(format!(
                    "line {number}: {:?} holds invisible or control characters ({}); \
                     write it as a JSON string (\"…\") to name a subject exactly",
                    line,
                    crate::text::escape_invisible(line)
                ));
            }
            entries.subjects.insert(line.to_owned());
        }
        (entries, warnings)
    }

    /// Lines in force (`*` counts as one).
    pub fn len(&self) -> usize {
        self.subjects.len() + usize::from(self.everyone)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why `subject` is refused, if it is.
    pub fn denies(&self, subject: &str) -> Option<Denial> {
        if self.subjects.contains(subject) {
            Some(Denial::Subject)
        } else if self.everyone {
            Some(Denial::Everyone)
        } else {
            None
        }
    }
}

/// How a subject is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Its own line.
    Subject,
    /// The `*` line.
    Everyone,
}

/// Who became denied by a change of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewlyDenied {
    /// `*` appeared: every cached token goes.
    Everyone,
    Subjects(Vec<String>),
}

type Listener = Box<dyn Fn(NewlyDenied) + Send + Sync>;
type Gauge = Box<dyn Fn(usize) + Send + Sync>;

/// The deny list in force, re-read from its file.
pub struct DenyList {
    path: Option<PathBuf>,
    entries: RwLock<Arc<Entries>>,
    listener: Mutex<Option<Listener>>,
    gauge: Mutex<Option<Gauge>>,
}

impl DenyList {
    /// No file: nobody is denied.
    pub fn none() -> Self {
        Self {
            path: None,
            entries: RwLock::new(Arc::new(Entries::default())),
            listener: Mutex::new(None),
            gauge: Mutex::new(None),
        }
    }

    /// Reads `path` now; an unreadable file is an error (the service does not start).
    pub fn load(path: &Path) -> Result<Self, String> {
        let entries = read(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            entries: RwLock::new(Arc::new(entries)),
            listener: Mutex::new(None),
            gauge: Mutex::new(None),
        })
    }

    /// The entries in force now.
    pub fn current(&self) -> Arc<Entries> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Why `subject` is refused now, if it is.
    pub fn denies(&self, subject: &str) -> Option<Denial> {
        self.current().denies(subject)
    }

    /// Called with the subjects that became denied at each change.
    pub fn on_newly_denied(&self, listener: impl Fn(NewlyDenied) + Send + Sync + 'static) {
        *lock(&self.listener) = Some(Box::new(listener));
    }

    /// Called with the number of entries at start and after each change.
    pub fn report_size(&self, gauge: impl Fn(usize) + Send + Sync + 'static) {
        gauge(self.current().len());
        *lock(&self.gauge) = Some(Box::new(gauge));
    }

    /// Puts `entries` in force and tells the listener who became denied.
    fn replace(&self, entries: Entries) {
        let old = {
            let mut slot = self
                .entries
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *slot, Arc::new(entries.clone()))
        };
        if let Some(gauge) = &*lock(&self.gauge) {
            gauge(entries.len());
        }
        let newly = if entries.everyone && !old.everyone {
            Some(NewlyDenied::Everyone)
        } else {
            let mut added: Vec<String> = entries
                .subjects
                .difference(&old.subjects)
                .cloned()
                .collect();
            added.sort();
            (!added.is_empty()).then_some(NewlyDenied::Subjects(added))
        };
        if let Some(newly) = newly {
            match &newly {
                NewlyDenied::Everyone => {
                    tracing::warn!("deny list: vending is stopped for everyone (*)")
                }
                NewlyDenied::Subjects(s) => {
                    tracing::warn!(subjects = s.len(), "deny list: subjects denied")
                }
            }
            if let Some(listener) = &*lock(&self.listener) {
                listener(newly);
            }
        }
    }
}

fn read(path: &Path) -> Result<Entries, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (entries, warnings) = Entries::parse_reporting(&text);
    for warning in warnings {
        tracing::warn!("{SETTING}: {}", crate::text::escape_invisible(&warning));
    }
    Ok(entries)
}

/// The JSON string at the start of `line`, if nothing but a `#` comment follows it.
fn quoted(line: &str) -> Option<String> {
    let mut stream = serde_json::Deserializer::from_str(line).into_iter::<String>();
    let subject = stream.next()?.ok()?;
    let rest = line[stream.byte_offset()..].trim();
    (rest.is_empty() || rest.starts_with('#')).then_some(subject)
}

impl Reloadable for DenyList {
    fn name(&self) -> String {
        SETTING.into()
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.path.iter().cloned().collect()
    }

    fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let entries = read(path)?;
        tracing::info!(entries = entries.len(), "deny list read");
        self.replace(entries);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_the_star() {
        let (e, warnings) = Entries::parse_reporting(
            "\u{FEFF}*\n\"\\u00a0nbsp \" # quoted\n\" #hash\"\nzero\u{200B}width\n\"broken\n",
        );
        assert!(e.everyone, "a BOM does not hide the first line");
        assert!(e.subjects.contains("\u{a0}nbsp "));
        assert!(e.subjects.contains(" #hash"));
        assert!(e.subjects.contains("zero\u{200B}width"));
        assert_eq!(e.subjects.len(), 3, "{e:?}");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("line 4") && warnings[0].contains("\\u{200b}"));
        assert!(warnings[1].contains("line 5"));
        let e = Entries::parse("# ops list\nalice\n\n  bob smith  \ncarol # left\n#dave\n");
        assert_eq!(e.len(), 3);
        for s in ["alice", "bob smith", "carol"] {
            assert_eq!(e.denies(s), Some(Denial::Subject), "{s}");
        }
        assert_eq!(e.denies("dave"), None);
        assert_eq!(e.denies("carol # left"), None);
        let all = Entries::parse("*\nalice\n");
        assert_eq!(all.denies("anyone"), Some(Denial::Everyone));
        assert_eq!(all.denies("alice"), Some(Denial::Subject));
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn a_change_reports_who_became_denied() {
        let dir = std::env::temp_dir().join(format!("tv-deny-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deny");
        std::fs::write(&path, "alice\n").unwrap();
        let list = DenyList::load(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        list.on_newly_denied(move |n| sink.lock().unwrap().push(n));
        std::fs::write(&path, "alice\nbob\n").unwrap();
        list.reload().unwrap();
        std::fs::write(&path, "bob\n").unwrap();
        list.reload().unwrap();
        std::fs::write(&path, "*\n").unwrap();
        list.reload().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(list.reload().is_err(), "an unreadable file is refused");
        assert_eq!(
            list.denies("anyone"),
            Some(Denial::Everyone),
            "old list kept"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                NewlyDenied::Subjects(vec!["bob".into()]),
                NewlyDenied::Everyone
            ]
        );
        assert!(DenyList::load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
