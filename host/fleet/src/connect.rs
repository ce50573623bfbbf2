//! Connecting to NATS with a user's credentials, the same way for the
//! control plane (`kasbah serve --nats`) and the zone workers.

use std::path::PathBuf;

use anyhow::Context as _;

/// The default reply-subject prefix (NATS's own).
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// How a process authenticates to NATS: user and password (what
/// [`crate::nats_config`] generates), or a `.creds` file (JWT + nkey seed),
/// or nothing; and the prefix of its reply subjects, which its user's
/// permissions must allow it to subscribe to (`<prefix>.>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub creds: Option<PathBuf>,
    pub inbox_prefix: String,
}

impl Default for NatsAuth {
    fn default() -> Self {
        NatsAuth {
            user: None,
            password: None,
            creds: None,
            inbox_prefix: DEFAULT_INBOX_PREFIX.into(),
        }
    }
}

/// Whether `p` is a valid reply-subject prefix: 1-128 of `[A-Za-z0-9_.-]`,
/// not starting or ending with `.`, no empty token.
pub fn is_inbox_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && p.split('.').all(|t| !t.is_empty())
}

impl NatsAuth {
    /// Every problem with the settings, named by their configuration keys
    /// (`nats_user`, `nats_password`, `nats_creds`, `nats_inbox_prefix`).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.user.is_some() != self.password.is_some() {
            p.push("nats_user and nats_password go together".into());
        }
        if self.creds.is_some() && self.user.is_some() {
            p.push("nats_creds and nats_user exclude each other".into());
        }
        if self.user.as_deref().is_some_and(str::is_empty) {
            p.push("nats_user is empty".into());
        }
        if !is_inbox_prefix(&self.inbox_prefix) {
            p.push("nats_inbox_prefix must be 1-128 of [A-Za-z0-9_.-], no empty token".into());
        }
        p
    }

    /// The connect options (client name, inbox prefix, credentials).
    pub async fn options(&self, name: &str) -> anyhow::Result<async_nats::ConnectOptions> {
        let problems = self.problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .custom_inbox_prefix(&self.inbox_prefix);
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("NATS credentials {}", creds.display()))?;
        }
        Ok(options)
    }
}

/// Connect to the NATS server(s) at `url` (comma-separated URLs) as
/// `name`, with `auth`. The client reconnects on its own afterwards.
pub async fn connect(url: &str, name: &str, auth: &NatsAuth) -> anyhow::Result<async_nats::Client> {
    let options = auth.options(name).await?;
    let who = match &auth.user {
        Some(u) => format!(" as {u:?}"),
        None => String::new(),
    };
    options
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {url}{who}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_problems_are_named_by_key() {
        assert!(NatsAuth::default().problems().is_empty());
        let bad = NatsAuth {
            user: Some("u".into()),
            password: None,
            creds: Some("x.creds".into()),
            inbox_prefix: "_INBOX..x".into(),
        };
        let p = bad.problems().join("; ");
        for needle in ["nats_password", "nats_creds", "nats_inbox_prefix"] {
            assert!(p.contains(needle), "{needle} missing from {p}");
        }
        assert!(is_inbox_prefix("_INBOX_worker-zone-a-1"));
        assert!(!is_inbox_prefix("_INBOX.>"));
        assert!(!is_inbox_prefix(".x"));
    }
}
