//! What Events are about ([`Regarding`]) and reporting each problem once ([`Once`]).
//!
//! Both components explain their decisions with Events; the same problem seen again on
//! every event or tick must not become a flood, and a problem that changes or comes back
//! after being solved must be said again.

use std::collections::HashMap;
use std::hash::Hash;

use k8s_openapi::api::core::v1::Service;
use kube_core::ResourceExt;

use crate::ipam::ServiceKey;

/// The object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Regarding {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
}

impl Regarding {
    pub fn service(svc: &Service) -> Regarding {
        Regarding {
            uid: svc.uid(),
            ..Regarding::service_key(&ServiceKey::new(
                svc.namespace().unwrap_or_default(),
                svc.name_any(),
            ))
        }
    }

    pub fn service_key(key: &ServiceKey) -> Regarding {
        Regarding {
            kind: "Service",
            api_version: "v1",
            namespace: Some(key.namespace.clone()),
            name: key.name.clone(),
            uid: None,
        }
    }

    fn cluster_scoped(kind: &'static str, api_version: &'static str, name: &str) -> Regarding {
        Regarding {
            kind,
            api_version,
            namespace: None,
            name: name.to_string(),
            uid: None,
        }
    }

    pub fn pool(name: &str) -> Regarding {
        Regarding::cluster_scoped("AddressPool", "routelb.io/v1alpha1", name)
    }

    pub fn peer(name: &str) -> Regarding {
        Regarding::cluster_scoped("BGPPeer", "routelb.io/v1alpha1", name)
    }

    pub fn router_config(name: &str) -> Regarding {
        Regarding::cluster_scoped("RouterConfig", "routelb.io/v1alpha1", name)
    }

    pub fn node(name: &str) -> Regarding {
        Regarding::cluster_scoped("Node", "v1", name)
    }

    /// With the object's uid, so `kubectl describe` finds the Event.
    pub fn with_uid(self, uid: Option<String>) -> Regarding {
        Regarding { uid, ..self }
    }
}

/// Remembers the last note said about each subject, so that a problem is reported when
/// it first appears or changes, not again while it lasts.
#[derive(Clone, Debug)]
pub struct Once<K> {
    last: HashMap<K, String>,
}

impl<K> Default for Once<K> {
    fn default() -> Once<K> {
        Once {
            last: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Once<K> {
    /// Whether `note` is news about `key` (and remembers it).
    pub fn news(&mut self, key: K, note: &str) -> bool {
        if self.last.get(&key).is_some_and(|n| n == note) {
            return false;
        }
        self.last.insert(key, note.to_string());
        true
    }

    /// The problem is over: the next one is news again.
    pub fn clear(&mut self, key: &K) {
        self.last.remove(key);
    }

    /// Whether `key` has a problem on record.
    pub fn has(&self, key: &K) -> bool {
        self.last.contains_key(key)
    }

    /// Forgets everything (a new term, a new start).
    pub fn reset(&mut self) {
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_news_when_it_appears_changes_or_returns() {
        let mut once = Once::default();
        assert!(once.news("a", "broken"));
        assert!(!once.news("a", "broken"));
        assert!(once.news("b", "broken"), "per subject");
        assert!(once.news("a", "broken differently"));
        once.clear(&"a");
        assert!(!once.has(&"a"));
        assert!(once.news("a", "broken differently"));
    }
}
