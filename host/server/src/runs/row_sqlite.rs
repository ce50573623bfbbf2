//! The placement columns of a run's row (`runs_inflight` and `runs`):
//! written with the in-flight row, copied into the final one, read back
//! into its record. Names and versions of granted secrets ride here too
//! (column `secrets`, JSON), never values.

use super::storage::{ResidencyColumns, RunResidency};
use crate::store::{from_json, json};

/// A run's residency as the columns `zone, adapter, datasets, input_label,
/// output_label, store_output_as, secrets` of its row (all NULL without
/// placement; `secrets` NULL when none were granted).
pub(crate) type ResidencyParams = [Option<String>; 7];

pub(crate) fn residency_params(r: Option<&RunResidency>) -> rusqlite::Result<ResidencyParams> {
    let Some(r) = r else {
        return Ok(Default::default());
    };
    Ok([
        Some(r.zone.clone()),
        r.adapter.clone(),
        Some(json(&r.datasets)?),
        Some(json(&r.input_label)?),
        Some(json(&r.output_label)?),
        r.store_output_as.clone(),
        if r.secrets.is_empty() {
            None
        } else {
            Some(json(&r.secrets)?)
        },
    ])
}

/// Read `zone, adapter, datasets, input_label, output_label, output_dataset`
/// starting at column `at`.
pub(crate) fn residency_columns(
    r: &rusqlite::Row<'_>,
    at: usize,
) -> rusqlite::Result<ResidencyColumns> {
    let list = |i: usize| -> rusqlite::Result<Vec<String>> {
        match r.get::<_, Option<String>>(at + i)? {
            Some(s) => from_json(&s),
            None => Ok(Vec::new()),
        }
    };
    Ok(ResidencyColumns {
        zone: r.get(at)?,
        adapter: r.get(at + 1)?,
        datasets: match r.get::<_, Option<String>>(at + 2)? {
            Some(s) => from_json(&s)?,
            None => Vec::new(),
        },
        input_label: list(3)?,
        output_label: list(4)?,
        output_dataset: r.get(at + 5)?,
        worker: None,
        secrets: Vec::new(),
    })
}
