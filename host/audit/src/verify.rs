//! Proof verification, transcribed step by step from RFC 9162 §2.1.3.2
//! (inclusion) and §2.1.4.2 (consistency). These functions need nothing but
//! hashes: they are what an offline client runs.

use crate::hash::Hash;

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("proof has too many hashes for this index and tree size")]
    TooLong,
    #[error("proof has too few hashes for this index and tree size")]
    TooShort,
    #[error("proof does not lead to the expected root hash")]
    RootMismatch,
    #[error("proof does not lead to the old root hash")]
    OldRootMismatch,
    #[error("new tree size {new} is smaller than old tree size {old}")]
    SizeDecreased { old: u64, new: u64 },
    #[error("a consistency proof from the empty tree is meaningless")]
    EmptyOldTree,
    #[error("equal tree sizes need an empty proof and equal roots")]
    SameSizeMismatch,
    #[error("consistency proof is empty")]
    EmptyProof,
}

/// RFC 9162 §2.1.3.2: verify that `leaf_hash` is the leaf at `index` in the
/// tree of `tree_size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // 1. leaf_index >= tree_size fails.
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    // 2. fn = leaf_index, sn = tree_size - 1.
    let mut f_n = index;
    let mut s_n = tree_size - 1;
    // 3. r = hash.
    let mut r = *leaf_hash;
    // 4. For each p in inclusion_path:
    for p in proof {
        // a. sn == 0: fail.
        if s_n == 0 {
            return Err(ProofError::TooLong);
        }
        // b. LSB(fn) set, or fn == sn:
        if f_n & 1 == 1 || f_n == s_n {
            // i. r = HASH(0x01 || p || r)
            r = Hash::node(p, &r);
            // ii. If LSB(fn) is not set, right-shift fn and sn equally until
            //     either LSB(fn) is set or fn is 0.
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            // Otherwise r = HASH(0x01 || r || p).
            r = Hash::node(&r, p);
        }
        // c. Right-shift fn and sn once.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. sn must be 0 and r must equal root_hash.
    if s_n != 0 {
        return Err(ProofError::TooShort);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: verify that the tree of size `old_size` with root
/// `old_root` is a prefix of the tree of size `new_size` with root
/// `new_root`.
///
/// The RFC defines the proof for `0 < old_size < new_size`. Outside that
/// range this follows the widely deployed convention (transparency-dev/merkle,
/// whose test vectors we pass): equal sizes need an empty proof and equal
/// roots; an old size of 0 or a shrinking tree is an error.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if new_size < old_size {
        return Err(ProofError::SizeDecreased {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if old_size == new_size {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::SameSizeMismatch)
        };
    }
    // 1. An empty consistency_path fails.
    if proof.is_empty() {
        return Err(ProofError::EmptyProof);
    }
    // 2. If first is an exact power of 2, prepend first_hash to the path.
    let path: Vec<Hash> = if old_size.is_power_of_two() {
        std::iter::once(*old_root)
            .chain(proof.iter().copied())
            .collect()
    } else {
        proof.to_vec()
    };
    // 3. fn = first - 1, sn = second - 1.
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    // 4. If LSB(fn) is set, right-shift fn and sn equally until it is not.
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. fr = sr = the first value of the path.
    let mut f_r = path[0];
    let mut s_r = path[0];
    // 6. For each subsequent value c:
    for c in &path[1..] {
        // a. sn == 0: fail.
        if s_n == 0 {
            return Err(ProofError::TooLong);
        }
        // b. LSB(fn) set, or fn == sn:
        if f_n & 1 == 1 || f_n == s_n {
            // i. fr = HASH(0x01 || c || fr); ii. sr = HASH(0x01 || c || sr)
            f_r = Hash::node(c, &f_r);
            s_r = Hash::node(c, &s_r);
            // iii. If LSB(fn) is not set, right-shift fn and sn equally until
            //      either LSB(fn) is set or fn is 0.
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            // Otherwise sr = HASH(0x01 || sr || c).
            s_r = Hash::node(&s_r, c);
        }
        // c. Right-shift fn and sn once.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 7. fr == first_hash, sr == second_hash, sn == 0.
    if s_n != 0 {
        return Err(ProofError::TooShort);
    }
    if f_r != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if s_r != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}
