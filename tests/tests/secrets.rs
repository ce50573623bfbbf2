//! Tenant secrets (issue 18, item 6), through a real `kasbah serve`
//! process: set, rotate (a new version), list (never a value), a guest
//! reads a granted secret as an environment variable and as a read-only
//! file (the hostile guest's `secret-digest` answers a length and a hash,
//! never the value), deny cases (no grant, another tenant, bad names, too
//! large, wrong role, a granted secret not set), delete, the audit entries
//! (names and versions only), a restart (the key file persists) — and
//! then every byte of the data dir (database, WAL, blobs, keys) and of the
//! server's captured stdout and stderr holds none of the secret values,
//! while the server runs and after it stopped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kasbah_client::Client;
use kasbah_core::Outcome;
use kasbah_core::api::{CreateRun, CreateTenant, RunRecord, RunSecret};
use kasbah_policy::{DirGrant, DirMode, Policy};
use kasbah_tests::guest_path;
use kasbah_tests::platform::api_err;

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

/// A `kasbah serve` process whose stdout and stderr go to files.
struct Proc {
    child: Child,
    url: String,
    admin_token: Option<String>,
}

fn start(root: &Path, port: u16) -> Proc {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("server.stderr"))
        .expect("stderr file");
    let mut child = Command::new(BIN)
        .args(["serve", "--workers", "2"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(root.join("data"))
        .env_remove("KASBAH_CONFIG")
        // As much as the server logs: a value must not be in any of it.
        .env(
            "RUST_LOG",
            "info,kasbah_server=trace,kasbah_runtime=trace,kasbah=trace,wasmtime_wasi=trace,tower_http=debug",
        )
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn kasbah serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("server.stdout"))
        .expect("stdout file");
    let (mut url, mut admin_token) = (None, None);
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        writeln!(out, "{line}").expect("copy stdout");
        if let Some(t) = line.strip_prefix("admin token: ") {
            admin_token = Some(t.to_string());
        }
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.to_string());
            break;
        }
    }
    // Everything it prints later is kept too.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(out, "{line}");
        }
    });
    let url = url.unwrap_or_else(|| {
        let log = std::fs::read_to_string(root.join("server.stderr")).unwrap_or_default();
        panic!("kasbah serve did not start:\n{log}")
    });
    Proc {
        child,
        url,
        admin_token,
    }
}

impl Proc {
    /// SIGTERM (a graceful shutdown), then reap.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `root` (recursively) whose bytes contain any of
/// `markers`, with the marker found.
fn files_containing(root: &Path, markers: &[&[u8]]) -> Vec<(PathBuf, String)> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ty) = e.file_type() else { continue };
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_file() {
                let Ok(bytes) = std::fs::read(&p) else {
                    continue;
                };
                for m in markers {
                    if bytes.windows(m.len()).any(|w| w == *m) {
                        hits.push((p.clone(), String::from_utf8_lossy(m).into_owned()));
                    }
                }
            }
        }
    }
    hits
}

/// FNV-1a 64, as the hostile guest's `secret-digest` computes it.
fn digest(v: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("len={} fnv={h:016x}", v.len())
}

fn random_hex() -> String {
    let mut b = [0u8; 12];
    let mut r = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::Read::read_exact(&mut r, &mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attack(module: &str, name: &str, arg: &str) -> CreateRun {
    CreateRun {
        module: module.to_string(),
        input: Some(arg.to_string()),
        metadata: [("attack".to_string(), name.to_string())].into(),
        wait: true,
        ..CreateRun::default()
    }
}

fn output_text(r: &RunRecord) -> String {
    match &r.outcome {
        Some(Outcome::Ok { .. }) => {}
        other => panic!("run {} did not succeed: {other:?}", r.id),
    }
    let inline = r.output.as_ref().and_then(|o| o.inline.as_ref());
    String::from_utf8_lossy(&inline.expect("inline output").bytes).into_owned()
}

fn guest_error(r: &RunRecord) -> String {
    match &r.outcome {
        Some(Outcome::GuestError { message, .. }) => message.clone(),
        other => panic!("run {} should have failed in the guest: {other:?}", r.id),
    }
}

fn uses(pairs: &[(&str, u64)]) -> Vec<RunSecret> {
    pairs
        .iter()
        .map(|(n, v)| RunSecret {
            name: n.to_string(),
            version: *v,
        })
        .collect()
}

async fn tenant(admin: &Client, url: &str, name: &str, policy: Policy) -> (String, String, Client) {
    let t = admin
        .create_tenant(&CreateTenant {
            name: name.into(),
            operator_id: None,
            policy: Some(policy),
        })
        .await
        .expect("create tenant");
    let tok = admin.tenant_token(&t.id).await.expect("token");
    (t.id, tok.token.clone(), Client::new(url, &tok.token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_granted_runs_only_and_their_values_are_nowhere_on_disk_or_in_any_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let proc = start(root, 0);
    let url = proc.url.clone();
    let admin_token = proc.admin_token.clone().expect("admin token");
    let admin = Client::new(&url, &admin_token);
    let run_id = random_hex();
    let v1 = format!("kbh-secret-{run_id}-api-v1");
    let v2 = format!("kbh-secret-{run_id}-api-v2");
    let db = format!("kbh-secret-{run_id}-db\u{e9}\n");
    let other = format!("kbh-secret-{run_id}-tenant-b");
    let markers: Vec<&[u8]> = vec![
        v1.as_bytes(),
        v2.as_bytes(),
        db.trim_end().as_bytes(),
        other.as_bytes(),
        run_id.as_bytes(),
    ];

    let policy_a: Policy = Policy::from_toml(
        "[secrets.api_key]\nenv = \"API_KEY\"\nfile = \"/secrets/api_key\"\n\
         [secrets.db_pass]\nfile = \"/run/keys/db_pass\"\n",
    )
    .expect("policy");
    let (a_id, a_token, dev_a) = tenant(&admin, &url, "acme", policy_a.clone()).await;
    // Tenant B: no [secrets] (a files grant so the guest publishes).
    let files = root.join("b-files");
    std::fs::create_dir(&files).expect("mkdir");
    let policy_b = Policy {
        files: vec![DirGrant {
            host: files,
            guest: "/data".into(),
            mode: DirMode::Ro,
        }],
        ..Policy::default()
    };
    let (_b, _, dev_b) = tenant(&admin, &url, "globex", policy_b).await;
    let hostile = guest_path("hostile");
    let ma = dev_a
        .publish(&hostile, "hostile", "1", |_, _| {})
        .await
        .expect("publish A")
        .digest
        .to_string();
    let mb = dev_b
        .publish(&hostile, "hostile", "1", |_, _| {})
        .await
        .expect("publish B")
        .digest
        .to_string();

    // A granted secret not set yet: the run is refused, naming it.
    assert_eq!(
        api_err(
            dev_a
                .run(&attack(&ma, "secret-digest", "env:API_KEY"))
                .await
        ),
        (422, "secret_missing".into())
    );

    // Set, list (names and versions only).
    let r = dev_a
        .set_secret("api_key", v1.clone().into_bytes())
        .await
        .expect("set");
    assert_eq!((r.name.as_str(), r.version), ("api_key", 1));
    let r = dev_a
        .set_secret("db_pass", db.clone().into_bytes())
        .await
        .expect("set");
    assert_eq!(r.version, 1);
    let list = dev_a.secrets().await.expect("list");
    assert_eq!(
        list.iter()
            .map(|r| (r.name.as_str(), r.version))
            .collect::<Vec<_>>(),
        vec![("api_key", 1), ("db_pass", 1)]
    );
    dev_b
        .set_secret("api_key", other.clone().into_bytes())
        .await
        .expect("B's own");

    // Env and files, each the exact bytes (a non-UTF-8-safe newline kept).
    let env = dev_a
        .run(&attack(&ma, "secret-digest", "env:API_KEY"))
        .await
        .expect("run");
    assert_eq!(output_text(&env), digest(v1.as_bytes()));
    assert_eq!(env.secrets, uses(&[("api_key", 1), ("db_pass", 1)]));
    let file = dev_a
        .run(&attack(&ma, "secret-digest", "file:/secrets/api_key"))
        .await
        .expect("run");
    assert_eq!(output_text(&file), digest(v1.as_bytes()));
    let dbf = dev_a
        .run(&attack(&ma, "secret-digest", "file:/run/keys/db_pass"))
        .await
        .expect("run");
    assert_eq!(output_text(&dbf), digest(db.as_bytes()));
    // The secret directory holds the run's secret files and nothing else.
    let ls = dev_a
        .run(&attack(&ma, "secret-digest", "file:/secrets/db_pass"))
        .await
        .expect("run");
    guest_error(&ls);

    // Read-only: writing, appending, removing fail; the value is intact.
    let w = dev_a
        .run(&attack(&ma, "write-ro", "/secrets/api_key"))
        .await
        .expect("run");
    guest_error(&w);

    // Rotate: a new version; runs get it and record it.
    let r = dev_a
        .set_secret("api_key", v2.clone().into_bytes())
        .await
        .expect("rotate");
    assert_eq!(r.version, 2);
    let rot = dev_a
        .run(&attack(&ma, "secret-digest", "file:/secrets/api_key"))
        .await
        .expect("run");
    assert_eq!(output_text(&rot), digest(v2.as_bytes()));
    assert_eq!(rot.secrets, uses(&[("api_key", 2), ("db_pass", 1)]));
    let rot = dev_a
        .run(&attack(&ma, "secret-digest", "env:API_KEY"))
        .await
        .expect("run");
    assert_eq!(output_text(&rot), digest(v2.as_bytes()));

    // No grant: B stored a secret of the same name, its policy grants none:
    // no such variable, no /secrets; B's record names no secret.
    let nb = dev_b
        .run(&attack(&mb, "secret-digest", "env:API_KEY"))
        .await
        .expect("run");
    assert!(guest_error(&nb).contains("env API_KEY"), "{nb:?}");
    assert!(nb.secrets.is_empty());
    let nb = dev_b
        .run(&attack(&mb, "secret-digest", "file:/secrets/api_key"))
        .await
        .expect("run");
    guest_error(&nb);
    // Another tenant's secrets: not there for B (404), not listed.
    assert_eq!(
        api_err(dev_b.delete_secret("db_pass").await),
        (404, "not_found".into())
    );
    assert_eq!(
        dev_b
            .secrets()
            .await
            .expect("list")
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec!["api_key"]
    );
    // B cannot read A's run either.
    assert_eq!(api_err(dev_b.get_run(&env.id).await).0, 404);

    // Bad requests: names, size, roles.
    for bad in ["API_KEY", "a.b", "x%20y", &"a".repeat(65)] {
        assert_eq!(
            api_err(dev_a.set_secret(bad, b"v".to_vec()).await),
            (422, "invalid_secret_name".into()),
            "{bad}"
        );
    }
    assert_eq!(
        api_err(dev_a.set_secret("big", vec![b'x'; 64 * 1024 + 1]).await),
        (413, "secret_too_large".into())
    );
    dev_a
        .set_secret("edge", vec![b'x'; 64 * 1024])
        .await
        .expect("64 KiB is fine");
    assert_eq!(
        api_err(admin.set_secret("api_key", b"v".to_vec()).await).0,
        403
    );
    assert_eq!(api_err(admin.secrets().await).0, 403);
    assert_eq!(
        api_err(dev_a.delete_secret("nope").await),
        (404, "not_found".into())
    );
    // Policies: a grant clashing with [env] or the dataset mounts is refused.
    let mut clash = policy_a.clone();
    clash.env.vars.insert("API_KEY".into(), "x".into());
    assert_eq!(api_err(admin.set_policy(&a_id, &clash).await).0, 422);

    // Delete: the run that needs it is refused; setting again counts on.
    dev_a.delete_secret("db_pass").await.expect("delete");
    assert_eq!(
        api_err(
            dev_a
                .run(&attack(&ma, "secret-digest", "env:API_KEY"))
                .await
        ),
        (422, "secret_missing".into())
    );
    assert!(
        dev_a
            .secrets()
            .await
            .expect("list")
            .iter()
            .all(|r| r.name != "db_pass")
    );
    let again = dev_a
        .set_secret("db_pass", db.clone().into_bytes())
        .await
        .expect("set");
    assert_eq!(again.version, 2);

    // The audit log: one secret_changed entry per change, names and versions.
    let (_, entries) = admin.audit_log_entries(0, None).await.expect("entries");
    let changes: Vec<(String, u64, String)> = entries
        .iter()
        .filter_map(|e| match &e.entry.body {
            kasbah_audit::EntryBody::SecretChanged(s) => {
                Some((s.name.clone(), s.version, s.action.clone()))
            }
            _ => None,
        })
        .collect();
    for want in [
        ("api_key", 1, "set"),
        ("db_pass", 1, "set"),
        ("api_key", 2, "set"),
        ("db_pass", 1, "delete"),
        ("db_pass", 2, "set"),
    ] {
        assert!(
            changes
                .iter()
                .any(|(n, v, a)| (n.as_str(), *v, a.as_str()) == want),
            "{want:?} in {changes:?}"
        );
    }
    for e in &entries {
        for m in &markers {
            assert!(
                !e.bytes.windows(m.len()).any(|w| w == *m),
                "entry {}",
                e.index
            );
        }
    }

    // API responses: records, lists, the log's JSON — no value anywhere.
    let mut seen = Vec::new();
    for path in [
        "/v1/secrets",
        "/v1/runs?limit=100",
        &format!("/v1/runs/{}", env.id),
        &format!("/v1/runs/{}/logs", env.id),
        "/v1/audit/entries?start=0",
        "/openapi.json",
    ] {
        for token in [&a_token, &admin_token] {
            let body = reqwest::Client::new()
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            seen.push((path.to_string(), body.to_vec()));
        }
    }
    for (path, body) in &seen {
        for m in &markers {
            assert!(
                !body.windows(m.len()).any(|w| w == *m),
                "{path} shows a secret"
            );
        }
    }

    // No run's secret files are left in memory after the runs.
    let shm = kasbah_runtime::secrets::memory_dir(None).expect("a memory-backed dir");
    assert!(
        files_containing(&shm, &markers).is_empty(),
        "secret files left in {shm:?}"
    );

    // The whole data dir and the server's output, while it runs...
    let hits = files_containing(root, &markers);
    assert!(
        hits.is_empty(),
        "secret values on disk or in the server's output: {hits:?}"
    );
    let stderr = std::fs::read_to_string(root.join("server.stderr")).expect("stderr");
    assert!(
        stderr.contains("secrets key"),
        "the log names the key file:\n{stderr}"
    );

    // ...across a restart (the key file persists: the values still open)...
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    proc.stop();
    let proc = start(root, port);
    let dev_a = Client::new(&url, &a_token);
    let after = dev_a
        .run(&attack(&ma, "secret-digest", "env:API_KEY"))
        .await
        .expect("run");
    assert_eq!(output_text(&after), digest(v2.as_bytes()));
    assert_eq!(after.secrets, uses(&[("api_key", 2), ("db_pass", 2)]));

    // ...and after it stopped.
    proc.stop();
    let hits = files_containing(root, &markers);
    assert!(
        hits.is_empty(),
        "secret values on disk or in the server's output: {hits:?}"
    );
    // The data dir really holds the sealed rows (not an empty check).
    let conn = rusqlite::Connection::open(root.join("data/kasbah.db")).expect("db");
    let sealed: i64 = conn
        .query_row(
            "SELECT count(*) FROM secrets WHERE ciphertext IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(sealed, 4, "api_key, db_pass, edge for A; api_key for B");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(root.join("data/secrets.key")).expect("key");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
}

/// A fleet control plane (runs on zone workers over NATS) refuses runs
/// whose policy grants secrets, with a stable code, before anything is
/// recorded: values never go into a JetStream stream. Runs without
/// grants are untouched by the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_control_plane_refuses_runs_granted_secrets() {
    use kasbah_fleet::testing::NatsServer;
    use kasbah_tests::platform::Platform;
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let url = nats.url();
    let p = Platform::start_with(move |c| {
        c.nats = Some(url);
        c.zones.node = vec!["zone-a".into()];
        c.gpu.adapters.clear();
    })
    .await;
    let policy = Policy::from_toml("zones = [\"zone-a\"]\n[secrets.api_key]\nenv = \"API_KEY\"\n")
        .expect("policy");
    let (_, dev) = p.tenant("fleet", Some(policy)).await;
    let m = dev
        .publish(&guest_path("hello"), "hello", "1", |_, _| {})
        .await
        .expect("publish")
        .digest
        .to_string();
    dev.set_secret("api_key", b"fleet-secret".to_vec())
        .await
        .expect("set");
    let before = dev.runs(100).await.expect("runs").len();
    assert_eq!(
        api_err(dev.run(&attack(&m, "", "x")).await),
        (422, "secrets_on_fleet".into())
    );
    assert_eq!(
        dev.runs(100).await.expect("runs").len(),
        before,
        "nothing recorded"
    );
}

/// `kasbah secret set NAME`: the value from stdin less one trailing
/// newline (`\n` or `\r\n`), all of it with `--keep-newline`, exactly as the
/// guest then reads it; `list` shows names and versions; `delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_lists_and_deletes_secrets_from_stdin() {
    use kasbah_tests::platform::Platform;
    let p = Platform::start().await;
    let policy =
        Policy::from_toml("[secrets.nl]\nenv = \"NL\"\nfile = \"/s/nl\"\n").expect("policy");
    let t = p
        .admin
        .create_tenant(&CreateTenant {
            name: "cli".into(),
            operator_id: None,
            policy: Some(policy),
        })
        .await
        .expect("tenant");
    let token = p.admin.tenant_token(&t.id).await.expect("token").token;
    let dev = p.client(&token);
    let m = dev
        .publish(&guest_path("hostile"), "hostile", "1", |_, _| {})
        .await
        .expect("publish")
        .digest
        .to_string();
    let cli = |args: &[&str], stdin: &[u8]| {
        let mut c = Command::new(BIN)
            .args(args)
            .env("KASBAH_URL", &p.url)
            .env("KASBAH_TOKEN", &token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kasbah");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write");
        let o = c.wait_with_output().expect("ran");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for (input, keep, want, version) in [
        (&b"one\n"[..], false, &b"one"[..], 1),
        (b"two\r\n", false, b"two", 2),
        (b"three\n\n", false, b"three\n", 3),
        (b"four\n", true, b"four\n", 4),
        (b"five", false, b"five", 5),
    ] {
        let mut args = vec!["secret", "set", "nl"];
        if keep {
            args.push("--keep-newline");
        }
        let out = cli(&args, input);
        assert_eq!(out.trim(), format!("secret nl version {version}"));
        assert!(!out.contains(std::str::from_utf8(want).expect("utf8").trim()));
        for arg in ["env:NL", "file:/s/nl"] {
            let r = dev
                .run(&attack(&m, "secret-digest", arg))
                .await
                .expect("run");
            assert_eq!(output_text(&r), digest(want), "{input:?} keep={keep} {arg}");
        }
    }
    let list = cli(&["secret", "list", "--json"], b"");
    let v: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(v[0]["name"], "nl");
    assert_eq!(v[0]["version"], 5);
    assert!(v[0].get("value").is_none() && !list.contains("five"));
    cli(&["secret", "delete", "nl"], b"");
    assert!(dev.secrets().await.expect("list").is_empty());
}
