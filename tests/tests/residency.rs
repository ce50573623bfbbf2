//! Residency zones end to end, on a real server whose one machine describes
//! two zones: lavapipe exposed as `lavapipe-a` (zone-a) and `lavapipe-b`
//! (zone-b), a loopback TCP listener per zone (plus one in no zone), and a
//! storage directory per zone. The `residency-probe` guest reads its
//! datasets and tries to push them to every listener, every writable
//! preopen and the GPU; the listeners count what arrives.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kasbah_audit::EntryBody;
use kasbah_client::{Client, LogEntry};
use kasbah_core::api::*;
use kasbah_core::{Denial, Digest, Outcome};
use kasbah_policy::{DirGrant, DirMode, GpuGrant, NetworkGrant, Policy};
use kasbah_runtime::kasbah_gpu::{AdapterConfig, GpuConfig};
use kasbah_runtime::{DatasetMount, NetZone, Request, RunOptions, StorageZone, ZonesConfig};
use kasbah_tests::guest_path;
use kasbah_tests::platform::{Platform, api_err};
use tokio::io::AsyncReadExt;

/// A loopback TCP listener counting connections and bytes received.
struct Listener {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Listener {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind listener");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (c, b) = (conns.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        Listener { addr, conns, bytes }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.conns.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }

    /// Wait until `bytes` more than `before` arrived (or time out), then
    /// return the counts.
    async fn settle(&self, before: (u64, u64), expect_bytes: u64) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.counts().1 < before.1 + expect_bytes && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.counts()
    }
}

fn zones(z: &[&str]) -> BTreeSet<String> {
    z.iter().map(|s| s.to_string()).collect()
}

fn strings(z: &[&str]) -> Vec<String> {
    z.iter().map(|s| s.to_string()).collect()
}

/// The two-zone platform and its listeners and storage.
struct World {
    p: Platform,
    a: Listener,
    b: Listener,
    /// Allowlisted by every tenant, but in no configured zone.
    nowhere: Listener,
    storage: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        let a = Listener::start().await;
        let b = Listener::start().await;
        let nowhere = Listener::start().await;
        let storage = tempfile::tempdir().expect("tmp");
        for z in ["a", "b"] {
            std::fs::create_dir_all(storage.path().join(z)).expect("mkdir");
        }
        let (sa, sb) = (storage.path().join("a"), storage.path().join("b"));
        let (na, nb) = (a.addr, b.addr);
        let p = Platform::start_with(move |c| {
            c.gpu = GpuConfig {
                adapters: vec![
                    AdapterConfig::new("lavapipe-a", "zone-a").backend("vulkan"),
                    AdapterConfig::new("lavapipe-b", "zone-b").backend("vulkan"),
                ],
                max_idle_devices: 2,
            };
            c.zones = ZonesConfig {
                node: strings(&["zone-a", "zone-b"]),
                network: vec![
                    NetZone {
                        destination: na.to_string().parse().expect("target"),
                        zone: "zone-a".into(),
                    },
                    NetZone {
                        destination: nb.to_string().parse().expect("target"),
                        zone: "zone-b".into(),
                    },
                ],
                storage: vec![
                    StorageZone {
                        path: sa,
                        zone: "zone-a".into(),
                    },
                    StorageZone {
                        path: sb,
                        zone: "zone-b".into(),
                    },
                ],
            };
            c.max_dataset_bytes = 1 << 20;
        })
        .await;
        World {
            p,
            a,
            b,
            nowhere,
            storage,
        }
    }

    /// Storage dir of `zone` (`a`/`b`) for `tenant`.
    fn out_dir(&self, zone: &str, tenant: &str) -> PathBuf {
        let d = self.storage.path().join(zone).join(tenant);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// Read-only reference data of `zone` for `tenant`: `secret.txt`.
    fn ref_dir(&self, zone: &str, tenant: &str) -> PathBuf {
        let d = self.storage.path().join(zone).join(format!("{tenant}-ref"));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("secret.txt"), format!("zone-{zone} data")).expect("write");
        d
    }

    /// A tenant with residency zones `zones`, the GPU in `gpu_zones` (empty:
    /// derived from `zones`), datasets, the three listeners allowlisted and
    /// a writable and a read-only preopen on each zone's storage.
    async fn tenant(&self, name: &str, zones: &[&str], gpu_zones: &[&str]) -> (String, Client) {
        let policy = Policy {
            zones: zones.iter().map(|s| s.to_string()).collect(),
            datasets: true,
            network: NetworkGrant {
                allow: [self.a.addr, self.b.addr, self.nowhere.addr]
                    .iter()
                    .map(|a| a.to_string().parse().expect("target"))
                    .collect(),
            },
            files: vec![
                DirGrant {
                    host: self.out_dir("a", name),
                    guest: "/out-a".into(),
                    mode: DirMode::Rw,
                },
                DirGrant {
                    host: self.out_dir("b", name),
                    guest: "/out-b".into(),
                    mode: DirMode::Rw,
                },
                DirGrant {
                    host: self.ref_dir("a", name),
                    guest: "/ref-a".into(),
                    mode: DirMode::Ro,
                },
                DirGrant {
                    host: self.ref_dir("b", name),
                    guest: "/ref-b".into(),
                    mode: DirMode::Ro,
                },
            ],
            gpu: Some(GpuGrant::in_zones(gpu_zones.iter().copied())),
            ..Policy::default()
        };
        let (t, c) = self.p.tenant(name, Some(policy)).await;
        (t.id, c)
    }
}

async fn publish(c: &Client, guest: &str) -> ModuleRecord {
    c.publish(&guest_path(guest), guest, "1", |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("publish {guest}: {e}"))
}

fn probe_req(module: &ModuleRecord, datasets: &[&str], input_label: Option<&[&str]>) -> CreateRun {
    CreateRun {
        module: module.digest.to_string(),
        datasets: strings(datasets),
        input_label: input_label.map(strings),
        ..CreateRun::default()
    }
}

fn report(r: &RunRecord) -> serde_json::Value {
    let out = r.output.as_ref().expect("output");
    let inline = out.inline.as_ref().expect("inline output");
    serde_json::from_slice(&inline.bytes).expect("probe report is JSON")
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

fn residency_denials(entries: &[LogEntry], action: &str) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match &e.entry.body {
            EntryBody::Denial(d)
                if d.action == action && d.reason.starts_with("residency_violation: ") =>
            {
                Some(d.reason.clone())
            }
            _ => None,
        })
        .collect()
}

/// One matrix case: who runs, with which datasets and input label, and what
/// must happen: `Some((zone, adapter, label))` or a refusal.
struct Case {
    tenant: usize,
    module: &'static str,
    datasets: &'static [&'static str],
    input_label: Option<&'static [&'static str]>,
    expect: Option<(&'static str, Option<&'static str>, &'static [&'static str])>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_matrix_places_refuses_and_contains_every_egress() {
    let w = World::start().await;
    // Tenants: zones, GPU zones.
    let tenants = [
        w.tenant("both", &["zone-a", "zone-b"], &[]).await,
        w.tenant("only-a", &["zone-a"], &[]).await,
        w.tenant("only-b", &["zone-b"], &[]).await,
        w.tenant("gpu-b", &["zone-a", "zone-b"], &["zone-b"]).await,
    ];
    let mut probes = Vec::new();
    let mut hellos = Vec::new();
    for (_, c) in &tenants {
        probes.push(publish(c, "residency-probe").await);
        hellos.push(publish(c, "hello").await);
    }
    // Datasets: content says whose and which label.
    let content = |t: &str, n: &str| format!("[{t}/{n}]").repeat(200).into_bytes();
    let mut refused_dataset = [0usize; 4];
    for (i, (tname, labels)) in [
        (
            "both",
            vec![
                ("da", vec!["zone-a"]),
                ("db", vec!["zone-b"]),
                ("dab", vec!["zone-a", "zone-b"]),
            ],
        ),
        (
            "only-a",
            vec![("da", vec!["zone-a"]), ("db", vec!["zone-b"])],
        ),
        (
            "only-b",
            vec![("db", vec!["zone-b"]), ("da", vec!["zone-a"])],
        ),
        (
            "gpu-b",
            vec![("da", vec!["zone-a"]), ("db", vec!["zone-b"])],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let c = &tenants[i].1;
        for (name, label) in labels {
            let r = c
                .create_dataset_bytes(content(tname, name), name, Some(&strings(&label)[..]))
                .await;
            let allowed: BTreeSet<String> = match tname {
                "only-a" => zones(&["zone-a"]),
                "only-b" => zones(&["zone-b"]),
                _ => zones(&["zone-a", "zone-b"]),
            };
            if label.iter().all(|z| allowed.contains(*z)) {
                let d = r.unwrap_or_else(|e| panic!("{tname}/{name}: {e}"));
                assert_eq!(d.label, strings(&label));
                assert_eq!(d.digest, Digest::of(&content(tname, name)));
            } else {
                let (status, code) = api_err(r);
                assert_eq!(
                    (status, code.as_str()),
                    (403, "residency_violation"),
                    "{tname}/{name}"
                );
                refused_dataset[i] += 1;
            }
        }
    }
    // The default label is the tenant's zones.
    let d = tenants[1]
        .1
        .create_dataset_bytes(b"defaults".to_vec(), "dflt", None)
        .await
        .expect("default label");
    assert_eq!(d.label, strings(&["zone-a"]));

    const A: &[&str] = &["zone-a"];
    const B: &[&str] = &["zone-b"];
    const AB: &[&str] = &["zone-a", "zone-b"];
    let cases = [
        Case {
            tenant: 0,
            module: "probe",
            datasets: &["da"],
            input_label: None,
            expect: Some(("zone-a", Some("lavapipe-a"), A)),
        },
        Case {
            tenant: 0,
            module: "probe",
            datasets: &["db"],
            input_label: None,
            expect: Some(("zone-b", Some("lavapipe-b"), B)),
        },
        Case {
            tenant: 0,
            module: "probe",
            datasets: &["dab"],
            input_label: None,
            expect: Some(("zone-a", Some("lavapipe-a"), AB)),
        },
        Case {
            tenant: 0,
            module: "probe",
            datasets: &["dab"],
            input_label: Some(B),
            expect: Some(("zone-b", Some("lavapipe-b"), B)),
        },
        Case {
            tenant: 0,
            module: "probe",
            datasets: &[],
            input_label: None,
            expect: Some(("zone-a", Some("lavapipe-a"), AB)),
        },
        Case {
            tenant: 0,
            module: "probe",
            datasets: &["da", "db"],
            input_label: None,
            expect: None,
        },
        Case {
            tenant: 0,
            module: "probe",
            datasets: &["da"],
            input_label: Some(B),
            expect: None,
        },
        Case {
            tenant: 0,
            module: "probe",
            datasets: &["dab"],
            input_label: Some(&["zone-c"][..]),
            expect: None,
        },
        Case {
            tenant: 1,
            module: "probe",
            datasets: &["da"],
            input_label: None,
            expect: Some(("zone-a", Some("lavapipe-a"), A)),
        },
        Case {
            tenant: 1,
            module: "probe",
            datasets: &[],
            input_label: Some(B),
            expect: None,
        },
        Case {
            tenant: 2,
            module: "probe",
            datasets: &["db"],
            input_label: None,
            expect: Some(("zone-b", Some("lavapipe-b"), B)),
        },
        Case {
            tenant: 2,
            module: "probe",
            datasets: &[],
            input_label: Some(AB),
            expect: Some(("zone-b", Some("lavapipe-b"), B)),
        },
        // GPU only in zone-b: a zone-a dataset cannot meet a GPU module...
        Case {
            tenant: 3,
            module: "probe",
            datasets: &["da"],
            input_label: None,
            expect: None,
        },
        Case {
            tenant: 3,
            module: "probe",
            datasets: &["db"],
            input_label: None,
            expect: Some(("zone-b", Some("lavapipe-b"), B)),
        },
        // ...the label stays {a, b} while the GPU pins the run to zone-b...
        Case {
            tenant: 3,
            module: "probe",
            datasets: &[],
            input_label: None,
            expect: Some(("zone-b", Some("lavapipe-b"), AB)),
        },
        // ...and a module without GPU imports runs on zone-a data.
        Case {
            tenant: 3,
            module: "hello",
            datasets: &["da"],
            input_label: None,
            expect: Some(("zone-a", None, A)),
        },
    ];

    let mut refused_runs = [0usize; 4];
    let mut ok_runs: Vec<(usize, RunRecord)> = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let (tname, c) = (
            &["both", "only-a", "only-b", "gpu-b"][case.tenant],
            &tenants[case.tenant].1,
        );
        let module = if case.module == "probe" {
            &probes[case.tenant]
        } else {
            &hellos[case.tenant]
        };
        let mut req = probe_req(module, case.datasets, case.input_label);
        let file = format!("case{n}.bin");
        if case.module == "probe" {
            req.metadata = [
                ("datasets".to_string(), case.datasets.join(",")),
                (
                    "send".to_string(),
                    format!("{},{},{}", w.a.addr, w.b.addr, w.nowhere.addr),
                ),
                ("write".to_string(), format!("/out-a/{file},/out-b/{file}")),
                (
                    "slurp".to_string(),
                    "/ref-a/secret.txt,/ref-b/secret.txt".to_string(),
                ),
                ("gpu".to_string(), "1".to_string()),
                ("tamper".to_string(), "1".to_string()),
            ]
            .into();
        }
        req.input = Some(format!("input of case {n}"));
        let data: Vec<u8> = case
            .datasets
            .iter()
            .flat_map(|d| content(tname, d))
            .chain(format!("input of case {n}").into_bytes())
            .collect();
        let before = (w.a.counts(), w.b.counts(), w.nowhere.counts());
        let runs_before = c.runs(1000).await.expect("runs").len();
        let result = c.run(&req).await;
        let ctx = format!(
            "case {n} ({tname}, {:?}, input {:?})",
            case.datasets, case.input_label
        );
        match case.expect {
            None => {
                let msg = match &result {
                    Err(kasbah_client::Error::Api {
                        status: 403,
                        code,
                        message,
                    }) if code == "residency_violation" => message.clone(),
                    other => panic!("{ctx}: expected 403 residency_violation, got {other:?}"),
                };
                // The message names the labels in conflict.
                for d in case.datasets {
                    assert!(msg.contains(&format!("dataset {d} label")), "{ctx}: {msg}");
                }
                assert!(msg.contains("tenant zones"), "{ctx}: {msg}");
                refused_runs[case.tenant] += 1;
                // Nothing ran: no run record, nothing reached any listener or file.
                assert_eq!(
                    c.runs(1000).await.expect("runs").len(),
                    runs_before,
                    "{ctx}"
                );
                assert_eq!(
                    (w.a.counts(), w.b.counts(), w.nowhere.counts()),
                    before,
                    "{ctx}"
                );
                for z in ["a", "b"] {
                    assert!(!w.out_dir(z, tname).join(&file).exists(), "{ctx}");
                }
            }
            Some((zone, adapter, label)) => {
                let r = result.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(r.status, RunStatus::Done, "{ctx}");
                assert!(
                    matches!(r.outcome, Some(Outcome::Ok { .. })),
                    "{ctx}: {:?}",
                    r.outcome
                );
                assert_eq!(r.zone.as_deref(), Some(zone), "{ctx}");
                assert_eq!(r.adapter.as_deref(), adapter, "{ctx}");
                assert_eq!(r.output_label, strings(label), "{ctx}");
                assert_eq!(
                    r.datasets
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>(),
                    case.datasets.to_vec(),
                    "{ctx}"
                );
                if case.module == "hello" {
                    ok_runs.push((case.tenant, r));
                    continue;
                }
                let rep = report(&r);
                assert_eq!(rep["bytes"], data.len() as u64, "{ctx}: {rep}");
                // GPU: the data went only to the bound adapter, in the placed zone.
                assert_eq!(rep["gpu"]["zone"], zone, "{ctx}: {rep}");
                assert_eq!(
                    rep["gpu"]["adapter"],
                    adapter.expect("adapter"),
                    "{ctx}: {rep}"
                );
                let gpu = r
                    .usage
                    .as_ref()
                    .and_then(|u| u.gpu.as_ref())
                    .expect("gpu usage");
                assert_eq!(
                    (gpu.adapter.as_str(), gpu.zone.as_str()),
                    (adapter.expect("adapter"), zone),
                    "{ctx}"
                );
                // Network: bytes reach exactly the listeners in the label.
                let in_a = label.contains(&"zone-a");
                let in_b = label.contains(&"zone-b");
                let n_bytes = data.len() as u64;
                let after_a = w.a.settle(before.0, if in_a { n_bytes } else { 0 }).await;
                let after_b = w.b.settle(before.1, if in_b { n_bytes } else { 0 }).await;
                let expect = |inside: bool, b: (u64, u64)| {
                    if inside { (b.0 + 1, b.1 + n_bytes) } else { b }
                };
                assert_eq!(
                    after_a,
                    expect(in_a, before.0),
                    "{ctx}: zone-a listener; {rep}"
                );
                assert_eq!(
                    after_b,
                    expect(in_b, before.1),
                    "{ctx}: zone-b listener; {rep}"
                );
                assert_eq!(
                    w.nowhere.counts(),
                    before.2,
                    "{ctx}: the zoneless listener got something"
                );
                let ok = |v: &serde_json::Value| v == "ok";
                assert_eq!(ok(&rep["sent"][w.a.addr.to_string()]), in_a, "{ctx}: {rep}");
                assert_eq!(ok(&rep["sent"][w.b.addr.to_string()]), in_b, "{ctx}: {rep}");
                assert!(
                    !ok(&rep["sent"][w.nowhere.addr.to_string()]),
                    "{ctx}: {rep}"
                );
                // Files: written only on storage in the label.
                for (z, inside) in [("a", in_a), ("b", in_b)] {
                    let f = w.out_dir(z, tname).join(&file);
                    if inside {
                        assert_eq!(std::fs::read(&f).expect("written"), data, "{ctx}");
                    } else {
                        assert!(
                            !f.exists(),
                            "{ctx}: {} written outside the label",
                            f.display()
                        );
                    }
                    assert_eq!(
                        ok(&rep["wrote"][format!("/out-{z}/{file}")]),
                        inside,
                        "{ctx}: {rep}"
                    );
                }
                // Storage outside the label is not mounted: another zone's
                // data cannot be read in (read-only grants included).
                for (z, inside) in [("a", in_a), ("b", in_b)] {
                    assert_eq!(
                        ok(&rep["slurped"][format!("/ref-{z}/secret.txt")]),
                        inside,
                        "{ctx}: {rep}"
                    );
                }
                // Datasets are read-only to the guest.
                for t in ["overwrite", "create", "delete", "mkdir"] {
                    assert!(
                        rep["tamper"][t]
                            .as_str()
                            .is_some_and(|s| s.starts_with("error")),
                        "{ctx}: {rep}"
                    );
                }
                // Every refused egress is a denial in the run record.
                let residency_refusals: Vec<&Denial> = r
                    .denials
                    .iter()
                    .filter(|d| d.detail.starts_with("residency_violation: "))
                    .collect();
                // Per zone outside the label: its listener, its writable and
                // its read-only directory; plus the zoneless listener.
                let expected = 1 + usize::from(!in_a) * 3 + usize::from(!in_b) * 3;
                assert_eq!(residency_refusals.len(), expected, "{ctx}: {:?}", r.denials);
                assert!(
                    r.denials.iter().any(|d| d.capability == "network"
                        && d.detail.contains(&w.nowhere.addr.to_string())
                        && d.detail.contains("no configured zone")),
                    "{ctx}: {:?}",
                    r.denials
                );
                ok_runs.push((case.tenant, r));
            }
        }
    }
    // Every dataset is intact (the tamper attempts changed nothing).
    for (i, tname) in ["both", "only-a", "only-b", "gpu-b"].iter().enumerate() {
        for d in tenants[i].1.datasets(None).await.expect("datasets") {
            if d.name != "dflt" {
                let bytes = std::fs::read(
                    w.p.dir
                        .path()
                        .join("blobs/sha256")
                        .join(&d.digest.hex()[..2])
                        .join(d.digest.hex()),
                )
                .expect("blob");
                assert_eq!(bytes, content(tname, &d.name));
            }
        }
    }

    // Every refusal is a denial entry in the audit log, every run entry
    // carries its placement, and every in-run refusal is an entry too.
    for (i, (_, c)) in tenants.iter().enumerate() {
        let entries = all_entries(c).await;
        let runs = residency_denials(&entries, "run");
        assert_eq!(runs.len(), refused_runs[i], "tenant {i}: {runs:?}");
        assert_eq!(
            residency_denials(&entries, "dataset").len(),
            refused_dataset[i],
            "tenant {i}"
        );
        for (_, r) in ok_runs.iter().filter(|(t, _)| *t == i) {
            let run_entry = entries
                .iter()
                .find_map(|e| match &e.entry.body {
                    EntryBody::RunExecuted(x) if x.run_id == r.id => Some(x.clone()),
                    _ => None,
                })
                .expect("run entry");
            assert_eq!(Some(run_entry.zone.as_str()), r.zone.as_deref());
            assert_eq!(run_entry.adapter, r.adapter);
            assert_eq!(run_entry.output_label, r.output_label);
            let mut ds: Vec<Digest> = r.datasets.iter().map(|d| d.digest).collect();
            ds.sort();
            assert_eq!(run_entry.datasets, ds);
            let in_run = entries
                .iter()
                .filter(|e| matches!(&e.entry.body, EntryBody::Denial(d) if d.run_id.as_deref() == Some(r.id.as_str())))
                .count();
            assert_eq!(in_run, r.denials.len(), "{}", r.id);
        }
    }
    assert_eq!(refused_runs.iter().sum::<usize>(), 5);
    assert_eq!(refused_dataset.iter().sum::<usize>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_keeps_the_tightest_label() {
    let w = World::start().await;
    let (tenant, c) = w.tenant("chain", &["zone-a", "zone-b"], &[]).await;
    let probe = publish(&c, "residency-probe").await;
    let raw = c
        .create_dataset_bytes(
            b"patient records, zone-a only\n".to_vec(),
            "raw",
            Some(&strings(&["zone-a"])[..]),
        )
        .await
        .expect("raw");

    // Pipeline 1: reads raw (label {a}), output stored as a dataset.
    let mut p1 = probe_req(&probe, &["raw"], None);
    p1.metadata = [
        ("datasets".to_string(), "raw".to_string()),
        ("output".to_string(), "data".to_string()),
    ]
    .into();
    p1.input = Some("|stage 1".into());
    p1.store_output_as = Some("stage1".into());
    let r1 = c.run(&p1).await.expect("pipeline 1");
    assert!(
        matches!(r1.outcome, Some(Outcome::Ok { .. })),
        "{:?}",
        r1.outcome
    );
    assert_eq!(r1.zone.as_deref(), Some("zone-a"));
    assert_eq!(r1.output_label, strings(&["zone-a"]));
    let stage1_id = r1
        .output_dataset
        .clone()
        .expect("output stored as a dataset");
    let stage1 = c.dataset(&stage1_id).await.expect("stage1");
    assert_eq!(stage1.name, "stage1");
    assert_eq!(
        stage1.label,
        strings(&["zone-a"]),
        "the output keeps its inputs' label"
    );
    assert_eq!(stage1.source_run.as_deref(), Some(r1.id.as_str()));
    assert_eq!(stage1.digest, r1.output.as_ref().expect("output").digest);
    // The name is taken now: asking for it again is refused up front.
    assert_eq!(api_err(c.run(&p1).await), (409, "dataset_exists".into()));

    // Pipeline 2 where only zone-b is possible (input label {b}): refused.
    let mut p2 = probe_req(&probe, &["stage1"], Some(&["zone-b"]));
    p2.metadata = [
        ("datasets".to_string(), "stage1".to_string()),
        ("output".to_string(), "data".to_string()),
    ]
    .into();
    p2.input = Some("|stage 2".into());
    let msg = match c.run(&p2).await {
        Err(kasbah_client::Error::Api {
            status: 403,
            code,
            message,
        }) if code == "residency_violation" => message,
        other => panic!("expected 403 residency_violation, got {other:?}"),
    };
    assert!(
        msg.contains("dataset stage1 label {zone-a}") && msg.contains("input label {zone-b}"),
        "{msg}"
    );

    // In zone-a (the default input label, the tenant's zones): it runs, and
    // its stored output is still labelled {zone-a}.
    p2.input_label = None;
    p2.store_output_as = Some("stage2".into());
    let r2 = c.run(&p2).await.expect("pipeline 2");
    assert_eq!(r2.zone.as_deref(), Some("zone-a"));
    let out = c.run_output(&r2.id).await.expect("output");
    assert_eq!(out, b"patient records, zone-a only\n|stage 1|stage 2");
    let stage2 = c
        .dataset(r2.output_dataset.as_deref().expect("stored"))
        .await
        .expect("stage2");
    assert_eq!(stage2.label, strings(&["zone-a"]));
    // By digest too.
    let by_digest = probe_req(&probe, &[stage2.digest.to_string().as_str()], None);
    let r3 = c.run(&by_digest).await.expect("by digest");
    assert_eq!(r3.datasets[0].name, "stage2");

    // The log: raw and both stages created (stages naming their runs), the
    // refusal a denial, every run entry in zone-a with its dataset digests.
    let entries = all_entries(&c).await;
    let created: Vec<(String, Option<String>, Vec<String>)> = entries
        .iter()
        .filter_map(|e| match &e.entry.body {
            EntryBody::DatasetCreated(d) if d.tenant == tenant => {
                Some((d.name.clone(), d.run_id.clone(), d.label.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        vec![
            ("raw".into(), None, strings(&["zone-a"])),
            ("stage1".into(), Some(r1.id.clone()), strings(&["zone-a"])),
            ("stage2".into(), Some(r2.id.clone()), strings(&["zone-a"])),
        ]
    );
    assert_eq!(residency_denials(&entries, "run").len(), 1);
    let run2 = entries
        .iter()
        .find_map(|e| match &e.entry.body {
            EntryBody::RunExecuted(x) if x.run_id == r2.id => Some(x.clone()),
            _ => None,
        })
        .expect("run 2 entry");
    assert_eq!(run2.datasets, vec![stage1.digest]);
    assert_eq!(run2.zone, "zone-a");
    assert_eq!(run2.output_label, strings(&["zone-a"]));
    assert_eq!(raw.label, strings(&["zone-a"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_private_validated_bounded_and_outputs_go_only_to_owner_and_auditors() {
    let w = World::start().await;
    let (ta, a) = w.tenant("owner", &["zone-a", "zone-b"], &[]).await;
    let (_, b) = w.tenant("other", &["zone-a", "zone-b"], &[]).await;
    let d = a
        .create_dataset_bytes(b"weights".to_vec(), "weights.bin", None)
        .await
        .expect("create");
    assert_eq!(d.label, strings(&["zone-a", "zone-b"]));
    // Idempotent with the same bytes and label; immutable otherwise.
    let again = a
        .create_dataset_bytes(b"weights".to_vec(), "weights.bin", None)
        .await
        .expect("same");
    assert_eq!(again.id, d.id);
    assert_eq!(
        api_err(
            a.create_dataset_bytes(b"other".to_vec(), "weights.bin", None)
                .await
        ),
        (409, "dataset_exists".into())
    );
    // Validation.
    for bad in ["", "Upper", "../x", ".hidden", "a/b"] {
        assert_eq!(
            api_err(a.create_dataset_bytes(b"x".to_vec(), bad, None).await).0,
            422,
            "{bad:?}"
        );
    }
    assert_eq!(
        api_err(
            a.create_dataset_bytes(b"x".to_vec(), "x", Some(&strings(&["Not A Zone"])[..]))
                .await
        ),
        (422, "invalid_label".into())
    );
    assert_eq!(
        api_err(
            a.create_dataset_bytes(vec![0u8; (1 << 20) + 1], "big", None)
                .await
        ),
        (413, "dataset_too_large".into())
    );
    // Other tenants: 404 everywhere, absent from lists, cannot mount it.
    assert_eq!(api_err(b.dataset(&d.id).await).0, 404);
    assert!(b.datasets(None).await.expect("list").is_empty());
    let hello_b = publish(&b, "hello").await;
    assert_eq!(
        api_err(b.run(&probe_req(&hello_b, &["weights.bin"], None)).await).0,
        404
    );
    assert_eq!(
        api_err(
            b.run(&probe_req(&hello_b, &[d.digest.to_string().as_str()], None))
                .await
        )
        .0,
        404
    );
    assert_eq!(
        api_err(b.run(&probe_req(&hello_b, &["nope"], None)).await).0,
        404
    );
    assert_eq!(
        api_err(b.run(&probe_req(&hello_b, &[], Some(&["Bad"]))).await),
        (422, "invalid_label".into())
    );

    // Outputs: the owner and its auditor download; the admin sees the
    // record without the bytes and may not download; others get 404.
    let hello_a = publish(&a, "hello").await;
    let mut req = probe_req(&hello_a, &["weights.bin"], None);
    req.input = Some("labelled output".into());
    let r = a.run(&req).await.expect("run");
    assert_eq!(
        a.run_output(&r.id).await.expect("owner"),
        b"LABELLED OUTPUT"
    );
    let auditor =
        w.p.admin
            .create_auditor(&CreateAuditor {
                name: "sovereign".into(),
                tenants: vec![ta.clone()],
                ttl_seconds: None,
            })
            .await
            .expect("auditor");
    let auditor = w.p.client(&auditor.token);
    assert_eq!(
        auditor.run_output(&r.id).await.expect("auditor"),
        b"LABELLED OUTPUT"
    );
    assert_eq!(
        auditor
            .datasets(Some(&ta))
            .await
            .expect("auditor lists")
            .len(),
        1
    );
    assert_eq!(
        api_err(w.p.admin.run_output(&r.id).await),
        (403, "forbidden".into())
    );
    let seen =
        w.p.admin
            .get_run(&r.id)
            .await
            .expect("admin reads the record");
    assert!(
        seen.output.as_ref().expect("output ref").inline.is_none(),
        "no bytes for the admin"
    );
    assert!(
        a.get_run(&r.id)
            .await
            .expect("owner")
            .output
            .expect("output")
            .inline
            .is_some()
    );
    assert_eq!(api_err(b.run_output(&r.id).await).0, 404);

    // The API document describes the new endpoints and fields.
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", w.p.url))
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(
        doc["paths"]["/v1/datasets"]["post"].is_object(),
        "{}",
        doc["paths"]
    );
    assert!(doc["paths"]["/v1/datasets/{id}"]["get"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["DatasetRecord"].is_object());
    for field in ["datasets", "input_label", "store_output_as"] {
        assert!(
            schemas["CreateRun"]["properties"][field].is_object(),
            "CreateRun.{field}"
        );
    }
    for field in ["zone", "adapter", "output_label", "output_dataset"] {
        assert!(
            schemas["RunRecord"]["properties"][field].is_object(),
            "RunRecord.{field}"
        );
    }
}

/// The runtime API on its own (what `kasbah run --dataset` uses): datasets
/// are files under /datasets, read-only, and the directory goes away.
#[tokio::test]
async fn the_runtime_mounts_datasets_read_only_without_a_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("weights");
    std::fs::write(&src, b"0123456789").expect("write");
    let policy = Policy {
        datasets: true,
        gpu: Some(GpuGrant::in_zones(["zone-a"])),
        ..Policy::default()
    };
    let module = kasbah_tests::load("residency-probe");
    let options = RunOptions {
        datasets: vec![DatasetMount::new("model.bin", &src)],
        residency: None,
        tenant: None,
        secrets: Vec::new(),
    };
    let req = Request::new("!")
        .with_meta("datasets", "model.bin")
        .with_meta("tamper", "1");
    let r = kasbah_tests::runtime()
        .run_with(&module, &policy, req, &options)
        .await
        .expect("runs");
    let out = match &r.outcome {
        Outcome::Ok { output } => {
            serde_json::from_slice::<serde_json::Value>(&output.body).expect("json")
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(out["read"]["model.bin"], 10);
    assert_eq!(out["bytes"], 11);
    for t in ["overwrite", "create", "delete", "mkdir"] {
        assert!(
            out["tamper"][t]
                .as_str()
                .is_some_and(|s| s.starts_with("error")),
            "{out}"
        );
    }
    assert_eq!(std::fs::read(&src).expect("source"), b"0123456789");
    // A bad name is refused before the guest runs.
    let bad = RunOptions {
        datasets: vec![DatasetMount::new("../etc", &src)],
        residency: None,
        tenant: None,
        secrets: Vec::new(),
    };
    let r = kasbah_tests::runtime()
        .run_with(&module, &policy, Request::new(""), &bad)
        .await
        .expect("runs");
    assert!(
        matches!(r.outcome, Outcome::Denied { .. }),
        "{:?}",
        r.outcome
    );
}
