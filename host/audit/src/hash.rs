//! RFC 6962 / RFC 9162 §2.1.1 hashing: `leaf = SHA-256(0x00 ‖ entry)`,
//! `node = SHA-256(0x01 ‖ left ‖ right)`, and the empty tree hashes to
//! `SHA-256("")`.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// Length in bytes of every hash in the tree.
pub const HASH_LEN: usize = 32;

/// A Merkle tree hash (leaf, interior node or root). Deliberately a different
/// type from [`kasbah_core::Digest`]: a tree hash is domain-separated and is
/// never the digest of some content a user holds.
///
/// Text form (JSON, checkpoints): standard base64, as in C2SP checkpoints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

impl Hash {
    /// `MTH({})`: the hash of an empty tree, `SHA-256("")`.
    pub fn empty() -> Hash {
        Hash(Sha256::digest([]).into())
    }

    /// `MTH({d}) = SHA-256(0x00 ‖ d)`.
    pub fn leaf(entry: &[u8]) -> Hash {
        let mut h = Sha256::new();
        h.update([0x00]);
        h.update(entry);
        Hash(h.finalize().into())
    }

    /// `SHA-256(0x01 ‖ left ‖ right)`.
    pub fn node(left: &Hash, right: &Hash) -> Hash {
        let mut buf = [0u8; 1 + 2 * HASH_LEN];
        buf[0] = 0x01;
        buf[1..1 + HASH_LEN].copy_from_slice(&left.0);
        buf[1 + HASH_LEN..].copy_from_slice(&right.0);
        Hash(Sha256::digest(buf).into())
    }

    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        <[u8; HASH_LEN]>::try_from(bytes).ok().map(Hash)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Option<Hash> {
        // Decode into a larger buffer so that over-long input is rejected
        // rather than truncated.
        let bytes = STANDARD.decode(s).ok()?;
        Hash::from_slice(&bytes)
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tree hash {0:?}: expected standard base64 of 32 bytes")]
pub struct InvalidHash(pub String);

impl FromStr for Hash {
    type Err = InvalidHash;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash::from_base64(s).ok_or_else(|| InvalidHash(s.chars().take(80).collect()))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_leaf_and_node_hashes_match_rfc6962_reference_values() {
        // Values from transparency-dev/merkle testonly/constants.go
        // (EmptyRootHash, NodeHashes()[0][0], NodeHashes()[1][0]).
        assert_eq!(
            Hash::empty().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l0 = Hash::leaf(b"");
        assert_eq!(
            l0.hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let l1 = Hash::leaf(&[0x00]);
        assert_eq!(
            l1.hex(),
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
        );
        assert_eq!(
            Hash::node(&l0, &l1).hex(),
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"
        );
    }

    #[test]
    fn base64_round_trip_rejects_wrong_lengths() {
        let h = Hash::leaf(b"x");
        assert_eq!(h.to_base64().parse::<Hash>(), Ok(h));
        assert!("".parse::<Hash>().is_err());
        assert!(STANDARD.encode([0u8; 31]).parse::<Hash>().is_err());
        assert!(STANDARD.encode([0u8; 33]).parse::<Hash>().is_err());
        assert!("not base64!".parse::<Hash>().is_err());
        let json = serde_json::to_string(&h).expect("serialize");
        assert_eq!(serde_json::from_str::<Hash>(&json).expect("parse"), h);
    }
}
