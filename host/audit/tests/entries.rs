//! The canonical entry format (version 1) is frozen: these bytes and leaf
//! hashes must never change. A failure here means a change would make old
//! receipts unverifiable; add a new format version or entry type instead.

use kasbah_audit::entry::{ENTRY_FORMAT_V1, MAX_SET_LEN, MAX_STR_LEN};
use kasbah_audit::{
    Denial, Entry, EntryBody, EntryError, Hash, ModulePublished, PolicySet, RunExecuted,
    SigningKeyRevoked, TenantCreated,
};
use kasbah_core::Digest;

const T: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn samples() -> Vec<Entry> {
    vec![
        Entry::new(
            T,
            EntryBody::TenantCreated(TenantCreated {
                tenant: "acme".into(),
                operator: "op-1".into(),
            }),
        ),
        Entry::new(
            T + 1,
            EntryBody::PolicySet(PolicySet {
                tenant: "acme".into(),
                policy: Digest::of(b"policy v3"),
                policy_version: 3,
            }),
        ),
        Entry::new(
            T + 2,
            EntryBody::ModulePublished(ModulePublished {
                tenant: "acme".into(),
                module: Digest::of(b"module bytes"),
                size: 12,
                name: "hello".into(),
                version: "1.0.0".into(),
                signer: Some("acme.example/release+1a2b3c4d".into()),
                signers: vec![],
            }),
        ),
        Entry::new(
            T + 3,
            EntryBody::RunExecuted(RunExecuted {
                run_id: "run-1".into(),
                tenant: "acme".into(),
                module: Digest::of(b"module bytes"),
                input: Digest::of(b"input"),
                datasets: vec![Digest::of(b"weights")],
                output: Some(Digest::of(b"output")),
                output_label: vec!["eu-paris-1".into(), "ma-rabat-1".into()],
                zone: "ma-rabat-1".into(),
                adapter: Some("llvmpipe-0".into()),
                policy_version: 3,
                outcome: "ok".into(),
                wall_time_us: 1234,
                fuel: Some(5000),
                peak_memory_bytes: 65536,
                gpu_time_us: 77,
                gpu_bytes: 4096,
                worker: None,
            }),
        ),
        Entry::new(
            T + 4,
            EntryBody::Denial(Denial {
                tenant: "acme".into(),
                module: None,
                run_id: Some("run-2".into()),
                action: "run".into(),
                reason: "residency_violation".into(),
            }),
        ),
    ]
}

/// Frozen v1 bytes of `samples()`, and their RFC 6962 leaf hashes.
const GOLDEN: [(&str, &str); 5] = [
    (
        "01010000019b76daa8000000000461636d65000000046f702d31",
        "15904b850c88a7df01db24a0cb203b879ad787a334d3cf4b06d8efdbf7d6d547",
    ),
    (
        "01020000019b76daa8010000000461636d655c935e1cb451d1eb169d9e1342ca0a65e60ff6d5f153cc7206a513d355a9331f0000000000000003",
        "624919b117d7f73900e6cdfdfab174c3efaf142b1e28c0f1f09625480a8f41c8",
    ),
    (
        "01030000019b76daa8020000000461636d655c073b6de205a83e4df87dcd07111be224ad4435a8c08ca0ba10e68dcf38fe92000000000000000c0000000568656c6c6f00000005312e302e30010000001d61636d652e6578616d706c652f72656c656173652b3161326233633464",
        "c8121911261208e90d0871de47a6ff01ab211b6132f08e21a361db04ec9b1cd1",
    ),
    (
        "01040000019b76daa8030000000572756e2d310000000461636d655c073b6de205a83e4df87dcd07111be224ad4435a8c08ca0ba10e68dcf38fe92c96c6d5be8d08a12e7b5cdc1b207fa6b2430974c86803d8891675e76fd992c20000000019a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c01e0ee8bb50685e05fa0f47ed04203ae953fdfd055f5bd2892ea186504254f8c3a000000020000000a65752d70617269732d310000000a6d612d72616261742d310000000a6d612d72616261742d31010000000a6c6c766d706970652d300000000000000003000000026f6b00000000000004d20100000000000013880000000000010000000000000000004d0000000000001000",
        "caa9393b5cad4711f8ac03c7dc8249d8b13a6a5ca5427f9c4e0f90da21cccdf8",
    ),
    (
        "01050000019b76daa8040000000461636d6500010000000572756e2d320000000372756e000000137265736964656e63795f76696f6c6174696f6e",
        "059fb5bb803781c154b1facc56b33ad215e3fcdc49a1cbc6ea9fafc379287ccd",
    ),
];

#[test]
fn encoding_is_frozen() {
    for (e, (bytes, leaf)) in samples().iter().zip(GOLDEN) {
        let b = e.encode().expect("encode");
        assert_eq!(hex::encode(&b), bytes, "{}", e.body.kind());
        assert_eq!(Hash::leaf(&b).hex(), leaf);
        assert_eq!(e.leaf_hash().expect("hash").hex(), leaf);
        let back = Entry::decode(&b).expect("decode");
        assert_eq!(&back, e);
    }
}

/// The same bytes assembled by hand from the grammar in `entry.rs`, without
/// the encoder: the golden hex above is the documented format.
#[test]
fn golden_bytes_follow_the_documented_grammar() {
    fn u64(v: u64) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }
    fn s(v: &str) -> Vec<u8> {
        let mut o = (v.len() as u32).to_be_bytes().to_vec();
        o.extend_from_slice(v.as_bytes());
        o
    }
    fn d(v: &[u8]) -> Vec<u8> {
        Digest::of(v).as_bytes().to_vec()
    }
    fn head(tag: u8, t: u64) -> Vec<u8> {
        let mut o = vec![ENTRY_FORMAT_V1, tag];
        o.extend(u64(t));
        o
    }
    let expected: Vec<Vec<u8>> = vec![
        [head(1, T), s("acme"), s("op-1")].concat(),
        [head(2, T + 1), s("acme"), d(b"policy v3"), u64(3)].concat(),
        [
            head(3, T + 2),
            s("acme"),
            d(b"module bytes"),
            u64(12),
            s("hello"),
            s("1.0.0"),
            vec![1],
            s("acme.example/release+1a2b3c4d"),
        ]
        .concat(),
        [
            head(4, T + 3),
            s("run-1"),
            s("acme"),
            d(b"module bytes"),
            d(b"input"),
            1u32.to_be_bytes().to_vec(),
            d(b"weights"),
            vec![1],
            d(b"output"),
            2u32.to_be_bytes().to_vec(),
            s("eu-paris-1"),
            s("ma-rabat-1"),
            s("ma-rabat-1"),
            vec![1],
            s("llvmpipe-0"),
            u64(3),
            s("ok"),
            u64(1234),
            vec![1],
            u64(5000),
            u64(65536),
            u64(77),
            u64(4096),
        ]
        .concat(),
        [
            head(5, T + 4),
            s("acme"),
            vec![0],
            vec![1],
            s("run-2"),
            s("run"),
            s("residency_violation"),
        ]
        .concat(),
    ];
    for (want, (golden, _)) in expected.iter().zip(GOLDEN) {
        assert_eq!(hex::encode(want), golden);
    }
}

#[test]
fn sets_encode_in_canonical_order_whatever_the_input_order() {
    let mut e = samples().remove(3);
    let EntryBody::RunExecuted(r) = &mut e.body else {
        panic!("sample 3 is a run")
    };
    r.output_label = vec![
        "ma-rabat-1".into(),
        "eu-paris-1".into(),
        "ma-rabat-1".into(),
    ];
    r.datasets = vec![Digest::of(b"b"), Digest::of(b"a"), Digest::of(b"b")];
    let b = e.encode().expect("encode");
    let back = Entry::decode(&b).expect("decode");
    let EntryBody::RunExecuted(r2) = &back.body else {
        panic!("decoded a run")
    };
    assert_eq!(r2.output_label, ["eu-paris-1", "ma-rabat-1"]);
    let mut ds = vec![Digest::of(b"a"), Digest::of(b"b")];
    ds.sort();
    assert_eq!(r2.datasets, ds);
    // The normalized entry encodes to the same bytes.
    assert_eq!(back.encode().expect("encode"), b);
}

#[test]
fn decoding_is_strict() {
    for (golden, _) in GOLDEN {
        let b = hex::decode(golden).expect("hex");
        // Every strict prefix is truncated; any extra byte is trailing.
        for n in 0..b.len() {
            assert!(Entry::decode(&b[..n]).is_err(), "prefix {n} of {golden}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), Err(EntryError::TrailingBytes(1)));
        let mut v2 = b.clone();
        v2[0] = 2;
        assert_eq!(Entry::decode(&v2), Err(EntryError::UnsupportedVersion(2)));
        let mut ty = b.clone();
        ty[1] = 200;
        assert_eq!(Entry::decode(&ty), Err(EntryError::UnknownType(200)));
    }
    // Option tag 2 where 0/1 is expected (ModulePublished.signer).
    let mut b = hex::decode(GOLDEN[2].0).expect("hex");
    let at = b.len() - (4 + "acme.example/release+1a2b3c4d".len()) - 1;
    assert_eq!(b[at], 1);
    b[at] = 2;
    assert_eq!(
        Entry::decode(&b),
        Err(EntryError::BadOptionTag("signer", 2))
    );
    // Unsorted set: swap the two labels of the run entry.
    let g = hex::decode(GOLDEN[3].0).expect("hex");
    let (a, z) = (b"eu-paris-1", b"ma-rabat-1");
    let pa = g.windows(10).position(|w| w == a).expect("label");
    let pz = g.windows(10).position(|w| w == z).expect("label");
    let mut swapped = g.clone();
    swapped[pa..pa + 10].copy_from_slice(z);
    swapped[pz..pz + 10].copy_from_slice(a);
    assert_eq!(
        Entry::decode(&swapped),
        Err(EntryError::UnsortedSet("output_label"))
    );
    // Invalid UTF-8 in a string.
    let mut bad = hex::decode(GOLDEN[0].0).expect("hex");
    let p = bad.windows(4).position(|w| w == b"acme").expect("tenant");
    bad[p] = 0xff;
    assert_eq!(Entry::decode(&bad), Err(EntryError::BadUtf8("tenant")));
    // A length prefix larger than the limit is refused before allocating.
    let mut huge = hex::decode(GOLDEN[0].0).expect("hex");
    huge[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(Entry::decode(&huge), Err(EntryError::TooLong("tenant")));
}

#[test]
fn oversized_fields_are_refused_when_encoding() {
    let e = Entry::new(
        T,
        EntryBody::TenantCreated(TenantCreated {
            tenant: "x".repeat(MAX_STR_LEN + 1),
            operator: "op".into(),
        }),
    );
    assert_eq!(e.encode(), Err(EntryError::TooLong("tenant")));
    let mut run = samples().remove(3);
    if let EntryBody::RunExecuted(r) = &mut run.body {
        r.output_label = (0..=MAX_SET_LEN).map(|i| format!("z{i}")).collect();
    }
    assert_eq!(run.encode(), Err(EntryError::TooLong("output_label")));
}

#[test]
fn json_view_round_trips() {
    for e in samples() {
        let j = serde_json::to_value(&e).expect("json");
        assert_eq!(j["type"], e.body.kind());
        assert!(j["time_unix_ms"].is_u64());
        let back: Entry = serde_json::from_value(j).expect("parse");
        assert_eq!(back, e);
    }
    let j = serde_json::to_value(&samples()[2]).expect("json");
    assert_eq!(
        j["module"],
        "sha256:5c073b6de205a83e4df87dcd07111be224ad4435a8c08ca0ba10e68dcf38fe92"
    );
}

/// Type 6 (`dataset_created`) was added after types 1–5 were frozen: its
/// bytes follow the same grammar, assembled by hand here, and round-trip.
#[test]
fn dataset_created_follows_the_grammar_and_round_trips() {
    use kasbah_audit::DatasetCreated;
    let e = Entry::new(
        T + 5,
        EntryBody::DatasetCreated(DatasetCreated {
            tenant: "acme".into(),
            dataset: Digest::of(b"weights"),
            size: 7,
            name: "weights.bin".into(),
            // Given unsorted: encoded as a set.
            label: vec!["zone-b".into(), "zone-a".into()],
            run_id: Some("run-3".into()),
        }),
    );
    let s = |v: &str| {
        let mut o = (v.len() as u32).to_be_bytes().to_vec();
        o.extend_from_slice(v.as_bytes());
        o
    };
    let mut want = vec![ENTRY_FORMAT_V1, 6];
    want.extend((T + 5).to_be_bytes());
    want.extend(s("acme"));
    want.extend(Digest::of(b"weights").as_bytes());
    want.extend(7u64.to_be_bytes());
    want.extend(s("weights.bin"));
    want.extend(2u32.to_be_bytes());
    want.extend(s("zone-a"));
    want.extend(s("zone-b"));
    want.push(1);
    want.extend(s("run-3"));
    let bytes = e.encode().expect("encode");
    assert_eq!(bytes, want);
    let back = Entry::decode(&bytes).expect("decode");
    assert_eq!(back.body.kind(), "dataset_created");
    match back.body {
        EntryBody::DatasetCreated(d) => assert_eq!(d.label, vec!["zone-a", "zone-b"]),
        other => panic!("{other:?}"),
    }
}

/// Type 7 (`credential`) was added after types 1–6: the older types' bytes
/// must not move. Type 6's sample above, pinned byte for byte (types 1–5
/// are pinned by `encoding_is_frozen`).
#[test]
fn older_entry_types_keep_their_bytes_after_type_7() {
    use kasbah_audit::DatasetCreated;
    let e = Entry::new(
        T + 5,
        EntryBody::DatasetCreated(DatasetCreated {
            tenant: "acme".into(),
            dataset: Digest::of(b"weights"),
            size: 7,
            name: "weights.bin".into(),
            label: vec!["zone-a".into(), "zone-b".into()],
            run_id: None,
        }),
    );
    let b = e.encode().expect("encode");
    assert_eq!(hex::encode(&b), DATASET_CREATED_GOLDEN);
    for (e, (bytes, _)) in samples().iter().zip(GOLDEN) {
        assert_eq!(hex::encode(e.encode().expect("encode")), bytes);
    }
}

const DATASET_CREATED_GOLDEN: &str = "01060000019b76daa8050000000461636d659a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c00000000000000070000000b776569676874732e62696e00000002000000067a6f6e652d61000000067a6f6e652d6200";

/// Type 7 (`credential`): the grammar in `entry.rs`, assembled by hand;
/// round-trips; strict (every proper prefix and a trailing byte refused).
#[test]
fn credential_follows_the_grammar_and_decodes_strictly() {
    use kasbah_audit::Credential;
    let e = Entry::new(
        T + 7,
        EntryBody::Credential(Credential {
            action: "revoked".into(),
            token_id: "tk_01".into(),
            role: "developer".into(),
            subject: "t_1".into(),
            tenant: "t_1".into(),
            expires_unix_ms: Some(T + 1000),
            by_role: "operator".into(),
            by_subject: "op_1".into(),
        }),
    );
    let s = |v: &str| {
        let mut o = (v.len() as u32).to_be_bytes().to_vec();
        o.extend_from_slice(v.as_bytes());
        o
    };
    let mut want = vec![ENTRY_FORMAT_V1, 7];
    want.extend((T + 7).to_be_bytes());
    for f in ["revoked", "tk_01", "developer", "t_1", "t_1"] {
        want.extend(s(f));
    }
    want.push(1);
    want.extend((T + 1000).to_be_bytes());
    want.extend(s("operator"));
    want.extend(s("op_1"));
    let bytes = e.encode().expect("encode");
    assert_eq!(bytes, want);
    let back = Entry::decode(&bytes).expect("decode");
    assert_eq!(back, e);
    assert_eq!(back.body.kind(), "credential");
    assert_eq!(back.body.tenant(), "t_1");
    assert_eq!(back.body.module(), None);
    for n in 0..bytes.len() {
        assert!(Entry::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(Entry::decode(&long).is_err());
    // The JSON view names the type.
    let v = serde_json::to_value(&back).expect("json");
    assert_eq!(v["type"], "credential");
    assert_eq!(v["token_id"], "tk_01");
}

/// Type 8 (`run_executed` naming its fleet worker) was added after type 7:
/// type 4's fields in type 4's order, then `worker:str`; assembled by hand
/// from the grammar here. A run record without a worker still encodes as
/// type 4, byte for byte (the frozen golden), and one with a worker as
/// type 8 only: every record has exactly one encoding.
#[test]
fn run_executed_with_a_worker_is_type_8_and_type_4_is_unchanged() {
    let mut e = samples().remove(3);
    let type4 = e.encode().expect("encode");
    assert_eq!(hex::encode(&type4), GOLDEN[3].0, "type 4 bytes unchanged");
    let EntryBody::RunExecuted(r) = &mut e.body else {
        panic!("sample 3 is a run")
    };
    r.worker = Some("worker-a1".into());
    let bytes = e.encode().expect("encode");
    let mut want = type4.clone();
    want[1] = 8;
    want.extend(9u32.to_be_bytes());
    want.extend(b"worker-a1");
    assert_eq!(bytes, want);
    assert_eq!(hex::encode(&bytes), RUN_EXECUTED_WORKER_GOLDEN);
    let back = Entry::decode(&bytes).expect("decode");
    assert_eq!(back, e);
    // The same logical entry: kind, tenant, module, JSON type.
    assert_eq!(back.body.kind(), "run_executed");
    assert_eq!(back.body.tenant(), "acme");
    assert_eq!(back.body.module(), Some(Digest::of(b"module bytes")));
    let j = serde_json::to_value(&back).expect("json");
    assert_eq!(
        (j["type"].as_str(), j["worker"].as_str()),
        (Some("run_executed"), Some("worker-a1"))
    );
    assert_eq!(serde_json::from_value::<Entry>(j).expect("parse"), e);
    // Type 4's JSON has no `worker` key at all.
    let j4 = serde_json::to_value(Entry::decode(&type4).expect("decode")).expect("json");
    assert!(j4.get("worker").is_none(), "{j4}");
    // Strict: every proper prefix (a type 8 without its worker included)
    // and a trailing byte are refused; type 4 bytes followed by a worker
    // are trailing bytes, not a type 8.
    for n in 0..bytes.len() {
        assert!(Entry::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(Entry::decode(&long), Err(EntryError::TrailingBytes(1)));
    let mut as4 = bytes.clone();
    as4[1] = 4;
    assert_eq!(Entry::decode(&as4), Err(EntryError::TrailingBytes(13)));
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] = 0xff;
    assert_eq!(Entry::decode(&bad), Err(EntryError::BadUtf8("worker")));
    let mut huge = bytes.clone();
    huge[type4.len()..type4.len() + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(Entry::decode(&huge), Err(EntryError::TooLong("worker")));
}

const RUN_EXECUTED_WORKER_GOLDEN: &str = "01080000019b76daa8030000000572756e2d310000000461636d655c073b6de205a83e4df87dcd07111be224ad4435a8c08ca0ba10e68dcf38fe92c96c6d5be8d08a12e7b5cdc1b207fa6b2430974c86803d8891675e76fd992c20000000019a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c01e0ee8bb50685e05fa0f47ed04203ae953fdfd055f5bd2892ea186504254f8c3a000000020000000a65752d70617269732d310000000a6d612d72616261742d310000000a6d612d72616261742d31010000000a6c6c766d706970652d300000000000000003000000026f6b00000000000004d20100000000000013880000000000010000000000000000004d000000000000100000000009776f726b65722d6131";

/// Type 9 (`module_published` with verified signers, issue 16) was added
/// after type 8: type 3's fields in type 3's order, then `signers:set<str>`,
/// non-empty; assembled by hand from the grammar here. A publish without
/// signers still encodes as type 3, byte for byte (the frozen golden).
#[test]
fn module_published_with_signers_is_type_9_and_type_3_is_unchanged() {
    let mut e = samples().remove(2);
    let type3 = e.encode().expect("encode");
    assert_eq!(hex::encode(&type3), GOLDEN[2].0, "type 3 bytes unchanged");
    let EntryBody::ModulePublished(m) = &mut e.body else {
        panic!("sample 2 is a publish")
    };
    m.signer = None;
    let unsigned3 = e.encode().expect("encode");
    let EntryBody::ModulePublished(m) = &mut e.body else {
        panic!("sample 2 is a publish")
    };
    // Given out of order and duplicated: encoded sorted, once each.
    m.signers = vec!["bb".repeat(32), "aa".repeat(32), "bb".repeat(32)];
    let bytes = e.encode().expect("encode");
    let mut want = unsigned3.clone();
    want[1] = 9;
    want.extend(2u32.to_be_bytes());
    for id in ["aa".repeat(32), "bb".repeat(32)] {
        want.extend(64u32.to_be_bytes());
        want.extend(id.as_bytes());
    }
    assert_eq!(bytes, want);
    assert_eq!(hex::encode(&bytes), MODULE_PUBLISHED_SIGNERS_GOLDEN);
    let back = Entry::decode(&bytes).expect("decode");
    let EntryBody::ModulePublished(b) = &back.body else {
        panic!("decoded a publish")
    };
    assert_eq!(b.signers, vec!["aa".repeat(32), "bb".repeat(32)]);
    assert_eq!(back.body.kind(), "module_published");
    assert_eq!(back.body.module(), Some(Digest::of(b"module bytes")));
    assert_eq!(back.encode().expect("encode"), bytes);
    let j = serde_json::to_value(&back).expect("json");
    assert_eq!(j["type"], "module_published");
    assert_eq!(j["signers"][1], "bb".repeat(32));
    assert_eq!(serde_json::from_value::<Entry>(j).expect("parse"), back);
    // Type 3's JSON has no `signers` key.
    let j3 = serde_json::to_value(Entry::decode(&unsigned3).expect("decode")).expect("json");
    assert!(j3.get("signers").is_none(), "{j3}");
    // Strict: prefixes, a trailing byte, an empty or unsorted set, type 3
    // bytes followed by a set.
    for n in 0..bytes.len() {
        assert!(Entry::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(Entry::decode(&long), Err(EntryError::TrailingBytes(1)));
    let mut empty = unsigned3.clone();
    empty[1] = 9;
    empty.extend(0u32.to_be_bytes());
    assert_eq!(Entry::decode(&empty), Err(EntryError::EmptySet("signers")));
    let mut as3 = bytes.clone();
    as3[1] = 3;
    assert!(matches!(
        Entry::decode(&as3),
        Err(EntryError::TrailingBytes(_))
    ));
    let mut unsorted = unsigned3.clone();
    unsorted[1] = 9;
    unsorted.extend(2u32.to_be_bytes());
    for id in ["bb".repeat(32), "aa".repeat(32)] {
        unsorted.extend(64u32.to_be_bytes());
        unsorted.extend(id.as_bytes());
    }
    assert_eq!(
        Entry::decode(&unsorted),
        Err(EntryError::UnsortedSet("signers"))
    );
}

const MODULE_PUBLISHED_SIGNERS_GOLDEN: &str = "01090000019b76daa8020000000461636d655c073b6de205a83e4df87dcd07111be224ad4435a8c08ca0ba10e68dcf38fe92000000000000000c0000000568656c6c6f00000005312e302e30000000000200000040616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161610000004062626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262";

/// Type 10 (`signing_key_revoked`, issue 16): four strings, assembled by
/// hand from the grammar here.
#[test]
fn signing_key_revoked_is_type_10_and_decodes_strictly() {
    let e = Entry::new(
        T + 10,
        EntryBody::SigningKeyRevoked(SigningKeyRevoked {
            tenant: "acme".into(),
            key_id: "ab".repeat(32),
            by_role: "operator".into(),
            by_subject: "op-1".into(),
        }),
    );
    let bytes = e.encode().expect("encode");
    let mut want = vec![ENTRY_FORMAT_V1, 10];
    want.extend((T + 10).to_be_bytes());
    for s in ["acme", &"ab".repeat(32), "operator", "op-1"] {
        want.extend((s.len() as u32).to_be_bytes());
        want.extend(s.as_bytes());
    }
    assert_eq!(bytes, want);
    assert_eq!(hex::encode(&bytes), SIGNING_KEY_REVOKED_GOLDEN);
    let back = Entry::decode(&bytes).expect("decode");
    assert_eq!(back, e);
    assert_eq!(back.body.kind(), "signing_key_revoked");
    assert_eq!(back.body.tenant(), "acme");
    assert_eq!(back.body.module(), None);
    for n in 0..bytes.len() {
        assert!(Entry::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(Entry::decode(&long), Err(EntryError::TrailingBytes(1)));
    let v = serde_json::to_value(&back).expect("json");
    assert_eq!(v["type"], "signing_key_revoked");
    assert_eq!(serde_json::from_value::<Entry>(v).expect("parse"), e);
    // Nor as type 11.
    let mut eleven = bytes.clone();
    eleven[1] = 11;
    assert!(Entry::decode(&eleven).is_err());
}

const SIGNING_KEY_REVOKED_GOLDEN: &str = "010a0000019b76daa80a0000000461636d650000004061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162000000086f70657261746f72000000046f702d31";

/// Issue 18 added the outcome `cancelled`. Outcomes are a `str` field of
/// type 4 (not an enumerated byte), so a cancelled run is a type 4 entry
/// whose only difference from the frozen golden is that string (length
/// prefix and bytes); the goldens above are unchanged.
#[test]
fn a_cancelled_run_is_type_4_with_its_outcome_string() {
    let ok = samples().remove(3);
    let mut cancelled = ok.clone();
    let EntryBody::RunExecuted(r) = &mut cancelled.body else {
        panic!("sample 3 is a run")
    };
    r.outcome = "cancelled".into();
    let bytes = cancelled.encode().expect("encode");
    let golden = hex::decode(GOLDEN[3].0).expect("hex");
    let at = golden
        .windows(6)
        .position(|w| w == [0, 0, 0, 2, b'o', b'k'])
        .expect("the outcome in the golden");
    let mut want = golden[..at].to_vec();
    want.extend(9u32.to_be_bytes());
    want.extend(b"cancelled");
    want.extend(&golden[at + 6..]);
    assert_eq!(bytes, want);
    assert_eq!(bytes[1], 4);
    assert_eq!(hex::encode(&bytes), RUN_CANCELLED_GOLDEN);
    assert_eq!(Entry::decode(&bytes).expect("decode"), cancelled);
}

const RUN_CANCELLED_GOLDEN: &str = "01040000019b76daa8030000000572756e2d310000000461636d655c073b6de205a83e4df87dcd07111be224ad4435a8c08ca0ba10e68dcf38fe92c96c6d5be8d08a12e7b5cdc1b207fa6b2430974c86803d8891675e76fd992c20000000019a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c01e0ee8bb50685e05fa0f47ed04203ae953fdfd055f5bd2892ea186504254f8c3a000000020000000a65752d70617269732d310000000a6d612d72616261742d310000000a6d612d72616261742d31010000000a6c6c766d706970652d3000000000000000030000000963616e63656c6c656400000000000004d20100000000000013880000000000010000000000000000004d0000000000001000";

/// Type 11 (`provenance_published`, issue 16): the grammar in `entry.rs` assembled by hand; a
/// golden hex; round-trips; strict (every proper prefix, a trailing byte and
/// the reserved neighbours' tags refused).
#[test]
fn provenance_published_follows_the_grammar_and_decodes_strictly() {
    use kasbah_audit::ProvenancePublished;
    let e = Entry::new(
        T + 11,
        EntryBody::ProvenancePublished(ProvenancePublished {
            tenant: "acme".into(),
            module: Digest::of(b"module"),
            statement: Digest::of(b"statement"),
            source: Digest::of(b"source tree"),
            cargo_lock: Digest::of(b"Cargo.lock"),
            toolchain: "rustc 1.95.0 (59807616e 2026-04-14); target wasm32-wasip2".into(),
        }),
    );
    let s = |v: &str| {
        let mut o = (v.len() as u32).to_be_bytes().to_vec();
        o.extend_from_slice(v.as_bytes());
        o
    };
    let mut want = vec![ENTRY_FORMAT_V1, 11];
    want.extend((T + 11).to_be_bytes());
    want.extend(s("acme"));
    for d in [&b"module"[..], b"statement", b"source tree", b"Cargo.lock"] {
        want.extend_from_slice(Digest::of(d).as_bytes());
    }
    want.extend(s(
        "rustc 1.95.0 (59807616e 2026-04-14); target wasm32-wasip2",
    ));
    let bytes = e.encode().expect("encode");
    assert_eq!(bytes, want);
    assert_eq!(hex::encode(&bytes), PROVENANCE_PUBLISHED_GOLDEN);
    let back = Entry::decode(&bytes).expect("decode");
    assert_eq!(back, e);
    assert_eq!(back.body.kind(), "provenance_published");
    assert_eq!(back.body.tenant(), "acme");
    assert_eq!(back.body.module(), Some(Digest::of(b"module")));
    for n in 0..bytes.len() {
        assert!(Entry::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(Entry::decode(&long).is_err());
    for reserved in [9u8, 10, 12] {
        let mut other = bytes.clone();
        other[1] = reserved;
        assert!(
            Entry::decode(&other).is_err(),
            "type {reserved} must not decode as type 11"
        );
    }
    let v = serde_json::to_value(&back).expect("json");
    assert_eq!(v["type"], "provenance_published");
    assert_eq!(v["source"], Digest::of(b"source tree").to_string());
}

const PROVENANCE_PUBLISHED_GOLDEN: &str = "010b0000019b76daa80b0000000461636d65120970d812836f19888625587a4606a5ad23cef31c8684e601771552548fc6b9b111c6e1d318f203063e5c16bab43c108326af0aa2f7b65760c95547a43dbe5284caad87e8d307449c7322edf4f893e25656cba80b2cf59cabb1e4850e43aa3e13ee4b2252c9e516a0547f2891aa2105c3ca71c6d7a1e682c69be97998dfc87e00000039727573746320312e39352e30202835393830373631366520323032362d30342d3134293b20746172676574207761736d33322d776173697032";

/// Type 12 (`secret_changed`, issue 18): the grammar assembled by hand; a
/// golden hex; round-trips; strict. It carries names and versions only.
#[test]
fn secret_changed_follows_the_grammar_and_decodes_strictly() {
    use kasbah_audit::SecretChanged;
    let e = Entry::new(
        T + 12,
        EntryBody::SecretChanged(SecretChanged {
            tenant: "acme".into(),
            name: "api_key".into(),
            version: 3,
            action: "set".into(),
        }),
    );
    let s = |v: &str| {
        let mut o = (v.len() as u32).to_be_bytes().to_vec();
        o.extend_from_slice(v.as_bytes());
        o
    };
    let mut want = vec![ENTRY_FORMAT_V1, 12];
    want.extend((T + 12).to_be_bytes());
    want.extend(s("acme"));
    want.extend(s("api_key"));
    want.extend(3u64.to_be_bytes());
    want.extend(s("set"));
    let bytes = e.encode().expect("encode");
    assert_eq!(bytes, want);
    assert_eq!(hex::encode(&bytes), SECRET_CHANGED_GOLDEN);
    let back = Entry::decode(&bytes).expect("decode");
    assert_eq!(back, e);
    assert_eq!(back.body.kind(), "secret_changed");
    assert_eq!(back.body.tenant(), "acme");
    assert_eq!(back.body.module(), None);
    for n in 0..bytes.len() {
        assert!(Entry::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(Entry::decode(&long).is_err());
    for reserved in [11u8, 13] {
        let mut other = bytes.clone();
        other[1] = reserved;
        assert!(
            Entry::decode(&other).is_err(),
            "type {reserved} must not decode as type 12"
        );
    }
    let v = serde_json::to_value(&back).expect("json");
    assert_eq!(v["type"], "secret_changed");
    assert_eq!(v["name"], "api_key");
    assert_eq!(v["version"], 3);
}

const SECRET_CHANGED_GOLDEN: &str =
    "010c0000019b76daa80c0000000461636d65000000076170695f6b6579000000000000000300000003736574";
