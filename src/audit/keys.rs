//! Keys that make the audit log verifiable without trusting the database.
//!
//! - [`ChainKey`]: the chain's hashes are HMAC-SHA256 with a key derived from
//!   `AUDIT_HMAC_KEY`, which the database never holds, so whoever can only write the
//!   database cannot recompute a chain after removing or changing an event. Each chain
//!   records the id of the key it was written with, so old chains stay verifiable
//!   after a rotation (give `audit verify` the previous key too).
//! - [`NoteSigner`] / [`NoteVerifier`]: Ed25519 keys in the C2SP signed-note format
//!   (`PRIVATE+KEY+<name>+<id>+<base64>` and `<name>+<id>+<base64>`, as Go's
//!   `golang.org/x/mod/sumdb/note` writes them), which sign chain checkpoints.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;

/// The key a chain's hashes are keyed with, and its public id.
#[derive(Clone)]
pub struct ChainKey {
    id: String,
    mac: Hmac<Sha256>,
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainKey({})", self.id)
    }
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"))
}

impl ChainKey {
    /// The chain key derived from `AUDIT_HMAC_KEY` (a different key from the one that
    /// fingerprints tokens, though both come from the same secret).
    pub fn derive(secret: &SecretString) -> Self {
        let mut m = hmac(secret.expose_secret().as_bytes());
        m.update(b"token-vendor audit chain key v1");
        let key = m.finalize().into_bytes();
        let mut idm = hmac(&key);
        idm.update(b"key id");
        let id = hex::encode(&idm.finalize().into_bytes()[..8]);
        Self {
            id,
            mac: hmac(&key),
        }
    }

    /// A public name for the key: it tells keys apart without revealing them.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `hex(hmac(prev_hash "\n" canonical))`.
    pub fn hash(&self, prev_hash: &str, canonical: &str) -> String {
        self.hash_bytes(prev_hash, canonical.as_bytes())
    }

    /// [`Self::hash`] of a canonical form held as bytes.
    pub(crate) fn hash_bytes(&self, prev_hash: &str, canonical: &[u8]) -> String {
        let mut m = self.mac.clone();
        m.update(prev_hash.as_bytes());
        m.update(b"\n");
        m.update(canonical);
        hex::encode(m.finalize().into_bytes())
    }

    /// The tag that proves a prune anchor was set by someone holding the key.
    pub fn anchor_mac(&self, chain_id: &str, anchor_seq: i64, anchor_hash: &str) -> String {
        self.hash(
            "token-vendor-audit-anchor-v1",
            &format!("{chain_id}\n{anchor_seq}\n{anchor_hash}"),
        )
    }
}

/// The chain keys `audit verify` knows, by id.
#[derive(Debug, Clone, Default)]
pub struct Keyring(BTreeMap<String, ChainKey>);

impl Keyring {
    pub fn new(keys: impl IntoIterator<Item = ChainKey>) -> Self {
        Self(keys.into_iter().map(|k| (k.id.clone(), k)).collect())
    }

    pub fn get(&self, id: &str) -> Option<&ChainKey> {
        self.0.get(id)
    }
}

/// Why a key or a signed note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoteError(pub String);

fn bad(msg: impl Into<String>) -> NoteError {
    NoteError(msg.into())
}

/// The 4-byte key id of signed notes: `sha256(name "\n" 0x01 pubkey)[..4]`.
fn note_key_id(name: &str, public: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(bad("a key name must be non-empty, without spaces or '+'"));
    }
    Ok(())
}

/// Splits `<name>+<hex id>+<base64(0x01 ‖ 32 bytes)>`.
fn split_key(text: &str) -> Result<(&str, u32, [u8; 32]), NoteError> {
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected <name>+<id>+<key>"));
    };
    check_name(name)?;
    let id = u32::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 8)
        .ok_or_else(|| bad("the key id must be 8 hex digits"))?;
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| bad("the key is not base64"))?;
    match raw.split_first() {
        Some((&ED25519, rest)) if rest.len() == 32 => {
            let mut key = [0u8; 32];
            key.copy_from_slice(rest);
            Ok((name, id, key))
        }
        _ => Err(bad("not an Ed25519 key")),
    }
}

/// Signs notes (`AUDIT_SIGNING_KEY`).
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl NoteSigner {
    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        check_name(name)?;
        let seed: [u8; 32] = rand::random();
        let key = SigningKey::from_bytes(&seed);
        Ok(Self {
            name: name.to_owned(),
            id: note_key_id(name, &key.verifying_key()),
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<id>+<base64>`.
    pub fn parse(text: &SecretString) -> Result<Self, NoteError> {
        let rest = text
            .expose_secret()
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| {
                bad("expected PRIVATE+KEY+<name>+<id>+<key> (`token-vendor audit keygen` makes one)")
            })?;
        let (name, id, seed) = split_key(rest)?;
        let key = SigningKey::from_bytes(&seed);
        if note_key_id(name, &key.verifying_key()) != id {
            return Err(bad("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// `PRIVATE+KEY+<name>+<id>+<base64>`: the form [`NoteSigner::parse`] reads.
    pub fn private_text(&self) -> SecretString {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        SecretString::from(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            STANDARD.encode(raw)
        ))
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// `text` (newline-terminated) followed by a blank line and its signature line.
    pub fn sign(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut raw = self.id.to_be_bytes().to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", self.name, STANDARD.encode(raw))
    }
}

/// Checks notes signed by one key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<id>+<base64>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, raw) = split_key(text)?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| bad("not an Ed25519 public key"))?;
        if note_key_id(name, &key) != id {
            return Err(bad("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// `<name>+<id>+<base64>`, to hand to whoever verifies.
    pub fn text(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, STANDARD.encode(raw))
    }

    /// The text of `note` if this key signed it. Signatures of other keys are ignored,
    /// as the format asks; a bad signature by this key refuses the note.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("a signed note has its text, a blank line and signatures"))?;
        let text = &note[..=split];
        let mut signed = false;
        let mut others = Vec::new();
        for line in note[split + 2..].lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(bad("a signature line starts with an em dash"));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(bad("a signature line has a name and a signature"));
            };
            let raw = STANDARD
                .decode(b64)
                .map_err(|_| bad("a signature is not base64"))?;
            if raw.len() < 4 {
                return Err(bad("a signature is too short"));
            }
            let id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if name != self.name || id != self.id {
                others.push(format!("{name}+{id:08x}"));
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&raw[4..])
                .map_err(|_| bad("not an Ed25519 signature"))?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| bad(format!("the signature of {} does not verify", self.name)))?;
            signed = true;
        }
        if signed {
            Ok(text)
        } else {
            // Name the keys that did sign: a verifier key for another signing key is a
            // set-up mistake the operator can then see at once.
            Err(bad(format!(
                "not signed by {}+{:08x} (signed by {}): the verifier key is not the \
                 signing key's, or the checkpoint was replaced",
                self.name,
                self.id,
                if others.is_empty() {
                    "no key".to_owned()
                } else {
                    others.join(", ")
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_keys_are_derived_and_told_apart_by_id() {
        let a = ChainKey::derive(&SecretString::from("fake-key-a"));
        let a2 = ChainKey::derive(&SecretString::from("fake-key-a"));
        let b = ChainKey::derive(&SecretString::from("fake-key-b"));
        assert_eq!(a.id(), a2.id());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
        assert_eq!(a.hash("p", "c"), a2.hash("p", "c"));
        assert_ne!(a.hash("p", "c"), b.hash("p", "c"));
    }

    /// The example verifier key and note of Go's `golang.org/x/mod/sumdb/note`
    /// documentation: notes signed there open here.
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn notes_of_the_reference_implementation_open() {
        let verifier = NoteVerifier::parse(GO_VKEY).unwrap();
        assert_eq!(verifier.text(), GO_VKEY);
        let text = "If you think cryptography is the answer to your problem,\n\
            then you don't know what your problem is.\n";
        assert_eq!(verifier.open(GO_NOTE), Ok(text));
        assert!(verifier.open(&GO_NOTE.replace("think", "thing")).is_err());
    }

    #[test]
    fn a_changed_note_or_another_key_is_refused() {
        let signer = NoteSigner::generate("test-audit").unwrap();
        let note = signer.sign("hello\n");
        let verifier = NoteVerifier::parse(&signer.verifier().text()).unwrap();
        assert_eq!(verifier.open(&note), Ok("hello\n"));
        assert!(verifier.open(&note.replace("hello", "hullo")).is_err());
        let other = NoteSigner::generate("test-audit").unwrap().verifier();
        assert!(other.open(&note).is_err());
        let reparsed = NoteSigner::parse(&signer.private_text()).unwrap();
        assert_eq!(reparsed.sign("x\n"), signer.sign("x\n"));
    }
}
