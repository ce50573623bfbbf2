//! The audit log through the platform: every publish, run, policy change and
//! refusal is an entry; receipts verify offline with the server's key;
//! tampering with the stored log (an entry changed, the tail dropped, the key
//! replaced) is caught by `verify` or `watch` with a clear reason; a kill -9
//! under load loses no acknowledged entry and the log stays consistent.
//!
//! The server runs as a separate process (`kasbah-under-test serve`, the
//! real CLI), so it can be killed and restarted on the same data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kasbah_audit::tree::nodes_for_size;
use kasbah_audit::{
    Entry, EntryBody, Log, LogSigner, LogVerifier, MemoryStore, NodeId, NodeStore, Receipt,
    VerifyError, Watcher, verify_receipt,
};
use kasbah_client::Client;
use kasbah_core::Digest;
use kasbah_core::api::{CreateAuditor, CreateOperator, CreateRun, CreateTenant, RunStatus};
use kasbah_policy::{DirGrant, DirMode, Limits, Policy};

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

/// A `kasbah serve` process on a data dir.
struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    /// Start the server on `port` (0: any); returns it and the admin token
    /// (first start only).
    fn start(root: &Path, port: u16) -> (Proc, Option<String>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("server.log"))
            .expect("server log");
        let mut child = Command::new(BIN)
            .args(["serve", "--workers", "4"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(root.join("data"))
            .env_remove("KASBAH_CONFIG")
            .env("RUST_LOG", "warn,kasbah_server=info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn kasbah serve");
        let banner = kasbah_tests::read_serve_banner(child.stdout.take().expect("stdout"));
        let token = banner.admin_token;
        let Some(url) = banner.url else {
            let status = child.wait().expect("wait");
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            panic!("kasbah serve exited ({status}) before listening:\n{log}");
        };
        (Proc { child, url }, token)
    }

    /// kill -9 and reap.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with an admin client, a tenant and its developer client.
struct Fixture {
    tmp: tempfile::TempDir,
    proc: Option<Proc>,
    admin_token: String,
    vkey: LogVerifier,
    /// The first start's port, reused on restarts.
    port: u16,
}

impl Fixture {
    async fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (proc, token) = Proc::start(tmp.path(), 0);
        let admin_token = token.expect("admin token on first start");
        let vkey = Client::new(&proc.url, &admin_token)
            .audit_key()
            .await
            .expect("audit key");
        let port = proc
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url");
        Fixture {
            port,
            tmp,
            proc: Some(proc),
            admin_token,
            vkey,
        }
    }

    fn url(&self) -> String {
        self.proc.as_ref().expect("running").url.clone()
    }

    fn admin(&self) -> Client {
        Client::new(&self.url(), &self.admin_token)
    }

    fn client(&self, token: &str) -> Client {
        Client::new(&self.url(), token)
    }

    fn db_path(&self) -> PathBuf {
        self.tmp.path().join("data").join("kasbah.db")
    }

    fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// Restart on the same port, so existing clients keep working.
    /// (Make new clients afterwards: pooled keep-alive connections to the
    /// old process are dead, and a request on one fails.)
    fn restart(&mut self) {
        self.kill();
        let (p, token) = Proc::start(self.tmp.path(), self.port);
        assert!(token.is_none(), "a restart must not mint a new admin token");
        self.proc = Some(p);
    }

    /// A tenant with `policy` and a developer token for it.
    async fn tenant(&self, name: &str, policy: Option<Policy>) -> (String, String) {
        let t = self
            .admin()
            .create_tenant(&CreateTenant {
                name: name.into(),
                operator_id: None,
                policy,
            })
            .await
            .expect("create tenant");
        let tok = self.admin().tenant_token(&t.id).await.expect("token");
        (t.id, tok.token)
    }

    /// Run the CLI against this server with `token`.
    fn cli(&self, token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("KASBAH_URL", self.url())
            .env("KASBAH_TOKEN", token)
            .env("HOME", self.tmp.path())
            .env_remove("KASBAH_AUDIT_KEY")
            .output()
            .expect("run kasbah")
    }

    fn path(&self, name: &str) -> String {
        self.tmp.path().join(name).to_string_lossy().into_owned()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The component with a custom section appended: same code, new digest.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"kasbah-test";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Publish `bytes` as `name@version` (through a temp file, as the CLI does).
async fn publish(
    dev: &Client,
    dir: &Path,
    bytes: &[u8],
    name: &str,
    version: &str,
) -> kasbah_client::Result<kasbah_core::api::ModuleRecord> {
    let path = dir.join(format!("{name}-{version}.wasm"));
    std::fs::write(&path, bytes).expect("write module");
    dev.publish(&path, name, version, |_, _| {}).await
}

fn run_req(module: &Digest, input: &str) -> CreateRun {
    CreateRun {
        module: module.to_string(),
        input: Some(input.into()),
        input_base64: None,
        content_type: None,
        metadata: Default::default(),
        wait: true,
        ..CreateRun::default()
    }
}

fn api_code(e: &kasbah_client::Error) -> (u16, String) {
    match e {
        kasbah_client::Error::Api { status, code, .. } => (*status, code.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

/// Every entry the caller can read.
async fn all_entries(c: &Client) -> Vec<kasbah_client::LogEntry> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let (page, es) = c.audit_log_entries(start, None).await.expect("entries");
        out.extend(es);
        if page.end >= page.size {
            return out;
        }
        start = page.end;
    }
}

fn save(path: &str, r: &Receipt) {
    std::fs::write(path, serde_json::to_string(r).expect("json")).expect("write receipt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_run_produce_receipts_that_verify_offline() {
    let hello = kasbah_tests::guest_bytes("hello");
    let f = Fixture::new().await;
    let (tenant, tok) = f.tenant("acme", None).await;
    let dev = f.client(&tok);

    let m = publish(&dev, f.tmp.path(), &hello, "hello", "1.0.0")
        .await
        .expect("publish");
    let r = dev.run(&run_req(&m.digest, "hi there")).await.expect("run");
    assert_eq!(r.status, RunStatus::Done);

    // The key the server states is the one in its data dir.
    let out = f.cli("", &["audit", "key", "--data-dir", &f.path("data")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        f.vkey.to_string()
    );

    let mr = dev
        .module_receipt(&m.digest.to_string())
        .await
        .expect("module receipt");
    let v = verify_receipt(&mr, &f.vkey, Some(m.digest)).expect("module receipt verifies");
    match &v.entry.body {
        EntryBody::ModulePublished(p) => {
            assert_eq!(p.tenant, tenant);
            assert_eq!(p.size, hello.len() as u64);
            assert_eq!((p.name.as_str(), p.version.as_str()), ("hello", "1.0.0"));
        }
        other => panic!("{other:?}"),
    }

    let rr = dev.run_receipt(&r.id).await.expect("run receipt");
    let v = verify_receipt(&rr, &f.vkey, Some(m.digest)).expect("run receipt verifies");
    match &v.entry.body {
        EntryBody::RunExecuted(e) => {
            assert_eq!(e.run_id, r.id);
            assert_eq!(e.tenant, tenant);
            assert_eq!(e.input, Digest::of(b"hi there"));
            assert_eq!(e.output, Some(Digest::of(b"HI THERE")));
            assert_eq!(e.outcome, "ok");
            assert_eq!(e.policy_version, 1);
            assert!(e.wall_time_us > 0 && e.peak_memory_bytes > 0, "{e:?}");
        }
        other => panic!("{other:?}"),
    }

    // The tenant's own log: created, policy v1, its developer token,
    // published, ran.
    let entries = all_entries(&dev).await;
    let kinds: Vec<&str> = entries.iter().map(|e| e.entry.body.kind()).collect();
    assert_eq!(
        kinds,
        [
            "tenant_created",
            "policy_set",
            "credential",
            "module_published",
            "run_executed"
        ]
    );

    // The CLI downloads and verifies the same receipts offline.
    let (run_file, mod_file) = (f.path("run.json"), f.path("module.json"));
    let out = f.cli(&tok, &["runs", "receipt", &r.id, "-o", &run_file]);
    assert!(out.status.success(), "{}", text(&out));
    let out = f.cli(
        &tok,
        &["modules", "receipt", &m.digest.to_string(), "-o", &mod_file],
    );
    assert!(out.status.success(), "{}", text(&out));
    let key = f.vkey.to_string();
    let digest = m.digest.to_string();
    let out = f.cli(
        "",
        &[
            "audit", "verify", &run_file, "--key", &key, "--module", &digest, "--run", &r.id,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("receipt OK"),
        "{}",
        text(&out)
    );
    let out = f.cli(
        "",
        &[
            "audit", "verify", &mod_file, "--key", &key, "--module", &digest,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let other = Digest::of(b"some other module").to_string();
    let out = f.cli(
        "",
        &[
            "audit", "verify", &run_file, "--key", &key, "--module", &other,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("but sha256:"),
        "{}",
        text(&out)
    );
    let out = f.cli(
        "",
        &["audit", "verify", &mod_file, "--key", &key, "--run", &r.id],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // The watcher trusts the first checkpoint, then proves growth.
    let state = f.path("watch.state");
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert!(out.status.success(), "{}", text(&out));
    dev.run(&run_req(&m.digest, "again")).await.expect("run");
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("grew from 5 to 6"),
        "{}",
        text(&out)
    );
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unchanged"),
        "{}",
        text(&out)
    );

    // A policy change is an entry too (an identical policy is not a change).
    let mut changed = Policy::default();
    changed.limits.wall_time_ms = 5_000;
    f.admin()
        .set_policy(&tenant, &changed)
        .await
        .expect("set policy");
    let last = all_entries(&dev).await.pop().expect("entries");
    match last.entry.body {
        EntryBody::PolicySet(p) => assert_eq!(p.policy_version, 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_audited() {
    let probe = kasbah_tests::guest_bytes("net-probe");
    let hostile = kasbah_tests::guest_bytes("hostile");
    let f = Fixture::new().await;

    // 1. A publish refused because the policy grants no network.
    let (t1, tok1) = f.tenant("no-net", None).await;
    let dev1 = f.client(&tok1);
    let e = publish(&dev1, f.tmp.path(), &probe, "probe", "1")
        .await
        .expect_err("refused");
    assert_eq!(api_code(&e), (422, "imports_not_granted".into()));
    let denial = all_entries(&dev1).await.pop().expect("entry");
    // The tenant can take the refusal away as a receipt.
    let r = dev1
        .entry_receipt(denial.index)
        .await
        .expect("denial receipt");
    let v = verify_receipt(&r, &f.vkey, Some(Digest::of(&probe))).expect("verifies");
    assert_eq!(v.entry, denial.entry);
    match denial.entry.body {
        EntryBody::Denial(d) => {
            assert_eq!(d.tenant, t1);
            assert_eq!(d.module, Some(Digest::of(&probe)));
            assert_eq!(d.action, "publish");
            assert!(
                d.reason.starts_with("imports_not_granted: "),
                "{}",
                d.reason
            );
            assert!(d.reason.contains("wasi:sockets"), "{}", d.reason);
        }
        other => panic!("{other:?}"),
    }

    // 2. A capability use refused during a run: one denial entry per
    //    refusal, in the run's transaction, naming the run.
    let net: Policy = serde_json::from_value(serde_json::json!({
        "network": { "allow": ["127.0.0.1:9"] }
    }))
    .expect("policy");
    let (_, tok2) = f.tenant("some-net", Some(net)).await;
    let dev2 = f.client(&tok2);
    let m = publish(&dev2, f.tmp.path(), &probe, "probe", "1")
        .await
        .expect("publish");
    let r = dev2
        .run(&run_req(&m.digest, "127.0.0.1:1"))
        .await
        .expect("run");
    assert!(!r.denials.is_empty(), "{r:?}");
    let entries = all_entries(&dev2).await;
    let run_idx = entries
        .iter()
        .position(|e| matches!(&e.entry.body, EntryBody::RunExecuted(x) if x.run_id == r.id))
        .expect("run entry");
    let denials: Vec<_> = entries[run_idx + 1..]
        .iter()
        .filter_map(|e| match &e.entry.body {
            EntryBody::Denial(d) if d.run_id.as_deref() == Some(r.id.as_str()) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(denials.len(), r.denials.len());
    assert_eq!(denials[0].action, "network");
    assert!(
        denials[0].reason.contains("127.0.0.1:1"),
        "{:?}",
        denials[0]
    );
    assert_eq!(denials[0].module, Some(m.digest));

    // 3. A run refused at admission (429).
    let data = f.tmp.path().join("files");
    std::fs::create_dir_all(&data).expect("mkdir");
    let one_at_a_time = Policy {
        files: vec![DirGrant {
            host: data,
            guest: "/data".into(),
            mode: DirMode::Ro,
        }],
        limits: Limits {
            max_concurrent_runs: 1,
            wall_time_ms: 3_000,
            ..Limits::default()
        },
        ..Policy::default()
    };
    let (t3, tok3) = f.tenant("busy", Some(one_at_a_time)).await;
    let dev3 = f.client(&tok3);
    let m = publish(&dev3, f.tmp.path(), &hostile, "hostile", "1")
        .await
        .expect("publish");
    let mut sleeper = run_req(&m.digest, "");
    sleeper.metadata.insert("attack".into(), "sleep".into());
    sleeper.wait = false;
    dev3.run(&sleeper).await.expect("first run admitted");
    let e = dev3
        .run(&run_req(&m.digest, "x"))
        .await
        .expect_err("second run refused");
    assert_eq!(api_code(&e), (429, "rate_limited".into()));
    let denial = all_entries(&dev3).await.pop().expect("entry");
    match denial.entry.body {
        EntryBody::Denial(d) => {
            assert_eq!((d.tenant.as_str(), d.action.as_str()), (t3.as_str(), "run"));
            assert_eq!(d.module, Some(m.digest));
            assert!(
                d.reason.starts_with("rate_limited: tenant_limit"),
                "{}",
                d.reason
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_receipts_are_scoped_to_the_callers_tenants() {
    let hello = kasbah_tests::guest_bytes("hello");
    let f = Fixture::new().await;
    let (ta, toka) = f.tenant("alpha", None).await;
    let (tb, tokb) = f.tenant("beta", None).await;
    let (deva, devb) = (f.client(&toka), f.client(&tokb));
    let ma = publish(&deva, f.tmp.path(), &variant(&hello, "a"), "hello", "1")
        .await
        .expect("publish a");
    let mb = publish(&devb, f.tmp.path(), &variant(&hello, "b"), "hello", "1")
        .await
        .expect("publish b");
    let ra = deva.run(&run_req(&ma.digest, "a")).await.expect("run a");
    let rb = devb.run(&run_req(&mb.digest, "b")).await.expect("run b");
    let auditor = f
        .admin()
        .create_auditor(&CreateAuditor {
            name: "auditor-a".into(),
            tenants: vec![ta.clone()],
            ttl_seconds: None,
        })
        .await
        .expect("auditor");
    let aud = f.client(&auditor.token);

    // Per tenant: tenant_created, policy_set, its developer token's
    // `credential`, module_published, run_executed; tenant a also the
    // auditor's `credential`.
    for (who, c, tenant, n) in [
        ("auditor", &aud, &ta, 6),
        ("dev a", &deva, &ta, 6),
        ("dev b", &devb, &tb, 5),
    ] {
        let es = all_entries(c).await;
        assert_eq!(es.len(), n, "{who}: {es:?}");
        assert!(es.iter().all(|e| e.entry.body.tenant() == tenant), "{who}");
    }
    let everything = all_entries(&f.admin()).await;
    assert_eq!(everything.len(), 11);
    assert_eq!(
        everything.iter().map(|e| e.index).collect::<Vec<_>>(),
        (0..11).collect::<Vec<_>>()
    );

    // Other tenants' receipts do not exist for you.
    let nf = |r: kasbah_client::Result<Receipt>| api_code(&r.expect_err("hidden")).0;
    assert_eq!(nf(aud.run_receipt(&rb.id).await), 404);
    assert_eq!(nf(aud.module_receipt(&mb.digest.to_string()).await), 404);
    assert_eq!(nf(deva.run_receipt(&rb.id).await), 404);
    assert_eq!(nf(devb.module_receipt(&ma.digest.to_string()).await), 404);
    let a_entry = all_entries(&deva).await[0].index;
    assert_eq!(nf(devb.entry_receipt(a_entry).await), 404);
    assert_eq!(nf(aud.entry_receipt(999).await), 404);
    verify_receipt(
        &aud.entry_receipt(a_entry).await.expect("own"),
        &f.vkey,
        None,
    )
    .expect("verify");
    verify_receipt(&aud.run_receipt(&ra.id).await.expect("own"), &f.vkey, None).expect("verify");
    let hidden = reqwest::Client::new()
        .get(format!("{}/v1/audit/entries?start=0&tenant={tb}", f.url()))
        .bearer_auth(&auditor.token)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(hidden.as_u16(), 404, "an auditor naming another tenant");

    // Checkpoint and proofs are public to any authenticated caller.
    let size = everything.len() as u64;
    for c in [&aud, &devb] {
        assert!(
            c.checkpoint()
                .await
                .expect("checkpoint")
                .starts_with("kasbah.local/log\n11\n")
        );
        c.inclusion_proof(0, size).await.expect("inclusion");
        c.consistency_proof(1, size).await.expect("consistency");
    }
    // An operator reads no tenant's entries.
    let op = f
        .admin()
        .create_operator(&CreateOperator {
            name: "reseller".into(),
            ceiling: None,
            max_tenants: 3,
            zones: Vec::new(),
        })
        .await
        .expect("operator");
    let optok = f.admin().operator_token(&op.id).await.expect("token");
    let e = f
        .client(&optok.token)
        .audit_entries(0, None)
        .await
        .expect_err("403");
    assert_eq!(api_code(&e).0, 403);
    // Unauthenticated callers get nothing.
    let e = f.client("nope").checkpoint().await.expect_err("401");
    assert_eq!(api_code(&e).0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audit_parameters_are_4xx_with_stable_codes() {
    let f = Fixture::new().await;
    f.tenant("t", None).await; // 3 entries: tenant, policy, token
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http
            .get(format!("{}{path}", f.url()))
            .bearer_auth(&f.admin_token);
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    let cases = [
        ("/v1/audit/proof/inclusion?index=0&size=2", 200, ""),
        (
            "/v1/audit/proof/inclusion?index=2&size=2",
            422,
            "out_of_range",
        ),
        (
            "/v1/audit/proof/inclusion?index=0&size=4",
            422,
            "out_of_range",
        ),
        (
            "/v1/audit/proof/inclusion?index=0&size=0",
            422,
            "out_of_range",
        ),
        (
            "/v1/audit/proof/inclusion?index=0&size=18446744073709551615",
            422,
            "out_of_range",
        ),
        (
            "/v1/audit/proof/inclusion?index=-1&size=2",
            400,
            "invalid_request",
        ),
        (
            "/v1/audit/proof/inclusion?index=x&size=2",
            400,
            "invalid_request",
        ),
        ("/v1/audit/proof/inclusion?index=0", 400, "invalid_request"),
        (
            "/v1/audit/proof/inclusion?index=99999999999999999999&size=2",
            400,
            "invalid_request",
        ),
        ("/v1/audit/proof/consistency?old=1&new=2", 200, ""),
        ("/v1/audit/proof/consistency?old=2&new=2", 200, ""),
        (
            "/v1/audit/proof/consistency?old=0&new=2",
            422,
            "invalid_request",
        ),
        (
            "/v1/audit/proof/consistency?old=2&new=1",
            422,
            "invalid_request",
        ),
        (
            "/v1/audit/proof/consistency?old=1&new=4",
            422,
            "out_of_range",
        ),
        ("/v1/audit/proof/consistency?old=1", 400, "invalid_request"),
        ("/v1/audit/entries?start=0", 200, ""),
        ("/v1/audit/entries?start=2", 200, ""),
        ("/v1/audit/entries?start=4", 422, "out_of_range"),
        ("/v1/audit/entries?start=1&end=0", 422, "invalid_request"),
        ("/v1/audit/entries", 400, "invalid_request"),
        ("/v1/audit/entries?start=zero", 400, "invalid_request"),
        // An admin may filter by any tenant id (as for modules and runs).
        ("/v1/audit/entries?start=0&tenant=tn_nope", 200, ""),
        ("/v1/modules/sha256:zz/receipt", 400, "invalid_digest"),
        ("/v1/runs/run_nope/receipt", 404, "not_found"),
        ("/v1/audit/entries/1/receipt", 200, ""),
        ("/v1/audit/entries/3/receipt", 404, "not_found"),
        ("/v1/audit/entries/-1/receipt", 400, "invalid_request"),
        ("/v1/audit/entries/x/receipt", 400, "invalid_request"),
    ];
    for (path, status, code) in cases {
        assert_eq!(get(path).await, (status, code.to_string()), "{path}");
    }
    // The OpenAPI document lists the audit endpoints.
    let doc: serde_json::Value = http
        .get(format!("{}/openapi.json", f.url()))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    // The writer's group-commit counters are exported.
    let metrics = http
        .get(format!("{}/metrics", f.url()))
        .bearer_auth(&f.admin_token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("kasbah_audit_entries_appended_total 3"),
        "{metrics}"
    );
    for p in [
        "/v1/audit/entries/{index}/receipt",
        "/v1/audit/checkpoint",
        "/v1/audit/entries",
        "/v1/audit/proof/inclusion",
        "/v1/audit/proof/consistency",
        "/v1/runs/{id}/receipt",
        "/v1/modules/{digest}/receipt",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
}

/// Indices past the end of the log, up to 2^64 - 1, are a client's mistake:
/// 404, and no corruption alarm in the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_entry_index_is_not_corruption() {
    let f = Fixture::new().await;
    f.tenant("t", None).await;
    let admin = f.admin();
    for index in [3, 1 << 62, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX] {
        let e = admin.entry_receipt(index).await.expect_err("no such entry");
        assert_eq!(api_code(&e), (404, "not_found".into()), "index {index}");
    }
    admin.entry_receipt(1).await.expect("a real entry");
    let log = std::fs::read_to_string(f.tmp.path().join("server.log")).expect("server log");
    assert!(!log.contains("AUDIT LOG CORRUPT"), "{log}");
}

/// Open the server's database as an attacker with the file would.
fn tamper(db: &Path, sql: &str) {
    let c = rusqlite::Connection::open(db).expect("open db");
    c.execute_batch(
        "DROP TRIGGER IF EXISTS audit_entries_no_update;
         DROP TRIGGER IF EXISTS audit_entries_no_delete;
         DROP TRIGGER IF EXISTS audit_nodes_no_update;
         DROP TRIGGER IF EXISTS audit_nodes_no_delete;
         DROP TRIGGER IF EXISTS audit_size_only_grows;",
    )
    .expect("drop triggers");
    c.execute_batch(sql).expect("tamper");
}

/// Rewrite every tree node from the stored entries, as an attacker who
/// changed an entry would to make the tree match again. (Rows of
/// `audit_nodes` hold a leaf's hash and those of the subtrees it completes.)
fn rebuild_nodes(db: &Path) {
    let c = rusqlite::Connection::open(db).expect("open db");
    let entries: Vec<Vec<u8>> = c
        .prepare("SELECT bytes FROM audit_entries ORDER BY idx")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut log = Log::new(MemoryStore::new());
    let leaves: Vec<_> = entries
        .iter()
        .map(|b| kasbah_audit::Hash::leaf(b))
        .collect();
    log.append_leaf_hashes(&leaves).expect("rebuild");
    tamper(db, "DELETE FROM audit_nodes;");
    let mut ins = c
        .prepare("INSERT INTO audit_nodes(leaf, hashes) VALUES (?1, ?2)")
        .expect("prepare");
    let mut written = 0;
    for k in 0..entries.len() as u64 {
        let mut blob = Vec::new();
        let mut id = NodeId::new(0, k);
        loop {
            let h = log.store().node(id).expect("node").expect("present");
            blob.extend_from_slice(&h.0);
            written += 1;
            if id.index & 1 == 0 {
                break;
            }
            id = NodeId::new(id.level + 1, id.index >> 1);
        }
        ins.execute(rusqlite::params![k as i64, blob])
            .expect("insert");
    }
    assert_eq!(written, nodes_for_size(entries.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_entry_is_caught_by_verify_and_watch() {
    let hello = kasbah_tests::guest_bytes("hello");
    let mut f = Fixture::new().await;
    let (_, tok) = f.tenant("victim", None).await;
    let dev = f.client(&tok);
    let m = publish(&dev, f.tmp.path(), &hello, "hello", "1")
        .await
        .expect("publish");
    let r = dev
        .run(&run_req(&m.digest, "secret input"))
        .await
        .expect("run");
    let honest = dev.run_receipt(&r.id).await.expect("receipt");
    verify_receipt(&honest, &f.vkey, Some(m.digest)).expect("honest receipt");
    let key = f.vkey.to_string();
    let state = f.path("watch.state");
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert!(out.status.success(), "{}", text(&out));

    // The operator rewrites history: the run "used" another module. Only
    // the entry row is changed.
    let forged_module = Digest::of(b"the module the operator claims ran");
    let mut forged_entry = Entry::decode(&honest.entry).expect("decode");
    if let EntryBody::RunExecuted(e) = &mut forged_entry.body {
        e.module = forged_module;
    }
    let forged_bytes = forged_entry.encode().expect("encode");
    f.kill();
    tamper(
        &f.db_path(),
        &format!(
            "UPDATE audit_entries SET bytes = x'{}' WHERE idx = {}",
            hex(&forged_bytes),
            honest.index
        ),
    );
    f.restart();
    // A fresh client: pooled connections to the killed process are dead.
    let dev = f.client(&tok);

    // The server notices the entry no longer matches its leaf and refuses
    // to vouch for it.
    let e = dev.run_receipt(&r.id).await.expect_err("refused");
    assert_eq!(api_code(&e), (500, "audit_log_corrupt".into()));
    // ...and raises the alarm in its log: real corruption.
    let log = std::fs::read_to_string(f.tmp.path().join("server.log")).expect("server log");
    assert!(log.contains("AUDIT LOG CORRUPT"), "{log}");
    // A receipt carrying the altered entry fails verification offline.
    let mut forged = honest.clone();
    forged.entry = forged_bytes.clone();
    let err = verify_receipt(&forged, &f.vkey, Some(forged_module)).expect_err("forged");
    assert!(matches!(err, VerifyError::InclusionFailed { .. }), "{err}");
    let forged_file = f.path("forged.json");
    save(&forged_file, &forged);
    let out = f.cli("", &["audit", "verify", &forged_file, "--key", &key]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not included at index"),
        "{}",
        text(&out)
    );

    // The operator also rewrites the tree so the forged entry "verifies":
    // the log now signs a different tree of the same size. Receipts against
    // the new checkpoint verify, but any watcher that saw the old one
    // reports the fork.
    f.kill();
    rebuild_nodes(&f.db_path());
    f.restart();
    // A fresh client: pooled connections to the killed process are dead.
    let dev = f.client(&tok);
    let rewritten = dev
        .run_receipt(&r.id)
        .await
        .expect("receipt of the forged entry");
    verify_receipt(&rewritten, &f.vkey, Some(forged_module)).expect("consistent forgery");
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LOG FORK"), "{}", text(&out));
    assert!(
        stderr.matches("— ").count() >= 2,
        "both signed notes as evidence: {stderr}"
    );
    // The honest receipt is still what it was: signed evidence of the original.
    verify_receipt(&honest, &f.vkey, Some(m.digest)).expect("old receipt");
    let mut w = Watcher::new(f.vkey.clone(), &honest.checkpoint).expect("w");
    assert!(dev.watch(&mut w).await.is_err());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_entries_are_a_rollback_and_a_torn_log_does_not_start() {
    let hello = kasbah_tests::guest_bytes("hello");
    let mut f = Fixture::new().await;
    let (_, tok) = f.tenant("victim", None).await;
    let dev = f.client(&tok);
    let m = publish(&dev, f.tmp.path(), &hello, "hello", "1")
        .await
        .expect("publish");
    let mut runs = Vec::new();
    for i in 0..3 {
        runs.push(
            dev.run(&run_req(&m.digest, &format!("in {i}")))
                .await
                .expect("run"),
        );
    }
    let last = dev.run_receipt(&runs[2].id).await.expect("receipt");
    let size = 7; // tenant, policy, token, module, 3 runs
    assert!(
        last.checkpoint
            .starts_with(&format!("kasbah.local/log\n{size}\n"))
    );
    let key = f.vkey.to_string();
    let state = f.path("watch.state");
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert!(out.status.success(), "{}", text(&out));

    // A sloppy attacker deletes the last two entry rows only: the tables
    // disagree and the server refuses to start rather than sign over it.
    f.kill();
    let backup = f.tmp.path().join("kasbah.db.bak");
    {
        // Fold the WAL into the main file so one file is the whole database.
        let c = rusqlite::Connection::open(f.db_path()).expect("open");
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
    }
    std::fs::copy(f.db_path(), &backup).expect("backup");
    tamper(&f.db_path(), "DELETE FROM audit_entries WHERE idx >= 4");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(f.tmp.path().join("data"))
        .output()
        .expect("serve");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit log in the database is corrupt"),
        "{}",
        text(&out)
    );

    // A careful one drops them consistently (entries, nodes, size).
    for ext in ["kasbah.db-wal", "kasbah.db-shm"] {
        let _ = std::fs::remove_file(f.tmp.path().join("data").join(ext));
    }
    std::fs::copy(&backup, f.db_path()).expect("restore");
    tamper(
        &f.db_path(),
        "DELETE FROM audit_entries WHERE idx >= 4;
         DELETE FROM audit_nodes WHERE leaf >= 4;
         UPDATE audit_size SET size = 4;",
    );
    f.restart();
    // A fresh client: pooled connections to the killed process are dead.
    let dev = f.client(&tok);
    let e = dev.run_receipt(&runs[2].id).await.expect_err("entry gone");
    assert_eq!(api_code(&e).0, 404);
    // The receipt handed out earlier still proves the run was logged…
    verify_receipt(&last, &f.vkey, Some(m.digest)).expect("old receipt");
    // …and the watcher reports the rollback.
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "LOG ROLLBACK: the log now claims 4 entries but previously signed a tree of 7"
        ),
        "{}",
        text(&out)
    );
    // Appending again does not hide it: same size, different history.
    dev.run(&run_req(&m.digest, "x")).await.expect("run");
    dev.run(&run_req(&m.digest, "y")).await.expect("run");
    dev.run(&run_req(&m.digest, "z")).await.expect("run");
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LOG FORK"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_re_signed_with_another_key_is_rejected() {
    let hello = kasbah_tests::guest_bytes("hello");
    let mut f = Fixture::new().await;
    let (_, tok) = f.tenant("victim", None).await;
    let dev = f.client(&tok);
    let m = publish(&dev, f.tmp.path(), &hello, "hello", "1")
        .await
        .expect("publish");
    let key = f.vkey.to_string();
    let state = f.path("watch.state");
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert!(out.status.success(), "{}", text(&out));

    // Same origin, new key.
    f.kill();
    let key_file = f.tmp.path().join("data").join("audit-log.key");
    std::fs::remove_file(&key_file).expect("rm key");
    LogSigner::generate("kasbah.local/log")
        .expect("key")
        .save(&key_file)
        .expect("save");
    f.restart();
    // A fresh client: pooled connections to the killed process are dead.
    let dev = f.client(&tok);

    let r = dev.run(&run_req(&m.digest, "x")).await.expect("run");
    let receipt = dev.run_receipt(&r.id).await.expect("receipt");
    let err = verify_receipt(&receipt, &f.vkey, Some(m.digest)).expect_err("wrong key");
    assert!(
        err.to_string().contains("signed by a different key"),
        "{err}"
    );
    let file = f.path("r.json");
    save(&file, &receipt);
    let out = f.cli("", &["audit", "verify", &file, "--key", &key]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signed by a different key"),
        "{}",
        text(&out)
    );
    let out = f.cli(&tok, &["audit", "watch", "--key", &key, "--state", &state]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checkpoint rejected"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_entry() {
    let hello = kasbah_tests::guest_bytes("hello");
    let mut f = Fixture::new().await;
    let busy = Policy {
        limits: Limits {
            max_concurrent_runs: 64,
            ..Limits::default()
        },
        ..Policy::default()
    };
    let (_, tok) = f.tenant("load", Some(busy)).await;
    let dev = f.client(&tok);
    let base = publish(&dev, f.tmp.path(), &hello, "hello", "0")
        .await
        .expect("publish");
    let dir = Arc::new(f.tmp.path().to_path_buf());

    // Publishers and runners hammer the server; each remembers what the
    // server acknowledged.
    let mut tasks = Vec::new();
    for p in 0..2 {
        let (dev, dir, hello) = (dev.clone(), dir.clone(), hello.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for v in 0.. {
                let bytes = variant(&hello, &format!("{p}-{v}"));
                match publish(&dev, &dir, &bytes, &format!("load-{p}"), &v.to_string()).await {
                    Ok(m) => acked.push(("module", m.digest.to_string())),
                    Err(kasbah_client::Error::Api { status: 429, .. }) => {}
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    for w in 0..6 {
        let dev = dev.clone();
        let digest = base.digest;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                match dev.run(&run_req(&digest, &format!("w{w} i{i}"))).await {
                    Ok(r) if r.status == RunStatus::Done => acked.push(("run", r.id)),
                    Ok(r) => panic!("a waited-for run came back {r:?}"),
                    Err(kasbah_client::Error::Api { status: 429, .. }) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(_) => break,
                }
            }
            acked
        }));
    }

    // Take a checkpoint mid-load, let the load go on, then kill -9.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old_note = dev.checkpoint().await.expect("checkpoint");
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = all_entries(&f.admin()).await;
        let modules = n
            .iter()
            .filter(|e| e.entry.body.kind() == "module_published")
            .count();
        if (modules >= 3 && n.len() >= 40) || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    f.kill();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("task"));
    }
    let modules = acked.iter().filter(|a| a.0 == "module").count();
    let runs = acked.len() - modules;
    assert!(
        modules >= 1 && runs >= 10,
        "too little load: {modules} publishes, {runs} runs"
    );

    // Restart: every acknowledged publish and run has its entry, proven
    // into the new checkpoint with the old key…
    f.restart();
    // A fresh client: pooled connections to the killed process are dead.
    let dev = f.client(&tok);
    for (kind, id) in &acked {
        let receipt = if *kind == "module" {
            dev.module_receipt(id).await
        } else {
            dev.run_receipt(id).await
        }
        .unwrap_or_else(|e| panic!("acknowledged {kind} {id} has no receipt: {e}"));
        let v = verify_receipt(&receipt, &f.vkey, None).expect("verifies");
        match &v.entry.body {
            EntryBody::ModulePublished(m) => assert_eq!(&m.module.to_string(), id),
            EntryBody::RunExecuted(r) => {
                assert_eq!(&r.run_id, id);
                assert_eq!(r.outcome, "ok");
            }
            other => panic!("{other:?}"),
        }
    }
    // …and the log after the crash extends the checkpoint signed before it.
    let mut w = Watcher::new(f.vkey.clone(), &old_note).expect("old checkpoint");
    let outcome = dev.watch(&mut w).await.expect("consistent after the crash");
    assert!(
        matches!(outcome, kasbah_audit::WatchOutcome::Advanced { .. }),
        "{outcome:?}"
    );
    // Runs cut off by the kill got an `interrupted` entry on restart.
    let interrupted = all_entries(&dev)
        .await
        .into_iter()
        .filter(
            |e| matches!(&e.entry.body, EntryBody::RunExecuted(r) if r.outcome == "interrupted"),
        )
        .count();
    eprintln!(
        "crash test: {modules} publishes and {runs} runs acknowledged before kill -9, \
         {interrupted} runs interrupted; all verified after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_server_shuts_down_and_reopens_the_same_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = || kasbah_server::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: tmp.path().to_path_buf(),
        ..Default::default()
    };
    let tenant = |name: &str| CreateTenant {
        name: name.into(),
        operator_id: None,
        policy: None,
    };
    let s = kasbah_server::start(config()).await.expect("start");
    let token = s.admin_token.clone().expect("admin token");
    let key = s.state.audit.verifier();
    let c = Client::new(&format!("http://{}", s.addr), &token);
    assert_eq!(c.audit_key().await.expect("key"), key);
    c.create_tenant(&tenant("one")).await.expect("tenant");
    let note = c.checkpoint().await.expect("checkpoint");
    assert!(note.starts_with("kasbah.local/log\n2\n"), "{note}");
    tokio::time::timeout(Duration::from_secs(30), s.shutdown())
        .await
        .expect("shutdown in time")
        .expect("shutdown");

    let s = kasbah_server::start(config()).await.expect("restart");
    assert!(s.admin_token.is_none());
    assert_eq!(
        s.state.audit.verifier(),
        key,
        "the log key survives restarts"
    );
    let c = Client::new(&format!("http://{}", s.addr), &token);
    c.create_tenant(&tenant("two")).await.expect("tenant");
    let mut w = Watcher::new(key, &note).expect("watcher");
    assert_eq!(
        c.watch(&mut w).await.expect("consistent"),
        kasbah_audit::WatchOutcome::Advanced { from: 2, to: 4 }
    );
    tokio::time::timeout(Duration::from_secs(30), s.shutdown())
        .await
        .expect("shutdown in time")
        .expect("shutdown");
}
