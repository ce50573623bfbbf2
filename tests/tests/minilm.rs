//! all-MiniLM-L6-v2 in a guest (`guest-examples/minilm-embed`) on
//! `kasbah:gpu` kernels (lavapipe on CI), against sentence-transformers'
//! token ids and embeddings in `tests/fixtures/minilm/reference.json`
//! (regenerate with `scripts/minilm-reference.py`): through the runtime with
//! the weights mounted as datasets at `/datasets`, and through the platform
//! (publish the module, upload the weights as datasets, run with them).

use std::time::Instant;

use kasbah_core::api::CreateRun;
use kasbah_core::{GuestErrorKind, Outcome, RunReport};
use kasbah_policy::Policy;
use kasbah_runtime::Request;
use kasbah_runtime::kasbah_gpu::{AdapterConfig, GpuConfig};
use kasbah_tests::minilm_reference::{
    check_against_reference, cosine, fixture, fixture_input, floats,
};
use kasbah_tests::platform::Platform;
use kasbah_tests::{guest_path, minilm_datasets, run_minilm};
use serde_json::{Value, json};

fn minilm_policy() -> Policy {
    kasbah_tests::minilm_policy("zone-a")
}

fn ok_json(r: &RunReport) -> Value {
    match &r.outcome {
        Outcome::Ok { output } => serde_json::from_slice(&output.body).expect("output is JSON"),
        other => panic!("expected ok, got {other:?}\nlogs: {:?}", r.logs),
    }
}

#[tokio::test]
async fn embeddings_and_token_ids_match_sentence_transformers() {
    let started = Instant::now();
    let r = run_minilm(&minilm_policy(), Request::new(fixture_input()), true).await;
    let wall = started.elapsed();
    let out = ok_json(&r);
    assert_eq!(out["adapter"], "lavapipe-a");
    let min_cos = check_against_reference(&out);
    let sentences = fixture()["sentences"].as_array().map(Vec::len).unwrap_or(0);

    // The batch really mixed lengths: sentences were padded and masked
    // (the fixture has 2- to 256-token sentences).
    let tokens: Vec<u64> = out["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("count"))
        .collect();
    assert!(tokens.contains(&256) && tokens.contains(&2), "{tokens:?}");
    let padded: u64 = out["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b[0].as_u64().expect("n") * b[1].as_u64().expect("seq"))
        .sum();
    assert!(padded > tokens.iter().sum::<u64>(), "no batch had padding");
    assert!(out["batches"].as_array().map(Vec::len) < Some(sentences));

    let gpu = r.usage.gpu.as_ref().expect("GPU usage in the run record");
    assert!(gpu.dispatches >= 6 * 7, "{} dispatches", gpu.dispatches);
    // The weights are dataset-backed buffers (kasbah:gpu@0.2.0), not read
    // and uploaded by the guest: ~90 MB of resident bytes.
    assert!(
        gpu.resident_bytes_used > 80 << 20,
        "{} resident bytes",
        gpu.resident_bytes_used
    );
    eprintln!(
        "minilm: {} sentences, min cosine {min_cos:.9} (1 - cos = {:.1e}), run {:.2} s (GPU {:.2} s), timings {}",
        sentences,
        1.0 - min_cos,
        wall.as_secs_f64(),
        gpu.gpu_time.as_secs_f64(),
        out["timings"]
    );
}

#[tokio::test]
async fn a_lone_sentence_embeds_as_it_does_in_a_padded_batch() {
    // Padding must not leak into real tokens: the short sentence alone and
    // inside a batch padded to a longer one give the same embedding.
    let short = "A cat sits on the mat.";
    let long = "A much longer sentence, which forces the short one in the same batch to be padded.";
    let policy = minilm_policy();
    let alone = ok_json(&run_minilm(&policy, Request::new(json!([short]).to_string()), true).await);
    let input = json!({ "sentences": [long, short], "max_batch_tokens": 8192 });
    let both = ok_json(&run_minilm(&policy, Request::new(input.to_string()), true).await);
    let a = floats(&alone["embeddings"][0]);
    let b = floats(&both["embeddings"][1]);
    assert_eq!(alone["batches"], json!([[1, 9]]));
    assert_eq!(both["tokens"], json!([20, 9]));
    // One batch of two padded to 20 tokens: the 9-token sentence got 11 pad rows.
    assert_eq!(both["batches"], json!([[2, 20]]));
    let c = cosine(&a, &b);
    assert!(c > 0.99999, "cosine {c}");
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-5, "max difference {max_diff}");
    // And the long one differs from the short one (the test can fail).
    assert!(cosine(&a, &floats(&both["embeddings"][0])) < 0.95);
}

#[tokio::test]
async fn every_tensor_toolkit_op_matches_the_cpu() {
    // No model needed.
    let r = run_minilm(
        &minilm_policy(),
        Request::new(r#"{"selftest": true}"#),
        false,
    )
    .await;
    let out = ok_json(&r);
    let errs = out["selftest"].as_object().expect("selftest results");
    eprintln!("tensor toolkit vs CPU, max abs errors: {errs:?}");
    for op in [
        "linear",
        "linear+gelu",
        "linear+residual",
        "linear (5x12x3)",
        "attention",
        "layer_norm",
        "softmax",
        "bias_add",
        "gelu",
        "mean_pool",
        "l2_normalize",
    ] {
        let e = errs[op].as_f64().unwrap_or(f64::INFINITY);
        // linear sums 1544 products of values in [-1, 1): f32 rounding
        // reaches ~1e-5 there; everything else is far tighter.
        let tol = if op.starts_with("linear") { 1e-4 } else { 1e-5 };
        assert!(e <= tol, "{op}: max error {e} (all: {errs:?})");
    }
}

#[tokio::test]
async fn without_the_weights_mount_or_the_gpu_the_run_is_refused() {
    let r = run_minilm(&minilm_policy(), Request::new(r#"["hello"]"#), false).await;
    match &r.outcome {
        Outcome::GuestError {
            code: GuestErrorKind::InvalidInput,
            message,
        } => assert!(message.contains("/datasets/vocab.txt"), "{message}"),
        other => panic!("expected invalid_input, got {other:?}"),
    }
    let mut no_gpu = minilm_policy();
    no_gpu.gpu = None;
    let r = run_minilm(&no_gpu, Request::new(r#"["hello"]"#), true).await;
    match &r.outcome {
        Outcome::GuestError {
            code: GuestErrorKind::Denied,
            ..
        } => {}
        other => panic!("expected denied, got {other:?}"),
    }
}

#[tokio::test]
async fn through_the_platform_with_the_weights_as_datasets() {
    // A platform with one lavapipe entry in zone-a; a tenant allowed
    // datasets and that GPU publishes the module, uploads the two weight
    // files as datasets and runs the fixture with them.
    let p = Platform::start_with(|c| {
        c.gpu = GpuConfig {
            adapters: vec![AdapterConfig::new("lavapipe-a", "zone-a").backend("vulkan")],
            max_idle_devices: 1,
        };
        c.sync_wait_ms = 300_000;
    })
    .await;
    let (_, dev) = p.tenant("minilm", Some(minilm_policy())).await;
    let module = dev
        .publish(&guest_path("minilm-embed"), "minilm-embed", "1", |_, _| {})
        .await
        .expect("publish minilm-embed");
    let mut names = Vec::new();
    for mount in minilm_datasets() {
        let d = dev
            .create_dataset(&mount.path, &mount.name, None, |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("upload dataset {}: {e}", mount.name));
        names.push(d.name);
    }
    let run = dev
        .run(&CreateRun {
            module: module.digest.to_string(),
            input: Some(fixture_input()),
            content_type: Some("application/json".into()),
            wait: true,
            datasets: names.clone(),
            ..CreateRun::default()
        })
        .await
        .expect("run");
    match &run.outcome {
        Some(Outcome::Ok { .. }) => {}
        other => panic!("expected ok, got {other:?} ({:?})", run.logs),
    }
    assert_eq!(run.zone.as_deref(), Some("zone-a"));
    assert_eq!(run.adapter.as_deref(), Some("lavapipe-a"));
    assert_eq!(
        run.datasets
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>(),
        names
    );
    let body = dev.run_output(&run.id).await.expect("run output");
    let out: Value = serde_json::from_slice(&body).expect("output is JSON");
    let min_cos = check_against_reference(&out);
    eprintln!("minilm through the platform: min cosine {min_cos:.9}");

    // The tenant's next run finds its weights and kernels warm on the
    // adapter: nothing uploaded, nothing compiled, same embeddings.
    let first = run
        .usage
        .as_ref()
        .and_then(|u| u.gpu.clone())
        .expect("usage");
    let again = dev
        .run(&CreateRun {
            module: module.digest.to_string(),
            input: Some(fixture_input()),
            content_type: Some("application/json".into()),
            wait: true,
            datasets: names.clone(),
            ..CreateRun::default()
        })
        .await
        .expect("run");
    let warm = again
        .usage
        .as_ref()
        .and_then(|u| u.gpu.clone())
        .expect("usage");
    assert!(first.resident_bytes_uploaded > 80 << 20, "{first:?}");
    assert_eq!(warm.resident_bytes_uploaded, 0, "{warm:?}");
    assert_eq!(warm.resident_bytes_used, first.resident_bytes_used);
    assert_eq!(warm.kernels, 0, "every kernel from the cache: {warm:?}");
    assert!(warm.kernels_cached > 0);
    let body = dev.run_output(&again.id).await.expect("run output");
    let out: Value = serde_json::from_slice(&body).expect("output is JSON");
    check_against_reference(&out);
}
