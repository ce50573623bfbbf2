//! Token rows in SQLite and the in-memory cache of live tokens, shared by
//! `tokens_sqlite.rs` (the token store) and `sqlite.rs` (an auditor's
//! token is created in the auditor's transaction).

use std::collections::HashMap;

use kasbah_audit::Entry;
use kasbah_core::api::{Role, TokenCreated, TokenInfo};
use rusqlite::{Connection, params};

use super::storage::NewToken;
use crate::audit::entries;
use crate::caller::Caller;
use crate::ids::{fill_random, hash_token, new_id, now_ms};

/// Live tokens seen before. Only revocation makes a cached token invalid
/// (expiry is checked against the clock on every hit). A lookup that read
/// the database before a revocation committed must not put the token back
/// after the revocation evicted it: revocation bumps `generation` (under
/// this same lock, after its commit), and a lookup caches what it read only
/// if the generation is still the one it saw before reading.
#[derive(Default)]
pub(super) struct TokenCache {
    pub(super) generation: u64,
    pub(super) live: HashMap<String, CachedToken>,
}

#[derive(Clone)]
pub(super) struct CachedToken {
    pub(super) caller: Caller,
    pub(super) expires_at: Option<i64>,
    /// The `last_used_at` last written (or read) for this token.
    pub(super) last_used_at: Option<i64>,
}

/// `last_used_at` is written at most this often per token (ms).
pub const LAST_USED_EVERY_MS: i64 = 60_000;

pub(super) fn row_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    let role: String = r.get("role")?;
    let revoked_at: Option<i64> = r.get("revoked_at")?;
    Ok(TokenInfo {
        id: r.get("id")?,
        role: Role::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown role {role:?}").into(),
            )
        })?,
        subject: r.get("subject")?,
        name: r.get("name")?,
        created_at: r.get("created_at")?,
        created_by: r.get("created_by")?,
        expires_at: r.get("expires_at")?,
        last_used_at: r.get("last_used_at")?,
        revoked: revoked_at.is_some(),
        revoked_at,
    })
}

pub(super) const TOKEN_COLUMNS: &str =
    "id, role, subject, name, created_at, created_by, expires_at, last_used_at, revoked_at";

/// A token row to insert (see [`Db::create_token`]).
pub(super) struct TokenRow {
    hash: String,
    id: String,
    role: Role,
    subject: String,
    name: Option<String>,
    created_at: i64,
    created_by: Option<String>,
    expires_at: i64,
}

pub(super) fn new_token_row(
    t: &NewToken<'_>,
    by: Option<&Caller>,
) -> (TokenCreated, TokenRow, Vec<Entry>) {
    let mut b = [0u8; 32];
    fill_random(&mut b);
    let secret = format!("kbh_{}", hex::encode(b));
    let id = new_id("tk");
    let entries = by.map_or_else(Vec::new, |by| {
        entries::credential(
            "created",
            &id,
            t.role,
            t.subject,
            &t.tenants,
            Some(t.expires_at),
            by,
        )
    });
    let row = TokenRow {
        hash: hash_token(&secret),
        id: id.clone(),
        role: t.role,
        subject: t.subject.to_string(),
        name: t.name.map(str::to_string),
        created_at: now_ms(),
        created_by: by.map(|b| format!("{}:{}", b.role.as_str(), b.subject)),
        expires_at: t.expires_at,
    };
    let created = TokenCreated {
        token: secret,
        role: t.role,
        subject: t.subject.to_string(),
        id,
        expires_at: Some(t.expires_at),
    };
    (created, row, entries)
}

pub(super) fn insert_token(c: &Connection, t: &TokenRow) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO tokens(hash, id, role, subject, name, created_at, created_by, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.hash,
            t.id,
            t.role.as_str(),
            t.subject,
            t.name,
            t.created_at,
            t.created_by,
            t.expires_at
        ],
    )?;
    Ok(())
}
