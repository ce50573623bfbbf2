//! Operator ceilings: what an admin lets an operator grant its tenants. A
//! ceiling bounds **every** policy field; [`Policy::exceeding`] lists each
//! field of a policy that goes beyond it.
//!
//! ```toml
//! datasets = true                    # may let tenants mount their datasets
//! secrets = true                     # may grant tenants' stored secrets to their runs
//!
//! [limits]                           # every limit (absent: the hard ceiling, unmetered fuel allowed)
//! memory_bytes = 268435456
//! fuel = 10000000000                 # set: tenants must set fuel, at most this
//!
//! [env]
//! vars = ["*"]                       # names of fixed variables ("*": any name)
//! inherit = ["LANG"]                 # host variables (admin-only unless listed)
//!
//! [network]                          # destination rules: CIDR or name, and ports
//! allow = ["0.0.0.0/0:443", "[::]/0:443", "10.1.0.0/16:5432", "*.example.org:443"]
//!
//! [gpu]                              # absent: no GPU; present: zones and every quota
//! zones = ["ma-rabat-1"]
//! max_buffer_bytes = 268435456
//!
//! [signatures]                       # absent: tenants may publish unsigned
//! threshold = 1                      # tenants' policies must require at least this many
//! keys = []                          # non-empty: tenants may list only these keys
//! ```
//!
//! What a ceiling leaves out, the operator cannot grant. Special addresses
//! (loopback, link-local such as `169.254.169.254`, private, CGNAT,
//! unspecified, multicast, documentation, reserved, IPv4-mapped and NAT64
//! IPv6) are never covered by a broad rule (`0.0.0.0/0`): only by a rule
//! whose whole range lies inside the special range (`10.1.0.0/16`,
//! `169.254.169.254/32`). DNS names are covered only by name rules (`*`,
//! `*.suffix`, an exact name): a name resolves when the run starts, so a name
//! rule trusts that name's DNS.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::{
    DirGrant, DirMode, EnvGrant, GpuGrant, Limits, NetHost, NetTarget, NetworkGrant, Policy,
    SignaturePolicy, is_zone_name,
};

/// The bound an admin sets on what an operator may grant its tenants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ceiling {
    /// Upper bound of every limit. `fuel`: `None` lets tenants run
    /// unmetered; `Some(c)` makes them set a fuel budget of at most `c`.
    #[serde(default = "Ceiling::open_limits")]
    pub limits: Limits,
    /// Tenants may be allowed to mount their datasets.
    #[serde(default)]
    pub datasets: bool,
    /// Tenants' policies may grant their stored secrets (`[secrets]`) to
    /// runs.
    #[serde(default)]
    pub secrets: bool,
    #[serde(default)]
    pub env: EnvCeiling,
    #[serde(default)]
    pub network: NetworkCeiling,
    /// `None`: no GPU. `Some`: tenants' `[gpu]` quotas at most these, their
    /// GPU zones within `zones` (empty: any zone the operator may use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuGrant>,
    /// `None`: tenants may publish unsigned modules. `Some`: every tenant
    /// policy must require signatures, at least this threshold, by keys
    /// among these (empty: any keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<SignatureCeiling>,
}

/// What an operator's tenants must require of module signatures. Unlike
/// the other ceiling fields this is a floor: a tenant's policy may demand
/// more signatures, never fewer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureCeiling {
    /// The lowest threshold a tenant policy may set (at least 1).
    pub threshold: u32,
    /// Keys a tenant policy may list (base64 raw Ed25519); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// Environment variables an operator may grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvCeiling {
    /// Names of variables tenants may be given fixed values for; `"*"`: any.
    #[serde(default)]
    pub vars: BTreeSet<String>,
    /// Host variables (the server's own environment) tenants may inherit,
    /// by exact name. Empty by default: inheriting is admin-only.
    #[serde(default)]
    pub inherit: BTreeSet<String>,
}

/// Network destinations an operator may grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCeiling {
    #[serde(default)]
    pub allow: Vec<NetRule>,
}

/// `host:ports`: host is a CIDR (`10.0.0.0/8`, `[fd00::]/8`), an address
/// (`1.2.3.4`, `[::1]`: one host), `*` (any DNS name), `*.suffix` (names
/// under it) or an exact DNS name; ports are `443`, `8000-8999` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    pub host: RuleHost,
    pub ports: (u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleHost {
    Cidr(Cidr),
    AnyName,
    Suffix(String),
    Name(String),
}

/// An IP network: the address masked to its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    }

    fn mask(prefix: u8, width: u8) -> u128 {
        if prefix == 0 {
            0
        } else {
            let all = if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            all & !((1u128 << (width - prefix)) - 1) & all
        }
    }

    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, String> {
        let (bits, width) = Self::bits(addr);
        if prefix > width {
            return Err(format!("prefix /{prefix} is longer than {width} bits"));
        }
        let masked = bits & Self::mask(prefix, width);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(
                u32::try_from(masked).map_err(|_| "bad IPv4 address".to_string())?,
            )),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(masked)),
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = Self::bits(self.addr);
        let (bits, w) = Self::bits(ip);
        w == width && bits & Self::mask(self.prefix, width) == net
    }

    /// `other` lies wholly inside `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V6(a) => write!(f, "[{a}]/{}", self.prefix),
            IpAddr::V4(a) => write!(f, "{a}/{}", self.prefix),
        }
    }
}

/// Address ranges no broad rule covers: reaching them is the admin's call.
fn special_ranges() -> &'static [Cidr] {
    use std::sync::OnceLock;
    static RANGES: OnceLock<Vec<Cidr>> = OnceLock::new();
    RANGES.get_or_init(|| {
        [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "[::]/127",
            "[::ffff:0:0]/96",
            "[64:ff9b::]/96",
            "[64:ff9b:1::]/48",
            "[100::]/64",
            "[2001:db8::]/32",
            "[fc00::]/7",
            "[fe80::]/10",
            "[ff00::]/8",
        ]
        .iter()
        .filter_map(|s| parse_cidr(s).ok())
        .collect()
    })
}

/// The special range an address is in, if any (loopback, link-local,
/// private, …).
pub fn special_range(ip: IpAddr) -> Option<Cidr> {
    special_ranges().iter().copied().find(|r| r.contains(ip))
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.rsplit_once('/') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u8>()
                    .map_err(|_| format!("invalid prefix length {p:?}"))?,
            ),
        ),
        None => (s, None),
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let prefix = prefix.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
    Cidr::new(ip, prefix)
}

impl NetRule {
    /// The rule admits `target` (for an address in a special range, only
    /// if the rule's range lies inside that special range).
    pub fn admits(&self, target: &NetTarget) -> bool {
        if target.port < self.ports.0 || target.port > self.ports.1 {
            return false;
        }
        match (&self.host, &target.host) {
            (RuleHost::Cidr(c), NetHost::Ip(ip)) => {
                c.contains(*ip) && special_range(*ip).is_none_or(|special| special.covers(c))
            }
            (RuleHost::AnyName, NetHost::Name(_)) => true,
            (RuleHost::Suffix(s), NetHost::Name(n)) => n
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            (RuleHost::Name(m), NetHost::Name(n)) => m == n,
            _ => false,
        }
    }
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            RuleHost::Cidr(c) => write!(f, "{c}")?,
            RuleHost::AnyName => write!(f, "*")?,
            RuleHost::Suffix(s) => write!(f, "*.{s}")?,
            RuleHost::Name(n) => write!(f, "{n}")?,
        }
        match self.ports {
            (1, u16::MAX) => write!(f, ":*"),
            (a, b) if a == b => write!(f, ":{a}"),
            (a, b) => write!(f, ":{a}-{b}"),
        }
    }
}

impl FromStr for NetRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = |m: String| format!("network rule {s:?}: {m}");
        let (host, ports) = s
            .rsplit_once(':')
            .filter(|(h, _)| !h.contains(':') || h.starts_with('['))
            .ok_or_else(|| err("must be `host:ports` (IPv6 in brackets)".into()))?;
        let port = |p: &str| -> Result<u16, String> {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| err(format!("invalid port {p:?}")))
        };
        let ports = match ports {
            "*" => (1, u16::MAX),
            p => match p.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => (port(p)?, port(p)?),
            },
        };
        if ports.0 > ports.1 {
            return Err(err("empty port range".into()));
        }
        let host = if host == "*" {
            RuleHost::AnyName
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !crate::is_dns_name(suffix) {
                return Err(err(format!("{suffix:?} is not a DNS name")));
            }
            RuleHost::Suffix(suffix.to_ascii_lowercase())
        } else if host.starts_with('[') || host.contains('/') || host.parse::<IpAddr>().is_ok() {
            RuleHost::Cidr(parse_cidr(host).map_err(err)?)
        } else if crate::is_dns_name(host) {
            RuleHost::Name(host.to_ascii_lowercase())
        } else {
            return Err(err(format!(
                "{host:?} is neither a CIDR, an address, `*`, `*.suffix` nor a DNS name"
            )));
        };
        Ok(NetRule { host, ports })
    }
}

impl Serialize for NetRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One policy field beyond a ceiling: the field's path (`limits.fuel`,
/// `network.allow[0]`, `gpu.max_kernels`, …) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excess {
    pub field: String,
    pub detail: String,
}

impl fmt::Display for Excess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

/// Who else bounds a policy besides the ceiling: the operator's zones and
/// which host directories may appear.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<'a> {
    /// Zones the operator's tenants are limited to (empty: no limit).
    pub zones: &'a [String],
    /// `None`: any host directory (an admin sets the policy). `Some(g)`:
    /// only these admin grants, kept as they are or narrowed to `ro`.
    pub files: Option<&'a [DirGrant]>,
}

impl Ceiling {
    /// The limits part of a ceiling that does not set one: the platform's
    /// hard ceiling, unmetered fuel allowed.
    pub fn open_limits() -> Limits {
        Limits {
            fuel: None,
            ..Limits::hard_ceiling()
        }
    }

    /// An operator created without a ceiling: every limit up to the hard
    /// ceiling, datasets, fixed variables of any name, any public address
    /// on any port, the GPU up to its hard ceiling in any of the operator's
    /// zones. Not: host variables, special addresses, DNS names.
    pub fn standard() -> Self {
        Ceiling {
            limits: Self::open_limits(),
            datasets: true,
            secrets: true,
            env: EnvCeiling {
                vars: ["*".to_string()].into(),
                inherit: BTreeSet::new(),
            },
            network: NetworkCeiling {
                allow: ["0.0.0.0/0:*", "[::]/0:*"]
                    .iter()
                    .filter_map(|r| r.parse().ok())
                    .collect(),
            },
            gpu: Some(GpuGrant::hard_ceiling()),
            signatures: None,
        }
    }

    /// A ceiling stored before ceilings covered more than limits (a bare
    /// `Limits` object): those limits, nothing else — no datasets, no
    /// environment, no network, no GPU. Its fuel bound is kept except the
    /// hard ceiling's own (what "no ceiling" stored), which means unmetered.
    pub fn from_legacy(mut limits: Limits) -> Self {
        if limits
            .fuel
            .is_some_and(|f| Limits::hard_ceiling().fuel.is_some_and(|h| f >= h))
        {
            limits.fuel = None;
        }
        Ceiling {
            limits,
            ..Ceiling::default()
        }
    }

    /// Parse a stored ceiling: the current shape (always stored with its
    /// `limits`), or the legacy bare `Limits` (recognised by having none of
    /// the current top-level keys; `{}` is a legacy all-defaults ceiling).
    pub fn from_stored_json(s: &str) -> Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_str(s)?;
        let current = [
            "limits",
            "datasets",
            "secrets",
            "env",
            "network",
            "gpu",
            "signatures",
        ];
        let legacy = v
            .as_object()
            .is_some_and(|o| !o.keys().any(|k| current.contains(&k.as_str())));
        if legacy {
            serde_json::from_value::<Limits>(v).map(Ceiling::from_legacy)
        } else {
            serde_json::from_value(v)
        }
    }

    /// What is wrong with the ceiling itself (names, the platform's hard
    /// ceilings), every problem at once.
    pub fn problems(&self) -> Vec<String> {
        let Ceiling {
            limits,
            datasets: _,
            secrets: _,
            env,
            network: _,
            gpu,
            signatures,
        } = self;
        let mut out = Vec::new();
        if let Some(s) = signatures {
            SignaturePolicy {
                keys: s.keys.clone(),
                threshold: s.threshold,
            }
            .problems("signatures", &mut out);
            if !s.keys.is_empty() && s.threshold as usize > s.keys.len() {
                out.push(format!(
                    "signatures.threshold {} is more than the {} keys the ceiling allows",
                    s.threshold,
                    s.keys.len()
                ));
            }
        }
        for (name, v, c) in limits.exceeding(&Limits::hard_ceiling()) {
            out.push(format!("{name} = {v} exceeds the hard ceiling {c}"));
        }
        if limits.fuel == Some(0) {
            out.push("limits.fuel must be greater than 0 (omit it for unmetered)".into());
        }
        for k in env.vars.iter().filter(|k| *k != "*").chain(&env.inherit) {
            if k.is_empty() || k.contains('=') || k.contains('\0') || k == "*" {
                out.push(format!("env: invalid variable name {k:?}"));
            }
        }
        if let Some(g) = gpu {
            for z in &g.zones {
                if !is_zone_name(z) {
                    out.push(format!("gpu.zones: {z:?} is not a zone name"));
                }
            }
            for (name, v, c) in g.exceeding(&GpuGrant::hard_ceiling()) {
                out.push(format!("{name} = {v} exceeds the hard ceiling {c}"));
            }
        }
        out
    }
}

/// Serde's default for every part a ceiling does not mention: nothing
/// beyond the hard-ceiling limits.
impl Default for Ceiling {
    fn default() -> Self {
        Ceiling {
            limits: Self::open_limits(),
            datasets: false,
            secrets: false,
            env: EnvCeiling::default(),
            network: NetworkCeiling::default(),
            gpu: None,
            signatures: None,
        }
    }
}

impl GpuGrant {
    /// Every quota above `ceiling`'s, as `(field, value, ceiling)`.
    pub fn exceeding(&self, ceiling: &GpuGrant) -> Vec<(&'static str, u64, u64)> {
        // Exhaustive on purpose: a new quota does not compile until it is
        // compared here.
        let GpuGrant {
            zones: _,
            max_buffer_bytes,
            max_total_bytes,
            max_dispatches,
            max_workgroups_per_dimension,
            max_kernels,
            max_invocations_per_dispatch,
            max_invocations,
            max_transfer_bytes,
            max_resident_bytes,
        } = self;
        let c = ceiling;
        [
            (
                "gpu.max_buffer_bytes",
                *max_buffer_bytes,
                c.max_buffer_bytes,
            ),
            ("gpu.max_total_bytes", *max_total_bytes, c.max_total_bytes),
            ("gpu.max_dispatches", *max_dispatches, c.max_dispatches),
            (
                "gpu.max_workgroups_per_dimension",
                u64::from(*max_workgroups_per_dimension),
                u64::from(c.max_workgroups_per_dimension),
            ),
            (
                "gpu.max_kernels",
                u64::from(*max_kernels),
                u64::from(c.max_kernels),
            ),
            (
                "gpu.max_invocations_per_dispatch",
                *max_invocations_per_dispatch,
                c.max_invocations_per_dispatch,
            ),
            ("gpu.max_invocations", *max_invocations, c.max_invocations),
            (
                "gpu.max_transfer_bytes",
                *max_transfer_bytes,
                c.max_transfer_bytes,
            ),
            (
                "gpu.max_resident_bytes",
                *max_resident_bytes,
                c.max_resident_bytes,
            ),
        ]
        .into_iter()
        .filter(|(_, v, c)| v > c)
        .collect()
    }
}

fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.into_iter().map(|s| s.as_str()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn files_beyond(files: &[DirGrant], granted: &[DirGrant]) -> Vec<Excess> {
    let mut out = Vec::new();
    for (i, d) in files.iter().enumerate() {
        let kept = granted.iter().any(|g| {
            g.host == d.host && g.guest == d.guest && (g.mode == d.mode || d.mode == DirMode::Ro)
        });
        if !kept {
            out.push(Excess {
                field: format!("files[{i}]"),
                detail: format!(
                    "{} -> {}: only platform admins grant host directories (an operator may keep or narrow the admin's grants)",
                    d.host.display(),
                    d.guest
                ),
            });
        }
    }
    out
}

impl Policy {
    /// The `files` entries that are not among `granted` (the admin's
    /// grants), kept as they are or narrowed to `ro`.
    pub fn files_beyond(&self, granted: &[DirGrant]) -> Vec<Excess> {
        files_beyond(&self.files, granted)
    }

    /// Every field of this policy beyond `ceiling` and `bounds`, one entry
    /// per offending field (and per offending list item). Empty: within.
    ///
    /// The destructuring below is exhaustive: a field added to the policy
    /// does not compile until it is given its ceiling rule here.
    pub fn exceeding(&self, ceiling: &Ceiling, bounds: Bounds<'_>) -> Vec<Excess> {
        let Policy {
            zones,
            datasets,
            files,
            env,
            network,
            limits,
            gpu,
            signatures,
            secrets,
        } = self;
        let mut out = Vec::new();
        let mut push = |field: String, detail: String| out.push(Excess { field, detail });
        if let Some(c) = &ceiling.signatures {
            match signatures {
                None => push(
                    "signatures".into(),
                    format!(
                        "the operator's ceiling requires module signatures (threshold at least {})",
                        c.threshold
                    ),
                ),
                Some(s) => {
                    if s.threshold < c.threshold {
                        push(
                            "signatures.threshold".into(),
                            format!("{} < the ceiling's {}", s.threshold, c.threshold),
                        );
                    }
                    if !c.keys.is_empty() {
                        let over: Vec<&String> =
                            s.keys.iter().filter(|k| !c.keys.contains(k)).collect();
                        if !over.is_empty() {
                            push(
                                "signatures.keys".into(),
                                format!("{} not among the ceiling's signatures.keys", list(over)),
                            );
                        }
                    }
                }
            }
        }

        // zones: within the operator's zones, and not "every node zone".
        if !bounds.zones.is_empty() {
            let outside: Vec<&String> =
                zones.iter().filter(|z| !bounds.zones.contains(z)).collect();
            if zones.is_empty() || !outside.is_empty() {
                push(
                    "zones".into(),
                    format!(
                        "the operator's tenants are limited to zones {{{}}}: set `zones` to a non-empty subset{}",
                        bounds.zones.join(", "),
                        if outside.is_empty() {
                            String::new()
                        } else {
                            format!(" (outside it: {})", list(outside))
                        }
                    ),
                );
            }
        }
        if !ceiling.secrets {
            for name in secrets.keys() {
                push(
                    format!("secrets.{name}"),
                    "the operator's ceiling does not grant secrets".into(),
                );
            }
        }
        if *datasets && !ceiling.datasets {
            push(
                "datasets".into(),
                "the operator's ceiling does not grant datasets".into(),
            );
        }
        if let Some(granted) = bounds.files {
            out.extend(files_beyond(files, granted));
        }
        let mut push = |field: String, detail: String| out.push(Excess { field, detail });
        let EnvGrant { vars, inherit } = env;
        if !ceiling.env.vars.contains("*") {
            let over: Vec<&String> = vars
                .keys()
                .filter(|k| !ceiling.env.vars.contains(*k))
                .collect();
            if !over.is_empty() {
                push(
                    "env.vars".into(),
                    format!(
                        "{} not in the ceiling's env.vars ({})",
                        list(over),
                        list(&ceiling.env.vars)
                    ),
                );
            }
        }
        let over: Vec<&String> = inherit
            .iter()
            .filter(|k| !ceiling.env.inherit.contains(*k))
            .collect();
        if !over.is_empty() {
            push(
                "env.inherit".into(),
                format!(
                    "{}: host variables are admin-only unless the ceiling's env.inherit lists them ({})",
                    list(over),
                    list(&ceiling.env.inherit)
                ),
            );
        }
        let NetworkGrant { allow } = network;
        for (i, t) in allow.iter().enumerate() {
            if !ceiling.network.allow.iter().any(|r| r.admits(t)) {
                let why = match &t.host {
                    NetHost::Ip(ip) => match special_range(*ip) {
                        Some(r) => {
                            format!(" ({r} is admin-only unless a ceiling rule inside it lists it)")
                        }
                        None => String::new(),
                    },
                    NetHost::Name(_) => " (DNS names need a name rule)".into(),
                };
                push(
                    format!("network.allow[{i}]"),
                    format!("{t} is not within the ceiling's network.allow{why}"),
                );
            }
        }
        for (name, v, c) in limits.exceeding(&ceiling.limits) {
            push(name.into(), format!("{v} > {c}"));
        }
        if let (None, Some(c)) = (limits.fuel, ceiling.limits.fuel) {
            push(
                "limits.fuel".into(),
                format!("unmetered, but the ceiling requires a fuel budget of at most {c}"),
            );
        }
        match (gpu, &ceiling.gpu) {
            (None, _) => {}
            (Some(_), None) => push("gpu".into(), "the operator's ceiling grants no GPU".into()),
            (Some(g), Some(c)) => {
                if !c.zones.is_empty() {
                    let resolved = self.gpu_grant().map(|g| g.zones).unwrap_or_default();
                    let outside: Vec<&String> = resolved.difference(&c.zones).collect();
                    if !outside.is_empty() || resolved.is_empty() {
                        push(
                            "gpu.zones".into(),
                            format!(
                                "{} outside the ceiling's gpu.zones ({})",
                                if resolved.is_empty() {
                                    "every zone".to_string()
                                } else {
                                    list(outside)
                                },
                                list(&c.zones)
                            ),
                        );
                    }
                }
                for (name, v, c) in g.exceeding(c) {
                    push(name.into(), format!("{v} > {c}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> NetTarget {
        s.parse().expect("target")
    }

    fn rule(s: &str) -> NetRule {
        s.parse().expect("rule")
    }

    #[test]
    fn rules_parse_and_print() {
        for (s, printed) in [
            ("0.0.0.0/0:*", "0.0.0.0/0:*"),
            ("10.1.2.3/16:443", "10.1.0.0/16:443"),
            ("1.2.3.4:80-90", "1.2.3.4/32:80-90"),
            ("[::]/0:443", "[::]/0:443"),
            ("[fd00::1]:22", "[fd00::1]/128:22"),
            ("*:443", "*:443"),
            ("*.Example.org:443", "*.example.org:443"),
            ("api.example.org:1-65535", "api.example.org:*"),
        ] {
            assert_eq!(rule(s).to_string(), printed, "{s}");
            assert_eq!(rule(printed), rule(s), "{printed} round-trips");
        }
        for bad in [
            "10.0.0.0/33:80",
            "::1:80",
            "1.2.3.4:0",
            "1.2.3.4:90-80",
            "1.2.3.4",
            "*.bad_name:80",
            "bad host:80",
            "[::1]/129:80",
        ] {
            assert!(bad.parse::<NetRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn broad_rules_never_cover_special_addresses() {
        let open = [rule("0.0.0.0/0:*"), rule("[::]/0:*")];
        let admitted = |t: &str| open.iter().any(|r| r.admits(&target(t)));
        for public in ["93.184.216.34:443", "8.8.8.8:53", "[2606:4700::1111]:443"] {
            assert!(admitted(public), "{public}");
        }
        for special in [
            "169.254.169.254:80",
            "127.0.0.1:8080",
            "10.0.0.5:443",
            "172.16.0.1:443",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "255.255.255.255:80",
            "224.0.0.1:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:169.254.169.254]:80",
            "[64:ff9b::a9fe:a9fe]:80",
        ] {
            assert!(!admitted(special), "{special}");
        }
        // Names only through name rules.
        assert!(!admitted("api.example.org:443"));
        // An admin listing a special range (or one host in it) opens it.
        assert!(rule("169.254.169.254/32:80").admits(&target("169.254.169.254:80")));
        assert!(rule("10.1.0.0/16:443").admits(&target("10.1.2.3:443")));
        assert!(!rule("10.1.0.0/16:443").admits(&target("10.2.0.1:443")));
        assert!(!rule("10.1.0.0/16:443").admits(&target("10.1.2.3:80")));
        // …but not a rule wider than the special range.
        assert!(!rule("0.0.0.0/1:80").admits(&target("10.0.0.1:80")));
        assert!(rule("*.example.org:443").admits(&target("api.example.org:443")));
        assert!(!rule("*.example.org:443").admits(&target("example.org:443")));
        assert!(!rule("*.example.org:443").admits(&target("evilexample.org:443")));
        assert!(rule("*:443").admits(&target("anything.test:443")));
        assert!(!rule("*:443").admits(&target("1.2.3.4:443")));
    }

    #[test]
    fn legacy_ceilings_load_with_nothing_beyond_their_limits() {
        // What an operator created without a ceiling stored before: the
        // hard ceiling as a bare `Limits`.
        let old = serde_json::to_string(&Limits::hard_ceiling()).expect("json");
        let c = Ceiling::from_stored_json(&old).expect("legacy loads");
        assert_eq!(c.limits.memory_bytes, Limits::hard_ceiling().memory_bytes);
        assert_eq!(
            c.limits.fuel, None,
            "the hard ceiling's fuel meant no bound"
        );
        assert!(!c.datasets && c.env.vars.is_empty() && c.env.inherit.is_empty());
        assert!(c.network.allow.is_empty() && c.gpu.is_none());
        let c = Ceiling::from_stored_json(r#"{"memory_bytes":1048576,"fuel":1000}"#)
            .expect("partial legacy");
        assert_eq!((c.limits.memory_bytes, c.limits.fuel), (MIB, Some(1000)));
        assert_eq!(
            Ceiling::from_stored_json("{}").expect("empty"),
            Ceiling::from_legacy(Limits::default())
        );
        // The current shape round-trips.
        for c in [Ceiling::standard(), Ceiling::default()] {
            let json = serde_json::to_string(&c).expect("json");
            assert_eq!(Ceiling::from_stored_json(&json).expect("current"), c);
        }
        // New input must use the current shape.
        assert!(serde_json::from_str::<Ceiling>(r#"{"memory_bytes":1}"#).is_err());
    }

    use crate::MIB;

    #[test]
    fn a_ceiling_file_reads_as_documented() {
        let c: Ceiling = toml::from_str(
            r#"
            datasets = true
            [limits]
            memory_bytes = 268435456
            fuel = 10000000000
            [env]
            vars = ["*"]
            inherit = ["LANG"]
            [network]
            allow = ["0.0.0.0/0:443", "[::]/0:443", "10.1.0.0/16:5432", "*.example.org:443"]
            [gpu]
            zones = ["ma-rabat-1"]
            max_buffer_bytes = 268435456
            "#,
        )
        .expect("ceiling");
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.network.allow.len(), 4);
        assert_eq!(c.gpu.as_ref().map(|g| g.max_buffer_bytes), Some(256 * MIB));
        let bad: Ceiling = toml::from_str(
            "[limits]\nmemory_bytes = 99999999999999\n[env]\ninherit = [\"*\"]\n[gpu]\nmax_kernels = 99999999\n",
        )
        .expect("parses");
        assert_eq!(bad.problems().len(), 3, "{:?}", bad.problems());
    }
}
