//! `kasbah fleet nats-config`'s output on a real `nats-server` (see
//! `kasbah_fleet::testing` for which binary): the control-plane user sets
//! the fleet up and publishes jobs, a zone-a worker with the generated
//! zone-a credentials runs its job, and those credentials reach nothing of
//! zone-b, publish no job and cannot retarget their zone's consumer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use kasbah_core::{Digest, Outcome};
use kasbah_fleet::nats_config::{self, Spec};
use kasbah_fleet::proto::{
    self, ConsumerTiming, JOBS_STREAM, MODULES_BUCKET, MSG_ID_HEADER, RESULTS_STREAM,
    ensure_streams, ensure_zone, job_subject, zone_consumer,
};
use kasbah_fleet::testing::NatsServer;
use kasbah_fleet::{Job, JobResult, NatsAuth, WorkerConfig};
use kasbah_policy::Policy;
use tokio::sync::oneshot;

type Res<T = ()> = anyhow::Result<T>;

/// Every guest crate, as `kasbah_tests::GUESTS` (and `tests/worker.rs`)
/// lists them, so that cargo does not rebuild shared guest dependencies
/// with other features between the test binaries.
const GUESTS: &[&str] = &[
    "hello",
    "hostile",
    "net-probe",
    "gpu-matmul",
    "gpu-hostile",
    "minilm-embed",
    "residency-probe",
];

fn hello_guest() -> Res<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .args(GUESTS.iter().flat_map(|g| ["-p", g]))
        .status()?;
    anyhow::ensure!(status.success(), "building guest components failed");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm32-wasip2/guest");
    Ok(std::fs::read(dir.join("hello.wasm"))?)
}

/// The `NatsAuth` of a generated credentials file, read as a worker config.
fn auth_of(path: &std::path::Path) -> Res<(WorkerConfig, NatsAuth)> {
    let config: WorkerConfig = toml::from_str(&std::fs::read_to_string(path)?)?;
    let auth = config.nats_auth();
    Ok((config, auth))
}

fn job(run_id: &str, zone: &str, module: Digest, input: &str) -> Job {
    Job {
        run_id: run_id.into(),
        tenant: "t1".into(),
        module,
        policy: Policy::default(),
        policy_version: 1,
        zone: zone.into(),
        adapter: None,
        label: vec![zone.into()],
        datasets: Vec::new(),
        input: input.as_bytes().to_vec(),
        content_type: Some("text/plain".into()),
        metadata: BTreeMap::new(),
        deadline_unix_ms: kasbah_fleet::worker::now_ms() + 60_000,
        store_output: false,
    }
}

async fn publish(js: &jetstream::Context, j: &Job) -> Res {
    let mut h = async_nats::HeaderMap::new();
    h.insert(MSG_ID_HEADER, j.run_id.as_str());
    js.publish_with_headers(job_subject(&j.zone), h, serde_json::to_vec(j)?.into())
        .await?
        .await?;
    Ok(())
}

async fn results(js: &jetstream::Context, n: usize, wait: Duration) -> Res<Vec<JobResult>> {
    let stream = js.get_stream(RESULTS_STREAM).await?;
    let c = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while out.len() < n && tokio::time::Instant::now() < until {
        let mut batch = c
            .batch()
            .max_messages(n - out.len())
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            out.push(serde_json::from_slice::<JobResult>(&m.payload)?);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_credentials_run_their_zone_and_nothing_else() -> Res {
    let hello = hello_guest()?;
    let files = tempfile::tempdir()?;
    let spec = Spec {
        bcrypt_cost: 6,
        ..Spec::new(
            vec!["zone-a".into(), "zone-b".into()],
            files.path().join("jetstream"),
        )
    };
    let generated = nats_config::generate(&spec)?;
    let out = files.path().join("nats");
    nats_config::write(&out, &generated)?;
    // The server runs the generated file, less its store dir (the test
    // server passes its own `-sd`, and nats-server refuses both); its
    // listen address is overridden by the test server's flags.
    let written = std::fs::read_to_string(out.join(nats_config::SERVER_CONFIG_FILE))?;
    let store_line = format!("  store_dir: \"{}\"\n", spec.store_dir.display());
    anyhow::ensure!(written.contains(&store_line), "{written}");
    let conf = written.replace(&store_line, "");
    let nats = NatsServer::start_with_config(&conf)?;
    let url = nats.url();

    // No user, a wrong password: refused.
    assert!(
        async_nats::ConnectOptions::new()
            .connect(&url)
            .await
            .is_err(),
        "anonymous connection accepted"
    );
    let (_, cp_auth) = auth_of(&out.join("control-plane.toml"))?;
    let wrong = NatsAuth {
        password: Some("0".repeat(64)),
        ..cp_auth.clone()
    };
    assert!(kasbah_fleet::connect(&url, "wrong", &wrong).await.is_err());

    // The control plane sets the fleet up and publishes a zone-a job.
    let cp = kasbah_fleet::connect(&url, "control plane", &cp_auth).await?;
    let js = jetstream::new(cp);
    ensure_streams(&js).await?;
    for z in ["zone-a", "zone-b"] {
        ensure_zone(&js, z, ConsumerTiming::default()).await?;
    }
    let module = Digest::of(&hello);
    js.get_object_store(MODULES_BUCKET)
        .await?
        .put(module.hex().as_str(), &mut hello.as_slice())
        .await?;
    let secret = b"zone-b secret".to_vec();
    js.get_object_store(proto::zone_bucket("zone-b"))
        .await?
        .put(Digest::of(&secret).hex().as_str(), &mut secret.as_slice())
        .await?;
    publish(&js, &job("run_a", "zone-a", module, "hello fleet")).await?;
    publish(&js, &job("run_b", "zone-b", module, "for zone b")).await?;

    // A worker with the generated zone-a credentials runs it.
    let creds = out.join("worker-zone-a-1.toml");
    let (mut config, za_auth) = auth_of(&creds)?;
    let work = tempfile::tempdir()?;
    config.id = "w-za".into();
    config.nats = url.clone();
    config.capacity = 1;
    config.work_dir = work.path().join("w-za");
    config.zones.node = vec!["zone-a".into()];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let (tx, done) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let r = kasbah_fleet::run(config, async move {
            let _ = stopped.await;
        })
        .await;
        let _ = tx.send(r);
    });
    let got = results(&js, 1, Duration::from_secs(60)).await?;
    assert_eq!(got.len(), 1, "no result: {}", nats.log());
    assert_eq!(got[0].run_id, "run_a");
    assert_eq!(got[0].worker, "w-za");
    match &got[0].report.outcome {
        Outcome::Ok { output } => assert_eq!(output.body, b"HELLO FLEET"),
        o => panic!("run_a did not succeed: {o:?}"),
    }

    // The control plane reads the live workers and consumes results as
    // `kasbah serve` does: a durable consumer with explicit acks.
    let kv = js.get_key_value(proto::WORKERS_BUCKET).await?;
    let mut keys = kv.keys().await?;
    let mut live = Vec::new();
    while let Some(k) = keys.next().await {
        live.push(k?);
    }
    assert_eq!(live, ["zone-a.w-za"]);
    let durable = js
        .get_stream(RESULTS_STREAM)
        .await?
        .get_or_create_consumer(
            "control-plane",
            consumer::pull::Config {
                durable_name: Some("control-plane".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let mut batch = durable
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await?;
    let m = batch
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no result for the durable consumer"))?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    m.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = js
        .get_stream(RESULTS_STREAM)
        .await?
        .consumer_info("control-plane")
        .await?;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));

    // The zone-a credentials reach nothing of zone-b.
    let za = za_auth
        .options("probe")
        .await?
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(&url)
        .await?;
    let mut zjs = jetstream::new(za.clone());
    zjs.set_timeout(Duration::from_secs(1));
    assert!(
        zjs.get_object_store(proto::zone_bucket("zone-a"))
            .await
            .is_ok()
    );
    assert!(
        zjs.get_object_store(proto::zone_bucket("zone-b"))
            .await
            .is_err(),
        "zone-b's bucket is visible with zone-a credentials"
    );
    // Heartbeats: zone-a's user writes zone-a keys only; a zone-b key or
    // a key outside every zone (what a forged zone-b worker would need) is
    // refused by the server.
    let zkv = zjs.get_key_value(proto::WORKERS_BUCKET).await?;
    let forged = serde_json::to_vec(&kasbah_fleet::WorkerInfo {
        id: "forged".into(),
        zones: vec!["zone-b".into()],
        adapters: Vec::new(),
        capacity: 1,
        active: 0,
        version: "x".into(),
        heartbeat_unix_ms: kasbah_fleet::worker::now_ms(),
    })?;
    zkv.put(
        proto::heartbeat_key("zone-a", "probe"),
        forged.clone().into(),
    )
    .await?;
    for key in [
        proto::heartbeat_key("zone-b", "forged"),
        "forged".to_string(),
    ] {
        assert!(
            zkv.put(&key, forged.clone().into()).await.is_err(),
            "zone-a credentials wrote heartbeat key {key}"
        );
    }
    let mut keys = kv.keys().await?;
    let mut written = Vec::new();
    while let Some(k) = keys.next().await {
        written.push(k?);
    }
    written.sort();
    assert_eq!(written, ["zone-a.probe", "zone-a.w-za"]);
    // And what it could write claims nothing: the probe's value names
    // another worker and another zone than its key.
    let mut entries = Vec::new();
    for k in &written {
        if let Some(v) = kv.get(k).await? {
            entries.push((k.clone(), serde_json::from_slice(&v)?));
        }
    }
    let live: Vec<String> = proto::live_workers(entries, kasbah_fleet::worker::now_ms())
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(live, ["w-za"]);

    // Its own zone's bucket takes a run output; zone-b's takes nothing.
    let output = vec![b'o'; 200_000];
    let od = Digest::of(&output);
    let za_bucket = zjs.get_object_store(proto::zone_bucket("zone-a")).await?;
    kasbah_fleet::objects::put(&za_bucket, &od, 64 * 1024, &mut output.as_slice()).await?;
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(
        &mut kasbah_fleet::objects::Checked::new(
            js.get_object_store(proto::zone_bucket("zone-a"))
                .await?
                .get(od.hex())
                .await?,
            od,
            output.len() as u64,
        ),
        &mut back,
    )
    .await?;
    assert!(back == output, "the output read back differs");
    let zb_bucket = js.get_object_store(proto::zone_bucket("zone-b")).await?;
    let zb_chunks = format!("$O.{}.C.forged", proto::zone_bucket("zone-b"));
    let zb_meta = format!("$O.{}.M.forged", proto::zone_bucket("zone-b"));
    for subject in [zb_chunks, zb_meta] {
        let acked = match zjs.publish(subject.clone(), "x".into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!acked, "{subject} took a zone-a publish");
    }
    assert!(zb_bucket.info("forged").await.is_err());
    let direct = zjs
        .get_stream_no_info(format!("OBJ_{}", proto::zone_bucket("zone-b")))
        .await?;
    assert!(
        direct.direct_get(1).await.is_err(),
        "direct get of zone-b data"
    );
    let jobs = zjs.get_stream(JOBS_STREAM).await?;
    assert!(
        jobs.get_consumer::<consumer::pull::Config>(&zone_consumer("zone-b"))
            .await
            .is_err(),
        "zone-b's consumer is reachable with zone-a credentials"
    );
    let next = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{}",
        zone_consumer("zone-b")
    );
    assert!(
        za.request(next, "1".into()).await.is_err(),
        "pulled a zone-b job"
    );

    // Nor retarget zone-a's consumer at zone-b's jobs, in either form of
    // the create request.
    let retarget = serde_json::json!({
        "stream_name": JOBS_STREAM,
        "config": {
            "durable_name": zone_consumer("zone-a"),
            "filter_subject": job_subject("zone-b"),
            "ack_policy": "explicit",
        },
    });
    let base = format!(
        "$JS.API.CONSUMER.CREATE.{JOBS_STREAM}.{}",
        zone_consumer("zone-a")
    );
    for subject in [base.clone(), format!("{base}.{}", job_subject("zone-b"))] {
        let r = za
            .request(subject.clone(), serde_json::to_vec(&retarget)?.into())
            .await;
        assert!(r.is_err(), "{subject} answered: {r:?}");
    }
    let info = js
        .get_stream(JOBS_STREAM)
        .await?
        .consumer_info(zone_consumer("zone-a"))
        .await?;
    assert_eq!(info.config.filter_subject, job_subject("zone-a"));

    // Nor publish a job: only the control plane does.
    let before = js
        .get_stream(JOBS_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(before, 1, "run_b waits for a zone-b worker");
    let forged = job("run_forged", "zone-a", module, "forged");
    assert!(
        publish(&zjs, &forged).await.is_err(),
        "a zone-a worker published a job"
    );
    let after = js
        .get_stream(JOBS_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(after, 1, "the forged job reached the jobs stream");
    let stray = results(&js, 2, Duration::from_secs(2)).await?;
    assert_eq!(stray.len(), 1, "{stray:?}");

    // The worker drains cleanly.
    let _ = stop.send(());
    let r =
        tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(30))).await??;
    rt.shutdown_background();
    r
}

/// The files exactly as written: `nats-server -c nats-server.conf` listens
/// where the spec says, keeps JetStream in the spec's store, and takes the
/// control plane's credentials file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_config_starts_nats_server_as_is() -> Res {
    let program = kasbah_fleet::testing::nats_server_program()?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let store = dir.path().join("store");
    let spec = Spec {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        bcrypt_cost: 6,
        ..Spec::new(vec!["zone-a".into()], store.clone())
    };
    let out = dir.path().join("nats");
    nats_config::write(&out, &nats_config::generate(&spec)?)?;
    let log = std::fs::File::create(dir.path().join("nats.log"))?;
    let mut child = Command::new(program)
        .arg("-c")
        .arg(out.join(nats_config::SERVER_CONFIG_FILE))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    let r = async {
        let url = format!("nats://127.0.0.1:{port}");
        let (_, auth) = auth_of(&out.join("control-plane.toml"))?;
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            match kasbah_fleet::connect(&url, "control plane", &auth).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() > until => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        ensure_streams(&jetstream::new(client)).await?;
        anyhow::ensure!(
            std::fs::read_dir(&store)?.next().is_some(),
            "nothing in the store dir"
        );
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    r.map_err(|e| {
        let log = std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default();
        e.context(log)
    })
}
