//! Client subcommands: talk to a kasbah server. Human tables by default,
//! JSON with `--json`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kasbah_client::Client;
use kasbah_core::api::*;
use kasbah_policy::{Ceiling, Policy};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::local::RunArgs;

pub struct Ctx {
    pub url: String,
    pub token: Option<String>,
    pub json: bool,
}

impl Ctx {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let token = self
            .token
            .as_deref()
            .context("no token: set KASBAH_TOKEN or pass --token")?;
        Ok(Client::new(&self.url, token))
    }

    pub(crate) fn print<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&T),
    ) -> anyhow::Result<ExitCode> {
        if self.json {
            crate::outln!("{}", serde_json::to_string_pretty(value)?);
        } else {
            human(value);
        }
        Ok(ExitCode::SUCCESS)
    }
}

pub fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?
        .block_on(f)
}

pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        crate::outln!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let me = ctx.client()?.whoami().await?;
    ctx.print(&me, |m| crate::outln!("{} {}", m.role.as_str(), m.subject))
}

#[derive(Subcommand)]
pub enum OperatorCmd {
    /// Create an operator with a ceiling on what it may grant its tenants.
    Create {
        /// The operator's name (unique).
        name: String,
        /// TOML/JSON ceiling file: `[limits]`, `datasets`, `[env]` (vars,
        /// inherit), `[network]` (allow rules), `[gpu]`; what it leaves out
        /// the operator cannot grant. Default: the standard ceiling (no host
        /// variables, no private/loopback/link-local addresses, no DNS names).
        #[arg(long)]
        ceiling: Option<PathBuf>,
        /// Most tenants it may create.
        #[arg(long, default_value_t = 100)]
        max_tenants: u32,
        /// Residency zones its tenants are limited to (comma-separated;
        /// default: no restriction).
        #[arg(long, value_delimiter = ',')]
        zones: Vec<String>,
    },
    /// List operators (an operator sees itself).
    List,
    /// Replace an operator's ceiling (its tenants' next policy changes are
    /// checked against it).
    Ceiling {
        /// The operator's id.
        operator: String,
        /// TOML/JSON ceiling file (as for `create --ceiling`).
        file: PathBuf,
    },
    /// Issue a token for an operator.
    Token {
        /// The operator's id.
        operator: String,
        /// A label for the token (who or what holds it).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `3600`, `90s`, `12h`, `30d` (default: the server's).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
}

/// A token lifetime: seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a lifetime (e.g. 3600, 90s, 12h, 30d)"))?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        u => return Err(format!("unknown unit {u:?} (use s, m, h or d)")),
    };
    let secs = n.checked_mul(mult).ok_or("lifetime too long")?;
    if secs == 0 {
        return Err("a lifetime must be at least one second".into());
    }
    Ok(secs)
}

fn show_token(t: &TokenCreated) {
    crate::outln!("{}", t.token);
    eprintln!(
        "token {} ({} {}){}",
        t.id,
        t.role.as_str(),
        t.subject,
        t.expires_at
            .map_or(String::new(), |e| format!(", expires {}", time(e)))
    );
}

/// A timestamp (ms since the Unix epoch) as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub async fn operator(ctx: &Ctx, c: OperatorCmd) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match c {
        OperatorCmd::Create {
            name,
            ceiling,
            max_tenants,
            zones,
        } => {
            let ceiling = ceiling.map(|p| load_ceiling(&p)).transpose()?;
            let op = client
                .create_operator(&CreateOperator {
                    name,
                    ceiling,
                    max_tenants,
                    zones,
                })
                .await?;
            ctx.print(&op, |o| {
                crate::outln!("created operator {} ({})", o.id, o.name)
            })
        }
        OperatorCmd::List => {
            let ops = client.operators().await?;
            ctx.print(&ops, |ops| {
                table(
                    &["ID", "NAME", "MAX TENANTS", "MEMORY CEILING", "ZONES"],
                    ops.iter()
                        .map(|o| {
                            vec![
                                o.id.clone(),
                                o.name.clone(),
                                o.max_tenants.to_string(),
                                o.ceiling.limits.memory_bytes.to_string(),
                                if o.zones.is_empty() {
                                    "any".to_string()
                                } else {
                                    o.zones.join(",")
                                },
                            ]
                        })
                        .collect(),
                )
            })
        }
        OperatorCmd::Ceiling { operator, file } => {
            let op = client
                .set_operator_ceiling(&operator, &load_ceiling(&file)?)
                .await?;
            ctx.print(&op, |o| {
                crate::outln!("ceiling of operator {} replaced", o.id)
            })
        }
        OperatorCmd::Token {
            operator,
            name,
            ttl,
        } => {
            let t = client
                .operator_token_with(
                    &operator,
                    &CreateToken {
                        name,
                        ttl_seconds: ttl,
                    },
                )
                .await?;
            ctx.print(&t, show_token)
        }
    }
}

fn load_ceiling(p: &std::path::Path) -> anyhow::Result<Ceiling> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
    Ok(if p.extension().is_some_and(|e| e == "json") {
        serde_json::from_str::<Ceiling>(&text)?
    } else {
        toml::from_str::<Ceiling>(&text)?
    })
}

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        /// The tenant's name.
        name: String,
        /// Place under this operator (admins only).
        #[arg(long)]
        operator: Option<String>,
        /// Initial policy file (TOML or JSON).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// List the tenants the caller sees.
    List,
    /// Issue a developer token for a tenant.
    Token {
        /// The tenant's id.
        tenant: String,
        /// A label for the token (who or what holds it).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `3600`, `90s`, `12h`, `30d` (default: the server's).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
}

pub async fn tenant(ctx: &Ctx, c: TenantCmd) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match c {
        TenantCmd::Create {
            name,
            operator,
            policy,
        } => {
            let policy = policy.map(|p| Policy::load(&p)).transpose()?;
            let t = client
                .create_tenant(&CreateTenant {
                    name,
                    operator_id: operator,
                    policy,
                })
                .await?;
            ctx.print(&t, |t| {
                crate::outln!("created tenant {} ({})", t.id, t.name)
            })
        }
        TenantCmd::List => {
            let ts = client.tenants().await?;
            ctx.print(&ts, |ts| {
                table(
                    &["ID", "NAME", "OPERATOR", "POLICY"],
                    ts.iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.name.clone(),
                                t.operator_id.clone().unwrap_or_else(|| "-".into()),
                                format!("v{}", t.policy_version),
                            ]
                        })
                        .collect(),
                )
            })
        }
        TenantCmd::Token { tenant, name, ttl } => {
            let t = client
                .tenant_token_with(
                    &tenant,
                    &CreateToken {
                        name,
                        ttl_seconds: ttl,
                    },
                )
                .await?;
            ctx.print(&t, show_token)
        }
    }
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Set a tenant's policy from a TOML or JSON file (creates a new version).
    Set {
        /// The tenant's id.
        tenant: String,
        /// The policy file.
        file: PathBuf,
    },
    /// Show a tenant's current policy.
    Show {
        /// The tenant's id.
        tenant: String,
    },
    /// List a tenant's policy versions and who set each.
    Versions {
        /// The tenant's id.
        tenant: String,
    },
}

fn set_by(r: &kasbah_core::api::PolicyRecord) -> &str {
    r.set_by.as_deref().unwrap_or("unknown")
}

pub async fn policy(ctx: &Ctx, c: PolicyCmd) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let record = match c {
        PolicyCmd::Set { tenant, file } => {
            client.set_policy(&tenant, &Policy::load(&file)?).await?
        }
        PolicyCmd::Show { tenant } => client.policy(&tenant).await?,
        PolicyCmd::Versions { tenant } => {
            let versions = client.policy_versions(&tenant).await?;
            return ctx.print(&versions, |vs| {
                table(
                    &["VERSION", "SET BY", "DIGEST", "CREATED"],
                    vs.iter()
                        .map(|r| {
                            vec![
                                format!("v{}", r.version),
                                set_by(r).to_string(),
                                r.digest.to_string(),
                                r.created_at.to_string(),
                            ]
                        })
                        .collect(),
                )
            });
        }
    };
    ctx.print(&record, |r| {
        if r.unchanged {
            crate::outln!("unchanged: identical to the current version (no new version)");
        }
        crate::outln!(
            "tenant {} policy v{} {} (set by {})",
            r.tenant_id,
            r.version,
            r.digest,
            set_by(r)
        );
        if let Ok(t) = toml::to_string(&r.policy) {
            crate::out!("{t}");
        }
    })
}

#[derive(Subcommand)]
pub enum AuditorCmd {
    /// Create an auditor for some tenants; prints its token.
    Create {
        /// The auditor's name.
        name: String,
        /// A tenant it may read (repeatable; operators: their own tenants).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        /// Lifetime of its token, e.g. `3600`, `12h`, `30d` (default: the server's).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
}

pub async fn auditor(ctx: &Ctx, c: AuditorCmd) -> anyhow::Result<ExitCode> {
    let AuditorCmd::Create { name, tenants, ttl } = c;
    let t = ctx
        .client()?
        .create_auditor(&CreateAuditor {
            name,
            tenants,
            ttl_seconds: ttl,
        })
        .await?;
    ctx.print(&t, show_token)
}

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Metadata of the tokens you manage (never their secrets).
    List,
    /// Revoke a token: refused from the next request on.
    Revoke {
        /// The token's id (`tk_…`, from `kasbah tokens list`).
        id: String,
    },
}

pub async fn tokens(ctx: &Ctx, c: TokensCmd) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match c {
        TokensCmd::List => {
            let ts = client.tokens().await?;
            ctx.print(&ts, |ts| {
                let opt = |t: Option<i64>| t.map_or_else(|| "-".to_string(), time);
                table(
                    &[
                        "ID",
                        "ROLE",
                        "OWNER",
                        "NAME",
                        "CREATED",
                        "EXPIRES",
                        "LAST USED",
                        "REVOKED",
                    ],
                    ts.iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.role.as_str().to_string(),
                                t.subject.clone(),
                                t.name.clone().unwrap_or_else(|| "-".into()),
                                time(t.created_at),
                                t.expires_at.map_or_else(|| "never".to_string(), time),
                                opt(t.last_used_at),
                                opt(t.revoked_at),
                            ]
                        })
                        .collect(),
                )
            })
        }
        TokensCmd::Revoke { id } => {
            let t = client.revoke_token(&id).await?;
            ctx.print(&t, |t| {
                crate::outln!("revoked token {} ({} {})", t.id, t.role.as_str(), t.subject)
            })
        }
    }
}

#[derive(Args)]
pub struct PublishArgs {
    /// The component file.
    file: PathBuf,
    /// Module name (default: the file name, `_` as `-`).
    #[arg(long)]
    name: Option<String>,
    /// Version to publish it as.
    #[arg(long, default_value = "0.1.0")]
    version: String,
    /// A signature envelope (`kasbah sign`) to send with it; repeatable.
    #[arg(long = "signature", value_name = "FILE")]
    signatures: Vec<PathBuf>,
    /// Also publish its provenance statement (`kasbah build` writes it next
    /// to the module as <FILE>.provenance.json); it goes in the log next to the module.
    #[arg(long)]
    provenance: Option<PathBuf>,
}

pub async fn publish(ctx: &Ctx, a: PublishArgs) -> anyhow::Result<ExitCode> {
    let name = match a.name {
        Some(n) => n,
        None => a
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('_', "-"))
            .context("give --name")?,
    };
    let bar = if ctx.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bytes}/{total_bytes} {wide_bar} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        )
    };
    let mut envelopes = Vec::new();
    for f in &a.signatures {
        envelopes.push(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?);
    }
    let b = bar.clone();
    let m = ctx
        .client()?
        .publish_signed(
            &a.file,
            &name,
            &a.version,
            &envelopes,
            move |sent, total| {
                b.set_length(total);
                b.set_position(sent);
            },
        )
        .await;
    bar.finish_and_clear();
    let (m, created) = m?;
    if let Some(file) = &a.provenance
        && publish_result(&m, created, &name, &a.version) != Published::SameBytesAs
    {
        return publish_provenance(ctx, &m, file).await;
    }
    // Modules are content-addressed per tenant: the server answers a publish
    // of bytes it already has with the existing record (200), whatever name
    // and version were asked for. Say so; a different name/version is not
    // published at all, so that is an error.
    match publish_result(&m, created, &name, &a.version) {
        Published::New => ctx.print(&m, |m| {
            crate::outln!(
                "published {}@{} {} ({} bytes){}",
                m.name,
                m.version,
                m.digest,
                m.size,
                signed_by(&m.signers)
            )
        }),
        Published::Unchanged => ctx.print(&m, |m| {
            crate::outln!(
                "already published {}@{} {} ({} bytes): unchanged",
                m.name,
                m.version,
                m.digest,
                m.size
            )
        }),
        Published::SameBytesAs => Err(anyhow::Error::from(crate::CliError {
            code: "already_published",
            message: format!(
                "{name}@{} was NOT published: these bytes ({}) are already published as {}@{}; \
                 a module is identified by its bytes, so a new version needs new bytes",
                a.version, m.digest, m.name, m.version
            ),
        })),
    }
}

/// `, signed by …` for a module's verified signers (empty: nothing).
pub(crate) fn signed_by(signers: &[String]) -> String {
    if signers.is_empty() {
        String::new()
    } else {
        format!(", signed by {}", signers.join(", "))
    }
}

/// The module is published; now its provenance statement.
async fn publish_provenance(
    ctx: &Ctx,
    m: &ModuleRecord,
    file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let statement = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (p, _) = ctx
        .client()?
        .put_provenance(&m.digest.to_string(), statement)
        .await
        .with_context(|| format!("{} is published; its provenance was not", m.digest))?;
    let both = serde_json::json!({ "module": m, "provenance": p });
    ctx.print(&both, |_| {
        crate::outln!(
            "published {}@{} {} ({} bytes)\nprovenance {} recorded: source {}, Cargo.lock {}, {}",
            m.name,
            m.version,
            m.digest,
            m.size,
            p.statement,
            p.source,
            p.cargo_lock,
            p.toolchain
        )
    })
}

/// What a publish did, from the record the server answered with.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored under the name and version asked for (or re-published as the same).
    New,
    /// The same bytes under the same name and version: nothing to do.
    Unchanged,
    /// The bytes exist under another name or version; nothing was published.
    SameBytesAs,
}

/// `created`: the server answered 201 (this request stored it).
pub fn publish_result(m: &ModuleRecord, created: bool, name: &str, version: &str) -> Published {
    if created {
        Published::New
    } else if m.name == name && m.version == version {
        Published::Unchanged
    } else {
        Published::SameBytesAs
    }
}

#[derive(Args)]
pub struct ModulesArgs {
    #[command(subcommand)]
    cmd: Option<ModulesCmd>,
}

#[derive(Subcommand)]
pub enum ModulesCmd {
    /// List published modules (the default).
    List,
    /// Download a module's bytes (its tenant's developers and auditors),
    /// checked against its digest.
    Content {
        /// The module: its digest (`sha256:…`), `name@version` or `name`.
        digest: String,
        /// Write them here.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Download a module's provenance statement (owner and granted auditors).
    Provenance {
        /// The module's digest (`sha256:…`).
        digest: String,
        /// Write it here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Download the receipt of a module's publication (verify it with
    /// `kasbah audit verify --module DIGEST`).
    Receipt {
        /// The module: its digest (`sha256:…`), `name@version` or `name`.
        digest: String,
        /// Write it here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Write a receipt as pretty JSON to `output` or stdout.
pub(crate) fn save_receipt(
    receipt: &kasbah_client::Receipt,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let json = serde_json::to_string_pretty(receipt)?;
    match output {
        Some(p) => {
            std::fs::write(&p, format!("{json}\n"))
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "receipt for entry #{} written to {}",
                receipt.index,
                p.display()
            );
        }
        None => crate::outln!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn modules(ctx: &Ctx, a: ModulesArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        Some(ModulesCmd::Receipt { digest, output }) => {
            let r = ctx.client()?.module_receipt(&digest).await?;
            return save_receipt(&r, output);
        }
        Some(ModulesCmd::Content { digest, output }) => {
            let client = ctx.client()?;
            // A name: the digest it names now, from the module's record.
            let want = if digest.starts_with("sha256:") {
                digest.clone()
            } else {
                client.module(&digest).await?.digest.to_string()
            };
            let bytes = client.module_content(&want).await?;
            // Check here too: the bytes are what was asked for.
            let got = kasbah_core::Digest::of(&bytes);
            if got.to_string() != want {
                anyhow::bail!("the server sent bytes with digest {got}, not {want}");
            }
            std::fs::write(&output, &bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!("{} bytes written to {}", bytes.len(), output.display());
            return Ok(ExitCode::SUCCESS);
        }
        Some(ModulesCmd::List) | Some(ModulesCmd::Provenance { .. }) | None => {}
    }
    let fetched = match &a.cmd {
        Some(ModulesCmd::Provenance { digest, output }) => {
            Some((ctx.client()?.provenance(digest).await?, output.clone()))
        }
        _ => None,
    };
    if let Some((bytes, output)) = fetched {
        match output {
            Some(p) => {
                std::fs::write(&p, &bytes).with_context(|| format!("writing {}", p.display()))?
            }
            None => crate::out::write_bytes(&bytes)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ms = ctx.client()?.modules().await?;
    ctx.print(&ms, |ms| {
        table(
            &["DIGEST", "NAME", "VERSION", "SIZE", "TENANT"],
            ms.iter()
                .map(|m| {
                    vec![
                        m.digest.to_string(),
                        m.name.clone(),
                        m.version.clone(),
                        m.size.to_string(),
                        m.tenant_id.clone(),
                    ]
                })
                .collect(),
        )
    })
}

/// `kasbah run sha256:…`: run a published module on the server.
pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    let input = args.read_input()?;
    let (input, input_base64) = match String::from_utf8(input) {
        Ok(t) => (Some(t), None),
        Err(e) => (
            None,
            Some(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                e.into_bytes(),
            )),
        ),
    };
    let client = ctx.client()?;
    let req = CreateRun {
        module: args.module.clone(),
        input,
        input_base64,
        content_type: Some(args.content_type.clone()),
        metadata: args.meta.iter().cloned().collect(),
        wait: !args.no_wait,
        datasets: args.datasets.clone(),
        input_label: args.input_label.clone(),
        store_output_as: args.store_output_as.clone(),
    };
    // Waiting: the run's logs and stdio on stderr as they come.
    let record = if args.no_wait || ctx.json {
        client.run(&req).await?
    } else {
        crate::logs::run_following(&client, req).await?
    };
    show_run(ctx, &record, args.no_wait)
}

/// `id_on_stdout`: `run --no-wait`, whose result is the run id (scripts
/// capture it: `id=$(kasbah run --no-wait sha256:…)`).
fn show_run(ctx: &Ctx, r: &RunRecord, id_on_stdout: bool) -> anyhow::Result<ExitCode> {
    let ok = matches!(&r.outcome, Some(o) if o.is_ok());
    ctx.print(r, |r| {
        if id_on_stdout {
            crate::outln!("{}", r.id);
        }
        if let Some(out) = r.output.as_ref().and_then(|o| o.inline.as_ref()) {
            crate::outln!("{}", out.text().trim_end());
        }
        eprintln!("run      {} ({})", r.id, r.status.as_str());
        eprintln!("module   {}  policy v{}", r.module, r.policy_version);
        if let Some(zone) = &r.zone {
            eprintln!(
                "placed   zone {zone}{}{}  output label {{{}}}",
                r.adapter
                    .as_ref()
                    .map_or(String::new(), |a| format!(", GPU adapter {a}")),
                r.worker
                    .as_ref()
                    .map_or(String::new(), |w| format!(", fleet worker {w}")),
                r.output_label.join(", ")
            );
        }
        for d in &r.datasets {
            eprintln!(
                "dataset  {} {} {{{}}}",
                d.name,
                d.digest,
                d.label.join(", ")
            );
        }
        if let Some(d) = &r.output_dataset {
            eprintln!("stored   output as dataset {d}");
        }
        for d in &r.denials {
            eprintln!("denied   {}: {}", d.capability, d.detail);
        }
        match (&r.outcome, &r.output) {
            // The record keeps the body out of the outcome; the size is in `output`.
            (Some(o), Some(out)) if o.is_ok() => {
                eprintln!("outcome  ok ({} bytes, {})", out.size, out.content_type)
            }
            (Some(o), _) => eprintln!("outcome  {}", o.summary()),
            (None, _) => {}
        }
        if let Some(u) = &r.usage {
            crate::local::print_usage(u);
        }
        if let Some(out) = r.output.as_ref().filter(|o| o.inline.is_none()) {
            eprintln!("output   {} bytes {} at {}", out.size, out.digest, out.url);
        }
    })?;
    Ok(
        if ok || r.status == RunStatus::Queued || r.status == RunStatus::Running {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

#[derive(Subcommand)]
pub enum RunsCmd {
    /// Show one run record.
    Show {
        /// The run's id.
        id: String,
    },
    /// List recent runs, newest first.
    List {
        /// Most runs to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Write a run's output bytes to stdout.
    Output {
        /// The run's id.
        id: String,
    },
    /// A run's logs and stdout/stderr (so far, or `-f`: as they come, to
    /// stderr, until the run ends).
    Logs {
        /// The run's id.
        id: String,
        /// Follow the run until it ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a queued or running run of your tenant (it ends `cancelled`).
    Cancel {
        /// The run's id.
        id: String,
    },
    /// Download the receipt of a run (verify it with `kasbah audit verify`).
    Receipt {
        /// The run's id.
        id: String,
        /// Write it here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub async fn runs(ctx: &Ctx, c: RunsCmd) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match c {
        RunsCmd::Show { id } => show_run(ctx, &client.get_run(&id).await?, false),
        RunsCmd::List { limit } => {
            let rs = client.runs(limit).await?;
            ctx.print(&rs, |rs| {
                table(
                    &["ID", "STATUS", "OUTCOME", "WALL MS", "MODULE"],
                    rs.iter()
                        .map(|r| {
                            vec![
                                r.id.clone(),
                                r.status.as_str().into(),
                                r.outcome.as_ref().map_or("-", |o| o.kind()).into(),
                                r.usage.as_ref().map_or("-".into(), |u| {
                                    format!("{:.3}", u.wall_time.as_secs_f64() * 1e3)
                                }),
                                r.module.to_string(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        RunsCmd::Output { id } => {
            let bytes = client.run_output(&id).await?;
            crate::out::write_bytes(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Logs { id, follow } => crate::logs::logs(ctx, &id, follow).await,
        RunsCmd::Cancel { id } => crate::logs::cancel(ctx, &id).await,
        RunsCmd::Receipt { id, output } => save_receipt(&client.run_receipt(&id).await?, output),
    }
}

#[derive(Subcommand)]
pub enum DatasetCmd {
    /// Upload a file as a dataset (streamed, hashed) with a residency label.
    Create {
        /// The file to upload.
        file: PathBuf,
        /// `[a-z0-9][a-z0-9._-]{0,63}`: the guest sees `/datasets/<name>`.
        #[arg(long)]
        name: String,
        /// Residency label, comma-separated zones (default: the tenant's zones).
        #[arg(long, value_delimiter = ',')]
        zones: Option<Vec<String>>,
    },
    /// List datasets.
    List {
        /// Admins and auditors: one tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one dataset.
    Show {
        /// The dataset's id.
        id: String,
    },
    /// Download a dataset's bytes (its tenant's developers and auditors),
    /// checked against its digest.
    Download {
        /// The dataset's id.
        id: String,
        /// Write them here (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub async fn dataset(ctx: &Ctx, c: DatasetCmd) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let show = |d: &DatasetRecord| {
        crate::outln!(
            "dataset {} {} {} bytes {} label {{{}}}",
            d.id,
            d.name,
            d.size,
            d.digest,
            d.label.join(", ")
        )
    };
    match c {
        DatasetCmd::Create { file, name, zones } => {
            let d = client
                .create_dataset(&file, &name, zones.as_deref(), |_, _| {})
                .await?;
            ctx.print(&d, show)
        }
        DatasetCmd::Show { id } => ctx.print(&client.dataset(&id).await?, show),
        DatasetCmd::Download { id, output } => {
            let d = client.dataset(&id).await?;
            let bytes = client.dataset_content(&id).await?;
            anyhow::ensure!(
                kasbah_core::Digest::of(&bytes) == d.digest,
                "the bytes received are not dataset {id}'s ({})",
                d.digest
            );
            match output {
                Some(path) => std::fs::write(&path, &bytes)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
                None => crate::out::write_bytes(&bytes)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        DatasetCmd::List { tenant } => {
            let ds = client.datasets(tenant.as_deref()).await?;
            ctx.print(&ds, |ds| {
                table(
                    &["ID", "NAME", "SIZE", "LABEL", "DIGEST"],
                    ds.iter()
                        .map(|d| {
                            vec![
                                d.id.clone(),
                                d.name.clone(),
                                d.size.to_string(),
                                d.label.join(","),
                                d.digest.to_string(),
                            ]
                        })
                        .collect(),
                )
            })
        }
    }
}

#[derive(Args)]
pub struct UsageArgs {
    /// One tenant's usage.
    #[arg(long)]
    tenant: Option<String>,
    /// hour, day or month.
    #[arg(long, default_value = "day")]
    period: String,
}

pub async fn usage(ctx: &Ctx, a: UsageArgs) -> anyhow::Result<ExitCode> {
    if !["hour", "day", "month"].contains(&a.period.as_str()) {
        bail!("--period must be hour, day or month");
    }
    let rows = ctx.client()?.usage(a.tenant.as_deref(), &a.period).await?;
    ctx.print(&rows, |rows| {
        table(
            &[
                "TENANT",
                "PERIOD",
                "RUNS",
                "OK",
                "WALL S",
                "FUEL",
                "PEAK MEM",
                "MEM GB·S",
            ],
            rows.iter()
                .map(|u| {
                    vec![
                        u.tenant_id.clone(),
                        u.period.clone(),
                        u.runs.to_string(),
                        u.ok_runs.to_string(),
                        format!("{:.3}", u.wall_time_us as f64 / 1e6),
                        u.fuel.to_string(),
                        u.peak_memory_bytes.to_string(),
                        format!("{:.6}", u.memory_byte_seconds / 1e9),
                    ]
                })
                .collect(),
        )
    })
}
