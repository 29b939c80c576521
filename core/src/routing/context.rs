//! The template context: what a routing-daemon template may use, built from the
//! cluster's objects, validated and neutralised so that no object can inject routing
//! configuration. Pure. The schema is versioned ([`CONTEXT_VERSION`]) and documented in
//! `docs/templates.md`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::crd::{
    AddressPoolSpec, AggregationLength, BGPPeerSpec, Daemon, PoolMode, RouterConfigSpec,
    SecretKeyRef,
};
use crate::ipam::range::{AddrRange, Family, parse_entry};
use crate::net::{KernelContract, Prefix};
use crate::selector::{Labels, Selector};

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
    pub hold_time: Option<u16>,
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
    if let Some(c) = p.chars().find(|c| {
        !c.is_ascii_graphic() || matches!(c, '"' | '\\' | '\'' | '#' | '!' | ';' | '{' | '}')
    }) {
        return Err(format!(
            "the password contains {c:?}; use letters, digits and punctuation other than quotes, backslashes, #, !, ;, braces"
        ));
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

/// Builds the context for a node from its RouterConfig, the kernel contract it governs
/// (see [`super::contract`]), the BGPPeers, the pools and a password lookup. Peers whose
/// nodeSelector does not select the node are left out.
pub fn build(
    node: &NodeInput,
    router: (&str, &RouterConfigSpec),
    kernel: &KernelContract,
    peers: &[(String, BGPPeerSpec)],
    pools: &[(String, AddressPoolSpec)],
    password: &dyn Fn(&SecretKeyRef) -> Result<String, String>,
) -> Result<Context, ContextError> {
    let (rc_name, rc) = router;
    let rc_err = |why: String| ContextError::RouterConfig {
        name: rc_name.to_string(),
        why,
    };
    let node_ctx = node_ctx(node);
    let router_id = router_id(node, rc).map_err(rc_err)?;
    if rc.asn == 0 {
        return Err(rc_err("asn must be between 1 and 4294967295".into()));
    }
    let mut ctx_peers = Vec::new();
    for (name, p) in peers {
        let perr = |why: String| ContextError::Peer {
            name: name.clone(),
            why,
        };
        if let Some(peer) = peer_ctx(node, rc.asn, name, p, password).map_err(perr)? {
            ctx_peers.push(peer);
        }
    }
    ctx_peers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ctx_pools = Vec::new();
    for (name, spec) in pools.iter().filter(|(_, s)| s.mode == PoolMode::Routed) {
        ctx_pools.push(pool_ctx(name, spec).map_err(|why| ContextError::Pool {
            name: name.clone(),
            why,
        })?);
    }
    ctx_pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Context {
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

/// One peer's context, or `None` when its nodeSelector leaves this node out.
fn peer_ctx(
    node: &NodeInput,
    local_asn: u32,
    name: &str,
    p: &BGPPeerSpec,
    password: &dyn Fn(&SecretKeyRef) -> Result<String, String>,
) -> Result<Option<PeerCtx>, String> {
    let selector = match &p.node_selector {
        Some(s) => Selector::from_k8s(s).map_err(|e| format!("nodeSelector: {e}"))?,
        None => Selector::default(),
    };
    if !selector.matches(&node.labels) {
        return Ok(None);
    }
    let address: IpAddr = p
        .address
        .trim()
        .parse()
        .map_err(|_| format!("address {:?} is not an IP address", p.address))?;
    if p.asn == 0 {
        return Err("asn must be between 1 and 4294967295".into());
    }
    let pw = match &p.password_secret_ref {
        Some(r) => Some(
            password(r)
                .and_then(|pw| check_password(&pw))
                .map_err(|why| format!("passwordSecretRef: {why}"))?,
        ),
        None => None,
    };
    if let Some(h) = p.hold_time
        && h != 0
        && h < 3
    {
        return Err("holdTime must be 0 or at least 3 seconds".into());
    }
    Ok(Some(PeerCtx {
        name: name.to_string(),
        id: ident("peer", name),
        address: address.to_string(),
        family: if address.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
        asn: p.asn,
        port: p.port.unwrap_or(179),
        ebgp: p.asn != local_asn,
        password: pw,
        hold_time: p.hold_time,
        keepalive: p.hold_time.map(|h| h / 3),
        ebgp_multihop: p.ebgp_multihop,
        bfd: p.bfd.as_ref().map(|b| BfdCtx {
            receive_interval: b.receive_interval.unwrap_or(300),
            transmit_interval: b.transmit_interval.unwrap_or(300),
            detect_multiplier: b.detect_multiplier.unwrap_or(3),
        }),
        graceful_restart: p.graceful_restart.unwrap_or(false),
        add_paths: p.add_paths.unwrap_or(false),
        local_address: first(node, address.is_ipv4()).map(|a| a.to_string()),
    }))
}

/// A routed pool's context: its prefixes and BGP attributes.
fn pool_ctx(name: &str, spec: &AddressPoolSpec) -> Result<PoolCtx, String> {
    let mut prefixes = (Vec::new(), Vec::new());
    for entry in &spec.addresses {
        let range = parse_entry(entry).map_err(|e| e.to_string())?;
        let list = if range.family == Family::V4 {
            &mut prefixes.0
        } else {
            &mut prefixes.1
        };
        list.extend(cidrs(&range).iter().map(ToString::to_string));
    }
    let bgp = spec.bgp.clone().unwrap_or_default();
    let (mut communities, mut large) = (Vec::new(), Vec::new());
    for c in &bgp.communities {
        let parts: Vec<Option<u32>> = c.split(':').map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [Some(a), Some(b)] if *a <= 65535 && *b <= 65535 => communities.push(c.clone()),
            [Some(_), Some(_), Some(_)] => large.push(c.clone()),
            _ => {
                return Err(format!(
                    "community {c:?} is neither ASN:VALUE (16-bit each) nor ASN:X:Y"
                ));
            }
        }
    }
    let (aggregation4, aggregation6) = AggregationLength::of(spec);
    Ok(PoolCtx {
        name: name.to_string(),
        id: ident("pool", name),
        prefixes4: prefixes.0,
        prefixes6: prefixes.1,
        aggregation4,
        aggregation6,
        communities,
        large_communities: large,
        local_preference: bgp.local_preference,
    })
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
        let ctx = build(
            &node(),
            ("default", &rc()),
            &KernelContract::default(),
            &peers,
            &[],
            &no_secrets,
        )
        .unwrap();
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
    fn crafted_values_are_rejected_with_the_object_named() {
        let with_pw = vec![(
            "p".to_string(),
            peer(json!({"address": "192.0.2.1", "asn": 64500, "passwordSecretRef": {"name": "s"}})),
        )];
        for bad in [
            "x\"; }\nprotocol static evil {",
            "a b",
            "back\\slash",
            "semi;colon",
            "",
        ] {
            let lookup = |_: &SecretKeyRef| Ok(bad.to_string());
            let err = build(
                &node(),
                ("default", &rc()),
                &KernelContract::default(),
                &with_pw,
                &[],
                &lookup,
            )
            .unwrap_err();
            assert!(
                err.to_string().starts_with("BGPPeer p: passwordSecretRef:"),
                "{err}"
            );
        }
        let ok = build(
            &node(),
            ("default", &rc()),
            &KernelContract::default(),
            &with_pw,
            &[],
            &|_| Ok("s3cr3t-pw".into()),
        )
        .unwrap();
        assert_eq!(ok.peers[0].password.as_deref(), Some("s3cr3t-pw"));
        let bad_addr = vec![(
            "p".to_string(),
            peer(json!({"address": "192.0.2.1 as 1; } protocol x {", "asn": 64500})),
        )];
        let err = build(
            &node(),
            ("default", &rc()),
            &KernelContract::default(),
            &bad_addr,
            &[],
            &no_secrets,
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not an IP address"), "{err}");
        let bad_pool: Vec<(String, AddressPoolSpec)> = vec![(
            "p".into(),
            serde_json::from_value(
                json!({"addresses": ["192.0.2.0/24"], "bgp": {"communities": ["1:2; evil"]}}),
            )
            .unwrap(),
        )];
        assert!(
            build(
                &node(),
                ("default", &rc()),
                &KernelContract::default(),
                &[],
                &bad_pool,
                &no_secrets
            )
            .is_err()
        );
        let mut bad_rc = rc();
        bad_rc.router_id = Some("1.2.3.4; }".into());
        assert!(
            build(
                &node(),
                ("default", &bad_rc),
                &KernelContract::default(),
                &[],
                &[],
                &no_secrets
            )
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
        let ctx = build(
            &node(),
            ("default", &rc()),
            &KernelContract::default(),
            &[],
            &pools,
            &no_secrets,
        )
        .unwrap();
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
    }
}
