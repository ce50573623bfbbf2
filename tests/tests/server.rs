//! The platform service against a real server on loopback: roles, tenant
//! isolation (other tenants' objects are 404), publish-time checks, runs,
//! overload (429), restart and kill -9 recovery.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kasbah_client::Client;
use kasbah_core::Outcome;
use kasbah_core::api::*;
use kasbah_policy::{Ceiling, DirGrant, DirMode, Limits, MIB, NetworkGrant, Policy};
use kasbah_tests::guest_path;
use kasbah_tests::platform::{Platform, api_err};

fn run_req(module: &str, input: &str) -> CreateRun {
    CreateRun {
        module: module.into(),
        input: Some(input.into()),
        input_base64: None,
        content_type: None,
        metadata: BTreeMap::new(),
        wait: true,
        ..CreateRun::default()
    }
}

fn attack(module: &str, name: &str, arg: &str, wait: bool) -> CreateRun {
    CreateRun {
        metadata: [("attack".to_string(), name.to_string())].into(),
        wait,
        ..run_req(module, arg)
    }
}

async fn publish(c: &Client, guest: &str, version: &str) -> kasbah_client::Result<ModuleRecord> {
    c.publish(&guest_path(guest), guest, version, |_, _| {})
        .await
}

/// `p` with a shorter wall-time limit (a change: identical policies make no version).
fn shorter_runs(p: Policy) -> Policy {
    Policy {
        limits: Limits {
            wall_time_ms: 5_000,
            ..p.limits.clone()
        },
        ..p
    }
}

/// A policy that lets the hostile guest (which imports wasi:filesystem) publish.
fn hostile_policy(dir: &std::path::Path, limits: Limits) -> Policy {
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

#[tokio::test]
async fn roles_see_only_what_they_reach() {
    let p = Platform::start().await;
    let admin = &p.admin;

    // Unauthenticated and unknown tokens.
    assert_eq!(
        api_err(p.client("").whoami().await),
        (401, "unauthenticated".into())
    );
    assert_eq!(
        api_err(p.client("kbh_nope").whoami().await),
        (401, "unauthenticated".into())
    );

    // Admin creates an operator with a 128 MiB memory ceiling and 2 tenants.
    let op = admin
        .create_operator(&CreateOperator {
            name: "telecom".into(),
            ceiling: Some(Ceiling {
                limits: Limits {
                    memory_bytes: 128 * MIB,
                    ..Ceiling::open_limits()
                },
                ..Ceiling::standard()
            }),
            max_tenants: 2,
            zones: Vec::new(),
        })
        .await
        .expect("operator");
    let operator = p.client(&admin.operator_token(&op.id).await.expect("token").token);
    assert_eq!(
        operator.whoami().await.expect("whoami").role,
        Role::Operator
    );

    // The operator creates its tenant A within its ceiling; above it is refused.
    let over = Policy {
        limits: Limits {
            memory_bytes: 256 * MIB,
            ..Limits::default()
        },
        ..Policy::default()
    };
    let create = |name: &str, policy: Option<Policy>| CreateTenant {
        name: name.into(),
        operator_id: None,
        policy,
    };
    assert_eq!(
        api_err(
            operator
                .create_tenant(&create("too-big", Some(over.clone())))
                .await
        ),
        (422, "policy_exceeds_ceiling".into())
    );
    let files = Policy {
        files: vec![DirGrant {
            host: "/etc".into(),
            guest: "/etc".into(),
            mode: DirMode::Ro,
        }],
        ..Policy::default()
    };
    assert_eq!(
        api_err(operator.create_tenant(&create("files", Some(files))).await),
        (422, "policy_exceeds_ceiling".into()),
        "operators may not grant host directories"
    );
    let a = operator
        .create_tenant(&create("tenant-a", None))
        .await
        .expect("tenant a");
    assert_eq!(a.operator_id.as_deref(), Some(op.id.as_str()));
    let dev_a = p.client(&operator.tenant_token(&a.id).await.expect("token").token);

    // Tenant B belongs to the platform directly.
    let (b, dev_b) = p.tenant("tenant-b", None).await;

    // Operator quota: 2 tenants.
    operator
        .create_tenant(&create("tenant-a2", None))
        .await
        .expect("second");
    assert_eq!(
        api_err(operator.create_tenant(&create("tenant-a3", None)).await),
        (422, "tenant_quota_exceeded".into())
    );

    // Developer A publishes and runs.
    let m = publish(&dev_a, "hello", "1.0.0").await.expect("publish");
    let run = dev_a
        .run(&run_req(&m.digest.to_string(), "abc"))
        .await
        .expect("run");
    assert_eq!(run.status, RunStatus::Done);
    assert!(matches!(run.outcome, Some(Outcome::Ok { .. })));

    // Developer B cannot see any of A's objects: all 404.
    assert_eq!(api_err(dev_b.get_run(&run.id).await).0, 404);
    assert_eq!(api_err(dev_b.run_output(&run.id).await).0, 404);
    assert_eq!(api_err(dev_b.policy(&a.id).await).0, 404);
    assert_eq!(
        api_err(dev_b.run(&run_req(&m.digest.to_string(), "x")).await),
        (404, "not_found".into()),
        "B cannot run A's module"
    );
    assert!(dev_b.modules().await.expect("list").is_empty());
    assert!(dev_b.runs(100).await.expect("list").is_empty());
    // Developers manage nothing.
    assert_eq!(
        api_err(dev_a.set_policy(&a.id, &Policy::default()).await).0,
        403
    );
    assert_eq!(api_err(dev_a.tenant_token(&a.id).await).0, 403);
    assert_eq!(
        api_err(dev_a.create_tenant(&create("x", None)).await).0,
        403
    );
    assert_eq!(api_err(dev_a.operators().await).0, 403);

    // The operator sees its tenants and their usage, nothing else.
    let ids: Vec<String> = operator
        .tenants()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert!(ids.contains(&a.id) && !ids.contains(&b.id), "{ids:?}");
    assert_eq!(api_err(operator.policy(&b.id).await).0, 404);
    assert_eq!(
        api_err(operator.set_policy(&b.id, &Policy::default()).await).0,
        404
    );
    assert_eq!(api_err(operator.tenant_token(&b.id).await).0, 404);
    assert_eq!(api_err(operator.get_run(&run.id).await).0, 404);
    assert_eq!(api_err(operator.runs(10).await).0, 403);
    assert_eq!(api_err(publish(&operator, "hello", "9").await).0, 403);
    let usage = operator.usage(None, "day").await.expect("usage");
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(
        (usage[0].tenant_id.as_str(), usage[0].runs, usage[0].ok_runs),
        (a.id.as_str(), 1, 1)
    );
    assert_eq!(api_err(operator.usage(Some(&b.id), "day").await).0, 404);
    // Policy changes are versioned and checked against the ceiling; an
    // identical policy makes no version.
    let same = operator
        .set_policy(&a.id, &Policy::default())
        .await
        .expect("identical");
    assert_eq!((same.version, same.unchanged), (1, true));
    let v2 = operator
        .set_policy(&a.id, &shorter_runs(Policy::default()))
        .await
        .expect("set");
    assert_eq!((v2.version, v2.unchanged), (2, false));
    assert_eq!(
        api_err(operator.set_policy(&a.id, &over).await),
        (422, "policy_exceeds_ceiling".into())
    );

    // An auditor granted A reads A's modules and runs, nothing of B's.
    let aud = p.client(
        &admin
            .create_auditor(&CreateAuditor {
                name: "sovereign-client".into(),
                tenants: vec![a.id.clone()],
                ttl_seconds: None,
            })
            .await
            .expect("auditor")
            .token,
    );
    assert_eq!(aud.get_run(&run.id).await.expect("read").id, run.id);
    assert_eq!(aud.modules().await.expect("modules").len(), 1);
    let mb = publish(&dev_b, "hello", "1.0.0")
        .await
        .expect("b publishes");
    let run_b = dev_b
        .run(&run_req(&mb.digest.to_string(), "b"))
        .await
        .expect("run b");
    assert_eq!(api_err(aud.get_run(&run_b.id).await).0, 404);
    assert_eq!(
        api_err(aud.run(&run_req(&m.digest.to_string(), "x")).await).0,
        403
    );
    assert_eq!(api_err(publish(&aud, "hello", "2").await).0, 403);
    assert_eq!(
        api_err(aud.set_policy(&a.id, &Policy::default()).await).0,
        403
    );
    assert_eq!(api_err(aud.usage(None, "day").await).0, 403);

    // The admin reaches everything.
    assert_eq!(
        admin.get_run(&run_b.id).await.expect("admin reads").id,
        run_b.id
    );
    assert_eq!(admin.tenants().await.expect("all").len(), 3);
}

/// A white-label operator limited to some zones cannot hand its tenants any
/// other: tenants created without a policy get the operator's zones; a
/// policy with a zone outside them, or with none (= every node zone), is
/// refused for the operator and the admin alike; an unknown zone is refused
/// when the operator is created.
#[tokio::test]
async fn a_zoned_operators_tenants_stay_in_its_zones() {
    let p = Platform::start_with(|c| {
        c.zones.node = vec!["zone-a".into(), "zone-b".into()];
        c.gpu.adapters.clear();
    })
    .await;
    let admin = &p.admin;
    let operator = |name: &str, zones: &[&str]| CreateOperator {
        name: name.into(),
        ceiling: None,
        max_tenants: 5,
        zones: zones.iter().map(|z| z.to_string()).collect(),
    };
    assert_eq!(
        api_err(admin.create_operator(&operator("typo", &["zone-c"])).await),
        (422, "invalid_zones".into())
    );
    let op = admin
        .create_operator(&operator("telecom-a", &["zone-a"]))
        .await
        .expect("operator");
    assert_eq!(op.zones, ["zone-a"]);
    assert!(admin.operators().await.expect("list")[0].zones == ["zone-a"]);
    let telecom = p.client(&admin.operator_token(&op.id).await.expect("token").token);
    let tenant = telecom
        .create_tenant(&CreateTenant {
            name: "ministry".into(),
            operator_id: None,
            policy: None,
        })
        .await
        .expect("tenant without a policy");
    let zones_of = |p: &PolicyRecord| p.policy.zones.iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        zones_of(&telecom.policy(&tenant.id).await.expect("policy")),
        ["zone-a"]
    );
    let with_zones = |z: &[&str]| Policy {
        zones: z.iter().map(|s| s.to_string()).collect(),
        ..Policy::default()
    };
    for (who, client) in [("operator", &telecom), ("admin", admin)] {
        for zones in [&["zone-a", "zone-b"][..], &["zone-b"], &[]] {
            let (status, code) = api_err(client.set_policy(&tenant.id, &with_zones(zones)).await);
            assert_eq!(
                (status, code.as_str()),
                (422, "policy_exceeds_ceiling"),
                "{who} setting zones {zones:?}"
            );
        }
        assert_eq!(
            api_err(
                client
                    .create_tenant(&CreateTenant {
                        name: format!("{who}-b"),
                        operator_id: Some(op.id.clone()),
                        policy: Some(with_zones(&["zone-b"])),
                    })
                    .await
            ),
            (422, "policy_exceeds_ceiling".into())
        );
    }
    let v2 = telecom
        .set_policy(&tenant.id, &shorter_runs(with_zones(&["zone-a"])))
        .await
        .expect("within the operator's zones");
    assert_eq!(v2.version, 2);
    // An operator without zones may use any node zone.
    let free = admin
        .create_operator(&operator("telecom-free", &[]))
        .await
        .expect("operator");
    assert!(free.zones.is_empty());
    admin
        .create_tenant(&CreateTenant {
            name: "anywhere".into(),
            operator_id: Some(free.id.clone()),
            policy: Some(with_zones(&["zone-b"])),
        })
        .await
        .expect("unrestricted operator");
}

#[tokio::test]
async fn publish_checks_imports_size_and_format() {
    let p = Platform::start().await;
    let (t, dev) = p.tenant("acme", None).await;

    // net-probe imports wasi:sockets: refused while the policy grants no network.
    let e = dev
        .publish(&guest_path("net-probe"), "net-probe", "1", |_, _| {})
        .await;
    match e {
        Err(kasbah_client::Error::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code.as_str()), (422, "imports_not_granted"));
            assert!(message.contains("wasi:sockets/tcp"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let net = Policy {
        network: NetworkGrant {
            allow: vec!["127.0.0.1:9".parse().expect("target")],
        },
        ..hostile_policy(&std::env::temp_dir(), Limits::default())
    };
    p.admin
        .set_policy(&t.id, &net)
        .await
        .expect("grant network");
    let probe = publish(&dev, "net-probe", "1").await.expect("now allowed");
    assert!(
        probe
            .imports
            .iter()
            .any(|i| i.starts_with("wasi:sockets/tcp"))
    );

    // Not a component / not wasm.
    let dir = tempfile::tempdir().expect("tmp");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\x00\x00\x00").expect("write");
    assert_eq!(
        api_err(dev.publish(&core, "core", "1", |_, _| {}).await),
        (422, "not_a_component".into())
    );
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").expect("write");
    assert_eq!(
        api_err(dev.publish(&junk, "junk", "1", |_, _| {}).await),
        (422, "invalid_module".into())
    );

    // Identical bytes dedupe; the same name+version with other bytes conflicts.
    let h1 = publish(&dev, "hello", "1.0.0").await.expect("publish");
    let h2 = publish(&dev, "hello", "1.0.0").await.expect("idempotent");
    assert_eq!(h1.digest, h2.digest);
    assert_eq!(h1.created_at, h2.created_at);
    assert_eq!(
        api_err(
            dev.publish(&guest_path("hostile"), "hello", "1.0.0", |_, _| {})
                .await
        ),
        (409, "version_exists".into())
    );

    // Oversize uploads are cut off at the policy's limit.
    let small = Policy {
        limits: Limits {
            max_module_bytes: 10_000,
            ..Limits::default()
        },
        ..net
    };
    p.admin.set_policy(&t.id, &small).await.expect("shrink");
    assert_eq!(
        api_err(publish(&dev, "hello", "2.0.0").await),
        (413, "module_too_large".into())
    );
    // Nothing already stored was lost.
    let listed = dev.modules().await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
}

#[tokio::test]
async fn runs_report_outcomes_and_refuse_bad_input() {
    let p = Platform::start().await;
    let data = tempfile::tempdir().expect("tmp");
    let (_t, dev) = p
        .tenant(
            "acme",
            Some(hostile_policy(
                data.path(),
                Limits {
                    wall_time_ms: 300,
                    max_input_bytes: 1024,
                    ..Limits::default()
                },
            )),
        )
        .await;
    let hello = publish(&dev, "hello", "1")
        .await
        .expect("hello")
        .digest
        .to_string();
    let hostile = publish(&dev, "hostile", "1")
        .await
        .expect("hostile")
        .digest
        .to_string();

    let r = dev
        .run(&run_req(&hello, "hello platform"))
        .await
        .expect("run");
    let out = r.output.as_ref().expect("output");
    assert_eq!(
        out.inline.as_ref().expect("inline").bytes,
        b"HELLO PLATFORM"
    );
    assert_eq!(
        dev.run_output(&r.id).await.expect("download"),
        b"HELLO PLATFORM"
    );
    assert_eq!(r.policy_version, 1);
    assert!(r.usage.as_ref().is_some_and(|u| u.fuel_consumed.is_some()));

    // Large outputs are stored as blobs and downloaded by link.
    let r = dev
        .run(&attack(&hostile, "giant-output", "200000", true))
        .await
        .expect("run");
    let out = r.output.as_ref().expect("output");
    assert!(out.inline.is_none());
    assert_eq!(out.size, 200_000);
    assert_eq!(
        dev.run_output(&r.id).await.expect("download").len(),
        200_000
    );

    let r = dev
        .run(&attack(&hostile, "loop", "", true))
        .await
        .expect("run");
    assert_eq!(r.outcome, Some(Outcome::DeadlineExceeded { limit_ms: 300 }));
    let r = dev
        .run(&attack(&hostile, "read-passwd", "", true))
        .await
        .expect("run");
    assert_eq!(r.outcome.as_ref().map(|o| o.kind()), Some("guest_error"));

    // Bad input: clear 4xx codes, never a 500.
    assert_eq!(
        api_err(dev.run(&run_req("sha256:00", "x")).await),
        (400, "invalid_digest".into())
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        api_err(dev.run(&run_req(&unknown, "x")).await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_err(dev.run(&run_req(&hello, &"x".repeat(2000))).await),
        (413, "input_too_large".into())
    );
    let raw = reqwest::Client::new();
    let resp = raw
        .post(format!("{}/v1/runs", p.url))
        .bearer_auth(dev_token(&p, &dev).await)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.expect("json error body");
    assert_eq!(body["error"]["code"], "invalid_request");
    let resp = raw
        .post(format!("{}/v1/runs", p.url))
        .bearer_auth(dev_token(&p, &dev).await)
        .json(&serde_json::json!({"module": hello, "surprise": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 422, "unknown fields are refused");

    // OpenAPI and metrics.
    let doc: serde_json::Value = raw
        .get(format!("{}/openapi.json", p.url))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"]["/v1/runs"]["post"].is_object(), "{doc}");
    let metrics = raw
        .get(format!("{}/metrics", p.url))
        .bearer_auth(admin_token(&p))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("kasbah_runs_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kasbah_runs_total{outcome=\"deadline_exceeded\"} 1"),
        "{metrics}"
    );
}

fn admin_token(p: &Platform) -> String {
    p.server.admin_token.clone().expect("admin token")
}

/// A fresh developer token for the tenant `dev` belongs to.
async fn dev_token(p: &Platform, dev: &Client) -> String {
    let me = dev.whoami().await.expect("whoami");
    p.admin
        .tenant_token(&me.subject)
        .await
        .expect("token")
        .token
}

/// A synchronous run executes in its request's task; a client that stops
/// waiting (here: gives up after 300 ms and drops the connection) must not
/// cancel it. The run is listed while it runs, ends at its own deadline, is
/// recorded with its audit entry, and its slot is given back.
#[tokio::test]
async fn a_sync_run_whose_client_leaves_still_runs_to_its_end() {
    let p = Platform::start().await;
    let data = tempfile::tempdir().expect("tmp");
    let limits = Limits {
        wall_time_ms: 1_500,
        max_concurrent_runs: 1,
        ..Limits::default()
    };
    let (_a, dev) = p
        .tenant("a", Some(hostile_policy(data.path(), limits)))
        .await;
    let hostile = publish(&dev, "hostile", "1")
        .await
        .expect("publish")
        .digest
        .to_string();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let gave_up = impatient
        .post(format!("{}/v1/runs", p.url))
        .bearer_auth(dev_token(&p, &dev).await)
        .json(&attack(&hostile, "sleep", "", true))
        .send()
        .await;
    assert!(
        gave_up.is_err_and(|e| e.is_timeout()),
        "the client timed out"
    );
    drop(impatient);
    let runs = dev.runs(10).await.expect("list");
    assert_eq!(runs.len(), 1, "the run is recorded while it runs");
    assert!(
        matches!(runs[0].status, RunStatus::Queued | RunStatus::Running),
        "{:?}",
        runs[0].status
    );
    let id = runs[0].id.clone();
    let mut ended = None;
    for _ in 0..100 {
        let r = dev.get_run(&id).await.expect("get");
        if r.status == RunStatus::Done {
            ended = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = ended.expect("the run ended on its own");
    assert_eq!(
        ended.outcome,
        Some(Outcome::DeadlineExceeded { limit_ms: 1_500 })
    );
    dev.run_receipt(&id).await.expect("its audit entry exists");
    // Its slot (max_concurrent_runs = 1) was given back.
    let r = dev
        .run(&attack(&hostile, "ok", "", true))
        .await
        .expect("admitted");
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
}

#[tokio::test]
async fn overload_is_429_with_retry_after_never_an_unbounded_queue() {
    let p = Platform::start_with(|c| {
        c.workers = 2;
        c.queue_depth = 1;
    })
    .await;
    let data = tempfile::tempdir().expect("tmp");
    let limits = Limits {
        wall_time_ms: 3_000,
        max_concurrent_runs: 1,
        ..Limits::default()
    };
    let (_a, dev_a) = p
        .tenant("a", Some(hostile_policy(data.path(), limits.clone())))
        .await;
    let hostile = publish(&dev_a, "hostile", "1")
        .await
        .expect("publish")
        .digest
        .to_string();

    // Tenant limit: one run in flight, the second is refused.
    let first = dev_a
        .run(&attack(&hostile, "sleep", "", false))
        .await
        .expect("accepted");
    assert!(matches!(
        first.status,
        RunStatus::Queued | RunStatus::Running
    ));
    let raw = reqwest::Client::new();
    let resp = raw
        .post(format!("{}/v1/runs", p.url))
        .bearer_auth(dev_token(&p, &dev_a).await)
        .json(&attack(&hostile, "sleep", "", false))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );

    // Server capacity (2 workers + 1 queued = 3): other tenants fill it up.
    let mut others = Vec::new();
    for name in ["b", "c"] {
        let (_t, dev) = p
            .tenant(name, Some(hostile_policy(data.path(), limits.clone())))
            .await;
        let m = publish(&dev, "hostile", "1")
            .await
            .expect("publish")
            .digest
            .to_string();
        dev.run(&attack(&m, "sleep", "", false))
            .await
            .expect("accepted");
        others.push((dev, m));
    }
    let (_t, dev_d) = p
        .tenant("d", Some(hostile_policy(data.path(), limits)))
        .await;
    let m = publish(&dev_d, "hostile", "1")
        .await
        .expect("publish")
        .digest
        .to_string();
    assert_eq!(
        api_err(dev_d.run(&attack(&m, "ok", "", true)).await),
        (429, "rate_limited".into())
    );

    // When the sleepers hit their deadline, capacity comes back.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let r = dev_d
        .run(&attack(&m, "ok", "", true))
        .await
        .expect("admitted again");
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
    let first = dev_a.get_run(&first.id).await.expect("first");
    assert_eq!(
        first.outcome,
        Some(Outcome::DeadlineExceeded { limit_ms: 3_000 })
    );
}

#[tokio::test]
async fn restart_keeps_tokens_modules_policies_and_runs() {
    let p = Platform::start().await;
    let (t, dev) = p.tenant("acme", None).await;
    let tok = dev_token(&p, &dev).await;
    let m = publish(&dev, "hello", "1").await.expect("publish");
    p.admin
        .set_policy(&t.id, &shorter_runs(Policy::default()))
        .await
        .expect("v2");
    let run = dev
        .run(&run_req(&m.digest.to_string(), "persist"))
        .await
        .expect("run");
    let admin_token = admin_token(&p);
    let dir = p.dir;
    p.server.stop();

    let server = kasbah_server::start(kasbah_tests::platform::config(dir.path()))
        .await
        .expect("restart");
    assert!(
        server.admin_token.is_none(),
        "the admin token is printed only once"
    );
    let url = format!("http://{}", server.addr);
    let dev = Client::new(&url, &tok);
    let admin = Client::new(&url, &admin_token);
    assert_eq!(dev.modules().await.expect("modules")[0].digest, m.digest);
    assert_eq!(admin.policy(&t.id).await.expect("policy").version, 2);
    let again = dev.get_run(&run.id).await.expect("run kept");
    assert_eq!(again.status, RunStatus::Done);
    assert_eq!(dev.run_output(&run.id).await.expect("output"), b"PERSIST");
    // And it still runs, under policy v2.
    let r = dev
        .run(&run_req(&m.digest.to_string(), "again"))
        .await
        .expect("run");
    assert_eq!(r.policy_version, 2);
}

/// The real binary, for crash tests.
struct Proc {
    child: Child,
    url: String,
    admin_token: Option<String>,
}

fn spawn_server(dir: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kasbah-under-test"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kasbah serve");
    let kasbah_tests::ServeBanner {
        url, admin_token, ..
    } = kasbah_tests::read_serve_banner(child.stdout.take().expect("stdout"));
    Proc {
        child,
        url: url.expect("server printed its address"),
        admin_token,
    }
}

#[tokio::test]
async fn kill_9_during_runs_marks_them_interrupted_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("tmp");
    let mut srv = spawn_server(dir.path());
    let admin = Client::new(&srv.url, srv.admin_token.as_deref().expect("first start"));
    let t = admin
        .create_tenant(&CreateTenant {
            name: "acme".into(),
            operator_id: None,
            policy: Some(hostile_policy(
                data.path(),
                Limits {
                    wall_time_ms: 60_000,
                    max_concurrent_runs: 16,
                    ..Limits::default()
                },
            )),
        })
        .await
        .expect("tenant");
    let dev_token = admin.tenant_token(&t.id).await.expect("token").token;
    let dev = Client::new(&srv.url, &dev_token);
    let hostile = publish(&dev, "hostile", "1")
        .await
        .expect("publish")
        .digest
        .to_string();
    let hello = publish(&dev, "hello", "1")
        .await
        .expect("publish")
        .digest
        .to_string();
    let done = dev
        .run(&run_req(&hello, "before the crash"))
        .await
        .expect("run");

    // Acknowledged runs that will never finish before the kill.
    let mut acked = Vec::new();
    for _ in 0..5 {
        let r = dev
            .run(&attack(&hostile, "sleep", "", false))
            .await
            .expect("accepted");
        acked.push(r.id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.child.kill().expect("kill -9"); // SIGKILL
    let _ = srv.child.wait();

    let mut srv2 = spawn_server(dir.path());
    assert!(srv2.admin_token.is_none());
    let dev = Client::new(&srv2.url, &dev_token);
    for id in &acked {
        let r = dev.get_run(id).await.expect("acknowledged run survived");
        assert_eq!(r.status, RunStatus::Interrupted, "{r:?}");
    }
    let d = dev.get_run(&done.id).await.expect("finished run survived");
    assert_eq!(d.status, RunStatus::Done);
    assert_eq!(dev.modules().await.expect("modules").len(), 2);
    let r = dev
        .run(&run_req(&hello, "after"))
        .await
        .expect("serves again");
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })));
    let _ = srv2.child.kill();
    let _ = srv2.child.wait();
}

/// Embedded mode: a dataset is downloaded from the blob store by its
/// tenant's developers and the auditors granted it (others: 404, admins:
/// 403), checked against its digest while streamed (a blob changed on disk
/// ends the body with an error, never with the wrong bytes cleanly).
#[tokio::test]
async fn datasets_download_to_their_tenant_checked_against_their_digest() {
    let p = Platform::start().await;
    let (a, dev_a) = p.tenant("ds-a", None).await;
    let (_b, dev_b) = p.tenant("ds-b", None).await;
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let d = dev_a
        .create_dataset_bytes(bytes.clone(), "table.bin", None)
        .await
        .expect("upload");
    assert!(!d.zone_stored, "embedded datasets are in the blob store");
    assert!(dev_a.dataset_content(&d.id).await.expect("download") == bytes);
    assert_eq!(api_err(dev_b.dataset_content(&d.id).await).0, 404);
    assert_eq!(api_err(p.admin.dataset_content(&d.id).await).0, 403);
    assert_eq!(
        api_err(dev_a.dataset_content("ds_0000000000000000").await).0,
        404
    );
    let aud = p.client(
        &p.admin
            .create_auditor(&CreateAuditor {
                name: "ds-auditor".into(),
                tenants: vec![a.id.clone()],
                ttl_seconds: None,
            })
            .await
            .expect("auditor")
            .token,
    );
    assert!(aud.dataset_content(&d.id).await.expect("auditor") == bytes);

    // The same size, other bytes: the download fails.
    let path = p.server.state.blobs.path(&d.digest);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let mut other = bytes.clone();
    other[150_000] ^= 1;
    std::fs::write(&path, &other).expect("tamper");
    let got = dev_a.dataset_content(&d.id).await;
    assert!(
        got.is_err(),
        "changed bytes served: {} bytes",
        got.map_or(0, |b| b.len())
    );
}
