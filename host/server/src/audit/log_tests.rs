//! Tests of the SQLite audit log (`log.rs`) and the key (`key.rs`).

use crate::audit::key::AuditKey;
use crate::audit::log::*;
use kasbah_audit::{Entry, EntryBody, Log, LogError, LogSigner};
use kasbah_audit::{MemoryStore, TenantCreated};
use rusqlite::Connection;

fn db() -> Connection {
    let c = Connection::open_in_memory().expect("open");
    c.execute_batch(SCHEMA).expect("schema");
    c
}

fn entry(i: u64) -> Entry {
    Entry::new(
        i,
        EntryBody::TenantCreated(TenantCreated {
            tenant: format!("t{i}"),
            operator: String::new(),
        }),
    )
}

#[test]
fn sqlite_store_matches_the_memory_store_and_is_append_only() {
    let mut c = db();
    let mut mem = Log::new(MemoryStore::new());
    let mut size = 0;
    // Batches of varied sizes, including ones larger than the multi-row chunks.
    for batch in [1usize, 2, 3, 70, 1, 200, 5] {
        let es: Vec<Entry> = (size..size + batch as u64).map(entry).collect();
        let enc: Vec<Encoded> = es.iter().map(|e| Encoded::new(e).expect("enc")).collect();
        let tx = c.transaction().expect("tx");
        size = append(&tx, size, &enc).expect("append");
        tx.commit().expect("commit");
        mem.append_batch(&es).expect("mem");
    }
    assert_eq!(check(&c).expect("check"), size);
    let log = Log::new(SqliteStore::open(&c).expect("open"));
    for m in [1, 2, 3, 64, 100, 255, size] {
        assert_eq!(log.root_at(m).expect("root"), mem.root_at(m).expect("root"));
        for i in [0, m / 2, m - 1] {
            assert_eq!(
                log.inclusion_proof(i, m).expect("proof"),
                mem.inclusion_proof(i, m).expect("proof")
            );
        }
        assert_eq!(
            log.consistency_proof(1.max(m / 3), m).expect("proof"),
            mem.consistency_proof(1.max(m / 3), m).expect("proof")
        );
    }
    for sql in [
        "UPDATE audit_entries SET bytes = x'00' WHERE idx = 1",
        "DELETE FROM audit_entries WHERE idx = 1",
        "UPDATE audit_nodes SET hashes = x'00' WHERE leaf = 1",
        "DELETE FROM audit_nodes WHERE leaf = 1",
        "UPDATE audit_size SET size = 1",
    ] {
        let e = c.execute(sql, []).expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
}

#[test]
fn check_notices_tables_out_of_step() {
    let mut c = db();
    let enc: Vec<Encoded> = (0..5)
        .map(|i| Encoded::new(&entry(i)).expect("enc"))
        .collect();
    let tx = c.transaction().expect("tx");
    append(&tx, 0, &enc).expect("append");
    tx.commit().expect("commit");
    c.execute_batch(
        "DROP TRIGGER audit_entries_no_delete; DELETE FROM audit_entries WHERE idx = 4;",
    )
    .expect("tamper");
    let e = check(&c).expect_err("corrupt");
    assert!(e.to_string().contains("audit_entries ends at 4"), "{e}");
}

#[test]
fn receipts_and_checkpoints_verify() {
    let mut c = db();
    let key = AuditKey::from_signer(LogSigner::from_seed("kasbah.test/log", &[3; 32]).expect("k"));
    let enc: Vec<Encoded> = (0..9)
        .map(|i| Encoded::new(&entry(i)).expect("enc"))
        .collect();
    let tx = c.transaction().expect("tx");
    append(&tx, 0, &enc).expect("append");
    tx.commit().expect("commit");
    let stored = entries(&c, 3..4, None, 10).expect("entries").remove(0);
    let cache = NodeCache::default();
    let snap = Snapshot {
        conn: &c,
        size: 9,
        cache: Some(&cache),
    };
    let r = key.receipt(&snap, stored).expect("receipt");
    let v = kasbah_audit::verify_receipt(&r, &key.verifier(), None).expect("verify");
    assert_eq!(v.entry, entry(3));
    assert_eq!(v.checkpoint.checkpoint.size, 9);
    // Bytes that do not match the stored leaf are refused server-side.
    let mut bad = entries(&c, 3..4, None, 10).expect("entries").remove(0);
    bad.bytes = Encoded::new(&entry(99)).expect("enc").bytes;
    assert!(matches!(
        key.receipt(&snap, bad),
        Err(LogError::EntryMismatch { index: 3 })
    ));
    let ts = ["t5".to_string(), "t2".to_string(), "t7".to_string()];
    let only = entries(&c, 0..9, Some(&ts), 10).expect("e");
    assert_eq!(only.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 5, 7]);
    let page = entries(&c, 3..9, Some(&ts), 1).expect("e");
    assert_eq!(page.iter().map(|e| e.index).collect::<Vec<_>>(), [5]);
    let all = entries(&c, 2..9, None, 3).expect("e");
    assert_eq!(all.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 3, 4]);
}
