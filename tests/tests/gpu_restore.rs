//! GPU warm state survives a server restart (issue 15): the ledger of what
//! each tenant had resident (dataset ranges) and cached (kernels, with their
//! WGSL) is kept in the data dir and re-uploaded at
//! start, each range checked again against the tenant's *current* policy,
//! its datasets and the budgets. A tenant whose GPU grant was withdrawn
//! meanwhile gets nothing back (and is forgotten); a budget lowered meanwhile bounds what
//! comes back; another tenant reaches nothing of what was restored.

use std::collections::BTreeMap;
use std::path::Path;

use kasbah_client::Client;
use kasbah_core::api::{CreateRun, CreateTenant, RunRecord};
use kasbah_core::{GpuUsage, Outcome};
use kasbah_policy::{GpuGrant, Policy};
use kasbah_server::Server;

fn policy(resident: u64) -> Policy {
    Policy {
        datasets: true,
        gpu: Some(GpuGrant {
            max_resident_bytes: resident,
            ..GpuGrant::in_zones(["local"])
        }),
        ..Policy::default()
    }
}

fn weights(seed: u32) -> Vec<u8> {
    (0..1024u32)
        .flat_map(|i| seed.wrapping_mul(1_000_003).wrapping_add(i).to_le_bytes())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn start(dir: &Path) -> (Server, String) {
    let server = kasbah_server::start(kasbah_tests::platform::config(dir))
        .await
        .expect("server starts");
    let url = format!("http://{}", server.addr);
    (server, url)
}

struct Dev {
    id: String,
    token: String,
    module: String,
}

async fn tenant(admin: &Client, url: &str, name: &str, seed: u32) -> Dev {
    let t = admin
        .create_tenant(&CreateTenant {
            name: name.into(),
            operator_id: None,
            policy: Some(policy(1 << 20)),
        })
        .await
        .expect("tenant");
    let token = admin.tenant_token(&t.id).await.expect("token").token;
    let dev = Client::new(url, &token);
    let m = dev
        .publish(
            &kasbah_tests::guest_path("gpu-hostile"),
            "gpu-hostile",
            "1",
            |_, _| {},
        )
        .await
        .expect("publish");
    dev.create_dataset_bytes(weights(seed), "weights.bin", None)
        .await
        .expect("dataset");
    Dev {
        id: t.id,
        token,
        module: m.digest.to_string(),
    }
}

/// One `from-dataset` run of the whole 4 KiB, read through a kernel.
async fn run(url: &str, d: &Dev) -> RunRecord {
    Client::new(url, &d.token)
        .run(&CreateRun {
            module: d.module.clone(),
            input: Some("weights.bin 0 4096 bind-ro".into()),
            metadata: BTreeMap::from([("attack".to_string(), "from-dataset".to_string())]),
            datasets: vec!["weights.bin".into()],
            wait: true,
            ..CreateRun::default()
        })
        .await
        .expect("run")
}

fn output(url: &str, d: &Dev, r: &RunRecord) -> impl Future<Output = Vec<u8>> {
    let c = Client::new(url, &d.token);
    let id = r.id.clone();
    async move { c.run_output(&id).await.expect("output") }
}

fn gpu(r: &RunRecord) -> GpuUsage {
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
    r.usage
        .as_ref()
        .and_then(|u| u.gpu.clone())
        .expect("GPU usage")
}

fn resident_bytes(s: &Server) -> u64 {
    s.state
        .runtime
        .gpu()
        .status()
        .iter()
        .map(|a| a.resident_bytes)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_ranges_come_back_after_a_restart_within_the_current_policy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (server, url) = start(&dir).await;
    let admin_token = server.admin_token.clone().expect("admin token");
    let admin = Client::new(&url, &admin_token);
    let a = tenant(&admin, &url, "alpha", 1).await;
    let b = tenant(&admin, &url, "beta", 2).await;
    let c = tenant(&admin, &url, "gamma", 1).await;
    for d in [&a, &b] {
        let g = gpu(&run(&url, d).await);
        assert_eq!(g.resident_bytes_uploaded, 4096, "first run uploads");
    }
    // Beta's GPU grant is withdrawn while the server runs.
    admin
        .set_policy(
            &b.id,
            &Policy {
                datasets: true,
                ..Policy::default()
            },
        )
        .await
        .expect("policy");
    server.shutdown().await.expect("shutdown");
    let ledger = std::fs::read_to_string(dir.join("gpu-warm.json")).expect("ledger written");
    assert!(ledger.contains(&a.id) && ledger.contains(&b.id), "{ledger}");
    assert!(
        !ledger.contains("weights.bin"),
        "digests, not names: {ledger}"
    );

    // Restart, and alpha's first run right away: the restore is planned
    // before the server answers anything, so the run waits for it and
    // finds its weights resident instead of uploading a second copy.
    let (mut server, url) = start(&dir).await;
    let first = run(&url, &a).await;
    let g = gpu(&first);
    assert_eq!(
        (g.resident_bytes_used, g.resident_bytes_uploaded),
        (4096, 0),
        "the first run after the restart finds its weights resident"
    );
    assert_eq!(
        (g.kernels, g.kernels_cached),
        (0, 1),
        "... and its kernel compiled"
    );
    assert_eq!(output(&url, &a, &first).await, hex(&weights(1)).as_bytes());
    let restore = restored(&mut server).await;
    assert_ready(&url).await;
    assert_eq!((restore.processes, restore.buffers), (1, 1), "{restore:?}");
    assert_eq!((restore.bytes, restore.kernels), (4096, 1));
    assert_eq!(restore.skipped, 1, "beta has no GPU grant now: {restore:?}");
    assert_eq!(resident_bytes(&server), 4096);

    // Gamma has the very same bytes (same digest) but no state of its
    // own: it pays its own upload and reads its own dataset.
    let g = gpu(&run(&url, &c).await);
    assert_eq!(
        g.resident_bytes_uploaded, 4096,
        "nothing of alpha's is reachable"
    );

    // Alpha's budget is lowered below what the ledger names: the next
    // restart brings back gamma's range, and nothing of alpha's.
    admin_at(&url, &admin_token)
        .set_policy(&a.id, &policy(2048))
        .await
        .expect("policy");
    server.shutdown().await.expect("shutdown");
    // Beta was checked at the restart and refused: forgotten, not kept.
    let ledger = std::fs::read_to_string(dir.join("gpu-warm.json")).expect("ledger");
    assert!(
        !ledger.contains(&b.id) && ledger.contains(&c.id),
        "{ledger}"
    );
    let (mut server, url) = start(&dir).await;
    let restore = restored(&mut server).await;
    assert_eq!((restore.buffers, restore.bytes), (1, 4096), "{restore:?}");
    assert!(
        restore.skipped >= 1,
        "alpha's range is over its budget: {restore:?}"
    );
    assert_eq!(resident_bytes(&server), 4096, "gamma's range only");
    let half = Client::new(&url, &a.token)
        .run(&CreateRun {
            module: a.module.clone(),
            input: Some("weights.bin 0 2048 read".into()),
            metadata: BTreeMap::from([("attack".to_string(), "from-dataset".to_string())]),
            datasets: vec!["weights.bin".into()],
            wait: true,
            ..CreateRun::default()
        })
        .await
        .expect("run");
    assert_eq!(
        gpu(&half).resident_bytes_uploaded,
        2048,
        "alpha uploads again"
    );
    server.shutdown().await.expect("shutdown");

    // A damaged ledger is ignored: the server starts and restores nothing.
    std::fs::write(dir.join("gpu-warm.json"), b"{not json").expect("write");
    let (server, url) = start(&dir).await;
    assert!(server.gpu_state.restore.is_none());
    let g = gpu(&run(&url, &c).await);
    assert_eq!(g.resident_bytes_uploaded, 4096);
    server.shutdown().await.expect("shutdown");
}

/// `GET /readyz` (no token) answers 200 once the start-up warm-up is done.
async fn assert_ready(url: &str) {
    let http = reqwest::Client::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = http
            .get(format!("{url}/readyz"))
            .send()
            .await
            .expect("readyz");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("json");
        if status == 200 {
            assert_eq!(body["ready"], true, "{body}");
            return;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["ready"], false, "{body}");
        assert!(std::time::Instant::now() < until, "never ready: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn admin_at(url: &str, token: &str) -> Client {
    Client::new(url, token)
}

/// Wait for the restore the server started.
async fn restored(server: &mut Server) -> kasbah_runtime::kasbah_gpu::RestoreStats {
    server
        .gpu_state
        .restore
        .take()
        .expect("a restore was started")
        .await
        .expect("restore task")
}
