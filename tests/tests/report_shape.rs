//! One report shape (issue 18): a local run's JSON (`kasbah run
//! FILE.wasm --json`) and the server's record of a run of the same module
//! on the same input have the same keys, nested the same way, except what
//! only a server has; and they agree on the values both have.

use std::collections::BTreeSet;
use std::process::Command;

use kasbah_core::api::CreateRun;
use kasbah_tests::guest_path;
use kasbah_tests::platform::Platform;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

/// Every key path of `v` (`a`, `a.b`, `a[].c`).
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn key_paths(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    paths(v, "", &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_json_and_server_records_share_one_shape() {
    let p = Platform::start().await;
    let (_, dev) = p.tenant("acme", None).await;
    let hello = guest_path("hello");
    let m = dev
        .publish(&hello, "hello", "1.0.0", |_, _| {})
        .await
        .expect("publish");
    let r = dev
        .run(&CreateRun {
            module: m.digest.to_string(),
            input: Some("shape".into()),
            content_type: Some("text/plain".into()),
            ..CreateRun::default()
        })
        .await
        .expect("run");
    let tok = p.admin.tenant_token(&r.tenant_id).await.expect("token");
    let server: Value = reqwest::Client::new()
        .get(format!("{}/v1/runs/{}", p.url, r.id))
        .bearer_auth(&tok.token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("in.txt"), "shape").expect("input");
    let o = Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("KASBAH_URL")
        .env_remove("KASBAH_TOKEN")
        .env("KASBAH_COMPILE_CACHE", "off")
        .env("XDG_RUNTIME_DIR", dir.path())
        .args(["--json", "run"])
        .arg(&hello)
        .args(["-i", "in.txt", "--content-type", "text/plain"])
        .output()
        .expect("spawn");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let local: Value = serde_json::from_slice(&o.stdout).expect("local JSON");

    let (lk, sk) = (key_paths(&local), key_paths(&server));
    let missing: Vec<&String> = lk.difference(&sk).collect();
    assert!(
        missing.is_empty(),
        "local keys the server lacks: {missing:?}"
    );
    let server_only: BTreeSet<&str> = sk.difference(&lk).map(String::as_str).collect();
    assert_eq!(
        server_only,
        BTreeSet::from([
            "id",
            "tenant_id",
            "policy_version",
            // Placement: a local run has none.
            "zone",
            "input_label",
            "output_label",
            "output.url",
        ]),
        "server-only keys"
    );
    // Wall time carries its unit; the old name is kept for older readers.
    for v in [&local, &server] {
        assert!(v["usage"]["wall_time_us"].as_u64() > Some(0), "{v}");
        assert_eq!(v["usage"]["wall_time_us"], v["usage"]["wall_time"]);
    }
    // The same values where both have them.
    for k in [
        "module",
        "status",
        "input_digest",
        "input_size",
        "output",
        "logs",
        "denials",
    ] {
        let (mut a, mut b) = (local[k].clone(), server[k].clone());
        if k == "output" {
            a.as_object_mut().map(|o| o.remove("url"));
            b.as_object_mut().map(|o| o.remove("url"));
        }
        assert_eq!(a, b, "{k}");
    }
    assert_eq!(local["outcome"], server["outcome"]);
    assert_eq!(local["output"]["inline"]["bytes"], "SHAPE");
    assert_eq!(local["stdout"], server["stdout"]);
}
