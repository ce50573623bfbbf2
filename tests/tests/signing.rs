//! Signed modules (issue 16) through the real server and the real CLI:
//! `kasbah key generate`, `kasbah sign` (a DSSE envelope around an in-toto
//! statement, read back by an independent Python stdlib parser and verified
//! by OpenSSL / ed25519-dalek from Python's PAE bytes), a tenant policy
//! requiring signatures (unsigned, wrong key, bad signature, other bytes,
//! below threshold, revoked key → `422 signature_required`, nothing
//! stored), signed publishes recorded with their signer ids (entry type 9,
//! receipts verified offline), key revocation (type 10, who may), an
//! operator ceiling requiring signatures, and module downloads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kasbah_audit::dsse::{ModuleSigner, PublicKey};
use kasbah_audit::{EntryBody, verify_receipt};
use kasbah_client::Client;
use kasbah_core::Digest;
use kasbah_core::api::{CreateAuditor, CreateOperator, CreateTenant};
use kasbah_policy::{Ceiling, Policy, SignatureCeiling, SignaturePolicy};
use kasbah_tests::guest_path;
use kasbah_tests::platform::{Platform, api_err};

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

fn cli(args: &[&str], url: &str, token: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("KASBAH_URL", url)
        .env_remove("KASBAH_TOKEN")
        .env_remove("KASBAH_CONFIG");
    if let Some(t) = token {
        c.env("KASBAH_TOKEN", t);
    }
    c.output().expect("run the kasbah CLI")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn line_value(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {out}"))
        .trim()
        .to_string()
}

fn policy(keys: &[&PublicKey], threshold: u32) -> Policy {
    Policy {
        signatures: Some(SignaturePolicy {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            threshold,
        }),
        ..Policy::default()
    }
}

/// The envelope of `signer` over `bytes`, as JSON bytes.
fn envelope(signer: &ModuleSigner, bytes: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&signer.sign_module("hello.wasm", bytes)).expect("json")
}

/// Publish `file` with these envelopes; the API error's (status, code,
/// message) or the record.
async fn publish(
    c: &Client,
    file: &Path,
    version: &str,
    envs: &[Vec<u8>],
) -> Result<kasbah_core::api::ModuleRecord, (u16, String, String)> {
    match c
        .publish_signed(file, "hello", version, envs, |_, _| {})
        .await
    {
        Ok((m, _)) => Ok(m),
        Err(kasbah_client::Error::Api {
            status,
            code,
            message,
        }) => Err((status, code, message)),
        Err(e) => panic!("publish: {e}"),
    }
}

/// The CLI writes keys as standard PEM (mode 0600, openssl reads them),
/// prints the key id (hex SHA-256 of the raw key), and `kasbah sign` writes
/// an envelope that an independent Python parser accepts: structure, the
/// subject digest, the key id, the PAE bytes — whose signature OpenSSL (when
/// installed) and ed25519-dalek verify. The same parser rejects the
/// envelope for other bytes.
#[test]
fn cli_keys_and_envelopes_read_by_an_independent_parser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = ok(&cli(
        &["key", "generate", "--out", &d.display().to_string()],
        "http://127.0.0.1:9",
        None,
    ));
    let key = d.join("kasbah-signing.key");
    let pubf = d.join("kasbah-signing.key.pub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
    }
    let printed_pub = line_value(&out, "public key:");
    let printed_id = line_value(&out, "key id:");
    // Generating again over it is refused (a key is never overwritten).
    let again = cli(
        &["key", "generate", "--out", &d.display().to_string()],
        "http://127.0.0.1:9",
        None,
    );
    assert!(!again.status.success());

    let module = d.join("hello.wasm");
    std::fs::copy(guest_path("hello"), &module).expect("copy guest");
    let signed = ok(&cli(
        &[
            "sign",
            &module.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
        "http://127.0.0.1:9",
        None,
    ));
    assert!(signed.contains(&printed_id), "{signed}");
    let env = d.join("hello.wasm.sig.json");

    let script = kasbah_tests::workspace_root().join("tests/fixtures/check_dsse.py");
    let py = |module: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(&env)
            .arg(module)
            .arg(&pubf)
            .arg(d)
            .output()
            .expect("python3")
    };
    let o = py(&module);
    let said = ok(&o);
    // Python's key id (from the PEM's raw key) is the one the CLI printed,
    // and that is SHA-256 of the printed public key's raw bytes.
    assert_eq!(line_value(&said, "key_id"), printed_id);
    let raw = STANDARD.decode(&printed_pub).expect("base64 key");
    assert_eq!(Digest::of(&raw).to_string(), format!("sha256:{printed_id}"));
    assert_eq!(
        line_value(&said, "subject"),
        Digest::of(&std::fs::read(&module).expect("module")).to_string()
    );
    // Python's PAE bytes and signature verify with the raw key (dalek)...
    let pae = std::fs::read(d.join("pae.bin")).expect("pae");
    let sig = std::fs::read(d.join("sig.bin")).expect("sig");
    assert!(pae.starts_with(b"DSSEv1 28 application/vnd.in-toto+json "));
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw.clone().try_into().expect("32 bytes"))
        .expect("key");
    let s = ed25519_dalek::Signature::from_slice(&sig).expect("sig");
    vk.verify_strict(&pae, &s)
        .expect("signature verifies over Python's PAE");
    let mut other = pae.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    assert!(vk.verify_strict(&other, &s).is_err(), "a changed PAE fails");
    // ...and with OpenSSL, a third implementation, from the PEM file.
    if Command::new("openssl").arg("version").output().is_ok() {
        let o = Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&pubf)
            .arg("-in")
            .arg(d.join("pae.bin"))
            .arg("-sigfile")
            .arg(d.join("sig.bin"))
            .output()
            .expect("openssl");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Signature Verified Successfully"),
            "{o:?}"
        );
        let o = Command::new("openssl")
            .args(["pkey", "-in"])
            .arg(&key)
            .arg("-pubout")
            .output()
            .expect("openssl pkey");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            std::fs::read_to_string(&pubf).expect("pub"),
            "openssl derives the same public key from the private PEM"
        );
    } else {
        eprintln!("openssl not installed: verified with ed25519-dalek only");
    }
    // The parser is not a rubber stamp: other bytes are refused.
    let changed = d.join("changed.wasm");
    let mut b = std::fs::read(&module).expect("module");
    b.push(0);
    std::fs::write(&changed, b).expect("write");
    let o = py(&changed);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("no subject names sha256"));
}

/// The policy through the server: every way of falling short is refused
/// with `422 signature_required` naming the key ids and threshold, audited,
/// nothing stored; enough valid signatures publish, with the signer ids in
/// the record, a type 9 entry and a receipt that verifies offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_policy_refuses_and_records_signers() {
    let p = Platform::start().await;
    let (k1, k2, k3) = (
        ModuleSigner::from_seed(&[1; 32]),
        ModuleSigner::from_seed(&[2; 32]),
        ModuleSigner::from_seed(&[3; 32]),
    );
    let (id1, id2, id3) = (
        k1.public().key_id(),
        k2.public().key_id(),
        k3.public().key_id(),
    );
    let (t, dev) = p
        .tenant("signed", Some(policy(&[&k1.public(), &k2.public()], 2)))
        .await;
    let file = guest_path("hello");
    let bytes = std::fs::read(&file).expect("guest");
    let digest = Digest::of(&bytes);

    let refused = |r: Result<_, (u16, String, String)>, what: &str| {
        let (status, code, message) = r.expect_err(what);
        assert_eq!(
            (status, code.as_str()),
            (422, "signature_required"),
            "{what}: {message}"
        );
        assert!(
            message.contains(&id1) && message.contains(&id2) && message.contains("requires 2"),
            "{what}: the refusal names the accepted key ids and the threshold: {message}"
        );
        assert!(!message.contains(&id3), "{message}");
        message
    };
    // Unsigned.
    refused(publish(&dev, &file, "1", &[]).await, "unsigned");
    // Wrong key: k3 is not listed.
    refused(
        publish(&dev, &file, "1", &[envelope(&k3, &bytes)]).await,
        "wrong key",
    );
    // Below threshold: one of two.
    let m = refused(
        publish(&dev, &file, "1", &[envelope(&k1, &bytes)]).await,
        "below threshold",
    );
    assert!(m.contains("1 found"), "{m}");
    // A bad signature by a listed key does not count.
    let mut bad: serde_json::Value = serde_json::from_slice(&envelope(&k2, &bytes)).expect("json");
    let mut sig = STANDARD
        .decode(bad["signatures"][0]["sig"].as_str().expect("sig"))
        .expect("b64");
    sig[5] ^= 0x40;
    bad["signatures"][0]["sig"] = STANDARD.encode(sig).into();
    refused(
        publish(
            &dev,
            &file,
            "1",
            &[
                envelope(&k1, &bytes),
                serde_json::to_vec(&bad).expect("json"),
            ],
        )
        .await,
        "bad signature",
    );
    // Valid signatures of other bytes do not count for these.
    refused(
        publish(
            &dev,
            &file,
            "1",
            &[envelope(&k1, b"other"), envelope(&k2, b"other")],
        )
        .await,
        "other bytes",
    );
    // The same envelope twice is one signer.
    refused(
        publish(
            &dev,
            &file,
            "1",
            &[envelope(&k1, &bytes), envelope(&k1, &bytes)],
        )
        .await,
        "one key twice",
    );
    // A malformed envelope is its own error.
    let (status, code, _) = publish(&dev, &file, "1", &[b"{\"payloadType\":1}".to_vec()])
        .await
        .expect_err("malformed");
    assert_eq!((status, code.as_str()), (422, "invalid_signature"));
    // Too many envelopes (bounded before parsing).
    let many = vec![envelope(&k1, &bytes); 17];
    let (status, code, _) = publish(&dev, &file, "1", &many).await.expect_err("17");
    assert_eq!((status, code.as_str()), (422, "invalid_signature"));
    // Nothing was stored by any of that.
    assert!(dev.modules().await.expect("list").is_empty());
    assert_eq!(
        api_err(dev.module_content(&digest.to_string()).await),
        (404, "not_found".into())
    );
    let (_, log) = p.admin.audit_log_entries(0, None).await.expect("log");
    assert!(
        !log.iter()
            .any(|e| matches!(e.entry.body, EntryBody::ModulePublished(_))),
        "no publish entry for a refused module"
    );
    let denials = log
        .iter()
        .filter(|e| match &e.entry.body {
            EntryBody::Denial(d) => d.reason.starts_with("signature_required"),
            _ => false,
        })
        .count();
    assert_eq!(denials, 6, "each refusal is a denial entry");

    // Both keys: published, signers recorded (sorted), entry type 9.
    let m = publish(
        &dev,
        &file,
        "1",
        &[
            envelope(&k2, &bytes),
            envelope(&k1, &bytes),
            envelope(&k3, &bytes),
        ],
    )
    .await
    .expect("signed publish");
    let mut want = vec![id1.clone(), id2.clone()];
    want.sort();
    assert_eq!(m.signers, want);
    assert_eq!(m.digest, digest);
    let (_, log) = p.admin.audit_log_entries(0, None).await.expect("log");
    let e = log
        .iter()
        .find(|e| matches!(e.entry.body, EntryBody::ModulePublished(_)))
        .expect("publish entry");
    assert_eq!(e.bytes[1], 9, "a publish with signers is entry type 9");
    let EntryBody::ModulePublished(pe) = &e.entry.body else {
        unreachable!()
    };
    assert_eq!(pe.signers, want);
    // The receipt verifies offline with the log key and shows the signers.
    let key = p.admin.audit_key().await.expect("key");
    let receipt = dev
        .module_receipt(&digest.to_string())
        .await
        .expect("receipt");
    let v = verify_receipt(&receipt, &key, Some(digest)).expect("receipt verifies offline");
    let EntryBody::ModulePublished(rp) = &v.entry.body else {
        panic!("receipt of a publish")
    };
    assert_eq!(rp.signers, want);
    assert_eq!(rp.tenant, t.id);
    // The CLI shows the signer ids in the log and in `audit verify`.
    let dir = tempfile::tempdir().expect("tempdir");
    let rfile = dir.path().join("receipt.json");
    std::fs::write(&rfile, serde_json::to_vec(&receipt).expect("json")).expect("write");
    let admin_token = p.server.admin_token.clone().expect("admin token");
    let entries = ok(&cli(&["audit", "entries"], &p.url, Some(&admin_token)));
    assert!(
        entries.contains(&format!("signed by {}", want.join(", "))),
        "{entries}"
    );
    let verified = ok(&cli(
        &[
            "audit",
            "verify",
            &rfile.display().to_string(),
            "--key",
            &key.to_string(),
            "--module",
            &digest.to_string(),
        ],
        &p.url,
        None,
    ));
    assert!(
        verified.contains("receipt OK") && verified.contains(&want[0]),
        "{verified}"
    );
    // The envelopes are kept: an auditor of the tenant reads them and
    // checks them again offline against the log's signer ids.
    let auditor = p
        .admin
        .create_auditor(&CreateAuditor {
            name: "sovereign".into(),
            tenants: vec![t.id.clone()],
            ttl_seconds: None,
        })
        .await
        .expect("auditor");
    let envs = p
        .client(&auditor.token)
        .module_signatures(&digest.to_string())
        .await
        .expect("signatures");
    assert_eq!(envs.len(), 3, "every envelope sent is kept");
    let keys = [k1.public(), k2.public(), k3.public()];
    let mut again: Vec<String> = envs
        .iter()
        .map(|e| {
            kasbah_audit::dsse::Envelope::parse(&serde_json::to_vec(e).expect("json"))
                .expect("stored envelope parses")
        })
        .filter(|c| c.names(&digest))
        .flat_map(|c| c.signers(&keys[..2]))
        .collect();
    again.sort();
    assert_eq!(again, want);
    let (_, other_dev) = p.tenant("other", None).await;
    assert_eq!(
        api_err(other_dev.module_signatures(&digest.to_string()).await),
        (404, "not_found".into())
    );
    // The module's bytes come back to its developers, digest-checked.
    assert_eq!(
        dev.module_content(&digest.to_string())
            .await
            .expect("content"),
        bytes
    );
}

/// Revocation: by the admin or the tenant's operator only; a revoked key
/// stops counting for new publishes (named as revoked in the refusal); the
/// revocation is a type 10 entry; an operator ceiling may require
/// signatures of its tenants' policies; the CLI signs, publishes with
/// `--signature` and revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_stop_counting_and_ceilings_require_signatures() {
    let p = Platform::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Keys from the CLI.
    let gen_key = |name: &str| {
        let out = ok(&cli(
            &[
                "key",
                "generate",
                "--out",
                &d.join(name).display().to_string(),
            ],
            &p.url,
            None,
        ));
        (
            d.join(name),
            line_value(&out, "public key:"),
            line_value(&out, "key id:"),
        )
    };
    let (key_a, pub_a, id_a) = gen_key("a.key");
    let (key_b, pub_b, id_b) = gen_key("b.key");
    let pk_a: PublicKey = pub_a.parse().expect("pub a");
    let pk_b: PublicKey = pub_b.parse().expect("pub b");
    assert_eq!((pk_a.key_id(), pk_b.key_id()), (id_a.clone(), id_b.clone()));

    // An operator whose ceiling requires signatures (threshold ≥ 1, keys a or b).
    let op = p
        .admin
        .create_operator(&CreateOperator {
            name: "telecom".into(),
            ceiling: Some(Ceiling {
                signatures: Some(SignatureCeiling {
                    threshold: 1,
                    keys: vec![pub_a.clone(), pub_b.clone()],
                }),
                ..Ceiling::standard()
            }),
            max_tenants: 5,
            zones: vec![],
        })
        .await
        .expect("operator");
    let op_token = p.admin.operator_token(&op.id).await.expect("token").token;
    let telecom = p.client(&op_token);
    let create = |policy: Option<Policy>| CreateTenant {
        name: "ministry".into(),
        operator_id: None,
        policy,
    };
    assert_eq!(
        api_err(
            telecom
                .create_tenant(&create(Some(Policy::default())))
                .await
        ),
        (422, "policy_exceeds_ceiling".into()),
        "an unsigned policy exceeds a ceiling that requires signatures"
    );
    let other_key = ModuleSigner::from_seed(&[7; 32]).public();
    assert_eq!(
        api_err(
            telecom
                .create_tenant(&create(Some(policy(&[&other_key], 1))))
                .await
        ),
        (422, "policy_exceeds_ceiling".into()),
        "a key outside the ceiling's keys"
    );
    let t = telecom
        .create_tenant(&create(Some(policy(&[&pk_a, &pk_b], 1))))
        .await
        .expect("tenant within the ceiling");
    let dev_token = telecom.tenant_token(&t.id).await.expect("token").token;
    let dev = p.client(&dev_token);

    // Sign with the CLI, publish with `--signature`: signed by a.
    let module = d.join("hello.wasm");
    std::fs::copy(guest_path("hello"), &module).expect("copy");
    let bytes = std::fs::read(&module).expect("read");
    let sign = |key: &Path, out: &Path, module: &Path| {
        ok(&cli(
            &[
                "sign",
                &module.display().to_string(),
                "--key",
                &key.display().to_string(),
                "--out",
                &out.display().to_string(),
            ],
            &p.url,
            None,
        ))
    };
    let sig_a = d.join("a.sig.json");
    sign(&key_a, &sig_a, &module);
    let published = ok(&cli(
        &[
            "publish",
            &module.display().to_string(),
            "--name",
            "hello",
            "--version",
            "1",
            "--signature",
            &sig_a.display().to_string(),
        ],
        &p.url,
        Some(&dev_token),
    ));
    assert!(
        published.contains(&format!("signed by {id_a}")),
        "{published}"
    );

    // Who may revoke: not the developer, not another operator (404), not
    // an unknown tenant; the tenant's operator may.
    let other_op = p
        .admin
        .create_operator(&CreateOperator {
            name: "other".into(),
            ceiling: None,
            max_tenants: 1,
            zones: vec![],
        })
        .await
        .expect("operator");
    let other = p.client(&p.admin.operator_token(&other_op.id).await.expect("t").token);
    assert_eq!(api_err(dev.revoke_signing_key(&t.id, &id_a).await).0, 403);
    assert_eq!(
        api_err(other.revoke_signing_key(&t.id, &id_a).await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_err(telecom.revoke_signing_key(&t.id, "not-a-key-id").await),
        (422, "invalid_key_id".into())
    );
    // Revoke a through the CLI, by key file.
    let revoked = ok(&cli(
        &[
            "key",
            "revoke",
            "--tenant",
            &t.id,
            &key_a.with_extension("key.pub").display().to_string(),
        ],
        &p.url,
        Some(&op_token),
    ));
    assert!(revoked.contains(&id_a), "{revoked}");
    assert_eq!(
        telecom.revoked_signing_keys(&t.id).await.expect("list"),
        vec![id_a.clone()]
    );
    // Again: idempotent, the first revocation answered, no second entry.
    let again = p
        .admin
        .revoke_signing_key(&t.id, &id_a)
        .await
        .expect("again");
    assert_eq!(again.by_role, "operator");

    // A new module signed by a only: refused, a named as revoked; the
    // already-published module stays.
    let module2 = d.join("hello2.wasm");
    let mut b2 = bytes.clone();
    // A custom section appended keeps it a valid component with new bytes.
    b2.extend_from_slice(&[0x00, 0x04, 0x03, b'k', b's', b'b']);
    std::fs::write(&module2, &b2).expect("write");
    let sig2_a = d.join("a2.sig.json");
    sign(&key_a, &sig2_a, &module2);
    let env_a2 = std::fs::read(&sig2_a).expect("env");
    let (status, code, message) = publish(&dev, &module2, "2", std::slice::from_ref(&env_a2))
        .await
        .expect_err("revoked key");
    assert_eq!(
        (status, code.as_str()),
        (422, "signature_required"),
        "{message}"
    );
    assert!(
        message.contains("revoked, not counted") && message.contains(&id_a),
        "{message}"
    );
    assert_eq!(dev.modules().await.expect("list").len(), 1);
    // b still counts.
    let sig2_b = d.join("b2.sig.json");
    sign(&key_b, &sig2_b, &module2);
    let env_b2 = std::fs::read(&sig2_b).expect("env");
    let m2 = publish(&dev, &module2, "2", &[env_a2, env_b2])
        .await
        .expect("signed by b");
    assert_eq!(
        m2.signers,
        vec![id_b.clone()],
        "a's signature is not recorded"
    );

    // The log: one type 10 entry naming a and the operator.
    let (_, log) = p.admin.audit_log_entries(0, None).await.expect("log");
    let revocations: Vec<_> = log
        .iter()
        .filter_map(|e| match &e.entry.body {
            EntryBody::SigningKeyRevoked(r) => Some((e.bytes[1], r.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    let (tag, r) = &revocations[0];
    assert_eq!(*tag, 10);
    assert_eq!(
        (
            r.tenant.as_str(),
            r.key_id.as_str(),
            r.by_role.as_str(),
            r.by_subject.as_str()
        ),
        (t.id.as_str(), id_a.as_str(), "operator", op.id.as_str())
    );
}

/// `GET /v1/modules/{digest}/content`: the owner's developers and the
/// auditors granted the tenant get the bytes (digest-checked; the CLI
/// checks again); other tenants, other auditors and admins get 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_content_goes_to_owners_and_their_auditors_only() {
    let p = Platform::start().await;
    let (a, dev_a) = p.tenant("owner", None).await;
    let (b, dev_b) = p.tenant("stranger", None).await;
    let file = guest_path("hello");
    let bytes = std::fs::read(&file).expect("guest");
    let m = dev_a
        .publish(&file, "hello", "1", |_, _| {})
        .await
        .expect("publish");
    assert!(m.signers.is_empty());
    let digest = m.digest.to_string();
    assert!(
        dev_a
            .module_signatures(&digest)
            .await
            .expect("none")
            .is_empty()
    );
    assert_eq!(dev_a.module_content(&digest).await.expect("owner"), bytes);
    let auditor = |tenants: Vec<String>, name: &str| CreateAuditor {
        name: name.into(),
        tenants,
        ttl_seconds: None,
    };
    let granted = p
        .admin
        .create_auditor(&auditor(vec![a.id.clone()], "granted"))
        .await
        .expect("auditor");
    let other = p
        .admin
        .create_auditor(&auditor(vec![b.id.clone()], "other"))
        .await
        .expect("auditor");
    assert_eq!(
        p.client(&granted.token)
            .module_content(&digest)
            .await
            .expect("granted auditor"),
        bytes
    );
    for (who, c) in [
        ("another tenant", dev_b.clone()),
        ("an auditor of another tenant", p.client(&other.token)),
        ("the admin", p.admin.clone()),
    ] {
        assert_eq!(
            api_err(c.module_content(&digest).await),
            (404, "not_found".into()),
            "{who}"
        );
    }
    // The document describes the new operations and the record's shape.
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", p.url))
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    for path in [
        "/v1/modules/{digest}/content",
        "/v1/modules/{digest}/signatures",
        "/v1/tenants/{id}/signing-keys/{key_id}/revoke",
        "/v1/tenants/{id}/signing-keys/revoked",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    assert!(doc["components"]["schemas"]["SigningKeyRevocation"].is_object());
    assert!(doc["components"]["schemas"]["ModuleRecord"]["properties"]["signers"].is_object());
    // A malformed digest is a clear error, not a 500.
    assert_eq!(api_err(dev_a.module_content("sha256:zz").await).0 / 100, 4);
    // The CLI downloads and checks.
    let dir = tempfile::tempdir().expect("tempdir");
    let out: PathBuf = dir.path().join("m.wasm");
    let token = dev_a_token(&p, &a.id).await;
    ok(&cli(
        &[
            "modules",
            "content",
            &digest,
            "-o",
            &out.display().to_string(),
        ],
        &p.url,
        Some(&token),
    ));
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
    // An unsigned publish stays a type 3 entry.
    let (_, log) = p.admin.audit_log_entries(0, None).await.expect("log");
    let e = log
        .iter()
        .find(|e| matches!(e.entry.body, EntryBody::ModulePublished(_)))
        .expect("entry");
    assert_eq!(e.bytes[1], 3);
}

async fn dev_a_token(p: &Platform, tenant: &str) -> String {
    p.admin.tenant_token(tenant).await.expect("token").token
}
