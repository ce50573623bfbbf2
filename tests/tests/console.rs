//! The web console (issue 17) in headless Chromium, driven through
//! chromedriver's WebDriver API: each role signs in (by pasting a token)
//! and walks its main flow; an auditor verifies a real receipt in the
//! browser (VERIFIED) and a tampered one (FAILED); a developer cannot
//! reach another tenant's runs through the UI; the runs page with 10,000
//! runs in the database (its data fetch time is printed, not asserted);
//! the phone width. Screenshots: `target/console-screenshots/`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kasbah_core::api::*;
use kasbah_tests::guest_path;
use kasbah_tests::platform::Platform;
use kasbah_tests::webdriver::Browser;

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

fn run_req(module: &str, input: &str) -> CreateRun {
    CreateRun {
        module: module.into(),
        input: Some(input.into()),
        metadata: BTreeMap::new(),
        wait: true,
        ..CreateRun::default()
    }
}

/// Sign in by keyboard only: focus the token box, type, Tab to the button,
/// Enter. Waits for the role's first page.
async fn sign_in(b: &Browser, url: &str, token: &str, first_page: &str) -> anyhow::Result<()> {
    b.goto(&format!("{url}/")).await?;
    let ta = b.wait("#token").await?;
    b.keys(&ta, token).await?;
    b.keys(&ta, TAB).await?;
    let focused = b.active().await?;
    assert_eq!(
        b.attr(&focused, "id").await?.as_deref(),
        Some("login-submit"),
        "Tab moves from the token box to the sign-in button"
    );
    b.keys(&focused, ENTER).await?;
    b.wait(&format!("#view[data-ready='{first_page}']")).await?;
    Ok(())
}

async fn sign_out(b: &Browser) -> anyhow::Result<()> {
    let out = b.wait("#logout").await?;
    b.click(&out).await?;
    b.wait("#token").await?;
    Ok(())
}

/// Go to a hash route and wait for its view; returns the data fetch time
/// the page measured (ms) and the wall time to ready.
async fn open(b: &Browser, url: &str, route: &str, ready: &str) -> anyhow::Result<(f64, Duration)> {
    // A fresh query string: a full page load every time (the token stays in
    // the tab's sessionStorage), never a stale view of the same URL.
    static LOADS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    b.goto(&format!("{url}/?load={n}#/{route}")).await?;
    let v = b.wait(&format!("#view[data-ready='{ready}']")).await?;
    let wall = t0.elapsed();
    let ms = b
        .attr(&v, "data-fetch-ms")
        .await?
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    Ok((ms, wall))
}

/// Copy one real run row `n` times for `tenant` straight into the store
/// (the server keeps running; SQLite serialises the writers). Ids sort
/// after the real ones, times just before them.
fn seed_runs(dir: &std::path::Path, template: &str, n: u32) -> anyhow::Result<()> {
    let c = rusqlite::Connection::open(dir.join("kasbah.db"))?;
    c.busy_timeout(Duration::from_secs(30))?;
    let cols: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('runs')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let select: Vec<String> = cols
        .iter()
        .map(|c| match c.as_str() {
            "id" => "'run_seed_' || printf('%06d', n.i)".to_string(),
            "created_at" => "runs.created_at - n.i".to_string(),
            other => format!("runs.{other}"),
        })
        .collect();
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
         INSERT INTO runs ({}) SELECT {} FROM runs, n WHERE runs.id = ?1",
        cols.join(", "),
        select.join(", ")
    );
    let added = c.execute(&sql, rusqlite::params![template, n])?;
    anyhow::ensure!(added == n as usize, "seeded {added} runs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_roles_receipts_isolation_and_ten_thousand_runs() -> anyhow::Result<()> {
    let p = Platform::start().await;
    let url = p.url.clone();

    // Two tenants, each with a module and a run; tenant A's policy changed
    // once (two versions to diff).
    let (ta, dev_a) = p.tenant("console-a", None).await;
    let (tb, dev_b) = p.tenant("console-b", None).await;
    let hello = guest_path("hello");
    let ma = dev_a.publish(&hello, "hello", "1.0.0", |_, _| {}).await?;
    let mb = dev_b.publish(&hello, "hello-b", "2.0.0", |_, _| {}).await?;
    let run_a = dev_a
        .run(&run_req(&ma.digest.to_string(), "from a"))
        .await?;
    let run_b = dev_b
        .run(&run_req(&mb.digest.to_string(), "secret of b"))
        .await?;
    let mut pol = p.admin.policy(&ta.id).await?.policy;
    pol.limits.memory_bytes /= 2;
    pol.datasets = true;
    p.admin.set_policy(&ta.id, &pol).await?;
    let ds = dev_a
        .create_dataset_bytes(b"weights".to_vec(), "weights", Some(&["local".to_string()]))
        .await?;
    let tok_a = p.admin.tenant_token(&ta.id).await?.token;
    let auditor = p
        .admin
        .create_auditor(&CreateAuditor {
            name: "console-auditor".into(),
            tenants: vec![ta.id.clone()],
            ttl_seconds: None,
        })
        .await?;
    let op = p
        .admin
        .create_operator(&CreateOperator {
            name: "console-op".into(),
            ceiling: None,
            max_tenants: 5,
            zones: Vec::new(),
        })
        .await?;
    let op_tok = p.admin.operator_token(&op.id).await?.token;
    let admin_tok = p.server.admin_token.clone().expect("admin token");

    seed_runs(p.dir.path(), &run_a.id, 10_000)?;

    let b = Browser::start(1280, 800).await?;

    // The page and its policy.
    let page = reqwest::get(format!("{url}/")).await?;
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self' 'wasm-unsafe-eval'"),
        "{csp}"
    );
    assert!(page.text().await?.contains("/console/app.js"));

    // A bad token is refused on the login page.
    b.goto(&format!("{url}/")).await?;
    let ta_el = b.wait("#token").await?;
    b.keys(&ta_el, "kb_not_a_token").await?;
    b.click(&b.wait("#login-submit").await?).await?;
    b.wait("#login .error").await?;

    // Admin: operators, tenants, the policy diff, usage, tokens.
    sign_in(&b, &url, &admin_tok, "operators").await?;
    assert!(b.text_of("#view").await?.contains("console-op"));
    b.screenshot("admin-operators").await?;
    open(&b, &url, "tenants", "tenants").await?;
    let link = b.wait(&format!("a[href='#/tenant/{}']", ta.id)).await?;
    b.click(&link).await?;
    b.wait("#view[data-ready='tenant'] #diff-summary").await?;
    let summary = b.text_of("#diff-summary").await?;
    assert!(
        summary.starts_with("2 field(s) differ between version 1 and version 2"),
        "{summary}"
    );
    assert!(b.text_of("#diff").await?.contains("limits.memory_bytes"));
    b.screenshot("admin-policy-diff").await?;
    open(&b, &url, "usage", "usage").await?;
    assert!(b.text_of("#view").await?.contains(&tb.id));
    b.screenshot("admin-usage").await?;
    open(&b, &url, "tokens", "tokens").await?;
    b.screenshot("admin-tokens").await?;
    // Revoke the operator's token through the UI; the API then refuses it.
    let op_token_id = p
        .admin
        .tokens()
        .await?
        .into_iter()
        .find(|t| t.subject == op.id && !t.revoked)
        .expect("operator token listed")
        .id;
    let op2 = p.admin.operator_token(&op.id).await?.token;
    b.click(
        &b.wait(&format!("button[data-token='{op_token_id}']"))
            .await?,
    )
    .await?;
    b.accept_alert().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.client(&op_tok).whoami().await.is_ok() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "revoke from the UI did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sign_out(&b).await?;

    // Operator: its tenants (none yet) and usage; not the admin's operators list.
    sign_in(&b, &url, &op2, "operators").await?;
    let text = b.text_of("#view").await?;
    assert!(
        text.contains("console-op") && !text.contains("console-a"),
        "{text}"
    );
    open(&b, &url, "tenants", "tenants").await?;
    assert!(!b.text_of("#view").await?.contains(&ta.id));
    b.screenshot("operator-tenants").await?;
    sign_out(&b).await?;

    // Developer A: modules, runs (10,001 of them, paged), its run, datasets;
    // tenant B's run is nowhere, and its id is a 404 in the UI.
    sign_in(&b, &url, &tok_a, "modules").await?;
    let text = b.text_of("#view").await?;
    assert!(
        text.contains(&ma.digest.to_string()) && !text.contains("hello-b"),
        "{text}"
    );
    let mut fetches = Vec::new();
    for _ in 0..3 {
        let (ms, wall) = open(&b, &url, "runs", "runs").await?;
        fetches.push((ms, wall));
    }
    println!(
        "runs page with 10,001 runs (50 per page): data fetch ms per load {:?}; wall to ready {:?}",
        fetches.iter().map(|f| f.0).collect::<Vec<_>>(),
        fetches.iter().map(|f| f.1).collect::<Vec<_>>()
    );
    assert_eq!(
        b.text_of("#runs-count").await?,
        "50 run(s) on this page, newest first."
    );
    let page1 = b.text_of("#view").await?;
    assert!(page1.contains(&run_a.id), "the real run is the newest");
    b.screenshot("developer-runs").await?;
    b.click(&b.wait("#view a[href^='#/runs/before/']").await?)
        .await?;
    b.wait("#view[data-ready='runs'] a[href='#/runs']").await?;
    let page2 = b.text_of("#view").await?;
    assert!(
        page2.contains("run_seed_000050") && !page2.contains(&run_a.id),
        "page 2 continues"
    );
    for text in [&page1, &page2] {
        assert!(
            !text.contains(&run_b.id) && !text.contains(&tb.id),
            "tenant B leaks"
        );
    }
    open(&b, &url, &format!("run/{}", run_b.id), "run").await?;
    let text = b.text_of("#view").await?;
    assert!(
        text.contains("not_found") && !text.contains("secret of b"),
        "{text}"
    );
    open(&b, &url, &format!("run/{}", run_a.id), "run").await?;
    let text = b.text_of("#view").await?;
    assert!(
        text.contains("Outcome") && text.contains(&ma.digest.to_string()),
        "{text}"
    );
    b.screenshot("developer-run").await?;
    b.click(&b.wait("#download").await?).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b
        .text_of("#download-status")
        .await?
        .starts_with("downloaded ")
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the output download did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saved = b.shots.join("downloads").join(format!("{}.out", run_a.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(&saved).ok() != Some(dev_a.run_output(&run_a.id).await?) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} is not the run's output",
            saved.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open(&b, &url, "datasets", "datasets").await?;
    let text = b.text_of("#view").await?;
    assert!(
        text.contains(&ds.id) && text.contains("weights") && text.contains("local"),
        "{text}"
    );
    b.screenshot("developer-datasets").await?;
    b.set_size(390, 844).await?;
    open(&b, &url, "runs", "runs").await?;
    b.screenshot("developer-runs-phone").await?;
    b.set_size(1280, 800).await?;
    sign_out(&b).await?;

    // Developer B (one run): sees its own run only; and the same page's
    // fetch time with one run, as the baseline for the 10,001 above.
    let tok_b = p.admin.tenant_token(&tb.id).await?.token;
    sign_in(&b, &url, &tok_b, "modules").await?;
    let mut base = Vec::new();
    for _ in 0..3 {
        base.push(open(&b, &url, "runs", "runs").await?.0);
    }
    let text = b.text_of("#view").await?;
    assert!(
        text.contains(&run_b.id) && !text.contains(&run_a.id) && !text.contains("run_seed_"),
        "{text}"
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (big, small) = (
        median(fetches.iter().map(|f| f.0).collect()),
        median(base.clone()),
    );
    println!(
        "runs page data fetch, median of 3: {big:.1} ms with 10,001 runs vs {small:.1} ms with 1 run \
         (ratio {:.2}; 1-run loads {base:?})",
        big / small
    );
    sign_out(&b).await?;

    // Auditor: pin the key (obtained out of band: here, from the API), verify
    // a real receipt (VERIFIED), a tampered one (FAILED), the checkpoint, a
    // publish entry.
    let key = p.admin.audit_key().await?.to_string();
    sign_in(&b, &url, &auditor.token, "key").await?;
    let k = b.wait("#log-key").await?;
    b.clear(&k).await?;
    b.keys(&k, &key).await?;
    b.click(&b.wait("#pin-key").await?).await?;
    assert!(b.text_of("#key-status").await?.contains(&key));
    open(&b, &url, "receipts", "receipts").await?;
    b.keys(&b.wait("#receipt-run").await?, &run_a.id).await?;
    b.click(&b.wait("#verify-run").await?).await?;
    let v = b.wait("#receipt-verdict [data-verdict]").await?;
    let text = b.text(&v).await?;
    assert_eq!(
        b.attr(&v, "data-verdict").await?.as_deref(),
        Some("ok"),
        "{text}"
    );
    assert!(
        text.contains("VERIFIED") && text.contains("run_executed"),
        "{text}"
    );
    b.screenshot("auditor-receipt-verified").await?;

    let mut receipt = serde_json::to_value(dev_a.run_receipt(&run_a.id).await?)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entry = b64.decode(receipt["entry"].as_str().unwrap_or_default())?;
    let last = entry.len() - 1;
    entry[last] ^= 1;
    receipt["entry"] = b64.encode(&entry).into();
    let ta_el = b.wait("#receipt-text").await?;
    b.clear(&ta_el).await?;
    b.keys(&ta_el, &receipt.to_string()).await?;
    b.click(&b.wait("#verify-pasted").await?).await?;
    let v = b.wait("#receipt-verdict [data-verdict='failed']").await?;
    let text = b.text(&v).await?;
    assert!(
        text.contains("FAILED") && text.contains("not included"),
        "{text}"
    );
    b.screenshot("auditor-receipt-tampered").await?;

    open(&b, &url, "log", "log").await?;
    let v = b.wait("#checkpoint-verdict [data-verdict]").await?;
    assert_eq!(
        b.attr(&v, "data-verdict").await?.as_deref(),
        Some("ok"),
        "{}",
        b.text(&v).await?
    );
    b.screenshot("auditor-log").await?;
    // A checkpoint inconsistent with the pinned one: pin a forked tree of
    // the same size (signed with the real log key, as a lying log would),
    // then the log's true checkpoint must fail loudly as a fork.
    let signer = kasbah_audit::LogSigner::load(&p.dir.path().join("audit-log.key"))?;
    let real = kasbah_audit::open_checkpoint(&signer.verifier(), &p.admin.checkpoint().await?)?;
    let forked = kasbah_audit::Checkpoint::new(
        signer.name(),
        real.checkpoint.size,
        kasbah_audit::Hash::leaf(b"another history"),
    )
    .sign(&signer)?;
    b.execute(
        "localStorage.setItem('kasbah.pinnedCheckpoint', arguments[0])",
        serde_json::json!([forked.note]),
    )
    .await?;
    open(&b, &url, "log", "log").await?;
    let v = b.wait("#checkpoint-verdict [data-verdict]").await?;
    let text = b.text(&v).await?;
    assert_eq!(
        b.attr(&v, "data-verdict").await?.as_deref(),
        Some("failed"),
        "{text}"
    );
    assert!(text.contains("FAILED") && text.contains("FORK"), "{text}");
    b.screenshot("auditor-log-fork").await?;
    b.click(&b.wait("#nav a[href='#/key']").await?).await?;
    b.click(&b.wait("#forget-checkpoint").await?).await?;
    open(&b, &url, "modules", "modules").await?;
    b.click(
        &b.wait(&format!("button[data-module='{}']", ma.digest))
            .await?,
    )
    .await?;
    let v = b.wait(".receipt-verdict [data-verdict]").await?;
    let text = b.text(&v).await?;
    assert!(
        text.contains("VERIFIED") && text.contains("module_published"),
        "{text}"
    );
    assert!(
        !b.text_of("#view").await?.contains("hello-b"),
        "the auditor is granted tenant A only"
    );
    b.screenshot("auditor-modules").await?;

    // Every control reached above is a real link or button.
    for el in b.find_all("nav a, #view button").await? {
        let tag = b.tag(&el).await?;
        assert!(tag == "a" || tag == "button", "{tag}");
    }
    println!("screenshots in {}", b.shots.display());
    b.quit().await;
    Ok(())
}

/// `GET /v1/runs?before=<id>`: the pages the console walks, without a
/// browser. A cursor naming another tenant's run (or none) is a 404, so
/// the cursor cannot probe other tenants' timestamps.
#[tokio::test]
async fn runs_cursor_pages_and_refuses_foreign_cursors() -> anyhow::Result<()> {
    let p = Platform::start().await;
    let (_, dev_a) = p.tenant("cursor-a", None).await;
    let (tb, dev_b) = p.tenant("cursor-b", None).await;
    let hello = guest_path("hello");
    let ma = dev_a.publish(&hello, "hello", "1.0.0", |_, _| {}).await?;
    let mb = dev_b.publish(&hello, "hello", "1.0.0", |_, _| {}).await?;
    let run_a = dev_a.run(&run_req(&ma.digest.to_string(), "a")).await?;
    let run_b = dev_b.run(&run_req(&mb.digest.to_string(), "b")).await?;
    seed_runs(p.dir.path(), &run_a.id, 120)?;
    let tok_a = p
        .admin
        .tenant_token(&dev_a.whoami().await?.subject)
        .await?
        .token;
    let http = reqwest::Client::new();
    let get = |q: String| {
        http.get(format!("{}/v1/runs{q}", p.url))
            .bearer_auth(&tok_a)
            .send()
    };
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let q = match &before {
            Some(id) => format!("?limit=50&before={id}"),
            None => "?limit=50".into(),
        };
        let page: Vec<RunRecord> = get(q).await?.json().await?;
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.id.clone());
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen.len(), 121, "every run once");
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 121, "no run twice");
    assert_eq!(seen[0], run_a.id);
    for q in [format!("?before={}", run_b.id), "?before=run_nope".into()] {
        let r = get(q).await?;
        assert_eq!(r.status(), 404);
        let body: serde_json::Value = r.json().await?;
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    assert!(!seen.iter().any(|id| id == &run_b.id) && tb.id != run_a.tenant_id);
    Ok(())
}
