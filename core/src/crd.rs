//! The routelb custom resources (`routelb.io/v1alpha1`): [`AddressPool`], [`BGPPeer`]
//! and [`RouterConfig`] (cluster-scoped, written by users), and [`NodeRoutingStatus`]
//! (namespaced, one per node, written by that node's agent).
//!
//! Field names are part of the product (see DESIGN.md). Validation that the API server
//! can do on its own (ranges, patterns, CEL rules) lives in the schema so a bad object is
//! refused at `kubectl apply`; semantic checks that need parsing (pool entries, overlaps)
//! happen in [`crate::ipam`] and surface as conditions and Events.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube_core::CustomResourceExt;
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every routelb resource.
pub const GROUP: &str = "routelb.io";
/// API version of every routelb resource.
pub const VERSION: &str = "v1alpha1";

/// How addresses of a pool reach the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Announced from `kube-lb0` by the routing daemon (BGP), spread by the routers (ECMP).
    #[default]
    Routed,
    /// Layer 2: placed on the node's LAN interface and answered by ARP/NDP from one node.
    Local,
}

/// Prefix lengths announced for a routed pool, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregationLength {
    /// IPv4 prefix length announced for each address (default 32: one route per address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32))]
    pub ipv4: Option<u8>,
    /// IPv6 prefix length announced for each address (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub ipv6: Option<u8>,
}

impl AggregationLength {
    /// The announced prefix lengths (IPv4, IPv6) of a pool's spec: defaults /32 and
    /// /128, clamped to the family's width.
    pub fn of(spec: &AddressPoolSpec) -> (u8, u8) {
        let agg = spec.aggregation_length.as_ref();
        (
            agg.and_then(|a| a.ipv4).unwrap_or(32).min(32),
            agg.and_then(|a| a.ipv6).unwrap_or(128).min(128),
        )
    }
}

/// BGP attributes the routing templates attach to this pool's prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolBgp {
    /// Communities: standard `ASN:VALUE` (0 to 65535 each) or large `ASN:X:Y`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(
        pattern = r"^(([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]):([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])|[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10})$"
    )))]
    pub communities: Vec<String>,
    /// LOCAL_PREF for iBGP peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_preference: Option<u32>,
}

/// A pool of addresses for Services of type LoadBalancer.
// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "routelb.io",
    version = "v1alpha1",
    kind = "AddressPool",
    plural = "addresspools",
    shortname = "lbpool",
    category = "routelb",
    status = "AddressPoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A pool of addresses that routelb assigns to Services of type LoadBalancer.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "IPv4 Used",
        type_ = "integer",
        json_path = ".status.ipv4.allocated"
    ),
    printcolumn(
        name = "IPv4 Free",
        type_ = "integer",
        json_path = ".status.ipv4.available"
    ),
    printcolumn(
        name = "IPv6 Used",
        type_ = "integer",
        json_path = ".status.ipv6.allocated"
    ),
    printcolumn(
        name = "IPv6 Free",
        type_ = "integer",
        json_path = ".status.ipv6.available"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.aggregationLength) || !has(self.mode) || self.mode == 'routed'").message("aggregationLength applies to routed pools only"))]
#[x_kube(validation = Rule::new("!has(self.interfaces) || (has(self.mode) && self.mode == 'local')").message("interfaces applies to local pools only"))]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct AddressPoolSpec {
    /// Addresses, each a CIDR (`192.0.2.0/24`), a range (`192.0.2.10-192.0.2.20`) or a single
    /// address; IPv4 and IPv6 may be mixed. Entries must not overlap.
    #[schemars(length(min = 1), inner(length(min = 1, max = 100)))]
    pub addresses: Vec<String>,
    /// `routed` (default) or `local`.
    #[serde(default)]
    pub mode: PoolMode,
    /// Announced prefix length per family (routed pools only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_length: Option<AggregationLength>,
    /// Local pools: the LAN interfaces that answer for the addresses, by name, first
    /// match on each node (`eth0`, `bond0.100`). Empty: the interface whose subnet holds
    /// the address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[^/\s:]{1,15}$")))]
    pub interfaces: Vec<String>,
    /// Assign from this pool to Services that do not name a pool (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_assign: Option<bool>,
    /// Never assign IPv4 addresses ending in .0 or .255.
    #[serde(
        default,
        rename = "avoidBuggyIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub avoid_buggy_ips: Option<bool>,
    /// Stop new allocations; existing assignments are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Only Services with matching labels may draw from this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only Services in namespaces with matching labels may draw from this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pools with a lower value are used first; pools without a priority come last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// BGP attributes for this pool's prefixes, exposed to the routing templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<PoolBgp>,
}

/// Usage of one family of a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUsage {
    /// Assignable addresses (saturates at 2^63-1 for large IPv6 pools).
    pub pool_size: i64,
    /// Addresses in use.
    pub allocated: i64,
    /// Addresses still free.
    pub available: i64,
    /// Lowest address of the pool in this family.
    #[serde(rename = "firstIP")]
    pub first_ip: String,
    /// Highest address of the pool in this family.
    #[serde(rename = "lastIP")]
    pub last_ip: String,
}

/// Observed state of an AddressPool, written by the allocator at a bounded rate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
    /// Address to the Services using it (`namespace/name`), while the pool has few
    /// allocations; see `usedTruncated`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<String, String>,
    /// True when `used` lists only part of the allocations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub used_truncated: bool,
    /// `Ready`, `Conflict` (overlaps an older pool: not used until fixed), `Uncovered`
    /// (assignments outside the current addresses), `Invalid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A reference to a key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Secret namespace (default: the namespace routelb runs in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Key within the Secret (default `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Bidirectional Forwarding Detection for a session; present means enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdConfig {
    /// Minimum receive interval in milliseconds, 50 to 60000 (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 60000))]
    pub receive_interval: Option<u32>,
    /// Minimum transmit interval in milliseconds, 50 to 60000 (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 60000))]
    pub transmit_interval: Option<u32>,
    /// Missed packets before the session is declared down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 255))]
    pub detect_multiplier: Option<u8>,
}

/// A BGP router the nodes' routing daemons peer with.
// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "routelb.io",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    shortname = "bgppeer",
    category = "routelb",
    status = "BGPPeerStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A BGP router that the routing daemon on the selected nodes peers with.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "ASN", type_ = "integer", json_path = ".spec.asn"),
    printcolumn(
        name = "Established",
        type_ = "string",
        description = "Nodes with the session Established, of the nodes that have it configured",
        json_path = ".status.sessions"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The router's address: a unicast address (not 0.0.0.0 or ::, loopback,
    /// link-local, multicast or broadcast).
    #[schemars(length(max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IPv4 or IPv6 address"))]
    #[x_kube(validation = Rule::new("!isIP(self) || ip(self).isGlobalUnicast()").message("must be a unicast address the node can reach: not 0.0.0.0, ::, loopback, link-local, multicast or broadcast"))]
    pub address: String,
    /// The router's AS number.
    #[schemars(range(min = 1))]
    pub asn: u32,
    /// The router's BGP port (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// TCP MD5 password, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Hold time in seconds: 0 (no keepalives) or at least 3 (default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 0 || self >= 3").message("holdTime must be 0 or at least 3 seconds"))]
    pub hold_time: Option<u16>,
    /// Allow an eBGP session over this many hops (the router is not on the node's LAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub ebgp_multihop: Option<u8>,
    /// Enable BFD on the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdConfig>,
    /// Enable BGP graceful restart, so a daemon restart does not withdraw routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<bool>,
    /// Advertise all paths to this peer (BGP ADD-PATH, send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_paths: Option<bool>,
    /// Nodes that peer with this router (default: all). Lets each rack's nodes peer with
    /// their own leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// Observed state of a BGPPeer, written by the allocator's leader (one writer) from
/// the nodes' NodeRoutingStatus reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerStatus {
    /// `Valid` (usable as written) and `Established` (every node that has the session
    /// configured has it Established).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes whose routing daemon has a session with this router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<i32>,
    /// Of those, the nodes where it is Established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established: Option<i32>,
    /// `established/nodes`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<String>,
    /// Nodes where the session is not Established (the first few), with its state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub down: Vec<String>,
}

/// Observed state of a RouterConfig, written by the allocator's leader from the nodes'
/// NodeRoutingStatus reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterConfigStatus {
    /// `Conflict` (another RouterConfig selects some of the same nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes whose agent reports this RouterConfig as the one governing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<i32>,
    /// Nodes also selected by another RouterConfig (the first few), and which one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
}

/// The routing daemon running beside the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Daemon {
    #[default]
    Bird,
    Frr,
}

/// Routing settings for a group of nodes.
// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "routelb.io",
    version = "v1alpha1",
    kind = "RouterConfig",
    plural = "routerconfigs",
    shortname = "lbrouter",
    category = "routelb",
    status = "RouterConfigStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Routing settings (local ASN, router ID, daemon, kernel table) for the nodes it selects.",
    printcolumn(name = "ASN", type_ = "integer", json_path = ".spec.asn"),
    printcolumn(name = "Daemon", type_ = "string", json_path = ".spec.daemon"),
    printcolumn(name = "Table", type_ = "integer", json_path = ".spec.routeTable"),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        description = "Nodes governed by this RouterConfig",
        json_path = ".status.nodes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RouterConfigSpec {
    /// Nodes this config applies to (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The nodes' local AS number.
    #[schemars(range(min = 1))]
    pub asn: u32,
    /// BGP router ID, an IPv4 address (default: the node's IPv4 address).
    #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4").message("routerID must be an IPv4 address"))]
    pub router_id: Option<String>,
    /// Port the daemon listens on for BGP (default 179); 0 means outbound sessions only,
    /// for nodes where another BGP speaker (e.g. Calico's BIRD) owns port 179.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// `bird` (default) or `frr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<Daemon>,
    /// Template file name in the templates ConfigMap (default `bird.conf.tera` or
    /// `frr.conf.tera`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"))]
    pub template: Option<String>,
    /// Name of the interface holding the addresses (default `kube-lb0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}$"))]
    pub interface: Option<String>,
    /// Kernel routing table for announced prefixes (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("!(self in [253, 254, 255])").message("routeTable must not be the kernel's default (253), main (254) or local (255) table"))]
    pub route_table: Option<u32>,
    /// Route protocol number marking routelb's routes (default 249).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 255))]
    pub route_protocol: Option<u8>,
    /// Which kinds of Service address the nodes announce: LoadBalancer addresses (on by
    /// default), `spec.externalIPs` and cluster IPs (off by default). A Service's
    /// `routelb.io/advertise-*` annotations override these defaults either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<AdvertiseSpec>,
}

/// The kinds of Service address a RouterConfig's nodes announce.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct AdvertiseSpec {
    /// `status.loadBalancer.ingress` of the Services routelb handles (default: on).
    #[serde(
        default,
        rename = "loadBalancerIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ips: Option<LoadBalancerIpsSpec>,
    /// `spec.externalIPs` of any Service (default: off). Any user who can create a
    /// Service chooses these (CVE-2020-8554): only addresses inside `cidrs` are announced.
    #[serde(
        default,
        rename = "externalIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ips: Option<ExternalIpsSpec>,
    /// `spec.clusterIPs` of any Service (default: off), so routers reach them directly.
    #[serde(
        default,
        rename = "clusterIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_ips: Option<ClusterIpsSpec>,
}

/// Announcing LoadBalancer addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIpsSpec {
    /// Default for Services without `routelb.io/advertise-loadbalancer-ips` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Announcing `spec.externalIPs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.enabled) || !self.enabled || (has(self.cidrs) && size(self.cidrs) > 0)").message("externalIPs.enabled needs cidrs: the CIDRs from which Services' externalIPs may be announced"))]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ExternalIpsSpec {
    /// Default for Services without `routelb.io/advertise-external-ips` (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The only CIDRs externalIPs are announced from (e.g. `192.0.2.0/24`); an externalIP
    /// outside them is not announced, with a Warning Event on its Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("cidrs must be CIDRs such as 192.0.2.0/24 or 2001:db8::/64"))]
    pub cidrs: Vec<String>,
}

/// Announcing cluster IPs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!((has(self.enabled) && self.enabled) || (has(self.aggregate) && self.aggregate)) || (has(self.cidrs) && size(self.cidrs) > 0)").message("clusterIPs.enabled and clusterIPs.aggregate need cidrs: the cluster's service CIDRs (kube-apiserver --service-cluster-ip-range)"))]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterIpsSpec {
    /// Default for Services without `routelb.io/advertise-cluster-ips` (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The cluster's service CIDRs (kube-apiserver `--service-cluster-ip-range`). Cluster
    /// IPs outside them are not announced; the routing templates match on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("cidrs must be CIDRs such as 10.96.0.0/12 or fd00:10:96::/112"))]
    pub cidrs: Vec<String>,
    /// Announce each service CIDR as one prefix instead of one route per cluster IP; a
    /// Service with `internalTrafficPolicy: Local` still gets its own host route from the
    /// nodes with a ready endpoint (the more specific route wins at the routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<bool>,
}

/// Where the cluster's routing stands on one node, written by that node's agent.
// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "routelb.io",
    version = "v1alpha1",
    kind = "NodeRoutingStatus",
    plural = "noderoutingstatuses",
    shortname = "lbnode",
    category = "routelb",
    namespaced,
    status = "NodeRoutingReport",
    derive = "PartialEq",
    derive = "Default",
    doc = "What one node's agent and routing daemon do: the daemon, its BGP sessions, what the node announces. Written by that node's agent, one object per node in routelb's namespace, deleted with its Node.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(
        name = "Daemon",
        type_ = "string",
        json_path = ".status.daemon.summary"
    ),
    printcolumn(
        name = "Sessions",
        type_ = "string",
        description = "BGP sessions Established / configured",
        json_path = ".status.sessionsEstablished"
    ),
    printcolumn(
        name = "Announced",
        type_ = "integer",
        description = "Service addresses the node announces",
        json_path = ".status.announced.total"
    ),
    printcolumn(
        name = "Reload",
        type_ = "string",
        description = "Result of the last reload with a new configuration",
        json_path = ".status.daemon.lastReload.result"
    ),
    printcolumn(
        name = "Last Reload",
        type_ = "date",
        json_path = ".status.daemon.lastReload.time"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoutingStatusSpec {
    /// The Node reported on (also the object's name).
    pub node_name: String,
}

/// One node's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoutingReport {
    /// The RouterConfig governing the node (none: routing is left alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_config: Option<String>,
    /// Other RouterConfigs that also select the node (ignored while the first exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_selected_by: Vec<String>,
    /// The routing daemon beside the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonReport>,
    /// The daemon's BGP sessions, as the daemon reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SessionReport>,
    /// `established/configured`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_established: Option<String>,
    /// What the node announces.
    #[serde(default)]
    pub announced: AnnouncedReport,
    /// Where the node's entries live in the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelReport>,
    /// Addresses of local (L2) pools this node answers ARP/NDP for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l2: Vec<L2Report>,
    /// `DaemonUp`, `ConfigLoaded`, `SessionsEstablished`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the agent last wrote the report: at least every 5 minutes while it runs, so
    /// a report much older than that is from an agent that is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The routing daemon as the agent last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonReport {
    /// `bird` or `frr`.
    pub name: String,
    /// The daemon's own version string (e.g. `2.0.12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether it answered at the last check.
    pub up: bool,
    /// `bird 2.0.12`, `frr 8.4.4`, `bird down`, for the printer column.
    pub summary: String,
    /// Why it does not answer, or what it is waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// SHA-256 of the configuration it runs (as rendered by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The last reload with a new configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadReport>,
}

/// A reload with a new configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// `ok` or `failed`.
    pub result: String,
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// The daemon's (or its checker's) message when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One BGP session, as the routing daemon reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionReport {
    /// The BGPPeer this session is for (none: configured by a template, not a BGPPeer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The router's address.
    pub address: String,
    /// The router's AS number, as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// The BGP state: `Established`, `Active`, `Connect`, `OpenSent`, `OpenConfirm`, `Idle`.
    pub state: String,
    /// When the session entered its state, where the daemon says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Prefixes sent to the router (all families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_sent: Option<u64>,
    /// Prefixes received from the router (all families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_received: Option<u64>,
    /// The daemon's last error on the session, in its words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl SessionReport {
    pub fn established(&self) -> bool {
        self.state.eq_ignore_ascii_case("established")
    }
}

/// What a node announces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnnouncedReport {
    /// Service addresses in all (each kind below; a shared address counts once).
    pub total: u32,
    /// LoadBalancer ingress addresses.
    pub load_balancer: u32,
    /// `spec.externalIPs`.
    pub external: u32,
    /// Cluster IPs.
    pub cluster: u32,
    /// Prefixes routed to the interface in the table (what the daemon reads).
    pub prefixes: u32,
    /// The addresses themselves, while few (see `addressesTruncated`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// True when `addresses` lists only some of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub addresses_truncated: bool,
}

/// The kernel side of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelReport {
    /// The interface holding the addresses (`kube-lb0`).
    pub interface: String,
    /// `dummy`, or `bridge` where the kernel has no dummy links.
    pub link_kind: String,
    /// `address` (addresses on the interface) or `local-route`.
    pub vip_mode: String,
    /// The routing table and route protocol of routelb's routes.
    pub table: u32,
    pub protocol: u8,
    /// The last error the kernel returned, if the last reconcile had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A local-pool address this node answers for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2Report {
    pub address: String,
    pub interface: String,
}

/// The CustomResourceDefinitions of every routelb resource.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        AddressPool::crd(),
        BGPPeer::crd(),
        RouterConfig::crd(),
        NodeRoutingStatus::crd(),
    ]
}

/// The CRDs as one multi-document YAML file, as shipped in `deploy/crds.yaml`.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::from("# Generated by `routelb crds`; do not edit.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::Resource;

    #[test]
    fn crds_are_in_the_routelb_group_and_users_ones_cluster_scoped() {
        for crd in crds() {
            assert_eq!(crd.spec.group, GROUP);
            let scope = match crd.spec.names.kind.as_str() {
                "NodeRoutingStatus" => "Namespaced",
                _ => "Cluster",
            };
            assert_eq!(crd.spec.scope, scope, "{}", crd.spec.names.kind);
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, VERSION);
            assert!(
                crd.spec.versions[0]
                    .subresources
                    .as_ref()
                    .unwrap()
                    .status
                    .is_some()
            );
        }
        assert_eq!(AddressPool::api_version(&()), "routelb.io/v1alpha1");
        assert_eq!(BGPPeer::plural(&()), "bgppeers");
    }

    /// Evaluates the CEL rules of a resource's CRD, as the API server would.
    fn cel<T: CustomResourceExt + Serialize>(obj: &T) -> Result<(), String> {
        kube_core::cel::validate_cel(obj).map_err(|e| e.to_string())
    }

    #[test]
    fn cel_rules_refuse_what_they_should_and_accept_the_rest() {
        let spec = AddressPoolSpec {
            addresses: vec!["192.0.2.0/24".into()],
            aggregation_length: Some(AggregationLength {
                ipv4: Some(24),
                ipv6: None,
            }),
            ..Default::default()
        };
        assert_eq!(cel(&AddressPool::new("routed", spec.clone())), Ok(()));
        let local = AddressPoolSpec {
            mode: PoolMode::Local,
            ..spec
        };
        let err = cel(&AddressPool::new("local", local)).unwrap_err();
        assert!(
            err.contains("aggregationLength applies to routed pools only"),
            "{err}"
        );

        let peer = |address: &str, hold_time| {
            BGPPeer::new(
                "p",
                BGPPeerSpec {
                    address: address.into(),
                    asn: 64512,
                    hold_time,
                    ..Default::default()
                },
            )
        };
        assert_eq!(cel(&peer("192.0.2.1", Some(90))), Ok(()));
        assert_eq!(cel(&peer("2001:db8::1", Some(0))), Ok(()));
        let err = cel(&peer("192.0.2.1; protocol x", None)).unwrap_err();
        assert!(err.contains("must be an IPv4 or IPv6 address"), "{err}");
        let err = cel(&peer("192.0.2.1", Some(2))).unwrap_err();
        assert!(err.contains("holdTime must be 0 or at least 3"), "{err}");
        for never in [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "fe80::1",
            "169.254.0.1",
            "224.0.0.5",
            "ff02::2",
            "255.255.255.255",
        ] {
            let err = cel(&peer(never, None)).unwrap_err();
            assert!(err.contains("must be a unicast address"), "{never}: {err}");
        }

        let router = |router_id: &str, table| {
            RouterConfig::new(
                "r",
                RouterConfigSpec {
                    asn: 64512,
                    router_id: Some(router_id.into()),
                    route_table: Some(table),
                    ..Default::default()
                },
            )
        };
        assert_eq!(cel(&router("192.0.2.10", 200)), Ok(()));
        let err = cel(&router("2001:db8::1", 200)).unwrap_err();
        assert!(err.contains("routerID must be an IPv4 address"), "{err}");
        let err = cel(&router("192.0.2.10", 254)).unwrap_err();
        assert!(err.contains("must not be the kernel's default"), "{err}");

        let advertise = |v: serde_json::Value| {
            let mut rc = router("192.0.2.10", 200);
            rc.spec.advertise = Some(serde_json::from_value(v).unwrap());
            cel(&rc)
        };
        assert_eq!(
            advertise(serde_json::json!({
                "loadBalancerIPs": {"enabled": false},
                "externalIPs": {"enabled": true, "cidrs": ["192.0.2.0/24", "2001:db8::/64"]},
                "clusterIPs": {"enabled": true, "aggregate": true, "cidrs": ["198.51.100.0/24"]}
            })),
            Ok(())
        );
        assert_eq!(
            advertise(serde_json::json!({"externalIPs": {"cidrs": ["192.0.2.0/24"]}})),
            Ok(()),
            "CIDRs without enabled: only Services whose annotation asks"
        );
        let err = advertise(serde_json::json!({"externalIPs": {"enabled": true}})).unwrap_err();
        assert!(err.contains("externalIPs.enabled needs cidrs"), "{err}");
        let err = advertise(serde_json::json!({"clusterIPs": {"aggregate": true}})).unwrap_err();
        assert!(err.contains("--service-cluster-ip-range"), "{err}");
        let err = advertise(
            serde_json::json!({"externalIPs": {"enabled": true, "cidrs": ["192.0.2.0/33"]}}),
        )
        .unwrap_err();
        assert!(err.contains("cidrs must be CIDRs"), "{err}");
    }

    #[test]
    fn pool_spec_uses_the_documented_field_names() {
        let pool: AddressPoolSpec = serde_json::from_value(serde_json::json!({
            "addresses": ["192.0.2.0/24"],
            "mode": "routed",
            "aggregationLength": {"ipv4": 24, "ipv6": 64},
            "autoAssign": false,
            "avoidBuggyIPs": true,
            "disabled": true,
            "serviceSelector": {"matchLabels": {"a": "b"}},
            "namespaceSelector": {"matchExpressions": [{"key": "x", "operator": "Exists"}]},
            "priority": 5,
            "bgp": {"communities": ["65000:1"], "localPreference": 200}
        }))
        .unwrap();
        assert_eq!(pool.aggregation_length.unwrap().ipv4, Some(24));
        assert_eq!(pool.avoid_buggy_ips, Some(true));
        assert_eq!(pool.bgp.unwrap().local_preference, Some(200));
        let schema = serde_json::to_string(&AddressPool::crd()).unwrap();
        assert!(schema.contains("avoidBuggyIPs"));
        assert!(schema.contains("aggregationLength applies to routed pools only"));
    }
}
