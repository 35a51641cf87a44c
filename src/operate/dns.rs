//! DNS lookups for discovery (hickory-resolver): a name's A and AAAA records, an SRV record's
//! targets, ports and weights, with the TTL that says when to ask again. Never on the request
//! path: only the discovery service and start-up call it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::discovery::{Source, MAX_SRV_WEIGHT};

/// What one question found: addresses with their weights, and how long the records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Sorted by address, without duplicates.
    pub addrs: Vec<(SocketAddr, u32)>,
    pub ttl: Duration,
}

/// Why a question found nothing usable (the last good answer is then kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The name exists but has no such records, or does not exist (NXDOMAIN).
    Empty(String),
    /// No answer: timeout, refused, server failure, unreachable server.
    Error(String),
}

impl Failure {
    /// The `result` label of `fulcrum_dns_resolutions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Empty(_) => "empty",
            Failure::Error(_) => "failure",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Empty(m) | Failure::Error(m) => m,
        }
    }
}

fn failure(e: ResolveError) -> Failure {
    if e.is_no_records_found() || e.is_nx_domain() {
        Failure::Empty(e.to_string())
    } else {
        Failure::Error(e.to_string())
    }
}

/// A resolver: the configured servers (`resolvers:`), else the system's (/etc/resolv.conf).
/// Build it inside the runtime that will use it (it spawns its connections there).
pub struct Dns {
    /// A records (and SRV); AAAA records. Asked apart, so that a family whose question fails
    /// fails the answer (hickory's both-families lookup would return the other family alone,
    /// and the pool would lose half a dual-stack fleet for a lost packet).
    v4: TokioResolver,
    v6: TokioResolver,
}

impl Dns {
    pub fn new(servers: &[SocketAddr]) -> Result<Dns, String> {
        Ok(Dns {
            v4: Dns::resolver(servers, LookupIpStrategy::Ipv4Only)?,
            v6: Dns::resolver(servers, LookupIpStrategy::Ipv6Only)?,
        })
    }

    fn resolver(servers: &[SocketAddr], family: LookupIpStrategy) -> Result<TokioResolver, String> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for addr in servers {
                // UDP first; TCP when an answer is truncated (a large SRV set).
                group.push(NameServerConfig::new(*addr, Protocol::Udp));
                group.push(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // `resolvers:` set: only they answer; else the system's way, /etc/hosts first.
        if !servers.is_empty() {
            opts.use_hosts_file = ResolveHosts::Never;
        }
        opts.ip_strategy = family;
        // No cache: discovery asks again exactly when it wants a fresh answer (a cached one
        // would outlive `max_ttl` when the record's TTL is longer).
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        Ok(builder.build())
    }

    /// Ask `source` once.
    pub async fn resolve(&self, source: &Source, weight: u32) -> Result<Answer, Failure> {
        match source {
            Source::Name { host, port } => {
                let (ips, ttl) = self.ips(host).await?;
                let addrs = ips
                    .into_iter()
                    .map(|ip| (SocketAddr::new(ip, *port), weight))
                    .collect();
                Ok(tidy(addrs, ttl))
            }
            Source::Srv { name } => self.srv(name).await,
        }
    }

    /// The addresses of `host` (A and AAAA records: each address is a backend) and how long
    /// they live. A family that has no records is fine; one whose question failed fails all.
    async fn ips(&self, host: &str) -> Result<(Vec<std::net::IpAddr>, Duration), Failure> {
        // The system's search domains and ndots apply (Kubernetes' short names work); a name
        // that ends with a dot is complete.
        let (v4, v6) =
            futures::future::join(self.v4.lookup_ip(host), self.v6.lookup_ip(host)).await;
        let now = Instant::now();
        let mut ips = Vec::new();
        let mut ttl: Option<Duration> = None;
        let mut empty = Vec::new();
        for family in [v4, v6] {
            match family.map_err(failure) {
                Ok(lookup) => {
                    let t = lookup.valid_until().saturating_duration_since(now);
                    ttl = Some(ttl.map_or(t, |d| d.min(t)));
                    ips.extend(lookup.iter());
                }
                Err(Failure::Empty(e)) => empty.push(e),
                Err(e) => return Err(e),
            }
        }
        match ttl {
            Some(ttl) if !ips.is_empty() => Ok((ips, ttl)),
            _ => Err(Failure::Empty(if empty.is_empty() {
                format!("{host}: no A or AAAA records")
            } else {
                empty.join("; ")
            })),
        }
    }

    /// SRV `name`: the records of the most preferred priority (lowest number; the others are
    /// fallbacks that DNS-SRV clients use only when all of it is gone, and so does a pool: a
    /// later answer without them brings them in), each target resolved. Weight 0 counts as 1.
    /// A target that does not answer fails the whole answer (the last good set stays); one
    /// that has no address is left out.
    async fn srv(&self, name: &str) -> Result<Answer, Failure> {
        let lookup = self
            .v4
            .srv_lookup(format!("{name}."))
            .await
            .map_err(failure)?;
        let mut ttl = lookup
            .as_lookup()
            .valid_until()
            .saturating_duration_since(Instant::now());
        let Some(best) = lookup.iter().map(|r| r.priority()).min() else {
            return Err(Failure::Empty(format!("{name}: no SRV records")));
        };
        let records: Vec<(String, u16, u32)> = lookup
            .iter()
            // Target "." says the service is not offered there (RFC 2782).
            .filter(|r| r.priority() == best && r.port() != 0 && !r.target().is_root())
            .map(|r| {
                let weight = u32::from(r.weight()).clamp(1, MAX_SRV_WEIGHT);
                (r.target().to_ascii(), r.port(), weight)
            })
            .collect();
        let lookups = records.iter().map(|(target, _, _)| self.ips(target));
        let found = futures::future::join_all(lookups).await;
        let mut addrs = Vec::new();
        let mut missing = Vec::new();
        for ((_, port, weight), result) in records.iter().zip(found) {
            match result {
                Ok((ips, t)) => {
                    ttl = ttl.min(t);
                    addrs.extend(
                        ips.into_iter()
                            .map(|ip| (SocketAddr::new(ip, *port), *weight)),
                    );
                }
                // A target that went unanswered would drop its backends for a DNS hiccup: the
                // whole answer counts as failed, and the last good set stays.
                Err(Failure::Error(e)) => return Err(Failure::Error(e)),
                // A target without addresses is not a backend (yet).
                Err(Failure::Empty(e)) => missing.push(e),
            }
        }
        if addrs.is_empty() {
            let why = if missing.is_empty() {
                "no usable SRV records".to_string()
            } else {
                missing.join("; ")
            };
            return Err(Failure::Empty(format!("{name}: {why}")));
        }
        Ok(tidy(addrs, ttl))
    }
}

/// Sorted, one entry per address (the first weight wins).
fn tidy(mut addrs: Vec<(SocketAddr, u32)>, ttl: Duration) -> Answer {
    addrs.sort_by_key(|(a, _)| *a);
    addrs.dedup_by_key(|(a, _)| *a);
    Answer { addrs, ttl }
}
