//! The HTTP layer against hostile clients and an orderly stop: hundreds of
//! slow connections under a low open-file limit do not keep a normal client
//! waiting, and are closed after their timeouts; SIGTERM lets an in-flight
//! synchronous run finish and store its record, refuses new connections
//! and exits 0.
//!
//! The server runs as a separate process (`kasbah-under-test serve`) so its
//! file descriptor limit can be set and it can be signalled.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kasbah_client::Client;
use kasbah_core::Outcome;
use kasbah_core::api::{CreateRun, CreateTenant, RunStatus};
use kasbah_policy::{Limits, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

struct Proc {
    child: Child,
    url: String,
    addr: String,
}

impl Proc {
    /// `kasbah serve` on `root/data` with `config` (TOML), its open-file
    /// limit (soft and hard) set to `nofile` when given. Returns the admin
    /// token on a first start.
    fn start(root: &Path, config: &str, nofile: Option<u64>) -> (Proc, Option<String>) {
        let cfg = root.join("kasbah.toml");
        std::fs::write(&cfg, config).expect("config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("server.log"))
            .expect("server log");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(root.join("data"))
            .env("RUST_LOG", "warn,kasbah_server=info")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(n) = nofile {
            // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn kasbah serve");
        let banner = kasbah_tests::read_serve_banner(child.stdout.take().expect("stdout"));
        let token = banner.admin_token;
        let Some(url) = banner.url else {
            let status = child.wait().expect("wait");
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            panic!("kasbah serve exited ({status}) before listening:\n{log}");
        };
        let addr = url.trim_start_matches("http://").to_string();
        (Proc { child, url, addr }, token)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read until the server closes the connection (or `within` passes);
/// returns what was read and whether it was closed.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_under_a_low_fd_limit_do_not_starve_a_normal_one() {
    const STALLED_BODIES: usize = 100;
    const TRICKLERS: usize = 250;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (p, token) = Proc::start(
        tmp.path(),
        "header_read_timeout_ms = 2000\nbody_timeout_ms = 2000\nkeep_alive_timeout_ms = 2000\n",
        Some(256),
    );
    let token = token.expect("admin token");
    let admin = Client::new(&p.url, &token);
    admin.whoami().await.expect("server answers");

    // Bodies stalled after the headers: each holds a request in flight
    // (the handler waits for the body).
    let mut stalled = Vec::new();
    for _ in 0..STALLED_BODIES {
        let mut s = TcpStream::connect(&p.addr).await.expect("connect");
        let head = format!(
            "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\":"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Headers trickled one byte every 100 ms: more connections than the
    // server's fd limit.
    let started = Instant::now();
    let mut tricklers = Vec::new();
    for _ in 0..TRICKLERS {
        let addr = p.addr.clone();
        tricklers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.ok()?;
            let opened = Instant::now();
            for b in b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nX-Slow: "
                .iter()
                .cycle()
            {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 256];
                // Closed by the server? (EOF or reset)
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                if opened.elapsed() > Duration::from_secs(20) {
                    return Some((opened.elapsed(), false));
                }
            }
            Some((opened.elapsed(), true))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A normal client, on a fresh connection each time, meanwhile.
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    const PROBES: u32 = 20;
    for _ in 0..PROBES {
        let c = Client::new(&p.url, &token);
        let t = Instant::now();
        c.whoami().await.expect("a normal client is answered");
        let d = t.elapsed();
        worst = worst.max(d);
        total += d;
    }
    println!(
        "normal client among {STALLED_BODIES} stalled bodies and {TRICKLERS} trickled headers \
         (fd limit 256): mean {:?}, worst {worst:?} over {PROBES} requests",
        total / PROBES
    );
    assert!(worst < Duration::from_secs(2), "worst latency {worst:?}");

    // Stalled bodies: cut off after the body timeout with a 408 envelope.
    for mut s in stalled {
        let (resp, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&resp);
        assert!(closed, "a stalled body's connection stays open: {text}");
        assert!(
            text.starts_with("HTTP/1.1 408") && text.contains("\"request_timeout\""),
            "{text}"
        );
    }
    // Trickled headers: every one closed, none later than the header
    // timeout plus slack.
    let mut longest = Duration::ZERO;
    let mut closed = 0;
    for t in tricklers {
        let (held, was_closed) = t.await.expect("join").expect("connected");
        assert!(was_closed, "a trickling connection was held for {held:?}");
        longest = longest.max(held);
        closed += 1;
    }
    println!(
        "{closed} trickling connections closed, the longest held {longest:?} \
         (header_read_timeout 2 s; {:?} since the first)",
        started.elapsed()
    );
    assert!(longest < Duration::from_secs(6), "{longest:?}");
    // And the server is still fine.
    admin.whoami().await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_inflight_sync_run_finish_then_exits_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut p, token) = Proc::start(tmp.path(), "shutdown_grace_ms = 20000\n", None);
    let admin = Client::new(&p.url, &token.expect("admin token"));
    let t = admin
        .create_tenant(&CreateTenant {
            name: "t".into(),
            operator_id: None,
            policy: Some(Policy {
                limits: Limits {
                    wall_time_ms: 2_000,
                    ..Limits::default()
                },
                // The hostile guest imports wasi:filesystem.
                datasets: true,
                ..Policy::default()
            }),
        })
        .await
        .expect("tenant");
    let dev_token = admin.tenant_token(&t.id).await.expect("token").token;
    let dev = Client::new(&p.url, &dev_token);
    let wasm = tmp.path().join("hostile.wasm");
    std::fs::write(&wasm, kasbah_tests::guest_bytes("hostile")).expect("write");
    let m = dev
        .publish(&wasm, "hostile", "1", |_, _| {})
        .await
        .expect("publish");

    // A synchronous run that takes its whole 2 s wall time.
    let run = {
        let dev = dev.clone();
        let module = m.digest.to_string();
        tokio::spawn(async move {
            dev.run(&CreateRun {
                module,
                metadata: [("attack".to_string(), "sleep".to_string())].into(),
                wait: true,
                ..CreateRun::default()
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!run.is_finished(), "the run is in flight");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(p.pid(), libc::SIGTERM) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = TcpStream::connect(&p.addr).await;
    assert!(
        refused.is_err(),
        "a new connection is refused while stopping"
    );

    let record = run
        .await
        .expect("join")
        .expect("the in-flight run is answered");
    assert_eq!(record.status, RunStatus::Done, "{record:?}");
    assert!(
        matches!(record.outcome, Some(Outcome::DeadlineExceeded { .. })),
        "{record:?}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = p.child.wait();
        (s, p)
    })
    .await
    .expect("join");
    let (status, p) = status;
    assert_eq!(status.expect("wait").code(), Some(0), "exit status");
    drop(p);

    // Nothing half-written: restarted, the run is there, finished (not
    // interrupted), with its audit entry.
    let (p2, _) = Proc::start(tmp.path(), "", None);
    let dev = Client::new(&p2.url, &dev_token);
    let stored = dev.get_run(&record.id).await.expect("stored");
    assert_eq!(stored.status, RunStatus::Done);
    dev.run_receipt(&record.id).await.expect("its audit entry");
    let log = std::fs::read_to_string(tmp.path().join("server.log")).unwrap_or_default();
    assert!(!log.contains("marked interrupted"), "{log}");
}

/// Every error a client can cause is the JSON envelope with a stable code:
/// framework rejections (malformed JSON, wrong types, bad query strings and
/// paths, a missing content type, an oversize body, unknown routes, wrong
/// methods) included, and none is a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_the_json_envelope() {
    let p = kasbah_tests::platform::Platform::start_with(|c| c.max_request_bytes = 4096).await;
    let admin_token = p.server.admin_token.clone().expect("admin token");
    let (t, _) = p.tenant("t", None).await;
    let http = reqwest::Client::new();
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(10_000));
    let json = "application/json";
    // (method, path, content type, body, status, code)
    type Case<'a> = (&'a str, String, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        // serde reads a struct from an array too: refused as not an object.
        (
            "POST",
            "/v1/tenants".into(),
            Some(json),
            "[]".into(),
            422,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/operators/op_nope/ceiling".into(),
            Some(json),
            " [\"x\"]".into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            Some(json),
            "{\"name\":".into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            Some(json),
            "{\"name\": 5}".into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            None,
            "{\"name\":\"x\"}".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            Some("text/plain"),
            "{}".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            Some(json),
            big.clone(),
            413,
            "payload_too_large",
        ),
        (
            "PUT",
            format!("/v1/tenants/{}/policy", t.id),
            Some(json),
            big.clone(),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            format!("/v1/tenants/{}/tokens", t.id),
            Some(json),
            "{\"name\":".into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some(json),
            "{\"module\": []}".into(),
            // Who may start runs is decided before the body is read.
            403,
            "forbidden",
        ),
        (
            "GET",
            "/v1/runs?limit=x".into(),
            None,
            String::new(),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/runs?limit=-1".into(),
            None,
            String::new(),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/modules?tenant=a&tenant=b".into(),
            None,
            String::new(),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/usage?period=week".into(),
            None,
            String::new(),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/usage?from=1e3".into(),
            None,
            String::new(),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/nothing-here".into(),
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/tenants".into(),
            None,
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "PATCH",
            "/v1/whoami".into(),
            None,
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v1/audit/entries/18446744073709551615/receipt".into(),
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/audit/entries/9223372036854775808/receipt".into(),
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/audit/entries/9223372036854775807/receipt".into(),
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/audit/entries/18446744073709551616/receipt".into(),
            None,
            String::new(),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/audit/entries?start=18446744073709551615".into(),
            None,
            String::new(),
            422,
            "out_of_range",
        ),
    ];
    for (method, path, ct, body, status, code) in cases {
        let mut req = http
            .request(method.parse().expect("method"), format!("{}{path}", p.url))
            .bearer_auth(&admin_token)
            .body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("send");
        let got = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let allow = resp.headers().get("allow").is_some();
        let text = resp.text().await.expect("body");
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {ctype} {text}"));
        assert_eq!(
            (got, v["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{method} {path}: {text}"
        );
        assert!(
            ctype.starts_with("application/json"),
            "{method} {path}: {ctype}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{method} {path}: {text}"
        );
        if status == 405 {
            assert!(allow, "{method} {path}: a 405 says what is allowed");
        }
    }
    // Unauthenticated requests too.
    let resp = http
        .get(format!("{}/v1/whoami", p.url))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unauthenticated");
}
