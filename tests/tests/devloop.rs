//! The developer's loop (issue 18, items 1-3): `kasbah new` makes a
//! pipeline crate outside the workspace that builds offline and runs;
//! modules are run and read by `name@version` and `name` (the digest run is
//! the one in the record and the receipt); `POST /v1/invoke/{name}` runs a
//! pipeline on the raw request body and answers its output, the outcome
//! mapped onto the status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kasbah_client::Client;
use kasbah_core::api::{CreateAuditor, CreateRun, ModuleRecord};
use kasbah_core::{Digest, Outcome};
use kasbah_policy::{DirGrant, DirMode, Limits, Policy};
use kasbah_tests::platform::{Platform, api_err};
use kasbah_tests::{guest_bytes, guest_path, workspace_root};

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `kasbah ARGS` in `dir`, with `stdin`, no server settings from the
/// environment unless given in `env`.
fn kasbah(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("KASBAH_URL")
        .env_remove("KASBAH_TOKEN")
        .env("KASBAH_COMPILE_CACHE", dir.join("compiled"))
        .env("XDG_RUNTIME_DIR", dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn kasbah");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("kasbah ran")
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .args(args)
        .output()
        .expect("run cargo")
}

/// The build directory the generated crates share between test runs (so a
/// second run only rebuilds the crate itself).
fn new_crate_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("kasbah-new-test")
}

#[test]
fn kasbah_new_makes_a_crate_that_builds_offline_outside_the_workspace_and_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    assert!(!d.starts_with(workspace_root()), "outside the workspace");

    // Names are bounded; an existing non-empty directory is never written into.
    for bad in ["2fast", "../escape", "a/b", "x y", ""] {
        let o = kasbah(d, &["new", bad], b"", &[]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o.stderr));
    }
    std::fs::create_dir(d.join("taken")).expect("mkdir");
    std::fs::write(d.join("taken/keep.txt"), "mine").expect("write");
    let o = kasbah(d, &["new", "taken"], b"", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_dir(d.join("taken")).expect("dir").count(),
        1,
        "nothing written into a non-empty directory"
    );

    // --sdk: a path dependency on an SDK source, no vendored copy.
    let sdk = workspace_root().join("sdk");
    let sdk = sdk.to_str().expect("utf-8 path");
    let o = kasbah(d, &["new", "linked", "--sdk", sdk], b"", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let manifest = std::fs::read_to_string(d.join("linked/Cargo.toml")).expect("manifest");
    assert!(manifest.contains("kasbah-sdk = { path = \""), "{manifest}");
    assert!(!d.join("linked/vendor").exists());

    // The default: the SDK and WIT embedded in the binary, vendored.
    let o = kasbah(d, &["new", "word-count", "--dir", "pipelines/wc"], b"", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let krate = d.join("pipelines/wc");
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).expect("manifest");
    for want in [
        "crate-type = [\"cdylib\"]",
        "kasbah-sdk = { path = \"vendor/kasbah-sdk\" }",
        "[profile.release]",
        "lto = true",
        "panic = \"abort\"",
        "strip = true",
        "[workspace]",
    ] {
        assert!(manifest.contains(want), "{want} missing:\n{manifest}");
    }
    assert!(krate.join("vendor/wit/pipeline.wit").is_file());
    assert!(krate.join("vendor/kasbah-sdk/src/lib.rs").is_file());
    let readme = std::fs::read_to_string(krate.join("README.md")).expect("readme");
    for want in [
        "cargo build --release --target wasm32-wasip2",
        "kasbah run",
        "kasbah publish",
        "/v1/invoke/word-count",
    ] {
        assert!(
            readme.contains(want),
            "{want} missing from README:\n{readme}"
        );
    }

    // Builds offline into a component, and its unit tests pass natively.
    let target = new_crate_target();
    let o = cargo(
        &krate,
        &target,
        &[
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-wasip2",
        ],
    );
    assert!(o.status.success(), "build: {}", text(&o.stderr));
    let wasm = target.join("wasm32-wasip2/release/word_count.wasm");
    let bytes = std::fs::read(&wasm).expect("component built");
    assert_eq!(
        &bytes[..8],
        b"\0asm\x0d\0\x01\0",
        "a component, not a core module"
    );
    let o = cargo(&krate, &target, &["test", "--offline"]);
    assert!(
        o.status.success(),
        "cargo test: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("2 passed"), "{}", text(&o.stdout));

    // And `kasbah run` runs it in the sandbox.
    let wasm = wasm.to_str().expect("utf-8 path");
    let o = kasbah(d, &["run", wasm], b"hello from outside", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim_end(), "HELLO FROM OUTSIDE");
    assert!(
        text(&o.stderr).contains("word-count: 18 bytes in"),
        "{}",
        text(&o.stderr)
    );
}

/// `bytes` with a custom section appended: another digest, the same code.
fn with_custom_section(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    let name = b"kasbah-test";
    let payload_len = 1 + name.len() + tag.len();
    assert!(payload_len < 128 && name.len() < 128);
    bytes.push(0);
    bytes.push(payload_len as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(tag.as_bytes());
    bytes
}

async fn publish_bytes(dev: &Client, bytes: &[u8], name: &str, version: &str) -> ModuleRecord {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("m.wasm");
    std::fs::write(&path, bytes).expect("write");
    dev.publish(&path, name, version, |_, _| {})
        .await
        .expect("publish")
}

fn run_req(module: &str, input: &str) -> CreateRun {
    CreateRun {
        module: module.into(),
        input: Some(input.into()),
        wait: true,
        ..CreateRun::default()
    }
}

// Multi-threaded: the test blocks on `kasbah` processes that talk to the
// server running on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_by_name_run_and_read_the_digest_they_name() {
    let p = Platform::start().await;
    let (a, dev) = p.tenant("acme", None).await;
    let (b, other) = p.tenant("other", None).await;
    let hello = guest_bytes("hello");
    let v1 = publish_bytes(&dev, &hello, "hello", "1").await;
    let v2 = publish_bytes(
        &dev,
        &with_custom_section(hello.clone(), "v2"),
        "hello",
        "2",
    )
    .await;
    assert_ne!(v1.digest, v2.digest);
    // Another tenant's `hello` is not acme's.
    let theirs = publish_bytes(&other, &with_custom_section(hello, "b"), "hello", "9").await;

    for (reference, want) in [
        ("hello@1", v1.digest),
        ("hello@2", v2.digest),
        ("hello", v2.digest),
    ] {
        let r = dev.run(&run_req(reference, "by name")).await.expect("run");
        assert_eq!(r.module, want, "{reference} ran the digest it names");
        assert!(
            matches!(r.outcome, Some(Outcome::Ok { .. })),
            "{reference}: {r:?}"
        );
        let out = r.output.as_ref().and_then(|o| o.inline.as_ref());
        assert_eq!(out.map(|b| b.bytes.as_slice()), Some(&b"BY NAME"[..]));
        // The receipt proves the digest that ran.
        let key = dev.audit_key().await.expect("log key");
        let receipt = dev.run_receipt(&r.id).await.expect("receipt");
        kasbah_audit::verify_receipt(&receipt, &key, Some(want)).expect("receipt names it");
        assert!(kasbah_audit::verify_receipt(&receipt, &key, Some(theirs.digest)).is_err());
    }
    let r = other.run(&run_req("hello", "x")).await.expect("run");
    assert_eq!(r.module, theirs.digest, "each tenant's own `hello`");
    assert_eq!(
        api_err(other.run(&run_req("hello@1", "x")).await),
        (404, "not_found".into())
    );

    // Unknown and malformed references: stable codes, never a 500.
    assert_eq!(
        api_err(dev.run(&run_req("hello@3", "x")).await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_err(dev.run(&run_req("nothing", "x")).await),
        (404, "not_found".into())
    );
    let long = "n".repeat(129);
    for bad in ["hello@", "@1", "a@b@c", "he llo", "a/b", long.as_str()] {
        assert_eq!(
            api_err(dev.run(&run_req(bad, "x")).await),
            (422, "invalid_module_ref".into()),
            "{bad:?}"
        );
    }
    assert_eq!(
        api_err(dev.run(&run_req("sha256:zz", "x")).await),
        (400, "invalid_digest".into())
    );

    // Module lookups, content and receipts by name.
    assert_eq!(dev.module("hello@1").await.expect("get").digest, v1.digest);
    assert_eq!(dev.module("hello").await.expect("get").digest, v2.digest);
    assert_eq!(
        dev.module_content("hello@1").await.expect("bytes"),
        guest_bytes("hello")
    );
    let key = dev.audit_key().await.expect("key");
    let mr = dev.module_receipt("hello@2").await.expect("module receipt");
    kasbah_audit::verify_receipt(&mr, &key, Some(v2.digest)).expect("names v2");
    assert_eq!(
        api_err(dev.module("hello@3").await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_err(dev.module("x@y@z").await),
        (422, "invalid_module_ref".into())
    );
    // The admin reads both tenants: a bare name is ambiguous there, a
    // tenant filter or a version only one has is not.
    let http = reqwest::Client::new();
    let admin_get = |path: String| {
        let req = http
            .get(format!("{}{path}", p.url))
            .bearer_auth(p.server.admin_token.clone().expect("admin token"));
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.expect("json");
            (status, v)
        }
    };
    let (status, v) = admin_get("/v1/modules/hello".into()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("ambiguous_module")),
        "{v}"
    );
    let (status, v) = admin_get(format!("/v1/modules/hello?tenant={}", a.id)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["digest"], v2.digest.to_string());
    let (status, v) = admin_get("/v1/modules/hello@9".into()).await;
    assert_eq!(
        (status, v["tenant_id"].as_str()),
        (200, Some(b.id.as_str())),
        "{v}"
    );

    // The CLI: `kasbah run hello@1` runs on the server.
    let tok = p.admin.tenant_token(&a.id).await.expect("token").token;
    let dir = tempfile::tempdir().expect("tmp");
    let env = [
        ("KASBAH_URL", p.url.as_str()),
        ("KASBAH_TOKEN", tok.as_str()),
    ];
    let o = kasbah(dir.path(), &["run", "hello@1"], b"from the cli", &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim_end(), "FROM THE CLI");
    assert!(
        text(&o.stderr).contains(&v1.digest.to_string()),
        "{}",
        text(&o.stderr)
    );
    let o = kasbah(dir.path(), &["run", "hello@7"], b"x", &env);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not found"), "{}", text(&o.stderr));
    // A file of that name is still a local run.
    std::fs::copy(guest_path("hello"), dir.path().join("hello")).expect("copy");
    let o = kasbah(dir.path(), &["run", "hello"], b"local", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim_end(), "LOCAL");
}

/// A policy that lets the hostile guest (which imports wasi:filesystem) publish.
fn hostile_policy(dir: &Path, limits: Limits) -> Policy {
    Policy {
        files: vec![DirGrant {
            host: dir.to_path_buf(),
            guest: "/data".into(),
            mode: DirMode::Ro,
        }],
        limits,
        ..Policy::default()
    }
}

/// An invoke and what it answers: module, body, `kasbah-meta-attack`,
/// status, error code, outcome.
type Case = (
    &'static str,
    Vec<u8>,
    Option<&'static str>,
    u16,
    &'static str,
    &'static str,
);

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn invoke_answers_the_output_and_maps_outcomes_to_statuses() {
    let p = Platform::start().await;
    let data = tempfile::tempdir().expect("tmp");
    let limits = Limits {
        wall_time_ms: 300,
        max_input_bytes: 1024,
        ..Limits::default()
    };
    let (t, dev) = p
        .tenant("acme", Some(hostile_policy(data.path(), limits)))
        .await;
    let tok = p.admin.tenant_token(&t.id).await.expect("token").token;
    let hello = publish_bytes(&dev, &guest_bytes("hello"), "hello", "1").await;
    let hello2 = publish_bytes(
        &dev,
        &with_custom_section(guest_bytes("hello"), "2"),
        "hello",
        "2",
    )
    .await;
    let hostile = publish_bytes(&dev, &guest_bytes("hostile"), "hostile", "1").await;
    let http = reqwest::Client::new();
    let invoke = |path: &str, body: Vec<u8>, ct: &str, meta: Option<&str>| {
        let mut req = http
            .post(format!("{}/v1/invoke/{path}", p.url))
            .bearer_auth(&tok)
            .header("content-type", ct)
            .body(body);
        if let Some(m) = meta {
            req = req.header("kasbah-meta-attack", m);
        }
        async move { req.send().await.expect("send") }
    };

    // ok: 200, the output's bytes and content type; the run id, outcome and
    // the digest run in headers; the record is an ordinary run's.
    let r = invoke("hello", b"raw body".to_vec(), "text/plain", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(header(&r, "kasbah-outcome"), "ok");
    assert_eq!(header(&r, "kasbah-module"), hello2.digest.to_string());
    let id = header(&r, "kasbah-run-id");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"RAW BODY");
    let rec = dev.get_run(&id).await.expect("record");
    assert_eq!(rec.module, hello2.digest);
    assert_eq!(rec.input_digest, Digest::of(b"raw body"));
    let key = dev.audit_key().await.expect("key");
    let receipt = dev.run_receipt(&id).await.expect("audited like any run");
    kasbah_audit::verify_receipt(&receipt, &key, Some(hello2.digest)).expect("receipt");

    let r = invoke("hello@1", b"one".to_vec(), "text/plain", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "kasbah-module"), hello.digest.to_string());

    // Content types pass through both ways; a JSON body that is not an
    // object is the pipeline's business, not refused by the API.
    let r = invoke(
        "hostile",
        b"[1, 2]".to_vec(),
        "application/json",
        Some("echo"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/json");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"[1, 2]");
    let r = invoke(
        &hostile.digest.to_string(),
        b"x".to_vec(),
        "text/csv",
        Some("echo"),
    )
    .await;
    assert_eq!(
        (r.status().as_u16(), header(&r, "content-type")),
        (200, "text/csv".into())
    );

    // Outcomes other than ok: the error envelope, the outcome in a header.
    // (module, body, kasbah-meta-attack, status, error code, outcome)
    let cases: [Case; 5] = [
        (
            "hello",
            vec![0xff, 0xfe],
            None,
            422,
            "invalid_input",
            "guest_error",
        ),
        (
            "hostile",
            b"x".to_vec(),
            Some("loop"),
            504,
            "deadline_exceeded",
            "deadline_exceeded",
        ),
        ("hostile", b"x".to_vec(), Some("panic"), 502, "trap", "trap"),
        (
            "hostile",
            b"x".to_vec(),
            Some("read-passwd"),
            403,
            "guest_denied",
            "guest_error",
        ),
        (
            "hostile",
            b"10".to_vec(),
            Some("giant-error"),
            502,
            "guest_failed",
            "guest_error",
        ),
    ];
    for (module, body, meta, status, code, outcome) in cases {
        let r = invoke(module, body, "application/octet-stream", meta).await;
        assert_eq!(r.status(), status, "{module} {meta:?}");
        assert_eq!(header(&r, "kasbah-outcome"), outcome, "{module} {meta:?}");
        let id = header(&r, "kasbah-run-id");
        assert!(id.starts_with("run_"), "{id}");
        let v: serde_json::Value = r.json().await.expect("error envelope");
        assert_eq!(v["error"]["code"], code, "{v}");
        let rec = dev.get_run(&id).await.expect("recorded");
        assert_eq!(rec.outcome.as_ref().map(|o| o.kind()), Some(outcome));
    }

    // Refusals before any run: the same as POST /v1/runs.
    let runs_before = dev.runs(1000).await.expect("runs").len();
    let r = invoke("hello", vec![b'a'; 2000], "text/plain", None).await;
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "input_too_large", "{v}");
    for (path, status, code) in [
        ("nothing", 404, "not_found"),
        ("hello@3", 404, "not_found"),
        ("he%20llo", 422, "invalid_module_ref"),
    ] {
        let r = invoke(path, b"x".to_vec(), "text/plain", None).await;
        assert_eq!(r.status(), status, "{path}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }
    let r = http
        .post(format!("{}/v1/invoke/hello", p.url))
        .body("x")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    // Only developers start runs: not the admin, not an auditor.
    let auditor = p
        .admin
        .create_auditor(&CreateAuditor {
            name: "aud".into(),
            tenants: vec![t.id.clone()],
            ttl_seconds: None,
        })
        .await
        .expect("auditor")
        .token;
    for token in [p.server.admin_token.clone().expect("admin"), auditor] {
        let r = http
            .post(format!("{}/v1/invoke/hello", p.url))
            .bearer_auth(token)
            .body("x")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 403);
    }
    assert_eq!(
        dev.runs(1000).await.expect("runs").len(),
        runs_before,
        "no run recorded for a refused invoke"
    );
}
