//! Module signatures: an in-toto Statement v1 whose subject is a module's
//! SHA-256, in a DSSE envelope signed with Ed25519 — the format Sigstore
//! uses, so standard tools read it.
//!
//! ```text
//! envelope  = {"payloadType": "application/vnd.in-toto+json",
//!              "payload": base64(statement),
//!              "signatures": [{"keyid": KEY_ID, "sig": base64(ed25519(PAE))}]}
//! statement = {"_type": "https://in-toto.io/Statement/v1",
//!              "subject": [{"name": "hello.wasm", "digest": {"sha256": "<hex>"}}],
//!              "predicateType": "https://kasbah.dev/module-signature/v1",
//!              "predicate": {}}
//! PAE       = "DSSEv1" SP len(payloadType) SP payloadType SP len(payload) SP payload
//!             (lengths in ASCII decimal, payload = the decoded bytes)
//! KEY_ID    = lowercase hex of SHA-256(the raw 32-byte Ed25519 public key)
//! ```
//!
//! Keys on disk are standard PEM: the private key PKCS#8 (`BEGIN PRIVATE
//! KEY`, file mode 0600), the public key SubjectPublicKeyInfo (`BEGIN
//! PUBLIC KEY`), both readable by `openssl pkey`. In a policy a key is
//! written as the base64 of its raw 32 bytes ([`PublicKey`]'s `Display`).
//!
//! Every size a client controls is bounded before it is parsed or decoded:
//! [`MAX_ENVELOPE_BYTES`], [`MAX_SIGNATURES`], [`MAX_SUBJECTS`].

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use kasbah_core::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance v1 predicate type (`kasbah build` statements).
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// The predicate of a kasbah module signature ("the holder of this key
/// vouches for these bytes"); its predicate object is empty.
pub const PREDICATE_TYPE: &str = "https://kasbah.dev/module-signature/v1";
/// Largest envelope accepted (JSON bytes).
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024;
/// Most signatures in one envelope.
pub const MAX_SIGNATURES: usize = 8;
/// Most subjects in one statement.
pub const MAX_SUBJECTS: usize = 64;

const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key, an envelope or a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsseError {
    #[error("the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
    #[error("the envelope is not a DSSE envelope: {0}")]
    Malformed(String),
    #[error("payloadType is {0:?}, expected {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("the envelope has {0} signatures (at least 1, at most {MAX_SIGNATURES})")]
    SignatureCount(usize),
    #[error("the payload is not an in-toto statement v1 with predicate {PREDICATE_TYPE}: {0}")]
    Statement(String),
    #[error("key: {0}")]
    Key(String),
}

/// The DSSE pre-authentication encoding of `payload` (what is signed).
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// An Ed25519 public key that may sign modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Lowercase hex of SHA-256 of the raw 32-byte key.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// SubjectPublicKeyInfo PEM (`openssl pkey -pubin` reads it).
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.0.as_bytes());
        pem("PUBLIC KEY", &der)
    }

    /// Parse a SubjectPublicKeyInfo PEM, or the raw base64 form.
    pub fn from_pem_or_base64(text: &str) -> Result<Self, DsseError> {
        let t = text.trim();
        if !t.starts_with("-----BEGIN") {
            return t.parse();
        }
        let der = unpem(t, "PUBLIC KEY")?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|r| r.len() == 32)
            .ok_or_else(|| DsseError::Key("not an Ed25519 SubjectPublicKeyInfo".into()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: &[u8]) -> Result<Self, DsseError> {
        let a: [u8; 32] = raw
            .try_into()
            .map_err(|_| DsseError::Key(format!("{} bytes, expected 32", raw.len())))?;
        VerifyingKey::from_bytes(&a)
            .map(PublicKey)
            .map_err(|_| DsseError::Key("not a valid Ed25519 point".into()))
    }

    /// Whether `sig` (base64) is this key's signature of `msg`.
    fn verifies(&self, msg: &[u8], sig: &str) -> bool {
        if sig.len() > 128 {
            return false;
        }
        let Ok(raw) = STANDARD.decode(sig) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&raw) else {
            return false;
        };
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

/// Base64 of the raw 32 bytes (how policies list keys).
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0.as_bytes()))
    }
}

impl FromStr for PublicKey {
    type Err = DsseError;
    fn from_str(s: &str) -> Result<Self, DsseError> {
        if s.len() > 64 {
            return Err(DsseError::Key("too long for a base64 Ed25519 key".into()));
        }
        let raw = STANDARD
            .decode(s.trim())
            .map_err(|_| DsseError::Key("not base64".into()))?;
        Self::from_raw(&raw)
    }
}

/// A module signing key (secret).
pub struct ModuleSigner(SigningKey);

impl ModuleSigner {
    /// A fresh key from the OS's random source.
    pub fn generate() -> Result<Self, DsseError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| DsseError::Key(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        ModuleSigner(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// PKCS#8 PEM (`openssl pkey` reads it). Secret.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let mut der = Zeroizing::new(PKCS8_PREFIX.to_vec());
        der.extend_from_slice(self.0.as_bytes());
        Zeroizing::new(pem("PRIVATE KEY", &der))
    }

    pub fn from_pem(text: &str) -> Result<Self, DsseError> {
        let der = Zeroizing::new(unpem(text.trim(), "PRIVATE KEY")?);
        let seed: [u8; 32] = der
            .strip_prefix(&PKCS8_PREFIX[..])
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| DsseError::Key("not an Ed25519 PKCS#8 private key".into()))?;
        let seed = Zeroizing::new(seed);
        Ok(Self::from_seed(&seed))
    }

    /// Write the PEM to a new file readable only by its owner (mode 0600).
    /// Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        f.write_all(self.to_pem().as_bytes())?;
        f.sync_all()
    }

    /// Read a key written by [`Self::save`]. On Unix, refuses a file that
    /// group or others can read.
    pub fn load(path: &Path) -> Result<Self, DsseError> {
        let io = |e: std::io::Error| DsseError::Key(format!("{}: {e}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(DsseError::Key(format!(
                    "{} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        Self::from_pem(&text)
    }

    /// Sign the module `bytes` named `name`: a DSSE envelope around an
    /// in-toto statement whose subject is the bytes' SHA-256.
    pub fn sign_module(&self, name: &str, bytes: &[u8]) -> Envelope {
        self.sign_digest(name, &Digest::of(bytes))
    }

    /// [`Self::sign_module`] from the module's digest.
    pub fn sign_digest(&self, name: &str, digest: &Digest) -> Envelope {
        let statement = Statement {
            type_: STATEMENT_TYPE.into(),
            subject: vec![Subject {
                name: name.into(),
                digest: SubjectDigest {
                    sha256: hex::encode(digest.as_bytes()),
                },
            }],
            predicate_type: PREDICATE_TYPE.into(),
            predicate: serde_json::Value::Object(Default::default()),
        };
        // Serialising a struct of strings cannot fail.
        let payload = serde_json::to_vec(&statement).unwrap_or_default();
        let sig = self.0.sign(&pae(PAYLOAD_TYPE, &payload));
        Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: STANDARD.encode(&payload),
            signatures: vec![EnvelopeSignature {
                keyid: self.public().key_id(),
                sig: STANDARD.encode(sig.to_bytes()),
            }],
        }
    }
}

/// A DSSE envelope (JSON field names as in the DSSE spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 of the statement's JSON bytes.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    pub sig: String,
}

/// in-toto Statement v1 (the fields kasbah reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    #[serde(default)]
    pub predicate: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(default)]
    pub name: String,
    pub digest: SubjectDigest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectDigest {
    pub sha256: String,
}

/// An envelope that parsed, with its statement's subject digests.
#[derive(Debug, Clone)]
pub struct CheckedEnvelope {
    pub envelope: Envelope,
    /// The decoded payload (the statement's bytes).
    pub payload: Vec<u8>,
    /// The module digests the statement names.
    pub subjects: Vec<Digest>,
}

impl Envelope {
    /// Parse an envelope's JSON, strictly and bounded: size first, then the
    /// payload type, the signature count, the statement (type, predicate,
    /// at most [`MAX_SUBJECTS`] subjects with SHA-256 digests).
    pub fn parse(bytes: &[u8]) -> Result<CheckedEnvelope, DsseError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(DsseError::TooLarge);
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| DsseError::Malformed(e.to_string()))?;
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(DsseError::PayloadType(envelope.payload_type));
        }
        let n = envelope.signatures.len();
        if n == 0 || n > MAX_SIGNATURES {
            return Err(DsseError::SignatureCount(n));
        }
        let payload = STANDARD
            .decode(&envelope.payload)
            .map_err(|_| DsseError::Malformed("payload is not base64".into()))?;
        let st: Statement =
            serde_json::from_slice(&payload).map_err(|e| DsseError::Statement(e.to_string()))?;
        if st.type_ != STATEMENT_TYPE {
            return Err(DsseError::Statement(format!("_type is {:?}", st.type_)));
        }
        if st.predicate_type != PREDICATE_TYPE {
            return Err(DsseError::Statement(format!(
                "predicateType is {:?}",
                st.predicate_type
            )));
        }
        if st.subject.is_empty() || st.subject.len() > MAX_SUBJECTS {
            return Err(DsseError::Statement(format!(
                "{} subjects (1 to {MAX_SUBJECTS})",
                st.subject.len()
            )));
        }
        let mut subjects = Vec::with_capacity(st.subject.len());
        for s in &st.subject {
            let hexd = &s.digest.sha256;
            let mut a = [0u8; 32];
            if hexd.len() != 64 || hex::decode_to_slice(hexd, &mut a).is_err() {
                return Err(DsseError::Statement(format!(
                    "subject digest {hexd:?} is not 64 hex digits"
                )));
            }
            subjects.push(Digest::from_bytes(a));
        }
        Ok(CheckedEnvelope {
            envelope,
            payload,
            subjects,
        })
    }
}

impl CheckedEnvelope {
    /// The key ids among `keys` with a valid signature in this envelope
    /// (a signature's `keyid`, when set, picks the key it is tried with).
    pub fn signers(&self, keys: &[PublicKey]) -> Vec<String> {
        let msg = pae(&self.envelope.payload_type, &self.payload);
        let mut out: Vec<String> = Vec::new();
        for s in &self.envelope.signatures {
            for k in keys {
                let id = k.key_id();
                if (!s.keyid.is_empty() && s.keyid != id) || out.contains(&id) {
                    continue;
                }
                if k.verifies(&msg, &s.sig) {
                    out.push(id);
                }
            }
        }
        out
    }

    pub fn names(&self, digest: &Digest) -> bool {
        self.subjects.contains(digest)
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        STANDARD.encode(der)
    )
}

fn unpem(text: &str, label: &str) -> Result<Vec<u8>, DsseError> {
    if text.len() > 4096 {
        return Err(DsseError::Key("PEM too long".into()));
    }
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .strip_prefix(&begin)
        .and_then(|r| r.trim_end().strip_suffix(&end))
        .ok_or_else(|| DsseError::Key(format!("expected a PEM {label}")))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD
        .decode(b64)
        .map_err(|_| DsseError::Key("PEM body is not base64".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_parse_verify_and_pem_round_trip() {
        let k = ModuleSigner::from_seed(&[9; 32]);
        let env = k.sign_module("m.wasm", b"bytes");
        let json = serde_json::to_vec(&env).expect("json");
        let c = Envelope::parse(&json).expect("parse");
        assert!(c.names(&Digest::of(b"bytes")));
        assert!(!c.names(&Digest::of(b"other")));
        assert_eq!(c.signers(&[k.public()]), vec![k.public().key_id()]);
        let other = ModuleSigner::from_seed(&[8; 32]).public();
        assert!(c.signers(&[other]).is_empty());
        let back = ModuleSigner::from_pem(&k.to_pem()).expect("pem");
        assert_eq!(back.public(), k.public());
        let p = PublicKey::from_pem_or_base64(&k.public().to_pem()).expect("pub pem");
        assert_eq!(p, k.public());
        assert_eq!(p.to_string().parse::<PublicKey>().expect("b64"), p);
        // A flipped signature bit does not count.
        let mut bad = env.clone();
        let mut sig = STANDARD.decode(&bad.signatures[0].sig).expect("b64");
        sig[0] ^= 1;
        bad.signatures[0].sig = STANDARD.encode(sig);
        let c = Envelope::parse(&serde_json::to_vec(&bad).expect("json")).expect("parse");
        assert!(c.signers(&[k.public()]).is_empty());
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(
            Envelope::parse(&vec![b' '; MAX_ENVELOPE_BYTES + 1]).err(),
            Some(DsseError::TooLarge)
        );
        let k = ModuleSigner::from_seed(&[9; 32]);
        let mut env = k.sign_module("m", b"x");
        let s = env.signatures[0].clone();
        env.signatures = vec![s; MAX_SIGNATURES + 1];
        let json = serde_json::to_vec(&env).expect("json");
        assert_eq!(
            Envelope::parse(&json).err(),
            Some(DsseError::SignatureCount(MAX_SIGNATURES + 1))
        );
        env.signatures.clear();
        let json = serde_json::to_vec(&env).expect("json");
        assert_eq!(
            Envelope::parse(&json).err(),
            Some(DsseError::SignatureCount(0))
        );
    }
}
