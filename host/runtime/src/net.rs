//! Outbound network capability: turns the policy's `host:port` allowlist into
//! a socket-address check for wasmtime-wasi.
//!
//! Names are resolved by the host when the run starts; the guest may then
//! connect (TCP) or send (UDP) only to the resulting addresses. If the guest
//! resolves names itself (allowed only when the allowlist contains a name),
//! whatever it gets back is still checked here before any packet leaves: DNS
//! answers cannot widen the allowlist. Listening and accepting are never
//! allowed; binding is allowed only to the wildcard address with port 0
//! (the implicit bind that precedes a connect or a first datagram).

use kasbah_core::Denial;
use kasbah_policy::{NetHost, NetworkGrant};
use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

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
    has_names: bool,
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
                    out.addrs.insert(SocketAddr::new(*ip, t.port));
                }
                NetHost::Name(name) => {
                    out.has_names = true;
                    let lookup = tokio::net::lookup_host((name.as_str(), t.port));
                    match tokio::time::timeout(timeout, lookup).await {
                        Ok(Ok(addrs)) => out.addrs.extend(addrs),
                        _ => out.unresolved.push(t.to_string()),
                    }
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    fn allows(&self, addr: SocketAddr) -> bool {
        self.addrs.contains(&addr)
            || self
                .addrs
                .contains(&SocketAddr::new(canonical(addr.ip()), addr.port()))
    }

    /// Configure a WASI context: TCP/UDP only when something is allowed, and
    /// every address checked against the list.
    pub(crate) fn apply(self, builder: &mut WasiCtxBuilder, denials: Denials) {
        let any = !self.addrs.is_empty();
        builder.allow_tcp(any);
        builder.allow_udp(any);
        builder.allow_ip_name_lookup(any && self.has_names);
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
                record(
                    &denials,
                    "network",
                    format!("{use_:?} {addr} is not in the policy's allowlist"),
                );
            }
            Box::pin(async move { ok }) as Pin<Box<dyn Future<Output = bool> + Send + Sync>>
        });
    }
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
        assert!(!l.has_names);
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
