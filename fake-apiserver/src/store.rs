//! The object store: one resourceVersion counter for the whole server (as etcd's
//! revision), objects per storage, and a bounded change history per storage that serves
//! watches, consistent paged lists at a past version, and 410 Expired once compacted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use crate::objects::Allocators;
use crate::registry::Registry;

/// (namespace, name); the namespace is empty for cluster-scoped objects.
pub type ObjKey = (String, String);

/// A stored object with its serialised form.
#[derive(Debug)]
pub struct Stored {
    pub value: Value,
    pub json: Bytes,
    pub rv: u64,
}

impl Stored {
    fn new(mut value: Value, rv: u64) -> Stored {
        value["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises"));
        Stored { value, json, rv }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One change: the object after it (for a deletion, the last state with the deletion's
/// resourceVersion) and before it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: ChangeKind,
    pub key: ObjKey,
    pub obj: Arc<Stored>,
    pub prev: Option<Arc<Stored>>,
}

#[derive(Debug)]
struct Collection {
    objects: BTreeMap<ObjKey, Arc<Stored>>,
    history: VecDeque<Arc<Change>>,
    /// Every change with rv > floor is in `history`.
    floor: u64,
    tx: watch::Sender<u64>,
}

impl Collection {
    fn new(floor: u64) -> Collection {
        Collection {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            floor,
            tx: watch::channel(floor).0,
        }
    }
}

/// Why a past version cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub requested: u64,
    pub oldest: u64,
}

/// Everything behind the server's lock.
#[derive(Debug)]
pub struct Inner {
    pub rv: u64,
    pub registry: Registry,
    pub alloc: Allocators,
    collections: HashMap<String, Collection>,
    history_limit: usize,
}

impl Inner {
    pub fn new(history_limit: usize) -> Inner {
        Inner {
            rv: 1,
            registry: Registry::default(),
            alloc: Allocators::default(),
            collections: HashMap::new(),
            history_limit,
        }
    }

    fn coll(&mut self, storage: &str) -> &mut Collection {
        let floor = self.rv;
        self.collections
            .entry(storage.to_string())
            .or_insert_with(|| Collection::new(floor))
    }

    pub fn get(&self, storage: &str, key: &ObjKey) -> Option<Arc<Stored>> {
        self.collections.get(storage)?.objects.get(key).cloned()
    }

    /// Stores `value` under a new resourceVersion and records the change.
    pub fn put(&mut self, storage: &str, key: ObjKey, value: Value) -> Arc<Stored> {
        self.rv += 1;
        let rv = self.rv;
        let stored = Arc::new(Stored::new(value, rv));
        let coll = self.coll(storage);
        let prev = coll.objects.insert(key.clone(), stored.clone());
        let kind = if prev.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(
            storage,
            Change {
                rv,
                kind,
                key,
                obj: stored.clone(),
                prev,
            },
        );
        stored
    }

    /// Removes an object; the deleted state carries the deletion's resourceVersion.
    pub fn remove(&mut self, storage: &str, key: &ObjKey) -> Option<Arc<Stored>> {
        let prev = self.collections.get_mut(storage)?.objects.remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        let gone = Arc::new(Stored::new(prev.value.clone(), rv));
        self.record(
            storage,
            Change {
                rv,
                kind: ChangeKind::Deleted,
                key: key.clone(),
                obj: gone.clone(),
                prev: Some(prev),
            },
        );
        Some(gone)
    }

    fn record(&mut self, storage: &str, change: Change) {
        let limit = self.history_limit;
        let coll = self.coll(storage);
        let rv = change.rv;
        coll.history.push_back(Arc::new(change));
        while coll.history.len() > limit {
            let old = coll.history.pop_front().expect("non-empty");
            coll.floor = old.rv;
        }
        coll.tx.send_replace(rv);
    }

    /// Drops every storage's history: watches and lists from an older version get 410.
    pub fn compact(&mut self) {
        let rv = self.rv;
        for coll in self.collections.values_mut() {
            coll.history.clear();
            coll.floor = rv;
        }
    }

    /// A receiver woken whenever the storage changes.
    pub fn subscribe(&mut self, storage: &str) -> watch::Receiver<u64> {
        self.coll(storage).tx.subscribe()
    }

    /// Changes with rv > `since`, at most `max`.
    pub fn changes_since(
        &mut self,
        storage: &str,
        since: u64,
        max: usize,
    ) -> Result<Vec<Arc<Change>>, Compacted> {
        let coll = self.coll(storage);
        if since < coll.floor {
            return Err(Compacted {
                requested: since,
                oldest: coll.floor,
            });
        }
        let start = coll.history.partition_point(|c| c.rv <= since);
        Ok(coll.history.range(start..).take(max).cloned().collect())
    }

    /// Keys of every object in a storage (for cascading deletes).
    pub fn keys(&self, storage: &str) -> Vec<ObjKey> {
        self.collections
            .get(storage)
            .map(|c| c.objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// One page of a list as it was at `at` (current state when `None`), in key order,
    /// starting after `after`, restricted to a namespace, filtered. Returns the items and
    /// the key to continue after, if more keys exist.
    #[allow(clippy::too_many_arguments)]
    pub fn list(
        &mut self,
        storage: &str,
        namespace: Option<&str>,
        at: Option<u64>,
        after: Option<&ObjKey>,
        limit: Option<usize>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Result<(Vec<Arc<Stored>>, Option<ObjKey>), Compacted> {
        let current = self.rv;
        let coll = self.coll(storage);
        // State at `at`: undo every later change (the earliest later change's `prev`).
        let mut overlay: BTreeMap<ObjKey, Option<Arc<Stored>>> = BTreeMap::new();
        if let Some(at) = at.filter(|at| *at < current) {
            if at < coll.floor {
                return Err(Compacted {
                    requested: at,
                    oldest: coll.floor,
                });
            }
            let start = coll.history.partition_point(|c| c.rv <= at);
            for c in coll.history.range(start..) {
                overlay
                    .entry(c.key.clone())
                    .or_insert_with(|| c.prev.clone());
            }
        }
        let lower: Bound<ObjKey> = match (after, namespace) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let in_ns = |k: &ObjKey| namespace.is_none_or(|ns| k.0 == ns);
        let mut live = coll
            .objects
            .range((lower.clone(), Bound::Unbounded))
            .peekable();
        let mut past = overlay.range((lower, Bound::Unbounded)).peekable();
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last: Option<ObjKey> = None;
        loop {
            // Merge the two key-ordered streams; the overlay wins on equal keys.
            let next = match (live.peek(), past.peek()) {
                (None, None) => break,
                (Some((lk, _)), Some((pk, _))) if lk < pk => {
                    live.next().map(|(k, v)| (k, Some(v.clone())))
                }
                (Some((lk, _)), Some((pk, _))) if lk == pk => {
                    live.next();
                    past.next().map(|(k, v)| (k, v.clone()))
                }
                (Some(_), None) => live.next().map(|(k, v)| (k, Some(v.clone()))),
                (_, Some(_)) => past.next().map(|(k, v)| (k, v.clone())),
            };
            let Some((key, value)) = next else { break };
            if !in_ns(key) {
                if namespace.is_some_and(|ns| key.0.as_str() > ns) {
                    break;
                }
                continue;
            }
            let Some(value) = value else { continue };
            if items.len() == limit {
                return Ok((items, last));
            }
            last = Some(key.clone());
            if filter(&value.value) {
                items.push(value);
            }
        }
        Ok((items, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(ns: &str, n: &str) -> ObjKey {
        (ns.into(), n.into())
    }

    fn names(items: &[Arc<Stored>]) -> Vec<String> {
        items
            .iter()
            .map(|s| s.value["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn lists_at_a_past_version_undo_later_changes() {
        let mut s = Inner::new(100);
        for n in ["a", "b", "c"] {
            s.put("x", key("ns", n), json!({"metadata": {"name": n}, "v": 1}));
        }
        let at = s.rv;
        s.put(
            "x",
            key("ns", "b"),
            json!({"metadata": {"name": "b"}, "v": 2}),
        );
        s.remove("x", &key("ns", "a"));
        s.put(
            "x",
            key("ns", "d"),
            json!({"metadata": {"name": "d"}, "v": 1}),
        );
        let all = |_: &Value| true;
        let (now, _) = s.list("x", None, None, None, None, &all).unwrap();
        assert_eq!(names(&now), ["b", "c", "d"]);
        let (then, _) = s.list("x", None, Some(at), None, None, &all).unwrap();
        assert_eq!(names(&then), ["a", "b", "c"]);
        assert_eq!(then[1].value["v"], json!(1));
        // Paging at the past version.
        let (page, next) = s
            .list("x", Some("ns"), Some(at), None, Some(2), &all)
            .unwrap();
        assert_eq!(names(&page), ["a", "b"]);
        let (page, next) = s
            .list("x", Some("ns"), Some(at), next.as_ref(), Some(2), &all)
            .unwrap();
        assert_eq!((names(&page), next), (vec!["c".to_string()], None));
        s.compact();
        assert!(s.list("x", None, Some(at), None, None, &all).is_err());
        assert!(s.changes_since("x", at, 10).is_err());
    }

    #[test]
    fn history_is_bounded_and_reports_its_floor() {
        let mut s = Inner::new(3);
        let start = s.rv;
        for i in 0..5 {
            s.put("x", key("", &format!("o{i}")), json!({"metadata": {}}));
        }
        let err = s.changes_since("x", start, 10).unwrap_err();
        assert_eq!(err.requested, start);
        let recent = s.changes_since("x", s.rv - 3, 10).unwrap();
        assert_eq!(recent.len(), 3);
    }
}
