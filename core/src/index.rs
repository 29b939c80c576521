//! Feeding a watch into an index, in one place: objects applied and deleted, and after a
//! relist (a watch that restarted) the objects that vanished meanwhile deleted.
//!
//! A component's pure state implements [`Index`] for each kind it watches; the I/O
//! layer wraps each watch in a [`Feed`] and hands it the watch's events as
//! [`WatchEvent`]s. Every index thus gets the same relist semantics, without keeping
//! its own list of keys to compare.

use std::collections::HashSet;
use std::sync::Arc;

use kube_core::{Resource, ResourceExt};

/// An object's identity within its kind: namespace (none when cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn of<K: Resource>(obj: &K) -> ObjectKey {
        ObjectKey {
            namespace: obj.namespace(),
            name: obj.name_any(),
        }
    }
}

impl From<&ObjectKey> for crate::ipam::ServiceKey {
    fn from(k: &ObjectKey) -> crate::ipam::ServiceKey {
        crate::ipam::ServiceKey::new(k.namespace.clone().unwrap_or_default(), k.name.clone())
    }
}

/// What a component keeps of one kind of object.
pub trait Index<K> {
    /// What the component learns from a change (effects, changed decisions).
    type Out;
    /// An object was created or changed (or listed).
    fn apply(&mut self, obj: Arc<K>) -> Vec<Self::Out>;
    /// An object was deleted (or vanished while the watch was down).
    fn delete(&mut self, key: &ObjectKey) -> Vec<Self::Out>;
}

/// Two indexes fed by one watch (one [`Feed`], so one relist): what the first learns is
/// returned, what the second learns is its own business.
#[derive(Debug)]
pub struct Both<'a, A, B>(pub &'a mut A, pub &'a mut B);

impl<K, A: Index<K>, B: Index<K>> Index<K> for Both<'_, A, B> {
    type Out = A::Out;
    fn apply(&mut self, obj: Arc<K>) -> Vec<A::Out> {
        self.1.apply(obj.clone());
        self.0.apply(obj)
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<A::Out> {
        self.1.delete(key);
        self.0.delete(key)
    }
}

/// A watch's event, as the I/O layer receives it.
#[derive(Clone, Debug)]
pub enum WatchEvent<K> {
    /// A (re)list starts.
    Init,
    /// An object of the list.
    InitApply(Arc<K>),
    /// The list is complete.
    InitDone,
    Apply(Arc<K>),
    Delete(Arc<K>),
}

/// One watch feeding an index: remembers which objects the index holds, so that when a
/// relist completes, those it did not list are deleted.
#[derive(Debug, Default)]
pub struct Feed {
    known: HashSet<ObjectKey>,
    listing: Option<HashSet<ObjectKey>>,
    synced: bool,
}

impl Feed {
    /// Whether a first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Keeps track of an event that no index takes (a follower's, or a kind read from
    /// its cache elsewhere): the feed still knows what is listed and when it synced.
    pub fn track<K: Resource>(&mut self, event: WatchEvent<K>) {
        struct Nothing;
        impl<K> Index<K> for Nothing {
            type Out = ();
            fn apply(&mut self, _: Arc<K>) -> Vec<()> {
                Vec::new()
            }
            fn delete(&mut self, _: &ObjectKey) -> Vec<()> {
                Vec::new()
            }
        }
        self.feed(&mut Nothing, event);
    }

    /// Applies one event to `index`.
    pub fn feed<K, I>(&mut self, index: &mut I, event: WatchEvent<K>) -> Vec<I::Out>
    where
        K: Resource,
        I: Index<K>,
    {
        match event {
            WatchEvent::Init => {
                self.listing = Some(HashSet::new());
                Vec::new()
            }
            WatchEvent::InitApply(obj) => {
                let key = ObjectKey::of(obj.as_ref());
                self.listing.get_or_insert_default().insert(key.clone());
                self.known.insert(key);
                index.apply(obj)
            }
            WatchEvent::InitDone => {
                self.synced = true;
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<ObjectKey> = self.known.difference(&listed).cloned().collect();
                self.known = listed;
                gone.iter().flat_map(|k| index.delete(k)).collect()
            }
            WatchEvent::Apply(obj) => {
                self.known.insert(ObjectKey::of(obj.as_ref()));
                index.apply(obj)
            }
            WatchEvent::Delete(obj) => {
                let key = ObjectKey::of(obj.as_ref());
                self.known.remove(&key);
                index.delete(&key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[derive(Default)]
    struct Names(Vec<String>);

    impl Index<ConfigMap> for Names {
        type Out = String;
        fn apply(&mut self, obj: Arc<ConfigMap>) -> Vec<String> {
            self.0.push(obj.name_any());
            vec![format!("+{}", obj.name_any())]
        }
        fn delete(&mut self, key: &ObjectKey) -> Vec<String> {
            self.0.retain(|n| *n != key.name);
            vec![format!("-{}", key.name)]
        }
    }

    fn cm(name: &str) -> Arc<ConfigMap> {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        Arc::new(c)
    }

    #[test]
    fn a_relist_deletes_what_vanished_while_the_watch_was_down() {
        let (mut feed, mut names) = (Feed::default(), Names::default());
        assert!(!feed.synced());
        feed.feed(&mut names, WatchEvent::Init);
        feed.feed(&mut names, WatchEvent::InitApply(cm("a")));
        feed.feed(&mut names, WatchEvent::InitApply(cm("b")));
        assert!(feed.feed(&mut names, WatchEvent::InitDone).is_empty());
        assert!(feed.synced());
        feed.feed(&mut names, WatchEvent::Apply(cm("c")));
        // The watch restarts; b and c were deleted meanwhile, d created.
        feed.feed(&mut names, WatchEvent::Init);
        feed.feed(&mut names, WatchEvent::InitApply(cm("a")));
        feed.feed(&mut names, WatchEvent::InitApply(cm("d")));
        let mut gone = feed.feed(&mut names, WatchEvent::InitDone);
        gone.sort();
        assert_eq!(gone, ["-b", "-c"]);
        assert_eq!(names.0, ["a", "a", "d"]);
        assert_eq!(feed.feed(&mut names, WatchEvent::Delete(cm("d"))), ["-d"]);
        // A feed that only tracks still knows when its watch synced.
        let mut tracked = Feed::default();
        tracked.track(WatchEvent::<ConfigMap>::Init);
        tracked.track(WatchEvent::InitApply(cm("a")));
        assert!(!tracked.synced());
        tracked.track(WatchEvent::<ConfigMap>::InitDone);
        assert!(tracked.synced());
    }
}
