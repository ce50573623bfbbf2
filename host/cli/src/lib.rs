//! `kasbah`: the command line. `kasbah run` runs a pipeline locally (a file)
//! or on a server (a `sha256:` digest); `kasbah serve` starts the platform;
//! the other subcommands talk to a server (`KASBAH_URL`, `KASBAH_TOKEN`).

#![deny(clippy::print_stdout)]

mod audit;
mod fleet;
mod gpu;
mod local;
mod logs;
mod new;
pub mod out;
mod remote;
pub mod repro;
mod secret;
mod serve;
mod sign;
mod witness;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kasbah",
    version,
    about = "Sovereign WebAssembly sandbox platform"
)]
struct Cli {
    /// Log verbosity (also honours RUST_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Server URL for client commands.
    #[arg(
        long,
        global = true,
        env = "KASBAH_URL",
        default_value = "http://127.0.0.1:7878"
    )]
    url: String,
    /// Bearer token for client commands.
    #[arg(long, global = true, env = "KASBAH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: a `.wasm` file locally, or a published `sha256:…` module on the server.
    Run(local::RunArgs),
    /// Build a guest crate for wasm32-wasip2 reproducibly, with SLSA provenance (no server needed).
    Build(BuildArgs),
    /// Create a pipeline crate (Cargo project with the SDK, a guest build profile, a test, a README).
    New(new::NewArgs),
    /// Start the platform service.
    Serve(serve::ServeArgs),
    /// Run a zone worker of the fleet (NATS JetStream; see `kasbah serve --nats`).
    Worker(serve::WorkerArgs),
    /// The fleet: NATS server configuration and credentials (no server needed), live workers.
    #[command(subcommand)]
    Fleet(fleet::FleetCmd),
    /// This machine's GPU adapters, as the platform's GPU processes see them (no server needed).
    #[command(subcommand)]
    Gpu(gpu::GpuCmd),
    /// Who the token belongs to.
    Whoami,
    /// Operators (admin).
    #[command(subcommand)]
    Operator(remote::OperatorCmd),
    /// Tenants (admin, operator).
    #[command(subcommand)]
    Tenant(remote::TenantCmd),
    /// Tenant capability policies (admin, operator).
    #[command(subcommand)]
    Policy(remote::PolicyCmd),
    /// Auditors (admin; operators for their own tenants).
    #[command(subcommand)]
    Auditor(remote::AuditorCmd),
    /// Tokens: list their metadata, revoke (admin: any; operator: its tenants' and auditors').
    #[command(subcommand)]
    Tokens(remote::TokensCmd),
    /// Module signing keys: generate (no server needed), show, revoke for a tenant (admin, operator).
    #[command(subcommand)]
    Key(sign::KeyCmd),
    /// Sign a component: a DSSE envelope around an in-toto statement naming its sha256 (no server needed).
    Sign(sign::SignArgs),
    /// Publish a component to the registry (developer).
    Publish(remote::PublishArgs),
    /// Published modules (lists them without a subcommand).
    Modules(remote::ModulesArgs),
    /// Datasets with residency labels (developer: create; list/show).
    #[command(subcommand)]
    Dataset(remote::DatasetCmd),
    /// The tenant's secrets (developer): set (value from stdin), list, delete.
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Run records.
    #[command(subcommand)]
    Runs(remote::RunsCmd),
    /// Usage totals per tenant and period.
    Usage(remote::UsageArgs),
    /// The audit log: key, checkpoints, entries, offline receipt verification, fork watcher.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Run a transparency-log witness (C2SP tlog-witness) and make its key (no server needed).
    #[command(subcommand)]
    Witness(witness::WitnessCmd),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The guest crate's directory (inside a cargo workspace with a Cargo.lock).
    #[arg(default_value = ".")]
    dir: std::path::PathBuf,
    /// Write the module here (default: <workspace>/target/kasbah-build/<name>.wasm); the
    /// provenance goes next to it as <FILE>.provenance.json.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

pub fn main() -> ExitCode {
    // `kasbah gpu-worker …`: this process is a GPU process started by a
    // kasbah platform (see kasbah_gpu::gpu_worker_main), not a user command.
    let args_os: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args: Vec<String> = args_os
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.get(1).map(String::as_str) == Some("gpu-worker") {
        let code = kasbah_runtime::kasbah_gpu::gpu_worker_main(args.get(2..).unwrap_or_default());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // GPU processes are this same binary.
    if let Ok(exe) = std::env::current_exe() {
        kasbah_runtime::kasbah_gpu::set_worker_program(exe);
    }
    let json_requested = args.iter().any(|a| a == "--json");
    if let Some(at) = serve_position(&args) {
        let mut serve_args = vec![std::ffi::OsString::from("kasbah serve")];
        serve_args.extend(args_os.iter().skip(1).take(at - 1).cloned());
        serve_args.extend(args_os.iter().skip(at + 1).cloned());
        let cli = match serve_command()
            .try_get_matches_from(&serve_args)
            .and_then(|m| ServeCli::from_arg_matches(&m))
        {
            Ok(cli) => cli,
            Err(e) => return usage_error(e, false),
        };
        init_tracing(cli.verbose);
        return match serve::serve(cli.args) {
            Ok(code) => code,
            Err(e) => {
                report_error(&e, false);
                ExitCode::from(2)
            }
        };
    }
    let cli = match command()
        .try_get_matches_from(&args_os)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, json_requested),
    };
    init_tracing(cli.verbose);

    let ctx = remote::Ctx {
        url: cli.url,
        token: cli.token,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Run(args) if args.is_remote() => remote::block_on(remote::run(&ctx, args)),
        Command::Run(args) => local::run(args, cli.verbose > 0, ctx.json),
        Command::Build(a) => {
            repro::build_command(&a.dir, a.out.as_deref(), ctx.json).map(|()| ExitCode::SUCCESS)
        }
        Command::New(a) => new::new(a),
        Command::Serve(args) => serve::serve(args),
        Command::Worker(args) => serve::worker(args),
        Command::Fleet(c) => fleet::fleet(&ctx, c),
        Command::Gpu(c) => gpu::gpu(c, ctx.json),
        Command::Whoami => remote::block_on(remote::whoami(&ctx)),
        Command::Operator(c) => remote::block_on(remote::operator(&ctx, c)),
        Command::Tenant(c) => remote::block_on(remote::tenant(&ctx, c)),
        Command::Policy(c) => remote::block_on(remote::policy(&ctx, c)),
        Command::Auditor(c) => remote::block_on(remote::auditor(&ctx, c)),
        Command::Tokens(c) => remote::block_on(remote::tokens(&ctx, c)),
        Command::Key(c) => remote::block_on(sign::key(&ctx, c)),
        Command::Sign(a) => sign::sign(&ctx, a),
        Command::Publish(a) => remote::block_on(remote::publish(&ctx, a)),
        Command::Modules(a) => remote::block_on(remote::modules(&ctx, a)),
        Command::Dataset(c) => remote::block_on(remote::dataset(&ctx, c)),
        Command::Secret(c) => remote::block_on(secret::secret(&ctx, c)),
        Command::Runs(c) => remote::block_on(remote::runs(&ctx, c)),
        Command::Usage(a) => remote::block_on(remote::usage(&ctx, a)),
        Command::Audit(c) => remote::block_on(audit::audit(&ctx, c)),
        Command::Witness(c) => witness::witness(c),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`kasbah runs list | head`): stop quietly,
        // as other command-line tools do.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e, ctx.json);
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8) {
    let filter = match verbose {
        0 => "warn,kasbah_server=info",
        1 => "info,guest=info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .init();
}

/// The whole command tree.
pub fn command() -> clap::Command {
    Cli::command()
}

/// `kasbah serve` parsed on its own, so `kasbah serve --help` shows the
/// server's flags only (not the client flags `--url`, `--token`, `--json`).
#[derive(Parser)]
#[command(name = "kasbah serve", version, about = "Start the platform service.")]
struct ServeCli {
    /// Log verbosity (also honours RUST_LOG).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    args: serve::ServeArgs,
}

/// The `kasbah serve` command line (see [`ServeCli`]).
pub fn serve_command() -> clap::Command {
    ServeCli::command()
}

/// Whether the command line is `kasbah [-v…] serve …`; returns the index of
/// `serve`.
fn serve_position(args: &[String]) -> Option<usize> {
    let mut i = 1;
    while let Some(a) = args.get(i) {
        let verbose = a == "--verbose"
            || (a.starts_with('-') && a.len() > 1 && a[1..].chars().all(|c| c == 'v'));
        if !verbose {
            break;
        }
        i += 1;
    }
    (args.get(i).map(String::as_str) == Some("serve")).then_some(i)
}

/// ANSI colours on stderr only for a terminal, and never with `NO_COLOR`.
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// An error the CLI itself decides on, with a stable code for `--json`.
#[derive(Debug)]
pub struct CliError {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// How an error is shown: text on stderr, or with `--json` the API's error
/// envelope `{"error": {"code", "message"}}` on stderr (stdout stays for
/// results, so `kasbah --json … | jq` never parses an error as data). The
/// code is the server's for API errors, else `connection_failed`, `usage`
/// or `failed`.
pub fn error_envelope(e: &anyhow::Error) -> serde_json::Value {
    let client = e
        .chain()
        .find_map(|c| c.downcast_ref::<kasbah_client::Error>());
    let cli = e.chain().find_map(|c| c.downcast_ref::<CliError>());
    let (code, message) = match (client, cli) {
        (_, Some(c)) => (c.code.to_string(), c.message.clone()),
        (Some(kasbah_client::Error::Api { code, message, .. }), _) => {
            (code.clone(), message.clone())
        }
        (Some(kasbah_client::Error::Transport(t)), _) => {
            ("connection_failed".into(), t.to_string())
        }
        _ => ("failed".into(), format!("{e:#}")),
    };
    serde_json::json!({ "error": { "code": code, "message": message } })
}

fn report_error(e: &anyhow::Error, json: bool) {
    if json {
        eprintln!("{}", error_envelope(e));
    } else {
        eprintln!("error: {e:#}");
    }
}

/// A command line clap refused (or `--help`/`--version`, which are not
/// errors). With `--json` a refusal is the error envelope, code `usage`.
fn usage_error(e: clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if informational {
        // Help goes to stdout: a closed pipe is not an error either.
        let text = if colour_on_stdout() {
            e.render().ansi().to_string()
        } else {
            e.render().to_string()
        };
        let _ = out::write(format_args!("{text}"));
        return ExitCode::SUCCESS;
    }
    if json {
        let message = e.render().to_string();
        let first = message.lines().next().unwrap_or_default();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        eprintln!(
            "{}",
            serde_json::json!({ "error": { "code": "usage", "message": first } })
        );
    } else if colour_on_stderr() {
        eprint!("{}", e.render().ansi());
    } else {
        eprint!("{}", e.render());
    }
    ExitCode::from(2)
}

fn colour_on_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and every argument has help text, at every level,
    /// so `--help` never shows a bare name.
    #[test]
    fn every_subcommand_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for s in cmd.get_subcommands() {
                let p = format!("{path} {}", s.get_name());
                if s.get_name() != "help" && s.get_about().is_none() && s.get_long_about().is_none()
                {
                    missing.push(p.clone());
                }
                walk(s, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "kasbah", &mut missing);
        walk(&serve_command(), "kasbah serve", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    /// `kasbah serve --help` lists the server's flags, not the client's.
    #[test]
    fn serve_help_shows_server_flags_only() {
        let mut cmd = command();
        let help = serve_command().render_long_help().to_string();
        for server_flag in [
            "--config",
            "--listen",
            "--data-dir",
            "--workers",
            "--queue-depth",
            "--verbose",
        ] {
            assert!(help.contains(server_flag), "{server_flag} missing:\n{help}");
        }
        for client_flag in ["--url", "--token", "--json"] {
            assert!(!help.contains(client_flag), "{client_flag} shown:\n{help}");
        }
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            serve_position(&args(&["kasbah", "serve", "--help"])),
            Some(1)
        );
        assert_eq!(serve_position(&args(&["kasbah", "-vv", "serve"])), Some(2));
        assert_eq!(serve_position(&args(&["kasbah", "runs", "list"])), None);
        // Client commands still have them.
        cmd.build();
        let runs = cmd.find_subcommand_mut("runs").expect("runs");
        assert!(runs.render_long_help().to_string().contains("--json"));
    }

    #[test]
    fn errors_as_json_carry_the_servers_code() {
        let api = anyhow::Error::from(kasbah_client::Error::Api {
            status: 401,
            code: "token_revoked".into(),
            message: "this token has been revoked".into(),
        });
        let v = error_envelope(&api);
        assert_eq!(v["error"]["code"], "token_revoked");
        assert_eq!(v["error"]["message"], "this token has been revoked");
        let local = anyhow::anyhow!("no token: set KASBAH_TOKEN or pass --token");
        assert_eq!(error_envelope(&local)["error"]["code"], "failed");
    }

    #[test]
    fn only_a_broken_pipe_is_quiet() {
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing the run's output");
        assert!(is_broken_pipe(&pipe));
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other));
        assert!(!is_broken_pipe(&anyhow::anyhow!(
            "broken pipe, in words only"
        )));
    }
}
