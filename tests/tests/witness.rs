//! The log as C2SP tlog-tiles, read back by an independent reader, and
//! witnessed checkpoints (C2SP tlog-witness + tlog-cosignature) with two
//! `kasbah witness serve` processes.
//!
//! * tiles: `tests/fixtures/tlog/read_tiles.py` (Python standard library,
//!   written from the spec, no kasbah code) fetches `/checkpoint`, the hash
//!   tiles and the entry bundles and recomputes the checkpoint's root, at
//!   sizes with partial tiles only, exactly one full tile, and level-1 tiles;
//! * witnesses: the log submits each new checkpoint to two witnesses;
//!   receipts carry both cosignatures and `kasbah audit verify --witness …
//!   --threshold 2` accepts them; then the log is rolled back (its data dir
//!   restored from a copy) and forked (other entries appended past the
//!   witnessed size): both witnesses refuse (409, then 422), nothing is
//!   cosigned, and `audit verify` / `audit watch` with the witnesses refuse
//!   what the rolled-back log serves, while without them they accept it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kasbah_audit::witness::request_body;
use kasbah_audit::{CosignerVerifier, LogSigner, LogVerifier, open_checkpoint};
use kasbah_client::Client;
use kasbah_server::audit::entries::denial;
use kasbah_server::{Server, ServerConfig};
use kasbah_tests::platform;

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

fn reader() -> PathBuf {
    kasbah_tests::workspace_root().join("tests/fixtures/tlog/read_tiles.py")
}

/// Run the independent reader against `url`.
fn read_tiles(url: &str, token: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg(reader()).arg(url);
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reader failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("reader prints JSON")
}

/// Append denial entries until the log has exactly `size` entries.
async fn grow_to(server: &Server, size: u64, salt: &str) {
    let have = server
        .state
        .db
        .audit_read(|snap| snap.size)
        .expect("read size");
    assert!(have <= size, "log already has {have} > {size} entries");
    let batch: Vec<_> = (have..size)
        .map(|i| denial("t", None, None, "test", &format!("{salt} {i}")))
        .collect();
    for chunk in batch.chunks(100) {
        server.state.db.append(chunk).await.expect("append");
    }
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_are_read_back_by_an_independent_reader() {
    let p = platform::Platform::start_with(|c| c.fsync_every_commit = false).await;
    let vkey = p.admin.audit_key().await.expect("key");
    let admin_token = admin_token(&p);
    // Sizes: partial tiles only; exactly one full level-0 tile (and a
    // level-1 tile of width 1); partial level-0 + level-1; several full
    // level-0 tiles under a wider partial level-1 tile.
    for size in [5u64, 256, 300, 777] {
        grow_to(&p.server, size, "tiles").await;
        let r = read_tiles(&p.url, Some(&admin_token));
        assert_eq!(r["size"], size, "{r}");
        assert_eq!(r["root_matches"], true, "{r}");
        assert_eq!(r["entries_match"], true, "{r}");
        assert_eq!(r["entries"], size, "{r}");
        // The checkpoint it read is the log's, signed by the log key.
        let note = p.admin.checkpoint().await.expect("checkpoint");
        let cp = open_checkpoint(&vkey, &note).expect("signed by the log");
        assert_eq!(cp.checkpoint.size, size);
        assert_eq!(r["root"], cp.checkpoint.root.to_string());
        let fetched = r["fetched"].to_string();
        if size > 256 {
            assert!(
                fetched.contains("/tile/1/000.p/"),
                "level-1 tile read: {fetched}"
            );
        }
        if size == 256 {
            assert!(fetched.contains("\"/tile/0/000\""), "{fetched}");
            assert!(fetched.contains("/tile/1/000.p/1"), "{fetched}");
        }
    }
    // Entry bundles hold every tenant's entries: admins only by default;
    // the hash tiles and the checkpoint need no token.
    let r = read_tiles(&p.url, None);
    assert_eq!(r["root_matches"], true, "{r}");
    assert_eq!(r["entries_status"], 401, "{r}");
    let (tenant, _dev) = p.tenant("acme", None).await;
    let dev_token = p.admin.tenant_token(&tenant.id).await.expect("token").token;
    let resp = get(&format!("{}/tile/entries/000", p.url), Some(&dev_token)).await;
    assert_eq!(resp.status(), 403);
    // Beyond the tree: 404; malformed or unbounded paths: 400.
    let size = p
        .server
        .state
        .db
        .audit_read(|snap| snap.size)
        .expect("size");
    let last_width = size % 256;
    for (path, status) in [
        (format!("/tile/0/{:03}", size / 256), 404),
        (
            format!("/tile/0/{:03}.p/{}", size / 256, last_width + 1),
            404,
        ),
        (format!("/tile/0/{:03}.p/{}", size / 256, last_width), 200),
        ("/tile/1/000".to_string(), 404),
        ("/tile/2/000.p/1".to_string(), 404),
        ("/tile/7/x999/999".to_string(), 404),
        ("/tile/64/000".to_string(), 400),
        ("/tile/0/1".to_string(), 400),
        ("/tile/0/000.p/256".to_string(), 400),
        ("/tile/0/x000/000".to_string(), 400),
        ("/tile/0/x018/x446/x744/x073/x709/x551/615".to_string(), 404),
        ("/tile/0/x018/x446/x744/x073/x709/x551/616".to_string(), 400),
        ("/tile/entries/999.p/1".to_string(), 404),
    ] {
        let resp = get(&format!("{}{path}", p.url), Some(&admin_token)).await;
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    let resp = get(&format!("{}/tile/0/000", p.url), None).await;
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.expect("body").len(), 256 * 32);
    let resp = get(&format!("{}/checkpoint", p.url), None).await;
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("max-age=0")
    );
    p.server.shutdown().await.expect("shutdown");

    // With both switches flipped: hashes need a token, bundles are public.
    let q = platform::Platform::start_with(|c| {
        c.audit_tiles_public = false;
        c.audit_entry_bundles_public = true;
    })
    .await;
    grow_to(&q.server, 3, "switches").await;
    assert_eq!(
        get(&format!("{}/checkpoint", q.url), None).await.status(),
        401
    );
    assert_eq!(
        get(&format!("{}/tile/0/000.p/1", q.url), None)
            .await
            .status(),
        401
    );
    let token = q.server.admin_token.clone().expect("admin token");
    assert_eq!(
        get(&format!("{}/tile/0/000.p/1", q.url), Some(&token))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&format!("{}/tile/entries/000.p/1", q.url), None)
            .await
            .status(),
        200
    );
}

fn admin_token(p: &platform::Platform) -> String {
    p.server.admin_token.clone().expect("admin token")
}

/// A `kasbah witness serve` process.
struct WitnessProc {
    child: Child,
    url: String,
    vkey: CosignerVerifier,
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn witness(dir: &Path, name: &str, log: &LogVerifier) -> WitnessProc {
    let key = dir.join(format!("{name}.key"));
    let out = Command::new(BIN)
        .args(["witness", "key", "generate", "--name"])
        .arg(format!("witness.test/{name}"))
        .arg("--out")
        .arg(&key)
        .output()
        .expect("key generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vkey: CosignerVerifier = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a witness vkey");
    let mut child = Command::new(BIN)
        .args(["witness", "serve", "--listen", "127.0.0.1:0", "--key"])
        .arg(&key)
        .arg("--log")
        .arg(format!("{}={log}", log.name()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn witness");
    let banner = kasbah_tests::read_serve_banner(child.stdout.take().expect("stdout"));
    let url = banner
        .url
        .unwrap_or_else(|| panic!("witness did not start:\n{}", banner.printed));
    WitnessProc { child, url, vkey }
}

fn config(data: &Path, witnesses: &[&WitnessProc]) -> ServerConfig {
    let mut c = platform::config(data);
    c.fsync_every_commit = false;
    c.witness_interval_ms = 50;
    c.audit_witnesses = witnesses
        .iter()
        .map(|w| kasbah_server::config::WitnessConfig {
            url: w.url.clone(),
            key: w.vkey.to_string(),
        })
        .collect();
    c
}

/// Wait until the served checkpoint has `size` entries and cosignatures by
/// every witness in `ws`.
async fn until_cosigned(url: &str, size: u64, ws: &[CosignerVerifier]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let note = get(&format!("{url}/checkpoint"), None)
            .await
            .text()
            .await
            .expect("text");
        let at = note.lines().nth(1).and_then(|l| l.parse::<u64>().ok());
        if at == Some(size) && kasbah_audit::require_cosignatures(&note, ws, ws.len()).is_ok() {
            return note;
        }
        assert!(Instant::now() < deadline, "not cosigned at {size}:\n{note}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kasbah audit verify` on a receipt; its exit code and stderr.
fn verify(dir: &Path, receipt: &kasbah_audit::Receipt, args: &[String]) -> (i32, String) {
    let file = dir.join("receipt.json");
    std::fs::write(&file, serde_json::to_string(receipt).expect("json")).expect("write");
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&file)
        .args(args)
        .output()
        .expect("audit verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let ty = e.file_type().expect("type");
        let dest = to.join(e.file_name());
        if ty.is_dir() {
            copy_dir(&e.path(), &dest);
        } else if ty.is_file() {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

async fn post(url: &str, body: String) -> (u16, String, String) {
    let r = reqwest::Client::new()
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (status, ct, r.text().await.expect("text"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_witnesses_cosign_and_refuse_a_rolled_back_or_forked_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    // The log key exists before the server starts, so the witnesses can be
    // told which log they witness.
    let log_key = LogSigner::generate("kasbah.local/log").expect("key");
    log_key
        .save(&data.join(kasbah_server::audit::key::KEY_FILE))
        .expect("save");
    let log_vkey = log_key.verifier();
    let w1 = witness(tmp.path(), "w1", &log_vkey);
    let w2 = witness(tmp.path(), "w2", &log_vkey);
    let keys = [w1.vkey.clone(), w2.vkey.clone()];
    let wargs: Vec<String> = vec![
        "--key".into(),
        log_vkey.to_string(),
        "--witness".into(),
        w1.vkey.to_string(),
        "--witness".into(),
        w2.vkey.to_string(),
        "--threshold".into(),
        "2".into(),
    ];
    let plain_args: Vec<String> = wargs[..2].to_vec();

    // 1. A log of 40 entries, cosigned by both.
    let server = kasbah_server::start(config(&data, &[&w1, &w2]))
        .await
        .expect("start");
    let url = format!("http://{}", server.addr);
    let admin_tok = server.admin_token.clone().expect("admin token");
    let admin = Client::new(&url, &admin_tok);
    grow_to(&server, 40, "first").await;
    let note = until_cosigned(&url, 40, &keys).await;
    // `GET /v1/audit/checkpoint` serves the same cosigned note.
    assert_eq!(admin.checkpoint().await.expect("checkpoint"), note);
    let receipt = admin.entry_receipt(7).await.expect("receipt");
    assert_eq!(
        receipt.checkpoint, note,
        "receipts carry the cosigned checkpoint"
    );
    let (code, out) = verify(tmp.path(), &receipt, &wargs);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cosigned by  witness.test/w1, witness.test/w2"),
        "{out}"
    );
    // A threshold above the keys given is a usage error.
    let mut three = wargs.clone();
    three[7] = "3".into();
    assert_eq!(verify(tmp.path(), &receipt, &three).0, 2);
    // The witnesses' monitoring endpoint serves what they cosigned.
    let origin_hash = kasbah_core::Digest::of(b"kasbah.local/log").hex();
    let seen = get(&format!("{}/{origin_hash}/checkpoint", w1.url), None)
        .await
        .text()
        .await
        .expect("text");
    assert!(open_checkpoint(&log_vkey, &seen).is_ok(), "{seen}");
    assert!(w1.vkey.verify(&seen).is_ok(), "{seen}");
    server.shutdown().await.expect("shutdown");

    // 2. Keep a copy of the data dir at 40 entries (what an operator would
    //    restore to hide what came after), then grow to 90, cosigned.
    let copy = tmp.path().join("copy-at-40");
    copy_dir(&data, &copy);
    let server = kasbah_server::start(config(&data, &[&w1, &w2]))
        .await
        .expect("restart");
    let url = format!("http://{}", server.addr);
    grow_to(&server, 90, "first").await;
    until_cosigned(&url, 90, &keys).await;
    server.shutdown().await.expect("shutdown");

    // 3. Roll back: the data dir as it was at 40 entries.
    std::fs::remove_dir_all(&data).expect("rm");
    copy_dir(&copy, &data);
    let server = kasbah_server::start(config(&data, &[&w1, &w2]))
        .await
        .expect("start rolled back");
    let url = format!("http://{}", server.addr);
    let admin = Client::new(&url, &admin_tok);
    let rolled = admin.checkpoint().await.expect("checkpoint");
    assert_eq!(rolled.lines().nth(1), Some("40"));
    // Both witnesses refuse it: they cosigned 90 (409, and they say so).
    for w in [&w1, &w2] {
        let (status, ct, body) = post(&w.url, request_body(40, &[], &rolled)).await;
        assert_eq!(
            (status, ct.as_str(), body.as_str()),
            (409, "text/x.tlog.size", "90\n")
        );
    }
    // The log's own submissions get nothing: no cosignature is served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = get(&format!("{url}/checkpoint"), None)
        .await
        .text()
        .await
        .expect("text");
    assert!(
        kasbah_audit::require_cosignatures(&served, &keys, 1).is_err(),
        "{served}"
    );
    let receipt = admin.entry_receipt(7).await.expect("receipt");
    let (code, out) = verify(tmp.path(), &receipt, &wargs);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("0 valid witness cosignatures, 2 required"),
        "{out}"
    );
    // Without witnesses, the client cannot tell.
    assert_eq!(verify(tmp.path(), &receipt, &plain_args).0, 0);
    // `audit watch` demanding the witnesses does not accept it either.
    let watch = Command::new(BIN)
        .args(["audit", "watch", "--url", &url, "--token", &admin_tok])
        .args(&wargs)
        .arg("--state")
        .arg(tmp.path().join("watch.checkpoint"))
        .output()
        .expect("watch");
    assert_eq!(watch.status.code(), Some(1), "{watch:?}");
    assert!(
        String::from_utf8_lossy(&watch.stderr).contains("checkpoint not accepted"),
        "{watch:?}"
    );

    // 4. Fork: the rolled-back log grows past 90 with other entries.
    grow_to(&server, 95, "forked").await;
    let forked = admin.checkpoint().await.expect("checkpoint");
    assert_eq!(forked.lines().nth(1), Some("95"));
    let proof = admin.consistency_proof(90, 95).await.expect("proof");
    for w in [&w1, &w2] {
        let (status, _, body) = post(&w.url, request_body(90, &proof, &forked)).await;
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("not proven to extend"), "{body}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = get(&format!("{url}/checkpoint"), None)
        .await
        .text()
        .await
        .expect("text");
    assert!(
        kasbah_audit::require_cosignatures(&served, &keys, 1).is_err(),
        "{served}"
    );
    let receipt = admin.entry_receipt(92).await.expect("receipt");
    assert_eq!(verify(tmp.path(), &receipt, &wargs).0, 1);
    assert_eq!(verify(tmp.path(), &receipt, &plain_args).0, 0);
    // A checkpoint signed by another key, and an unknown log: 403, 404.
    let impostor = LogSigner::generate("kasbah.local/log").expect("key");
    let fake = kasbah_audit::Checkpoint::new("kasbah.local/log", 95, kasbah_audit::Hash::empty())
        .sign(&impostor)
        .expect("sign");
    assert_eq!(
        post(&w1.url, request_body(90, &[], &fake.note)).await.0,
        403
    );
    let other = LogSigner::generate("other.example/log").expect("key");
    let unknown =
        kasbah_audit::Checkpoint::new("other.example/log", 0, kasbah_audit::Hash::empty())
            .sign(&other)
            .expect("sign");
    assert_eq!(
        post(&w1.url, request_body(0, &[], &unknown.note)).await.0,
        404
    );
    server.shutdown().await.expect("shutdown");

    // 5. A witness restarted keeps its state: still 409 at 90.
    drop(w2);
    let key = tmp.path().join("w2.key");
    let mut child = Command::new(BIN)
        .args(["witness", "serve", "--listen", "127.0.0.1:0", "--key"])
        .arg(&key)
        .arg("--log")
        .arg(log_vkey.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let banner = kasbah_tests::read_serve_banner(child.stdout.take().expect("stdout"));
    let w2_url = banner.url.expect("listening");
    let (status, _, body) = post(&w2_url, request_body(40, &[], &rolled)).await;
    assert_eq!((status, body.as_str()), (409, "90\n"));
    let _ = child.kill();
    let _ = child.wait();
}
