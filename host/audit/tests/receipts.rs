//! End to end: a log appends entries, signs checkpoints and hands out
//! receipts; a client verifies them offline with only the public key, and a
//! watcher follows the checkpoints. Then the operator cheats in every way we
//! can think of, and verification must fail with the right reason.

use kasbah_audit::checkpoint::Checkpoint;
use kasbah_audit::tree::NodeId;
use kasbah_audit::{
    CheckpointError, Denial, Entry, EntryBody, Hash, Log, LogError, LogSigner, MemoryStore,
    ModulePublished, NoteError, ProofError, Receipt, RunExecuted, TenantCreated, VerifyError,
    WatchError, WatchOutcome, Watcher, verify_receipt,
};
use kasbah_core::Digest;

const ORIGIN: &str = "kasbah.test/audit";

fn key() -> LogSigner {
    LogSigner::from_seed(ORIGIN, &[42; 32]).expect("key")
}

fn module(i: u64) -> Digest {
    Digest::of(format!("module {i}").as_bytes())
}

fn entry(i: u64) -> Entry {
    let body = match i % 4 {
        0 => EntryBody::TenantCreated(TenantCreated {
            tenant: format!("t{i}"),
            operator: "op".into(),
        }),
        1 => EntryBody::ModulePublished(ModulePublished {
            tenant: "t0".into(),
            module: module(i),
            size: 1000 + i,
            name: "m".into(),
            version: format!("0.{i}.0"),
            signer: None,
            signers: vec![],
        }),
        2 => EntryBody::RunExecuted(RunExecuted {
            run_id: format!("run-{i}"),
            tenant: "t0".into(),
            module: module(i - 1),
            input: Digest::of(&i.to_be_bytes()),
            datasets: vec![],
            output: None,
            output_label: vec!["ma-rabat-1".into()],
            zone: "ma-rabat-1".into(),
            adapter: None,
            policy_version: 1,
            outcome: "trap".into(),
            wall_time_us: i,
            fuel: None,
            peak_memory_bytes: 0,
            gpu_time_us: 0,
            gpu_bytes: 0,
            worker: None,
        }),
        _ => EntryBody::Denial(Denial {
            tenant: "t0".into(),
            module: None,
            run_id: None,
            action: "publish".into(),
            reason: "module imports wasi:sockets".into(),
        }),
    };
    Entry::new(1_767_225_600_000 + i, body)
}

/// A log with `n` entries and the server's entry table (canonical bytes).
fn log_with(n: u64) -> (Log<MemoryStore>, Vec<Vec<u8>>) {
    let mut log = Log::new(MemoryStore::new());
    let mut table = Vec::new();
    for i in 0..n {
        let a = log.append(&entry(i)).expect("append");
        assert_eq!(a.index, i);
        table.push(a.bytes);
    }
    (log, table)
}

#[test]
fn every_receipt_verifies_offline() {
    let k = key();
    let (log, table) = log_with(37);
    let cp = log.checkpoint(&k).expect("checkpoint");
    assert_eq!(cp.checkpoint.size, 37);
    let vkey = k.verifier().to_string();
    // The client has only the vkey string and the receipt JSON.
    let client_key = vkey.parse().expect("vkey");
    for (i, bytes) in (0u64..).zip(&table) {
        let r = log.receipt(bytes.clone(), i, &cp).expect("receipt");
        let json = serde_json::to_string(&r).expect("json");
        let r: Receipt = serde_json::from_str(&json).expect("parse");
        let v = verify_receipt(&r, &client_key, None).expect("verifies");
        assert_eq!(v.index, i);
        assert_eq!(v.entry, entry(i));
        assert_eq!(v.checkpoint.checkpoint.size, 37);
        if let Some(m) = entry(i).body.module() {
            verify_receipt(&r, &client_key, Some(m)).expect("names the module");
        }
    }
    // A receipt against an older checkpoint still verifies.
    let old = log.checkpoint_at(5, &k).expect("checkpoint");
    let r = log.receipt(table[2].clone(), 2, &old).expect("receipt");
    verify_receipt(&r, &client_key, Some(module(1))).expect("old checkpoint");
    assert!(matches!(
        log.receipt(table[7].clone(), 7, &old),
        Err(LogError::Tree(_))
    ));
}

#[test]
fn receipt_json_shape_is_stable() {
    let k = key();
    let (log, table) = log_with(3);
    let cp = log.checkpoint(&k).expect("checkpoint");
    let r = log.receipt(table[1].clone(), 1, &cp).expect("receipt");
    let j = serde_json::to_value(&r).expect("json");
    let keys: Vec<&str> = j
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5);
    for k in ["version", "entry", "index", "inclusion_proof", "checkpoint"] {
        assert!(keys.contains(&k), "{k}");
    }
    assert_eq!(j["version"], 1);
    assert_eq!(j["index"], 1);
    assert!(
        j["checkpoint"]
            .as_str()
            .expect("note")
            .starts_with(&format!(
                "{ORIGIN}\n3\n{}\n\n\u{2014} {ORIGIN} ",
                log.root().expect("root")
            ))
    );
    let mut extra = j.clone();
    extra["surprise"] = serde_json::json!(1);
    assert!(serde_json::from_value::<Receipt>(extra).is_err());
}

#[test]
fn receipt_for_another_module_is_refused() {
    let k = key();
    let (log, table) = log_with(8);
    let cp = log.checkpoint(&k).expect("checkpoint");
    let r = log.receipt(table[2].clone(), 2, &cp).expect("receipt");
    let err = verify_receipt(&r, &k.verifier(), Some(module(5))).expect_err("other module");
    assert_eq!(
        err,
        VerifyError::ModuleMismatch {
            expected: module(5),
            found: module(1)
        }
    );
    assert!(err.to_string().contains("names module sha256:"));
    let r0 = log.receipt(table[0].clone(), 0, &cp).expect("receipt");
    assert!(matches!(
        verify_receipt(&r0, &k.verifier(), Some(module(1))),
        Err(VerifyError::NoModule {
            kind: "tenant_created",
            ..
        })
    ));
}

#[test]
fn tampered_entry_fails_inclusion() {
    let k = key();
    let (log, mut table) = log_with(20);
    let cp = log.checkpoint(&k).expect("checkpoint");
    // The operator rewrites entry 6 in its table (a run: pretend another
    // module ran).
    let mut e = entry(6);
    if let EntryBody::RunExecuted(r) = &mut e.body {
        r.module = module(9);
    }
    table[6] = e.encode().expect("encode");
    // The log itself refuses to issue a receipt that contradicts its tree...
    assert!(matches!(
        log.receipt(table[6].clone(), 6, &cp),
        Err(LogError::EntryMismatch { index: 6 })
    ));
    // ...and a receipt forged around it does not verify.
    let proof = log.inclusion_proof(6, 20).expect("proof");
    let forged = Receipt::new(table[6].clone(), 6, proof.clone(), &cp);
    let err = verify_receipt(&forged, &k.verifier(), Some(module(9))).expect_err("forged");
    assert!(
        matches!(
            err,
            VerifyError::InclusionFailed {
                index: 6,
                size: 20,
                reason: ProofError::RootMismatch
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("entry is not included at index 6"));
    // A single flipped bit in the stored bytes is enough.
    let mut bytes = entry(6).encode().expect("encode");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let flipped = Receipt::new(bytes, 6, proof.clone(), &cp);
    assert!(matches!(
        verify_receipt(&flipped, &k.verifier(), None),
        Err(VerifyError::InclusionFailed { .. })
    ));
    // Moving a true entry to another index fails too.
    let honest = log
        .receipt(entry(6).encode().expect("encode"), 6, &cp)
        .expect("ok");
    let mut moved = honest.clone();
    moved.index = 7;
    assert!(matches!(
        verify_receipt(&moved, &k.verifier(), None),
        Err(VerifyError::InclusionFailed { index: 7, .. })
    ));
    let mut bad_proof = honest.clone();
    bad_proof.inclusion_proof[2].0[0] ^= 0x80;
    assert!(matches!(
        verify_receipt(&bad_proof, &k.verifier(), None),
        Err(VerifyError::InclusionFailed { .. })
    ));
    let mut short = honest;
    short.inclusion_proof.pop();
    assert!(matches!(
        verify_receipt(&short, &k.verifier(), None),
        Err(VerifyError::InclusionFailed {
            reason: ProofError::TooShort,
            ..
        })
    ));
}

#[test]
fn tampered_stored_node_fails_against_earlier_checkpoint() {
    let k = key();
    let (mut log, table) = log_with(16);
    let cp = log.checkpoint(&k).expect("checkpoint");
    let mut watcher = Watcher::new(k.verifier(), &cp.note).expect("watcher");
    // Someone with write access to the node store edits the subtree hash
    // over leaves 4..8, which is in the inclusion proofs of leaves 0..4.
    assert!(
        log.store_mut()
            .corrupt(NodeId::new(2, 1), Hash::leaf(b"evil"))
    );
    // The log checks every receipt before handing it out...
    assert!(matches!(
        log.receipt(table[1].clone(), 1, &cp),
        Err(LogError::ProofFailed { index: 1, .. })
    ));
    // ...and a receipt assembled from the corrupted store anyway fails
    // offline against the checkpoint signed before the corruption.
    let r = Receipt::new(
        table[1].clone(),
        1,
        log.inclusion_proof(1, 16).expect("proof"),
        &cp,
    );
    assert!(matches!(
        verify_receipt(&r, &k.verifier(), None),
        Err(VerifyError::InclusionFailed { .. })
    ));
    // Leaves whose proofs do not cross the node are unaffected.
    let r9 = log.receipt(table[9].clone(), 9, &cp).expect("receipt");
    verify_receipt(&r9, &k.verifier(), None).expect("unaffected");

    // Corrupting the top perfect subtree changes every later root: a
    // checkpoint signed over it cannot be proven consistent with the old one.
    assert!(
        log.store_mut()
            .corrupt(NodeId::new(4, 0), Hash::leaf(b"evil"))
    );
    log.append(&entry(16)).expect("append");
    let cp2 = log.checkpoint(&k).expect("checkpoint");
    let proof = log.consistency_proof(16, 17).expect("proof");
    let err = watcher.update(&cp2.note, &proof).expect_err("fork");
    assert!(
        matches!(
            err,
            WatchError::Inconsistent {
                from: 16,
                to: 17,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("LOG FORK"));
    assert_eq!(watcher.trusted().checkpoint.size, 16);
}

#[test]
fn dropped_entries_are_a_rollback_and_rewritten_history_is_a_fork() {
    let k = key();
    let (log, _) = log_with(10);
    let cp10 = log.checkpoint(&k).expect("checkpoint");
    let mut watcher = Watcher::new(k.verifier(), &cp10.note).expect("watcher");

    // The operator drops the last three entries and serves the shorter log.
    let (short, _) = log_with(7);
    let cp7 = short.checkpoint(&k).expect("checkpoint");
    let err = watcher.update(&cp7.note, &[]).expect_err("rollback");
    assert!(
        matches!(
            &err,
            WatchError::Rollback {
                trusted: 10,
                offered: 7,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("LOG ROLLBACK"));
    // Receipts for the dropped entries still verify against the old checkpoint:
    // the client keeps its proof even when the log "forgets".
    let bytes9 = entry(9).encode().expect("encode");
    let r9 = log.receipt(bytes9, 9, &cp10).expect("receipt");
    verify_receipt(&r9, &k.verifier(), None).expect("still valid");

    // It then appends different entries up to the same size: equivocation.
    let mut forked = short;
    for i in 100..103 {
        forked.append(&entry(i)).expect("append");
    }
    let cpf = forked.checkpoint(&k).expect("checkpoint");
    let err = watcher.update(&cpf.note, &[]).expect_err("fork");
    match &err {
        WatchError::Fork {
            size: 10,
            trusted_note,
            offered_note,
            ..
        } => {
            // Both signed notes are kept as evidence.
            assert_eq!(trusted_note, &cp10.note);
            assert_eq!(offered_note, &cpf.note);
        }
        other => panic!("expected a fork, got {other:?}"),
    }
    // And grows past it: no consistency proof can exist.
    forked.append(&entry(103)).expect("append");
    forked.append(&entry(104)).expect("append");
    let cpg = forked.checkpoint(&k).expect("checkpoint");
    let proof = forked.consistency_proof(10, 12).expect("proof");
    assert!(matches!(
        watcher.update(&cpg.note, &proof),
        Err(WatchError::Inconsistent {
            from: 10,
            to: 12,
            ..
        })
    ));
    assert_eq!(watcher.trusted().note, cp10.note);
}

#[test]
fn re_signed_by_another_key_is_refused() {
    let k = key();
    let (log, table) = log_with(5);
    let cp = log.checkpoint(&k).expect("checkpoint");
    let honest = log.receipt(table[3].clone(), 3, &cp).expect("receipt");

    // Same log name, different key (a stolen name, or an unannounced rotation).
    let impostor = LogSigner::from_seed(ORIGIN, &[7; 32]).expect("key");
    let cp_i = log.checkpoint(&impostor).expect("checkpoint");
    let mut r = honest.clone();
    r.checkpoint = cp_i.note.clone();
    let err = verify_receipt(&r, &k.verifier(), None).expect_err("wrong key");
    assert!(
        matches!(
            &err,
            VerifyError::Checkpoint(CheckpointError::Note(NoteError::WrongKey { .. }))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("different key"));

    // A different log altogether.
    let other = LogSigner::from_seed("other.test/log", &[7; 32]).expect("key");
    r.checkpoint = log.checkpoint(&other).expect("checkpoint").note;
    assert!(matches!(
        verify_receipt(&r, &k.verifier(), None),
        Err(VerifyError::Checkpoint(CheckpointError::Note(
            NoteError::NotSignedBy { .. }
        )))
    ));

    // The right key, but the checkpoint text was edited after signing.
    let edited = cp.note.replacen("\n5\n", "\n6\n", 1);
    r.checkpoint = edited;
    assert!(matches!(
        verify_receipt(&r, &k.verifier(), None),
        Err(VerifyError::Checkpoint(CheckpointError::Note(
            NoteError::BadSignature
        )))
    ));

    // The right key signing a checkpoint for another origin.
    let text = Checkpoint::new("elsewhere.test/log", 5, cp.checkpoint.root).text();
    r.checkpoint = k.sign_note(&text).expect("sign");
    assert!(matches!(
        verify_receipt(&r, &k.verifier(), None),
        Err(VerifyError::Checkpoint(
            CheckpointError::OriginMismatch { .. }
        ))
    ));

    // The watcher refuses the impostor's checkpoint as well.
    let mut w = Watcher::new(k.verifier(), &cp.note).expect("watcher");
    assert!(matches!(
        w.update(&cp_i.note, &[]),
        Err(WatchError::Checkpoint(CheckpointError::Note(
            NoteError::WrongKey { .. }
        )))
    ));
    // Unknown receipt versions are refused, not guessed at.
    let mut v2 = honest;
    v2.version = 2;
    assert_eq!(
        verify_receipt(&v2, &k.verifier(), None),
        Err(VerifyError::UnsupportedVersion(2))
    );
}

#[test]
fn watcher_follows_an_honest_log() {
    let k = key();
    let mut log = Log::new(MemoryStore::new());
    let cp0 = log.checkpoint(&k).expect("empty checkpoint");
    assert_eq!(cp0.checkpoint.root, Hash::empty());
    let mut w = Watcher::new(k.verifier(), &cp0.note).expect("watcher");
    let mut size = 0;
    for step in [1u64, 1, 2, 5, 8, 16, 3, 64] {
        for _ in 0..step {
            log.append(&entry(size)).expect("append");
            size += 1;
        }
        let cp = log.checkpoint(&k).expect("checkpoint");
        let from = w.trusted().checkpoint.size;
        let proof = if from == 0 {
            vec![]
        } else {
            log.consistency_proof(from, size).expect("proof")
        };
        assert_eq!(
            w.update(&cp.note, &proof).expect("advance"),
            WatchOutcome::Advanced { from, to: size }
        );
        assert_eq!(
            w.update(&cp.note, &[]).expect("same"),
            WatchOutcome::Unchanged
        );
    }
    // A consistency proof for other sizes does not let it advance.
    log.append(&entry(size)).expect("append");
    let cp = log.checkpoint(&k).expect("checkpoint");
    let wrong = log.consistency_proof(size - 1, size + 1).expect("proof");
    assert!(matches!(
        w.update(&cp.note, &wrong),
        Err(WatchError::Inconsistent { .. })
    ));
    assert!(w.update(&cp.note, &[]).is_err(), "a proof is required");
}
