//! Local (L2) pools, pure: which node answers ARP/NDP for each address of a local pool.
//!
//! Every agent publishes a [`Member`] record of itself in its node Lease: whether it may
//! answer at all (and if not, why), its LAN interfaces with their subnets, and the
//! addresses it answers for now (its claims). From the same records every node computes
//! the same [`elect`]ion for each address. The candidates are the members that are
//! alive (their Lease renewed lately, as the observer saw it), eligible, have an
//! interface for the address (the pool's named interfaces, else the one whose subnet
//! holds it) and, for `externalTrafficPolicy: Local`, a ready endpoint. A candidate that
//! already claims the address keeps it, so an election moves an address only when its
//! node can no longer hold it; otherwise the highest rendezvous score of (node, address)
//! wins, which spreads addresses over the nodes and is the same on every node.
//!
//! Each claim carries a term: a node taking an address claims it one term above every
//! claim it has seen for it. Two claimants (a split brain: say a node whose agent
//! crashed and came back while another took over) resolve to the higher term, that is
//! the later takeover, then to the higher score.
//!
//! [`L2Model`] keeps what the elections need of Services, EndpointSlices and pools.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_core::ResourceExt;

use crate::crd::{AddressPool, PoolMode};
use crate::index::{Index, ObjectKey};
use crate::ipam::ServiceKey;
use crate::net::Prefix;
use crate::node::{EXCLUDE_LABEL, SERVICE_NAME_LABEL, ServiceFacts, takes_traffic};

/// Label on the node Leases (in `routelb-system`) that carry member records.
pub const LEASE_LABEL: &str = "routelb.io/node-lease";
/// What a node Lease's name starts with.
pub const LEASE_PREFIX: &str = "routelb-node-";
/// The name of a node's Lease.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}
/// Annotation on a node Lease: `"true"`, or why the node answers for no address.
pub const ELIGIBLE: &str = "routelb.io/eligible";
/// Annotation on a node Lease: the LAN interfaces and their subnets,
/// `eth0=192.0.2.2/24,2001:db8::2/64;eth1=198.51.100.2/24`.
pub const INTERFACES: &str = "routelb.io/interfaces";
/// Annotation on a node Lease: the addresses the node answers for now, each with the
/// term of its claim (`192.0.2.10@3,2001:db8::10@1`).
pub const CLAIMS: &str = "routelb.io/claims";
/// Annotation on a node Lease: how long, from when an observer sees a renewal, the
/// record stays valid (milliseconds). Longer while the agent restarts.
pub const LEASE_MS: &str = "routelb.io/lease-duration-ms";
/// Annotations routelb writes on a Service of a local pool: the node answering.
pub const ANNOUNCING_IPV4: &str = "routelb.io/announcing-ipv4";
pub const ANNOUNCING_IPV6: &str = "routelb.io/announcing-ipv6";

/// Interface name prefixes that are never a LAN unless a pool names them (MetalLB's
/// defaults, plus routelb's own).
const NOT_LAN: &[&str] = &[
    "lo",
    "kube-lb",
    "kube-ipvs",
    "docker",
    "cbr",
    "dummy",
    "virbr",
    "lxcbr",
    "veth",
    "cali",
    "tunl",
    "flannel",
    "cni",
    "nodelocaldns",
    "lxc",
    "cilium",
    "vxlan",
    "genev",
    "wg",
];

/// Whether an interface may be a LAN by its name alone.
pub fn lan_name(name: &str) -> bool {
    !NOT_LAN.iter().any(|p| name.starts_with(p))
}

/// A LAN interface of a node: up, with carrier, and its subnets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanInterface {
    pub name: String,
    pub subnets: Vec<Prefix>,
}

/// What a node says of itself, and whether an observer holds it alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `Err(why)` when the node answers for no address (NotReady, excluded, cordoned).
    pub eligible: Result<(), String>,
    pub interfaces: Vec<LanInterface>,
    /// Address -> term of the claim.
    pub claims: BTreeMap<IpAddr, u64>,
    /// Validity of the record after each renewal, as the node asks.
    pub lease_ms: u64,
    /// The observer's verdict: renewed within `lease_ms` of its last look.
    pub alive: bool,
}

impl Member {
    /// The Lease annotations of this record.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let interfaces = self
            .interfaces
            .iter()
            .map(|i| {
                let subnets: Vec<String> = i.subnets.iter().map(ToString::to_string).collect();
                format!("{}={}", i.name, subnets.join(","))
            })
            .collect::<Vec<_>>()
            .join(";");
        let claims: Vec<String> = self
            .claims
            .iter()
            .map(|(a, t)| format!("{a}@{t}"))
            .collect();
        BTreeMap::from([
            (
                ELIGIBLE.to_string(),
                match &self.eligible {
                    Ok(()) => "true".to_string(),
                    Err(why) => why.clone(),
                },
            ),
            (INTERFACES.to_string(), interfaces),
            (CLAIMS.to_string(), claims.join(",")),
            (LEASE_MS.to_string(), self.lease_ms.to_string()),
        ])
    }

    /// Reads a record from Lease annotations; what cannot be read counts against the
    /// node (not eligible, no interface), never for it. `alive` is left false.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Member {
        let eligible = match a.get(ELIGIBLE).map(String::as_str) {
            Some("true") => Ok(()),
            Some(why) => Err(why.to_string()),
            None => Err("its Lease carries no routelb record".to_string()),
        };
        let interfaces = a
            .get(INTERFACES)
            .map(|s| {
                s.split(';')
                    .filter_map(|part| {
                        let (name, subnets) = part.split_once('=')?;
                        Some(LanInterface {
                            name: name.trim().to_string(),
                            subnets: subnets.split(',').filter_map(parse_prefix).collect(),
                        })
                    })
                    .filter(|i| !i.name.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let claims = a
            .get(CLAIMS)
            .map(|s| {
                s.split(',')
                    .filter_map(|c| {
                        let (a, t) = c.trim().split_once('@').unwrap_or((c.trim(), "0"));
                        Some((a.parse().ok()?, t.parse().unwrap_or(0)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let lease_ms = a.get(LEASE_MS).and_then(|s| s.parse().ok()).unwrap_or(0);
        Member {
            eligible,
            interfaces,
            claims,
            lease_ms,
            alive: false,
        }
    }

    /// The interface that would answer for `addr`: the first of `named` the node has,
    /// or, when the pool names none, the first LAN interface with a subnet holding it.
    pub fn interface_for<'a>(&'a self, addr: IpAddr, named: &'a [String]) -> Option<&'a str> {
        if !named.is_empty() {
            return named
                .iter()
                .find(|n| self.interfaces.iter().any(|i| &i.name == *n))
                .map(String::as_str);
        }
        self.interfaces
            .iter()
            .filter(|i| lan_name(&i.name))
            .find(|i| i.subnets.iter().any(|s| holds(s, addr)))
            .map(|i| i.name.as_str())
    }
}

fn parse_prefix(s: &str) -> Option<Prefix> {
    let (addr, len) = s.trim().split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then(|| Prefix::new(addr, len))
}

/// Whether a subnet (shorter than a host prefix) holds an address.
pub fn holds(subnet: &Prefix, addr: IpAddr) -> bool {
    let host = if addr.is_ipv4() { 32 } else { 128 };
    subnet.addr.is_ipv4() == addr.is_ipv4()
        && subnet.len < host
        && Prefix::network(subnet.addr, subnet.len) == Prefix::network(addr, subnet.len)
}

/// The rendezvous score of a node for an address: stable across versions and hosts
/// (FNV-1a, then a mixing step so similar names spread).
pub fn score(node: &str, addr: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node
        .bytes()
        .chain(std::iter::once(b'#'))
        .chain(addr.to_string().into_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What an election needs of one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ballot<'a> {
    pub addr: IpAddr,
    /// The pool's named interfaces.
    pub interfaces: &'a [String],
    /// For Local policy: the nodes with a ready endpoint; `None` for Cluster.
    pub endpoints: Option<&'a BTreeSet<String>>,
}

/// The result of an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elected {
    /// This node answers on this interface.
    Node { node: String, interface: String },
    /// Nobody can, and why.
    Nobody(String),
}

impl Elected {
    pub fn node(&self) -> Option<&str> {
        match self {
            Elected::Node { node, .. } => Some(node),
            Elected::Nobody(_) => None,
        }
    }
}

/// Why a member is not a candidate for a ballot; `None` when it is one.
pub fn unfit(name: &str, m: &Member, b: &Ballot) -> Option<String> {
    if !m.alive {
        return Some(format!("{name} stopped renewing its Lease"));
    }
    if let Err(why) = &m.eligible {
        return Some(format!("{name}: {why}"));
    }
    if m.interface_for(b.addr, b.interfaces).is_none() {
        return Some(if b.interfaces.is_empty() {
            format!(
                "{name} has no LAN interface with a subnet holding {}",
                b.addr
            )
        } else {
            format!(
                "{name} has none of the interfaces {}",
                b.interfaces.join(", ")
            )
        });
    }
    if let Some(ready) = b.endpoints
        && !ready.contains(name)
    {
        return Some(format!(
            "{name} has no ready endpoint (externalTrafficPolicy Local)"
        ));
    }
    None
}

/// Elects the node that answers for an address.
pub fn elect(b: &Ballot, members: &BTreeMap<String, Member>) -> Elected {
    let candidates = candidates(b, members);
    let best = |claimed: bool| {
        candidates
            .iter()
            .filter(|(_, m)| !claimed || m.claims.contains_key(&b.addr))
            .max_by_key(|(n, m)| {
                let term = m.claims.get(&b.addr).copied().unwrap_or(0);
                (term, score(n, b.addr), std::cmp::Reverse(n.as_str()))
            })
            .copied()
    };
    let chosen = best(true).or_else(|| best(false));
    match chosen {
        Some((node, m)) => Elected::Node {
            interface: m
                .interface_for(b.addr, b.interfaces)
                .expect("a candidate has an interface")
                .to_string(),
            node: node.clone(),
        },
        None if members.is_empty() => {
            Elected::Nobody("no node has published a routelb record yet".into())
        }
        None => Elected::Nobody(format!("no node can answer: {}", reasons(b, members))),
    }
}

/// The members that are candidates for a ballot.
fn candidates<'a>(
    b: &Ballot,
    members: &'a BTreeMap<String, Member>,
) -> Vec<(&'a String, &'a Member)> {
    members
        .iter()
        .filter(|(n, m)| unfit(n, m, b).is_none())
        .collect()
}

/// What the members lack for a ballot (the first four, then how many more).
fn reasons(b: &Ballot, members: &BTreeMap<String, Member>) -> String {
    let mut why: Vec<String> = members
        .iter()
        .filter_map(|(n, m)| unfit(n, m, b))
        .take(4)
        .collect();
    if members.len() > 4 {
        why.push(format!("{} more", members.len() - 4));
    }
    why.join("; ")
}

/// The alive members that claim an address (more than one: a split brain).
pub fn claimants(addr: IpAddr, members: &BTreeMap<String, Member>) -> Vec<&str> {
    members
        .iter()
        .filter(|(_, m)| m.alive && m.claims.contains_key(&addr))
        .map(|(n, _)| n.as_str())
        .collect()
}

/// Whether a node may answer for local pools at all, from its Node object: Ready (or
/// not reporting), network available, not excluded from load balancers, not cordoned
/// (so `kubectl drain` moves its addresses before the node goes down).
pub fn eligibility(node: Option<&Node>) -> Result<(), String> {
    let Some(node) = node else {
        return Err("its Node object does not exist".into());
    };
    let name = node.name_any();
    if node.labels().contains_key(EXCLUDE_LABEL) {
        return Err(format!("node {name} is labelled {EXCLUDE_LABEL}"));
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Err(format!("node {name} is cordoned (unschedulable)"));
    }
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for c in conditions {
        match (c.type_.as_str(), c.status.as_str()) {
            ("Ready", "False" | "Unknown") => {
                return Err(format!("node {name} is not Ready ({})", c.status));
            }
            ("NetworkUnavailable", "True") => {
                return Err(format!("node {name} reports NetworkUnavailable"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The term a node claims an address with when it takes it: one above every claim
/// seen for it, live or not.
pub fn next_term(addr: IpAddr, members: &BTreeMap<String, Member>) -> u64 {
    members
        .values()
        .filter_map(|m| m.claims.get(&addr))
        .max()
        .map_or(1, |t| t + 1)
}

/// The merge patch that brings a Service's `announcing-ipv4`/`-ipv6` annotations to
/// the nodes that claim its addresses now (comma-separated; two names are a split
/// brain, shown as it is), or `None` when they are right. `local` says whether its
/// pool is local: other Services carry neither annotation.
pub fn announcing_patch(
    svc: &Service,
    local: bool,
    members: &BTreeMap<String, Member>,
) -> Option<serde_json::Value> {
    let ips = crate::service::ingress_ips(svc);
    let mut patch = serde_json::Map::new();
    for (key, v4) in [(ANNOUNCING_IPV4, true), (ANNOUNCING_IPV6, false)] {
        let want = ips
            .iter()
            .find(|a| a.is_ipv4() == v4)
            .filter(|_| local)
            .map(|a| claimants(*a, members).join(","))
            .filter(|s| !s.is_empty());
        let have = svc.annotations().get(key).cloned();
        if want != have {
            patch.insert(
                key.to_string(),
                want.map_or(serde_json::Value::Null, Into::into),
            );
        }
    }
    (!patch.is_empty()).then(|| serde_json::json!({"metadata": {"annotations": patch}}))
}

/// Whether some node can answer for a local pool now: `Ok(nodes)` with the nodes that
/// can (for every family's first address), or `Err(why)` naming what each node lacks.
pub fn pool_reach(
    pool: &AddressPool,
    members: &BTreeMap<String, Member>,
) -> Result<Vec<String>, String> {
    let Ok(cfg) = crate::ipam::PoolConfig::from_spec(&pool.name_any(), None, &pool.spec) else {
        // An invalid pool is reported as such elsewhere.
        return Ok(Vec::new());
    };
    let mut firsts: Vec<IpAddr> = Vec::new();
    for r in &cfg.ranges {
        if !firsts
            .iter()
            .any(|a| a.is_ipv4() == r.first_addr().is_ipv4())
        {
            firsts.push(r.first_addr());
        }
    }
    if members.is_empty() {
        return Err(
            "no node has published a routelb record (agents not running, or run with --no-l2)"
                .into(),
        );
    }
    let mut able = BTreeSet::new();
    let mut why = Vec::new();
    for addr in &firsts {
        let ballot = Ballot {
            addr: *addr,
            interfaces: &pool.spec.interfaces,
            endpoints: None,
        };
        let fit = candidates(&ballot, members);
        if fit.is_empty() {
            why.push(reasons(&ballot, members));
        }
        able.extend(fit.into_iter().map(|(n, _)| n.clone()));
    }
    if why.is_empty() {
        Ok(able.into_iter().collect())
    } else {
        Err(format!(
            "no node can answer for its addresses: {}",
            why.join("; ")
        ))
    }
}

/// A local pool as the elections need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PoolFacts {
    local: bool,
    interfaces: Vec<String>,
}

/// One address of a local pool and who answers for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressElection {
    pub addr: IpAddr,
    pub pool: String,
    /// The Services using it (several when shared), with their UIDs.
    pub services: Vec<(ServiceKey, Option<String>)>,
    pub elected: Elected,
}

impl fmt::Display for AddressElection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.elected {
            Elected::Node { node, interface } => {
                write!(f, "{} on {node} {interface}", self.addr)
            }
            Elected::Nobody(why) => write!(f, "{}: {why}", self.addr),
        }
    }
}

/// What the elections need of Services, EndpointSlices and pools.
#[derive(Debug)]
pub struct L2Model {
    handle_class_less: bool,
    pools: HashMap<String, PoolFacts>,
    services: HashMap<ServiceKey, ServiceFacts>,
    /// Per Service, per EndpointSlice: the nodes with an endpoint that takes traffic.
    ready: HashMap<ServiceKey, HashMap<String, BTreeSet<String>>>,
    /// Bumped on every change that may change an election.
    generation: u64,
}

impl L2Model {
    pub fn new(handle_class_less: bool) -> L2Model {
        L2Model {
            handle_class_less,
            pools: HashMap::new(),
            services: HashMap::new(),
            ready: HashMap::new(),
            generation: 0,
        }
    }

    /// Changes whenever an election may have changed (members aside).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether any pool is local: only then do nodes need to publish records.
    pub fn has_local_pools(&self) -> bool {
        self.pools.values().any(|p| p.local)
    }

    /// The named interfaces of all local pools (to publish even if not LAN-like).
    pub fn named_interfaces(&self) -> BTreeSet<String> {
        self.pools
            .values()
            .filter(|p| p.local)
            .flat_map(|p| p.interfaces.iter().cloned())
            .collect()
    }

    /// Every address of a local pool in use by a Service, with its election.
    pub fn elections(&self, members: &BTreeMap<String, Member>) -> Vec<AddressElection> {
        struct Acc<'a> {
            pool: &'a str,
            services: Vec<(ServiceKey, Option<String>)>,
            cluster: bool,
            ready: BTreeSet<String>,
        }
        let mut by_addr: BTreeMap<IpAddr, Acc> = BTreeMap::new();
        let mut keys: Vec<&ServiceKey> = self.services.keys().collect();
        keys.sort();
        for key in keys {
            let svc = &self.services[key];
            if !self.pools.get(&svc.pool).is_some_and(|p| p.local) {
                continue;
            }
            for addr in &svc.addresses {
                let acc = by_addr.entry(*addr).or_insert_with(|| Acc {
                    pool: &svc.pool,
                    services: Vec::new(),
                    cluster: false,
                    ready: BTreeSet::new(),
                });
                acc.services.push((key.clone(), svc.uid.clone()));
                if svc.local_policy {
                    for nodes in self.ready.get(key).into_iter().flat_map(|m| m.values()) {
                        acc.ready.extend(nodes.iter().cloned());
                    }
                } else {
                    acc.cluster = true;
                }
            }
        }
        by_addr
            .into_iter()
            .map(|(addr, acc)| {
                let interfaces = &self.pools[acc.pool].interfaces;
                let ballot = Ballot {
                    addr,
                    interfaces,
                    endpoints: (!acc.cluster).then_some(&acc.ready),
                };
                AddressElection {
                    addr,
                    pool: acc.pool.to_string(),
                    services: acc.services,
                    elected: elect(&ballot, members),
                }
            })
            .collect()
    }

    fn touch(&mut self) -> Vec<()> {
        self.generation += 1;
        Vec::new()
    }
}

impl Index<Service> for L2Model {
    type Out = ();
    fn apply(&mut self, svc: Arc<Service>) -> Vec<()> {
        let key = crate::service::key(&svc);
        let facts = ServiceFacts::of(&svc, self.handle_class_less);
        if self.services.get(&key) == facts.as_ref() {
            return Vec::new();
        }
        match facts {
            Some(f) => self.services.insert(key, f),
            None => self.services.remove(&key),
        };
        self.touch()
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<()> {
        if self.services.remove(&key.into()).is_some() {
            self.touch();
        }
        Vec::new()
    }
}

impl Index<EndpointSlice> for L2Model {
    type Out = ();
    fn apply(&mut self, slice: Arc<EndpointSlice>) -> Vec<()> {
        let Some(name) = slice.labels().get(SERVICE_NAME_LABEL) else {
            return Vec::new();
        };
        let key = ServiceKey::new(slice.namespace().unwrap_or_default(), name.clone());
        let nodes: BTreeSet<String> = slice
            .endpoints
            .iter()
            .filter(|e| takes_traffic(e))
            .filter_map(|e| e.node_name.clone())
            .collect();
        let slices = self.ready.entry(key).or_default();
        if slices.get(&slice.name_any()) == Some(&nodes) {
            return Vec::new();
        }
        slices.insert(slice.name_any(), nodes);
        self.touch()
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<()> {
        let namespace = key.namespace.as_deref().unwrap_or_default();
        let mut changed = false;
        for (k, slices) in self.ready.iter_mut() {
            if k.namespace == namespace {
                changed |= slices.remove(&key.name).is_some();
            }
        }
        self.ready.retain(|_, s| !s.is_empty());
        if changed {
            self.touch();
        }
        Vec::new()
    }
}

impl Index<AddressPool> for L2Model {
    type Out = ();
    fn apply(&mut self, pool: Arc<AddressPool>) -> Vec<()> {
        let facts = PoolFacts {
            local: pool.spec.mode == PoolMode::Local,
            interfaces: pool.spec.interfaces.clone(),
        };
        if self.pools.get(&pool.name_any()) == Some(&facts) {
            return Vec::new();
        }
        self.pools.insert(pool.name_any(), facts);
        self.touch()
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<()> {
        if self.pools.remove(&key.name).is_some() {
            self.touch();
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PINNED_V4: u64 = 4497532117573127197;
    const PINNED_V6: u64 = 1683575817242709273;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn member(subnets: &[&str]) -> Member {
        Member {
            eligible: Ok(()),
            interfaces: vec![LanInterface {
                name: "eth0".into(),
                subnets: subnets.iter().map(|s| parse_prefix(s).unwrap()).collect(),
            }],
            claims: BTreeMap::new(),
            lease_ms: 1500,
            alive: true,
        }
    }

    fn lan(n: usize) -> BTreeMap<String, Member> {
        (1..=n)
            .map(|i| {
                (
                    format!("node-{i}"),
                    member(&["192.0.2.2/24", "2001:db8::2/64"]),
                )
            })
            .collect()
    }

    fn ballot(addr: &str) -> Ballot<'static> {
        Ballot {
            addr: ip(addr),
            interfaces: &[],
            endpoints: None,
        }
    }

    fn winner(b: &Ballot, m: &BTreeMap<String, Member>) -> String {
        elect(b, m).node().expect("someone is elected").to_string()
    }

    #[test]
    fn a_record_survives_its_annotations() {
        let mut m = member(&["192.0.2.2/24", "2001:db8::2/64"]);
        m.claims = [(ip("192.0.2.10"), 3), (ip("2001:db8::10"), 1)].into();
        m.interfaces.push(LanInterface {
            name: "eth1".into(),
            subnets: vec![parse_prefix("198.51.100.7/24").unwrap()],
        });
        let back = Member::from_annotations(&m.annotations());
        assert_eq!(
            back,
            Member {
                alive: false,
                ..m.clone()
            }
        );
        m.eligible = Err("node node-1 is cordoned".into());
        assert_eq!(
            Member::from_annotations(&m.annotations()).eligible,
            m.eligible
        );
    }

    #[test]
    fn a_garbled_record_counts_against_its_node() {
        let bad = BTreeMap::from([
            (
                INTERFACES.to_string(),
                "eth0=192.0.2.300/24,x;=1.2.3.4/8".to_string(),
            ),
            (
                CLAIMS.to_string(),
                "nonsense,192.0.2.10,192.0.2.11@x".to_string(),
            ),
        ]);
        let m = Member::from_annotations(&bad);
        assert!(m.eligible.is_err(), "no eligible annotation: not eligible");
        assert_eq!(m.interfaces.len(), 1);
        assert!(m.interfaces[0].subnets.is_empty());
        assert_eq!(
            m.claims,
            [(ip("192.0.2.10"), 0), (ip("192.0.2.11"), 0)].into()
        );
    }

    #[test]
    fn the_interface_is_the_one_whose_subnet_holds_the_address() {
        let mut m = member(&["192.0.2.2/24"]);
        m.interfaces.insert(
            0,
            LanInterface {
                name: "docker0".into(),
                subnets: vec![parse_prefix("192.0.2.1/24").unwrap()],
            },
        );
        m.interfaces.push(LanInterface {
            name: "eth1".into(),
            subnets: vec![parse_prefix("198.51.100.2/24").unwrap()],
        });
        assert_eq!(m.interface_for(ip("192.0.2.10"), &[]), Some("eth0"));
        assert_eq!(m.interface_for(ip("198.51.100.9"), &[]), Some("eth1"));
        assert_eq!(m.interface_for(ip("203.0.113.9"), &[]), None);
        assert_eq!(m.interface_for(ip("2001:db8::9"), &[]), None);
        // A named interface wins, subnet or not; docker0 only when named.
        let named = vec!["bond0".to_string(), "eth1".to_string()];
        assert_eq!(m.interface_for(ip("203.0.113.9"), &named), Some("eth1"));
        assert_eq!(
            m.interface_for(ip("192.0.2.10"), &["docker0".to_string()]),
            Some("docker0")
        );
        // A host prefix holds nothing.
        assert!(!holds(&Prefix::host(ip("192.0.2.10")), ip("192.0.2.10")));
    }

    #[test]
    fn elections_agree_and_spread() {
        let members = lan(3);
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for i in 10..70 {
            let b = ballot(&format!("192.0.2.{i}"));
            let w = winner(&b, &members);
            // Any node computes the same: the map is the same everywhere.
            assert_eq!(w, winner(&b, &members.clone()));
            *per_node.entry(w).or_default() += 1;
        }
        assert_eq!(per_node.len(), 3, "{per_node:?}");
        assert!(per_node.values().all(|n| *n >= 10), "{per_node:?}");
    }

    #[test]
    fn a_holder_keeps_its_address_when_a_node_joins() {
        let mut members = lan(3);
        let mut holders = BTreeMap::new();
        for i in 10..70 {
            let a = ip(&format!("192.0.2.{i}"));
            let w = winner(&ballot(&a.to_string()), &members);
            members.get_mut(&w).unwrap().claims.insert(a, 1);
            holders.insert(a, w);
        }
        members.insert("node-4".into(), member(&["192.0.2.5/24"]));
        members.insert("node-0".into(), member(&["198.51.100.5/24"]));
        for (a, w) in &holders {
            assert_eq!(&winner(&ballot(&a.to_string()), &members), w);
        }
        // Without claims, node-4 would win some: the claims are what keeps them.
        let fresh: Vec<String> = holders
            .keys()
            .map(|a| {
                let mut m = members.clone();
                m.values_mut().for_each(|m| m.claims.clear());
                winner(&ballot(&a.to_string()), &m)
            })
            .collect();
        assert!(fresh.iter().any(|w| w == "node-4"));
    }

    #[test]
    fn a_dead_or_unfit_holder_is_replaced_by_the_next_best() {
        let a = "192.0.2.10";
        let mut members = lan(3);
        let first = winner(&ballot(a), &members);
        members.get_mut(&first).unwrap().claims.insert(ip(a), 1);
        for spoil in [
            (|m: &mut Member| m.alive = false) as fn(&mut Member),
            |m| m.eligible = Err("NotReady".into()),
            |m| m.interfaces.clear(),
        ] {
            let mut m = members.clone();
            spoil(m.get_mut(&first).unwrap());
            let next = winner(&ballot(a), &m);
            assert_ne!(next, first);
            // The same one each time: the next best score.
            let mut without = members.clone();
            without.remove(&first);
            assert_eq!(next, winner(&ballot(a), &without));
        }
    }

    #[test]
    fn local_policy_elects_only_nodes_with_an_endpoint() {
        let members = lan(3);
        let ready: BTreeSet<String> = ["node-2".to_string()].into();
        let b = Ballot {
            endpoints: Some(&ready),
            ..ballot("192.0.2.10")
        };
        assert_eq!(winner(&b, &members), "node-2");
        let none = BTreeSet::new();
        let b = Ballot {
            endpoints: Some(&none),
            ..ballot("192.0.2.10")
        };
        match elect(&b, &members) {
            Elected::Nobody(why) => assert!(why.contains("no ready endpoint"), "{why}"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_split_brain_resolves_to_the_later_takeover() {
        let a = ip("192.0.2.10");
        let mut members = lan(3);
        for m in members.values_mut() {
            m.claims.insert(a, 1);
        }
        assert_eq!(claimants(a, &members).len(), 3);
        // Equal terms: the score decides, as if nobody claimed.
        let w = winner(&ballot("192.0.2.10"), &members);
        let mut unclaimed = members.clone();
        unclaimed.values_mut().for_each(|m| m.claims.clear());
        assert_eq!(w, winner(&ballot("192.0.2.10"), &unclaimed));
        // The best-scored node comes back from a crash still claiming term 1, while
        // another took over at term 2: the takeover stands.
        let other = members.keys().find(|n| **n != w).unwrap().clone();
        let term = next_term(a, &members);
        assert_eq!(term, 2);
        members.get_mut(&other).unwrap().claims.insert(a, term);
        assert_eq!(winner(&ballot("192.0.2.10"), &members), other);
        assert_eq!(next_term(a, &members), 3);
        assert_eq!(next_term(ip("192.0.2.99"), &members), 1);
    }

    #[test]
    fn nobody_says_why_for_every_node() {
        let mut members = lan(2);
        members.get_mut("node-1").unwrap().alive = false;
        members.get_mut("node-2").unwrap().eligible = Err(
            "node node-2 is labelled node.kubernetes.io/exclude-from-external-load-balancers"
                .into(),
        );
        match elect(&ballot("203.0.113.5"), &members) {
            Elected::Nobody(why) => {
                assert!(why.contains("node-1 stopped renewing"), "{why}");
                assert!(why.contains("exclude-from-external"), "{why}");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            elect(&ballot("203.0.113.5"), &BTreeMap::new()),
            Elected::Nobody(_)
        ));
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned: agents of two versions must agree during an upgrade.
        assert_eq!(score("node-1", ip("192.0.2.10")), PINNED_V4);
        assert_eq!(score("node-2", ip("2001:db8::10")), PINNED_V6);
    }

    #[test]
    fn a_node_is_eligible_unless_it_says_otherwise() {
        let node = |v: serde_json::Value| -> Node { serde_json::from_value(v).unwrap() };
        assert!(eligibility(Some(&node(json!({"metadata": {"name": "n"}})))).is_ok());
        assert!(eligibility(None).is_err());
        for (v, says) in [
            (
                json!({"metadata": {"name": "n", "labels": {EXCLUDE_LABEL: ""}}}),
                "labelled",
            ),
            (
                json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}}),
                "cordoned",
            ),
            (
                json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
                "not Ready",
            ),
            (
                json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "NetworkUnavailable", "status": "True"}]}}),
                "NetworkUnavailable",
            ),
        ] {
            let why = eligibility(Some(&node(v))).unwrap_err();
            assert!(why.contains(says), "{why}");
        }
    }

    #[test]
    fn the_announcing_annotations_name_the_live_claimants() {
        let svc = |annotations: serde_json::Value| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "demo", "annotations": annotations},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"ip": "2001:db8::10"}]}}
            }))
            .unwrap()
        };
        let mut members = lan(3);
        members
            .get_mut("node-2")
            .unwrap()
            .claims
            .insert(ip("192.0.2.10"), 1);
        let p = announcing_patch(&svc(json!({})), true, &members).unwrap();
        assert_eq!(
            p,
            json!({"metadata": {"annotations": {ANNOUNCING_IPV4: "node-2"}}})
        );
        let current = svc(json!({ANNOUNCING_IPV4: "node-2"}));
        assert_eq!(announcing_patch(&current, true, &members), None);
        // A dead claimant is no announcer; a split brain shows both.
        members.get_mut("node-2").unwrap().alive = false;
        assert_eq!(
            announcing_patch(&current, true, &members).unwrap(),
            json!({"metadata": {"annotations": {ANNOUNCING_IPV4: null}}})
        );
        members.get_mut("node-2").unwrap().alive = true;
        members
            .get_mut("node-3")
            .unwrap()
            .claims
            .insert(ip("192.0.2.10"), 2);
        members
            .get_mut("node-1")
            .unwrap()
            .claims
            .insert(ip("2001:db8::10"), 1);
        assert_eq!(
            announcing_patch(&current, true, &members).unwrap(),
            json!({"metadata": {"annotations": {ANNOUNCING_IPV4: "node-2,node-3", ANNOUNCING_IPV6: "node-1"}}})
        );
        // Not a local pool (any more): the annotations go.
        assert_eq!(
            announcing_patch(&current, false, &members).unwrap(),
            json!({"metadata": {"annotations": {ANNOUNCING_IPV4: null}}})
        );
    }

    #[test]
    fn a_local_pool_no_node_can_answer_for_says_why() {
        let pool = |addresses: serde_json::Value| -> AddressPool {
            serde_json::from_value(json!({
                "apiVersion": "routelb.io/v1alpha1", "kind": "AddressPool",
                "metadata": {"name": "lan"},
                "spec": {"addresses": addresses, "mode": "local"}
            }))
            .unwrap()
        };
        let members = lan(2);
        assert_eq!(
            pool_reach(
                &pool(json!(["192.0.2.200-192.0.2.220", "2001:db8::200/125"])),
                &members
            ),
            Ok(vec!["node-1".to_string(), "node-2".to_string()])
        );
        let why = pool_reach(&pool(json!(["203.0.113.0/28"])), &members).unwrap_err();
        assert!(
            why.contains("node-1 has no LAN interface with a subnet holding 203.0.113.0"),
            "{why}"
        );
        assert!(pool_reach(&pool(json!(["192.0.2.200/29"])), &BTreeMap::new()).is_err());
    }

    #[test]
    fn the_model_elects_for_local_pools_only() {
        let mut m = L2Model::new(true);
        let pool = |name: &str, mode: &str| -> Arc<AddressPool> {
            Arc::new(
                serde_json::from_value(json!({
                    "apiVersion": "routelb.io/v1alpha1", "kind": "AddressPool",
                    "metadata": {"name": name},
                    "spec": {"addresses": ["192.0.2.0/24"], "mode": mode}
                }))
                .unwrap(),
            )
        };
        let svc = |name: &str, pool: &str, ip: &str, policy: &str| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "demo", "uid": name,
                        "annotations": {"routelb.io/allocated-from": pool}},
                    "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy},
                    "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
                }))
                .unwrap(),
            )
        };
        m.apply(pool("l2", "local"));
        m.apply(pool("bgp", "routed"));
        assert!(m.has_local_pools());
        m.apply(svc("a", "l2", "192.0.2.10", "Local"));
        m.apply(svc("b", "bgp", "192.0.2.11", "Cluster"));
        let members = lan(3);
        let e = m.elections(&members);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(matches!(&e[0].elected, Elected::Nobody(w) if w.contains("no ready endpoint")));
        let g = m.generation();
        let slice: Arc<EndpointSlice> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "a-1", "namespace": "demo",
                    "labels": {"kubernetes.io/service-name": "a"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.0.0.1"], "nodeName": "node-3", "conditions": {"ready": true}},
                    {"addresses": ["10.0.0.2"], "nodeName": "node-1", "conditions": {"ready": false, "terminating": true}}
                ]
            }))
            .unwrap(),
        );
        m.apply(slice.clone());
        assert!(m.generation() > g);
        let g = m.generation();
        m.apply(slice);
        assert_eq!(m.generation(), g, "an unchanged slice changes nothing");
        let e = m.elections(&members);
        assert_eq!(e[0].elected.node(), Some("node-3"));
        Index::<EndpointSlice>::delete(
            &mut m,
            &ObjectKey {
                namespace: Some("demo".into()),
                name: "a-1".into(),
            },
        );
        assert!(m.elections(&members)[0].elected.node().is_none());
    }
}
