//! What a Service asks of the allocator, independent of how it was read from Kubernetes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::error::AllocError;
use super::range::Family;
use crate::selector::Labels;

/// A Service's identity: `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

impl FamilyPolicy {
    /// Parses Kubernetes' spelling; unknown or absent values mean SingleStack, as the API
    /// server defaults them.
    pub fn from_k8s(s: Option<&str>) -> FamilyPolicy {
        match s {
            Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
            _ => FamilyPolicy::SingleStack,
        }
    }
}

impl fmt::Display for FamilyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FamilyPolicy::SingleStack => "SingleStack",
            FamilyPolicy::PreferDualStack => "PreferDualStack",
            FamilyPolicy::RequireDualStack => "RequireDualStack",
        })
    }
}

/// A (protocol, port) a Service exposes; sharing Services may not have one in common.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: String,
    pub port: u16,
}

impl PortKey {
    pub fn new(protocol: &str, port: u16) -> PortKey {
        PortKey {
            protocol: protocol.to_ascii_uppercase(),
            port,
        }
    }
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// `spec.externalTrafficPolicy`, with the pod selector that matters for sharing under
/// `Local` (both Services must send traffic to the same pods).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local {
        selector: BTreeMap<String, String>,
    },
}

impl TrafficPolicy {
    /// Whether two Services with these policies may share an address.
    pub fn compatible(&self, other: &TrafficPolicy) -> bool {
        match (self, other) {
            (TrafficPolicy::Cluster, TrafficPolicy::Cluster) => true,
            (TrafficPolicy::Local { selector: a }, TrafficPolicy::Local { selector: b }) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrafficPolicy::Cluster => f.write_str("Cluster"),
            TrafficPolicy::Local { selector } => {
                let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "Local (selector {})", sel.join(","))
            }
        }
    }
}

/// What matters for sharing an address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShareSpec {
    /// The sharing key (`routelb.io/allow-shared-ip`); `None` never shares.
    pub key: Option<Arc<str>>,
    pub ports: Vec<PortKey>,
    pub traffic: TrafficPolicy,
}

/// A Service's request for addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    /// The Service's labels, for pools' `serviceSelector`.
    pub labels: Labels,
    /// Its namespace's labels, for pools' `namespaceSelector`.
    pub namespace_labels: Labels,
    /// The pool named by annotation.
    pub pool: Option<String>,
    /// Requested addresses, at most one per family.
    pub addresses: Vec<IpAddr>,
    /// `spec.ipFamilies`, in order of preference.
    pub families: Vec<Family>,
    pub policy: FamilyPolicy,
    pub share: ShareSpec,
}

impl ServiceRequest {
    /// A single-stack IPv4 request with no constraints.
    pub fn new(namespace: &str, name: &str) -> ServiceRequest {
        ServiceRequest {
            key: ServiceKey::new(namespace, name),
            families: vec![Family::V4],
            ..Default::default()
        }
    }

    /// The families to allocate, in order, and whether all of them are required.
    pub fn wanted_families(&self) -> Result<(Vec<Family>, bool), AllocError> {
        let mut families: Vec<Family> = Vec::with_capacity(2);
        for f in &self.families {
            if !families.contains(f) {
                families.push(*f);
            }
        }
        if families.is_empty() {
            families.push(Family::V4);
        }
        if self.policy == FamilyPolicy::RequireDualStack && families.len() == 1 {
            families.push(families[0].other());
        }
        if !self.addresses.is_empty() {
            let mut requested: Vec<Family> = Vec::with_capacity(2);
            for addr in &self.addresses {
                let f = Family::of(*addr);
                if requested.contains(&f) {
                    return Err(AllocError::InvalidRequest(format!(
                        "two {f} addresses requested; request at most one address per family"
                    )));
                }
                let allowed = match self.policy {
                    FamilyPolicy::SingleStack => families[0] == f,
                    _ => families.contains(&f),
                };
                if !allowed {
                    return Err(AllocError::WrongFamily {
                        addr: *addr,
                        policy: self.policy,
                        families: families.clone(),
                    });
                }
                requested.push(f);
            }
            if self.policy == FamilyPolicy::RequireDualStack && requested.len() < 2 {
                return Err(AllocError::InvalidRequest(format!(
                    "ipFamilyPolicy RequireDualStack needs an IPv4 and an IPv6 address, but only {} was requested",
                    self.addresses[0]
                )));
            }
            return Ok((requested, true));
        }
        Ok(match self.policy {
            FamilyPolicy::SingleStack => (vec![families[0]], true),
            FamilyPolicy::PreferDualStack => (families, false),
            FamilyPolicy::RequireDualStack => (families, true),
        })
    }
}
