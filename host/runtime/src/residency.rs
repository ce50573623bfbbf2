//! Residency zones on the host side: which zone each network destination and
//! each piece of writable storage is in (host configuration, the source of
//! truth), and the per-run [`Residency`] a scheduler hands to
//! [`crate::Runtime::run_with`] after placing the run.
//!
//! A run with a residency carries a **label**: the zones its data may reach.
//! Every egress is checked against it here or in the module that owns the
//! egress:
//! - network (`net.rs`): an allowlisted destination is reachable only if the
//!   host configuration puts it in a zone of the label; a destination listed
//!   in no zone is in no zone (unreachable for labelled data);
//! - preopens (`wasi.rs`): a `files` grant (`ro` or `rw`) whose host
//!   directory is on storage outside the label is not mounted, and the
//!   refusal is recorded (writing there would take labelled data out,
//!   reading from it would bring another zone's data in);
//! - GPU (`lib.rs`): the run is bound to the adapter entry placement chose.
//!
//! ```toml
//! [zones]
//! node = ["zone-a", "zone-b"]     # zones this node serves, in order of preference
//!
//! [[zones.network]]
//! destination = "10.0.0.5:443"    # `host:port`, as in policies
//! zone = "zone-a"
//!
//! [[zones.storage]]
//! path = "/srv/zone-b"            # host directories at or beneath this path
//! zone = "zone-b"                 # (default for unlisted storage: the first node zone)
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kasbah_policy::{NetHost, NetTarget, is_zone_name};
use serde::{Deserialize, Serialize};

/// The residency part of the host configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZonesConfig {
    /// Zones this node serves, in order of preference: placement picks the
    /// first candidate zone in this order. Empty: the zones of the GPU
    /// adapter entries, network destinations and storage entries, in that
    /// order, or `local` when none names a zone (see [`Self::node_zones`]).
    pub node: Vec<String>,
    /// Network destinations and their zones. A destination not listed is in
    /// no zone: labelled runs may not reach it.
    pub network: Vec<NetZone>,
    /// Storage locations and their zones (longest matching path wins).
    pub storage: Vec<StorageZone>,
}

/// One network destination placed in a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetZone {
    /// `host:port` (IP literal or DNS name, resolved by the host).
    pub destination: NetTarget,
    pub zone: String,
}

/// Host storage placed in a zone: every directory at or beneath `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageZone {
    pub path: PathBuf,
    pub zone: String,
}

/// Zone used when nothing names one.
pub const DEFAULT_ZONE: &str = "local";

impl ZonesConfig {
    /// The zones this node serves: `node`, or derived from the entries that
    /// name zones (`gpu_zones` first), or [`DEFAULT_ZONE`].
    pub fn node_zones<'a>(&'a self, gpu_zones: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        let mut out: Vec<String> = Vec::new();
        let named = gpu_zones
            .into_iter()
            .chain(self.network.iter().map(|n| n.zone.as_str()))
            .chain(self.storage.iter().map(|s| s.zone.as_str()));
        for z in named {
            if !out.iter().any(|o| o == z) {
                out.push(z.to_string());
            }
        }
        if out.is_empty() {
            out.push(DEFAULT_ZONE.to_string());
        }
        out
    }

    /// Every problem with this configuration (zone names, relative storage
    /// paths, entries in zones the node does not serve).
    pub fn problems<'a>(&'a self, gpu_zones: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let gpu_zones: Vec<&str> = gpu_zones.into_iter().collect();
        let node = self.node_zones(gpu_zones.iter().copied());
        let mut out = Vec::new();
        let mut check = |what: String, z: &str| {
            if !is_zone_name(z) {
                out.push(format!("{what}: {z:?} is not a zone name"));
            } else if !node.iter().any(|n| n == z) {
                out.push(format!(
                    "{what}: zone {z:?} is not one of the node's zones ({})",
                    node.join(", ")
                ));
            }
        };
        for z in &self.node {
            check("zones.node".into(), z);
        }
        for (i, z) in gpu_zones.iter().enumerate() {
            check(format!("gpu.adapters[{i}].zone"), z);
        }
        for (i, n) in self.network.iter().enumerate() {
            check(format!("zones.network[{i}] ({})", n.destination), &n.zone);
        }
        for (i, s) in self.storage.iter().enumerate() {
            check(format!("zones.storage[{i}]"), &s.zone);
        }
        for (i, s) in self.storage.iter().enumerate() {
            if !s.path.is_absolute() {
                out.push(format!("zones.storage[{i}].path must be absolute"));
            }
        }
        out
    }

    /// The zone of host directory `dir`: the longest `storage` path it is
    /// at or beneath, else the first node zone (`None` if there is none).
    pub fn storage_zone(&self, dir: &Path) -> Option<&str> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        self.storage
            .iter()
            .filter(|s| {
                let p = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
                dir.starts_with(&p)
            })
            .max_by_key(|s| s.path.components().count())
            .map(|s| s.zone.as_str())
            .or_else(|| self.node.first().map(String::as_str))
    }

    /// The zones of every address the configured destinations resolve to
    /// (names resolved by the host, each bounded by `timeout`).
    pub(crate) async fn resolve_network(
        &self,
        timeout: Duration,
    ) -> HashMap<SocketAddr, BTreeSet<String>> {
        let mut out: HashMap<SocketAddr, BTreeSet<String>> = HashMap::new();
        for n in &self.network {
            for addr in resolve(&n.destination, timeout).await {
                out.entry(addr).or_default().insert(n.zone.clone());
            }
        }
        out
    }
}

/// The addresses a target stands for (IPv4-mapped IPv6 as IPv4).
pub(crate) async fn resolve(t: &NetTarget, timeout: Duration) -> Vec<SocketAddr> {
    match &t.host {
        NetHost::Ip(ip) => vec![SocketAddr::new(*ip, t.port)],
        NetHost::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), t.port));
            match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                _ => Vec::new(),
            }
        }
    }
}

/// Where a run was placed and which zones its data may reach. Built by the
/// platform's placement step; the runtime enforces it at every egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residency {
    /// The run's residency label: the zones its data may reach (the
    /// intersection of the tenant's zones, the input label and every
    /// dataset label). Network destinations and writable storage must be in
    /// one of these.
    pub label: BTreeSet<String>,
    /// The zone the run is placed in (one of `label`).
    pub zone: String,
    /// The GPU adapter entry the run is bound to, if it uses the GPU. A
    /// residency without one means every GPU call is `denied`.
    pub adapter: Option<String>,
}

impl Residency {
    pub fn describe_label(&self) -> String {
        describe(&self.label)
    }
}

/// `{a, b}` (or `{}`) for messages.
pub fn describe(zones: &BTreeSet<String>) -> String {
    format!(
        "{{{}}}",
        zones.iter().cloned().collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_zones_are_configured_or_derived() {
        let c = ZonesConfig::default();
        assert_eq!(
            c.node_zones(["zone-b", "zone-a", "zone-b"]),
            ["zone-b", "zone-a"]
        );
        assert_eq!(c.node_zones([]), [DEFAULT_ZONE]);
        let c: ZonesConfig = toml::from_str(
            "node = [\"zone-a\", \"zone-b\"]\n[[network]]\ndestination = \"127.0.0.1:80\"\nzone = \"zone-c\"\n",
        )
        .expect("parses");
        assert_eq!(c.node_zones(["zone-x"]), ["zone-a", "zone-b"]);
        let problems = c.problems(["zone-a", "zone-x"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(toml::from_str::<ZonesConfig>("nodes = []").is_err());
        assert!(
            toml::from_str::<ZonesConfig>("[[network]]\ndestination = \"nope\"\nzone = \"a\"")
                .is_err()
        );
    }

    #[test]
    fn storage_zone_is_the_longest_prefix_else_the_first_node_zone() {
        let c = ZonesConfig {
            node: vec!["zone-a".into(), "zone-b".into()],
            network: Vec::new(),
            storage: vec![
                StorageZone {
                    path: "/srv".into(),
                    zone: "zone-a".into(),
                },
                StorageZone {
                    path: "/srv/b".into(),
                    zone: "zone-b".into(),
                },
            ],
        };
        assert_eq!(c.storage_zone(Path::new("/srv/b/x")), Some("zone-b"));
        assert_eq!(c.storage_zone(Path::new("/srv/bb")), Some("zone-a"));
        assert_eq!(c.storage_zone(Path::new("/elsewhere")), Some("zone-a"));
        assert_eq!(
            ZonesConfig::default().storage_zone(Path::new("/elsewhere")),
            None
        );
    }
}
