//! `kasbah fleet nats-config`: the nats-server configuration and the
//! per-user NATS credentials of a fleet, so that no operator hand-writes
//! subject permissions.
//!
//! One account (`KASBAH`, JetStream enabled) holds:
//! - the user [`CONTROL_PLANE_USER`] with [`control_plane_permissions`]
//!   (JetStream administration, jobs, acks, KV and object stores);
//! - `workers_per_zone` users per zone, `worker-<zone>-<n>`, each with
//!   exactly [`worker_permissions`]`([zone], inbox)`.
//!
//! Every user has its own reply prefix (`_INBOX_<user>`), so no user can
//! read another's replies, and a random password (32 bytes from the OS,
//! hex). The server configuration holds only bcrypt hashes of the
//! passwords; each user's plain password is in its credentials file
//! (`<user>.toml`: `nats_user`, `nats_password`, `nats_inbox_prefix`, the
//! top-level keys of a `kasbah worker` or `kasbah serve` configuration).
//! [`write`] creates every file with mode 0600 and never overwrites one.
//! No connection reaches the server without a user (there is no
//! `no_auth_user`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::proto::{Permissions, control_plane_permissions, worker_permissions};

/// The control plane's NATS user.
pub const CONTROL_PLANE_USER: &str = "control-plane";
/// The account every user belongs to.
pub const ACCOUNT: &str = "KASBAH";
/// The name of the server configuration file [`write`] creates.
pub const SERVER_CONFIG_FILE: &str = "nats-server.conf";
/// bcrypt cost of the stored password hashes (what `nats server passwd`
/// uses).
pub const DEFAULT_BCRYPT_COST: u32 = 11;
/// Most worker users per zone.
pub const MAX_WORKERS_PER_ZONE: u32 = 64;
/// Most zones in one configuration.
pub const MAX_ZONES: usize = 256;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The fleet's zones ([`kasbah_policy::is_zone_name`], no repeats).
    pub zones: Vec<String>,
    /// Worker users per zone (1 to [`MAX_WORKERS_PER_ZONE`]).
    pub workers_per_zone: u32,
    /// The server's client address (`listen`).
    pub listen: SocketAddr,
    /// JetStream's store directory (absolute).
    pub store_dir: PathBuf,
    /// bcrypt cost of the password hashes (4 to 31).
    pub bcrypt_cost: u32,
}

impl Spec {
    /// `zones`, one worker user per zone, `127.0.0.1:4222`, the store in
    /// `store_dir`, [`DEFAULT_BCRYPT_COST`].
    pub fn new(zones: Vec<String>, store_dir: PathBuf) -> Spec {
        Spec {
            zones,
            workers_per_zone: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 4222)),
            store_dir,
            bcrypt_cost: DEFAULT_BCRYPT_COST,
        }
    }

    /// Every problem with the spec.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.zones.is_empty() {
            p.push("no zones".into());
        }
        if self.zones.len() > MAX_ZONES {
            p.push(format!("more than {MAX_ZONES} zones"));
        }
        for (i, z) in self.zones.iter().enumerate() {
            if !kasbah_policy::is_zone_name(z) {
                p.push(format!(
                    "{z:?} is not a zone name (1-63 of lowercase letters, digits and '-', not \
                     starting or ending with '-')"
                ));
            } else if self.zones[..i].contains(z) {
                p.push(format!("zone {z:?} is named twice"));
            }
        }
        if !(1..=MAX_WORKERS_PER_ZONE).contains(&self.workers_per_zone) {
            p.push(format!(
                "workers per zone must be between 1 and {MAX_WORKERS_PER_ZONE}"
            ));
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            p.push("bcrypt cost must be between 4 and 31".into());
        }
        match self.store_dir.to_str() {
            None => p.push(format!(
                "store dir {} is not UTF-8",
                self.store_dir.display()
            )),
            Some(s) if !self.store_dir.is_absolute() => {
                p.push(format!("store dir {s:?} is not an absolute path"))
            }
            Some(s) if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) => p.push(
                format!("store dir {s:?} holds a quote, a backslash or a control character"),
            ),
            Some(_) => {}
        }
        p
    }
}

/// One NATS user of the generated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The plain password (only in the user's credentials file).
    pub password: String,
    /// Its bcrypt hash (in the server configuration).
    pub password_hash: String,
    /// The user's reply prefix (its `nats_inbox_prefix`).
    pub inbox_prefix: String,
    /// The zone of a worker user; `None` for the control plane.
    pub zone: Option<String>,
    pub permissions: Permissions,
}

impl User {
    /// The credentials file: the user's `nats_user`, `nats_password` and
    /// `nats_inbox_prefix`, as TOML top-level keys.
    pub fn credentials_toml(&self) -> String {
        let role = match &self.zone {
            Some(z) => format!("a {z} worker: top-level keys of its `kasbah worker --config` file"),
            None => "the control plane: top-level keys of its `kasbah serve --config` file".into(),
        };
        format!(
            "# NATS credentials of user {name:?}, {role}\n# (before any [table]). Written by \
             `kasbah fleet nats-config`; keep it private (mode 0600).\nnats_user = \
             {name}\nnats_password = {password}\nnats_inbox_prefix = {inbox}\n",
            name = toml_string(&self.name),
            password = toml_string(&self.password),
            inbox = toml_string(&self.inbox_prefix),
        )
    }

    /// The credentials file's name, `<user>.toml`.
    pub fn file_name(&self) -> String {
        format!("{}.toml", self.name)
    }
}

/// A generated configuration: the server's file and its users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The nats-server configuration text.
    pub server_config: String,
    /// The control plane first, then the workers zone by zone.
    pub users: Vec<User>,
}

/// Why a configuration could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    #[error("{}", .0.join("; "))]
    Spec(Vec<String>),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    #[error("hashing a password: {0}")]
    Hash(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists already: remove the old files or choose another directory", .0.display())]
    Exists(PathBuf),
}

/// The users of `spec` (control plane first), with the given passwords
/// (called once per user, in order) hashed at `spec.bcrypt_cost`.
pub fn users(
    spec: &Spec,
    mut password: impl FnMut() -> Result<String, NatsConfigError>,
) -> Result<Vec<User>, NatsConfigError> {
    let problems = spec.problems();
    if !problems.is_empty() {
        return Err(NatsConfigError::Spec(problems));
    }
    let mut plan = vec![(
        CONTROL_PLANE_USER.to_string(),
        None,
        control_plane_permissions(&inbox_prefix(CONTROL_PLANE_USER)),
    )];
    for z in &spec.zones {
        for n in 1..=spec.workers_per_zone {
            let name = format!("worker-{z}-{n}");
            let perms = worker_permissions(std::slice::from_ref(z), &inbox_prefix(&name));
            plan.push((name, Some(z.clone()), perms));
        }
    }
    plan.into_iter()
        .map(|(name, zone, permissions)| {
            let password = password()?;
            let password_hash = bcrypt::hash(&password, spec.bcrypt_cost)
                .map_err(|e| NatsConfigError::Hash(e.to_string()))?;
            Ok(User {
                inbox_prefix: inbox_prefix(&name),
                name,
                password,
                password_hash,
                zone,
                permissions,
            })
        })
        .collect()
}

/// The reply prefix of user `name`.
pub fn inbox_prefix(name: &str) -> String {
    format!("_INBOX_{name}")
}

/// A random password: 32 bytes from the operating system, hex.
pub fn random_password() -> Result<String, NatsConfigError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NatsConfigError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// The server configuration of `spec` with `users` (pure).
pub fn render(spec: &Spec, users: &[User]) -> String {
    let mut s = String::new();
    s.push_str(
        "# nats-server configuration of a kasbah fleet, written by `kasbah fleet nats-config`.\n",
    );
    s.push_str(&format!("# Zones: {}.\n", spec.zones.join(", ")));
    s.push_str(
        "# Passwords are bcrypt hashes; the plain ones are in the users' credentials files.\n",
    );
    s.push_str("# Clients without a user are refused.\n");
    s.push_str(&format!("listen: {}\n", json(&spec.listen.to_string())));
    s.push_str(&format!(
        "jetstream: {{\n  store_dir: {}\n}}\n",
        json(&spec.store_dir.to_string_lossy())
    ));
    s.push_str(&format!(
        "accounts: {{\n  {ACCOUNT}: {{\n    jetstream: enabled\n    users: [\n"
    ));
    for u in users {
        let what = match &u.zone {
            Some(z) => format!("worker of zone {z}"),
            None => "control plane".into(),
        };
        s.push_str(&format!(
            "      # {what}\n      {{\n        user: {}\n        password: {}\n        \
             permissions: {{\n          publish: {{ allow: {} }}\n          subscribe: {{ \
             allow: {} }}\n        }}\n      }}\n",
            json(&u.name),
            json(&u.password_hash),
            json_list(&u.permissions.publish),
            json_list(&u.permissions.subscribe),
        ));
    }
    s.push_str("    ]\n  }\n}\n");
    s
}

/// Generate `spec`'s configuration with random passwords.
pub fn generate(spec: &Spec) -> Result<Generated, NatsConfigError> {
    let users = users(spec, random_password)?;
    Ok(Generated {
        server_config: render(spec, &users),
        users,
    })
}

/// Write `generated` into `dir` (created, mode 0700, if missing):
/// [`SERVER_CONFIG_FILE`] and one [`User::file_name`] per user, each new
/// and mode 0600. Refuses, before writing anything, if one exists already.
/// Returns the paths written, the server configuration first.
pub fn write(dir: &Path, generated: &Generated) -> Result<Vec<PathBuf>, NatsConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NatsConfigError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut files = vec![(
        dir.join(SERVER_CONFIG_FILE),
        generated.server_config.clone(),
    )];
    for u in &generated.users {
        files.push((dir.join(u.file_name()), u.credentials_toml()));
    }
    if let Some((path, _)) = files
        .iter()
        .find(|(p, _)| std::fs::symlink_metadata(p).is_ok())
    {
        return Err(NatsConfigError::Exists(path.clone()));
    }
    let mut written = Vec::new();
    for (path, text) in files {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => NatsConfigError::Exists(path.clone()),
                _ => NatsConfigError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// A double-quoted string (JSON's escapes, which nats-server's
/// configuration parser reads; no `$variable` expansion inside quotes).
fn json(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| json(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn spec(zones: &[&str], per_zone: u32) -> Spec {
        Spec {
            workers_per_zone: per_zone,
            bcrypt_cost: 4,
            ..Spec::new(
                zones.iter().map(|z| z.to_string()).collect(),
                PathBuf::from("/var/lib/kasbah-nats"),
            )
        }
    }

    #[test]
    fn workers_get_exactly_their_zone_permissions() -> Result<(), NatsConfigError> {
        let g = generate(&spec(&["zone-a", "zone-b"], 2))?;
        let names: Vec<&str> = g.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "control-plane",
                "worker-zone-a-1",
                "worker-zone-a-2",
                "worker-zone-b-1",
                "worker-zone-b-2"
            ]
        );
        let cp = &g.users[0];
        assert_eq!(cp.zone, None);
        assert_eq!(
            cp.permissions,
            control_plane_permissions("_INBOX_control-plane")
        );
        for u in &g.users[1..] {
            let zone = u.zone.clone().expect("a worker has a zone");
            assert!(u.name.starts_with(&format!("worker-{zone}-")));
            assert_eq!(u.inbox_prefix, format!("_INBOX_{}", u.name));
            assert_eq!(
                u.permissions,
                worker_permissions(std::slice::from_ref(&zone), &u.inbox_prefix)
            );
            // Its replies and its zone's cancels; nothing of another zone.
            assert_eq!(
                u.permissions.subscribe,
                [
                    format!("{}.>", u.inbox_prefix),
                    format!("kasbah.cancel.{zone}")
                ]
            );
            // Only the control plane publishes jobs and cancels, and a
            // worker may create its zone's consumer with its zone's filter
            // only.
            let publish = &u.permissions.publish;
            assert!(!publish.iter().any(|s| s.starts_with("kasbah.jobs")));
            assert!(!publish.iter().any(|s| s.starts_with("kasbah.cancel")));
            let creates: Vec<&String> = publish
                .iter()
                .filter(|s| s.starts_with("$JS.API.CONSUMER.CREATE.KASBAH_JOBS"))
                .collect();
            assert_eq!(
                creates,
                [&format!(
                    "$JS.API.CONSUMER.CREATE.KASBAH_JOBS.zone-{zone}.kasbah.jobs.{zone}"
                )]
            );
        }
        // The rendered config holds each user's lists and hash, never a
        // plain password.
        for u in &g.users {
            assert!(g.server_config.contains(&format!(
                "user: {}\n        password: {}\n",
                json(&u.name),
                json(&u.password_hash)
            )));
            assert!(g.server_config.contains(&format!(
                "publish: {{ allow: {} }}",
                json_list(&u.permissions.publish)
            )));
            assert!(g.server_config.contains(&format!(
                "subscribe: {{ allow: {} }}",
                json_list(&u.permissions.subscribe)
            )));
            assert!(!g.server_config.contains(&u.password));
            assert_eq!(u.password.len(), 64);
            assert!(bcrypt::verify(&u.password, &u.password_hash).unwrap_or(false));
        }
        assert!(g.server_config.contains("listen: \"127.0.0.1:4222\""));
        assert!(
            g.server_config
                .contains("store_dir: \"/var/lib/kasbah-nats\"")
        );
        let mut passwords: Vec<&str> = g.users.iter().map(|u| u.password.as_str()).collect();
        passwords.sort_unstable();
        passwords.dedup();
        assert_eq!(passwords.len(), g.users.len(), "passwords are distinct");
        Ok(())
    }

    #[test]
    fn credentials_files_are_worker_config_keys() -> Result<(), Box<dyn std::error::Error>> {
        let g = generate(&spec(&["zone-a"], 1))?;
        let w = &g.users[1];
        let config: crate::WorkerConfig = toml::from_str(&w.credentials_toml())?;
        assert_eq!(
            config.nats_auth(),
            crate::NatsAuth {
                user: Some(w.name.clone()),
                password: Some(w.password.clone()),
                creds: None,
                inbox_prefix: w.inbox_prefix.clone(),
            }
        );
        config.check()?;
        Ok(())
    }

    #[test]
    fn bad_specs_name_every_problem() {
        let mut s = spec(&["zone-a", "Zone_B", "zone-a"], 0);
        s.store_dir = PathBuf::from("relative/dir");
        s.bcrypt_cost = 3;
        let Err(NatsConfigError::Spec(p)) = generate(&s) else {
            panic!("a bad spec was accepted");
        };
        let text = p.join("; ");
        for needle in [
            "\"Zone_B\" is not a zone name",
            "named twice",
            "workers per zone",
            "bcrypt cost",
            "absolute",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(matches!(
            generate(&spec(&[], 1)),
            Err(NatsConfigError::Spec(_))
        ));
        let mut q = spec(&["zone-a"], 1);
        q.store_dir = PathBuf::from("/tmp/a\"b");
        assert!(matches!(generate(&q), Err(NatsConfigError::Spec(_))));
    }

    #[test]
    fn files_are_private_and_never_overwritten() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("nats");
        let g = generate(&spec(&["zone-a", "zone-b"], 1))?;
        let written = write(&dir, &g)?;
        assert_eq!(written.len(), 4);
        assert_eq!(written[0], dir.join(SERVER_CONFIG_FILE));
        assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        for p in &written {
            assert_eq!(
                std::fs::metadata(p)?.permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
        }
        assert_eq!(std::fs::read_to_string(&written[0])?, g.server_config);
        assert_eq!(
            std::fs::read_to_string(dir.join("worker-zone-b-1.toml"))?,
            g.users[2].credentials_toml()
        );
        // A second run refuses and leaves the first's files as they were.
        let again = generate(&spec(&["zone-a", "zone-b"], 1))?;
        assert!(matches!(
            write(&dir, &again),
            Err(NatsConfigError::Exists(_))
        ));
        assert_eq!(std::fs::read_to_string(&written[0])?, g.server_config);
        Ok(())
    }
}
