//! Tree hashes and proofs against three independent references:
//! 1. a literal transcription of RFC 9162 §2.1.1 / §2.1.3.1 / §2.1.4.1 (the
//!    recursive MTH, PATH and SUBPROOF definitions) over all leaves;
//! 2. the test vectors of transparency-dev/merkle (Go), embedded under
//!    `tests/vectors/transparency-dev-merkle` (source and commit in its README);
//! 3. the `ct-merkle` crate (rozbb/ct-merkle), an independent Rust RFC 6962
//!    implementation.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use kasbah_audit::tree::{self, NodeId, NodeStore};
use kasbah_audit::{
    FileStore, Hash, MemoryStore, ProofError, TreeError, verify_consistency, verify_inclusion,
};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

// ---- 1. RFC 9162 recursive definitions, transcribed --------------------------

fn split(n: usize) -> usize {
    // The largest power of two smaller than n (n > 1).
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The RFC's recursive definitions over `D[lo:hi]`, with `MTH` memoized so
/// that sweeping every proof of every size stays fast in a debug build.
struct Rfc<'a> {
    d: &'a [Hash],
    memo: HashMap<(usize, usize), Hash>,
}

impl<'a> Rfc<'a> {
    fn new(d: &'a [Hash]) -> Self {
        Rfc {
            d,
            memo: HashMap::new(),
        }
    }

    /// MTH(D[lo:hi]).
    fn mth(&mut self, lo: usize, hi: usize) -> Hash {
        match hi - lo {
            0 => Hash::empty(),
            1 => self.d[lo],
            n => {
                if let Some(h) = self.memo.get(&(lo, hi)) {
                    return *h;
                }
                let k = split(n);
                let h = Hash::node(&self.mth(lo, lo + k), &self.mth(lo + k, hi));
                self.memo.insert((lo, hi), h);
                h
            }
        }
    }

    /// PATH(m, D[lo:hi]).
    fn path(&mut self, m: usize, lo: usize, hi: usize) -> Vec<Hash> {
        let n = hi - lo;
        if n == 1 {
            return vec![];
        }
        let k = split(n);
        if m < k {
            let mut p = self.path(m, lo, lo + k);
            p.push(self.mth(lo + k, hi));
            p
        } else {
            let mut p = self.path(m - k, lo + k, hi);
            p.push(self.mth(lo, lo + k));
            p
        }
    }

    /// SUBPROOF(m, D[lo:hi], b).
    fn subproof(&mut self, m: usize, lo: usize, hi: usize, b: bool) -> Vec<Hash> {
        let n = hi - lo;
        if m == n {
            return if b { vec![] } else { vec![self.mth(lo, hi)] };
        }
        let k = split(n);
        if m <= k {
            let mut p = self.subproof(m, lo, lo + k, b);
            p.push(self.mth(lo + k, hi));
            p
        } else {
            let mut p = self.subproof(m - k, lo + k, hi, false);
            p.push(self.mth(lo, lo + k));
            p
        }
    }
}

fn leaves(n: usize) -> Vec<Hash> {
    (0..n)
        .map(|i| Hash::leaf(format!("entry {i}").as_bytes()))
        .collect()
}

fn build(leaves: &[Hash]) -> MemoryStore {
    let mut s = MemoryStore::new();
    for l in leaves {
        tree::append_leaf(&mut s, *l).expect("append");
    }
    s
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut b = h.0;
    b[bit / 8] ^= 1 << (bit % 8);
    Hash(b)
}

const N: usize = 260;

/// Every proof of every size is checked against the RFC and verified; the
/// (debug-build-costly) tampering sweep runs on every pair up to size 128
/// and on the edges plus a stride of the rest above it.
fn tamper_here(i: usize, n: usize) -> bool {
    n <= 128 || i < 2 || i + 2 >= n || i == n / 2 || i.is_multiple_of(7)
}

#[test]
fn roots_match_rfc_mth_for_every_size() {
    let d = leaves(N);
    let s = build(&d);
    let mut rfc = Rfc::new(&d);
    for m in 0..=N {
        assert_eq!(
            tree::root_at(&s, m as u64).expect("root"),
            rfc.mth(0, m),
            "size {m}"
        );
    }
    assert!(matches!(
        tree::root_at(&s, N as u64 + 1),
        Err(TreeError::SizeOutOfRange { .. })
    ));
}

#[test]
fn batch_and_single_appends_build_the_same_tree() {
    let d = leaves(N);
    let one_by_one = build(&d);
    let mut batched = MemoryStore::new();
    // Uneven batch sizes, so batches start and end at every alignment.
    let mut i = 0;
    let mut b = 1;
    while i < N {
        let end = (i + b).min(N);
        assert_eq!(
            tree::append_leaves(&mut batched, &d[i..end]).expect("append"),
            i as u64
        );
        i = end;
        b = b % 13 + 1;
    }
    for m in 1..=N as u64 {
        assert_eq!(
            tree::root_at(&batched, m).expect("root"),
            tree::root_at(&one_by_one, m).expect("root")
        );
    }
}

#[test]
fn every_inclusion_proof_matches_rfc_path_and_verifies_and_any_flip_fails() {
    let d = leaves(N);
    let s = build(&d);
    let mut rfc = Rfc::new(&d);
    for n in 1..=N {
        let root = rfc.mth(0, n);
        for (i, leaf) in d[..n].iter().enumerate() {
            let proof = tree::inclusion_proof(&s, i as u64, n as u64).expect("proof");
            assert_eq!(proof, rfc.path(i, 0, n), "PATH({i}, D[{n}])");
            verify_inclusion(leaf, i as u64, n as u64, &proof, &root).expect("verifies");
            if !tamper_here(i, n) {
                continue;
            }

            // A flipped bit anywhere (one bit per hash, varying with i and n,
            // so that over the sweep every bit position is hit) must fail.
            let bit = (i * 31 + n * 7) % 256;
            for k in 0..proof.len() {
                let mut bad = proof.clone();
                bad[k] = flip(&bad[k], bit);
                assert!(verify_inclusion(leaf, i as u64, n as u64, &bad, &root).is_err());
            }
            assert!(verify_inclusion(&flip(leaf, bit), i as u64, n as u64, &proof, &root).is_err());
            assert!(verify_inclusion(leaf, i as u64, n as u64, &proof, &flip(&root, bit)).is_err());
            // Wrong index, wrong size, truncated or extended proof.
            if n > 1 {
                let j = (i + 1) % n;
                assert!(verify_inclusion(leaf, j as u64, n as u64, &proof, &root).is_err());
                assert!(verify_inclusion(leaf, i as u64, n as u64, &proof[1..], &root).is_err());
            }
            // (The same proof may well verify for a neighbouring tree size:
            // RFC 9162 proofs do not bind the size, the signed checkpoint does.)
            let mut longer = proof.clone();
            longer.push(root);
            assert!(verify_inclusion(leaf, i as u64, n as u64, &longer, &root).is_err());
        }
        assert!(matches!(
            tree::inclusion_proof(&s, n as u64, n as u64),
            Err(TreeError::IndexOutOfRange { .. })
        ));
    }
}

#[test]
fn every_bit_of_small_inclusion_proofs_matters() {
    let d = leaves(40);
    let s = build(&d);
    let mut rfc = Rfc::new(&d);
    for n in [1usize, 2, 3, 5, 8, 13, 31, 32, 33, 40] {
        let root = rfc.mth(0, n);
        for (i, leaf) in d[..n].iter().enumerate() {
            let proof = tree::inclusion_proof(&s, i as u64, n as u64).expect("proof");
            for k in 0..proof.len() {
                for bit in 0..256 {
                    let mut bad = proof.clone();
                    bad[k] = flip(&bad[k], bit);
                    assert!(verify_inclusion(leaf, i as u64, n as u64, &bad, &root).is_err());
                }
            }
        }
    }
}

#[test]
fn every_bit_of_small_consistency_proofs_matters() {
    let d = leaves(20);
    let s = build(&d);
    let mut rfc = Rfc::new(&d);
    for n in [3usize, 7, 8, 13, 20] {
        let new_root = rfc.mth(0, n);
        for m in 1..n {
            let old_root = rfc.mth(0, m);
            let proof = tree::consistency_proof(&s, m as u64, n as u64).expect("proof");
            for k in 0..proof.len() {
                for bit in 0..256 {
                    let mut bad = proof.clone();
                    bad[k] = flip(&bad[k], bit);
                    assert!(
                        verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad).is_err()
                    );
                }
            }
        }
    }
}

#[test]
fn every_consistency_proof_matches_rfc_subproof_and_verifies_and_any_flip_fails() {
    const M: usize = 200;
    let d = leaves(M);
    let s = build(&d);
    let mut rfc = Rfc::new(&d);
    let roots: Vec<Hash> = (0..=M).map(|m| rfc.mth(0, m)).collect();
    for n in 1..=M {
        let new_root = roots[n];
        for m in 1..=n {
            let old_root = roots[m];
            let proof = tree::consistency_proof(&s, m as u64, n as u64).expect("proof");
            if m < n {
                assert_eq!(proof, rfc.subproof(m, 0, n, true), "PROOF({m}, D[{n}])");
            } else {
                assert!(proof.is_empty());
            }
            verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof).expect("verifies");
            if !tamper_here(m, n) {
                continue;
            }
            let bit = (m * 17 + n * 5) % 256;
            for k in 0..proof.len() {
                let mut bad = proof.clone();
                bad[k] = flip(&bad[k], bit);
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad).is_err(),
                    "flip in proof[{k}] of ({m},{n}) accepted"
                );
            }
            assert!(
                verify_consistency(m as u64, n as u64, &flip(&old_root, bit), &new_root, &proof)
                    .is_err()
            );
            assert!(
                verify_consistency(m as u64, n as u64, &old_root, &flip(&new_root, bit), &proof)
                    .is_err()
            );
            if m < n {
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof[1..])
                        .is_err()
                );
                let mut longer = proof.clone();
                longer.push(new_root);
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &longer).is_err()
                );
                // The proof is for (m, n), not for (m, n-1) or (m+1, n).
                if m + 1 < n {
                    assert!(
                        verify_consistency(
                            m as u64 + 1,
                            n as u64,
                            &roots[m + 1],
                            &new_root,
                            &proof
                        )
                        .is_err()
                    );
                }
            }
        }
    }
    assert!(tree::consistency_proof(&s, 0, 5).is_err());
    assert!(tree::consistency_proof(&s, 6, 5).is_err());
    assert!(tree::consistency_proof(&s, 1, M as u64 + 1).is_err());
}

// ---- O(log n) reads -----------------------------------------------------------

/// Counts reads to prove the tree never walks the leaves.
struct Counting<'a> {
    inner: &'a MemoryStore,
    calls: Cell<u64>,
    reads: Cell<u64>,
}

impl NodeStore for Counting<'_> {
    type Error = kasbah_audit::StoreError;
    fn size(&self) -> Result<u64, Self::Error> {
        self.inner.size()
    }
    fn node(&self, _: NodeId) -> Result<Option<Hash>, Self::Error> {
        unreachable!("the tree reads in batches")
    }
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, Self::Error> {
        self.calls.set(self.calls.get() + 1);
        self.reads.set(self.reads.get() + ids.len() as u64);
        self.inner.nodes(ids)
    }
    fn extend(&mut self, _: u64, _: &[(NodeId, Hash)]) -> Result<(), Self::Error> {
        unreachable!("read-only")
    }
}

#[test]
fn proofs_and_roots_read_o_log_n_nodes_in_one_batch() {
    let n: u64 = 100_003;
    let mut s = MemoryStore::with_capacity(n);
    let leaves: Vec<Hash> = (0..n).map(|i| Hash::leaf(&i.to_be_bytes())).collect();
    tree::append_leaves(&mut s, &leaves).expect("append");
    let c = Counting {
        inner: &s,
        calls: Cell::new(0),
        reads: Cell::new(0),
    };
    let log2 = 64 - u64::from(n.leading_zeros()); // 17
    let mut worst = 0;
    let mut check = |f: &dyn Fn(&Counting) -> Result<Vec<Hash>, TreeError>| {
        c.calls.set(0);
        c.reads.set(0);
        f(&c).expect("ok");
        assert!(c.calls.get() <= 1, "one batched read per operation");
        worst = worst.max(c.reads.get());
    };
    for (i, m) in [
        (0, n),
        (n - 1, n),
        (n / 2, n),
        (12_345, 77_777),
        (65_535, 65_537),
    ] {
        check(&|c| tree::inclusion_proof(c, i, m));
        check(&|c| tree::consistency_proof(c, i + 1, m));
        check(&|c| tree::root_at(c, m).map(|r| vec![r]));
    }
    // One read per proof hash plus at most one ephemeral node folded from
    // ≤ log2(n) stored subtrees.
    assert!(worst <= 2 * log2 + 2, "{worst} reads for n = {n}");
}

/// Appends read only the frontier they merge with, in one batch.
struct AppendCounting {
    inner: MemoryStore,
    calls: Cell<u64>,
    reads: Cell<u64>,
}

impl NodeStore for AppendCounting {
    type Error = kasbah_audit::StoreError;
    fn size(&self) -> Result<u64, Self::Error> {
        self.inner.size()
    }
    fn node(&self, _: NodeId) -> Result<Option<Hash>, Self::Error> {
        unreachable!("the tree reads in batches")
    }
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, Self::Error> {
        self.calls.set(self.calls.get() + 1);
        self.reads.set(self.reads.get() + ids.len() as u64);
        self.inner.nodes(ids)
    }
    fn extend(&mut self, n: u64, nodes: &[(NodeId, Hash)]) -> Result<(), Self::Error> {
        self.inner.extend(n, nodes)
    }
}

#[test]
fn appends_read_only_the_subtrees_they_complete() {
    let mut s = AppendCounting {
        inner: MemoryStore::new(),
        calls: Cell::new(0),
        reads: Cell::new(0),
    };
    let d = leaves(300);
    for (k, l) in (0u64..).zip(&d) {
        s.calls.set(0);
        s.reads.set(0);
        tree::append_leaf(&mut s, *l).expect("append");
        // Leaf k merges with one stored subtree per trailing one bit of k.
        assert_eq!(s.reads.get(), u64::from(k.trailing_ones()), "leaf {k}");
        assert!(s.calls.get() <= 1);
    }
    // A batch of 37 appended at size 300 needs at most one read per level.
    s.calls.set(0);
    s.reads.set(0);
    tree::append_leaves(&mut s, &leaves(37)).expect("append");
    assert_eq!(s.calls.get(), 1);
    assert!(s.reads.get() <= 9, "{}", s.reads.get());
}

// ---- File-backed store ---------------------------------------------------------

#[test]
fn file_store_matches_memory_store_and_survives_reopen_and_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nodes");
    let d = leaves(77);
    let mem = build(&d);
    {
        let mut f = FileStore::open(&path, true).expect("open");
        tree::append_leaves(&mut f, &d[..50]).expect("append");
        for l in &d[50..] {
            tree::append_leaf(&mut f, *l).expect("append");
        }
    }
    let f = FileStore::open(&path, false).expect("reopen");
    assert_eq!(f.size().expect("size"), 77);
    for m in 1..=77u64 {
        assert_eq!(
            tree::root_at(&f, m).expect("root"),
            tree::root_at(&mem, m).expect("root")
        );
        assert_eq!(
            tree::inclusion_proof(&f, m - 1, m).expect("proof"),
            tree::inclusion_proof(&mem, m - 1, m).expect("proof")
        );
    }
    drop(f);
    // A crash mid-append leaves a partial record: cut back on open.
    let len = std::fs::metadata(&path).expect("meta").len();
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    file.set_len(len + 40).expect("grow");
    drop(file);
    let f = FileStore::open(&path, false).expect("reopen");
    assert_eq!(f.size().expect("size"), 77);
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), len);
    // Losing the last node of an append rolls back that whole append.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(len - 32)
        .expect("shrink");
    let f2 = FileStore::open(&path, false).expect("reopen");
    assert_eq!(f2.size().expect("size"), 76);
    drop(f2);
    // Out-of-order writes are refused.
    let mut f = {
        drop(f);
        FileStore::open(&path, false).expect("reopen")
    };
    assert!(f.extend(78, &[(NodeId::new(0, 80), d[0])]).is_err());
}

// ---- 2. transparency-dev/merkle vectors ---------------------------------------

fn vectors_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/transparency-dev-merkle"
    ))
}

fn json_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

/// `None` if a hash is not 32 bytes: our typed API cannot even express such
/// a proof, which counts as a rejection.
fn h(v: &serde_json::Value) -> Option<Hash> {
    Hash::from_slice(&STANDARD.decode(v.as_str()?).ok()?)
}

/// Roots are only ever compared, never hashed further: the Go vectors use
/// placeholders such as base64("don't care 2") where only equality matters.
/// Map any non-32-byte value to a 32-byte stand-in that keeps (in)equality.
fn root(v: &serde_json::Value) -> Option<Hash> {
    let raw = STANDARD.decode(v.as_str()?).ok()?;
    Some(Hash::from_slice(&raw).unwrap_or_else(|| Hash::leaf(&raw)))
}

fn hashes(v: &serde_json::Value) -> Option<Vec<Hash>> {
    match v {
        serde_json::Value::Null => Some(vec![]),
        serde_json::Value::Array(a) => a.iter().map(h).collect(),
        _ => None,
    }
}

/// The tree of testonly/constants.go LeafInputs().
fn reference_tree() -> (Vec<Hash>, MemoryStore) {
    let inputs = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    let d: Vec<Hash> = inputs
        .iter()
        .map(|x| Hash::leaf(&hex::decode(x).expect("hex")))
        .collect();
    let s = build(&d);
    (d, s)
}

#[test]
fn reference_tree_roots_match_transparency_dev_constants() {
    // testonly/constants.go RootHashes().
    let want = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let (_, s) = reference_tree();
    for (m, w) in want.iter().enumerate() {
        assert_eq!(
            tree::root_at(&s, m as u64).expect("root").hex(),
            *w,
            "size {m}"
        );
    }
    // NodeHashes()[2][1]: the perfect subtree over leaves 4..8.
    assert_eq!(
        s.node(NodeId::new(2, 1))
            .expect("read")
            .expect("stored")
            .hex(),
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
    );
}

#[test]
fn transparency_dev_inclusion_vectors() {
    let (_, s) = reference_tree();
    let mut files = vec![];
    json_files(&vectors_dir().join("inclusion"), &mut files);
    assert!(files.len() > 80, "vectors missing: {}", files.len());
    let (mut ok, mut rejected, mut compared) = (0, 0, 0);
    for f in &files {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).expect("read")).expect("json");
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        let index = v["leafIdx"].as_u64().expect("leafIdx");
        let size = v["treeSize"].as_u64().expect("treeSize");
        let parsed = (h(&v["leafHash"]), root(&v["root"]), hashes(&v["proof"]));
        let result = match &parsed {
            (Some(leaf), Some(root), Some(proof)) => {
                verify_inclusion(leaf, index, size, proof, root).map_err(|e| e.to_string())
            }
            _ => Err("malformed hash".to_owned()),
        };
        assert_eq!(
            result.is_err(),
            want_err,
            "{}: {:?} ({})",
            f.display(),
            result,
            v["desc"]
        );
        if want_err {
            rejected += 1;
        } else {
            ok += 1;
            // Our own proof for the same leaf must be the published one.
            if let (_, Some(root), Some(proof)) = parsed
                && size <= 8
                && tree::root_at(&s, size).expect("root") == root
            {
                assert_eq!(
                    tree::inclusion_proof(&s, index, size).expect("proof"),
                    proof,
                    "{}",
                    f.display()
                );
                compared += 1;
            }
        }
    }
    assert!(
        ok >= 5 && rejected >= 70 && compared >= 5,
        "{ok} {rejected} {compared}"
    );
}

#[test]
fn transparency_dev_consistency_vectors() {
    let (_, s) = reference_tree();
    let mut files = vec![];
    json_files(&vectors_dir().join("consistency"), &mut files);
    assert!(files.len() > 80, "vectors missing: {}", files.len());
    let (mut ok, mut rejected, mut compared) = (0, 0, 0);
    for f in &files {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).expect("read")).expect("json");
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        let size1 = v["size1"].as_u64().expect("size1");
        let size2 = v["size2"].as_u64().expect("size2");
        let parsed = (root(&v["root1"]), root(&v["root2"]), hashes(&v["proof"]));
        let result = match &parsed {
            (Some(r1), Some(r2), Some(proof)) => {
                verify_consistency(size1, size2, r1, r2, proof).map_err(|e| e.to_string())
            }
            _ => Err("malformed hash".to_owned()),
        };
        assert_eq!(
            result.is_err(),
            want_err,
            "{}: {:?} ({})",
            f.display(),
            result,
            v["desc"]
        );
        if want_err {
            rejected += 1;
        } else {
            ok += 1;
            if let (Some(r1), Some(r2), Some(proof)) = parsed
                && size2 <= 8
                && tree::root_at(&s, size1).expect("root") == r1
                && tree::root_at(&s, size2).expect("root") == r2
            {
                assert_eq!(
                    tree::consistency_proof(&s, size1, size2).expect("proof"),
                    proof,
                    "{}",
                    f.display()
                );
                compared += 1;
            }
        }
    }
    assert!(
        ok >= 5 && rejected >= 70 && compared >= 5,
        "{ok} {rejected} {compared}"
    );
}

#[test]
fn verifier_rejects_out_of_range_arguments() {
    let r = Hash::empty();
    assert_eq!(
        verify_inclusion(&r, 0, 0, &[], &r),
        Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        verify_consistency(3, 2, &r, &r, &[r]),
        Err(ProofError::SizeDecreased { old: 3, new: 2 })
    );
    assert_eq!(
        verify_consistency(0, 2, &r, &r, &[]),
        Err(ProofError::EmptyOldTree)
    );
    assert_eq!(
        verify_consistency(2, 3, &r, &r, &[]),
        Err(ProofError::EmptyProof)
    );
    // Near the top of the u64 range nothing overflows.
    assert!(verify_inclusion(&r, u64::MAX - 1, u64::MAX, &[r; 64], &r).is_err());
    assert!(verify_consistency(u64::MAX - 1, u64::MAX, &r, &r, &[r; 64]).is_err());
}

// ---- 3. ct-merkle -------------------------------------------------------------

#[test]
fn proofs_match_ct_merkle_byte_for_byte() {
    use ct_merkle::mem_backed_tree::MemoryBackedTree;
    use sha2::Sha256;

    const M: usize = 150;
    let values: Vec<Vec<u8>> = (0..M).map(|i| format!("value {i}").into_bytes()).collect();
    let mut ours = MemoryStore::new();
    let mut theirs: MemoryBackedTree<Sha256, Vec<u8>> = MemoryBackedTree::new();
    for (n, v) in (1..).zip(&values) {
        tree::append_leaf(&mut ours, Hash::leaf(v)).expect("append");
        theirs.push(v.clone());
        let root = tree::root_at(&ours, n).expect("root");
        assert_eq!(
            theirs.root().as_bytes().as_slice(),
            root.as_bytes(),
            "root {n}"
        );
        for i in 0..n {
            let p = tree::inclusion_proof(&ours, i, n).expect("proof");
            let bytes: Vec<u8> = p.iter().flat_map(|h| h.0).collect();
            let usz = usize::try_from(i).expect("usize");
            assert_eq!(theirs.prove_inclusion(usz).as_bytes(), bytes.as_slice());
            theirs
                .root()
                .verify_inclusion(
                    &values[usz],
                    i,
                    &ct_merkle::InclusionProof::from_bytes(bytes),
                )
                .expect("ct-merkle accepts our inclusion proof");
        }
        for m in 1..n {
            let p = tree::consistency_proof(&ours, m, n).expect("proof");
            let bytes: Vec<u8> = p.iter().flat_map(|h| h.0).collect();
            let additions = usize::try_from(n - m).expect("usize");
            assert_eq!(
                theirs.prove_consistency(additions).as_bytes(),
                bytes.as_slice()
            );
        }
    }
}
