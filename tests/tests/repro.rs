//! Reproducible builds with provenance (issue 16, item 2).
//!
//! `kasbah build` of a guest from two copies of the source in two different
//! directories gives the same bytes; a one-character change gives another
//! digest; `kasbah audit rebuild` says match (exit 0) / mismatch (exit 1) and
//! checks the statement's subject and materials; the statement's `source`
//! material is recomputed here by `find | sort | sha256sum` (not kasbah's
//! code); publishing the statement puts a type 11 entry in the log and serves
//! it (and the module's bytes) back to the owner and granted auditors only.
//!
//! Builds are slow (a fresh target dir each: ~20-40 s for hello, ~40-60 s
//! for minilm-embed on 2 cores), so hello is built once here and shared
//! ([`hello_build`]), then rebuilt twice by `audit rebuild`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use kasbah_audit::EntryBody;
use kasbah_core::Digest;
use kasbah_core::api::CreateAuditor;
use kasbah_tests::platform::{Platform, api_err};

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

/// Copy the workspace's source (what `kasbah build` hashes: every file but
/// `target/` and `.git`) to `to`.
fn copy_source(to: &Path) {
    fn walk(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir").flatten() {
            let name = e.file_name();
            let kind = e.file_type().expect("file type");
            if name == ".git" || (kind.is_dir() && name == "target") {
                continue;
            }
            if kind.is_dir() {
                walk(&e.path(), &to.join(&name));
            } else if kind.is_file() {
                std::fs::copy(e.path(), to.join(&name)).expect("copy");
            }
        }
    }
    walk(&kasbah_tests::workspace_root(), to);
}

/// `kasbah ARGS` from a neutral working directory, without the caller's
/// build settings.
fn kasbah(args: &[&str]) -> Output {
    let cwd = tempfile::tempdir().expect("cwd");
    let out = Command::new(BIN)
        .current_dir(cwd.path())
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("KASBAH_URL")
        .env_remove("KASBAH_TOKEN")
        .args(args)
        .output()
        .expect("spawn kasbah");
    eprintln!(
        "kasbah {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr_tail(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr);
    e.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

/// `kasbah build DIR/guest-examples/GUEST --out OUT` → the digest printed.
fn build(src: &Path, guest: &str, out: &Path) -> String {
    let started = std::time::Instant::now();
    let o = kasbah(&[
        "build",
        src.join("guest-examples")
            .join(guest)
            .to_str()
            .expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(
        o.status.success(),
        "kasbah build failed:\n{}",
        stderr_tail(&o)
    );
    eprintln!("built {guest} in {:.1} s", started.elapsed().as_secs_f64());
    let digest = stdout(&o)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string();
    let bytes = std::fs::read(out).expect("module written");
    assert_eq!(digest, Digest::of(&bytes).to_string(), "printed digest");
    digest
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

fn material<'a>(st: &'a serde_json::Value, name: &str) -> &'a str {
    st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .expect("resolvedDependencies")
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no {name} material"))["digest"]["sha256"]
        .as_str()
        .expect("sha256")
}

/// hello built once from a copy of the source: (scratch dir, module, statement, digest).
struct HelloBuild {
    dir: PathBuf,
    module: PathBuf,
    provenance: PathBuf,
    digest: String,
}

fn hello_build() -> &'static HelloBuild {
    static B: OnceLock<HelloBuild> = OnceLock::new();
    B.get_or_init(|| {
        // Kept for the test process's life (statics are not dropped), in
        // cargo's scratch dir for integration tests, replaced by the next
        // run: the source copy is removed after the build, the module stays.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("repro-hello");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let src = dir.join("a");
        copy_source(&src);
        let module = dir.join("hello.wasm");
        let digest = build(&src, "hello", &module);
        // The source material, recomputed without kasbah: sha256sum over the
        // sorted file list, then sha256 of that listing.
        let listing = Command::new("bash")
            .current_dir(&src)
            .args([
                "-c",
                "find . \\( -name .git -o -type d -name target \\) -prune -o -type f -printf '%P\\0' \
                 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1",
            ])
            .output()
            .expect("bash");
        let independent = String::from_utf8_lossy(&listing.stdout).trim().to_string();
        let provenance = dir.join("hello.wasm.provenance.json");
        let st = read_json(&provenance);
        assert_eq!(material(&st, "source"), independent, "source tree digest");
        let lock = std::fs::read(src.join("Cargo.lock")).expect("lock");
        assert_eq!(
            format!("sha256:{}", material(&st, "Cargo.lock")),
            Digest::of(&lock).to_string()
        );
        std::fs::remove_dir_all(&src).expect("remove the copy");
        HelloBuild {
            dir,
            module,
            provenance,
            digest,
        }
    })
}

#[test]
fn hello_rebuilds_byte_for_byte_elsewhere_and_a_one_character_change_does_not() {
    let a = hello_build();
    let module = std::fs::read(&a.module).expect("module");
    let st = read_json(&a.provenance);

    // The statement: in-toto v1 + SLSA v1, subject = the module's digest.
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(
        format!(
            "sha256:{}",
            st["subject"][0]["digest"]["sha256"]
                .as_str()
                .expect("subject")
        ),
        a.digest
    );
    let deps = &st["predicate"]["buildDefinition"]["resolvedDependencies"];
    let rustc = deps
        .as_array()
        .expect("deps")
        .iter()
        .find(|d| d["name"] == "rustc")
        .expect("rustc material");
    assert!(
        rustc["annotations"]["rustc -vV"]
            .as_str()
            .expect("rustc -vV")
            .contains("release: ")
    );
    assert_eq!(rustc["annotations"]["target"], "wasm32-wasip2");

    // Embedded metadata (wasm-metadata's producers section), and no
    // machine path in the bytes.
    let producers = wasm_metadata_producers(&module);
    assert!(producers.contains("kasbah-sdk"), "{producers}");
    assert!(producers.contains("rustc"), "{producers}");
    let text = String::from_utf8_lossy(&module);
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    for leak in [
        a.dir.to_str().expect("utf8"),
        "/tmp/",
        &home,
        "kasbah-build-",
    ] {
        assert!(!text.contains(leak), "the module holds the path {leak:?}");
    }

    // Another copy of the same source, at another (longer) path: rebuilt
    // and checked against the digest and the statement → match, same bytes.
    let other = tempfile::Builder::new()
        .prefix("kasbah-repro-elsewhere-with-a-longer-name-")
        .tempdir()
        .expect("tempdir");
    let src = other.path().join("nested").join("src");
    copy_source(&src);
    let crate_dir = src.join("guest-examples/hello");
    let rebuilt = other.path().join("rebuilt.wasm");
    let o = kasbah(&[
        "audit",
        "rebuild",
        &a.digest,
        "--source",
        crate_dir.to_str().expect("utf8"),
        "--provenance",
        a.provenance.to_str().expect("utf8"),
        "--out",
        rebuilt.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_tail(&o));
    let said = stdout(&o);
    assert!(
        said.starts_with(&format!(
            "match: expected {}, rebuilt {}",
            a.digest, a.digest
        )),
        "{said}"
    );
    assert!(said.contains("material source: match"), "{said}");
    assert_eq!(
        std::fs::read(&rebuilt).expect("rebuilt"),
        module,
        "identical bytes"
    );

    // One character of hello's source changed → another digest, mismatch
    // (exit 1) naming both digests; the source material mismatches too.
    let lib = crate_dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).expect("lib.rs");
    assert!(code.contains("\"hello: "), "hello's log line moved");
    std::fs::write(&lib, code.replacen("\"hello: ", "\"hallo: ", 1)).expect("edit");
    let o = kasbah(&[
        "--json",
        "audit",
        "rebuild",
        &a.digest,
        "--source",
        crate_dir.to_str().expect("utf8"),
        "--provenance",
        a.provenance.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_tail(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["match"], false);
    assert_eq!(v["expected"], a.digest);
    let changed = v["rebuilt"].as_str().expect("rebuilt digest");
    assert!(changed.starts_with("sha256:") && changed != a.digest, "{v}");
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {v}"))["match"]
            .clone()
    };
    assert_eq!(check("module"), false);
    assert_eq!(check("provenance subject"), true);
    assert_eq!(check("material source"), false);
    assert_eq!(check("material Cargo.lock"), true);
    assert_eq!(check("material rustc"), true);
}

/// The outermost component's `producers` custom section (the last one: the
/// core modules inside come first), as text (its strings are length-prefixed
/// UTF-8: enough to look for names).
fn wasm_metadata_producers(module: &[u8]) -> String {
    let needle = b"\x09producers";
    let at = module
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("a producers section");
    String::from_utf8_lossy(&module[at..(at + 300).min(module.len())]).into_owned()
}

#[test]
fn minilm_embed_rebuilds_byte_for_byte_from_another_directory() {
    let one = tempfile::tempdir().expect("tempdir");
    let two = tempfile::Builder::new()
        .prefix("kasbah-repro-second-copy-")
        .tempdir()
        .expect("tempdir");
    copy_source(&one.path().join("s"));
    copy_source(&two.path().join("x/y/source"));
    let a = build(
        &one.path().join("s"),
        "minilm-embed",
        &one.path().join("m.wasm"),
    );
    let b = build(
        &two.path().join("x/y/source"),
        "minilm-embed",
        &two.path().join("m.wasm"),
    );
    assert_eq!(a, b, "minilm-embed from two directories");
    assert_eq!(
        std::fs::read(one.path().join("m.wasm")).expect("a"),
        std::fs::read(two.path().join("m.wasm")).expect("b")
    );
}

#[tokio::test]
async fn provenance_is_published_next_to_the_module_and_served_to_owner_and_auditors() {
    let hello = tokio::task::spawn_blocking(hello_build)
        .await
        .expect("build");
    let statement = std::fs::read(&hello.provenance).expect("statement");
    let st: serde_json::Value = serde_json::from_slice(&statement).expect("json");
    let p = Platform::start().await;
    let (acme, dev) = p.tenant("acme", None).await;
    let (_, other) = p.tenant("other", None).await;
    let dev_token = p.admin.tenant_token(&acme.id).await.expect("token").token;

    // `kasbah publish --provenance`: the module, then its statement.
    let (url, module, prov) = (
        p.url.clone(),
        hello.module.clone(),
        hello.provenance.clone(),
    );
    let tok = dev_token.clone();
    let o = tokio::task::spawn_blocking(move || {
        kasbah(&[
            "--url",
            &url,
            "--token",
            &tok,
            "publish",
            module.to_str().expect("utf8"),
            "--name",
            "hello",
            "--version",
            "1.0.0",
            "--provenance",
            prov.to_str().expect("utf8"),
        ])
    })
    .await
    .expect("join");
    assert!(o.status.success(), "{}", stderr_tail(&o));
    assert!(
        stdout(&o).contains(&format!("provenance {} recorded", Digest::of(&statement))),
        "{}",
        stdout(&o)
    );

    // The log: one type 11 entry naming module, statement and materials.
    let (_, entries) = dev.audit_log_entries(0, None).await.expect("entries");
    let found: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.entry.body {
            EntryBody::ProvenancePublished(p) => Some((e.bytes[1], p.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "one provenance entry");
    let (tag, entry) = &found[0];
    assert_eq!(*tag, 11, "entry type 11");
    assert_eq!(entry.tenant, acme.id);
    assert_eq!(entry.module.to_string(), hello.digest);
    assert_eq!(entry.statement, Digest::of(&statement));
    assert_eq!(
        entry.source.to_string(),
        format!("sha256:{}", material(&st, "source"))
    );
    assert_eq!(
        entry.cargo_lock.to_string(),
        format!("sha256:{}", material(&st, "Cargo.lock"))
    );
    assert!(
        entry.toolchain.starts_with("rustc 1.")
            && entry.toolchain.ends_with("target wasm32-wasip2"),
        "{}",
        entry.toolchain
    );
    // `kasbah audit entries` shows it.
    let (url, tok) = (p.url.clone(), dev_token.clone());
    let o = tokio::task::spawn_blocking(move || {
        kasbah(&["--url", &url, "--token", &tok, "audit", "entries"])
    })
    .await
    .expect("join");
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("provenance_published"),
        "{}",
        stdout(&o)
    );

    // Served back byte for byte to the owner and a granted auditor; not to
    // another tenant or the admin (404, as for anything out of reach).
    assert_eq!(
        dev.provenance(&hello.digest).await.expect("owner"),
        statement
    );
    let aud = p.client(
        &p.admin
            .create_auditor(&CreateAuditor {
                name: "sovereign-client".into(),
                tenants: vec![acme.id.clone()],
                ttl_seconds: None,
            })
            .await
            .expect("auditor")
            .token,
    );
    assert_eq!(
        aud.provenance(&hello.digest).await.expect("auditor"),
        statement
    );
    assert_eq!(
        api_err(other.provenance(&hello.digest).await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_err(p.admin.provenance(&hello.digest).await),
        (404, "not_found".into())
    );

    // The module's bytes likewise (`GET /v1/modules/{digest}/content`), so
    // an auditor can compare them with a rebuild.
    let bytes = std::fs::read(&hello.module).expect("module");
    assert_eq!(
        dev.module_content(&hello.digest).await.expect("owner"),
        bytes
    );
    assert_eq!(
        aud.module_content(&hello.digest).await.expect("auditor"),
        bytes
    );
    assert_eq!(
        api_err(other.module_content(&hello.digest).await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_err(p.admin.module_content(&hello.digest).await),
        (404, "not_found".into())
    );

    // Publishing it again: the same record, no new entry. Another tenant
    // cannot attach a statement to acme's module.
    let (again, created) = dev
        .put_provenance(&hello.digest, statement.clone())
        .await
        .expect("again");
    assert!(!created);
    assert_eq!(again.statement, Digest::of(&statement));
    assert_eq!(
        api_err(other.put_provenance(&hello.digest, statement.clone()).await),
        (404, "not_found".into())
    );

    // Refusals: another subject, not a statement, not JSON, too large, and
    // a second, different statement for the module.
    let mut wrong = st.clone();
    wrong["subject"][0]["digest"]["sha256"] = "ab".repeat(32).into();
    let put = |v: serde_json::Value| dev.put_provenance(&hello.digest, v.to_string().into_bytes());
    assert_eq!(
        api_err(put(wrong).await),
        (422, "provenance_subject_mismatch".into())
    );
    let mut two = st.clone();
    two["subject"] = serde_json::json!([st["subject"][0], st["subject"][0]]);
    assert_eq!(api_err(put(two).await), (422, "invalid_provenance".into()));
    let mut not_in_toto = st.clone();
    not_in_toto["_type"] = "https://example.com/Statement".into();
    assert_eq!(
        api_err(put(not_in_toto).await),
        (422, "invalid_provenance".into())
    );
    let mut no_source = st.clone();
    no_source["predicate"]["buildDefinition"]["resolvedDependencies"][0]["name"] = "src".into();
    assert_eq!(
        api_err(put(no_source).await),
        (422, "invalid_provenance".into())
    );
    assert_eq!(
        api_err(
            dev.put_provenance(&hello.digest, b"{\"_type\": ".to_vec())
                .await
        ),
        (422, "invalid_provenance".into())
    );
    let mut huge = st.clone();
    huge["predicate"]["runDetails"]["metadata"]["padding"] = "x".repeat(70 * 1024).into();
    assert_eq!(
        api_err(put(huge).await),
        (413, "provenance_too_large".into())
    );
    let mut different = st.clone();
    different["predicate"]["runDetails"]["metadata"]["note"] = "another build".into();
    assert_eq!(
        api_err(put(different).await),
        (409, "provenance_exists".into())
    );
    assert_eq!(
        dev.provenance(&hello.digest).await.expect("kept"),
        statement
    );
    let (_, entries) = dev.audit_log_entries(0, None).await.expect("entries");
    assert_eq!(
        entries
            .iter()
            .filter(|e| matches!(e.entry.body, EntryBody::ProvenancePublished(_)))
            .count(),
        1,
        "refusals and repeats add no entry"
    );
    // A module the tenant never published: 404.
    assert_eq!(
        api_err(
            dev.put_provenance(&Digest::of(b"nothing").to_string(), statement.clone())
                .await
        ),
        (404, "not_found".into())
    );
}
