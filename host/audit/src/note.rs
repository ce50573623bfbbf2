//! C2SP `signed-note` (https://c2sp.org/signed-note) with Ed25519 keys.
//!
//! * key ID = first 4 bytes (big-endian u32) of
//!   `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`;
//! * verifier key (vkey) = `name+hex(key ID)+base64(0x01 ‖ public key)`;
//! * signature line = `— name base64(key ID ‖ Ed25519 signature of the text)`;
//! * private key file = `PRIVATE+KEY+name+hex(key ID)+base64(0x01 ‖ seed)`,
//!   the format of Go's `golang.org/x/mod/sumdb/note`, so keys interoperate
//!   with the existing tooling.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use zeroize::Zeroizing;

/// Signature type byte of Ed25519 in the signed-note spec.
pub const ALG_ED25519: u8 = 0x01;

/// Most signature lines read from one note (the spec asks for at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Largest note accepted, in bytes.
pub const MAX_NOTE_LEN: usize = 1 << 20;

const SIG_PREFIX: &str = "\u{2014} ";

/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]` as a big-endian u32.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Key names are non-empty and contain no Unicode space and no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// Problems with keys and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key name {0:?}: must be non-empty, without spaces or '+'")]
    BadName(String),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unsupported signature type {0:#04x} (only Ed25519, 0x01)")]
    UnsupportedAlgorithm(u8),
    #[error("key ID {stated:08x} does not match the key (computed {computed:08x})")]
    KeyIdMismatch { stated: u32, computed: u32 },
    #[error("invalid Ed25519 public key")]
    BadPublicKey,
    #[error("key file {path} is readable by group or others (mode {mode:o}); run chmod 600 on it")]
    InsecurePermissions { path: String, mode: u32 },
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("system random number generator failed: {0}")]
    Random(String),
}

/// The log's signing key.
pub struct LogSigner {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl LogSigner {
    /// A fresh key from the operating system's random number generator.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| KeyError::Random(e.to_string()))?;
        Self::from_seed(name, &seed)
    }

    /// The key with this 32-byte Ed25519 seed (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(name, key.verifying_key().as_bytes());
        Ok(LogSigner {
            name: name.to_owned(),
            key,
            key_id,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The public half, to hand to clients.
    pub fn verifier(&self) -> LogVerifier {
        LogVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// `PRIVATE+KEY+name+hexid+base64(0x01 ‖ seed)`. Secret: handle with care.
    pub fn to_private_key_string(&self) -> String {
        private_key_string(&self.name, self.key_id, ALG_ED25519, self.key.as_bytes())
    }

    /// Parse the private key string format (see [`Self::to_private_key_string`]).
    pub fn from_private_key_string(s: &str) -> Result<Self, KeyError> {
        let words = VkeyWords {
            whole: "private key",
            shape: "private key (expected PRIVATE+KEY+...)",
            base64: "private key base64",
            length: "private key length",
        };
        let (name, id, seed) = parse_private_key(s, ALG_ED25519, &words)?;
        let signer = Self::from_seed(name, &seed)?;
        if signer.key_id != id {
            return Err(KeyError::KeyIdMismatch {
                stated: id,
                computed: signer.key_id,
            });
        }
        Ok(signer)
    }

    /// Write the private key to a new file readable only by its owner
    /// (mode 0600). Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_secret(path, &Zeroizing::new(self.to_private_key_string()))
    }

    /// Read a key written by [`Self::save`]. On Unix, refuses a file that
    /// group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_private_key_string(&read_secret(path)?)
    }

    /// Sign `text` (which must end in a newline and be valid note text) and
    /// return the whole signed note.
    pub fn sign_note(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig: Signature = self.key.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(4 + 64);
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        let note = format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(raw)
        );
        if note.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLarge);
        }
        Ok(note)
    }
}

/// Write a private key string to a new file readable only by its owner
/// (mode 0600), with a final newline. Refuses to overwrite a file.
pub(crate) fn write_secret(path: &Path, secret: &str) -> Result<(), KeyError> {
    use std::io::Write as _;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    let mut text = Zeroizing::new(secret.to_owned());
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)
}

/// Read a private key file; on Unix, refuse one that group or others can
/// read.
pub(crate) fn read_secret(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.display().to_string(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(Zeroizing::new(std::fs::read_to_string(path).map_err(io)?))
}

/// How errors name a kind of verifier key (`"verifier key"`, `"witness
/// key"`): the whole key, its base64, its length.
pub(crate) struct VkeyWords {
    pub whole: &'static str,
    pub shape: &'static str,
    pub base64: &'static str,
    pub length: &'static str,
}

/// Write a signed-note verifier key: `name+hexid+base64(alg ‖ public key)`.
pub(crate) fn write_vkey(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    key_id: u32,
    alg: u8,
    key: &VerifyingKey,
) -> fmt::Result {
    let mut raw = [0u8; 33];
    raw[0] = alg;
    raw[1..].copy_from_slice(key.as_bytes());
    write!(f, "{name}+{key_id:08x}+{}", STANDARD.encode(raw))
}

/// Read a signed-note verifier key of algorithm `alg`: `(name, stated key
/// id, public key)`; the caller checks the key id against the key.
pub(crate) fn parse_vkey<'a>(
    s: &'a str,
    alg: u8,
    words: &VkeyWords,
) -> Result<(&'a str, u32, [u8; 32]), KeyError> {
    let (name, id, b64) = split_key(s.trim(), words.shape)?;
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| KeyError::Malformed(words.base64))?;
    match raw.first() {
        Some(&a) if a == alg => {}
        Some(&a) => return Err(KeyError::UnsupportedAlgorithm(a)),
        None => return Err(KeyError::Malformed(words.whole)),
    }
    let pk = <[u8; 32]>::try_from(&raw[1..]).map_err(|_| KeyError::Malformed(words.length))?;
    Ok((name, id, pk))
}

/// `PRIVATE+KEY+name+hexid+base64(alg ‖ seed)`: a signed-note private key.
pub(crate) fn private_key_string(name: &str, key_id: u32, alg: u8, seed: &[u8; 32]) -> String {
    let mut raw = Zeroizing::new([0u8; 33]);
    raw[0] = alg;
    raw[1..].copy_from_slice(seed);
    let b64 = Zeroizing::new(STANDARD.encode(*raw));
    format!("PRIVATE+KEY+{name}+{key_id:08x}+{}", *b64)
}

/// Read a private key string of algorithm `alg`: `(name, stated key id,
/// seed)`; the caller checks the key id against the key.
pub(crate) fn parse_private_key<'a>(
    s: &'a str,
    alg: u8,
    words: &VkeyWords,
) -> Result<(&'a str, u32, Zeroizing<[u8; 32]>), KeyError> {
    let rest = s
        .trim_end_matches('\n')
        .strip_prefix("PRIVATE+KEY+")
        .ok_or(KeyError::Malformed(words.shape))?;
    let (name, id, b64) = split_key(rest, words.whole)?;
    let raw = Zeroizing::new(
        STANDARD
            .decode(b64)
            .map_err(|_| KeyError::Malformed(words.base64))?,
    );
    if raw.len() != 33 {
        return Err(KeyError::Malformed(words.length));
    }
    if raw[0] != alg {
        return Err(KeyError::UnsupportedAlgorithm(raw[0]));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&raw[1..]);
    Ok((name, id, seed))
}

pub(crate) fn split_key<'a>(
    s: &'a str,
    what: &'static str,
) -> Result<(&'a str, u32, &'a str), KeyError> {
    // name+hexid+base64; base64 may itself contain '+', the name may not.
    let mut parts = s.splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(KeyError::Malformed(what));
    };
    if !is_valid_key_name(name) {
        return Err(KeyError::BadName(name.to_owned()));
    }
    if id.len() != 8 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(KeyError::Malformed(
            "key ID (expected 8 lowercase hex digits)",
        ));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| KeyError::Malformed("key ID"))?;
    Ok((name, id, b64))
}

/// The log's public key, as clients configure it: a C2SP vkey string.
#[derive(Clone, PartialEq, Eq)]
pub struct LogVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl LogVerifier {
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| KeyError::BadPublicKey)?;
        Ok(LogVerifier {
            name: name.to_owned(),
            key_id: key_id(name, public_key),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Check the note's signature by this key and return its text.
    ///
    /// Per the spec, signature lines from other keys are ignored; a line with
    /// this key's name and ID must verify, or the whole note is rejected.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let parsed = parse_note(note)?;
        let mut other_ids = Vec::new();
        for sig in &parsed.signatures {
            if sig.name != self.name {
                continue;
            }
            if sig.key_id != self.key_id {
                other_ids.push(sig.key_id);
                continue;
            }
            let Ok(bytes) = <[u8; 64]>::try_from(sig.signature.as_slice()) else {
                return Err(NoteError::BadSignature);
            };
            let signature = Signature::from_bytes(&bytes);
            return match self.key.verify_strict(parsed.text.as_bytes(), &signature) {
                Ok(()) => Ok(parsed.text),
                Err(_) => Err(NoteError::BadSignature),
            };
        }
        if other_ids.is_empty() {
            Err(NoteError::NotSignedBy {
                name: self.name.clone(),
                signers: parsed
                    .signatures
                    .iter()
                    .map(|s| format!("{}+{:08x}", s.name, s.key_id))
                    .collect(),
            })
        } else {
            Err(NoteError::WrongKey {
                name: self.name.clone(),
                trusted: self.key_id,
                found: other_ids,
            })
        }
    }
}

impl fmt::Display for LogVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_vkey(f, &self.name, self.key_id, ALG_ED25519, &self.key)
    }
}

impl fmt::Debug for LogVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogVerifier({self})")
    }
}

impl FromStr for LogVerifier {
    type Err = KeyError;
    /// Parse a vkey `name+hexid+base64(0x01 ‖ public key)`.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let words = VkeyWords {
            whole: "verifier key",
            shape: "verifier key (expected name+keyid+key)",
            base64: "verifier key base64",
            length: "verifier key length",
        };
        let (name, id, pk) = parse_vkey(s, ALG_ED25519, &words)?;
        let v = LogVerifier::new(name, &pk)?;
        if v.key_id != id {
            return Err(KeyError::KeyIdMismatch {
                stated: id,
                computed: v.key_id,
            });
        }
        Ok(v)
    }
}

/// Why a note was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    #[error("signed note is larger than {MAX_NOTE_LEN} bytes")]
    TooLarge,
    #[error("signed note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    #[error("bad signature: the note was altered or not signed by the trusted key")]
    BadSignature,
    #[error(
        "signed by a different key named {name}: trusted key ID {trusted:08x}, note has {}",
        found.iter().map(|id| format!("{id:08x}")).collect::<Vec<_>>().join(", ")
    )]
    WrongKey {
        name: String,
        trusted: u32,
        found: Vec<u32>,
    },
    #[error("not signed by {name} (signers: {})", if signers.is_empty() { "none".to_owned() } else { signers.join(", ") })]
    NotSignedBy { name: String, signers: Vec<String> },
}

/// One signature line, unverified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    pub signature: Vec<u8>,
}

/// A syntactically valid note whose signatures are not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedNote<'a> {
    /// The signed text, final newline included.
    pub text: &'a str,
    pub signatures: Vec<NoteSignature>,
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.len() > MAX_NOTE_LEN {
        return Err(NoteError::TooLarge);
    }
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text does not end in a newline"));
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character in note"));
    }
    Ok(())
}

/// Split a note into text and signature lines (no verification).
pub fn parse_note(note: &str) -> Result<ParsedNote<'_>, NoteError> {
    if note.len() > MAX_NOTE_LEN {
        return Err(NoteError::TooLarge);
    }
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character in note"));
    }
    // The text is separated from the signatures by the last empty line.
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let text = &note[..split + 1];
    let sigs = &note[split + 2..];
    if !sigs.ends_with('\n') {
        return Err(NoteError::Malformed(
            "signature block does not end in a newline",
        ));
    }
    let mut signatures = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        if signatures.len() == MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed(
            "signature line does not start with an em dash",
        ))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("signature line has no signature"))?;
        if !is_valid_key_name(name) {
            return Err(NoteError::Malformed("invalid key name in signature line"));
        }
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("signature too short"));
        }
        signatures.push(NoteSignature {
            name: name.to_owned(),
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            signature: raw[4..].to_vec(),
        });
    }
    if signatures.is_empty() {
        return Err(NoteError::Malformed("no signature lines"));
    }
    Ok(ParsedNote { text, signatures })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the C2SP signed-note spec ("Verifier keys" → "Example"),
    // https://github.com/C2SP/C2SP/blob/5ba5ee830903e91240fc6f9f3a7a9293d49e69c9/signed-note.md
    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    // The example of golang.org/x/mod/sumdb/note (package documentation):
    // a private key, its vkey, and the exact note Go's Sign produces.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn spec_example_verifies() {
        let v: LogVerifier = SPEC_VKEY.parse().expect("vkey");
        assert_eq!(v.key_id(), 0x530d903a);
        assert_eq!(v.to_string(), SPEC_VKEY);
        assert_eq!(v.open(SPEC_NOTE), Ok("This is an example message.\n"));
        let tampered = SPEC_NOTE.replace("example message", "exemple message");
        assert_eq!(v.open(&tampered), Err(NoteError::BadSignature));
    }

    #[test]
    fn go_reference_key_signs_byte_for_byte() {
        let s = LogSigner::from_private_key_string(GO_SKEY).expect("skey");
        assert_eq!(s.key_id(), 0xc74f20a3);
        assert_eq!(s.to_private_key_string(), GO_SKEY);
        assert_eq!(s.verifier().to_string(), GO_VKEY);
        assert_eq!(s.sign_note(GO_TEXT).expect("sign"), GO_NOTE);
        let v: LogVerifier = GO_VKEY.parse().expect("vkey");
        assert_eq!(v.open(GO_NOTE), Ok(GO_TEXT));
    }

    #[test]
    fn unknown_and_wrong_keys_are_told_apart() {
        let spec: LogVerifier = SPEC_VKEY.parse().expect("vkey");
        match spec.open(GO_NOTE) {
            Err(NoteError::NotSignedBy { name, signers }) => {
                assert_eq!(name, "example.com/foo");
                assert_eq!(signers, vec!["PeterNeumann+c74f20a3".to_owned()]);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Same name, other key.
        let impostor = LogSigner::from_seed("PeterNeumann", &[7; 32]).expect("key");
        let note = impostor.sign_note(GO_TEXT).expect("sign");
        let go: LogVerifier = GO_VKEY.parse().expect("vkey");
        assert!(matches!(
            go.open(&note),
            Err(NoteError::WrongKey {
                trusted: 0xc74f20a3,
                ..
            })
        ));
        // A note carrying both signatures verifies under either key: other
        // keys' lines are ignored.
        let both = format!("{GO_NOTE}{}", note.rsplit_once("\n\n").expect("sig").1);
        assert_eq!(go.open(&both), Ok(GO_TEXT));
        assert_eq!(impostor.verifier().open(&both), Ok(GO_TEXT));
    }

    #[test]
    fn malformed_keys_and_notes_are_rejected() {
        for bad in [
            "",
            "example.com/foo",
            "example.com/foo+530d903a",
            "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/fo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903a+AkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2kAA==",
            "ex ample+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        ] {
            assert!(bad.parse::<LogVerifier>().is_err(), "{bad:?} accepted");
        }
        let v: LogVerifier = SPEC_VKEY.parse().expect("vkey");
        for bad in [
            "This is an example message.\n",
            "This is an example message.\n\n",
            "This is an example message.\n\n— example.com/foo\n",
            "This is an example message.\n\n-- example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n",
            "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=",
            "This is an\texample message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n",
        ] {
            assert!(v.open(bad).is_err(), "{bad:?} accepted");
        }
        let s = LogSigner::from_seed("x", &[1; 32]).expect("key");
        assert!(s.sign_note("no newline").is_err());
        assert!(s.sign_note("tab\there\n").is_err());
        assert!(LogSigner::from_seed("a b", &[1; 32]).is_err());
        assert!(LogSigner::from_seed("a+b", &[1; 32]).is_err());
        assert!(LogSigner::from_seed("", &[1; 32]).is_err());
    }

    #[test]
    fn key_file_round_trip_is_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.key");
        let s = LogSigner::generate("kasbah.example/log").expect("generate");
        s.save(&path).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = LogSigner::load(&path).expect("load");
        assert_eq!(back.verifier(), s.verifier());
        assert!(s.save(&path).is_err(), "save must not overwrite a key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                LogSigner::load(&path),
                Err(KeyError::InsecurePermissions { .. })
            ));
        }
        // Two generated keys differ.
        let other = LogSigner::generate("kasbah.example/log").expect("generate");
        assert_ne!(other.verifier(), s.verifier());
    }
}
