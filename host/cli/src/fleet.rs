//! `kasbah fleet`: setting up a fleet (`nats-config`, no server needed) and
//! looking at it (`workers`: the control plane's live workers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kasbah_fleet::nats_config::{self, Spec};

use crate::outln;

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Write a nats-server configuration (JetStream, one account, users with bcrypt-hashed
    /// random passwords and scoped permissions) and each user's NATS credentials: the control
    /// plane's and one set per zone worker.
    NatsConfig(NatsConfigArgs),
    /// List the fleet's live workers (admin or operator token): id, zones, adapters,
    /// capacity, runs active, version, heartbeat age. Exit 2 on a server without a fleet.
    Workers,
}

#[derive(Args)]
pub struct NatsConfigArgs {
    /// The fleet's zones, comma-separated (e.g. `zone-a,zone-b`).
    #[arg(long, value_delimiter = ',', required = true)]
    zones: Vec<String>,
    /// Directory to write into (created with mode 0700; existing files are never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// The nats-server's client address.
    #[arg(long, default_value = "127.0.0.1:4222")]
    listen: SocketAddr,
    /// JetStream's store directory (default: `<out>/jetstream`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Worker users per zone, each with its own password and reply prefix.
    #[arg(long, default_value_t = 1)]
    workers_per_zone: u32,
}

pub fn fleet(ctx: &crate::remote::Ctx, cmd: FleetCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        FleetCmd::NatsConfig(args) => nats_config(args, ctx.json),
        FleetCmd::Workers => crate::remote::block_on(workers(ctx)),
    }
}

async fn workers(ctx: &crate::remote::Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.client()?.fleet_workers().await?;
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(&ws)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<24} {:<24} {:>6} {:>8} {:>9}  {:<10} adapters",
        "worker",
        "zones",
        "active",
        "capacity",
        "heartbeat",
        "version"
    );
    for w in &ws {
        let adapters: Vec<String> = w
            .adapters
            .iter()
            .map(|a| format!("{}@{}", a.label, a.zone))
            .collect();
        outln!(
            "{:<24} {:<24} {:>6} {:>8} {:>7}ms  {:<10} {}",
            w.id,
            w.zones.join(","),
            w.active,
            w.capacity,
            w.heartbeat_age_ms,
            w.version,
            adapters.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn nats_config(args: NatsConfigArgs, json: bool) -> anyhow::Result<ExitCode> {
    let out = std::path::absolute(&args.out)
        .with_context(|| format!("resolving {}", args.out.display()))?;
    let store = args.store.unwrap_or_else(|| out.join("jetstream"));
    let store =
        std::path::absolute(&store).with_context(|| format!("resolving {}", store.display()))?;
    let spec = Spec {
        workers_per_zone: args.workers_per_zone,
        listen: args.listen,
        ..Spec::new(
            args.zones.iter().map(|z| z.trim().to_string()).collect(),
            store,
        )
    };
    let generated = nats_config::generate(&spec)?;
    let written = nats_config::write(&out, &generated)?;
    let conf = out.join(nats_config::SERVER_CONFIG_FILE);
    let start = format!("nats-server -c {}", shell_word(&conf));
    let url = format!("nats://{}", spec.listen);
    if json {
        let users: Vec<serde_json::Value> = generated
            .users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "user": u.name,
                    "zone": u.zone,
                    "credentials": out.join(u.file_name()),
                    "inbox_prefix": u.inbox_prefix,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "server_config": conf,
                "store_dir": spec.store_dir,
                "listen": spec.listen.to_string(),
                "users": users,
                "files": written,
                "start": start,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "wrote {} (nats-server configuration: listen {}, JetStream store {})",
        conf.display(),
        spec.listen,
        spec.store_dir.display()
    );
    for u in &generated.users {
        let role = match &u.zone {
            Some(z) => format!("a {z} worker"),
            None => "the control plane".into(),
        };
        outln!(
            "wrote {} (NATS credentials of user {} for {role})",
            out.join(u.file_name()).display(),
            u.name
        );
    }
    outln!("every file is mode 0600; the server config holds only bcrypt hashes");
    outln!();
    outln!("start the server:");
    outln!("  {start}");
    outln!(
        "then put a credentials file's keys at the top of the config it is for (before any [table]):"
    );
    outln!(
        "  kasbah serve --nats {url} --config serve.toml      # serve.toml starts with control-plane.toml"
    );
    if let Some(w) = generated.users.iter().find(|u| u.zone.is_some()) {
        outln!(
            "  kasbah worker --nats {url} --config worker.toml    # worker.toml starts with {}",
            w.file_name()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `p` as one shell word (single-quoted when it holds anything but
/// `[A-Za-z0-9/._-]`).
fn shell_word(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches as _;

    fn ctx(json: bool) -> crate::remote::Ctx {
        crate::remote::Ctx {
            url: "http://127.0.0.1:1".into(),
            token: None,
            json,
        }
    }

    fn parse(args: &[&str]) -> anyhow::Result<FleetCmd> {
        let m = crate::command().try_get_matches_from(args)?;
        match crate::Cli::from_arg_matches(&m)?.command {
            crate::Command::Fleet(c) => Ok(c),
            _ => anyhow::bail!("not a fleet command"),
        }
    }

    #[test]
    fn nats_config_writes_the_files_and_refuses_bad_zones() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("nats");
        let out_s = out.to_string_lossy().into_owned();
        let cmd = parse(&[
            "kasbah",
            "fleet",
            "nats-config",
            "--zones",
            "zone-a,zone-b",
            "--out",
            &out_s,
            "--listen",
            "127.0.0.1:4333",
        ])?;
        fleet(&ctx(true), cmd)?;
        let conf = std::fs::read_to_string(out.join("nats-server.conf"))?;
        assert!(conf.contains("listen: \"127.0.0.1:4333\""), "{conf}");
        let store = format!("store_dir: {:?}", out.join("jetstream").to_string_lossy());
        assert!(conf.contains(&store), "{conf}");
        for f in [
            "control-plane.toml",
            "worker-zone-a-1.toml",
            "worker-zone-b-1.toml",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        // Again into the same directory: refused, nothing overwritten.
        let again = parse(&[
            "kasbah",
            "fleet",
            "nats-config",
            "--zones",
            "zone-a",
            "--out",
            &out_s,
        ])?;
        let e = fleet(&ctx(false), again).expect_err("overwrite");
        assert!(e.to_string().contains("exists already"), "{e}");
        assert_eq!(std::fs::read_to_string(out.join("nats-server.conf"))?, conf);
        let bad_out = tmp.path().join("bad").to_string_lossy().into_owned();
        let bad = parse(&[
            "kasbah",
            "fleet",
            "nats-config",
            "--zones",
            "Zone_A,",
            "--out",
            &bad_out,
        ])?;
        let e = fleet(&ctx(false), bad).expect_err("bad zones");
        assert!(e.to_string().contains("not a zone name"), "{e}");
        assert!(!tmp.path().join("bad").exists());
        // The text output, with three workers per zone and another store.
        let text_out = tmp.path().join("text").to_string_lossy().into_owned();
        let store = tmp.path().join("js").to_string_lossy().into_owned();
        let cmd = parse(&[
            "kasbah",
            "fleet",
            "nats-config",
            "--zones",
            "zone-a",
            "--out",
            &text_out,
            "--store",
            &store,
            "--workers-per-zone",
            "3",
        ])?;
        fleet(&ctx(false), cmd)?;
        let conf = std::fs::read_to_string(tmp.path().join("text/nats-server.conf"))?;
        assert!(conf.contains(&format!("store_dir: {store:?}")), "{conf}");
        assert!(tmp.path().join("text/worker-zone-a-3.toml").is_file());
        Ok(())
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word(Path::new("/a/b-c.conf")), "/a/b-c.conf");
        assert_eq!(shell_word(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
