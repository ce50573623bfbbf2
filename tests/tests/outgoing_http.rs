//! Outgoing HTTP (`wasi:http/outgoing-handler`) end to end, through a real
//! server: loopback HTTPS servers with certificates from a test CA (made
//! with the `openssl` CLI) count the TCP connections they accept. The
//! server trusts the test CA through `http_extra_ca`; one more server has a
//! certificate from a CA it does not trust. The `http-probe` guest fetches
//! the URL it is given through `kasbah_sdk::http`.
//!
//! Zones: `zone-a` (the tenant's) holds the good and the rogue server,
//! `zone-b` the "other" server. A fourth server is up but allowlisted by no
//! one. Every refused request must leave its server at 0 connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kasbah_audit::EntryBody;
use kasbah_client::{Client, LogEntry};
use kasbah_core::api::*;
use kasbah_core::{GuestErrorKind, Outcome};
use kasbah_policy::{Limits, NetworkGrant, Policy};
use kasbah_runtime::kasbah_gpu::GpuConfig;
use kasbah_runtime::{NetZone, ZonesConfig};
use kasbah_tests::guest_path;
use kasbah_tests::platform::Platform;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate authority and one server certificate it signed for
/// `localhost` (DNS) and 127.0.0.1 (IP).
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let subj = format!("/CN=kasbah test CA {name}");
    args.extend([
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    let key = format!("{name}-server.key");
    let csr = format!("{name}-server.csr");
    let cert = format!("{name}-server.pem");
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    let ext = dir.join(format!("{name}-ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    let ext = ext.to_string_lossy().to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    Pki {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A loopback HTTPS/1.1 server: counts accepted TCP connections, records
/// each request's `Host` header and answers `hello <path> host=<host>
/// got=<body bytes>`, or 100,000 bytes for `/big`.
struct Https {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    hosts: Arc<Mutex<Vec<String>>>,
}

const BIG: usize = 100_000;

impl Https {
    async fn start(pki: &Pki) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(&pki.key).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (accepted.clone(), hosts.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let h = h.clone();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(s)).await
                    else {
                        return;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve(tls, h)).await;
                });
            }
        });
        Https {
            addr,
            accepted,
            hosts,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    hosts: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let host = header("host");
    hosts.lock().expect("hosts").push(host.clone());
    let len: usize = header("content-length").parse().unwrap_or(0);
    let mut body = buf.len() - head_end;
    while body < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body += n,
        }
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let answer = if path == "/big" {
        vec![b'b'; BIG]
    } else {
        format!("hello {path} host={host} got={body}").into_bytes()
    };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    )
    .into_bytes();
    out.extend_from_slice(&answer);
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
}

struct World {
    p: Platform,
    _pki_dir: tempfile::TempDir,
    good: Https,
    rogue: Https,
    other: Https,
    unlisted: Https,
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let trusted = make_pki(dir.path(), "trusted");
        let untrusted = make_pki(dir.path(), "untrusted");
        let good = Https::start(&trusted).await;
        let rogue = Https::start(&untrusted).await;
        let other = Https::start(&trusted).await;
        let unlisted = Https::start(&trusted).await;
        let zone = |port: u16, zone: &str| NetZone {
            destination: format!("localhost:{port}").parse().expect("target"),
            zone: zone.into(),
        };
        let zones = ZonesConfig {
            node: vec!["zone-a".into(), "zone-b".into()],
            network: vec![
                zone(good.port(), "zone-a"),
                zone(rogue.port(), "zone-a"),
                zone(other.port(), "zone-b"),
                zone(unlisted.port(), "zone-a"),
            ],
            storage: Vec::new(),
        };
        let ca = trusted.ca.clone();
        let p = Platform::start_with(move |c| {
            c.gpu = GpuConfig::default();
            c.zones = zones;
            c.http_extra_ca = vec![ca];
        })
        .await;
        World {
            p,
            _pki_dir: dir,
            good,
            rogue,
            other,
            unlisted,
        }
    }

    fn policy(&self, limits: Limits) -> Policy {
        Policy {
            zones: ["zone-a".to_string()].into(),
            network: NetworkGrant {
                allow: [&self.good, &self.rogue, &self.other]
                    .iter()
                    .map(|s| format!("localhost:{}", s.port()).parse().expect("target"))
                    .collect(),
            },
            limits,
            ..Policy::default()
        }
    }

    fn counts(&self) -> [u64; 4] {
        [
            self.good.accepted(),
            self.rogue.accepted(),
            self.other.accepted(),
            self.unlisted.accepted(),
        ]
    }
}

async fn probe(c: &Client, module: &ModuleRecord, url: &str, meta: &[(&str, &str)]) -> RunRecord {
    c.run(&CreateRun {
        module: module.digest.to_string(),
        input: Some(url.to_string()),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..CreateRun::default()
    })
    .await
    .unwrap_or_else(|e| panic!("run {url}: {e}"))
}

fn ok_body(r: &RunRecord) -> String {
    match &r.outcome {
        Some(Outcome::Ok { .. }) => {
            let out = r.output.as_ref().expect("output");
            let inline = out.inline.as_ref().expect("inline output");
            String::from_utf8_lossy(&inline.bytes).to_string()
        }
        other => panic!("expected ok, got {other:?} (denials {:?})", r.denials),
    }
}

fn guest_error(r: &RunRecord, kind: GuestErrorKind) -> String {
    match &r.outcome {
        Some(Outcome::GuestError { code, message }) if *code == kind => message.clone(),
        other => panic!("expected guest error {kind:?}, got {other:?}"),
    }
}

fn http_denials(r: &RunRecord) -> Vec<String> {
    r.denials
        .iter()
        .filter(|d| d.capability == "http")
        .map(|d| d.detail.clone())
        .collect()
}

async fn all_entries(c: &Client) -> Vec<LogEntry> {
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

#[tokio::test]
async fn outgoing_http_goes_only_to_allowlisted_in_zone_names_with_verified_tls() {
    let w = World::start().await;
    // Without a network grant the module is refused at publish.
    let (tenant, dev) = w.p.tenant("acme", None).await;
    match dev
        .publish(&guest_path("http-probe"), "http-probe", "1", |_, _| {})
        .await
    {
        Err(kasbah_client::Error::Api {
            status,
            code,
            message,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (422, "imports_not_granted"));
            assert!(message.contains("wasi:http/outgoing-handler"), "{message}");
        }
        other => panic!("expected imports_not_granted, got {other:?}"),
    }
    w.p.admin
        .set_policy(&tenant.id, &w.policy(Limits::default()))
        .await
        .expect("grant network");
    let m = dev
        .publish(&guest_path("http-probe"), "http-probe", "1", |_, _| {})
        .await
        .expect("publish with a network grant");
    assert!(
        m.imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler")),
        "{:?}",
        m.imports
    );

    // 1. Allowlisted name, in zone, trusted CA: the response reaches the guest.
    let url = format!("https://localhost:{}/greet?x=1", w.good.port());
    let r = probe(&dev, &m, &url, &[]).await;
    let body = ok_body(&r);
    assert_eq!(
        body,
        format!(
            "200 hello /greet?x=1 host=localhost:{} got=0",
            w.good.port()
        )
    );
    assert_eq!(w.counts(), [1, 0, 0, 0]);
    assert!(http_denials(&r).is_empty(), "{:?}", r.denials);
    let usage = r
        .usage
        .as_ref()
        .and_then(|u| u.http.clone())
        .expect("http usage");
    assert_eq!((usage.requests, usage.refused), (1, 0));
    assert!(usage.bytes_received >= 20, "{usage:?}");

    // 2. Refused before any connection: a port not in the allowlist, the
    //    allowlisted server's address by another name (its IP literal),
    //    another zone, a name not in the allowlist at an allowlisted port.
    let refused: [(String, &str); 4] = [
        (
            format!("https://localhost:{}/", w.unlisted.port()),
            "is not in the policy's network allowlist",
        ),
        (
            format!("https://127.0.0.1:{}/", w.good.port()),
            "is not in the policy's network allowlist",
        ),
        (
            format!("https://localhost:{}/", w.other.port()),
            "residency_violation: ",
        ),
        (
            format!("https://unlisted.example:{}/", w.good.port()),
            "is not in the policy's network allowlist",
        ),
    ];
    for (url, why) in &refused {
        let before = w.counts();
        let r = probe(&dev, &m, url, &[]).await;
        let msg = guest_error(&r, GuestErrorKind::Denied);
        assert!(msg.contains("HttpRequestDenied"), "{url}: {msg}");
        let d = http_denials(&r);
        assert_eq!(d.len(), 1, "{url}: {:?}", r.denials);
        assert!(d[0].contains(why), "{url}: {d:?}");
        let usage = r
            .usage
            .as_ref()
            .and_then(|u| u.http.clone())
            .expect("usage");
        assert_eq!((usage.requests, usage.refused), (0, 1), "{url}");
        // Give a stray connection time to show up before asserting none came.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            w.counts(),
            before,
            "{url}: a refused request reached a server"
        );
    }
    assert_eq!(w.counts(), [1, 0, 0, 0]);
    assert_eq!(w.other.accepted() + w.unlisted.accepted(), 0);

    // 3. Failures after the check: a certificate from a CA the host does
    //    not trust, and plain HTTP to an HTTPS port. Connections are made
    //    (they were allowed), nothing is answered.
    let r = probe(
        &dev,
        &m,
        &format!("https://localhost:{}/", w.rogue.port()),
        &[],
    )
    .await;
    let msg = guest_error(&r, GuestErrorKind::Unavailable);
    assert!(msg.contains("TlsCertificateError"), "{msg}");
    assert_eq!(w.rogue.accepted(), 1);
    assert!(w.rogue.hosts.lock().expect("hosts").is_empty());
    let r = probe(
        &dev,
        &m,
        &format!("http://localhost:{}/", w.good.port()),
        &[],
    )
    .await;
    let msg = guest_error(&r, GuestErrorKind::Unavailable);
    assert!(!msg.contains("HttpRequestDenied"), "{msg}");
    assert_eq!(w.good.hosts.lock().expect("hosts").len(), 1);

    // The denials are in the audit log, with their runs.
    let entries = all_entries(&w.p.admin).await;
    let audited: Vec<&str> = entries
        .iter()
        .filter_map(|e| match &e.entry.body {
            EntryBody::Denial(d) if d.action == "http" => Some(d.reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(audited.len(), refused.len(), "{audited:?}");
    assert!(
        audited
            .iter()
            .any(|r| r.starts_with("residency_violation: ")),
        "{audited:?}"
    );

    // 4. Per-run limits: the third request of a run allowed two fails
    //    without a connection; the byte budget cuts a large response and a
    //    large request body.
    let limits = Limits {
        max_http_requests: 2,
        max_http_bytes: 10_000,
        ..Limits::default()
    };
    w.p.admin
        .set_policy(&tenant.id, &w.policy(limits.clone()))
        .await
        .expect("limits");
    let before = w.good.accepted();
    let url = format!("https://localhost:{}/n", w.good.port());
    let r = probe(&dev, &m, &url, &[("count", "3")]).await;
    let msg = guest_error(&r, GuestErrorKind::Unavailable);
    assert!(
        msg.starts_with("request 3: ") && msg.contains("ConnectionLimitReached"),
        "{msg}"
    );
    let usage = r
        .usage
        .as_ref()
        .and_then(|u| u.http.clone())
        .expect("usage");
    assert_eq!((usage.requests, usage.refused), (2, 1));
    assert_eq!(w.good.accepted(), before + 2);

    let r = probe(
        &dev,
        &m,
        &format!("https://localhost:{}/big", w.good.port()),
        &[],
    )
    .await;
    let msg = guest_error(&r, GuestErrorKind::Unavailable);
    let lower = msg.to_ascii_lowercase();
    assert!(
        msg.contains("HttpResponseBodySize") || lower.contains("response body size exceeds limit"),
        "{msg}"
    );
    let usage = r
        .usage
        .as_ref()
        .and_then(|u| u.http.clone())
        .expect("usage");
    assert!(
        usage.bytes_received > 0 && usage.bytes_received < BIG as u64,
        "{usage:?}"
    );

    let r = probe(
        &dev,
        &m,
        &url,
        &[("method", "post"), ("post_bytes", "50000")],
    )
    .await;
    let msg = guest_error(&r, GuestErrorKind::Unavailable);
    let lower = msg.to_ascii_lowercase();
    assert!(
        msg.contains("HttpRequestBodySize") || lower.contains("request body size exceeds limit"),
        "{msg}"
    );
    let usage = r
        .usage
        .as_ref()
        .and_then(|u| u.http.clone())
        .expect("usage");
    assert!(
        usage.bytes_sent > 0 && usage.bytes_sent < 50_000,
        "{usage:?}"
    );

    // At most 8 requests of a run in flight: a burst of 12 slow ones gets
    // 8 answers, and 4 refusals without a connection.
    w.p.admin
        .set_policy(&tenant.id, &w.policy(Limits::default()))
        .await
        .expect("default limits");
    let before = w.good.accepted();
    let slow = format!("https://localhost:{}/slow", w.good.port());
    let r = probe(&dev, &m, &slow, &[("burst", "12")]).await;
    let tally = ok_body(&r);
    assert!(tally.contains("ok=8"), "{tally}");
    assert!(tally.contains("ConnectionLimitReached=4"), "{tally}");
    assert_eq!(w.good.accepted(), before + 8);
    let usage = r
        .usage
        .as_ref()
        .and_then(|u| u.http.clone())
        .expect("usage");
    assert_eq!((usage.requests, usage.refused), (8, 4));
    w.p.admin
        .set_policy(&tenant.id, &w.policy(limits))
        .await
        .expect("limits again");

    // A POST within the budget arrives whole.
    let r = probe(
        &dev,
        &m,
        &url,
        &[("method", "post"), ("post_bytes", "3000")],
    )
    .await;
    assert_eq!(
        ok_body(&r),
        format!("200 hello /n host=localhost:{} got=3000", w.good.port())
    );
    let usage = r
        .usage
        .as_ref()
        .and_then(|u| u.http.clone())
        .expect("usage");
    assert_eq!(usage.bytes_sent, 3000);
}

/// `kasbah run` (local, no residency): the extra CA comes from
/// `--http-ca` only; without it the same request fails certificate
/// verification; without a `[network]` grant the request is refused by the
/// host call itself (the module still links: publish-time refusal is the
/// server's) and no connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kasbah_run_local_takes_the_extra_ca_from_its_flag_and_checks_the_allowlist() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_path_buf();
    let pki = make_pki(&d, "local");
    let server = Https::start(&pki).await;
    let port = server.port();
    std::fs::write(
        d.join("net.toml"),
        format!("[network]\nallow = [\"localhost:{port}\"]\n"),
    )
    .expect("policy");
    std::fs::write(d.join("none.toml"), "").expect("policy");
    std::fs::write(d.join("url.txt"), format!("https://localhost:{port}/local")).expect("input");
    let wasm = guest_path("http-probe");
    let run = |args: Vec<String>| {
        let d = d.clone();
        let wasm = wasm.clone();
        tokio::task::spawn_blocking(move || {
            let o = Command::new(env!("CARGO_BIN_EXE_kasbah-under-test"))
                .current_dir(&d)
                .env_remove("KASBAH_URL")
                .env_remove("KASBAH_TOKEN")
                .env_remove("KASBAH_HTTP_CA")
                .env("KASBAH_COMPILE_CACHE", d.join("compiled"))
                .env("XDG_RUNTIME_DIR", &d)
                .arg("run")
                .arg(&wasm)
                .args(["-i", "url.txt"])
                .args(args)
                .output()
                .expect("spawn kasbah");
            (
                String::from_utf8_lossy(&o.stdout).to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        })
    };
    let ca = pki.ca.to_string_lossy().to_string();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    let (out, err) = run(s(&["--policy", "net.toml", "--http-ca", &ca]))
        .await
        .expect("join");
    assert_eq!(
        out.trim(),
        format!("200 hello /local host=localhost:{port} got=0"),
        "{err}"
    );
    assert!(err.contains("http     1 requests sent, 0 refused"), "{err}");
    assert_eq!(server.accepted(), 1);

    let (out, err) = run(s(&["--policy", "net.toml"])).await.expect("join");
    assert!(out.trim().is_empty(), "{out}");
    assert!(err.contains("TlsCertificateError"), "{err}");
    assert_eq!(server.accepted(), 2);

    let (out, err) = run(s(&["--policy", "none.toml", "--http-ca", &ca]))
        .await
        .expect("join");
    assert!(out.trim().is_empty(), "{out}");
    assert!(err.contains("HttpRequestDenied"), "{err}");
    assert!(
        err.contains("not in the policy's network allowlist"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.accepted(), 2, "a refused request made a connection");
}
