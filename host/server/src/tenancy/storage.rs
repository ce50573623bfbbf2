//! Tenancy's storage interface: operators, tenants and their policy
//! versions, auditors and their grants, tokens. The SQLite implementation
//! is `sqlite.rs` (+ `tokens_sqlite.rs`).
//!
//! Contract for every implementation: a method that changes state and
//! records audit entries (tenant creation, policy versions, tokens created
//! or revoked, auditors) commits the change and its entries in **one**
//! transaction, and returns only once both are durable.

use std::future::Future;
use std::sync::Arc;

use kasbah_core::api::{Auditor, Operator, PolicyRecord, Role, Tenant, TokenCreated, TokenInfo};
use kasbah_policy::{Ceiling, Policy};

use crate::caller::Caller;
use crate::store::DbResult;

/// What a bearer token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(Caller),
    Unknown,
    Expired,
    Revoked,
}

/// A token to create, and who creates it (for its audit entry).
pub struct NewToken<'a> {
    pub role: Role,
    pub subject: &'a str,
    pub name: Option<&'a str>,
    /// ms since the Unix epoch.
    pub expires_at: i64,
    /// The tenants it reaches (one `credential` entry each; none: one entry
    /// with an empty tenant).
    pub tenants: Vec<String>,
}

/// Most tokens one listing returns (newest first).
pub const TOKEN_LIST_MAX: u32 = 1000;

/// Operators, tenants, policies, auditors.
pub trait TenancyStore: Send + Sync {
    /// A new operator; a name taken is a unique violation
    /// ([`crate::store::DbError::is_unique_violation`]).
    fn create_operator(
        &self,
        name: &str,
        ceiling: &Ceiling,
        max_tenants: u32,
        zones: Vec<String>,
    ) -> impl Future<Output = DbResult<Operator>> + Send;
    /// Replace an operator's ceiling; `false` when there is no such operator.
    fn set_operator_ceiling(
        &self,
        id: &str,
        ceiling: &Ceiling,
    ) -> impl Future<Output = DbResult<bool>> + Send;
    fn operators(&self) -> DbResult<Vec<Operator>>;
    fn operator(&self, id: &str) -> DbResult<Option<Operator>>;

    /// Create a tenant with policy version 1 (set by `set_by`: `admin` or
    /// an operator id), with its `tenant_created` and `policy_set` entries;
    /// `Ok(Err(message))` when the operator is at its tenant quota
    /// (checked in the same transaction).
    fn create_tenant(
        &self,
        name: &str,
        operator: Option<&Operator>,
        policy: &Policy,
        set_by: &str,
    ) -> impl Future<Output = DbResult<Result<(Tenant, PolicyRecord), String>>> + Send;
    fn tenant(&self, id: &str) -> DbResult<Option<Tenant>>;
    /// Every tenant (`None`), or an operator's.
    fn tenants(&self, operator: Option<&str>) -> DbResult<Vec<Tenant>>;

    /// Store a new policy version and make it current, with its
    /// `policy_set` entry. A policy identical to the current version makes
    /// no version and no entry: the current record comes back with
    /// `unchanged: true`.
    fn set_policy(
        &self,
        tenant_id: &str,
        policy: &Policy,
        set_by: &str,
    ) -> impl Future<Output = DbResult<PolicyRecord>> + Send;
    /// The tenant's current policy, read from the database.
    fn current_policy(&self, tenant_id: &str) -> DbResult<Option<PolicyRecord>>;
    /// [`Self::current_policy`] for the run path (read on every run and
    /// publish): implementations cache it, and a cache must never outlive
    /// a newer version.
    fn current_policy_cached(&self, tenant_id: &str) -> DbResult<Option<Arc<PolicyRecord>>>;
    /// Every version, oldest first.
    fn policy_versions(&self, tenant_id: &str) -> DbResult<Vec<PolicyRecord>>;

    /// Create an auditor granted `tenants` and its token, with the token's
    /// `credential` entries, in one transaction. `operator`: the operator
    /// creating it (the service checked the tenants are its own).
    fn create_auditor(
        &self,
        name: &str,
        tenants: &[String],
        operator: Option<&str>,
        expires_at: i64,
        by: &Caller,
    ) -> impl Future<Output = DbResult<(Auditor, TokenCreated)>> + Send;
    fn auditor_grants(&self, auditor_id: &str) -> DbResult<Vec<String>>;
    fn auditor_can_read(&self, auditor_id: &str, tenant_id: &str) -> DbResult<bool>;
    /// The operator that created an auditor (`None`: an admin did, or no
    /// such auditor).
    fn auditor_operator(&self, auditor_id: &str) -> DbResult<Option<String>>;
}

/// Bearer tokens (stored hashed; the secret is shown once).
pub trait TokenStore: Send + Sync {
    /// Create a token; `by`: who creates it (its `credential` entries);
    /// `None` only for the bootstrap admin token.
    fn create_token(
        &self,
        t: NewToken<'_>,
        by: Option<&Caller>,
    ) -> impl Future<Output = DbResult<TokenCreated>> + Send;
    /// On first start, or when no admin token is live any more, create a
    /// platform-admin token; `None` otherwise.
    fn bootstrap_admin(&self, ttl_ms: i64)
    -> impl Future<Output = DbResult<Option<String>>> + Send;
    /// Give tokens from before expiry existed the default lifetime from
    /// now. Returns how many.
    fn expire_unbounded_tokens(&self, ttl_ms: i64) -> impl Future<Output = DbResult<usize>> + Send;
    /// Who a bearer token belongs to, if it is live (on every request:
    /// implementations cache; a revocation takes effect on the next
    /// request all the same).
    fn caller(&self, token: &str) -> impl Future<Output = DbResult<TokenCheck>> + Send;
    fn token(&self, id: &str) -> DbResult<Option<TokenInfo>>;
    /// Tokens' metadata, newest first, at most [`TOKEN_LIST_MAX`]: every
    /// token (`None`), or those of an operator's tenants and auditors.
    fn tokens(&self, operator: Option<&str>) -> DbResult<Vec<TokenInfo>>;
    /// Revoke a token, with its `credential` entries (one per tenant in
    /// `tenants`). Returns its metadata after the change and whether this
    /// call revoked it (`false`: it already was; nothing is written).
    fn revoke_token(
        &self,
        id: &str,
        tenants: Vec<String>,
        by: &Caller,
    ) -> impl Future<Output = DbResult<Option<(TokenInfo, bool)>>> + Send;
}
