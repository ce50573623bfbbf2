//! The log served as C2SP tlog-tiles (`GET /checkpoint`, `/tile/<L>/<N>`,
//! `/tile/entries/<N>`): the rules, no HTTP. Who may read them is the
//! server's configuration (`audit_tiles_public`,
//! `audit_entry_bundles_public`; ARCHITECTURE.md argues the defaults).
//!
//! A hash tile is one batched read of at most 256 stored subtree hashes; an
//! entry bundle one range read of at most 256 entry rows plus the level-0
//! tile they must hash to. Nothing is recomputed, so a request's work is
//! bounded whatever the log's size.

use kasbah_audit::Hash;
use kasbah_audit::tiles::{self, Tile, TileError, TileKind};
use kasbah_core::api::Role;

use super::log as audit;
use super::service::{corrupt, tree_error};
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A tile's bytes and whether it is full (immutable) or partial.
pub struct TileBytes {
    pub bytes: Vec<u8>,
    pub full: bool,
}

/// Whether `path` (after `tile/`) needs a token, and which role: `None`
/// when it is public under this configuration.
pub fn required_role(s: &AppState, path: &str) -> Option<&'static [Role]> {
    let entries = path.starts_with("entries/");
    match (
        entries,
        s.config.audit_entry_bundles_public,
        s.config.audit_tiles_public,
    ) {
        (true, true, _) | (false, _, true) => None,
        // Every tenant's entries: admins only.
        (true, false, _) => Some(&[Role::Admin]),
        // Hashes and sizes only, as the proof endpoints: any caller.
        (false, _, false) => Some(&[Role::Admin, Role::Operator, Role::Developer, Role::Auditor]),
    }
}

/// Check the caller against [`required_role`].
pub fn authorize(s: &AppState, path: &str, caller: Option<&Caller>) -> ApiResult<()> {
    match (required_role(s, path), caller) {
        (None, _) => Ok(()),
        (Some(roles), Some(c)) => c.require(roles, "read the log's entry bundles"),
        (Some(_), None) => Err(ApiError::unauthenticated(
            "missing `Authorization: Bearer <token>`",
        )),
    }
}

/// `GET /checkpoint`: the same note as `GET /v1/audit/checkpoint`.
pub fn checkpoint(s: &AppState) -> ApiResult<String> {
    super::service::checkpoint(s)
}

fn parse(path: &str) -> ApiResult<Tile> {
    Tile::parse(path).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

/// `GET /tile/<path>`: a hash tile or an entry bundle of the tree at the
/// current size; 404 beyond it.
pub fn tile(s: &AppState, path: &str) -> ApiResult<TileBytes> {
    let tile = parse(path)?;
    let not_found = |size: u64| {
        ApiError::not_found(&format!(
            "tile {} (the log has {size} entries)",
            tile.path()
        ))
    };
    let bytes = s.db.audit_read(|snap| -> ApiResult<Vec<u8>> {
        if !tile.exists_at(snap.size) {
            return Err(not_found(snap.size));
        }
        let store = snap.store_at(snap.size);
        match tile.kind {
            TileKind::Hashes(_) => hash_tile(&store, &tile),
            TileKind::Entries => {
                let range = tile.entry_range().ok_or_else(|| not_found(snap.size))?;
                let rows = audit::entries(snap.conn, range.clone(), None, usize::from(tile.width))?;
                // Each entry must hash to its leaf in the level-0 tile.
                let leaves = hash_tile(
                    &store,
                    &Tile {
                        kind: TileKind::Hashes(0),
                        ..tile
                    },
                )?;
                if rows.len() != usize::from(tile.width) {
                    return Err(corrupt(format!(
                        "entries {range:?}: {} rows stored",
                        rows.len()
                    )));
                }
                for (row, leaf) in rows.iter().zip(leaves.chunks_exact(32)) {
                    if Hash::leaf(&row.bytes).as_bytes()[..] != *leaf {
                        return Err(corrupt(format!(
                            "entry {} does not hash to its stored leaf",
                            row.index
                        )));
                    }
                }
                tiles::encode_bundle(range.start, rows.iter().map(|r| r.bytes.as_slice()))
                    .map_err(|e| ApiError::fault("entry_too_large_for_bundle", e.to_string()))
            }
        }
    })??;
    Ok(TileBytes {
        bytes,
        full: tile.is_full(),
    })
}

fn hash_tile(store: &audit::SqliteStore<'_>, tile: &Tile) -> ApiResult<Vec<u8>> {
    tiles::read_hash_tile(store, tile).map_err(|e| match e {
        TileError::NotFound(what, size) => {
            ApiError::not_found(&format!("tile {what} (the log has {size} entries)"))
        }
        TileError::Tree(e) => tree_error(e),
    })
}
