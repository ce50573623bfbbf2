//! Tokens in SQLite: stored as the SHA-256 of the secret, with id, role,
//! subject, expiry, last use, revocation and creator. Live tokens are
//! cached in memory (see `token_rows.rs`).

use kasbah_core::api::{Role, TokenCreated, TokenInfo};
use rusqlite::{OptionalExtension, params};

use super::sqlite::SqliteTenancy;
use super::storage::{NewToken, TOKEN_LIST_MAX, TokenCheck, TokenStore};
use super::token_rows::{
    CachedToken, LAST_USED_EVERY_MS, TOKEN_COLUMNS, insert_token, new_token_row, row_token,
};
use crate::audit::entries;
use crate::caller::Caller;
use crate::ids::{hash_token, now_ms};
use crate::store::{CACHE_MAX, DbResult, lock};

impl TokenStore for SqliteTenancy {
    /// Create a token; returns the secret (shown once) with its id. `by`:
    /// who creates it (its `credential` entries); `None` only for the
    /// bootstrap admin token.
    async fn create_token(&self, t: NewToken<'_>, by: Option<&Caller>) -> DbResult<TokenCreated> {
        let (created, row, entries) = new_token_row(&t, by);
        self.db
            .write(move |c| {
                insert_token(c, &row)?;
                Ok(((), entries))
            })
            .await?;
        Ok(created)
    }

    /// On first start, or when no admin token is live any more (all
    /// expired or revoked), create a platform-admin token; `None` otherwise.
    async fn bootstrap_admin(&self, ttl_ms: i64) -> DbResult<Option<String>> {
        let has_admin: bool = self.db.with(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM tokens WHERE role = 'admin' AND revoked_at IS NULL
                     AND (expires_at IS NULL OR expires_at > ?1))",
                [now_ms()],
                |r| r.get(0),
            )
        })?;
        if has_admin {
            return Ok(None);
        }
        self.create_token(
            NewToken {
                role: Role::Admin,
                subject: "admin",
                name: Some("bootstrap"),
                expires_at: now_ms().saturating_add(ttl_ms),
                tenants: Vec::new(),
            },
            None,
        )
        .await
        .map(|t| Some(t.token))
    }

    /// Give tokens from before expiry existed the default lifetime from
    /// now (so no token lives for ever). Returns how many.
    async fn expire_unbounded_tokens(&self, ttl_ms: i64) -> DbResult<usize> {
        let expires = now_ms().saturating_add(ttl_ms);
        let (n, _) = self
            .db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE tokens SET expires_at = ?1 WHERE expires_at IS NULL",
                    [expires],
                )?;
                Ok((n, Vec::new()))
            })
            .await?;
        if n > 0 {
            let mut cache = lock(&self.callers);
            cache.generation += 1;
            cache.live.clear();
        }
        Ok(n)
    }

    /// Who a bearer token belongs to, if it is live. Reads the database for
    /// tokens not seen before (and for revoked ones, which are never
    /// cached); checks expiry on every call; records the use at most once
    /// a minute per token (a background write).
    async fn caller(&self, token: &str) -> DbResult<TokenCheck> {
        let hash = hash_token(token);
        let now = now_ms();
        let (cached, generation) = {
            let cache = lock(&self.callers);
            (cache.live.get(&hash).cloned(), cache.generation)
        };
        let tok = match cached {
            Some(t) => t,
            None => {
                type Row = (String, String, Option<i64>, Option<i64>, Option<i64>);
                let row: Option<Row> = self.db.with(|c| {
                    c.prepare_cached(
                        "SELECT role, subject, expires_at, revoked_at, last_used_at
                         FROM tokens WHERE hash = ?1",
                    )?
                    .query_row([&hash], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()
                })?;
                let Some((role, subject, expires_at, revoked_at, last_used_at)) = row else {
                    return Ok(TokenCheck::Unknown);
                };
                let Some(role) = Role::parse(&role) else {
                    return Ok(TokenCheck::Unknown);
                };
                if revoked_at.is_some() {
                    return Ok(TokenCheck::Revoked);
                }
                let t = CachedToken {
                    caller: Caller { role, subject },
                    expires_at,
                    last_used_at,
                };
                let mut cache = lock(&self.callers);
                if cache.generation == generation {
                    if cache.live.len() >= CACHE_MAX {
                        cache.live.clear();
                    }
                    cache.live.insert(hash.clone(), t.clone());
                }
                t
            }
        };
        if tok.expires_at.is_some_and(|e| e <= now) {
            return Ok(TokenCheck::Expired);
        }
        if tok
            .last_used_at
            .is_none_or(|l| now.saturating_sub(l) >= LAST_USED_EVERY_MS)
        {
            let due = {
                let mut cache = lock(&self.callers);
                match cache.live.get_mut(&hash) {
                    Some(c) if c.last_used_at == tok.last_used_at => {
                        c.last_used_at = Some(now);
                        true
                    }
                    // Another request already recorded this minute's use.
                    Some(_) => false,
                    // Not cached (a full cache, a revocation in between):
                    // record it anyway; the write is idempotent.
                    None => true,
                }
            };
            if due {
                self.db
                    .write_nowait(move |c| {
                        c.prepare_cached(
                            "UPDATE tokens SET last_used_at = ?1
                         WHERE hash = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
                        )?
                        .execute(params![now, hash])?;
                        Ok(())
                    })
                    .await?;
            }
        }
        Ok(TokenCheck::Valid(tok.caller))
    }

    /// One token's metadata.
    fn token(&self, id: &str) -> DbResult<Option<TokenInfo>> {
        self.db.with(|c| {
            c.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))?
                .query_row([id], row_token)
                .optional()
        })
    }

    /// Tokens' metadata, newest first, at most [`TOKEN_LIST_MAX`]: every
    /// token (`None`), or those of an operator's tenants and auditors.
    fn tokens(&self, operator: Option<&str>) -> DbResult<Vec<TokenInfo>> {
        self.db.with(|c| match operator {
            None => c
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at DESC, id LIMIT ?1"
                ))?
                .query_map([TOKEN_LIST_MAX], row_token)?
                .collect(),
            Some(op) => c
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens
                     WHERE (role = 'developer' AND subject IN
                               (SELECT id FROM tenants WHERE operator_id = ?1))
                        OR (role = 'auditor' AND subject IN
                               (SELECT id FROM auditors WHERE operator_id = ?1))
                     ORDER BY created_at DESC, id LIMIT ?2"
                ))?
                .query_map(params![op, TOKEN_LIST_MAX], row_token)?
                .collect(),
        })
    }

    /// Revoke a token: from the next request on it is refused. Returns the
    /// token's metadata after the change, and whether this call revoked it
    /// (`false`: it was already revoked; nothing is written).
    async fn revoke_token(
        &self,
        id: &str,
        tenants: Vec<String>,
        by: &Caller,
    ) -> DbResult<Option<(TokenInfo, bool)>> {
        let (id, by) = (id.to_string(), by.clone());
        let (result, _) = self
            .db
            .write(move |c| {
                let Some(t) = c
                    .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))?
                    .query_row([&id], row_token)
                    .optional()?
                else {
                    return Ok((None, Vec::new()));
                };
                if t.revoked {
                    return Ok((Some((t, false)), Vec::new()));
                }
                let now = now_ms();
                c.execute(
                    "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2",
                    params![now, id],
                )?;
                let entries = entries::credential(
                    "revoked",
                    &id,
                    t.role,
                    &t.subject,
                    &tenants,
                    t.expires_at,
                    &by,
                );
                let t = TokenInfo {
                    revoked: true,
                    revoked_at: Some(now),
                    ..t
                };
                Ok((Some((t, true)), entries))
            })
            .await?;
        if let Some((_, true)) = &result {
            // After the commit: a lookup that read the row before it must
            // not cache it (see `TokenCache`).
            let mut cache = lock(&self.callers);
            cache.generation += 1;
            cache.live.clear();
        }
        Ok(result)
    }
}

impl SqliteTenancy {
    /// Cache the `limit` most recently used live tokens (the start-up
    /// warm-up: a restarted server's first requests need no token read).
    /// As a lookup would: revoked and expired tokens are left out, expiry
    /// is still checked on every hit, and nothing is cached if a
    /// revocation bumped the cache's generation meanwhile. Returns how
    /// many were added.
    pub fn warm_callers(&self, limit: usize) -> DbResult<usize> {
        type Row = (String, String, String, Option<i64>, Option<i64>);
        let generation = lock(&self.callers).generation;
        let rows: Vec<Row> = self.db.with(|c| {
            c.prepare(
                "SELECT hash, role, subject, expires_at, last_used_at FROM tokens
                 WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)
                   AND last_used_at IS NOT NULL
                 ORDER BY last_used_at DESC LIMIT ?2",
            )?
            .query_map(
                params![now_ms(), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?
            .collect()
        })?;
        let mut cache = lock(&self.callers);
        if cache.generation != generation {
            return Ok(0);
        }
        let mut added = 0;
        for (hash, role, subject, expires_at, last_used_at) in rows {
            let Some(role) = Role::parse(&role) else {
                continue;
            };
            if cache.live.len() >= CACHE_MAX {
                break;
            }
            cache.live.entry(hash).or_insert_with(|| {
                added += 1;
                CachedToken {
                    caller: Caller { role, subject },
                    expires_at,
                    last_used_at,
                }
            });
        }
        Ok(added)
    }
}
