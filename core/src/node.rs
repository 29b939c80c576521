//! What this node announces, pure: from its Node, the Services, their EndpointSlices, the
//! AddressPools and the governing RouterConfig's `spec.advertise`, to the node's
//! [`NodeState`].
//!
//! A Service has up to three kinds of address ([`Kind`]): LoadBalancer ingress addresses
//! (routelb's), `spec.externalIPs` and cluster IPs. [`decide`] is the rule for one
//! Service; [`Model`] applies it incrementally as objects change (a Service or
//! EndpointSlice event recomputes one Service; only Node, pool and RouterConfig changes
//! recompute the Services they affect) and keeps reference counts so addresses shared by
//! several Services stay announced while any of them wants them here. A Service is read
//! once per event into [`ServiceAddresses`]; the model keeps only those.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube_core::ResourceExt;

use crate::advertise::{Advertise, Kind, Switches};
use crate::crd::{AddressPool, AggregationLength, PoolMode};
use crate::index::{Index, ObjectKey};
use crate::ipam::ServiceKey;
use crate::net::{NodeState, Prefix};
use crate::selector::Labels;
use crate::service::{self, Handling};

/// Nodes with this label take no external load-balancer traffic (Kubernetes' convention).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the node knows of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: Labels,
}

/// What matters of a pool on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFacts {
    pub mode: PoolMode,
    pub aggregation_v4: u8,
    pub aggregation_v6: u8,
}

impl Default for PoolFacts {
    fn default() -> PoolFacts {
        PoolFacts {
            mode: PoolMode::Routed,
            aggregation_v4: 32,
            aggregation_v6: 128,
        }
    }
}

impl PoolFacts {
    pub fn from_pool(p: &AddressPool) -> PoolFacts {
        let (aggregation_v4, aggregation_v6) = AggregationLength::of(&p.spec);
        PoolFacts {
            mode: p.spec.mode,
            aggregation_v4,
            aggregation_v6,
        }
    }

    fn prefix(&self, addr: IpAddr) -> Prefix {
        Prefix::network(
            addr,
            if addr.is_ipv4() {
                self.aggregation_v4
            } else {
                self.aggregation_v6
            },
        )
    }
}

/// What the node's decisions need of a Service with routelb addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFacts {
    pub uid: Option<String>,
    /// The pool its addresses came from (`routelb.io/allocated-from`).
    pub pool: String,
    /// `status.loadBalancer.ingress`, IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub local_policy: bool,
}

impl ServiceFacts {
    /// Reads a Service; `None` when it is not this node's business at all (not handled
    /// by routelb, or no addresses from routelb yet).
    pub fn of(svc: &Service, handle_class_less: bool) -> Option<ServiceFacts> {
        if service::handling(svc, handle_class_less) != Handling::Handled {
            return None;
        }
        let pool = service::allocated_from(svc)?.to_string();
        let addresses = service::ingress_ips(svc);
        if addresses.is_empty() {
            return None;
        }
        let local_policy = svc
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_deref())
            == Some("Local");
        Some(ServiceFacts {
            uid: svc.uid(),
            pool,
            addresses,
            local_policy,
        })
    }
}

/// Everything the node's decisions need of a Service: its addresses of every kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAddresses {
    pub uid: Option<String>,
    /// Its LoadBalancer addresses, when routelb handles it and assigned them.
    pub lb: Option<ServiceFacts>,
    /// `spec.externalIPs`, IPv4 first.
    pub external_ips: Vec<IpAddr>,
    /// `spec.clusterIPs` (or `spec.clusterIP`), without `None`.
    pub cluster_ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local` (LoadBalancer and external addresses).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local` (cluster IPs).
    pub internal_local: bool,
    pub switches: Switches,
    /// Problems with its annotations or spec, for a Warning Event.
    pub problems: Vec<String>,
}

impl ServiceAddresses {
    /// Reads any Service; `None` when it has no address routelb could announce.
    pub fn of(svc: &Service, handle_class_less: bool) -> Option<ServiceAddresses> {
        let lb = ServiceFacts::of(svc, handle_class_less);
        let spec = svc.spec.as_ref();
        let mut problems = Vec::new();
        let mut parse = |field: &str, list: Vec<&String>| -> Vec<IpAddr> {
            let mut out: Vec<IpAddr> = list
                .into_iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty() && *s != "None")
                .filter_map(|s| match s.parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        problems.push(format!("{field}: {s:?} is not an IP address"));
                        None
                    }
                })
                .collect();
            out.sort();
            out.dedup();
            out
        };
        let external_ips = parse(
            "spec.externalIPs",
            spec.and_then(|s| s.external_ips.as_ref())
                .into_iter()
                .flatten()
                .collect(),
        );
        let cluster_ips = match spec {
            Some(s) if s.type_.as_deref() != Some("ExternalName") => parse(
                "spec.clusterIPs",
                match &s.cluster_ips {
                    Some(ips) if !ips.is_empty() => ips.iter().collect(),
                    _ => s.cluster_ip.iter().collect(),
                },
            ),
            _ => Vec::new(),
        };
        if lb.is_none() && external_ips.is_empty() && cluster_ips.is_empty() {
            return None;
        }
        let (switches, bad) = Switches::of(svc);
        problems.extend(bad);
        let policy = |p: Option<&String>| p.map(String::as_str) == Some("Local");
        Some(ServiceAddresses {
            uid: svc.uid(),
            external_local: policy(spec.and_then(|s| s.external_traffic_policy.as_ref())),
            internal_local: policy(spec.and_then(|s| s.internal_traffic_policy.as_ref())),
            lb,
            external_ips,
            cluster_ips,
            switches,
            problems,
        })
    }

    fn pool(&self) -> Option<&str> {
        self.lb.as_ref().map(|l| l.pool.as_str())
    }

    fn of_kind(&self, kind: Kind) -> &[IpAddr] {
        match kind {
            Kind::LoadBalancer => self.lb.as_ref().map_or(&[], |l| &l.addresses),
            Kind::External => &self.external_ips,
            Kind::Cluster => &self.cluster_ips,
        }
    }
}

/// One address this node announces for a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    pub kind: Kind,
    pub addr: IpAddr,
    /// The route in routelb's table that carries it.
    pub prefix: Prefix,
    /// Whether the address goes on kube-lb0 and its prefix is routed there; not for
    /// cluster IPs inside an aggregate: the service proxy takes those packets before
    /// routing, the prefix is a blackhole route, and the routers see only the aggregate.
    pub on_interface: bool,
}

/// Addresses of one kind this node does not announce for a Service, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withheld {
    pub kind: Kind,
    pub addresses: Vec<IpAddr>,
    pub why: String,
}

/// The decision for one Service on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub announce: Vec<Announced>,
    /// What would be announced but for a policy, a switch or a limit.
    pub withheld: Vec<Withheld>,
    /// Problems worth a Warning Event on the Service: (reason, note).
    pub warnings: Vec<(&'static str, String)>,
    /// The Service's own annotation asked for its cluster IPs: their changes are worth
    /// Events (cluster IPs switched on for a whole node group are not, one per Service).
    pub cluster_asked: bool,
}

impl Decision {
    pub fn announces(&self) -> bool {
        !self.announce.is_empty()
    }

    /// Why an address of a kind is not announced, if the decision says.
    pub fn why_not(&self, kind: Kind, addr: IpAddr) -> Option<&str> {
        self.withheld
            .iter()
            .find(|w| w.kind == kind && w.addresses.contains(&addr))
            .map(|w| w.why.as_str())
    }

    fn withhold(&mut self, kind: Kind, addresses: &[IpAddr], why: String) {
        self.withheld.push(Withheld {
            kind,
            addresses: addresses.to_vec(),
            why,
        });
    }
}

/// Whether a Service's EndpointSlices list an endpoint on `node` that takes traffic:
/// ready, or serving and not terminating (`ready` unset counts as ready).
pub fn ready_endpoint_on(node: &str, slice: &EndpointSlice) -> bool {
    slice
        .endpoints
        .iter()
        .any(|e| e.node_name.as_deref() == Some(node) && takes_traffic(e))
}

/// Whether an endpoint takes traffic: ready, or serving and not terminating (`ready`
/// unset counts as ready).
pub fn takes_traffic(e: &Endpoint) -> bool {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving) == Some(true);
    let terminating = c.and_then(|c| c.terminating) == Some(true);
    ready || (serving && !terminating)
}

/// The rule for one Service: for each kind of address it has, whether the kind is on
/// (its annotation, else the RouterConfig's default), inside the CIDRs the admin allows,
/// and wanted here (node eligible, traffic policy satisfied).
pub fn decide(
    node: Option<&NodeFacts>,
    svc: &ServiceAddresses,
    ready_here: bool,
    pool: Option<&PoolFacts>,
    adv: &Advertise,
) -> Option<Decision> {
    let mut d = Decision {
        warnings: svc
            .problems
            .iter()
            .map(|p| ("InvalidAnnotation", p.clone()))
            .collect(),
        ..Decision::default()
    };
    for kind in Kind::ALL {
        let all = svc.of_kind(kind);
        if all.is_empty() {
            continue;
        }
        let (on, explicit) = svc.switches.on(kind, adv);
        if kind == Kind::Cluster && explicit && on {
            d.cluster_asked = true;
        }
        if !on {
            if explicit {
                d.withhold(
                    kind,
                    all,
                    format!("annotation {} is \"false\"", kind.annotation()),
                );
            } else if kind == Kind::LoadBalancer {
                d.withhold(kind, all, adv.setting(kind, ".enabled", "is false"));
            }
            continue;
        }
        // What the admin allows: externalIPs and cluster IPs only inside their CIDRs.
        let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) = match kind {
            Kind::LoadBalancer => (all.to_vec(), Vec::new()),
            _ => all
                .iter()
                .partition(|a| adv.cidrs(kind).iter().any(|c| c.contains(**a))),
        };
        for a in &refused {
            let (reason, why) = if kind == Kind::External {
                (
                    "ExternalIPNotAllowed",
                    format!(
                        "externalIP {a} is not announced: it is outside the CIDRs allowed by {}; an administrator adds a CIDR holding it there if this Service may attract its traffic (CVE-2020-8554)",
                        adv.setting(kind, ".cidrs", &adv.cidr_list(kind))
                    ),
                )
            } else {
                (
                    "ClusterIPOutsideCIDRs",
                    format!(
                        "cluster IP {a} is not announced: it is outside {}; set them to the cluster's service CIDRs (kube-apiserver --service-cluster-ip-range)",
                        adv.setting(kind, ".cidrs", &adv.cidr_list(kind))
                    ),
                )
            };
            d.withhold(kind, &[*a], why.clone());
            d.warnings.push((reason, why));
        }
        if allowed.is_empty() {
            continue;
        }
        // A pool that is gone: keep announcing with defaults until the allocator moves it.
        let facts = pool.copied().unwrap_or_default();
        if kind == Kind::LoadBalancer && facts.mode == PoolMode::Local {
            d.withhold(
                kind,
                &allowed,
                format!(
                    "AddressPool {} is a local (L2) pool: its addresses are answered on the LAN, not routed",
                    svc.pool().unwrap_or_default()
                ),
            );
            continue;
        }
        let Some(node) = node else {
            d.withhold(
                kind,
                &allowed,
                "this node's Node object does not exist".into(),
            );
            continue;
        };
        if node.labels.contains_key(EXCLUDE_LABEL) {
            d.withhold(
                kind,
                &allowed,
                format!("node {} is labelled {EXCLUDE_LABEL}", node.name),
            );
            continue;
        }
        let (local, policy) = match kind {
            Kind::Cluster => (svc.internal_local, "internalTrafficPolicy"),
            _ => (svc.external_local, "externalTrafficPolicy"),
        };
        if local && !ready_here {
            d.withhold(
                kind,
                &allowed,
                format!(
                    "{policy} is Local and node {} has no ready endpoint",
                    node.name
                ),
            );
            continue;
        }
        for addr in allowed {
            let aggregate = (kind == Kind::Cluster && adv.aggregate && !local)
                .then(|| adv.cluster_cidrs.iter().find(|c| c.contains(addr)))
                .flatten();
            let (prefix, on_interface) = match (kind, aggregate) {
                (_, Some(cidr)) => (*cidr, false),
                (Kind::LoadBalancer, None) => (facts.prefix(addr), true),
                (_, None) => (Prefix::host(addr), true),
            };
            d.announce.push(Announced {
                kind,
                addr,
                prefix,
                on_interface,
            });
        }
    }
    let empty = d.announce.is_empty() && d.withheld.is_empty() && d.warnings.is_empty();
    (!empty || d.cluster_asked).then_some(d)
}

/// A change in what a Service gets from this node, for Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: ServiceKey,
    pub uid: Option<String>,
    pub before: Option<Decision>,
    pub after: Option<Decision>,
}

/// The node's incremental view.
#[derive(Debug)]
pub struct Model {
    node_name: String,
    handle_class_less: bool,
    node: Option<NodeFacts>,
    pools: HashMap<String, PoolFacts>,
    services: HashMap<ServiceKey, ServiceAddresses>,
    /// Per Service, per EndpointSlice name: whether it has a ready endpoint here.
    ready: HashMap<ServiceKey, HashMap<String, bool>>,
    advertise: Advertise,
    decided: HashMap<ServiceKey, Decision>,
    /// Reference counts: addresses on kube-lb0, routes in the table, addresses per kind.
    addresses: BTreeMap<IpAddr, usize>,
    prefixes: BTreeMap<Prefix, usize>,
    /// Aggregates without addresses of their own (blackhole routes).
    blackholes: BTreeMap<Prefix, usize>,
    by_kind: [BTreeMap<IpAddr, usize>; 3],
}

impl Model {
    pub fn new(node_name: &str, handle_class_less: bool) -> Model {
        Model {
            node_name: node_name.to_string(),
            handle_class_less,
            node: None,
            pools: HashMap::new(),
            services: HashMap::new(),
            ready: HashMap::new(),
            advertise: Advertise::default(),
            decided: HashMap::new(),
            addresses: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            blackholes: BTreeMap::new(),
            by_kind: Default::default(),
        }
    }

    /// What the node announces of each kind by default.
    pub fn advertise(&self) -> &Advertise {
        &self.advertise
    }

    /// Distinct addresses announced, per kind ([`Kind::idx`]).
    pub fn announced_by_kind(&self) -> [usize; 3] {
        [0, 1, 2].map(|i| self.by_kind[i].len())
    }

    /// New defaults from the governing RouterConfig: every Service is decided again.
    pub fn set_advertise(&mut self, adv: Advertise) -> Vec<Change> {
        if self.advertise == adv {
            return Vec::new();
        }
        self.advertise = adv;
        self.recompute_all(|_| true)
    }

    /// The node's state: every address some Service wants announced here.
    pub fn desired(&self) -> NodeState {
        NodeState {
            addresses: self.addresses.keys().copied().collect(),
            prefixes: self.prefixes.keys().copied().collect(),
            // A prefix some Service also routes to kube-lb0 is routed there.
            blackholes: self
                .blackholes
                .keys()
                .filter(|p| !self.prefixes.contains_key(p))
                .copied()
                .collect(),
        }
    }

    /// The current decision for a Service.
    pub fn decision(&self, key: &ServiceKey) -> Option<&Decision> {
        self.decided.get(key)
    }

    fn recompute(&mut self, key: &ServiceKey) -> Option<Change> {
        let after = self.services.get(key).and_then(|svc| {
            let ready = self.ready.get(key).is_some_and(|m| m.values().any(|r| *r));
            let pool = svc.pool().and_then(|p| self.pools.get(p));
            decide(self.node.as_ref(), svc, ready, pool, &self.advertise)
        });
        let before = self.decided.get(key).cloned();
        if before == after {
            return None;
        }
        for a in before.iter().flat_map(|d| &d.announce) {
            if a.on_interface {
                dec(&mut self.addresses, &a.addr);
                dec(&mut self.prefixes, &a.prefix);
            } else {
                dec(&mut self.blackholes, &a.prefix);
            }
            dec(&mut self.by_kind[a.kind.idx()], &a.addr);
        }
        for a in after.iter().flat_map(|d| &d.announce) {
            if a.on_interface {
                *self.addresses.entry(a.addr).or_default() += 1;
                *self.prefixes.entry(a.prefix).or_default() += 1;
            } else {
                *self.blackholes.entry(a.prefix).or_default() += 1;
            }
            *self.by_kind[a.kind.idx()].entry(a.addr).or_default() += 1;
        }
        match &after {
            Some(d) => self.decided.insert(key.clone(), d.clone()),
            None => self.decided.remove(key),
        };
        let uid = self.services.get(key).and_then(|s| s.uid.clone());
        Some(Change {
            key: key.clone(),
            uid,
            before,
            after,
        })
    }

    fn recompute_all(&mut self, filter: impl Fn(&ServiceAddresses) -> bool) -> Vec<Change> {
        let keys: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|(_, s)| filter(s))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.recompute(k)).collect()
    }

    pub fn service_applied(&mut self, svc: Arc<Service>) -> Vec<Change> {
        let key = service::key(&svc);
        match ServiceAddresses::of(&svc, self.handle_class_less) {
            Some(f) => {
                if self.services.get(&key) == Some(&f) {
                    return Vec::new();
                }
                self.services.insert(key.clone(), f);
            }
            None => {
                self.services.remove(&key);
            }
        }
        self.recompute(&key).into_iter().collect()
    }

    pub fn service_deleted(&mut self, key: &ServiceKey) -> Vec<Change> {
        self.services.remove(key);
        self.recompute(key).into_iter().collect()
    }

    fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
        let name = slice.labels().get(SERVICE_NAME_LABEL)?;
        Some(ServiceKey::new(
            slice.namespace().unwrap_or_default(),
            name.clone(),
        ))
    }

    pub fn slice_applied(&mut self, slice: &EndpointSlice) -> Vec<Change> {
        let Some(key) = Self::slice_service(slice) else {
            return Vec::new();
        };
        let ready = ready_endpoint_on(&self.node_name, slice);
        self.ready
            .entry(key.clone())
            .or_default()
            .insert(slice.name_any(), ready);
        self.recompute(&key).into_iter().collect()
    }

    pub fn slice_deleted(&mut self, namespace: &str, name: &str) -> Vec<Change> {
        let keys: Vec<ServiceKey> = self
            .ready
            .iter_mut()
            .filter(|(k, _)| k.namespace == namespace)
            .filter_map(|(k, slices)| slices.remove(name).map(|_| k.clone()))
            .collect();
        self.ready.retain(|_, slices| !slices.is_empty());
        keys.iter().filter_map(|k| self.recompute(k)).collect()
    }

    pub fn pool_applied(&mut self, pool: &AddressPool) -> Vec<Change> {
        let name = pool.name_any();
        let facts = PoolFacts::from_pool(pool);
        if self.pools.insert(name.clone(), facts) == Some(facts) {
            return Vec::new();
        }
        self.recompute_all(|s| s.pool() == Some(name.as_str()))
    }

    pub fn pool_deleted(&mut self, name: &str) -> Vec<Change> {
        if self.pools.remove(name).is_none() {
            return Vec::new();
        }
        self.recompute_all(|s| s.pool() == Some(name))
    }

    pub fn node_applied(&mut self, node: &Node) -> Vec<Change> {
        let facts = NodeFacts {
            name: node.name_any(),
            labels: node.labels().clone(),
        };
        if self.node.as_ref() == Some(&facts) {
            return Vec::new();
        }
        self.node = Some(facts);
        self.recompute_all(|_| true)
    }

    pub fn node_deleted(&mut self) -> Vec<Change> {
        if self.node.take().is_none() {
            return Vec::new();
        }
        self.recompute_all(|_| true)
    }
}

impl Index<Service> for Model {
    type Out = Change;
    fn apply(&mut self, svc: Arc<Service>) -> Vec<Change> {
        self.service_applied(svc)
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<Change> {
        self.service_deleted(&key.into())
    }
}

impl Index<EndpointSlice> for Model {
    type Out = Change;
    fn apply(&mut self, slice: Arc<EndpointSlice>) -> Vec<Change> {
        self.slice_applied(&slice)
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<Change> {
        self.slice_deleted(key.namespace.as_deref().unwrap_or_default(), &key.name)
    }
}

/// The agent watches its own Node only.
impl Index<Node> for Model {
    type Out = Change;
    fn apply(&mut self, node: Arc<Node>) -> Vec<Change> {
        self.node_applied(&node)
    }
    fn delete(&mut self, _: &ObjectKey) -> Vec<Change> {
        self.node_deleted()
    }
}

impl Index<AddressPool> for Model {
    type Out = Change;
    fn apply(&mut self, pool: Arc<AddressPool>) -> Vec<Change> {
        self.pool_applied(&pool)
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<Change> {
        self.pool_deleted(&key.name)
    }
}

fn dec<K: Ord>(map: &mut BTreeMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(name: &str, extra: Value) -> Arc<Service> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "annotations": {"routelb.io/allocated-from": "p"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
        });
        json_patch::merge(&mut v, &extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn slice(svc: &str, name: &str, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn pool(name: &str, spec: Value) -> AddressPool {
        let mut v = json!({"addresses": ["203.0.113.0/24"]});
        json_patch::merge(&mut v, &spec);
        AddressPool::new(name, serde_json::from_value(v).unwrap())
    }

    fn why(m: &Model, name: &str) -> String {
        m.decision(&ServiceKey::new("ns", name))
            .map(|d| {
                d.withheld
                    .iter()
                    .map(|w| w.why.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    /// Every route in the table, blackholes marked.
    fn announced(m: &Model) -> Vec<String> {
        let d = m.desired();
        let mut v: Vec<(Prefix, String)> = d.prefixes.iter().map(|p| (*p, p.to_string())).collect();
        v.extend(d.blackholes.iter().map(|p| (*p, format!("blackhole {p}"))));
        v.sort();
        v.into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn cluster_policy_announces_on_every_eligible_node() {
        let mut m = Model::new("n1", true);
        m.node_applied(&node("n1", json!({})));
        let changes = m.service_applied(svc("web", json!({})));
        assert_eq!(changes.len(), 1);
        assert_eq!(announced(&m), ["203.0.113.10/32"]);
        assert!(m.desired().addresses.contains(&ip("203.0.113.10")));
        // Excluded by label: withdrawn, with the reason.
        m.node_applied(&node("n1", json!({EXCLUDE_LABEL: ""})));
        assert!(announced(&m).is_empty());
        assert!(why(&m, "web").contains(EXCLUDE_LABEL));
        // Node deleted: withdrawn.
        m.node_applied(&node("n1", json!({})));
        assert_eq!(announced(&m).len(), 1);
        m.node_deleted();
        assert!(announced(&m).is_empty());
    }

    #[test]
    fn local_policy_follows_ready_endpoints_on_this_node() {
        let mut m = Model::new("n2", true);
        m.node_applied(&node("n2", json!({})));
        m.service_applied(svc(
            "web",
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
        ));
        assert!(announced(&m).is_empty());
        m.slice_applied(&slice(
            "web",
            "web-a",
            json!([{"addresses": ["10.0.0.1"], "nodeName": "n1"}]),
        ));
        assert!(
            announced(&m).is_empty(),
            "an endpoint elsewhere does not count"
        );
        m.slice_applied(&slice(
            "web",
            "web-b",
            json!([{"addresses": ["10.0.0.2"], "nodeName": "n2", "conditions": {"ready": true}}]),
        ));
        assert_eq!(announced(&m), ["203.0.113.10/32"]);
        // Not ready, but serving and not terminating: still announced.
        m.slice_applied(&slice("web", "web-b", json!([{"addresses": ["10.0.0.2"], "nodeName": "n2", "conditions": {"ready": false, "serving": true, "terminating": false}}])));
        assert_eq!(announced(&m).len(), 1);
        // Terminating: withdrawn.
        let changes = m.slice_applied(&slice("web", "web-b", json!([{"addresses": ["10.0.0.2"], "nodeName": "n2", "conditions": {"ready": false, "serving": true, "terminating": true}}])));
        assert!(announced(&m).is_empty());
        assert!(
            changes[0].after.as_ref().unwrap().withheld[0]
                .why
                .contains("no ready endpoint")
        );
        m.slice_applied(&slice(
            "web",
            "web-b",
            json!([{"addresses": ["10.0.0.2"], "nodeName": "n2"}]),
        ));
        assert_eq!(announced(&m).len(), 1, "ready unset counts as ready");
        m.slice_deleted("ns", "web-b");
        assert!(announced(&m).is_empty());
    }

    #[test]
    fn aggregation_sharing_dual_stack_and_local_pools() {
        let mut m = Model::new("n1", true);
        m.node_applied(&node("n1", json!({})));
        m.pool_applied(&pool(
            "p",
            json!({"aggregationLength": {"ipv4": 24, "ipv6": 64}}),
        ));
        m.service_applied(svc("dual", json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"ip": "2001:db8::10"}]}}})));
        assert_eq!(announced(&m), ["203.0.113.0/24", "2001:db8::/64"]);
        // Two Services share .10: one Local without endpoints here, one Cluster.
        m.service_applied(svc(
            "local",
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
        ));
        m.service_applied(svc("dual", json!({})));
        assert!(m.desired().addresses.contains(&ip("203.0.113.10")));
        m.service_deleted(&ServiceKey::new("ns", "dual"));
        assert!(
            m.desired().addresses.is_empty(),
            "the Local one alone does not want it here"
        );
        // A local (L2) pool's Services are not announced by routing, and say why.
        m.pool_applied(&pool("p", json!({"mode": "local"})));
        m.service_applied(svc("l2", json!({})));
        assert!(m.desired().addresses.is_empty());
        assert!(why(&m, "l2").contains("local (L2)"));
    }

    #[test]
    fn services_that_are_not_ours_are_ignored() {
        let mut m = Model::new("n1", false);
        m.node_applied(&node("n1", json!({})));
        m.service_applied(svc("classless", json!({})));
        m.service_applied(svc(
            "other",
            json!({"spec": {"loadBalancerClass": "metallb.io/metallb"}}),
        ));
        m.service_applied(svc("unannotated", json!({"metadata": {"annotations": null}, "spec": {"loadBalancerClass": "routelb.io/routelb"}})));
        assert!(m.desired().addresses.is_empty());
        m.service_applied(svc(
            "ours",
            json!({"spec": {"loadBalancerClass": "routelb.io/routelb"}}),
        ));
        assert_eq!(m.desired().addresses.len(), 1);
    }

    fn advertise(v: Value) -> Advertise {
        let spec = serde_json::from_value(json!({"asn": 64512, "advertise": v})).unwrap();
        let (adv, problems) = Advertise::from_spec("rack", &spec);
        assert!(problems.is_empty(), "{problems:?}");
        adv
    }

    /// A ClusterIP Service (no LoadBalancer addresses) with an externalIP and a cluster IP.
    fn plain_svc(name: &str, extra: Value) -> Arc<Service> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"type": "ClusterIP", "clusterIP": "198.51.100.10", "clusterIPs": ["198.51.100.10"],
                     "externalIPs": ["192.0.2.10"], "ports": [{"port": 80}]}
        });
        json_patch::merge(&mut v, &extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn has(m: &Model, a: &str) -> bool {
        m.desired().addresses.contains(&ip(a))
    }

    #[test]
    fn every_combination_of_default_annotation_and_policy() {
        // (kind, address, annotation, policy field)
        let kinds = [
            (Kind::LoadBalancer, "203.0.113.10", "externalTrafficPolicy"),
            (Kind::External, "192.0.2.10", "externalTrafficPolicy"),
            (Kind::Cluster, "198.51.100.10", "internalTrafficPolicy"),
        ];
        for (kind, addr, policy_field) in kinds {
            for default in [false, true] {
                for annotation in [None, Some("true"), Some("false"), Some("maybe")] {
                    for local in [false, true] {
                        for ready in [false, true] {
                            let mut adv = advertise(json!({
                                "externalIPs": {"cidrs": ["192.0.2.0/24"]},
                                "clusterIPs": {"cidrs": ["198.51.100.0/24"]}
                            }));
                            adv.enabled[kind.idx()] = default;
                            let mut m = Model::new("n1", true);
                            m.set_advertise(adv);
                            m.node_applied(&node("n1", json!({})));
                            let mut extra = json!({"spec": {
                                "clusterIP": "198.51.100.10", "clusterIPs": ["198.51.100.10"],
                                "externalIPs": ["192.0.2.10"],
                                policy_field: if local { "Local" } else { "Cluster" }
                            }});
                            if let Some(v) = annotation {
                                extra["metadata"] = json!({"annotations": {
                                    "routelb.io/allocated-from": "p", kind.annotation(): v
                                }});
                            }
                            m.service_applied(svc("web", extra));
                            if ready {
                                m.slice_applied(&slice(
                                    "web",
                                    "web-a",
                                    json!([{"addresses": ["10.0.0.1"], "nodeName": "n1"}]),
                                ));
                            }
                            let on = match annotation {
                                Some("true") => true,
                                Some("false") => false,
                                _ => default,
                            };
                            let want = on && (!local || ready);
                            let case = format!(
                                "{kind:?} default {default} annotation {annotation:?} local {local} ready {ready}"
                            );
                            assert_eq!(has(&m, addr), want, "{case}");
                            assert_eq!(
                                m.announced_by_kind()[kind.idx()],
                                usize::from(want),
                                "{case}"
                            );
                            let d = m.decision(&ServiceKey::new("ns", "web"));
                            let warned = d.is_some_and(|d| {
                                d.warnings.iter().any(|(r, n)| {
                                    *r == "InvalidAnnotation" && n.contains(kind.annotation())
                                })
                            });
                            assert_eq!(warned, annotation == Some("maybe"), "{case}");
                            if on && local && !ready {
                                assert!(
                                    why(&m, "web").contains(&format!("{policy_field} is Local")),
                                    "{case}: {}",
                                    why(&m, "web")
                                );
                            }
                            if annotation == Some("false") {
                                assert!(why(&m, "web").contains(kind.annotation()), "{case}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn external_ips_only_inside_the_allowed_cidrs_and_any_service_type() {
        let mut m = Model::new("n1", true);
        m.node_applied(&node("n1", json!({})));
        // Off by default, with no Event-worthy noise.
        m.service_applied(plain_svc("a", json!({})));
        assert!(m.desired().addresses.is_empty());
        assert!(m.decision(&ServiceKey::new("ns", "a")).is_none());
        // The annotation asks, but no RouterConfig allows any CIDR.
        let ann =
            json!({"metadata": {"annotations": {"routelb.io/advertise-external-ips": "true"}}});
        m.service_applied(plain_svc("a", ann.clone()));
        assert!(m.desired().addresses.is_empty());
        let d = m.decision(&ServiceKey::new("ns", "a")).unwrap();
        assert_eq!(d.warnings[0].0, "ExternalIPNotAllowed");
        assert!(
            d.warnings[0].1.contains(
                "spec.advertise.externalIPs.cidrs [] (no RouterConfig selects this node)"
            ),
            "{}",
            d.warnings[0].1
        );
        // Allowed CIDR: announced; the one outside it still refused, by name.
        m.set_advertise(advertise(
            json!({"externalIPs": {"enabled": true, "cidrs": ["192.0.2.0/25", "2001:db8::/64"]}}),
        ));
        let two = json!({"spec": {"externalIPs": ["192.0.2.10", "192.0.2.200", "2001:db8::7"]}});
        m.service_applied(plain_svc("a", two));
        assert_eq!(announced(&m), ["192.0.2.10/32", "2001:db8::7/128"]);
        let d = m.decision(&ServiceKey::new("ns", "a")).unwrap();
        assert_eq!(d.warnings.len(), 1);
        assert!(
            d.warnings[0]
                .1
                .contains("externalIP 192.0.2.200 is not announced")
        );
        assert!(d.warnings[0].1.contains(
            "RouterConfig rack spec.advertise.externalIPs.cidrs [192.0.2.0/25, 2001:db8::/64]"
        ));
        assert_eq!(
            d.why_not(Kind::External, ip("192.0.2.200")),
            Some(d.warnings[0].1.as_str())
        );
        // Turned off for the Service: withdrawn, saying why.
        let off =
            json!({"metadata": {"annotations": {"routelb.io/advertise-external-ips": "false"}}});
        m.service_applied(plain_svc("a", off));
        assert!(m.desired().addresses.is_empty());
        assert!(why(&m, "a").contains("advertise-external-ips is \"false\""));
        // Switched off for the node group: withdrawn.
        m.service_applied(plain_svc("a", json!({})));
        assert_eq!(m.announced_by_kind()[Kind::External.idx()], 1);
        m.set_advertise(Advertise::default());
        assert!(m.desired().addresses.is_empty());
    }

    #[test]
    fn cluster_ips_per_address_and_as_the_service_cidr() {
        let mut m = Model::new("n1", true);
        m.node_applied(&node("n1", json!({})));
        m.set_advertise(advertise(json!({"clusterIPs": {"enabled": true, "cidrs": ["198.51.100.0/24", "2001:db8:96::/112"]}})));
        let dual = json!({"spec": {"clusterIPs": ["198.51.100.10", "2001:db8:96::10"], "ipFamilies": ["IPv4", "IPv6"]}});
        m.service_applied(plain_svc("a", dual.clone()));
        m.service_applied(plain_svc(
            "headless",
            json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"], "externalIPs": null}}),
        ));
        m.service_applied(plain_svc("outside", json!({"spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "externalIPs": null}})));
        assert_eq!(announced(&m), ["198.51.100.10/32", "2001:db8:96::10/128"]);
        assert!(m.decision(&ServiceKey::new("ns", "headless")).is_none());
        let d = m.decision(&ServiceKey::new("ns", "outside")).unwrap();
        assert_eq!(d.warnings[0].0, "ClusterIPOutsideCIDRs");
        assert!(d.warnings[0].1.contains("--service-cluster-ip-range"));
        assert!(
            !d.cluster_asked,
            "switched on for the group: no Events per Service"
        );

        // Aggregate: the service CIDR from every node; a Local Service's own host route
        // only from nodes with a ready endpoint, its address on kube-lb0 only there.
        m.set_advertise(advertise(json!({"clusterIPs": {"enabled": true, "aggregate": true, "cidrs": ["198.51.100.0/24"]}})));
        m.service_applied(plain_svc(
            "b",
            json!({"spec": {"clusterIP": "198.51.100.11", "clusterIPs": ["198.51.100.11"]}}),
        ));
        m.service_applied(plain_svc("local", json!({"spec": {"clusterIP": "198.51.100.12", "clusterIPs": ["198.51.100.12"], "internalTrafficPolicy": "Local"}})));
        assert_eq!(
            announced(&m),
            ["blackhole 198.51.100.0/24"],
            "the IPv6 one is outside the CIDRs now"
        );
        assert!(
            m.desired().addresses.is_empty(),
            "aggregated cluster IPs stay off kube-lb0"
        );
        assert_eq!(m.announced_by_kind()[Kind::Cluster.idx()], 2);
        m.slice_applied(&slice(
            "local",
            "local-a",
            json!([{"addresses": ["10.0.0.1"], "nodeName": "n1"}]),
        ));
        assert_eq!(
            announced(&m),
            ["blackhole 198.51.100.0/24", "198.51.100.12/32"]
        );
        assert!(has(&m, "198.51.100.12"));
        // The aggregate stays while any Service is in it.
        m.service_deleted(&ServiceKey::new("ns", "a"));
        assert_eq!(
            announced(&m),
            ["blackhole 198.51.100.0/24", "198.51.100.12/32"]
        );
        m.service_deleted(&ServiceKey::new("ns", "b"));
        assert_eq!(announced(&m), ["198.51.100.12/32"]);
        // Excluded node: nothing of any kind.
        m.node_applied(&node("n1", json!({EXCLUDE_LABEL: "true"})));
        assert!(announced(&m).is_empty());
        assert!(why(&m, "local").contains(EXCLUDE_LABEL));
    }

    #[test]
    fn an_address_shared_by_kinds_stays_while_any_service_wants_it() {
        let mut m = Model::new("n1", true);
        m.node_applied(&node("n1", json!({})));
        m.set_advertise(advertise(
            json!({"externalIPs": {"enabled": true, "cidrs": ["203.0.113.0/24"]}}),
        ));
        // One Service's LoadBalancer address is another's externalIP.
        m.service_applied(svc("lb", json!({})));
        m.service_applied(plain_svc("ext", json!({"spec": {"externalIPs": ["203.0.113.10"], "clusterIP": null, "clusterIPs": null}})));
        assert_eq!(announced(&m), ["203.0.113.10/32"]);
        assert_eq!(m.announced_by_kind(), [1, 1, 0]);
        m.service_deleted(&ServiceKey::new("ns", "lb"));
        assert_eq!(announced(&m), ["203.0.113.10/32"]);
        // LoadBalancer addresses switched off by the RouterConfig, on by a Service.
        m.set_advertise(advertise(json!({"loadBalancerIPs": {"enabled": false}})));
        m.service_applied(svc("lb", json!({})));
        assert!(m.desired().addresses.is_empty());
        assert!(
            why(&m, "lb")
                .contains("RouterConfig rack spec.advertise.loadBalancerIPs.enabled is false")
        );
        m.service_applied(svc("lb", json!({"metadata": {"annotations": {"kube-router.io/service.advertise.loadbalancerip": "true"}}})));
        assert_eq!(announced(&m), ["203.0.113.10/32"]);
    }
}
