//! C2SP `tlog-cosignature` (https://c2sp.org/tlog-cosignature), the
//! timestamped Ed25519 type (signature type `0x04`, `cosignature/v1`).
//!
//! * key ID = `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]`;
//! * vkey = `name+hex(key ID)+base64(0x04 ‖ public key)`;
//! * signature line = `— name base64(key ID ‖ u64 BE timestamp ‖ Ed25519
//!   signature)`, the signature over `cosignature/v1\ntime <t>\n` followed by
//!   the checkpoint's note text (final newline included);
//! * private key file = `PRIVATE+KEY+name+hex(key ID)+base64(0x04 ‖ seed)`,
//!   the layout of the log key's file with this type byte.
//!
//! A cosignature says: at time `t`, the consistent tree head of the
//! largest size this witness has seen for the origin has this root.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use zeroize::Zeroizing;

use crate::note::{
    KeyError, NoteError, VkeyWords, is_valid_key_name, parse_note, parse_private_key, parse_vkey,
    private_key_string, write_vkey,
};

/// Signature type byte of timestamped Ed25519 cosignatures.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

const SIG_PREFIX: &str = "\u{2014} ";

/// `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]` as a big-endian u32.
pub fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, ALG_COSIGNATURE_V1]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The message a cosignature signs.
fn signed_message(checkpoint_text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}")
}

/// A witness's signing key.
pub struct CosignerKey {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for CosignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CosignerKey")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl CosignerKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| KeyError::Random(e.to_string()))?;
        Self::from_seed(name, &seed)
    }

    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let key = SigningKey::from_bytes(seed);
        let key_id = cosigner_key_id(name, key.verifying_key().as_bytes());
        Ok(CosignerKey {
            name: name.to_owned(),
            key,
            key_id,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> CosignerVerifier {
        CosignerVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// `PRIVATE+KEY+name+hexid+base64(0x04 ‖ seed)`. Secret.
    pub fn to_private_key_string(&self) -> Zeroizing<String> {
        Zeroizing::new(private_key_string(
            &self.name,
            self.key_id,
            ALG_COSIGNATURE_V1,
            self.key.as_bytes(),
        ))
    }

    pub fn from_private_key_string(s: &str) -> Result<Self, KeyError> {
        let words = VkeyWords {
            whole: "witness key",
            shape: "witness key (expected PRIVATE+KEY+...)",
            base64: "witness key base64",
            length: "witness key length",
        };
        let (name, id, seed) = parse_private_key(s, ALG_COSIGNATURE_V1, &words)?;
        let k = Self::from_seed(name, &seed)?;
        if k.key_id != id {
            return Err(KeyError::KeyIdMismatch {
                stated: id,
                computed: k.key_id,
            });
        }
        Ok(k)
    }

    /// Write to a new file, mode 0600 (never overwrites).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        crate::note::write_secret(path, &self.to_private_key_string())
    }

    /// Read a key file written by [`Self::save`] (refused if group or
    /// others can read it).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_private_key_string(&crate::note::read_secret(path)?)
    }

    /// The cosignature line (with its final newline) on a checkpoint whose
    /// note text (without signatures) is `checkpoint_text`, at `timestamp`
    /// (POSIX seconds, at most 2^63 - 1).
    pub fn cosign(&self, checkpoint_text: &str, timestamp: u64) -> String {
        let sig: Signature = self
            .key
            .sign(signed_message(checkpoint_text, timestamp).as_bytes());
        let mut raw = Vec::with_capacity(4 + 8 + 64);
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(raw))
    }
}

/// A witness's public key as clients pin it (a vkey of type 0x04).
#[derive(Clone, PartialEq, Eq)]
pub struct CosignerVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

/// Why a cosignature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("no cosignature by witness {0}")]
    Missing(String),
    #[error("the cosignature by witness {0} does not verify")]
    Bad(String),
    #[error(
        "{found} valid witness cosignatures, {threshold} required (witnesses: {})",
        problems.join("; ")
    )]
    BelowThreshold {
        found: usize,
        threshold: usize,
        problems: Vec<String>,
    },
}

impl CosignerVerifier {
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| KeyError::BadPublicKey)?;
        Ok(CosignerVerifier {
            name: name.to_owned(),
            key_id: cosigner_key_id(name, public_key),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Verify this witness's cosignature on `note` (a signed checkpoint,
    /// possibly with other signatures, which are ignored) and return its
    /// timestamp. Per signed-note, a line with this key's name and ID must
    /// verify; lines of other keys do not matter.
    pub fn verify(&self, note: &str) -> Result<u64, CosignatureError> {
        let parsed = parse_note(note)?;
        let mut found = None;
        for sig in &parsed.signatures {
            if sig.name != self.name || sig.key_id != self.key_id {
                continue;
            }
            let bad = || CosignatureError::Bad(self.to_string());
            if sig.signature.len() != 8 + 64 {
                return Err(bad());
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&sig.signature[..8]);
            let timestamp = u64::from_be_bytes(ts);
            if timestamp > i64::MAX as u64 {
                return Err(bad());
            }
            let mut raw = [0u8; 64];
            raw.copy_from_slice(&sig.signature[8..]);
            let msg = signed_message(parsed.text, timestamp);
            self.key
                .verify_strict(msg.as_bytes(), &Signature::from_bytes(&raw))
                .map_err(|_| bad())?;
            found = Some(timestamp);
        }
        found.ok_or_else(|| CosignatureError::Missing(self.to_string()))
    }
}

/// Demand `threshold` valid cosignatures on `note` from distinct witnesses
/// among `witnesses`. Returns the names of those that cosigned.
pub fn require_cosignatures(
    note: &str,
    witnesses: &[CosignerVerifier],
    threshold: usize,
) -> Result<Vec<String>, CosignatureError> {
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for w in witnesses {
        // The same key listed twice counts once.
        if !seen.insert((w.name.clone(), w.key_id)) {
            continue;
        }
        match w.verify(note) {
            Ok(_) => ok.push(w.name.clone()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if ok.len() < threshold {
        return Err(CosignatureError::BelowThreshold {
            found: ok.len(),
            threshold,
            problems,
        });
    }
    Ok(ok)
}

impl fmt::Display for CosignerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_vkey(f, &self.name, self.key_id, ALG_COSIGNATURE_V1, &self.key)
    }
}

impl fmt::Debug for CosignerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CosignerVerifier({self})")
    }
}

impl FromStr for CosignerVerifier {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let words = VkeyWords {
            whole: "witness key",
            shape: "witness key (expected name+keyid+key)",
            base64: "witness key base64",
            length: "witness key length",
        };
        let (name, id, pk) = parse_vkey(s, ALG_COSIGNATURE_V1, &words)?;
        let v = CosignerVerifier::new(name, &pk)?;
        if v.key_id != id {
            return Err(KeyError::KeyIdMismatch {
                stated: id,
                computed: v.key_id,
            });
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Checkpoint, Hash, LogSigner};

    #[test]
    fn spec_example_line_has_the_timestamp_layout() {
        // tlog-cosignature's example: key ID ‖ timestamp ‖ signature, the
        // timestamp being the example's `time 1679315147`.
        let raw = STANDARD
            .decode(
                "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqh\
                 f5nNo0xUe+mbIUBkBIfZ+qnA==",
            )
            .expect("base64");
        assert_eq!(raw.len(), 4 + 8 + 64);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[4..12]);
        assert_eq!(u64::from_be_bytes(ts), 1_679_315_147);
    }

    #[test]
    fn cosign_verify_threshold_and_tampering() {
        let log = LogSigner::from_seed("kasbah.test/log", &[1; 32]).expect("log");
        let cp = Checkpoint::new("kasbah.test/log", 5, Hash::leaf(b"r"))
            .sign(&log)
            .expect("sign");
        let w1 = CosignerKey::from_seed("w1.example", &[2; 32]).expect("w1");
        let w2 = CosignerKey::from_seed("w2.example", &[3; 32]).expect("w2");
        let text = cp.checkpoint.text();
        let note = format!(
            "{}{}{}",
            cp.note,
            w1.cosign(&text, 1_700_000_000),
            w2.cosign(&text, 7)
        );
        let (v1, v2) = (w1.verifier(), w2.verifier());
        assert_eq!(v1.verify(&note), Ok(1_700_000_000));
        assert_eq!(v2.verify(&note), Ok(7));
        // The log's own signature still verifies next to the cosignatures.
        assert!(crate::open_checkpoint(&log.verifier(), &note).is_ok());
        // vkeys round-trip and carry type 0x04 (not the log key type).
        let parsed: CosignerVerifier = v1.to_string().parse().expect("vkey");
        assert_eq!(parsed, v1);
        assert!(
            log.verifier()
                .to_string()
                .parse::<CosignerVerifier>()
                .is_err()
        );
        assert!(v1.to_string().parse::<crate::LogVerifier>().is_err());
        assert_ne!(
            v1.key_id(),
            crate::note::key_id("w1.example", &v1.key.to_bytes())
        );

        assert_eq!(
            require_cosignatures(&note, &[v1.clone(), v2.clone()], 2).expect("2 of 2"),
            ["w1.example", "w2.example"]
        );
        let only_log = &cp.note;
        assert!(matches!(
            require_cosignatures(only_log, &[v1.clone(), v2.clone()], 1),
            Err(CosignatureError::BelowThreshold { found: 0, .. })
        ));
        // The same witness listed twice counts once.
        let one = format!("{}{}", cp.note, w1.cosign(&text, 1));
        assert!(require_cosignatures(&one, &[v1.clone(), v1.clone()], 2).is_err());
        // A cosignature on another tree does not carry over.
        let other = Checkpoint::new("kasbah.test/log", 6, Hash::leaf(b"r"))
            .sign(&log)
            .expect("sign");
        let moved = format!("{}{}", other.note, w1.cosign(&text, 1));
        assert!(matches!(v1.verify(&moved), Err(CosignatureError::Bad(_))));
        // Altering the timestamp breaks it.
        let line = w1.cosign(&text, 1);
        let b64 = line.trim_end().rsplit(' ').next().expect("sig");
        let mut raw = STANDARD.decode(b64).expect("b64");
        raw[11] ^= 1;
        let forged = format!("{}\u{2014} w1.example {}\n", cp.note, STANDARD.encode(&raw));
        assert!(matches!(v1.verify(&forged), Err(CosignatureError::Bad(_))));
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("witness.key");
        let k = CosignerKey::generate("witness.example/w1").expect("generate");
        k.save(&path).expect("save");
        let back = CosignerKey::load(&path).expect("load");
        assert_eq!(back.verifier(), k.verifier());
        assert!(k.save(&path).is_err(), "never overwrites");
        let log_key = LogSigner::generate("x")
            .expect("log key")
            .to_private_key_string();
        assert!(matches!(
            CosignerKey::from_private_key_string(&log_key),
            Err(KeyError::UnsupportedAlgorithm(1))
        ));
    }
}
