//! The `kasbah` command line as a process (issue 13, item 8): a closed
//! stdout ends every command quietly with status 0; errors honour `--json`;
//! `run --no-wait` prints the run id; `publish` of bytes already published
//! under another version says so and fails; no ANSI colours on a stderr
//! that is not a terminal.

use std::io::Read;
use std::process::{Command, Output, Stdio};

use kasbah_tests::platform::Platform;

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

fn kasbah(url: &str, token: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("KASBAH_URL")
        .env_remove("KASBAH_TOKEN")
        .env_remove("NO_COLOR")
        .env("RUST_BACKTRACE", "1")
        .args(["--url", url, "--token", token]);
    c
}

/// Run with stdout a pipe whose reading end is already closed.
fn with_closed_stdout(mut c: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    c.stdout(writer).stderr(Stdio::piped());
    c.output().expect("spawn")
}

async fn out(c: Command) -> Output {
    let mut c = c;
    tokio::task::spawn_blocking(move || c.output().expect("spawn"))
        .await
        .expect("join")
}

#[tokio::test]
async fn every_command_ends_quietly_with_status_0_when_stdout_is_closed() {
    let p = Platform::start().await;
    let (t, dev) = p.tenant("acme", None).await;
    let dev_token = p.admin.tenant_token(&t.id).await.expect("token").token;
    let admin = p.server.admin_token.clone().expect("admin");
    // Tables print their header even when empty: every case writes.
    dev.publish(&kasbah_tests::guest_path("hello"), "hello", "1", |_, _| {})
        .await
        .expect("publish");
    let ds = dev
        .create_dataset_bytes(vec![b'd'; 300_000], "big.bin", None)
        .await
        .expect("dataset");
    let cases: &[(&str, &[&str])] = &[
        (&dev_token, &["dataset", "download", &ds.id]),
        (&dev_token, &["runs", "list"]),
        (&dev_token, &["--json", "runs", "list"]),
        (&dev_token, &["modules"]),
        (&dev_token, &["modules", "--json"]),
        (&dev_token, &["whoami"]),
        (&dev_token, &["dataset", "list"]),
        (&admin, &["tenant", "list"]),
        (&admin, &["operator", "list"]),
        (&admin, &["tokens", "list"]),
        (&admin, &["--json", "tokens", "list"]),
        (&admin, &["usage"]),
        (&admin, &["audit", "checkpoint"]),
        (&admin, &["--help"]),
        (&admin, &["serve", "--help"]),
        (&admin, &["runs", "--help"]),
    ];
    let url = p.url.clone();
    let cases: Vec<(String, Vec<String>)> = cases
        .iter()
        .map(|(t, a)| (t.to_string(), a.iter().map(|s| s.to_string()).collect()))
        .collect();
    tokio::task::spawn_blocking(move || {
        for (token, args) in cases {
            eprintln!("case {args:?}");
            let mut c = kasbah(&url, &token);
            c.args(&args);
            let o = with_closed_stdout(c);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(
                o.status.success(),
                "kasbah {args:?}: {:?}\n{stderr}",
                o.status
            );
            assert!(
                stderr.is_empty(),
                "kasbah {args:?} wrote to stderr:\n{stderr}"
            );
        }
    })
    .await
    .expect("cases");
}

#[tokio::test]
async fn errors_honour_json_and_no_wait_prints_the_run_id() {
    let p = Platform::start().await;
    let (t, dev) = p.tenant("acme", None).await;
    let dev_token = p.admin.tenant_token(&t.id).await.expect("token").token;
    let m = dev
        .publish(&kasbah_tests::guest_path("hello"), "hello", "1", |_, _| {})
        .await
        .expect("publish");

    // An API error with --json: the envelope on stderr, nothing on stdout.
    let mut c = kasbah(&p.url, "kbh_wrong");
    c.args(["--json", "whoami"]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).expect("JSON on stderr");
    assert_eq!(v["error"]["code"], "unauthenticated");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    // A revoked token: its own code.
    let tok = p.admin.tenant_token(&t.id).await.expect("token");
    p.admin.revoke_token(&tok.id).await.expect("revoke");
    let mut c = kasbah(&p.url, &tok.token);
    c.args(["--json", "modules"]);
    let v: serde_json::Value = serde_json::from_slice(&out(c).await.stderr).expect("JSON");
    assert_eq!(v["error"]["code"], "token_revoked");
    // A usage error with --json.
    let mut c = kasbah(&p.url, &dev_token);
    c.args(["--json", "runs", "list", "--limit", "many"]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).expect("JSON");
    assert_eq!(v["error"]["code"], "usage");
    // Without --json: text.
    let mut c = kasbah(&p.url, "kbh_wrong");
    c.arg("whoami");
    let o = out(c).await;
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: 401 unauthenticated"));

    // run --no-wait: the run id alone on stdout's first line.
    let mut c = kasbah(&p.url, &dev_token);
    c.args(["run", &m.digest.to_string(), "--no-wait"]);
    let o = out(c).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).expect("utf8");
    let id = stdout.lines().next().expect("a line").trim().to_string();
    assert!(id.starts_with("run_"), "{stdout:?}");
    assert_eq!(dev.get_run(&id).await.expect("that run").id, id);
}

#[tokio::test]
async fn publishing_published_bytes_under_a_new_version_says_so_and_fails() {
    let p = Platform::start().await;
    let (t, _) = p.tenant("acme", None).await;
    let dev_token = p.admin.tenant_token(&t.id).await.expect("token").token;
    let hello = kasbah_tests::guest_path("hello");
    let hello = hello.to_str().expect("utf8 path");
    let publish = |version: &str, json: bool| {
        let mut c = kasbah(&p.url, &dev_token);
        if json {
            c.arg("--json");
        }
        c.args(["publish", hello, "--name", "hello", "--version", version]);
        out(c)
    };
    let o = publish("1", false).await;
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("published hello@1 "));
    // Same bytes, same version: nothing to do, says so, status 0.
    let o = publish("1", false).await;
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("already published hello@1 "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Same bytes, a new version: not published; says what exists.
    let o = publish("2", false).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hello@2 was NOT published"), "{err}");
    assert!(err.contains("already published as hello@1"), "{err}");
    let o = publish("3", true).await;
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).expect("JSON");
    assert_eq!(v["error"]["code"], "already_published");
}

#[test]
fn no_ansi_colours_when_stderr_is_not_a_terminal() {
    // A clap error and a server warning (tracing), both on a piped stderr.
    let o = Command::new(BIN)
        .args(["runs", "list", "--bogus"])
        .env_remove("NO_COLOR")
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(2));
    assert!(!o.stderr.is_empty());
    assert!(
        !o.stderr.contains(&0x1b),
        "{:?}",
        String::from_utf8_lossy(&o.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("kasbah.toml");
    std::fs::write(
        &cfg,
        "fsync_every_commit = false\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("cfg");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("fsync_every_commit") {
        let n = stderr.read(&mut buf).expect("read");
        assert!(n > 0, "serve exited: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !seen.contains(&0x1b),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(String::from_utf8_lossy(&seen).contains("WARN"));
}

#[tokio::test]
async fn dataset_download_writes_the_bytes_of_the_dataset() {
    let p = Platform::start().await;
    let (t, dev) = p.tenant("acme", None).await;
    let dev_token = p.admin.tenant_token(&t.id).await.expect("token").token;
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let ds = dev
        .create_dataset_bytes(bytes.clone(), "table.bin", None)
        .await
        .expect("dataset");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("got.bin");
    let mut c = kasbah(&p.url, &dev_token);
    c.args(["dataset", "download", &ds.id, "-o"]).arg(&file);
    let o = out(c).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&file).expect("written") == bytes);
    let mut c = kasbah(&p.url, &dev_token);
    c.args(["dataset", "download", &ds.id]);
    let o = out(c).await;
    assert!(o.status.success() && o.stdout == bytes);
    // An admin reads the record, not the bytes.
    let admin = p.server.admin_token.clone().expect("admin");
    let mut c = kasbah(&p.url, &admin);
    c.args(["dataset", "download", &ds.id]);
    let o = out(c).await;
    assert!(!o.status.success() && o.stdout.is_empty());
}
