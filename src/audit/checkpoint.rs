//! Signed checkpoints of the chains' heads, in the C2SP tlog-checkpoint layout:
//!
//! ```text
//! token-vendor/audit/<chain id>      origin: one "log" per chain
//! <sequence>                         the chain's length ("tree size")
//! <base64 of the head's hash>        the chain's head ("root hash")
//! time <RFC 3339>                    extension line: when it was signed
//!
//! — <key name> <base64(key id ‖ Ed25519 signature)>
//! ```
//!
//! The chain is a hash chain, not a Merkle tree, so the third line is the last
//! event's (keyed) hash rather than a Merkle root; the note format and signature
//! are the standard ones, so any signed-note tool can check the signature. The
//! service writes a checkpoint to the database and to the `audit` log target every
//! few seconds while its chain grows, and at shutdown; `audit verify` checks the
//! database against them, and `audit verify --checkpoints FILE` against copies kept
//! elsewhere.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::keys::{NoteError, NoteSigner, NoteVerifier};

/// Origin line prefix; the chain id follows.
pub const ORIGIN_PREFIX: &str = "token-vendor/audit/";

/// A chain's head at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub chain_id: String,
    pub seq: i64,
    /// Hex, as stored in the chain.
    pub hash: String,
    pub time: OffsetDateTime,
}

fn bad(msg: impl Into<String>) -> NoteError {
    NoteError(msg.into())
}

impl Checkpoint {
    /// The note text that gets signed.
    pub fn body(&self) -> String {
        let hash = hex::decode(&self.hash)
            .map(|b| STANDARD.encode(b))
            .unwrap_or_default();
        format!(
            "{ORIGIN_PREFIX}{}\n{}\n{hash}\ntime {}\n",
            self.chain_id,
            self.seq,
            self.time.format(&Rfc3339).unwrap_or_default()
        )
    }

    /// The signed note.
    pub fn sign(&self, signer: &NoteSigner) -> String {
        signer.sign(&self.body())
    }

    /// The checkpoint in `note`, if `verifier`'s key signed it.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Self, NoteError> {
        Self::parse_body(verifier.open(note)?)
    }

    fn parse_body(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.lines();
        let chain_id = lines
            .next()
            .and_then(|l| l.strip_prefix(ORIGIN_PREFIX))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad(format!("the origin line is not {ORIGIN_PREFIX}<chain id>")))?;
        let seq = lines
            .next()
            .and_then(|l| l.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("the second line is not a chain length"))?;
        let hash = lines
            .next()
            .and_then(|l| STANDARD.decode(l).ok())
            .filter(|b| b.len() == 32)
            .map(hex::encode)
            .ok_or_else(|| bad("the third line is not a base64 SHA-256 hash"))?;
        let time = lines
            .find_map(|l| l.strip_prefix("time "))
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .ok_or_else(|| bad("no time line"))?;
        Ok(Self {
            chain_id: chain_id.to_owned(),
            seq,
            hash,
            time,
        })
    }
}

/// The signed notes in a file of checkpoints: raw notes one after another, or log
/// lines (JSON) whose `checkpoint` field holds one, or both mixed. Other lines are
/// skipped.
pub fn notes_in(text: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let mut current = String::new();
    let mut in_signatures = false;
    let flush = |current: &mut String, notes: &mut Vec<String>| {
        if current.contains("\n\n\u{2014} ") {
            notes.push(std::mem::take(current));
        } else {
            current.clear();
        }
    };
    for line in text.lines() {
        if line.trim_start().starts_with('{') {
            flush(&mut current, &mut notes);
            in_signatures = false;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(note) = v.get("checkpoint").and_then(|c| c.as_str()) {
                    notes.push(note.to_owned());
                }
            }
            continue;
        }
        if in_signatures && !line.starts_with('\u{2014}') {
            flush(&mut current, &mut notes);
            in_signatures = false;
        }
        if line.is_empty() {
            if current.is_empty() {
                continue;
            }
            in_signatures = true;
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, &mut notes);
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(seq: i64) -> Checkpoint {
        Checkpoint {
            chain_id: "c1".into(),
            seq,
            hash: "ab".repeat(32),
            time: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        }
    }

    #[test]
    fn a_checkpoint_signs_and_opens() {
        let signer = NoteSigner::generate("test-audit").unwrap();
        let note = checkpoint(7).sign(&signer);
        assert!(note.starts_with("token-vendor/audit/c1\n7\n"), "{note}");
        assert_eq!(
            Checkpoint::open(&note, &signer.verifier()),
            Ok(checkpoint(7))
        );
        let forged = note.replace("\n7\n", "\n8\n");
        assert!(Checkpoint::open(&forged, &signer.verifier()).is_err());
    }

    #[test]
    fn notes_are_found_in_raw_files_and_log_lines() {
        let signer = NoteSigner::generate("test-audit").unwrap();
        let a = checkpoint(1).sign(&signer);
        let b = checkpoint(2).sign(&signer);
        let c = checkpoint(3).sign(&signer);
        let log = serde_json::json!({"target": "audit", "checkpoint": c}).to_string();
        let other = r#"{"target":"audit","message":"audit event"}"#;
        let file = format!("{a}\n{b}{other}\n{log}\n");
        assert_eq!(notes_in(&file), vec![a, b, c]);
    }
}
