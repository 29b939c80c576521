//! The template context: what a routing-daemon template may use, built from the
//! cluster's objects, validated and neutralised so that no object can inject routing
//! configuration. Pure. The schema is versioned ([`CONTEXT_VERSION`]) and documented in
//! `docs/templates.md`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::advertise::{Advertise, Kind};
use crate::crd::{
    AddressPoolSpec, AggregationLength, BGPPeerSpec, Daemon, PoolMode, RouterConfigSpec,
    SecretKeyRef,
};
use crate::ipam::range::{AddrRange, Family, parse_entry};
use crate::net::{KernelContract, Prefix};
use crate::selector::{Labels, Selector};

/// The hold time of a BGPPeer that sets none, in seconds.
pub const DEFAULT_HOLD_TIME: u16 = 90;

/// Version of the context schema; bumped on incompatible changes.
pub const CONTEXT_VERSION: u32 = 1;

/// Everything a template sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub version: u32,
    /// `bird` or `frr`.
    pub daemon: String,
    pub node: NodeCtx,
    /// BGP router ID (an IPv4 address).
    pub router_id: String,
    /// The node's AS number.
    pub asn: u32,
    /// Port the daemon listens on for BGP; 0: outbound sessions only.
    pub listen_port: u16,
    pub kernel: KernelCtx,
    /// The peers selected for this node, in name order.
    pub peers: Vec<PeerCtx>,
    /// Routed pools, in name order.
    pub pools: Vec<PoolCtx>,
    /// Which kinds of Service address the node announces, and the CIDRs that tell a
    /// prefix's kind (RouterConfig `spec.advertise`). Absent from a context written
    /// before it existed: routelb's defaults (LoadBalancer addresses only).
    #[serde(default)]
    pub advertise: AdvertiseCtx,
}

/// The kinds of Service address, as a template sees them. Services' annotations switch
/// kinds on or off one by one, so `enabled` is only the default: a template matching
/// prefixes should match on the CIDRs whatever `enabled` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseCtx {
    /// LoadBalancer addresses by default (their prefixes are the pools').
    pub load_balancer_ips: bool,
    pub external_ips: KindCtx,
    pub cluster_ips: KindCtx,
}

/// One kind of Service address: externalIPs or cluster IPs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCtx {
    /// Announced by default.
    pub enabled: bool,
    /// Cluster IPs: the CIDRs themselves are announced, not one route per address
    /// (Services with `internalTrafficPolicy: Local` still get host routes).
    pub aggregate: bool,
    /// The CIDRs addresses of this kind are announced from, per family.
    pub prefixes4: Vec<String>,
    pub prefixes6: Vec<String>,
}

impl Default for AdvertiseCtx {
    fn default() -> AdvertiseCtx {
        AdvertiseCtx::of(&Advertise::default())
    }
}

impl AdvertiseCtx {
    fn of(adv: &Advertise) -> AdvertiseCtx {
        let kind = |k: Kind| {
            let family = |v4: bool| {
                adv.cidrs(k)
                    .iter()
                    .filter(|p| p.addr.is_ipv4() == v4)
                    .map(ToString::to_string)
                    .collect()
            };
            KindCtx {
                enabled: adv.enabled[k.idx()],
                aggregate: k == Kind::Cluster && adv.aggregate,
                prefixes4: family(true),
                prefixes6: family(false),
            }
        };
        AdvertiseCtx {
            load_balancer_ips: adv.enabled[Kind::LoadBalancer.idx()],
            external_ips: kind(Kind::External),
            cluster_ips: kind(Kind::Cluster),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCtx {
    pub name: String,
    /// Labels whose keys and values are plain (letters, digits, `-_./`).
    pub labels: BTreeMap<String, String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCtx {
    pub table: u32,
    pub protocol: u8,
    pub interface: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BfdCtx {
    pub receive_interval: u32,
    pub transmit_interval: u32,
    pub detect_multiplier: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCtx {
    /// The BGPPeer's name.
    pub name: String,
    /// A unique identifier safe as a BIRD protocol name (`peer_<name>`).
    pub id: String,
    pub address: String,
    /// `ipv4` or `ipv6`: the session's address family.
    pub family: String,
    pub asn: u32,
    pub port: u16,
    /// Whether the session is eBGP (peer AS differs from ours).
    pub ebgp: bool,
    /// Validated: printable ASCII without quotes, backslashes or spaces.
    pub password: Option<String>,
    /// Seconds; 0: no keepalives. Always set by routelb (default 90).
    pub hold_time: Option<u16>,
    /// A third of the hold time.
    pub keepalive: Option<u16>,
    pub ebgp_multihop: Option<u8>,
    pub bfd: Option<BfdCtx>,
    pub graceful_restart: bool,
    pub add_paths: bool,
    /// The node's own address in the session's family, if known.
    pub local_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCtx {
    pub name: String,
    /// A unique identifier safe in BIRD and FRR names (`pool_<name>`).
    pub id: String,
    /// The pool's addresses as CIDRs, per family.
    pub prefixes4: Vec<String>,
    pub prefixes6: Vec<String>,
    pub aggregation4: u8,
    pub aggregation6: u8,
    /// Standard communities `ASN:VALUE` and large ones `ASN:X:Y`.
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    pub local_preference: Option<u32>,
}

/// Why no context could be built: what to fix, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContextError {
    #[error("RouterConfig {name}: {why}")]
    RouterConfig { name: String, why: String },
    #[error("BGPPeer {name}: {why}")]
    Peer { name: String, why: String },
    #[error("AddressPool {name}: {why}")]
    Pool { name: String, why: String },
}

/// The node as the context builder needs it.
#[derive(Clone, Debug, Default)]
pub struct NodeInput {
    pub name: String,
    pub labels: Labels,
    pub addresses: Vec<IpAddr>,
}

fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// An identifier safe in BIRD protocol names and FRR list names.
fn ident(prefix: &str, name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{cleaned}")
}

/// A password usable in both daemons' syntaxes, or why not.
fn check_password(p: &str) -> Result<String, String> {
    if p.is_empty() || p.len() > 80 {
        return Err("the password must have 1 to 80 characters".into());
    }
    // The message never quotes the password (Events, logs and /readyz show it).
    if p.chars().any(|c| {
        !c.is_ascii_graphic() || matches!(c, '"' | '\\' | '\'' | '#' | '!' | ';' | '{' | '}')
    }) {
        return Err(
            "the password contains a character that is not allowed; use letters, digits and punctuation other than quotes, backslashes, #, !, ;, braces (no spaces, ASCII only)".into(),
        );
    }
    Ok(p.to_string())
}

/// The smallest set of CIDRs covering a range.
pub fn cidrs(range: &AddrRange) -> Vec<Prefix> {
    let bits = u32::from(range.family.bits());
    let (mut start, end) = (range.first, range.last);
    let mut out = Vec::new();
    loop {
        // Largest block aligned at `start` that does not pass `end`.
        let mut size_bits = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        while size_bits > 0 {
            let last = if size_bits >= 128 {
                u128::MAX
            } else {
                start + ((1u128 << size_bits) - 1)
            };
            if last <= end {
                break;
            }
            size_bits -= 1;
        }
        out.push(Prefix::new(
            range.family.addr(start),
            (bits - size_bits) as u8,
        ));
        let block_last = if size_bits >= 128 {
            u128::MAX
        } else {
            start + ((1u128 << size_bits) - 1)
        };
        if block_last >= end {
            return out;
        }
        start = block_last + 1;
    }
}

/// What a node's context is built from.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub node: &'a NodeInput,
    /// The RouterConfig that governs the node: its name and spec.
    pub router: (&'a str, &'a RouterConfigSpec),
    /// The kernel contract it sets (see [`super::contract`]).
    pub kernel: &'a KernelContract,
    pub peers: &'a [(String, BGPPeerSpec)],
    pub pools: &'a [(String, AddressPoolSpec)],
    pub password: &'a dyn Fn(&SecretKeyRef) -> Result<String, String>,
    /// The context last rendered for the node: a peer or pool that is invalid now keeps
    /// its version from it.
    pub previous: Option<&'a Context>,
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("node", &self.node.name)
            .field("router", &self.router.0)
            .finish_non_exhaustive()
    }
}

/// What became of an object that could not be used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Its last valid version stays in use.
    Kept,
    /// Used without the part that is invalid (a pool's BGP attributes).
    Partial,
    /// Left out: there is no valid version of it.
    LeftOut,
}

/// An object the context could not use as it is, and what was done instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub error: ContextError,
    pub fallback: Fallback,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.fallback {
            Fallback::Kept => "its last valid version stays in use",
            Fallback::Partial => "its BGP attributes are left out",
            Fallback::LeftOut => "it is left out",
        };
        write!(f, "{}; {what}", self.error)
    }
}

/// A context, the objects it could not use as they are, and settings the daemon
/// cannot apply as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub context: Context,
    pub problems: Vec<Problem>,
    /// What the RouterConfig asks that its daemon cannot do, and what happens instead.
    pub notes: Vec<String>,
}

/// Settings of a RouterConfig that its daemon cannot apply as asked.
fn unsupported(rc_name: &str, rc: &RouterConfigSpec) -> Vec<String> {
    match (rc.daemon.unwrap_or_default(), rc.listen_port) {
        (Daemon::Bird, Some(0)) => vec![format!(
            "RouterConfig {rc_name}: listenPort 0 (outbound only): BIRD cannot stop listening and keeps its default port 179; use another port to stay clear of another BGP speaker"
        )],
        (Daemon::Frr, Some(port)) => vec![format!(
            "RouterConfig {rc_name}: listenPort {port}: FRR takes its listen port only from bgpd's -p option (bgpd_options in the sidecar's daemons file), never at run time; make them agree"
        )],
        _ => Vec::new(),
    }
}

/// Builds the context for a node. Each BGPPeer and pool is checked on its own: one that
/// cannot be used keeps its last valid version, or is left out, and is named in
/// [`Built::problems`]; the others are rendered. Only a RouterConfig that cannot be used
/// fails the whole context. Peers whose nodeSelector does not select the node are left
/// out.
pub fn build(inputs: &Inputs) -> Result<Built, ContextError> {
    let Inputs {
        node,
        router: (rc_name, rc),
        kernel,
        previous,
        ..
    } = *inputs;
    let rc_err = |why: String| ContextError::RouterConfig {
        name: rc_name.to_string(),
        why,
    };
    let node_ctx = node_ctx(node);
    let router_id = router_id(node, rc).map_err(rc_err)?;
    if rc.asn == 0 {
        return Err(rc_err("asn must be between 1 and 4294967295".into()));
    }
    let mut problems = Vec::new();
    let mut ctx_peers = Vec::new();
    for (name, p) in inputs.peers {
        match peer_ctx(node, rc.asn, name, p, inputs.password) {
            Ok(Some(peer)) => ctx_peers.push(peer),
            Ok(None) => {}
            Err(why) => {
                let last = previous.and_then(|c| c.peers.iter().find(|x| x.name == *name));
                problems.push(Problem {
                    error: ContextError::Peer {
                        name: name.clone(),
                        why,
                    },
                    fallback: if last.is_some() {
                        Fallback::Kept
                    } else {
                        Fallback::LeftOut
                    },
                });
                ctx_peers.extend(last.cloned());
            }
        }
    }
    ctx_peers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ctx_pools = Vec::new();
    for (name, spec) in inputs
        .pools
        .iter()
        .filter(|(_, s)| s.mode == PoolMode::Routed)
    {
        let (pool, problem) = pool_ctx(name, spec, previous);
        ctx_pools.extend(pool);
        problems.extend(problem);
    }
    ctx_pools.sort_by(|a, b| a.name.cmp(&b.name));
    let context = Context {
        version: CONTEXT_VERSION,
        daemon: match rc.daemon.unwrap_or_default() {
            Daemon::Bird => "bird",
            Daemon::Frr => "frr",
        }
        .into(),
        node: node_ctx,
        router_id: router_id.to_string(),
        asn: rc.asn,
        listen_port: rc.listen_port.unwrap_or(179),
        kernel: KernelCtx {
            table: kernel.table,
            protocol: kernel.protocol,
            interface: kernel.interface.clone(),
        },
        peers: ctx_peers,
        pools: ctx_pools,
        advertise: AdvertiseCtx::of(&Advertise::from_spec(rc_name, rc).0),
    };
    Ok(Built {
        context,
        problems,
        notes: unsupported(rc_name, rc),
    })
}

fn first(node: &NodeInput, v4: bool) -> Option<IpAddr> {
    node.addresses.iter().find(|a| a.is_ipv4() == v4).copied()
}

fn node_ctx(node: &NodeInput) -> NodeCtx {
    NodeCtx {
        name: node.name.clone(),
        labels: node
            .labels
            .iter()
            .filter(|(k, v)| plain(k) && (v.is_empty() || plain(v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ipv4: first(node, true).map(|a| a.to_string()),
        ipv6: first(node, false).map(|a| a.to_string()),
    }
}

/// The RouterConfig's router ID, else the node's IPv4 address.
fn router_id(node: &NodeInput, rc: &RouterConfigSpec) -> Result<Ipv4Addr, String> {
    match (&rc.router_id, first(node, true)) {
        (Some(id), _) => id
            .parse()
            .map_err(|_| format!("routerID {id:?} is not an IPv4 address")),
        (None, Some(IpAddr::V4(a))) => Ok(a),
        (None, _) => Err(format!(
            "node {} has no IPv4 address to use as router ID; set spec.routerID",
            node.name
        )),
    }
}

fn peer_selector(p: &BGPPeerSpec) -> Result<Selector, String> {
    match &p.node_selector {
        Some(s) => Selector::from_k8s(s).map_err(|e| format!("nodeSelector: {e}")),
        None => Ok(Selector::default()),
    }
}

/// Whether an address can be a BGP neighbour: unicast, not unspecified, loopback,
/// link-local, multicast or broadcast (the CRD refuses those too).
fn unicast(a: IpAddr) -> bool {
    let link_local = match a {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    !a.is_loopback() && !a.is_unspecified() && !a.is_multicast() && !link_local
}

/// The checks of a BGPPeer that do not depend on the node (its address, AS number, hold
/// time and nodeSelector): what the allocator reports in the BGPPeer's `Valid`
/// condition. Returns the peer's address.
pub fn check_peer(p: &BGPPeerSpec) -> Result<IpAddr, String> {
    peer_selector(p)?;
    let address: IpAddr = p
        .address
        .trim()
        .parse()
        .map_err(|_| format!("address {:?} is not an IP address", p.address))?;
    if !unicast(address) {
        return Err(format!(
            "address {address} is not a unicast address a node can peer with"
        ));
    }
    if p.asn == 0 {
        return Err("asn must be between 1 and 4294967295".into());
    }
    if let Some(h) = p.hold_time
        && h != 0
        && h < 3
    {
        return Err("holdTime must be 0 or at least 3 seconds".into());
    }
    // What both daemons take (the CRD says the same; objects written before it may not).
    if p.port == Some(0) {
        return Err("port must be between 1 and 65535".into());
    }
    if p.ebgp_multihop == Some(0) {
        return Err("ebgpMultihop must be between 1 and 255".into());
    }
    if let Some(b) = &p.bfd {
        for (field, v) in [
            ("receiveInterval", b.receive_interval),
            ("transmitInterval", b.transmit_interval),
        ] {
            if let Some(ms) = v
                && !(BFD_MIN_INTERVAL..=60_000).contains(&ms)
            {
                return Err(format!(
                    "bfd.{field} {ms} must be between {BFD_MIN_INTERVAL} and 60000 ms"
                ));
            }
        }
        if let Some(m) = b.detect_multiplier
            && m < 2
        {
            return Err(format!(
                "bfd.detectMultiplier {m} must be between 2 and 255"
            ));
        }
    }
    Ok(address)
}

/// The shortest BFD interval both daemons take (FRR's minimum), in milliseconds.
pub const BFD_MIN_INTERVAL: u32 = 50;

/// One peer's context, or `None` when its nodeSelector leaves this node out.
fn peer_ctx(
    node: &NodeInput,
    local_asn: u32,
    name: &str,
    p: &BGPPeerSpec,
    password: &dyn Fn(&SecretKeyRef) -> Result<String, String>,
) -> Result<Option<PeerCtx>, String> {
    if !peer_selector(p)?.matches(&node.labels) {
        return Ok(None);
    }
    let address = check_peer(p)?;
    if node.addresses.contains(&address) {
        return Err(format!("address {address} is node {}'s own", node.name));
    }
    let local = first(node, address.is_ipv4());
    if p.ebgp_multihop.is_some() && p.bfd.is_some() && local.is_none() {
        return Err(format!(
            "ebgpMultihop with bfd needs a source address, and node {} has no {} address",
            node.name,
            if address.is_ipv4() { "IPv4" } else { "IPv6" }
        ));
    }
    let pw = match &p.password_secret_ref {
        Some(r) => Some(
            password(r)
                .and_then(|pw| check_password(&pw))
                .map_err(|why| format!("passwordSecretRef: {why}"))?,
        ),
        None => None,
    };
    Ok(Some(PeerCtx {
        name: name.to_string(),
        id: ident("peer", name),
        address: address.to_string(),
        family: if address.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
        asn: p.asn,
        port: p.port.unwrap_or(179),
        ebgp: p.asn != local_asn,
        password: pw,
        // The documented default, rendered: each daemon's own default differs (BIRD 240,
        // FRR 180).
        hold_time: Some(p.hold_time.unwrap_or(DEFAULT_HOLD_TIME)),
        keepalive: Some(p.hold_time.unwrap_or(DEFAULT_HOLD_TIME) / 3),
        ebgp_multihop: p.ebgp_multihop,
        bfd: p.bfd.as_ref().map(|b| BfdCtx {
            receive_interval: b.receive_interval.unwrap_or(300),
            transmit_interval: b.transmit_interval.unwrap_or(300),
            detect_multiplier: b.detect_multiplier.unwrap_or(3),
        }),
        graceful_restart: p.graceful_restart.unwrap_or(false),
        add_paths: p.add_paths.unwrap_or(false),
        local_address: local.map(|a| a.to_string()),
    }))
}

/// A routed pool's context: its prefixes and BGP attributes. A pool whose addresses
/// cannot be read keeps its last valid version (or is left out); one whose BGP
/// attributes are invalid keeps its last valid version, or is used without them, so its
/// addresses stay announced.
fn pool_ctx(
    name: &str,
    spec: &AddressPoolSpec,
    previous: Option<&Context>,
) -> (Option<PoolCtx>, Option<Problem>) {
    let last = previous.and_then(|c| c.pools.iter().find(|p| p.name == name));
    let problem = |why: String, fallback| Problem {
        error: ContextError::Pool {
            name: name.to_string(),
            why,
        },
        fallback,
    };
    let mut prefixes = (Vec::new(), Vec::new());
    for entry in &spec.addresses {
        let range = match parse_entry(entry) {
            Ok(r) => r,
            Err(e) => {
                let fallback = if last.is_some() {
                    Fallback::Kept
                } else {
                    Fallback::LeftOut
                };
                return (last.cloned(), Some(problem(e.to_string(), fallback)));
            }
        };
        let list = if range.family == Family::V4 {
            &mut prefixes.0
        } else {
            &mut prefixes.1
        };
        list.extend(cidrs(&range).iter().map(ToString::to_string));
    }
    let (aggregation4, aggregation6) = AggregationLength::of(spec);
    let mut pool = PoolCtx {
        name: name.to_string(),
        id: ident("pool", name),
        prefixes4: prefixes.0,
        prefixes6: prefixes.1,
        aggregation4,
        aggregation6,
        communities: Vec::new(),
        large_communities: Vec::new(),
        local_preference: None,
    };
    let bgp = spec.bgp.clone().unwrap_or_default();
    for c in &bgp.communities {
        let parts: Vec<Option<u32>> = c.split(':').map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [Some(a), Some(b)] if *a <= 65535 && *b <= 65535 => pool.communities.push(c.clone()),
            [Some(_), Some(_), Some(_)] => pool.large_communities.push(c.clone()),
            _ => {
                let why = format!(
                    "community {c:?} is neither ASN:VALUE (16-bit each) nor ASN:X:Y (32-bit each)"
                );
                // The addresses as they are now, the attributes as they last were.
                let (communities, large, local_preference) = match last {
                    Some(l) => (
                        l.communities.clone(),
                        l.large_communities.clone(),
                        l.local_preference,
                    ),
                    None => (Vec::new(), Vec::new(), None),
                };
                let fallback = if last.is_some() {
                    Fallback::Kept
                } else {
                    Fallback::Partial
                };
                return (
                    Some(PoolCtx {
                        communities,
                        large_communities: large,
                        local_preference,
                        ..pool
                    }),
                    Some(problem(why, fallback)),
                );
            }
        }
    }
    pool.local_preference = bgp.local_preference;
    (Some(pool), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeInput {
        NodeInput {
            name: "node-1".into(),
            labels: [
                ("rack".to_string(), "a".to_string()),
                ("evil".to_string(), "x\";\nprotocol static {".to_string()),
            ]
            .into(),
            addresses: vec![
                "192.0.2.11".parse().unwrap(),
                "2001:db8::11".parse().unwrap(),
            ],
        }
    }

    fn peer(v: serde_json::Value) -> BGPPeerSpec {
        serde_json::from_value(v).unwrap()
    }

    fn rc() -> RouterConfigSpec {
        serde_json::from_value(json!({"asn": 64512})).unwrap()
    }

    fn no_secrets(_: &SecretKeyRef) -> Result<String, String> {
        Err("no secrets here".into())
    }

    #[test]
    fn ranges_become_minimal_cidr_covers() {
        let c = |e: &str| {
            cidrs(&parse_entry(e).unwrap())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(c("192.0.2.0/24"), ["192.0.2.0/24"]);
        assert_eq!(
            c("192.0.2.10-192.0.2.20"),
            [
                "192.0.2.10/31",
                "192.0.2.12/30",
                "192.0.2.16/30",
                "192.0.2.20/32"
            ]
        );
        assert_eq!(c("0.0.0.0-255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(
            c("2001:db8::1-2001:db8::2"),
            ["2001:db8::1/128", "2001:db8::2/128"]
        );
        assert_eq!(c("::/0"), ["::/0"]);
    }

    fn built(
        rc: &RouterConfigSpec,
        peers: &[(String, BGPPeerSpec)],
        pools: &[(String, AddressPoolSpec)],
        password: &dyn Fn(&SecretKeyRef) -> Result<String, String>,
        previous: Option<&Context>,
    ) -> Result<Built, ContextError> {
        build(&Inputs {
            node: &node(),
            router: ("default", rc),
            kernel: &KernelContract::default(),
            peers,
            pools,
            password,
            previous,
        })
    }

    #[test]
    fn selects_peers_by_node_labels_and_derives_ids() {
        let peers = vec![
            (
                "leaf-a".to_string(),
                peer(
                    json!({"address": "192.0.2.1", "asn": 64500, "nodeSelector": {"matchLabels": {"rack": "a"}}}),
                ),
            ),
            (
                "leaf-b".to_string(),
                peer(
                    json!({"address": "192.0.2.2", "asn": 64500, "nodeSelector": {"matchLabels": {"rack": "b"}}}),
                ),
            ),
            (
                "v6.spine".to_string(),
                peer(json!({"address": "2001:db8::1", "asn": 64512, "holdTime": 9, "bfd": {}})),
            ),
        ];
        let ctx = built(&rc(), &peers, &[], &no_secrets, None)
            .unwrap()
            .context;
        let names: Vec<&str> = ctx.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["leaf-a", "v6.spine"]);
        assert_eq!(ctx.peers[1].id, "peer_v6_spine");
        assert_eq!(
            (
                ctx.peers[1].family.as_str(),
                ctx.peers[1].ebgp,
                ctx.peers[1].keepalive
            ),
            ("ipv6", false, Some(3))
        );
        assert_eq!(ctx.peers[1].local_address.as_deref(), Some("2001:db8::11"));
        assert_eq!(ctx.router_id, "192.0.2.11");
        assert!(
            !ctx.node.labels.contains_key("evil"),
            "labels that could inject are dropped"
        );
    }

    #[test]
    fn crafted_values_are_refused_with_the_object_named_and_nothing_else_stops() {
        let good = (
            "good".to_string(),
            peer(json!({"address": "192.0.2.2", "asn": 64500})),
        );
        let with_pw = vec![
            (
                "p".to_string(),
                peer(
                    json!({"address": "192.0.2.1", "asn": 64500, "passwordSecretRef": {"name": "s"}}),
                ),
            ),
            good.clone(),
        ];
        for bad in [
            "x\"; }\nprotocol static evil {",
            "a b",
            "back\\slash",
            "semi;colon",
            "",
        ] {
            let lookup = |_: &SecretKeyRef| Ok(bad.to_string());
            let b = built(&rc(), &with_pw, &[], &lookup, None).unwrap();
            assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
            let problem = b.problems[0].to_string();
            assert!(
                problem.starts_with("BGPPeer p: passwordSecretRef:"),
                "{problem}"
            );
            assert!(problem.ends_with("it is left out"), "{problem}");
            if bad.len() > 1 {
                assert!(
                    !problem.contains(bad),
                    "the password is never quoted: {problem}"
                );
            }
            let names: Vec<&str> = b.context.peers.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["good"], "the other peer is rendered");
        }
        let ok = built(&rc(), &with_pw, &[], &|_| Ok("s3cr3t-pw".into()), None).unwrap();
        assert!(ok.problems.is_empty());
        assert_eq!(ok.context.peers[1].password.as_deref(), Some("s3cr3t-pw"));
        // Broken later: the last valid version stays.
        let lookup = |_: &SecretKeyRef| Err("Secret routelb-system/s not found".to_string());
        let b = built(&rc(), &with_pw, &[], &lookup, Some(&ok.context)).unwrap();
        assert_eq!(b.problems[0].fallback, Fallback::Kept);
        assert_eq!(b.context.peers, ok.context.peers);
        let bad_addr = vec![
            (
                "p".to_string(),
                peer(json!({"address": "192.0.2.1 as 1; } protocol x {", "asn": 64500})),
            ),
            (
                "me".to_string(),
                peer(json!({"address": "192.0.2.11", "asn": 64500})),
            ),
        ];
        let b = built(&rc(), &bad_addr, &[], &no_secrets, None).unwrap();
        let problems: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
        assert!(problems[0].contains("is not an IP address"), "{problems:?}");
        assert!(problems[1].contains("node-1's own"), "{problems:?}");
        assert!(b.context.peers.is_empty());
        let bad_pool: Vec<(String, AddressPoolSpec)> = vec![(
            "p".into(),
            serde_json::from_value(
                json!({"addresses": ["192.0.2.0/24"], "bgp": {"communities": ["1:2; evil", "65536:1"]}}),
            )
            .unwrap(),
        )];
        // A pool with bad attributes keeps its addresses (announced) without them.
        let b = built(&rc(), &[], &bad_pool, &no_secrets, None).unwrap();
        assert_eq!(b.problems[0].fallback, Fallback::Partial);
        assert_eq!(b.context.pools[0].prefixes4, ["192.0.2.0/24"]);
        assert!(b.context.pools[0].communities.is_empty());
        // Found by fuzzing against the daemons: values a daemon refuses are refused here.
        let refused = vec![
            (
                "fast-bfd".to_string(),
                peer(json!({"address": "192.0.2.1", "asn": 64500, "bfd": {"receiveInterval": 10}})),
            ),
            (
                "multihop-bfd-v6".to_string(),
                peer(json!({"address": "2001:db8::1", "asn": 64500, "ebgpMultihop": 2, "bfd": {}})),
            ),
        ];
        let v4_only = NodeInput {
            addresses: vec!["192.0.2.11".parse().unwrap()],
            ..node()
        };
        let b = build(&Inputs {
            node: &v4_only,
            router: ("default", &rc()),
            kernel: &KernelContract::default(),
            peers: &refused,
            pools: &[],
            password: &no_secrets,
            previous: None,
        })
        .unwrap();
        let problems: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
        assert!(problems[0].contains("between 50 and 60000"), "{problems:?}");
        assert!(problems[1].contains("no IPv6 address"), "{problems:?}");
        let mut bad_rc = rc();
        bad_rc.router_id = Some("1.2.3.4; }".into());
        assert!(
            built(&bad_rc, &[], &[], &no_secrets, None)
                .unwrap_err()
                .to_string()
                .contains("routerID")
        );
    }

    #[test]
    fn routed_pools_only_with_their_prefixes_and_communities() {
        let pools: Vec<(String, AddressPoolSpec)> = vec![
            ("public".into(), serde_json::from_value(json!({"addresses": ["203.0.113.0/24", "2001:db8:1::/64"], "aggregationLength": {"ipv4": 24}, "bgp": {"communities": ["65000:100", "64512:1:2"], "localPreference": 200}})).unwrap()),
            ("l2".into(), serde_json::from_value(json!({"addresses": ["198.51.100.0/24"], "mode": "local"})).unwrap()),
        ];
        let ctx = built(&rc(), &[], &pools, &no_secrets, None)
            .unwrap()
            .context;
        assert_eq!(ctx.pools.len(), 1);
        let p = &ctx.pools[0];
        assert_eq!(
            (p.prefixes4.as_slice(), p.prefixes6.as_slice()),
            (
                ["203.0.113.0/24".to_string()].as_slice(),
                ["2001:db8:1::/64".to_string()].as_slice()
            )
        );
        assert_eq!((p.aggregation4, p.aggregation6), (24, 128));
        assert_eq!(
            (p.communities.as_slice(), p.large_communities.as_slice()),
            (
                ["65000:100".to_string()].as_slice(),
                ["64512:1:2".to_string()].as_slice()
            )
        );
        // A pool whose addresses break keeps its last valid version.
        let broken: Vec<(String, AddressPoolSpec)> = vec![(
            "public".into(),
            serde_json::from_value(json!({"addresses": ["203.0.113.9-203.0.113.1"]})).unwrap(),
        )];
        let b = built(&rc(), &[], &broken, &no_secrets, Some(&ctx)).unwrap();
        assert_eq!(b.problems[0].fallback, Fallback::Kept);
        assert_eq!(b.context.pools, ctx.pools);
    }
}
