//! Reading a Kubernetes Service: whether routelb handles it, what it asks for (annotations,
//! `spec.loadBalancerIP`, families, ports, sharing) and what it was given. Pure.
//!
//! routelb's own annotations (`routelb.io/...`) come first; the equivalent MetalLB,
//! PureLB, OpenELB and Cilium annotations are understood so Services migrate unchanged.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use thiserror::Error;

use crate::ipam::range::Family;
use crate::ipam::{FamilyPolicy, PortKey, ServiceKey, ServiceRequest, ShareSpec, TrafficPolicy};
use crate::selector::Labels;

/// The `loadBalancerClass` routelb handles.
pub const CLASS: &str = "routelb.io/routelb";
/// Annotation naming the pool to allocate from.
pub const POOL: &str = "routelb.io/pool";
/// Annotation requesting addresses (comma-separated, one per family).
pub const ADDRESSES: &str = "routelb.io/addresses";
/// Annotation holding the sharing key.
pub const ALLOW_SHARED_IP: &str = "routelb.io/allow-shared-ip";
/// Annotation letting a Service share its key with Services of other namespaces that
/// opt in too (`"true"`); without it a sharing key is the namespace's own.
pub const SHARE_ACROSS_NAMESPACES: &str = "routelb.io/share-across-namespaces";
/// Annotation routelb writes: the pool the addresses came from.
pub const ALLOCATED_FROM: &str = "routelb.io/allocated-from";

/// Foreign annotations understood for migration, in order of precedence after routelb's.
const POOL_ALIASES: &[&str] = &[
    "metallb.io/address-pool",
    "metallb.universe.tf/address-pool",
    "purelb.io/service-group",
    "eip.openelb.kubesphere.io/v1alpha2",
    "eip.porter.kubesphere.io/v1alpha2",
];
const ADDRESSES_ALIASES: &[&str] = &[
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
    "purelb.io/addresses",
    "eip.openelb.kubesphere.io/v1alpha1",
    "lbipam.cilium.io/ips",
];
const ACROSS_ALIASES: &[&str] = &["lbipam.cilium.io/sharing-cross-namespace"];
const SHARED_ALIASES: &[&str] = &[
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/allow-shared-ip",
    "purelb.io/allow-shared-ip",
    "lbipam.cilium.io/sharing-key",
];

/// Whether routelb handles a Service, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handling {
    Handled,
    NotLoadBalancer,
    OtherClass(String),
    /// Class-less, and the allocator was told to ignore class-less Services.
    ClassLessIgnored,
}

/// Decides whether routelb handles a Service.
pub fn handling(svc: &Service, handle_class_less: bool) -> Handling {
    let Some(spec) = &svc.spec else {
        return Handling::NotLoadBalancer;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return Handling::NotLoadBalancer;
    }
    match spec.load_balancer_class.as_deref() {
        Some(CLASS) => Handling::Handled,
        Some(other) => Handling::OtherClass(other.to_string()),
        None if handle_class_less => Handling::Handled,
        None => Handling::ClassLessIgnored,
    }
}

/// A Service's key.
pub fn key(svc: &Service) -> ServiceKey {
    ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// A problem with a Service's annotations or spec that its owner must fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnnotationError {
    #[error("annotation {annotation}: {value:?} is not a list of IP addresses: {why}")]
    BadAddresses {
        annotation: String,
        value: String,
        why: String,
    },
    #[error("annotation {annotation} is empty")]
    Empty { annotation: String },
    #[error(
        "annotations {first} ({first_value:?}) and {second} ({second_value:?}) disagree; keep one"
    )]
    Conflicting {
        first: String,
        first_value: String,
        second: String,
        second_value: String,
    },
    #[error(
        "spec.loadBalancerIP {spec:?} and annotation {annotation} ({value:?}) are both set; keep only the annotation"
    )]
    LoadBalancerIpAndAnnotation {
        spec: String,
        annotation: String,
        value: String,
    },
    #[error("spec.loadBalancerIP {0:?} is not an IP address")]
    BadLoadBalancerIp(String),
    #[error("annotation {annotation}: {value:?} is neither \"true\" nor \"false\"")]
    NotABool { annotation: String, value: String },
}

/// What a Service asks for, with warnings worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub request: ServiceRequest,
    /// The request uses `spec.loadBalancerIP` (deprecated upstream).
    pub uses_load_balancer_ip: bool,
}

pub(crate) fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    primary: &'static str,
    aliases: &[&'static str],
) -> Result<Option<(&'static str, &'a str)>, AnnotationError> {
    let mut found: Option<(&'static str, &'a str)> = None;
    for name in std::iter::once(&primary).chain(aliases) {
        let Some(value) = annotations.get(*name).map(|v| v.trim()) else {
            continue;
        };
        if value.is_empty() {
            return Err(AnnotationError::Empty {
                annotation: name.to_string(),
            });
        }
        match found {
            None => found = Some((name, value)),
            // routelb's own annotation wins over foreign ones; foreign ones must agree.
            Some((first, _)) if first == primary => {}
            Some((first, first_value)) if first_value != value => {
                return Err(AnnotationError::Conflicting {
                    first: first.to_string(),
                    first_value: first_value.to_string(),
                    second: name.to_string(),
                    second_value: value.to_string(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(found)
}

fn parse_ips(annotation: &str, value: &str) -> Result<Vec<IpAddr>, AnnotationError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|e| AnnotationError::BadAddresses {
                    annotation: annotation.to_string(),
                    value: value.to_string(),
                    why: format!("{s:?}: {e}"),
                })
        })
        .collect()
}

/// Reads what a handled Service asks of the allocator.
pub fn parse(svc: &Service, namespace_labels: &Labels) -> Result<Parsed, AnnotationError> {
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let no_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&no_spec);
    let pool = annotation(annotations, POOL, POOL_ALIASES)?.map(|(_, v)| v.to_string());
    let requested = annotation(annotations, ADDRESSES, ADDRESSES_ALIASES)?;
    // A sharing key belongs to its namespace: any tenant could copy another's key. Only
    // Services that all opt in share across namespaces (Cilium's rule).
    let across = match annotation(annotations, SHARE_ACROSS_NAMESPACES, ACROSS_ALIASES)? {
        None => false,
        Some((SHARE_ACROSS_NAMESPACES, v)) => match v.trim() {
            "true" => true,
            "false" => false,
            other => {
                return Err(AnnotationError::NotABool {
                    annotation: SHARE_ACROSS_NAMESPACES.into(),
                    value: other.into(),
                });
            }
        },
        // Cilium's lists namespaces; any list opts in here.
        Some(_) => true,
    };
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let key = annotation(annotations, ALLOW_SHARED_IP, SHARED_ALIASES)?.map(|(_, v)| {
        let scope = if across { "*" } else { namespace };
        Arc::from(format!("{scope}/{v}"))
    });
    let lb_ip = spec
        .load_balancer_ip
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let (addresses, uses_load_balancer_ip) = match (requested, lb_ip) {
        (Some((name, value)), Some(ip)) => {
            return Err(AnnotationError::LoadBalancerIpAndAnnotation {
                spec: ip.to_string(),
                annotation: name.to_string(),
                value: value.to_string(),
            });
        }
        (Some((name, value)), None) => (parse_ips(name, value)?, false),
        (None, Some(ip)) => (
            vec![
                ip.parse()
                    .map_err(|_| AnnotationError::BadLoadBalancerIp(ip.to_string()))?,
            ],
            true,
        ),
        (None, None) => (Vec::new(), false),
    };
    let families: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    let ports: Vec<PortKey> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            PortKey::new(
                p.protocol.as_deref().unwrap_or("TCP"),
                p.port.clamp(0, 65535) as u16,
            )
        })
        .collect();
    let traffic = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local {
            selector: spec.selector.clone().unwrap_or_default(),
        },
        _ => TrafficPolicy::Cluster,
    };
    Ok(Parsed {
        request: ServiceRequest {
            key: self::key(svc),
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            namespace_labels: namespace_labels.clone(),
            pool,
            addresses,
            families,
            policy: FamilyPolicy::from_k8s(spec.ip_family_policy.as_deref()),
            share: ShareSpec {
                key,
                ports,
                traffic,
            },
        },
        uses_load_balancer_ip,
    })
}

/// The addresses in `status.loadBalancer.ingress` (IPs only), IPv4 first.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Addresses shown on more than one Service that do not share them on purpose (the same
/// sharing key, `routelb.io/allow-shared-ip`): each as a sentence naming the Services.
/// routelb never lets this happen; tests and `routelb status` check it.
pub fn shown_twice<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<String> {
    let mut holders: BTreeMap<IpAddr, Vec<(String, Option<&'a str>)>> = BTreeMap::new();
    for svc in services {
        let k = key(svc);
        let share = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ALLOW_SHARED_IP))
            .map(String::as_str);
        for ip in ingress_ips(svc) {
            holders
                .entry(ip)
                .or_default()
                .push((format!("{}/{}", k.namespace, k.name), share));
        }
    }
    holders
        .into_iter()
        .filter(|(_, hs)| hs.len() > 1 && !hs.iter().all(|(_, s)| s.is_some() && *s == hs[0].1))
        .map(|(ip, hs)| {
            let names: Vec<&str> = hs.iter().map(|(n, _)| n.as_str()).collect();
            format!("{ip} on {}", names.join(", "))
        })
        .collect()
}

/// The pool recorded in `routelb.io/allocated-from`.
pub fn allocated_from(svc: &Service) -> Option<&str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(ALLOCATED_FROM)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        let mut base = json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}
        });
        json_patch::merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn decides_which_services_routelb_handles() {
        assert_eq!(handling(&svc(json!({})), true), Handling::Handled);
        assert_eq!(handling(&svc(json!({})), false), Handling::ClassLessIgnored);
        assert_eq!(
            handling(&svc(json!({"spec": {"loadBalancerClass": CLASS}})), false),
            Handling::Handled
        );
        assert_eq!(
            handling(
                &svc(json!({"spec": {"loadBalancerClass": "other.io/lb"}})),
                true
            ),
            Handling::OtherClass("other.io/lb".into())
        );
        assert_eq!(
            handling(&svc(json!({"spec": {"type": "ClusterIP"}})), true),
            Handling::NotLoadBalancer
        );
    }

    #[test]
    fn an_address_on_two_services_is_found_unless_they_share_it() {
        let shows = |name: &str, ip: &str, key: Option<&str>| {
            let mut v = json!({"metadata": {"name": name}, "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
            if let Some(k) = key {
                v["metadata"]["annotations"] = json!({ALLOW_SHARED_IP: k});
            }
            svc(v)
        };
        let all = [
            shows("a", "192.0.2.1", Some("k")),
            shows("b", "192.0.2.1", Some("k")),
            shows("c", "192.0.2.2", None),
            shows("d", "192.0.2.2", None),
            shows("e", "192.0.2.3", Some("x")),
            shows("f", "192.0.2.3", Some("y")),
        ];
        assert_eq!(
            shown_twice(&all),
            ["192.0.2.2 on shop/c, shop/d", "192.0.2.3 on shop/e, shop/f"]
        );
    }

    #[test]
    fn reads_requests_from_routelb_and_foreign_annotations() {
        let p = parse(
            &svc(json!({"metadata": {"annotations": {
                POOL: "public", ADDRESSES: "192.0.2.10, 2001:db8::10", ALLOW_SHARED_IP: "dns"
            }}, "spec": {"externalTrafficPolicy": "Local", "selector": {"app": "dns"}, "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}})),
            &Labels::new(),
        )
        .unwrap();
        let r = &p.request;
        assert_eq!(r.pool.as_deref(), Some("public"));
        assert_eq!(r.addresses.len(), 2);
        assert_eq!(
            r.share.key.as_deref(),
            Some("shop/dns"),
            "a sharing key belongs to its namespace"
        );
        let across = parse(
            &svc(json!({"metadata": {"annotations": {ALLOW_SHARED_IP: "dns", SHARE_ACROSS_NAMESPACES: "true"}}})),
            &Labels::new(),
        )
        .unwrap();
        assert_eq!(across.request.share.key.as_deref(), Some("*/dns"));
        let bad = parse(
            &svc(
                json!({"metadata": {"annotations": {ALLOW_SHARED_IP: "dns", SHARE_ACROSS_NAMESPACES: "yes"}}}),
            ),
            &Labels::new(),
        );
        assert!(bad.unwrap_err().to_string().contains("neither"));
        assert_eq!(r.policy, FamilyPolicy::RequireDualStack);
        assert!(
            matches!(&r.share.traffic, TrafficPolicy::Local { selector } if selector["app"] == "dns")
        );

        let m = parse(
            &svc(json!({"metadata": {"annotations": {"metallb.universe.tf/address-pool": "old", "metallb.io/loadBalancerIPs": "192.0.2.5"}}})),
            &Labels::new(),
        )
        .unwrap();
        assert_eq!(m.request.pool.as_deref(), Some("old"));
        assert_eq!(
            m.request.addresses,
            ["192.0.2.5".parse::<IpAddr>().unwrap()]
        );
        // routelb's annotation wins over a foreign one.
        let w = parse(&svc(json!({"metadata": {"annotations": {POOL: "new", "purelb.io/service-group": "old"}}})), &Labels::new()).unwrap();
        assert_eq!(w.request.pool.as_deref(), Some("new"));
    }

    #[test]
    fn bad_annotations_say_what_to_fix() {
        let err = |v| parse(&svc(v), &Labels::new()).unwrap_err().to_string();
        assert!(
            err(json!({"metadata": {"annotations": {ADDRESSES: "192.0.2.300"}}}))
                .contains("is not a list of IP addresses")
        );
        assert!(
            err(json!({"metadata": {"annotations": {POOL: " "}}}))
                .contains("routelb.io/pool is empty")
        );
        assert!(err(json!({"metadata": {"annotations": {"metallb.io/address-pool": "a", "purelb.io/service-group": "b"}}})).contains("disagree"));
        assert!(err(json!({"metadata": {"annotations": {ADDRESSES: "192.0.2.1"}}, "spec": {"loadBalancerIP": "192.0.2.2"}})).contains("keep only the annotation"));
        assert!(err(json!({"spec": {"loadBalancerIP": "nope"}})).contains("not an IP address"));
        let p = parse(
            &svc(json!({"spec": {"loadBalancerIP": "192.0.2.2"}})),
            &Labels::new(),
        )
        .unwrap();
        assert!(p.uses_load_balancer_ip);
    }

    #[test]
    fn reads_recorded_assignments() {
        let s = svc(
            json!({"metadata": {"annotations": {ALLOCATED_FROM: "public"}}, "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::1"}, {"ip": "192.0.2.1"}, {"hostname": "lb.example"}]}}}),
        );
        assert_eq!(allocated_from(&s), Some("public"));
        assert_eq!(
            ingress_ips(&s),
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
    }
}
