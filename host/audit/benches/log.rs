//! `cargo bench -p kasbah-audit` — audit log throughput and proof latency.
//!
//! Builds one in-memory log up to 10M entries (set `KASBAH_AUDIT_BENCH_MAX`
//! to change), appending real encoded run entries one by one, and at 1M and
//! at the end measures proof generation and verification on random indices
//! and historical sizes. Latencies are medians (and p99) of 20,000 calls.
//! Baseline in the same process: SHA-256 of the same entry bytes alone, the
//! floor of any append.

use kasbah_audit::entry::{Entry, EntryBody, RunExecuted};
use kasbah_audit::tree::{NodeId, NodeStore, nodes_for_size};
use kasbah_audit::{
    Hash, Log, LogSigner, MemoryStore, Receipt, verify_consistency, verify_inclusion,
    verify_receipt,
};
use kasbah_core::Digest;
use std::hint::black_box;
use std::time::{Duration, Instant};

const SAMPLES: usize = 20_000;

/// splitmix64: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn run_entry(i: u64, module: Digest) -> Entry {
    Entry::new(
        1_767_225_600_000 + i,
        EntryBody::RunExecuted(RunExecuted {
            run_id: format!("run-{i:012}"),
            tenant: "tenant-0042".into(),
            module,
            input: Digest::from_bytes([(i % 251) as u8; 32]),
            datasets: vec![],
            output: Some(Digest::from_bytes([(i % 241) as u8; 32])),
            output_label: vec!["ma-rabat-1".into()],
            zone: "ma-rabat-1".into(),
            adapter: None,
            policy_version: 7,
            outcome: "ok".into(),
            wall_time_us: 1000 + i % 977,
            fuel: Some(1_000_000 + i),
            peak_memory_bytes: 1 << 20,
            gpu_time_us: 0,
            gpu_bytes: 0,
            worker: None,
        }),
    )
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn measure(mut f: impl FnMut(usize)) -> Stats {
    let mut t: Vec<Duration> = (0..SAMPLES)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed()
        })
        .collect();
    t.sort_unstable();
    Stats {
        median: t[SAMPLES / 2],
        p99: t[SAMPLES * 99 / 100],
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn max_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn report(log: &Log<MemoryStore>, signer: &LogSigner, module: Digest) {
    let n = log.size().expect("size");
    let mut rng = Rng(n);
    println!("\n== {n} entries ==");
    println!(
        "store: {} hashes, {:.0} MiB (exactly 2n - popcount(n) x 32 B)",
        nodes_for_size(n),
        (nodes_for_size(n) * 32) as f64 / (1 << 20) as f64
    );

    // Inclusion proofs at the current size and at random historical sizes.
    let q: Vec<(u64, u64)> = (0..SAMPLES)
        .map(|_| {
            let size = if rng.below(2) == 0 {
                n
            } else {
                1 + rng.below(n)
            };
            (rng.below(size), size)
        })
        .collect();
    let mut proof_lens = Vec::with_capacity(SAMPLES);
    let st = measure(|i| {
        let p = log.inclusion_proof(q[i].0, q[i].1).expect("proof");
        proof_lens.push(p.len());
        black_box(p);
    });
    proof_lens.sort_unstable();
    println!(
        "inclusion proof:   median {:6.2} us  p99 {:6.2} us  size median {} hashes ({} B), max {}",
        us(st.median),
        us(st.p99),
        proof_lens[SAMPLES / 2],
        proof_lens[SAMPLES / 2] * 32,
        proof_lens[SAMPLES - 1]
    );

    // Consistency proofs between random historical sizes.
    let c: Vec<(u64, u64)> = (0..SAMPLES)
        .map(|_| {
            let new = if rng.below(2) == 0 {
                n
            } else {
                2 + rng.below(n - 1)
            };
            (1 + rng.below(new - 1), new)
        })
        .collect();
    let mut clens = Vec::with_capacity(SAMPLES);
    let st = measure(|i| {
        let p = log.consistency_proof(c[i].0, c[i].1).expect("proof");
        clens.push(p.len());
        black_box(p);
    });
    clens.sort_unstable();
    println!(
        "consistency proof: median {:6.2} us  p99 {:6.2} us  size median {} hashes ({} B), max {}",
        us(st.median),
        us(st.p99),
        clens[SAMPLES / 2],
        clens[SAMPLES / 2] * 32,
        clens[SAMPLES - 1]
    );

    let st = measure(|i| {
        black_box(log.root_at(q[i].1).expect("root"));
    });
    println!(
        "root at size:      median {:6.2} us  p99 {:6.2} us",
        us(st.median),
        us(st.p99)
    );

    // Verification (client side): precompute inputs, time only the verifier.
    let roots: Vec<Hash> = q
        .iter()
        .map(|&(_, s)| log.root_at(s).expect("root"))
        .collect();
    let proofs: Vec<Vec<Hash>> = q
        .iter()
        .map(|&(i, s)| log.inclusion_proof(i, s).expect("proof"))
        .collect();
    let leaves: Vec<Hash> = q
        .iter()
        .map(|&(i, _)| {
            log.store()
                .node(NodeId::new(0, i))
                .expect("read")
                .expect("leaf")
        })
        .collect();
    let st = measure(|i| {
        verify_inclusion(&leaves[i], q[i].0, q[i].1, &proofs[i], &roots[i]).expect("verify");
    });
    println!(
        "verify inclusion:  median {:6.2} us  p99 {:6.2} us",
        us(st.median),
        us(st.p99)
    );
    let croots: Vec<(Hash, Hash)> = c
        .iter()
        .map(|&(a, b)| (log.root_at(a).expect("root"), log.root_at(b).expect("root")))
        .collect();
    let cproofs: Vec<Vec<Hash>> = c
        .iter()
        .map(|&(a, b)| log.consistency_proof(a, b).expect("proof"))
        .collect();
    let st = measure(|i| {
        verify_consistency(c[i].0, c[i].1, &croots[i].0, &croots[i].1, &cproofs[i])
            .expect("verify");
    });
    println!(
        "verify consistency: median {:5.2} us  p99 {:6.2} us",
        us(st.median),
        us(st.p99)
    );

    // A whole receipt: note parse + Ed25519 verify + inclusion + decode.
    let cp = log.checkpoint(signer).expect("checkpoint");
    let idx = rng.below(n);
    let bytes = run_entry(idx, module).encode().expect("encode");
    let receipt: Receipt = log.receipt(bytes, idx, &cp).expect("receipt");
    let json = serde_json::to_string(&receipt).expect("json");
    let key = signer.verifier();
    let st = measure(|_| {
        black_box(verify_receipt(&receipt, &key, Some(module)).expect("verify"));
    });
    println!(
        "verify receipt:    median {:6.2} us  p99 {:6.2} us  (receipt JSON {} B)",
        us(st.median),
        us(st.p99),
        json.len()
    );
    let st = measure(|_| {
        black_box(log.checkpoint(signer).expect("checkpoint"));
    });
    println!(
        "sign checkpoint:   median {:6.2} us  p99 {:6.2} us",
        us(st.median),
        us(st.p99)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let max: u64 = std::env::var("KASBAH_AUDIT_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let mut checkpoints: Vec<u64> = [1_000_000u64, max]
        .into_iter()
        .filter(|&c| c <= max)
        .collect();
    checkpoints.dedup();
    let signer = LogSigner::from_seed("bench.kasbah/audit", &[1; 32]).expect("key");
    let module = Digest::of(b"bench module");

    // Baseline: encoding + SHA-256 of the same entries, no tree.
    let base_n = 1_000_000u64;
    let t = Instant::now();
    for i in 0..base_n {
        black_box(Hash::leaf(&run_entry(i, module).encode().expect("encode")));
    }
    let base = t.elapsed().as_secs_f64() / base_n as f64;
    let entry_len = run_entry(0, module).encode().expect("encode").len();
    println!("kasbah-audit bench: in-memory store, entries of {entry_len} B");
    println!(
        "baseline (encode + leaf hash only): {:.2} M entries/s",
        1e-6 / base
    );

    let t = Instant::now();
    let mut h = Hash::empty();
    for _ in 0..base_n {
        h = Hash::node(&h, &h);
    }
    black_box(h);
    println!(
        "baseline SHA-256 node hash (65 B): {:.0} ns",
        t.elapsed().as_secs_f64() / base_n as f64 * 1e9
    );

    // Tree-only append rate (leaf hashes precomputed), one by one and batched.
    let leaves: Vec<Hash> = (0..base_n).map(|i| Hash::leaf(&i.to_be_bytes())).collect();
    let mut single = Log::new(MemoryStore::with_capacity(base_n));
    let t = Instant::now();
    for l in &leaves {
        single
            .append_leaf_hashes(std::slice::from_ref(l))
            .expect("append");
    }
    let tree_single = t.elapsed().as_secs_f64() / base_n as f64;
    let mut batched = Log::new(MemoryStore::with_capacity(base_n));
    let t = Instant::now();
    for chunk in leaves.chunks(1000) {
        batched.append_leaf_hashes(chunk).expect("append");
    }
    let tree_batched = t.elapsed().as_secs_f64() / base_n as f64;
    assert_eq!(single.root().expect("root"), batched.root().expect("root"));
    println!(
        "tree append only (leaf hash given): {:.2} M/s one by one, {:.2} M/s in batches of 1000",
        1e-6 / tree_single,
        1e-6 / tree_batched
    );
    drop((single, batched, leaves));

    // The real thing: encode + hash + append, one entry at a time.
    let mut log = Log::new(MemoryStore::with_capacity(max));
    let mut done = 0u64;
    let mut spent = 0f64;
    for cp in checkpoints {
        let t = Instant::now();
        while done < cp {
            log.append(&run_entry(done, module)).expect("append");
            done += 1;
        }
        spent += t.elapsed().as_secs_f64();
        println!(
            "\nappend (encode + hash + tree), 0..{done}: {:.2} M entries/s ({:.0} ns/entry, {:.2}x the baseline)",
            done as f64 / spent / 1e6,
            spent / done as f64 * 1e9,
            spent / done as f64 / base
        );
        report(&log, &signer, module);
    }
    if let Some(rss) = max_rss_mib() {
        println!(
            "\npeak RSS {rss:.0} MiB (store {} MiB)",
            log.store().heap_bytes() >> 20
        );
    }
}
