//! Outbound network capability: turns the policy's `host:port` allowlist into
//! a socket-address check for wasmtime-wasi.
//!
//! Names are resolved by the host when the run starts; the guest may then
//! connect (TCP) or send (UDP) only to the resulting addresses. The guest may
//! resolve names itself only when the allowlist contains a name, and then
//! only those names ([`LookupFilter`]: no other query leaves the host, so
//! DNS cannot carry data out); whatever it gets back is still checked here
//! before any packet leaves: DNS answers cannot widen the allowlist. Listening and accepting are never
//! allowed; binding is allowed only to the wildcard address with port 0
//! (the implicit bind that precedes a connect or a first datagram).

use kasbah_core::Denial;
use kasbah_policy::{NetHost, NetworkGrant};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup;
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress};
use wasmtime_wasi::p2::{DynPollable, Network, SocketError};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};

pub(crate) type Denials = Arc<Mutex<Vec<Denial>>>;

/// Bound on recorded denials per run (a guest may retry in a loop).
const MAX_DENIALS: usize = 64;

pub(crate) fn record(denials: &Denials, capability: &str, detail: String) {
    let mut d = denials.lock().unwrap_or_else(PoisonError::into_inner);
    if d.len() < MAX_DENIALS {
        d.push(Denial {
            capability: capability.into(),
            detail,
        });
    }
}

/// The resolved allowlist for one run.
#[derive(Debug, Default, Clone)]
pub struct Allowlist {
    addrs: HashSet<SocketAddr>,
    /// Allowlisted addresses the run's residency label keeps it from
    /// reaching, with the reason (their zone is outside the label, or they
    /// are in no configured zone). Refused like any other address.
    out_of_zone: HashMap<SocketAddr, String>,
    /// The allowlist's names (normalised): the only names the guest may
    /// look up itself.
    names: HashSet<String>,
    /// Each allowlisted `host:port` (names normalised, IP literals in their
    /// canonical text) → the addresses the host resolved for it at run
    /// start (empty: it did not resolve). Outgoing HTTP connects only to
    /// these, for exactly the name the request names (`http.rs`).
    targets: HashMap<(String, u16), Vec<SocketAddr>>,
    /// Names that did not resolve (reported, not fatal: the run goes on
    /// without them).
    pub unresolved: Vec<String>,
}

impl Allowlist {
    /// Resolve every target of the grant (names through the host resolver,
    /// each bounded by `timeout`).
    pub async fn resolve(grant: &NetworkGrant, timeout: Duration) -> Self {
        let mut out = Allowlist::default();
        for t in &grant.allow {
            match &t.host {
                NetHost::Ip(ip) => {
                    let addr = SocketAddr::new(*ip, t.port);
                    out.addrs.insert(addr);
                    out.targets
                        .entry((canonical(*ip).to_string(), t.port))
                        .or_default()
                        .push(addr);
                }
                NetHost::Name(name) => {
                    out.names.insert(normalise_name(name));
                    let lookup = tokio::net::lookup_host((name.as_str(), t.port));
                    let entry = out
                        .targets
                        .entry((normalise_name(name), t.port))
                        .or_default();
                    match tokio::time::timeout(timeout, lookup).await {
                        Ok(Ok(addrs)) => {
                            let addrs: Vec<SocketAddr> = addrs.collect();
                            entry.extend(addrs.iter().copied());
                            out.addrs.extend(addrs);
                        }
                        _ => out.unresolved.push(t.to_string()),
                    }
                }
            }
        }
        out
    }

    /// Resolve the grant, then keep only the addresses that the host
    /// configuration puts in a zone of `residency.label`; the others are
    /// refused with a `residency_violation` denial when the guest tries them.
    pub async fn resolve_zoned(
        grant: &NetworkGrant,
        timeout: Duration,
        zones: &crate::residency::ZonesConfig,
        residency: &crate::residency::Residency,
    ) -> Self {
        let mut list = Self::resolve(grant, timeout).await;
        let zoned = zones.resolve_network(timeout).await;
        let label = residency.describe_label();
        let mut kept = HashSet::new();
        for addr in list.addrs.drain() {
            let in_zones = zoned
                .get(&addr)
                .or_else(|| zoned.get(&SocketAddr::new(canonical(addr.ip()), addr.port())));
            match in_zones {
                Some(z) if z.iter().any(|z| residency.label.contains(z)) => {
                    kept.insert(addr);
                }
                Some(z) => {
                    list.out_of_zone.insert(
                        addr,
                        format!(
                            "is in zone {}, outside the run's residency label {label}",
                            crate::residency::describe(z)
                        ),
                    );
                }
                None => {
                    list.out_of_zone.insert(
                        addr,
                        format!(
                            "is in no configured zone; labelled data ({label}) may not reach it"
                        ),
                    );
                }
            }
        }
        list.addrs = kept;
        list
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    fn zone_refusal(&self, addr: SocketAddr) -> Option<&str> {
        self.out_of_zone
            .get(&addr)
            .or_else(|| {
                self.out_of_zone
                    .get(&SocketAddr::new(canonical(addr.ip()), addr.port()))
            })
            .map(String::as_str)
    }

    /// Where outgoing HTTP to `host:port` (as the request's URL names it;
    /// an IPv6 literal with or without brackets) may connect: the addresses
    /// the host resolved for exactly that allowlisted target that the run
    /// may still reach. `Err`: why not (a denial's detail).
    pub(crate) fn http_destination(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let key = match bare.parse::<IpAddr>() {
            Ok(ip) => canonical(ip).to_string(),
            Err(_) => normalise_name(bare),
        };
        let Some(addrs) = self.targets.get(&(key, port)) else {
            return Err(format!(
                "{}:{port} is not in the policy's network allowlist",
                shown(host)
            ));
        };
        let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| self.allows(*a)).collect();
        if !allowed.is_empty() {
            return Ok(allowed);
        }
        match addrs
            .iter()
            .find_map(|a| self.zone_refusal(*a).map(|why| (a, why)))
        {
            Some((addr, why)) => Err(format!("residency_violation: {host}:{port} ({addr}) {why}")),
            None => Err(format!(
                "{host}:{port} is allowlisted but did not resolve when the run started"
            )),
        }
    }

    fn allows(&self, addr: SocketAddr) -> bool {
        self.addrs.contains(&addr)
            || self
                .addrs
                .contains(&SocketAddr::new(canonical(addr.ip()), addr.port()))
    }

    /// Configure a WASI context: TCP/UDP only when something is allowed, and
    /// every address checked against the list. Returns the filter the
    /// guest's own name lookups go through (see [`add_lookup_to_linker`]).
    pub(crate) fn apply(self, builder: &mut WasiCtxBuilder, denials: Denials) -> Arc<LookupFilter> {
        // Sockets stay enabled when only out-of-zone destinations are left,
        // so the guest's attempt reaches the check and is recorded.
        let any = !self.addrs.is_empty() || !self.out_of_zone.is_empty();
        builder.allow_tcp(any);
        builder.allow_udp(any);
        builder.allow_ip_name_lookup(any && !self.names.is_empty());
        let lookup = Arc::new(LookupFilter {
            names: self.names.clone(),
            denials: denials.clone(),
        });
        let list = Arc::new(self);
        builder.socket_addr_check(move |addr, use_| {
            let ok = match use_ {
                SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                    list.allows(addr)
                }
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                    any && addr.ip().is_unspecified() && addr.port() == 0
                }
                SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
            };
            if !ok {
                let detail = match list.zone_refusal(addr) {
                    Some(why) => format!("residency_violation: {use_:?} {addr} {why}"),
                    None => format!("{use_:?} {addr} is not in the policy's allowlist"),
                };
                record(&denials, "network", detail);
            }
            Box::pin(async move { ok }) as Pin<Box<dyn Future<Output = bool> + Send + Sync>>
        });
        lookup
    }
}

/// A guest-supplied name cut to 255 characters for a denial's detail.
pub(crate) fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(255).collect();
    if out.len() < name.len() {
        out.push('…');
    }
    out
}

/// `Example.COM.` → `example.com`.
fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The guest's own name lookups (`wasi:sockets/ip-name-lookup`, enabled only
/// when the allowlist names a host): only the allowlist's names go to the
/// host's resolver. Any other name is refused before a query leaves the
/// host — a lookup of `<data>.attacker.example` would otherwise carry data
/// out through the resolver chain even though no socket to the attacker is
/// ever allowed. IP literals resolve to themselves (no query).
pub(crate) struct LookupFilter {
    names: HashSet<String>,
    denials: Denials,
}

impl LookupFilter {
    fn allows(&self, name: &str) -> bool {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok() || self.names.contains(&normalise_name(name))
    }
}

/// `wasi:sockets/ip-name-lookup` for one call: the run's WASI sockets plus
/// its filter.
pub(crate) struct Lookup<'a> {
    pub sockets: WasiSocketsCtxView<'a>,
    pub filter: Arc<LookupFilter>,
}

struct HasLookup;

impl HasData for HasLookup {
    type Data<'a> = Lookup<'a>;
}

impl ip_name_lookup::Host for Lookup<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ip_name_lookup::ResolveAddressStream>, SocketError> {
        if !self.filter.allows(&name) {
            let shown = shown(&name);
            record(
                &self.filter.denials,
                "network",
                format!("name lookup of {shown:?}: not a name in the policy's network allowlist"),
            );
            return Err(ErrorCode::PermanentResolverFailure.into());
        }
        ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name)
    }
}

// `ip-name-lookup` uses `network`'s types and error conversion: delegated.
impl network::Host for Lookup<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::io::error::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for Lookup<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, this)
    }
}

impl ip_name_lookup::HostResolveAddressStream for Lookup<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        ip_name_lookup::HostResolveAddressStream::resolve_next_address(&mut self.sockets, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        ip_name_lookup::HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<()> {
        ip_name_lookup::HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

/// Replace wasmtime-wasi's `wasi:sockets/ip-name-lookup` in `linker` (after
/// `wasmtime_wasi::p2::add_to_linker_async`) with the filtered one.
pub(crate) fn add_lookup_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Lookup<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = ip_name_lookup::add_to_linker::<T, HasLookup>(linker, view);
    linker.allow_shadowing(false);
    added
}

/// IPv4-mapped IPv6 addresses compare as their IPv4 form.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_targets_need_no_resolver_and_mapped_v6_matches_v4() {
        let grant = NetworkGrant {
            allow: vec!["127.0.0.1:8080".parse().expect("target")],
        };
        let l = Allowlist::resolve(&grant, Duration::from_secs(1)).await;
        assert!(l.allows("127.0.0.1:8080".parse().expect("addr")));
        assert!(l.allows("[::ffff:127.0.0.1]:8080".parse().expect("addr")));
        assert!(!l.allows("127.0.0.1:8081".parse().expect("addr")));
        assert!(!l.allows("127.0.0.2:8080".parse().expect("addr")));
        assert!(l.names.is_empty());
        // Outgoing HTTP: the literal as listed (either form), nothing else.
        let to = |h: &str, p| l.http_destination(h, p);
        assert_eq!(
            to("127.0.0.1", 8080),
            Ok(vec!["127.0.0.1:8080".parse().expect("addr")])
        );
        assert!(to("[::ffff:127.0.0.1]", 8080).is_ok());
        assert!(
            to("127.0.0.1", 8081)
                .expect_err("port")
                .contains("not in the policy")
        );
        assert!(
            to("localhost", 8080)
                .expect_err("name")
                .contains("not in the policy")
        );
    }

    #[tokio::test]
    async fn http_destinations_are_the_listed_name_only_and_its_resolved_addresses() {
        let grant = NetworkGrant {
            allow: vec![
                "LocalHost:8443".parse().expect("target"),
                "does-not-exist.invalid:443".parse().expect("target"),
            ],
        };
        let l = Allowlist::resolve(&grant, Duration::from_secs(2)).await;
        let addrs = l.http_destination("localhost", 8443).expect("listed name");
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
            "{addrs:?}"
        );
        assert_eq!(l.http_destination("LOCALHOST.", 8443), Ok(addrs.clone()));
        // Its addresses are reachable by sockets, but not by another name
        // or by the literal through HTTP: only the name as listed.
        assert!(l.http_destination("127.0.0.1", 8443).is_err());
        assert!(l.http_destination("localhost.localdomain", 8443).is_err());
        assert!(l.http_destination("localhost", 443).is_err());
        let e = l
            .http_destination("does-not-exist.invalid", 443)
            .expect_err("unresolved");
        assert!(e.contains("did not resolve"), "{e}");
    }

    #[tokio::test]
    async fn destinations_outside_the_label_or_in_no_zone_are_refused() {
        use crate::residency::{NetZone, Residency, ZonesConfig};
        let grant = NetworkGrant {
            allow: vec![
                "127.0.0.1:1001".parse().expect("target"),
                "127.0.0.1:1002".parse().expect("target"),
                "127.0.0.1:1003".parse().expect("target"),
            ],
        };
        let zones = ZonesConfig {
            node: vec!["zone-a".into(), "zone-b".into()],
            network: vec![
                NetZone {
                    destination: "127.0.0.1:1001".parse().expect("target"),
                    zone: "zone-a".into(),
                },
                NetZone {
                    destination: "127.0.0.1:1002".parse().expect("target"),
                    zone: "zone-b".into(),
                },
            ],
            storage: Vec::new(),
        };
        let residency = Residency {
            label: ["zone-a".to_string()].into(),
            zone: "zone-a".into(),
            adapter: None,
        };
        let l = Allowlist::resolve_zoned(&grant, Duration::from_secs(1), &zones, &residency).await;
        let a = "127.0.0.1:1001".parse().expect("addr");
        let b = "127.0.0.1:1002".parse().expect("addr");
        let none = "[::ffff:127.0.0.1]:1003".parse().expect("addr");
        assert!(l.allows(a));
        assert!(!l.allows(b));
        assert!(!l.allows(none));
        assert!(l.zone_refusal(b).expect("zone b").contains("zone-b"));
        assert!(
            l.zone_refusal(none)
                .expect("no zone")
                .contains("no configured zone")
        );
        assert_eq!(l.zone_refusal(a), None);
        assert!(l.http_destination("127.0.0.1", 1001).is_ok());
        let e = l
            .http_destination("127.0.0.1", 1002)
            .expect_err("other zone");
        assert!(
            e.starts_with("residency_violation: ") && e.contains("zone-b"),
            "{e}"
        );
        let e = l.http_destination("127.0.0.1", 1003).expect_err("no zone");
        assert!(e.contains("no configured zone"), "{e}");
    }

    #[tokio::test]
    async fn unresolvable_names_are_reported_not_allowed() {
        let grant = NetworkGrant {
            allow: vec!["does-not-exist.invalid:443".parse().expect("target")],
        };
        let l = Allowlist::resolve(&grant, Duration::from_secs(2)).await;
        assert!(l.is_empty());
        assert_eq!(l.unresolved, vec!["does-not-exist.invalid:443".to_string()]);
    }
}
