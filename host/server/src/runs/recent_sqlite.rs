//! Which tenants ran which modules lately, for the start-up warm-up
//! (`warmup.rs`): read from the newest rows of `runs` (rowid order is
//! insertion order; no index needed, at most `rows` rows read).

use kasbah_core::Digest;

use super::sqlite::SqliteRuns;
use crate::store::{DbResult, parse_digest};

impl SqliteRuns {
    /// Distinct (tenant, module) pairs among the newest `rows` finished
    /// runs, most recent first, at most `max` of them.
    pub fn recent_modules(&self, rows: usize, max: usize) -> DbResult<Vec<(String, Digest)>> {
        let newest: Vec<(String, Digest)> = self.db.with(|c| {
            c.prepare("SELECT tenant_id, module_digest FROM runs ORDER BY rowid DESC LIMIT ?1")?
                .query_map([i64::try_from(rows).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, parse_digest(&r.get::<_, String>(1)?)?))
                })?
                .collect()
        })?;
        let mut out: Vec<(String, Digest)> = Vec::new();
        for pair in newest {
            if out.len() >= max {
                break;
            }
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        Ok(out)
    }
}
