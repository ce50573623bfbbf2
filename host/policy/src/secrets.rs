//! `[secrets]`: which of the tenant's stored secrets a run gets, and how.
//!
//! ```toml
//! [secrets.api_key]            # the stored secret `api_key` (`kasbah secret set api_key`)
//! env = "API_KEY"              # as this environment variable (UTF-8 values without NUL)
//! file = "/secrets/api_key"    # and/or as this read-only file
//! ```
//!
//! A grant names a secret, never holds its value: the value is stored
//! encrypted by the server and decrypted for each run that is granted it.
//! Secret names are `[a-z0-9_-]{1,64}` ([`is_secret_name`]). Rules checked
//! by [`Policy::validate`](crate::Policy::validate): at most
//! [`MAX_SECRET_GRANTS`] grants, each with `env` or `file` (or both); env
//! names `[A-Za-z_][A-Za-z0-9_]*` (at most 128 bytes), none also in `[env]`
//! or given twice; files absolute, at most 256 bytes, no `.`/`..`
//! components, not directly under `/`, none twice, and the directory
//! holding a file (which is preopened read-only, with nothing in it but the
//! run's secret files) neither is nor lies inside or above a `[[files]]`
//! guest path or `/datasets`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::{DATASETS_GUEST_PATH, Policy};

/// Most secrets one policy grants (and so one run gets).
pub const MAX_SECRET_GRANTS: usize = 32;
/// Longest guest path of a secret file.
pub const MAX_SECRET_PATH: usize = 256;
/// Longest environment variable name of a secret.
pub const MAX_SECRET_ENV_NAME: usize = 128;

/// How one secret reaches a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretGrant {
    /// Environment variable that holds the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Absolute guest path of a read-only file that holds the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A secret's name: `[a-z0-9_-]{1,64}`.
pub fn is_secret_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An environment variable name a secret may be delivered as.
pub fn is_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_SECRET_ENV_NAME
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The directory part of a secret file's guest path (`/secrets/a` →
/// `/secrets`): what the runtime preopens.
pub fn secret_dir(file: &str) -> &str {
    match file.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &file[..i],
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
}

pub(crate) fn problems(p: &Policy, out: &mut Vec<String>) {
    let grants: &BTreeMap<String, SecretGrant> = &p.secrets;
    if grants.len() > MAX_SECRET_GRANTS {
        out.push(format!("secrets: at most {MAX_SECRET_GRANTS} secrets"));
    }
    let mut envs = BTreeSet::new();
    let mut files = BTreeSet::new();
    for (name, g) in grants {
        if !is_secret_name(name) {
            out.push(format!(
                "secrets: {name:?} is not a secret name ([a-z0-9_-]{{1,64}})"
            ));
        }
        if g.env.is_none() && g.file.is_none() {
            out.push(format!("secrets.{name}: give `env`, `file` or both"));
        }
        if let Some(e) = &g.env {
            if !is_env_name(e) {
                out.push(format!(
                    "secrets.{name}.env: {e:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_SECRET_ENV_NAME} bytes)"
                ));
            } else if p.env.vars.contains_key(e) || p.env.inherit.contains(e) {
                out.push(format!("secrets.{name}.env: {e} is also set by [env]"));
            } else if !envs.insert(e.as_str()) {
                out.push(format!("secrets.{name}.env: {e} is given to two secrets"));
            }
        }
        if let Some(f) = &g.file {
            let dir = secret_dir(f);
            if f.len() > MAX_SECRET_PATH
                || !f.starts_with('/')
                || f.ends_with('/')
                || f.contains('\0')
                || f.split('/')
                    .skip(1)
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                out.push(format!(
                    "secrets.{name}.file: {f:?} must be an absolute file path without '.', '..' or empty components, at most {MAX_SECRET_PATH} bytes"
                ));
            } else if dir == "/" {
                out.push(format!(
                    "secrets.{name}.file: {f:?} must be in a directory (such as /secrets), not directly under /"
                ));
            } else if !files.insert(f.as_str()) {
                out.push(format!("secrets.{name}.file: {f} is given to two secrets"));
            } else if overlaps(dir, DATASETS_GUEST_PATH) {
                out.push(format!(
                    "secrets.{name}.file: {dir} overlaps the dataset mounts ({DATASETS_GUEST_PATH})"
                ));
            } else if let Some(d) = p.files.iter().find(|d| overlaps(dir, &d.guest)) {
                out.push(format!(
                    "secrets.{name}.file: {dir} overlaps the [[files]] mount {}",
                    d.guest
                ));
            }
        }
    }
}

impl Policy {
    /// Whether a granted secret is delivered as a file (which needs
    /// `wasi:filesystem`).
    pub fn secret_files(&self) -> bool {
        self.secrets.values().any(|g| g.file.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(toml: &str) -> Vec<String> {
        match Policy::from_toml(toml) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    #[test]
    fn grants_parse_and_round_trip() {
        let p = Policy::from_toml(
            "[secrets.api_key]\nenv = \"API_KEY\"\nfile = \"/secrets/api_key\"\n[secrets.db]\nfile = \"/run/keys/db\"\n",
        )
        .expect("valid");
        assert_eq!(p.secrets.len(), 2);
        assert_eq!(p.secrets["api_key"].env.as_deref(), Some("API_KEY"));
        assert!(p.secret_files());
        let back = Policy::from_json(&serde_json::to_string(&p).expect("json")).expect("back");
        assert_eq!(back, p);
        assert_eq!(secret_dir("/secrets/api_key"), "/secrets");
        assert_eq!(secret_dir("/run/keys/db"), "/run/keys");
    }

    #[test]
    fn bad_grants_are_refused_each_named() {
        for (toml, want) in [
            ("[secrets.API]\nenv = \"A\"", "not a secret name"),
            ("[secrets.a]\n", "give `env`, `file` or both"),
            ("[secrets.a]\nenv = \"1X\"", "not a variable name"),
            ("[secrets.a]\nenv = \"A=B\"", "not a variable name"),
            (
                "[env]\nvars = { A = \"x\" }\n[secrets.a]\nenv = \"A\"",
                "also set by [env]",
            ),
            (
                "[secrets.a]\nenv = \"A\"\n[secrets.b]\nenv = \"A\"",
                "given to two secrets",
            ),
            ("[secrets.a]\nfile = \"secrets/a\"", "absolute file path"),
            (
                "[secrets.a]\nfile = \"/secrets/../etc/a\"",
                "absolute file path",
            ),
            ("[secrets.a]\nfile = \"/secrets/\"", "absolute file path"),
            ("[secrets.a]\nfile = \"/a\"", "not directly under /"),
            (
                "[secrets.a]\nfile = \"/s/a\"\n[secrets.b]\nfile = \"/s/a\"",
                "given to two secrets",
            ),
            ("[secrets.a]\nfile = \"/datasets/a\"", "dataset mounts"),
            (
                "[[files]]\nhost = \"/srv\"\nguest = \"/data\"\n[secrets.a]\nfile = \"/data/keys/a\"",
                "[[files]] mount /data",
            ),
            (
                "[[files]]\nhost = \"/srv\"\nguest = \"/s/inner\"\n[secrets.a]\nfile = \"/s/a\"",
                "[[files]] mount /s/inner",
            ),
            ("[secrets.a]\nenv = \"A\"\nvalue = \"x\"", "unknown field"),
        ] {
            let p = problems_of(toml);
            assert!(
                p.iter().any(|m| m.contains(want)),
                "{toml:?}: {p:?} should say {want:?}"
            );
        }
        let many: String = (0..=MAX_SECRET_GRANTS)
            .map(|i| format!("[secrets.s{i}]\nenv = \"S{i}\"\n"))
            .collect();
        assert!(problems_of(&many).iter().any(|m| m.contains("at most")));
        // Siblings are fine: two files in one directory.
        assert!(
            problems_of("[secrets.a]\nfile = \"/s/a\"\n[secrets.b]\nfile = \"/s/b\"").is_empty()
        );
    }

    #[test]
    fn ceilings_grant_secrets_only_when_they_say_so() {
        let p = Policy::from_toml("[secrets.a]\nenv = \"A\"").expect("valid");
        let bounds = crate::Bounds {
            zones: &[],
            files: None,
        };
        assert!(p.exceeding(&crate::Ceiling::standard(), bounds).is_empty());
        let ex = p.exceeding(&crate::Ceiling::default(), bounds);
        assert!(ex.iter().any(|e| e.field == "secrets.a"), "{ex:?}");
        let c: crate::Ceiling = toml::from_str("secrets = true").expect("ceiling");
        assert!(p.exceeding(&c, bounds).is_empty());
    }

    #[test]
    fn file_grants_need_the_filesystem_import() {
        let p = Policy::from_toml("[secrets.a]\nfile = \"/s/a\"").expect("valid");
        assert!(
            p.refused_imports(["wasi:filesystem/types@0.2.6"])
                .is_empty()
        );
        let p = Policy::from_toml("[secrets.a]\nenv = \"A\"").expect("valid");
        assert_eq!(p.refused_imports(["wasi:filesystem/types@0.2.6"]).len(), 1);
    }
}
