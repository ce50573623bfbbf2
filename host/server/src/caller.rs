//! Who is calling: the role and subject a bearer token stands for, and the
//! role-level rules that need nothing but the caller. The rules that read
//! state (which tenants a caller reads) are in `tenancy/access.rs`; the
//! token check itself in `auth.rs`.

use kasbah_core::api::{Role, Tenant};

use crate::error::{ApiError, ApiResult};

/// The caller a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub subject: String,
}

impl Caller {
    /// 403 unless the caller has one of `roles` (a role-level refusal: the
    /// caller knows the endpoint exists; no object is revealed).
    pub fn require(&self, roles: &[Role], action: &str) -> ApiResult<()> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a {} token cannot {action}",
                self.role.as_str()
            )))
        }
    }

    /// Admins manage every tenant; operators their own.
    pub fn manages(&self, t: &Tenant) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Operator => t.operator_id.as_deref() == Some(self.subject.as_str()),
            _ => false,
        }
    }
}
