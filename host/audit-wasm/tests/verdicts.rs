//! The verdicts the console's page gets from the wasm verifier, checked
//! natively (the same code the wasm32 build runs): a good receipt, every
//! kind of tampering, a consistent and a forked checkpoint, bad inputs.
//! The C ABI itself is exercised in the browser (tests/tests/console.rs).

use kasbah_audit::{Entry, EntryBody, Log, LogSigner, LogVerifier, MemoryStore, TenantCreated};
use kasbah_audit_wasm::{checkpoint_verdict, receipt_verdict};
use serde_json::json;

const ORIGIN: &str = "kasbah.test/console";

fn entry(i: u64) -> Entry {
    Entry::new(
        1_767_225_600_000 + i,
        EntryBody::TenantCreated(TenantCreated {
            tenant: format!("t{i}"),
            operator: "op".into(),
        }),
    )
}

fn log(n: u64) -> (Log<MemoryStore>, Vec<Vec<u8>>) {
    let mut log = Log::new(MemoryStore::new());
    let bytes = (0..n)
        .map(|i| log.append(&entry(i)).expect("append").bytes)
        .collect();
    (log, bytes)
}

fn signer() -> LogSigner {
    LogSigner::from_seed(ORIGIN, &[7; 32]).expect("key")
}

fn vkey() -> LogVerifier {
    signer().verifier()
}

#[test]
fn a_receipt_verifies_and_every_tampering_fails() {
    let (log, bytes) = log(9);
    let cp = log.checkpoint(&signer()).expect("checkpoint");
    let r = log.receipt(bytes[4].clone(), 4, &cp).expect("receipt");
    let good = serde_json::to_value(&r).expect("json");
    let v = receipt_verdict(&good.to_string(), &vkey()).expect("verifies");
    assert_eq!(v["kind"], "tenant_created");
    assert_eq!(v["index"], 4);
    assert_eq!(v["tree_size"], 9);
    assert_eq!(v["entry"]["tenant"], "t4");

    let mut wrong_index = good.clone();
    wrong_index["index"] = json!(5);
    let mut other_entry = good.clone();
    other_entry["entry"] = serde_json::to_value(log.receipt(bytes[5].clone(), 5, &cp).expect("r"))
        .expect("json")["entry"]
        .clone();
    let mut short_proof = good.clone();
    short_proof["inclusion_proof"]
        .as_array_mut()
        .expect("array")
        .pop();
    let mut forged_size = good.clone();
    forged_size["checkpoint"] = json!(
        good["checkpoint"]
            .as_str()
            .expect("note")
            .replacen("\n9\n", "\n10\n", 1)
    );
    for (what, bad) in [
        ("index", wrong_index),
        ("entry", other_entry),
        ("proof", short_proof),
        ("checkpoint", forged_size),
    ] {
        let e = receipt_verdict(&bad.to_string(), &vkey()).expect_err(what);
        assert!(!e.is_empty(), "{what}");
    }
    let other_key = LogSigner::from_seed(ORIGIN, &[8; 32])
        .expect("key")
        .verifier();
    let e = receipt_verdict(&good.to_string(), &other_key).expect_err("other key");
    assert!(e.contains("checkpoint rejected"), "{e}");
    assert!(receipt_verdict("{not json", &vkey()).is_err());
}

#[test]
fn checkpoints_advance_only_along_a_consistency_proof() {
    let (log, _) = log(12);
    let old = log.checkpoint_at(5, &signer()).expect("old").note;
    let new = log.checkpoint(&signer()).expect("new").note;
    let proof = log.consistency_proof(5, 12).expect("proof");
    let input = |pinned: Option<&str>, offered: &str, proof: &[kasbah_audit::Hash]| {
        json!({"pinned": pinned, "offered": offered, "proof": proof}).to_string()
    };
    let v = checkpoint_verdict(&input(None, &new, &[]), &vkey()).expect("first");
    assert_eq!(v["consistency"], "first");
    let v = checkpoint_verdict(&input(Some(&old), &new, &proof), &vkey()).expect("advances");
    assert_eq!(v["consistency"], "advanced");
    assert_eq!(v["tree_size"], 12);
    let v = checkpoint_verdict(&input(Some(&new), &new, &[]), &vkey()).expect("same");
    assert_eq!(v["consistency"], "unchanged");
    // Without the proof, or with a proof for other sizes: refused.
    assert!(checkpoint_verdict(&input(Some(&old), &new, &[]), &vkey()).is_err());
    let wrong = log.consistency_proof(4, 12).expect("proof");
    assert!(checkpoint_verdict(&input(Some(&old), &new, &wrong), &vkey()).is_err());
    // A rollback.
    let e = checkpoint_verdict(&input(Some(&new), &old, &[]), &vkey()).expect_err("rollback");
    assert!(e.contains("ROLLBACK"), "{e}");
    // A fork: a log signing a different tree of size 12 (one entry changed).
    let mut forked = Log::new(MemoryStore::new());
    for i in 0..12 {
        let e = if i == 3 { entry(100) } else { entry(i) };
        forked.append(&e).expect("append");
    }
    let fork = forked.checkpoint(&signer()).expect("fork").note;
    let e = checkpoint_verdict(&input(Some(&new), &fork, &[]), &vkey()).expect_err("fork");
    assert!(e.contains("FORK"), "{e}");
    let fork_proof = forked.consistency_proof(5, 12).expect("proof");
    let e = checkpoint_verdict(&input(Some(&old), &fork, &fork_proof), &vkey()).expect_err("fork");
    assert!(e.contains("FORK"), "{e}");
    // Unknown fields and a note signed by someone else.
    assert!(checkpoint_verdict(r#"{"offered":"x","extra":1}"#, &vkey()).is_err());
    let stranger = LogSigner::from_seed(ORIGIN, &[9; 32]).expect("key");
    let note = log.checkpoint(&stranger).expect("cp").note;
    assert!(checkpoint_verdict(&input(None, &note, &[]), &vkey()).is_err());
}

#[test]
fn inputs_over_the_bound_are_refused_before_any_write() {
    use kasbah_audit_wasm::{FAILED, MAX_INPUT, alloc, dealloc, result_len, result_ptr};
    assert!(alloc(MAX_INPUT + 1).is_null());
    let p = alloc(MAX_INPUT);
    assert!(!p.is_null());
    // SAFETY: p is from alloc(MAX_INPUT), freed once; the length check
    // comes before the bytes are read.
    unsafe {
        let status = kasbah_audit_wasm::verify_receipt(p, MAX_INPUT + 1, p, 0);
        assert_eq!(status, FAILED);
        let out = std::slice::from_raw_parts(result_ptr(), result_len());
        assert!(std::str::from_utf8(out).expect("utf-8").contains("limit"));
        dealloc(p, MAX_INPUT);
    }
}
