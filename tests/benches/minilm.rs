//! all-MiniLM-L6-v2 through kasbah: the `minilm-embed` guest on the test
//! host's first GPU adapter entry (lavapipe here), batches of 1, 8 and 32
//! sentences of `tests/fixtures/minilm/bench-sentences.json`.
//!
//!     cargo bench -p kasbah-tests --bench minilm [-- REPS [OUT.json [1,8,32]]]
//!
//! `scripts/bench-minilm.sh` runs this and sentence-transformers (torch CPU)
//! on the same machine and prints the ratios. For each batch size: the
//! median over REPS runs of the whole run (instantiate, read vocab, read +
//! upload 90 MB of weights, tokenize, encode, read back) and of the
//! encode part alone (tokenize + upload ids + GPU forward + read back, as
//! measured in the guest with the host's monotonic clock), as sentences/s.
//!
//! Warm state (issue 15): each batch size runs as a tenant of its own. Its
//! **first run** finds nothing warm (the pooled GPU process held another
//! tenant's state, dropped first): it uploads the weights
//! (`buffer-from-dataset`) and compiles the kernels. The REPS runs after it
//! are **warm**: weights resident, kernels cached. For both, the **fixed
//! cost** = whole run − the encoder's own work (tokenize + upload ids + GPU
//! forward without kernel compiles + read back): weights, kernels,
//! instantiation, vocabulary, everything else.
//!
//! Then one profiled run of the largest batch (each kernel submitted alone
//! and timed) gives the time per kernel kind.

use std::time::{Duration, Instant};

use kasbah_core::Outcome;
use kasbah_runtime::Request;
use serde_json::{Value, json};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    let out_path = args.next().filter(|p| !p.is_empty());
    let sizes: Vec<usize> = args
        .next()
        .map(|s| s.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32]);
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(
        kasbah_tests::workspace_root().join("tests/fixtures/minilm/bench-sentences.json"),
    )?)?;
    let sentences: Vec<String> = serde_json::from_value(fixture["sentences"].clone())?;
    let policy = kasbah_tests::minilm_policy(kasbah_tests::GPU_ZONES[0].1);
    let module = kasbah_tests::load("minilm-embed");
    let options = |tenant: &str| kasbah_runtime::RunOptions {
        datasets: kasbah_tests::minilm_datasets(),
        tenant: Some(tenant.to_string()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let run_as = |tenant: &str, input: Value| -> anyhow::Result<(Value, Duration)> {
        let started = Instant::now();
        let report = rt.block_on(kasbah_tests::runtime().run_with(
            &module,
            &policy,
            Request::new(input.to_string()),
            &options(tenant),
        ))?;
        let wall = started.elapsed();
        match report.outcome {
            Outcome::Ok { output } => Ok((serde_json::from_slice(&output.body)?, wall)),
            other => anyhow::bail!("minilm-embed failed: {other:?}"),
        }
    };

    let run = |input: Value| run_as("bench-profile", input);
    // Warm up: compile the guest, open a device, fill the page cache.
    let (warm, _) = run_as("bench-warmup", json!([sentences[0]]))?;
    let adapter = warm["adapter"].clone();
    let device = kasbah_tests::runtime()
        .gpu()
        .status()
        .into_iter()
        .next()
        .and_then(|s| s.adapter_name)
        .unwrap_or_default();
    println!("minilm-embed on {adapter} ({device}), {reps} runs per batch size");

    // The encoder's own work in a run, in seconds (see the module doc).
    let encoder_work = |out: &Value| {
        let t = &out["timings"];
        let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
        (f("tokenize") + f("upload_inputs") + f("gpu_forward") - f("compile_kernels")
            + f("readback"))
            / 1e3
    };
    let mut rows = Vec::new();
    for &batch in &sizes {
        // Batches larger than the fixture repeat its sentences in order.
        let batch_sentences: Vec<&String> = sentences.iter().cycle().take(batch).collect();
        let input = json!({ "sentences": batch_sentences });
        let tenant = format!("bench-batch-{batch}");
        let (first, first_wall) = run_as(&tenant, input.clone())?;
        let first_s = first_wall.as_secs_f64();
        let first_fixed = first_s - encoder_work(&first);
        let (mut whole, mut encode, mut weights, mut compile, mut fixed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut last = Value::Null;
        for _ in 0..reps {
            let (out, wall) = run_as(&tenant, input.clone())?;
            let t = &out["timings"];
            let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
            whole.push(wall.as_secs_f64());
            encode.push(
                (f("tokenize") + f("upload_inputs") + f("gpu_forward") + f("readback")) / 1e3,
            );
            weights.push((f("load_vocab") + f("load_weights")) / 1e3);
            compile.push(f("compile_kernels") / 1e3);
            fixed.push(wall.as_secs_f64() - encoder_work(&out));
            last = out;
        }
        let (w, e) = (median(whole), median(encode));
        let warm_fixed = median(fixed);
        println!(
            "batch {batch:2}: first run {:8.1} ms (fixed cost {:7.1} ms)   warm run {:8.1} ms (fixed cost {:7.1} ms)",
            first_s * 1e3,
            first_fixed * 1e3,
            w * 1e3,
            warm_fixed * 1e3,
        );
        println!(
            "batch {batch:2}: whole run {:8.1} ms ({:7.2} sentences/s)   encode {:8.1} ms ({:7.2} sentences/s; kernel compile {:6.1} ms of it)   weights load {:7.1} ms   tokens {}",
            w * 1e3,
            batch as f64 / w,
            e * 1e3,
            batch as f64 / e,
            median(compile.clone()) * 1e3,
            median(weights) * 1e3,
            last["tokens"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_u64).sum::<u64>())
                .unwrap_or(0),
        );
        rows.push(json!({
            "batch": batch,
            "run_s": w,
            "encode_s": e,
            "run_sentences_per_s": batch as f64 / w,
            "encode_sentences_per_s": batch as f64 / e,
            "compile_s": median(compile),
            "first_run_s": first_s,
            "first_fixed_s": first_fixed,
            "warm_fixed_s": warm_fixed,
            "first_timings_ms": first["timings"],
            "timings_ms": last["timings"],
        }));
    }

    let largest = sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(32)
        .min(sentences.len());
    let (prof, _) = run(json!({ "sentences": &sentences[..largest], "profile": true }))?;
    println!("where the time goes (batch {largest}, one submission per kernel, ms):");
    let t = &prof["timings"];
    for (k, label) in [
        ("load_vocab", "load_vocab"),
        ("load_weights", "load_weights"),
        ("tokenize", "tokenize"),
        ("upload_inputs", "upload_inputs"),
        ("gpu_forward", "gpu_forward"),
        ("compile_kernels", "  of which compile"),
        ("readback", "readback"),
    ] {
        println!("  {label:18} {:9.2}", t[k].as_f64().unwrap_or(0.0));
    }
    if let Some(ops) = prof["ops"].as_object() {
        for (k, v) in ops {
            println!(
                "    {k:16} {:9.2}  ({} dispatches)",
                v["ms"].as_f64().unwrap_or(0.0),
                v["count"]
            );
        }
    }
    let doc = json!({ "adapter": adapter, "device": device, "reps": reps, "batches": rows, "profile": prof["timings"], "ops": prof["ops"] });
    if let Some(p) = out_path {
        std::fs::write(&p, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
