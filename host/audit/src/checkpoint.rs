//! C2SP `tlog-checkpoint` (https://c2sp.org/tlog-checkpoint): the note text
//! `origin\nsize\nbase64(root)\n[extension lines\n]`, signed as a signed note
//! by the log key whose name is the origin.

use crate::hash::Hash;
use crate::note::{LogSigner, LogVerifier, NoteError};
use std::fmt;

/// An (unsigned) tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `kasbah.example/audit`; equal to the key name.
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Opaque extension lines (we write none; kept when parsing others').
    pub extensions: Vec<String>,
}

/// Why a checkpoint was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("checkpoint origin {origin:?} is not the log key's name {key_name:?}")]
    OriginMismatch { origin: String, key_name: String },
}

impl Checkpoint {
    pub fn new(origin: &str, size: u64, root: Hash) -> Self {
        Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// Parse checkpoint text (the note text, without signatures).
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed("text does not end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or(CheckpointError::Malformed("empty origin line"))?;
        let size = lines
            .next()
            .ok_or(CheckpointError::Malformed("no tree size line"))?;
        let canonical = size == "0" || (!size.starts_with('0') && !size.is_empty());
        if !canonical || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CheckpointError::Malformed(
                "tree size is not a decimal number without leading zeroes",
            ));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| CheckpointError::Malformed("tree size out of range"))?;
        let root = lines
            .next()
            .and_then(Hash::from_base64)
            .ok_or(CheckpointError::Malformed(
                "root hash is not base64 of 32 bytes",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(CheckpointError::Malformed("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The note text: origin, size, base64 root, extensions, each ending in a
    /// newline.
    pub fn text(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, self.root);
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Sign with the log key. The origin must be the key's name.
    pub fn sign(&self, signer: &LogSigner) -> Result<SignedCheckpoint, CheckpointError> {
        if self.origin != signer.name() {
            return Err(CheckpointError::OriginMismatch {
                origin: self.origin.clone(),
                key_name: signer.name().to_owned(),
            });
        }
        let note = signer.sign_note(&self.text())?;
        Ok(SignedCheckpoint {
            checkpoint: self.clone(),
            note,
        })
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @ {} ({})", self.origin, self.size, self.root)
    }
}

/// A checkpoint together with the signed note it was read from or written
/// as. Only [`open_checkpoint`] and [`Checkpoint::sign`] make one, so holding
/// one means its signature was checked (or made) by a known key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The signed note, as served to clients.
    pub note: String,
}

/// Verify `note` with the log key and parse the checkpoint it carries; its
/// origin must be the key's name.
pub fn open_checkpoint(
    verifier: &LogVerifier,
    note: &str,
) -> Result<SignedCheckpoint, CheckpointError> {
    let text = verifier.open(note)?;
    let checkpoint = Checkpoint::parse(text)?;
    if checkpoint.origin != verifier.name() {
        return Err(CheckpointError::OriginMismatch {
            origin: checkpoint.origin,
            key_name: verifier.name().to_owned(),
        });
    }
    Ok(SignedCheckpoint {
        checkpoint,
        note: note.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_body_parses() {
        // The example from the C2SP tlog-checkpoint spec.
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = Checkpoint::parse(text).expect("parse");
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20852163);
        assert_eq!(c.text(), text);
    }

    #[test]
    fn sign_open_round_trip_and_rejections() {
        let key = LogSigner::from_seed("kasbah.test/log", &[9; 32]).expect("key");
        let c = Checkpoint::new("kasbah.test/log", 0, Hash::empty());
        let signed = c.sign(&key).expect("sign");
        assert_eq!(
            signed.note.lines().take(3).collect::<Vec<_>>(),
            [
                "kasbah.test/log",
                "0",
                "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
            ]
        );
        let back = open_checkpoint(&key.verifier(), &signed.note).expect("open");
        assert_eq!(back.checkpoint, c);

        let other = LogSigner::from_seed("kasbah.test/other", &[9; 32]).expect("key");
        assert!(matches!(
            c.sign(&other),
            Err(CheckpointError::OriginMismatch { .. })
        ));
        for bad in [
            "o\n01\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
            "o\n-1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
            "o\n\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
            "o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF=\n",
            "\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
            "o\n1\n",
            "o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "o\n99999999999999999999999\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
