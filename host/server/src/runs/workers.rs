//! The live-worker view of the fleet (`GET /v1/fleet/workers`): what the
//! control plane's live-worker view holds (`fleet.rs`, refreshed from the
//! workers KV bucket every 500 ms), for admins (every worker) and operators
//! (the workers of their zones, showing only those zones; an operator
//! without zones sees every worker). Embedded mode has no fleet:
//! `409 fleet_disabled`.

use kasbah_core::api::{FleetAdapter, FleetWorker, Role};
use kasbah_fleet::WorkerInfo;

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::now_ms;
use crate::state::AppState;
use crate::tenancy::storage::TenancyStore;

/// The live workers the caller may see, by id.
pub fn live(s: &AppState, caller: &Caller) -> ApiResult<Vec<FleetWorker>> {
    caller.require(&[Role::Admin, Role::Operator], "list fleet workers")?;
    let Some(fleet) = s.fleet.as_ref() else {
        return Err(ApiError::conflict(
            "fleet_disabled",
            "this server executes runs itself (started without --nats): it has no fleet workers",
        ));
    };
    // An operator limited to zones sees the workers of those zones only.
    let zones: Option<Vec<String>> = match caller.role {
        Role::Operator => s
            .tenancy
            .operator(&caller.subject)?
            .map(|o| o.zones)
            .filter(|z| !z.is_empty()),
        _ => None,
    };
    let now = now_ms();
    let mut out: Vec<FleetWorker> = fleet
        .live_workers()
        .into_iter()
        .filter_map(|w| view(w, zones.as_deref(), now))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// A worker as shown, limited to `zones` (if given; `None` if it serves
/// none of them).
fn view(w: WorkerInfo, zones: Option<&[String]>, now: i64) -> Option<FleetWorker> {
    let shown = |z: &String| zones.is_none_or(|zs| zs.contains(z));
    let worker_zones: Vec<String> = w.zones.into_iter().filter(shown).collect();
    if worker_zones.is_empty() {
        return None;
    }
    Some(FleetWorker {
        id: w.id,
        zones: worker_zones,
        adapters: w
            .adapters
            .into_iter()
            .filter(|a| shown(&a.zone))
            .map(|a| FleetAdapter {
                label: a.label,
                zone: a.zone,
            })
            .collect(),
        capacity: w.capacity,
        active: w.active,
        version: w.version,
        heartbeat_age_ms: u64::try_from(now.saturating_sub(w.heartbeat_unix_ms)).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasbah_fleet::WorkerAdapter;

    #[test]
    fn operators_see_only_their_zones() {
        let w = WorkerInfo {
            id: "w1".into(),
            zones: vec!["zone-a".into(), "zone-b".into()],
            adapters: vec![WorkerAdapter {
                label: "gpu0".into(),
                zone: "zone-b".into(),
            }],
            capacity: 4,
            active: 1,
            version: "0.1.0".into(),
            heartbeat_unix_ms: 1_000,
        };
        let all = view(w.clone(), None, 1_500).expect("shown");
        assert_eq!((all.zones.len(), all.adapters.len()), (2, 1));
        assert_eq!(all.heartbeat_age_ms, 500);
        let a = view(w.clone(), Some(&["zone-a".to_string()]), 1_500).expect("shown");
        assert_eq!(a.zones, ["zone-a"]);
        assert!(a.adapters.is_empty(), "zone-b's adapter is not shown");
        assert!(view(w.clone(), Some(&["zone-c".to_string()]), 1_500).is_none());
        // A clock step back reads as age 0, never a wrap.
        assert_eq!(view(w, None, 0).expect("shown").heartbeat_age_ms, 0);
    }
}
