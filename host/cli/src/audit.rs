//! `kasbah audit …`: the log key, offline receipt verification and the
//! fork/rollback watcher.
//!
//! Exit codes: 0 ok; 1 a receipt was rejected, or the checkpoint lacks the
//! witness cosignatures demanded (`--witness … --threshold k`); 3 the
//! watcher caught the log misbehaving (fork, rollback, bad proof or
//! signature); 2 usage or transport errors.

use anyhow::Context;
use clap::Subcommand;
use kasbah_audit::{
    CosignerVerifier, LogSigner, LogVerifier, Receipt, WatchOutcome, Watcher, require_cosignatures,
    verify_receipt,
};
use kasbah_core::Digest;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::remote::Ctx;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Print the log's verifier key (the string clients pin).
    ///
    /// With --data-dir, read it from the server's own key file (run this on
    /// the server host: it is the trustworthy way to learn the key). Without,
    /// ask the server (`GET /v1/audit/key`): trust on first use.
    Key {
        /// The server's data dir (holds `audit-log.key`).
        #[arg(long, env = "KASBAH_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print the latest signed checkpoint.
    Checkpoint,
    /// List audit entries you may read.
    Entries {
        /// First entry index.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// One past the last index (default: the log's size; a page at most).
        #[arg(long)]
        end: Option<u64>,
    },
    /// Download the receipt of any entry you may read, by index.
    Receipt {
        /// The entry's index in the log.
        index: u64,
        /// Write it here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Verify a receipt offline: signature, inclusion, and what it names.
    Verify {
        /// Receipt JSON file (`-` for stdin), from `kasbah runs receipt` or
        /// `kasbah modules receipt`.
        receipt: PathBuf,
        /// The pinned log key (vkey string, or a file holding it).
        #[arg(long, env = "KASBAH_AUDIT_KEY")]
        key: String,
        /// Require the entry to name this module digest.
        #[arg(long)]
        module: Option<Digest>,
        /// Require the entry to be the record of this run.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        witnesses: WitnessArgs,
    },
    /// Check that the log only grew since the last checkpoint seen.
    ///
    /// Keeps the last verified checkpoint in a state file; fetches the newest
    /// one and a consistency proof from the old size, and refuses (exit 3,
    /// both signed notes printed as evidence) on a fork, rollback, bad proof
    /// or bad signature. The first run trusts the current checkpoint.
    Watch {
        /// The pinned log key (vkey string, or a file holding it).
        #[arg(long, env = "KASBAH_AUDIT_KEY")]
        key: String,
        /// State file (default: ~/.local/state/kasbah/audit-<key id>.checkpoint).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Keep watching, checking every this many seconds.
        #[arg(long)]
        every: Option<u64>,
        #[command(flatten)]
        witnesses: WitnessArgs,
    },
    /// Rebuild a module from source with `kasbah build` and say whether the
    /// bytes match (exit 0 `match`, 1 `mismatch`; both digests named).
    ///
    /// With --provenance, also check that the statement's subject is the
    /// digest and that its materials (source tree, Cargo.lock, rustc, target)
    /// are what this rebuild used.
    Rebuild {
        /// The published module's digest (`sha256:…`).
        digest: Digest,
        /// The guest crate's directory (as given to `kasbah build`).
        #[arg(long)]
        source: PathBuf,
        /// The module's provenance statement (`kasbah build` wrote it next to the module).
        #[arg(long)]
        provenance: Option<PathBuf>,
        /// Keep the rebuilt module here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Witness cosignatures demanded on the checkpoint accepted.
#[derive(clap::Args, Clone, Default)]
pub struct WitnessArgs {
    /// A witness's verifier key (vkey of type 0x04, or a file holding
    /// one); repeat for several.
    #[arg(long = "witness")]
    witness: Vec<String>,
    /// Valid cosignatures required from distinct --witness keys (default:
    /// all of them).
    #[arg(long, requires = "witness")]
    threshold: Option<usize>,
}

impl WitnessArgs {
    /// The keys and threshold, checked.
    fn load(&self) -> anyhow::Result<(Vec<CosignerVerifier>, usize)> {
        let keys = self
            .witness
            .iter()
            .map(|w| load_witness(w))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let threshold = self.threshold.unwrap_or(keys.len());
        if threshold > keys.len() {
            return Err(crate::CliError {
                code: "usage",
                message: format!(
                    "--threshold {threshold} is more than the {} --witness keys given",
                    keys.len()
                ),
            }
            .into());
        }
        Ok((keys, threshold))
    }
}

/// A witness vkey string, or a file holding one.
fn load_witness(arg: &str) -> anyhow::Result<CosignerVerifier> {
    if let Ok(k) = arg.trim().parse::<CosignerVerifier>() {
        return Ok(k);
    }
    let text = std::fs::read_to_string(arg).with_context(|| {
        format!("--witness {arg:?} is neither a witness verifier key nor a readable file")
    })?;
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{arg}: not a witness verifier key: {e}"))
}

/// Check the cosignatures `witnesses` demands on a checkpoint note.
fn cosigned(
    note: &str,
    keys: &[CosignerVerifier],
    threshold: usize,
) -> Result<Vec<String>, String> {
    if threshold == 0 {
        return Ok(Vec::new());
    }
    require_cosignatures(note, keys, threshold).map_err(|e| e.to_string())
}

/// A vkey string, or a file holding one.
pub fn load_key(arg: &str) -> anyhow::Result<LogVerifier> {
    if let Ok(k) = arg.trim().parse::<LogVerifier>() {
        return Ok(k);
    }
    let text = std::fs::read_to_string(arg)
        .with_context(|| format!("--key {arg:?} is neither a verifier key nor a readable file"))?;
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{arg}: not a verifier key: {e}"))
}

fn read_receipt(path: &Path) -> anyhow::Result<Receipt> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a receipt", path.display()))
}

pub async fn audit(ctx: &Ctx, c: AuditCmd) -> anyhow::Result<ExitCode> {
    match c {
        AuditCmd::Key {
            data_dir: Some(dir),
        } => {
            let path = dir.join(kasbah_server::audit::key::KEY_FILE);
            let key = LogSigner::load(&path)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("reading the log key {}", path.display()))?;
            crate::outln!("{}", key.verifier());
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Key { data_dir: None } => {
            let key = ctx.client()?.audit_key().await?;
            eprintln!(
                "note: this key came from the server itself (trust on first use); compare it with \
                 `kasbah audit key --data-dir` on the server host"
            );
            crate::outln!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Checkpoint => {
            crate::out!("{}", ctx.client()?.checkpoint().await?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Entries { start, end } => {
            let (page, entries) = ctx.client()?.audit_log_entries(start, end).await?;
            if ctx.json {
                crate::outln!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(ExitCode::SUCCESS);
            }
            for e in &entries {
                crate::outln!(
                    "{:>8}  {:<16}  {}  {}",
                    e.index,
                    e.entry.body.kind(),
                    e.entry.body.tenant(),
                    describe(&e.entry.body)
                );
            }
            eprintln!(
                "[{}, {}) of {} entries; continue with --start {}",
                page.start, page.end, page.size, page.end
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Receipt { index, output } => {
            let r = ctx.client()?.entry_receipt(index).await?;
            crate::remote::save_receipt(&r, output)
        }
        AuditCmd::Verify {
            receipt,
            key,
            module,
            run,
            witnesses,
        } => verify(ctx, &receipt, &key, module, run.as_deref(), &witnesses),
        AuditCmd::Watch {
            key,
            state,
            every,
            witnesses,
        } => watch(ctx, &key, state, every, &witnesses).await,
        AuditCmd::Rebuild {
            digest,
            source,
            provenance,
            out,
        } => rebuild(ctx, &digest, &source, provenance.as_deref(), out.as_deref()),
    }
}

fn describe(b: &kasbah_audit::EntryBody) -> String {
    use kasbah_audit::EntryBody::*;
    match b {
        TenantCreated(t) => format!("operator {:?}", t.operator),
        PolicySet(p) => format!("policy v{} {}", p.policy_version, p.policy),
        ModulePublished(m) => format!(
            "{}@{} {} ({} bytes){}",
            m.name,
            m.version,
            m.module,
            m.size,
            crate::remote::signed_by(&m.signers)
        ),
        SigningKeyRevoked(k) => format!(
            "signing key {} revoked by {} {}",
            k.key_id, k.by_role, k.by_subject
        ),
        RunExecuted(r) if r.zone.is_empty() => format!(
            "{} {} module {} policy v{}",
            r.run_id, r.outcome, r.module, r.policy_version
        ),
        RunExecuted(r) => format!(
            "{} {} module {} policy v{} zone {}{}{} output label {{{}}}",
            r.run_id,
            r.outcome,
            r.module,
            r.policy_version,
            r.zone,
            r.adapter
                .as_ref()
                .map_or(String::new(), |a| format!(" adapter {a}")),
            r.worker
                .as_ref()
                .map_or(String::new(), |w| format!(" worker {w}")),
            r.output_label.join(", ")
        ),
        Denial(d) => format!("{}: {}", d.action, d.reason),
        DatasetCreated(d) => format!(
            "{} {} ({} bytes) label {{{}}}{}",
            d.name,
            d.dataset,
            d.size,
            d.label.join(", "),
            d.run_id
                .as_ref()
                .map_or(String::new(), |r| format!(" from {r}"))
        ),
        Credential(c) => format!(
            "token {} {} ({} {}) by {} {}",
            c.token_id, c.action, c.role, c.subject, c.by_role, c.by_subject
        ),
        SecretChanged(s) => format!("secret {} version {} {}", s.name, s.version, s.action),
        ProvenancePublished(p) => format!(
            "module {} statement {} source {} Cargo.lock {} toolchain {:?}",
            p.module, p.statement, p.source, p.cargo_lock, p.toolchain
        ),
    }
}

fn verify(
    ctx: &Ctx,
    path: &Path,
    key: &str,
    module: Option<Digest>,
    run: Option<&str>,
    witnesses: &WitnessArgs,
) -> anyhow::Result<ExitCode> {
    let key = load_key(key)?;
    let (wkeys, threshold) = witnesses.load()?;
    let receipt = read_receipt(path)?;
    let rejected = |reason: String| {
        eprintln!("receipt REJECTED: {reason}");
        Ok(ExitCode::from(1))
    };
    let v = match verify_receipt(&receipt, &key, module) {
        Ok(v) => v,
        Err(e) => return rejected(e.to_string()),
    };
    let cosigners = match cosigned(&receipt.checkpoint, &wkeys, threshold) {
        Ok(c) => c,
        Err(e) => return rejected(format!("checkpoint not witnessed enough: {e}")),
    };
    if let Some(want) = run {
        match &v.entry.body {
            kasbah_audit::EntryBody::RunExecuted(r) if r.run_id == want => {}
            kasbah_audit::EntryBody::RunExecuted(r) => {
                return rejected(format!(
                    "entry is the record of run {}, not {want}",
                    r.run_id
                ));
            }
            other => {
                return rejected(format!(
                    "entry is a {} record, not the record of run {want}",
                    other.kind()
                ));
            }
        }
    }
    if ctx.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": true,
                "index": v.index,
                "entry": v.entry,
                "checkpoint": {
                    "origin": v.checkpoint.checkpoint.origin,
                    "size": v.checkpoint.checkpoint.size,
                    "root": v.checkpoint.checkpoint.root,
                },
                "cosigned_by": cosigners,
            }))?
        );
    } else {
        crate::outln!("receipt OK");
        crate::outln!(
            "  entry       #{} {} (tenant {})",
            v.index,
            v.entry.body.kind(),
            v.entry.body.tenant()
        );
        crate::outln!("  record      {}", describe(&v.entry.body));
        crate::outln!(
            "  checkpoint  {} @ {} signed by {}",
            v.checkpoint.checkpoint.origin,
            v.checkpoint.checkpoint.size,
            key
        );
        if !cosigners.is_empty() {
            crate::outln!("  cosigned by  {}", cosigners.join(", "));
        }
        crate::outln!("  keep the checkpoint: `kasbah audit watch` proves later ones extend it");
    }
    Ok(ExitCode::SUCCESS)
}

fn default_state(key: &LogVerifier) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("no --state given and HOME is not set")?;
    Ok(PathBuf::from(home)
        .join(".local/state/kasbah")
        .join(format!("audit-{:08x}.checkpoint", key.key_id())))
}

/// Write `text` to `path` atomically (temp file + rename).
fn save_state(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn watch(
    ctx: &Ctx,
    key: &str,
    state: Option<PathBuf>,
    every: Option<u64>,
    witnesses: &WitnessArgs,
) -> anyhow::Result<ExitCode> {
    let key = load_key(key)?;
    let witnesses = witnesses.load()?;
    let state = match state {
        Some(s) => s,
        None => default_state(&key)?,
    };
    let client = ctx.client()?;
    loop {
        let code = watch_once(&client, &key, &state, &witnesses).await?;
        match every {
            Some(secs) if code == ExitCode::SUCCESS => {
                tokio::time::sleep(Duration::from_secs(secs.max(1))).await
            }
            _ => return Ok(code),
        }
    }
}

async fn watch_once(
    client: &kasbah_client::Client,
    key: &LogVerifier,
    state: &Path,
    (wkeys, threshold): &(Vec<CosignerVerifier>, usize),
) -> anyhow::Result<ExitCode> {
    let alarm = |what: String, evidence: &[&str]| {
        eprintln!("ALERT: {what}");
        for note in evidence {
            eprintln!("--- signed checkpoint ---\n{note}");
        }
        ExitCode::from(3)
    };
    // Only a checkpoint with the cosignatures demanded is considered.
    let note = client.checkpoint().await?;
    if let Err(e) = cosigned(&note, wkeys, *threshold) {
        eprintln!("checkpoint not accepted: {e}");
        return Ok(ExitCode::from(1));
    }
    let trusted = match std::fs::read_to_string(state) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let c = match kasbah_audit::open_checkpoint(key, &note) {
                Ok(c) => c,
                Err(e) => return Ok(alarm(format!("checkpoint rejected: {e}"), &[&note])),
            };
            save_state(state, &note)?;
            crate::outln!(
                "trusting {} (first use); saved to {}",
                c.checkpoint,
                state.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
    };
    let mut watcher = Watcher::new(key.clone(), &trusted)
        .map_err(|e| anyhow::anyhow!("the saved checkpoint in {}: {e}", state.display()))?;
    match client.watch_note(&mut watcher, &note).await {
        Ok(WatchOutcome::Unchanged) => {
            crate::outln!("unchanged: {}", watcher.trusted().checkpoint);
            Ok(ExitCode::SUCCESS)
        }
        Ok(WatchOutcome::Advanced { from, to }) => {
            save_state(state, &watcher.trusted().note)?;
            crate::outln!(
                "grew from {from} to {to} entries (consistency proven): {}",
                watcher.trusted().checkpoint
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(kasbah_client::Error::Watch(e)) => {
            use kasbah_audit::WatchError::*;
            let evidence: Vec<&str> = match &e {
                Rollback {
                    trusted_note,
                    offered_note,
                    ..
                }
                | Fork {
                    trusted_note,
                    offered_note,
                    ..
                }
                | Inconsistent {
                    trusted_note,
                    offered_note,
                    ..
                } => vec![trusted_note, offered_note],
                Checkpoint(_) => vec![&trusted],
            };
            Ok(alarm(e.to_string(), &evidence))
        }
        Err(e) => Err(e.into()),
    }
}

/// `kasbah audit rebuild`: 0 match, 1 mismatch (module or a material).
fn rebuild(
    ctx: &Ctx,
    digest: &Digest,
    source: &Path,
    provenance: Option<&Path>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let statement: Option<serde_json::Value> = match provenance {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", p.display()))?,
            )
        }
        None => None,
    };
    let built = crate::repro::build(source)?;
    if let Some(o) = out {
        std::fs::write(o, &built.module).with_context(|| format!("writing {}", o.display()))?;
    }
    let mut checks = vec![(
        "module".to_string(),
        digest.to_string(),
        built.digest.clone(),
    )];
    if let Some(st) = &statement {
        let want = |v: Option<&str>| v.map_or("(absent)".to_string(), |h| format!("sha256:{h}"));
        checks.push((
            "provenance subject".into(),
            digest.to_string(),
            want(crate::repro::subject(st)),
        ));
        for m in ["source", "Cargo.lock", "rustc"] {
            checks.push((
                format!("material {m}"),
                want(crate::repro::material(st, m)),
                want(crate::repro::material(&built.statement, m)),
            ));
        }
        let target = |s: &serde_json::Value| {
            s["predicate"]["buildDefinition"]["externalParameters"]["target"]
                .as_str()
                .unwrap_or("(absent)")
                .to_string()
        };
        checks.push(("target".into(), target(st), target(&built.statement)));
    }
    let ok = checks.iter().all(|(_, a, b)| a == b);
    if ctx.json {
        let list: Vec<serde_json::Value> = checks
            .iter()
            .map(|(what, expected, rebuilt)| {
                serde_json::json!({ "check": what, "expected": expected, "rebuilt": rebuilt, "match": expected == rebuilt })
            })
            .collect();
        crate::outln!(
            "{}",
            serde_json::json!({ "match": ok, "expected": digest.to_string(), "rebuilt": built.digest, "checks": list })
        );
    } else {
        crate::outln!(
            "{}: expected {digest}, rebuilt {}",
            if ok { "match" } else { "mismatch" },
            built.digest
        );
        for (what, expected, rebuilt) in &checks[1..] {
            if expected == rebuilt {
                crate::outln!("  {what}: match {expected}");
            } else {
                crate::outln!("  {what}: MISMATCH expected {expected}, rebuilt {rebuilt}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
