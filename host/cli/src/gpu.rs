//! `kasbah gpu adapters`: the GPU adapters this machine's GPU processes see,
//! probed as `kasbah serve` probes them at start, so an operator can write
//! the `[[gpu.adapters]]` entries of a host config (`backend`, `name`) and a
//! benchmark can say which device it ran on.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::outln;

#[derive(Subcommand)]
pub enum GpuCmd {
    /// List the adapters wgpu sees here: name, device type, backend, driver, compute.
    Adapters(AdaptersArgs),
}

#[derive(Args)]
pub struct AdaptersArgs {
    /// Only this backend (`vulkan`, `gl`, …); all by default.
    #[arg(long)]
    backend: Option<String>,
}

pub fn gpu(cmd: GpuCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        GpuCmd::Adapters(args) => adapters(args, json),
    }
}

fn adapters(args: AdaptersArgs, json: bool) -> anyhow::Result<ExitCode> {
    let found = kasbah_runtime::kasbah_gpu::adapters(args.backend.as_deref())
        .map_err(|e| anyhow::anyhow!("probing GPU adapters: {e}"))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(ExitCode::SUCCESS);
    }
    // Tab-separated, one adapter per line (scripts read the first fields).
    for a in &found {
        outln!(
            "{}\t{}\t{}\t{}\t{}",
            a.name,
            a.device_type,
            a.backend,
            a.driver,
            if a.compute { "compute" } else { "no-compute" }
        );
    }
    if found.is_empty() {
        eprintln!(
            "no GPU adapter found (backend: {}; is a Vulkan or GL driver installed?)",
            args.backend.as_deref().unwrap_or("any")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
