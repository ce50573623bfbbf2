//! Secrets at rest: XChaCha20-Poly1305 under a 32-byte key in the data dir
//! (`secrets.key`, created 0600 at first start, like the audit and
//! artifact keys), a fresh random 24-byte nonce per value, and associated
//! data binding the ciphertext to its tenant, name and version:
//!
//! ```text
//! aad = "kasbah-secret-v1" ‖ len:u32 ‖ tenant ‖ len:u32 ‖ name ‖ version:u64   (big-endian)
//! ```
//!
//! A ciphertext copied to another tenant's or name's row, or replayed as
//! another version, fails to open. Losing the key loses every secret (they
//! are set again); a backup of the data dir carries the key with it, so
//! it is as sensitive as the secrets themselves.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::storage::Sealed;

/// File name of the key in the data dir.
pub const KEY_FILE: &str = "secrets.key";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const AAD_TAG: &[u8] = b"kasbah-secret-v1";

/// The key secrets are sealed under.
pub struct SecretKey(XChaCha20Poly1305);

/// A ciphertext that does not open (wrong key, moved, tampered).
#[derive(Debug, thiserror::Error)]
#[error("the secret does not decrypt (wrong key, or the row was moved or changed)")]
pub struct OpenError;

impl SecretKey {
    /// Load `<data_dir>/secrets.key`, or create it (0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                anyhow::ensure!(
                    bytes.len() == KEY_LEN,
                    "secrets key {} is {} bytes, not {KEY_LEN}",
                    path.display(),
                    bytes.len()
                );
                let mut k = Zeroizing::new([0u8; KEY_LEN]);
                k.copy_from_slice(&bytes);
                k
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = Zeroizing::new([0u8; KEY_LEN]);
                getrandom::fill(&mut k[..])
                    .map_err(|e| anyhow::anyhow!("random secrets key: {e}"))?;
                let mut o = std::fs::OpenOptions::new();
                o.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    o.mode(crate::at_rest::FILE_MODE);
                }
                let mut f = o
                    .open(&path)
                    .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
                f.write_all(&k[..])?;
                f.sync_all()?;
                tracing::info!("created the secrets key {}", path.display());
                k
            }
            Err(e) => anyhow::bail!("reading the secrets key {}: {e}", path.display()),
        };
        Ok(Self::from_bytes(&key))
    }

    /// A key from its bytes (tests).
    pub fn from_bytes(key: &[u8; KEY_LEN]) -> Self {
        SecretKey(XChaCha20Poly1305::new(key.into()))
    }

    /// Encrypt `plaintext` as `tenant`'s secret `name` at `version`.
    /// `Err` only when the OS random source fails (nothing is stored
    /// under a predictable nonce).
    pub fn seal(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
        plaintext: &[u8],
    ) -> Result<Sealed, String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("the OS random source failed: {e}"))?;
        let aad = aad(tenant, name, version);
        let ciphertext = self
            .0
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypt what [`Self::seal`] made for exactly this tenant, name and
    /// version.
    pub fn open(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let nonce: [u8; NONCE_LEN] = sealed.nonce.as_slice().try_into().map_err(|_| OpenError)?;
        let aad = aad(tenant, name, version);
        self.0
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }
}

fn aad(tenant: &str, name: &str, version: u64) -> Vec<u8> {
    let mut a = AAD_TAG.to_vec();
    for part in [tenant, name] {
        a.extend((part.len() as u32).to_be_bytes());
        a.extend(part.as_bytes());
    }
    a.extend(version.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_for_their_tenant_name_and_version() {
        let k = SecretKey::from_bytes(&[7; 32]);
        let s = k.seal("tn_a", "api_key", 2, b"value-1").expect("seal");
        assert_eq!(
            &k.open("tn_a", "api_key", 2, &s).expect("opens")[..],
            b"value-1"
        );
        assert!(!s.ciphertext.windows(7).any(|w| w == b"value-1"));
        // Moved to another tenant, name or version: refused.
        assert!(k.open("tn_b", "api_key", 2, &s).is_err());
        assert!(k.open("tn_a", "api_kez", 2, &s).is_err());
        assert!(k.open("tn_a", "api_key", 1, &s).is_err());
        // The length prefixes keep ("ab","c") apart from ("a","bc").
        let t = k.seal("ab", "c", 1, b"x").expect("seal");
        assert!(k.open("a", "bc", 1, &t).is_err());
        // Tampered ciphertext, tag or nonce: refused.
        for i in 0..s.ciphertext.len() {
            let mut bad = Sealed {
                nonce: s.nonce.clone(),
                ciphertext: s.ciphertext.clone(),
            };
            bad.ciphertext[i] ^= 1;
            assert!(k.open("tn_a", "api_key", 2, &bad).is_err(), "byte {i}");
        }
        let mut bad = Sealed {
            nonce: s.nonce.clone(),
            ciphertext: s.ciphertext.clone(),
        };
        bad.nonce[0] ^= 1;
        assert!(k.open("tn_a", "api_key", 2, &bad).is_err());
        bad.nonce.pop();
        assert!(k.open("tn_a", "api_key", 2, &bad).is_err());
        // Another key: refused.
        assert!(
            SecretKey::from_bytes(&[8; 32])
                .open("tn_a", "api_key", 2, &s)
                .is_err()
        );
        // A fresh nonce each time.
        let again = k.seal("tn_a", "api_key", 2, b"value-1").expect("seal");
        assert_ne!(again.nonce, s.nonce);
        assert_ne!(again.ciphertext, s.ciphertext);
    }

    #[test]
    fn the_key_file_is_made_once_0600_and_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let k1 = SecretKey::load_or_create(dir.path()).expect("create");
        let s = k1.seal("t", "n", 1, b"v").expect("seal");
        let k2 = SecretKey::load_or_create(dir.path()).expect("load");
        assert_eq!(&k2.open("t", "n", 1, &s).expect("same key")[..], b"v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join(KEY_FILE)).expect("meta");
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        assert!(SecretKey::load_or_create(dir.path()).is_err());
    }
}
