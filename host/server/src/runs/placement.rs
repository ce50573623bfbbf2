//! Placement: which zone (and GPU adapter) a run executes in, decided before
//! any guest code runs, and the residency label its data carries.
//!
//! - **label** (the run's, and its output's) = tenant zones ∩ input label
//!   (caller-given, default the tenant's zones) ∩ every requested dataset's
//!   label. Every egress of the run is checked against it (network
//!   destinations and writable storage in the runtime; see
//!   `kasbah_runtime::residency`).
//! - **candidate zones** = the node's zones (in configured order) ∩ label ∩,
//!   when the module imports `kasbah:gpu` and the policy grants a GPU, the
//!   zones of the policy's GPU grant that have a usable adapter entry.
//! - **choice**: the first candidate zone in the node's order, and in it the
//!   least busy usable adapter entry (configuration order breaks ties).
//!   Deterministic for a given node state.
//! - none → `403 residency_violation` naming every label involved, recorded
//!   as a `denial` audit entry (action `run`).
//!
//! The output label is the run's label, not narrowed to the chosen zone: it
//! says where the data may be processed, which is a property of the inputs,
//! not of where this run happened to land (which depends on GPU load).
//! Outputs stored as datasets keep it, so a chain of pipelines carries the
//! tightest label of everything upstream.

use std::collections::BTreeSet;

use kasbah_core::Digest;
use kasbah_core::api::{DatasetRecord, ModuleRecord, RunDataset};
use kasbah_policy::Policy;
use kasbah_runtime::kasbah_gpu::AdapterStatus;
use kasbah_runtime::{DatasetMount, Residency, RunOptions};

use super::storage::RunResidency;
use crate::audit::service::residency_violation;
use crate::audit::storage::AuditStore;
use crate::datasets::service as datasets;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `{a, b}` for messages.
pub fn describe(zones: &BTreeSet<String>) -> String {
    kasbah_runtime::residency::describe(zones)
}

/// A placed run: its row and what the runtime needs.
pub struct Placed {
    pub row: RunResidency,
    pub options: RunOptions,
}

impl Placed {
    /// The run asked for its output to be stored as a dataset (the output
    /// must then go to the blob store whatever its size).
    pub fn stores_output(&self) -> bool {
        self.row.store_output_as.is_some()
    }
}

/// The pure decision (see the module docs). `Err` is the refusal message.
pub fn place(
    node: &[String],
    policy: &Policy,
    uses_gpu: bool,
    adapters: &[AdapterStatus],
    input_label: &BTreeSet<String>,
    datasets: &[DatasetRecord],
) -> Result<(String, Option<String>, BTreeSet<String>), String> {
    let tenant = policy.allowed_zones(node);
    let mut label: BTreeSet<String> = tenant.intersection(input_label).cloned().collect();
    for d in datasets {
        label.retain(|z| d.label.contains(z));
    }
    let labels = || {
        let mut parts = vec![
            format!("tenant zones {}", describe(&tenant)),
            format!("input label {}", describe(input_label)),
        ];
        for d in datasets {
            parts.push(format!(
                "dataset {} label {}",
                d.name,
                describe(&d.label.iter().cloned().collect())
            ));
        }
        parts.join(", ")
    };
    if label.is_empty() {
        return Err(format!("no zone satisfies every label: {}", labels()));
    }
    let candidates: Vec<&String> = node.iter().filter(|z| label.contains(*z)).collect();
    if candidates.is_empty() {
        return Err(format!(
            "the run's label {} has no zone this node serves ({}): {}",
            describe(&label),
            node.join(", "),
            labels()
        ));
    }
    let grant = policy.gpu_grant().filter(|_| uses_gpu);
    let Some(grant) = grant else {
        return Ok((candidates[0].clone(), None, label));
    };
    for zone in &candidates {
        if !grant.zones.contains(*zone) {
            continue;
        }
        let best = adapters
            .iter()
            .filter(|a| &a.zone == *zone && a.unavailable.is_none())
            .min_by_key(|a| a.active_runs);
        if let Some(a) = best {
            return Ok(((*zone).clone(), Some(a.label.clone()), label));
        }
    }
    let usable: Vec<String> = adapters
        .iter()
        .filter(|a| a.unavailable.is_none())
        .map(|a| format!("{} in {}", a.label, a.zone))
        .collect();
    Err(format!(
        "the module uses the GPU and no usable adapter is in a zone of the run's label {} that the GPU grant allows {} (usable adapters: {}): {}",
        describe(&label),
        describe(&grant.zones),
        if usable.is_empty() {
            "none".to_string()
        } else {
            usable.join(", ")
        },
        labels()
    ))
}

/// Resolve a run request's datasets and labels and place it; refusals are
/// audited. Called by `POST /v1/runs` before admission.
pub async fn place_run(
    s: &AppState,
    tenant: &str,
    policy: &Policy,
    module: &ModuleRecord,
    dataset_refs: &[String],
    input_label: Option<&[String]>,
    store_output_as: Option<&str>,
) -> ApiResult<Placed> {
    let datasets = datasets::resolve(s, tenant, dataset_refs)?;
    let node = &s.config.zones.node;
    let input_label: BTreeSet<String> = match input_label {
        Some(l) => {
            let l: BTreeSet<String> = l.iter().cloned().collect();
            datasets::check_label(&l)?;
            l
        }
        None => policy.allowed_zones(node),
    };
    if let Some(name) = store_output_as {
        if !kasbah_policy::is_dataset_name(name) {
            return Err(ApiError::unprocessable(
                "invalid_name",
                format!("store_output_as {name:?}: dataset names are [a-z0-9][a-z0-9._-]{{0,63}}"),
            ));
        }
        if let Some(d) = datasets::exists(s, tenant, name)? {
            return Err(ApiError::conflict(
                "dataset_exists",
                format!(
                    "dataset {name:?} already exists ({}); datasets are immutable",
                    d.id
                ),
            ));
        }
    }
    let uses_gpu = module.imports.iter().any(|i| i.starts_with("kasbah:gpu/"));
    // On the fleet, only zones (and adapters) of live workers can take it.
    let (node, adapters): (Vec<String>, Vec<AdapterStatus>) = match &s.fleet {
        Some(fleet) => {
            let live = fleet.live_zones();
            let zones = node.iter().filter(|z| live.contains(*z)).cloned().collect();
            let adapters = if uses_gpu {
                fleet.live_adapters()
            } else {
                Vec::new()
            };
            (zones, adapters)
        }
        None => {
            let adapters = if uses_gpu {
                s.runtime.gpu().status()
            } else {
                Vec::new()
            };
            (node.clone(), adapters)
        }
    };
    let (zone, adapter, label) =
        match place(&node, policy, uses_gpu, &adapters, &input_label, &datasets) {
            Ok(p) => p,
            Err(message) => {
                let no_capacity = s.fleet.is_some()
                    && would_place_with_every_zone(s, policy, uses_gpu, &input_label, &datasets);
                return Err(if no_capacity {
                    no_capacity_refusal(s, tenant, module.digest, message).await
                } else {
                    residency_violation(s, tenant, Some(module.digest), "run", message).await
                });
            }
        };
    let options = RunOptions {
        datasets: datasets
            .iter()
            .map(|d| DatasetMount::new(&d.name, s.blobs.path(&d.digest)).with_digest(d.digest))
            .collect(),
        residency: Some(Residency {
            label: label.clone(),
            zone: zone.clone(),
            adapter: adapter.clone(),
        }),
        tenant: Some(tenant.to_string()),
        secrets: Vec::new(),
    };
    let row = RunResidency {
        zone,
        adapter,
        datasets: datasets
            .into_iter()
            .map(|d| RunDataset {
                id: d.id,
                name: d.name,
                digest: d.digest,
                label: d.label,
            })
            .collect(),
        input_label: input_label.into_iter().collect(),
        output_label: label.into_iter().collect(),
        store_output_as: store_output_as.map(str::to_string),
        secrets: Vec::new(),
    };
    Ok(Placed { row, options })
}

/// Whether the run would be placed if every configured zone had a live
/// worker with a usable adapter: then its refusal is a matter of capacity,
/// not of residency.
fn would_place_with_every_zone(
    s: &AppState,
    policy: &Policy,
    uses_gpu: bool,
    input_label: &BTreeSet<String>,
    datasets: &[DatasetRecord],
) -> bool {
    let node = &s.config.zones.node;
    let adapters: Vec<AdapterStatus> = node
        .iter()
        .map(|z| AdapterStatus {
            label: format!("any-{z}"),
            zone: z.clone(),
            adapter_name: None,
            backend: None,
            unavailable: None,
            active_runs: 0,
            idle_devices: 0,
            devices_created: 0,
            devices_reused: 0,
            devices_discarded: 0,
            runs_bound: 0,
            resident_bytes: 0,
            warm_purged: 0,
        })
        .collect();
    place(node, policy, uses_gpu, &adapters, input_label, datasets).is_ok()
}

/// `503 no_capacity` (Retry-After), recorded as a denial entry first.
async fn no_capacity_refusal(
    s: &AppState,
    tenant: &str,
    module: Digest,
    message: String,
) -> ApiError {
    let message = format!("no live worker can take the run: {message}");
    if let Err(e) =
        s.db.record_denial(
            tenant,
            Some(module),
            "run",
            &format!("no_capacity: {message}"),
        )
        .await
    {
        tracing::error!("auditing a refused run: {e}");
    }
    s.metrics
        .runs_rejected
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: "no_capacity".into(),
        })
        .inc();
    ApiError::unavailable("no_capacity", message, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(z: &[&str]) -> BTreeSet<String> {
        z.iter().map(|s| s.to_string()).collect()
    }

    fn dataset(name: &str, label: &[&str]) -> DatasetRecord {
        DatasetRecord {
            id: format!("ds_{name}"),
            tenant_id: "tn".into(),
            name: name.into(),
            digest: Digest::of(name.as_bytes()),
            size: 1,
            label: label.iter().map(|s| s.to_string()).collect(),
            source_run: None,
            zone_stored: false,
            created_at: 0,
        }
    }

    fn adapter(label: &str, zone: &str, active: usize, ok: bool) -> AdapterStatus {
        AdapterStatus {
            label: label.into(),
            zone: zone.into(),
            adapter_name: None,
            backend: None,
            unavailable: (!ok).then(|| "gone".to_string()),
            active_runs: active,
            idle_devices: 0,
            devices_created: 0,
            devices_reused: 0,
            devices_discarded: 0,
            runs_bound: 0,
            resident_bytes: 0,
            warm_purged: 0,
        }
    }

    #[test]
    fn placement_intersects_labels_and_picks_the_first_zone() {
        let node = vec!["zone-a".to_string(), "zone-b".to_string()];
        let p = Policy::from_toml("zones = [\"zone-a\", \"zone-b\"]\n[gpu]\n").expect("policy");
        let ab = zones(&["zone-a", "zone-b"]);
        let adapters = [
            adapter("a1", "zone-a", 0, true),
            adapter("b1", "zone-b", 3, true),
            adapter("b2", "zone-b", 1, true),
        ];
        // No datasets, no GPU: the first node zone; label = tenant zones.
        assert_eq!(
            place(&node, &p, false, &adapters, &ab, &[]),
            Ok(("zone-a".into(), None, ab.clone()))
        );
        // A zone-b dataset: zone-b, its least busy adapter.
        let b = dataset("b", &["zone-b"]);
        assert_eq!(
            place(&node, &p, true, &adapters, &ab, std::slice::from_ref(&b)),
            Ok(("zone-b".into(), Some("b2".into()), zones(&["zone-b"])))
        );
        // Input label {zone-a} and a zone-b dataset: refused, naming both.
        let e =
            place(&node, &p, false, &adapters, &zones(&["zone-a"]), &[b]).expect_err("conflict");
        assert!(
            e.contains("input label {zone-a}") && e.contains("dataset b label {zone-b}"),
            "{e}"
        );
        // GPU: only zone-a's adapter is usable and the grant says zone-b.
        let p = Policy::from_toml("zones = [\"zone-a\", \"zone-b\"]\n[gpu]\nzones = [\"zone-b\"]")
            .expect("policy");
        let broken = [
            adapter("a1", "zone-a", 0, true),
            adapter("b1", "zone-b", 0, false),
        ];
        let e = place(&node, &p, true, &broken, &ab, &[]).expect_err("no adapter");
        assert!(
            e.contains("uses the GPU") && e.contains("a1 in zone-a"),
            "{e}"
        );
        // The same module without GPU imports is placed.
        assert!(place(&node, &p, false, &broken, &ab, &[]).is_ok());
        // A tenant zone the node does not serve.
        let p = Policy::from_toml("zones = [\"zone-c\"]").expect("policy");
        let e = place(&node, &p, false, &[], &zones(&["zone-c"]), &[]).expect_err("not served");
        assert!(e.contains("no zone this node serves"), "{e}");
    }
}
