//! Which kinds of Service address a node announces, pure: LoadBalancer ingress addresses
//! (on by default), `spec.externalIPs` and cluster IPs (off by default), switched for a
//! group of nodes by their RouterConfig's `spec.advertise` and per Service by the
//! `routelb.io/advertise-*` annotations (kube-router's own understood too).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Service;

use crate::crd::RouterConfigSpec;
use crate::net::Prefix;
use crate::service::AnnotationError;

/// Annotation switching a Service's LoadBalancer addresses on or off.
pub const ADVERTISE_LOADBALANCER_IPS: &str = "routelb.io/advertise-loadbalancer-ips";
/// Annotation switching a Service's `spec.externalIPs` on or off.
pub const ADVERTISE_EXTERNAL_IPS: &str = "routelb.io/advertise-external-ips";
/// Annotation switching a Service's cluster IPs on or off.
pub const ADVERTISE_CLUSTER_IPS: &str = "routelb.io/advertise-cluster-ips";

/// kube-router's annotations for the same switches, understood for migration.
const LOADBALANCER_ALIASES: &[&str] = &["kube-router.io/service.advertise.loadbalancerip"];
const EXTERNAL_ALIASES: &[&str] = &["kube-router.io/service.advertise.externalip"];
const CLUSTER_ALIASES: &[&str] = &["kube-router.io/service.advertise.clusterip"];

/// A kind of Service address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `status.loadBalancer.ingress`, assigned by routelb from a pool.
    LoadBalancer,
    /// `spec.externalIPs`, chosen by whoever wrote the Service.
    External,
    /// `spec.clusterIPs`, assigned by the API server from the service CIDR.
    Cluster,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::LoadBalancer, Kind::External, Kind::Cluster];

    /// The metric label and template name of the kind.
    pub fn label(self) -> &'static str {
        match self {
            Kind::LoadBalancer => "loadbalancer",
            Kind::External => "external",
            Kind::Cluster => "cluster",
        }
    }

    /// The field of `spec.advertise` that switches the kind.
    pub fn field(self) -> &'static str {
        match self {
            Kind::LoadBalancer => "spec.advertise.loadBalancerIPs",
            Kind::External => "spec.advertise.externalIPs",
            Kind::Cluster => "spec.advertise.clusterIPs",
        }
    }

    /// The Service annotation that switches the kind.
    pub fn annotation(self) -> &'static str {
        match self {
            Kind::LoadBalancer => ADVERTISE_LOADBALANCER_IPS,
            Kind::External => ADVERTISE_EXTERNAL_IPS,
            Kind::Cluster => ADVERTISE_CLUSTER_IPS,
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            Kind::LoadBalancer => LOADBALANCER_ALIASES,
            Kind::External => EXTERNAL_ALIASES,
            Kind::Cluster => CLUSTER_ALIASES,
        }
    }

    /// The kind's name in the plural, for messages.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::LoadBalancer => "LoadBalancer addresses",
            Kind::External => "externalIPs",
            Kind::Cluster => "cluster IPs",
        }
    }

    pub fn idx(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::LoadBalancer => "LoadBalancer address",
            Kind::External => "externalIP",
            Kind::Cluster => "cluster IP",
        })
    }
}

/// What the node announces of each kind by default, from its RouterConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertise {
    /// The RouterConfig it comes from; `None`: no RouterConfig selects the node.
    pub source: Option<String>,
    /// Default per kind, indexed by [`Kind::idx`].
    pub enabled: [bool; 3],
    /// CIDRs externalIPs may be announced from.
    pub external_cidrs: Vec<Prefix>,
    /// The service CIDRs cluster IPs are announced from.
    pub cluster_cidrs: Vec<Prefix>,
    /// Cluster IPs as the service CIDRs rather than one route each.
    pub aggregate: bool,
}

impl Default for Advertise {
    fn default() -> Advertise {
        Advertise {
            source: None,
            enabled: [true, false, false],
            external_cidrs: Vec::new(),
            cluster_cidrs: Vec::new(),
            aggregate: false,
        }
    }
}

impl Advertise {
    /// Reads a RouterConfig's `spec.advertise`. A CIDR that cannot be parsed is left out
    /// (nothing is announced from it) and named in the problems; so is `aggregate`
    /// without CIDRs.
    pub fn from_spec(name: &str, spec: &RouterConfigSpec) -> (Advertise, Vec<String>) {
        let mut adv = Advertise {
            source: Some(name.to_string()),
            ..Advertise::default()
        };
        let mut problems = Vec::new();
        let Some(a) = &spec.advertise else {
            return (adv, problems);
        };
        if let Some(lb) = &a.load_balancer_ips {
            adv.enabled[Kind::LoadBalancer.idx()] = lb.enabled.unwrap_or(true);
        }
        let mut cidrs = |kind: Kind, list: &[String]| -> Vec<Prefix> {
            let mut out: Vec<Prefix> = Vec::new();
            for c in list {
                match Prefix::parse_cidr(c) {
                    Ok(p) => out.push(p),
                    Err(why) => problems.push(format!(
                        "RouterConfig {name} {}.cidrs: {why}; nothing is announced from it",
                        kind.field()
                    )),
                }
            }
            out.sort();
            out.dedup();
            out
        };
        if let Some(e) = &a.external_ips {
            adv.enabled[Kind::External.idx()] = e.enabled.unwrap_or(false);
            adv.external_cidrs = cidrs(Kind::External, &e.cidrs);
        }
        if let Some(c) = &a.cluster_ips {
            adv.enabled[Kind::Cluster.idx()] = c.enabled.unwrap_or(false);
            adv.cluster_cidrs = cidrs(Kind::Cluster, &c.cidrs);
            adv.aggregate = c.aggregate.unwrap_or(false);
        }
        if adv.aggregate && adv.cluster_cidrs.is_empty() {
            problems.push(format!(
                "RouterConfig {name} spec.advertise.clusterIPs.aggregate needs cidrs (the service CIDRs); cluster IPs are announced one route each"
            ));
            adv.aggregate = false;
        }
        (adv, problems)
    }

    /// The CIDRs of a kind (none for LoadBalancer addresses: their pools bound them).
    pub fn cidrs(&self, kind: Kind) -> &[Prefix] {
        match kind {
            Kind::LoadBalancer => &[],
            Kind::External => &self.external_cidrs,
            Kind::Cluster => &self.cluster_cidrs,
        }
    }

    /// A setting of a kind as a message names it, with its value: `RouterConfig rack
    /// spec.advertise.externalIPs.cidrs [192.0.2.0/24]`.
    pub fn setting(&self, kind: Kind, sub: &str, value: &str) -> String {
        match &self.source {
            Some(rc) => format!("RouterConfig {rc} {}{sub} {value}", kind.field()),
            None => format!(
                "{}{sub} {value} (no RouterConfig selects this node)",
                kind.field()
            ),
        }
    }

    /// A kind's CIDRs as `[a, b]`.
    pub fn cidr_list(&self, kind: Kind) -> String {
        format!("[{}]", self.joined(kind))
    }

    /// A kind's CIDRs as `a, b`.
    fn joined(&self, kind: Kind) -> String {
        let list: Vec<String> = self.cidrs(kind).iter().map(ToString::to_string).collect();
        list.join(", ")
    }

    /// One line for logs and Events: what the node announces by default.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for kind in Kind::ALL {
            let on = self.enabled[kind.idx()];
            let mut s = format!("{} {}", kind.plural(), if on { "on" } else { "off" });
            if !self.cidrs(kind).is_empty() {
                s.push_str(&format!(" (within {})", self.joined(kind)));
            }
            if kind == Kind::Cluster && self.aggregate {
                s.push_str(", aggregated");
            }
            parts.push(s);
        }
        let from = match &self.source {
            Some(rc) => format!("RouterConfig {rc}"),
            None => "defaults: no RouterConfig selects the node".to_string(),
        };
        format!("{} ({from})", parts.join("; "))
    }
}

/// A Service's own switches, per kind: `Some` where an annotation says so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Switches(pub [Option<bool>; 3]);

impl Switches {
    /// Reads the annotations; a bad value is named in the problems and counts as unset.
    pub fn of(svc: &Service) -> (Switches, Vec<String>) {
        let empty = BTreeMap::new();
        let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
        let mut out = Switches::default();
        let mut problems = Vec::new();
        for kind in Kind::ALL {
            match crate::service::annotation(annotations, kind.annotation(), kind.aliases()) {
                Ok(None) => {}
                Ok(Some((name, value))) => match value {
                    "true" => out.0[kind.idx()] = Some(true),
                    "false" => out.0[kind.idx()] = Some(false),
                    other => problems.push(
                        AnnotationError::NotABool {
                            annotation: name.to_string(),
                            value: other.to_string(),
                        }
                        .to_string(),
                    ),
                },
                Err(e) => problems.push(e.to_string()),
            }
        }
        (out, problems)
    }

    /// Whether the kind is on for the Service, and whether the Service said so itself.
    pub fn on(&self, kind: Kind, adv: &Advertise) -> (bool, bool) {
        match self.0[kind.idx()] {
            Some(v) => (v, true),
            None => (adv.enabled[kind.idx()], false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(annotations: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "s", "namespace": "ns", "annotations": annotations}}),
        )
        .unwrap()
    }

    #[test]
    fn annotations_switch_each_kind_and_kube_routers_are_understood() {
        let (s, p) = Switches::of(&svc(json!({
            ADVERTISE_CLUSTER_IPS: "true",
            "kube-router.io/service.advertise.externalip": "true",
            "kube-router.io/service.advertise.loadbalancerip": "false",
        })));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.0, [Some(false), Some(true), Some(true)]);
        // routelb's own wins over kube-router's.
        let (s, _) = Switches::of(&svc(json!({
            ADVERTISE_CLUSTER_IPS: "false",
            "kube-router.io/service.advertise.clusterip": "true",
        })));
        assert_eq!(s.0[Kind::Cluster.idx()], Some(false));
        let (s, p) = Switches::of(&svc(json!({ADVERTISE_EXTERNAL_IPS: "yes"})));
        assert_eq!(s, Switches::default(), "a bad value counts as unset");
        assert!(p[0].contains("routelb.io/advertise-external-ips") && p[0].contains("neither"));
        let adv = Advertise::default();
        assert_eq!(
            Switches::default().on(Kind::LoadBalancer, &adv),
            (true, false)
        );
        assert_eq!(Switches::default().on(Kind::Cluster, &adv), (false, false));
    }

    #[test]
    fn router_config_sets_the_defaults_and_names_bad_cidrs() {
        let spec: RouterConfigSpec = serde_json::from_value(json!({
            "asn": 64512,
            "advertise": {
                "loadBalancerIPs": {"enabled": false},
                "externalIPs": {"enabled": true, "cidrs": ["192.0.2.0/24", "192.0.2.9/24"]},
                "clusterIPs": {"aggregate": true, "cidrs": ["2001:db8:96::/112", "198.51.100.0/24"]}
            }
        }))
        .unwrap();
        let (adv, problems) = Advertise::from_spec("rack1", &spec);
        assert_eq!(adv.enabled, [false, true, false]);
        assert_eq!(adv.external_cidrs.len(), 1);
        assert_eq!(adv.cluster_cidrs[0].to_string(), "198.51.100.0/24");
        assert!(adv.aggregate);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("RouterConfig rack1 spec.advertise.externalIPs.cidrs"));
        assert!(problems[0].contains("write 192.0.2.0/24"));
        assert!(
            adv.summary().contains(
                "cluster IPs off (within 198.51.100.0/24, 2001:db8:96::/112), aggregated"
            )
        );

        let spec: RouterConfigSpec = serde_json::from_value(
            json!({"asn": 1, "advertise": {"clusterIPs": {"enabled": true, "aggregate": true}}}),
        )
        .unwrap();
        let (adv, problems) = Advertise::from_spec("r", &spec);
        assert!(!adv.aggregate && adv.enabled[Kind::Cluster.idx()]);
        assert!(problems[0].contains("aggregate needs cidrs"));
        let (adv, problems) = Advertise::from_spec("r", &RouterConfigSpec::default());
        assert_eq!(adv.enabled, Advertise::default().enabled);
        assert!(problems.is_empty());
    }
}
