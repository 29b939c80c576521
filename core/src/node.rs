//! What this node announces, pure: from its Node, the Services with routelb addresses,
//! their EndpointSlices and the AddressPools, to the node's [`NodeState`].
//!
//! [`decide`] is the rule for one Service; [`Model`] applies it incrementally as objects
//! change (a Service or EndpointSlice event recomputes one Service; only Node and pool
//! changes recompute the Services they affect) and keeps reference counts so addresses
//! shared by several Services stay announced while any of them wants them here. A
//! Service is read once per event into [`ServiceFacts`]; the model keeps only those.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube_core::ResourceExt;

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

/// The decision for one Service on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Announce these addresses with these prefixes.
    Announce(Vec<(IpAddr, Prefix)>),
    /// Do not announce, and why.
    Withhold(String),
}

impl Decision {
    pub fn announces(&self) -> bool {
        matches!(self, Decision::Announce(_))
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

/// The rule for one Service.
pub fn decide(
    node: Option<&NodeFacts>,
    svc: &ServiceFacts,
    ready_here: bool,
    pool: Option<&PoolFacts>,
) -> Option<Decision> {
    // A pool that is gone: keep announcing with defaults until the allocator moves it.
    let facts = pool.copied().unwrap_or_default();
    if facts.mode == PoolMode::Local {
        return Some(Decision::Withhold(format!(
            "AddressPool {} is a local (L2) pool: its addresses are answered on the LAN, not routed",
            svc.pool
        )));
    }
    let Some(node) = node else {
        return Some(Decision::Withhold(
            "this node's Node object does not exist".into(),
        ));
    };
    if node.labels.contains_key(EXCLUDE_LABEL) {
        return Some(Decision::Withhold(format!(
            "node {} is labelled {EXCLUDE_LABEL}",
            node.name
        )));
    }
    if svc.local_policy && !ready_here {
        return Some(Decision::Withhold(format!(
            "externalTrafficPolicy is Local and node {} has no ready endpoint",
            node.name
        )));
    }
    Some(Decision::Announce(
        svc.addresses
            .iter()
            .map(|a| (*a, facts.prefix(*a)))
            .collect(),
    ))
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
    services: HashMap<ServiceKey, ServiceFacts>,
    /// Per Service, per EndpointSlice name: whether it has a ready endpoint here.
    ready: HashMap<ServiceKey, HashMap<String, bool>>,
    decided: HashMap<ServiceKey, Decision>,
    addresses: BTreeMap<IpAddr, usize>,
    prefixes: BTreeMap<Prefix, usize>,
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
            decided: HashMap::new(),
            addresses: BTreeMap::new(),
            prefixes: BTreeMap::new(),
        }
    }

    /// The node's state: every address some Service wants announced here.
    pub fn desired(&self) -> NodeState {
        NodeState {
            addresses: self.addresses.keys().copied().collect(),
            prefixes: self.prefixes.keys().copied().collect(),
        }
    }

    /// The current decision for a Service.
    pub fn decision(&self, key: &ServiceKey) -> Option<&Decision> {
        self.decided.get(key)
    }

    fn recompute(&mut self, key: &ServiceKey) -> Option<Change> {
        let after = self.services.get(key).and_then(|svc| {
            let ready = self.ready.get(key).is_some_and(|m| m.values().any(|r| *r));
            decide(self.node.as_ref(), svc, ready, self.pools.get(&svc.pool))
        });
        let before = self.decided.get(key).cloned();
        if before == after {
            return None;
        }
        if let Some(Decision::Announce(old)) = &before {
            for (a, p) in old {
                dec(&mut self.addresses, a);
                dec(&mut self.prefixes, p);
            }
        }
        if let Some(Decision::Announce(new)) = &after {
            for (a, p) in new {
                *self.addresses.entry(*a).or_default() += 1;
                *self.prefixes.entry(*p).or_default() += 1;
            }
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

    fn recompute_all(&mut self, filter: impl Fn(&ServiceFacts) -> bool) -> Vec<Change> {
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
        match ServiceFacts::of(&svc, self.handle_class_less) {
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
        self.recompute_all(|s| s.pool == name)
    }

    pub fn pool_deleted(&mut self, name: &str) -> Vec<Change> {
        if self.pools.remove(name).is_none() {
            return Vec::new();
        }
        self.recompute_all(|s| s.pool == name)
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

    fn announced(m: &Model) -> Vec<String> {
        m.desired()
            .prefixes
            .iter()
            .map(ToString::to_string)
            .collect()
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
        assert!(
            matches!(m.decision(&ServiceKey::new("ns", "web")), Some(Decision::Withhold(r)) if r.contains(EXCLUDE_LABEL))
        );
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
            matches!(&changes[0].after, Some(Decision::Withhold(r)) if r.contains("no ready endpoint"))
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
        assert!(
            matches!(m.decision(&ServiceKey::new("ns", "l2")), Some(Decision::Withhold(r)) if r.contains("local (L2)"))
        );
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
}
