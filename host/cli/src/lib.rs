//! `kasbah`: the command line. `kasbah run` runs a pipeline locally (a file)
//! or on a server (a `sha256:` digest); `kasbah serve` starts the platform;
//! the other subcommands talk to a server (`KASBAH_URL`, `KASBAH_TOKEN`).

mod audit;
mod local;
mod remote;
mod serve;

use clap::{Parser, Subcommand};
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
    /// Start the platform service.
    Serve(serve::ServeArgs),
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
    /// Auditors (admin).
    #[command(subcommand)]
    Auditor(remote::AuditorCmd),
    /// Publish a component to the registry (developer).
    Publish(remote::PublishArgs),
    /// Published modules (lists them without a subcommand).
    Modules(remote::ModulesArgs),
    /// Datasets with residency labels (developer: create; list/show).
    #[command(subcommand)]
    Dataset(remote::DatasetCmd),
    /// Run records.
    #[command(subcommand)]
    Runs(remote::RunsCmd),
    /// Usage totals per tenant and period.
    Usage(remote::UsageArgs),
    /// The audit log: key, checkpoints, entries, offline receipt verification, fork watcher.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
}

pub fn main() -> ExitCode {
    // `kasbah gpu-worker …`: this process is a GPU process started by a
    // kasbah platform (see kasbah_gpu::gpu_worker_main), not a user command.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("gpu-worker") {
        let code = kasbah_runtime::kasbah_gpu::gpu_worker_main(args.get(2..).unwrap_or_default());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // GPU processes are this same binary.
    if let Ok(exe) = std::env::current_exe() {
        kasbah_runtime::kasbah_gpu::set_worker_program(exe);
    }
    let cli = Cli::parse();
    let filter = match cli.verbose {
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
        .init();

    let ctx = remote::Ctx {
        url: cli.url,
        token: cli.token,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Run(args) if args.is_remote() => remote::block_on(remote::run(&ctx, args)),
        Command::Run(args) => local::run(args, cli.verbose > 0, ctx.json),
        Command::Serve(args) => serve::serve(args),
        Command::Whoami => remote::block_on(remote::whoami(&ctx)),
        Command::Operator(c) => remote::block_on(remote::operator(&ctx, c)),
        Command::Tenant(c) => remote::block_on(remote::tenant(&ctx, c)),
        Command::Policy(c) => remote::block_on(remote::policy(&ctx, c)),
        Command::Auditor(c) => remote::block_on(remote::auditor(&ctx, c)),
        Command::Publish(a) => remote::block_on(remote::publish(&ctx, a)),
        Command::Modules(a) => remote::block_on(remote::modules(&ctx, a)),
        Command::Dataset(c) => remote::block_on(remote::dataset(&ctx, c)),
        Command::Runs(c) => remote::block_on(remote::runs(&ctx, c)),
        Command::Usage(a) => remote::block_on(remote::usage(&ctx, a)),
        Command::Audit(c) => remote::block_on(audit::audit(&ctx, c)),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`kasbah runs list | head`): stop quietly,
        // as other command-line tools do.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
