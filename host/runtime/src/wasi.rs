//! Builds a run's WASI context from its capability policy, and nothing else:
//! no inherited stdio, env, args, network or filesystem. Each grant maps to
//! one builder call here, so this file is the whole WASI attack surface.

use kasbah_policy::{DATASETS_GUEST_PATH, DirMode, Policy};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::net::{Allowlist, Denials};
use crate::residency::{Residency, ZonesConfig};
use crate::stdio::{BoundedPipe, Stream};

pub(crate) struct WasiParts {
    pub builder: WasiCtxBuilder,
    /// What the guest's own name lookups may resolve.
    pub lookup: std::sync::Arc<crate::net::LookupFilter>,
    pub stdout: BoundedPipe,
    pub stderr: BoundedPipe,
}

/// Why a policy could not be applied on this host (the run is refused).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("files: cannot preopen {host:?} as {guest}: {reason}")]
    Preopen {
        host: std::path::PathBuf,
        guest: String,
        reason: String,
    },
}

/// Per-run inputs that do not come from the policy: where the run's data may
/// be written (its residency) and its dataset directory.
pub(crate) struct RunMounts<'a> {
    pub residency: Option<(&'a ZonesConfig, &'a Residency)>,
    pub datasets: Option<&'a std::path::Path>,
    /// Where kept stdout/stderr bytes also go as they are written.
    pub live: Option<crate::control::LiveSink>,
    /// Granted secrets delivered as variables (name, value).
    pub secret_env: &'a [(&'a str, &'a str)],
    /// Directories of secret files: (host, guest), preopened read-only.
    pub secret_dirs: &'a [(std::path::PathBuf, String)],
}

pub(crate) fn build(
    policy: &Policy,
    allowlist: Allowlist,
    denials: Denials,
    mounts: RunMounts<'_>,
) -> Result<WasiParts, ApplyError> {
    let mut b = WasiCtxBuilder::new();
    // stdin stays closed (the default); the request body is the input.
    let stdio = usize::try_from(policy.limits.max_stdio_bytes).unwrap_or(usize::MAX);
    let stdout = BoundedPipe::new(stdio).with_live(mounts.live.clone(), Stream::Stdout);
    let stderr = BoundedPipe::new(stdio).with_live(mounts.live.clone(), Stream::Stderr);
    b.stdout(stdout.clone());
    b.stderr(stderr.clone());
    b.arg("pipeline");
    b.max_random_size(crate::MAX_RANDOM_BYTES_PER_CALL);

    for (k, v) in &policy.env.vars {
        b.env(k, v);
    }
    for k in &policy.env.inherit {
        if policy.env.vars.contains_key(k) {
            continue; // an explicit value wins
        }
        if let Ok(v) = std::env::var(k) {
            b.env(k, v);
        }
    }
    // Policy validation keeps secret variable names apart from `[env]`.
    for (k, v) in mounts.secret_env {
        b.env(k, v);
    }
    for (host, guest) in mounts.secret_dirs {
        b.preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| ApplyError::Preopen {
                host: host.clone(),
                guest: guest.clone(),
                reason: format!("{e:#}"),
            })?;
    }

    for d in &policy.files {
        let perms = match d.mode {
            DirMode::Ro => FsPerms::ReadOnly,
            DirMode::Rw => FsPerms::ReadWrite,
        };
        // Residency: a labelled run reaches only storage in a zone of its
        // label. Elsewhere the grant is not mounted at all: writing there
        // would move labelled data out, and reading from it would bring
        // another zone's data in (its output would then carry a label the
        // data does not have).
        if let Some((zones, residency)) = mounts.residency {
            let zone = zones.storage_zone(&d.host);
            if !zone.is_some_and(|z| residency.label.contains(z)) {
                crate::net::record(
                    &denials,
                    "files",
                    format!(
                        "residency_violation: {} ({}) is on storage {}, outside the run's residency label {}: not mounted",
                        d.guest,
                        d.host.display(),
                        zone.map_or("in no zone".to_string(), |z| format!("in zone {z}")),
                        residency.describe_label()
                    ),
                );
                continue;
            }
        }
        b.preopened_dir(&d.host, &d.guest, perms)
            .map_err(|e| ApplyError::Preopen {
                host: d.host.clone(),
                guest: d.guest.clone(),
                reason: format!("{e:#}"),
            })?;
    }

    if let Some(dir) = mounts.datasets {
        b.preopened_dir(dir, DATASETS_GUEST_PATH, FsPerms::ReadOnly)
            .map_err(|e| ApplyError::Preopen {
                host: dir.to_path_buf(),
                guest: DATASETS_GUEST_PATH.to_string(),
                reason: format!("{e:#}"),
            })?;
    }

    let lookup = allowlist.apply(&mut b, denials);
    Ok(WasiParts {
        builder: b,
        lookup,
        stdout,
        stderr,
    })
}
