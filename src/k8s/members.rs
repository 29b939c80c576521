//! Node Leases for local (L2) pools: each agent renews one Lease of its own in
//! `routelb-system` (`routelb-node-<node>`, label `routelb.io/node-lease`) carrying its
//! member record ([`routelb_core::l2::Member`]), and every agent (and the allocator)
//! watches them all.
//!
//! Liveness is judged as client-go's leader election judges it: by the observer's own
//! clock since it last saw a Lease change, never by comparing the holder's timestamps
//! with its own. An observer whose own renewals stop coming back through its watch
//! cannot tell a dead node from a stalled watch: it then keeps its earlier verdicts
//! rather than declaring everyone dead ([`Members::current`]).
//!
//! Writes: one patch per renewal interval per node while some pool is local, none
//! otherwise.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use routelb_core::index::{Index, ObjectKey};
use routelb_core::l2::{LEASE_LABEL, LEASE_PREFIX, Member, lease_name};
use serde_json::json;
use tokio::sync::watch;

use crate::clock::boottime;

/// Renewal timing of node Leases.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a record stays valid after an observer sees it renewed.
    pub lease: Duration,
    /// How often the agent renews (well under `lease`).
    pub renew: Duration,
    /// How long a record stays valid after a graceful stop (a restart).
    pub restart_grace: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lease: Duration::from_millis(1500),
            renew: Duration::from_millis(500),
            restart_grace: Duration::from_secs(30),
        }
    }
}

/// The node's own Lease, renewed on a task.
#[derive(Debug, Clone)]
pub struct Renewer {
    api: Api<Lease>,
    node: String,
    record: watch::Sender<Option<Member>>,
    /// Boot time at which the request of the last successful renewal was sent.
    renewed: Arc<Mutex<Option<Duration>>>,
    /// How many renewals were written.
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl Renewer {
    /// Starts renewing `routelb-node-<node>` in `namespace` whenever a record is set.
    pub fn start(
        api: Api<Lease>,
        node: &str,
        owner: watch::Receiver<Option<OwnerReference>>,
        timing: Timing,
    ) -> Renewer {
        let (record, rx) = watch::channel(None);
        let r = Renewer {
            api,
            node: node.to_string(),
            record,
            renewed: Arc::default(),
            writes: Arc::default(),
        };
        let task = r.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(timing.renew);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rx = rx;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let Some(record) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let owner = owner.borrow().clone();
                task.write(&record, owner).await;
            }
        });
        r
    }

    /// Sets the record to publish (`None`: stop renewing; no pool is local).
    pub fn set(&self, record: Option<Member>) {
        self.record.send_if_modified(|r| {
            let changed = *r != record;
            if changed {
                *r = record;
            }
            changed
        });
    }

    /// Whether the last successful renewal is younger than `deadline`.
    pub fn fresh(&self, deadline: Duration) -> bool {
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        renewed.is_some_and(|t| boottime().saturating_sub(t) < deadline)
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn write(&self, record: &Member, owner: Option<OwnerReference>) {
        let (api, node) = (&self.api, self.node.as_str());
        let name = lease_name(node);
        let sent = boottime();
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(record.lease_ms.div_ceil(1000)).unwrap_or(i32::MAX);
        let body = json!({
            "metadata": {"annotations": record.annotations()},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": seconds,
                "renewTime": now,
            }
        });
        let result = match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let mut lease: Lease = match serde_json::from_value(json!({
                    "metadata": {
                        "name": name,
                        "labels": {LEASE_LABEL: "true"},
                        "annotations": record.annotations(),
                    },
                    "spec": body["spec"],
                })) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build the node Lease");
                        return;
                    }
                };
                lease.metadata.owner_references = owner.map(|o| vec![o]);
                api.create(&PostParams::default(), &lease).await.map(|_| ())
            }
            other => other.map(|_| ()),
        };
        match result {
            Ok(()) => {
                *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "cannot renew the node Lease");
            }
        }
    }

    /// Publishes `record` once more, valid for `grace`: the agent is restarting.
    pub async fn hand_over(&self, grace: Duration) {
        let Some(mut record) = self.record.borrow().clone() else {
            return;
        };
        record.lease_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.write(&record, None)).await;
    }
}

/// What an observer knows of one node Lease.
#[derive(Clone, Debug)]
struct Seen {
    version: Option<String>,
    /// Boot time at which it last changed.
    at: Duration,
    member: Member,
}

/// Every node's record, as this observer sees them.
#[derive(Debug, Default)]
pub struct Members {
    seen: BTreeMap<String, Seen>,
    /// The node this observer runs on (its own renewals show the watch is live).
    me: Option<String>,
    /// The verdicts last given, kept while the watch looks stalled.
    last: BTreeMap<String, bool>,
}

impl Members {
    pub fn new(me: Option<&str>) -> Members {
        Members {
            me: me.map(str::to_string),
            ..Members::default()
        }
    }

    /// The node a Lease is for, if it is a node Lease.
    fn node_of(lease: &Lease) -> Option<String> {
        lease.labels().get(LEASE_LABEL)?;
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .or_else(|| {
                lease
                    .name_any()
                    .strip_prefix(LEASE_PREFIX)
                    .map(str::to_string)
            })
    }

    /// A Lease was listed, created or changed.
    pub fn apply(&mut self, lease: &Lease) {
        let Some(node) = Self::node_of(lease) else {
            return;
        };
        let version = lease.resource_version();
        let member = Member::from_annotations(lease.annotations());
        let now = boottime();
        match self.seen.get_mut(&node) {
            Some(s) if s.version == version => {}
            Some(s) => {
                s.version = version;
                s.at = now;
                s.member = member;
            }
            None => {
                self.seen.insert(
                    node,
                    Seen {
                        version,
                        at: now,
                        member,
                    },
                );
            }
        }
    }

    /// A node's record as last seen (liveness not judged).
    pub fn record(&self, node: &str) -> Option<&Member> {
        self.seen.get(node).map(|s| &s.member)
    }

    /// A Lease was deleted.
    pub fn delete(&mut self, name: &str) {
        self.seen
            .retain(|node, _| lease_name(node) != name && node != name);
    }

    /// Whether this observer's own renewals come back within `within`: its watch is live.
    pub fn watch_live(&self, within: Duration) -> bool {
        let Some(me) = &self.me else { return true };
        self.seen
            .get(me)
            .is_some_and(|s| boottime().saturating_sub(s.at) < within)
    }

    /// The records with their liveness now: a record is alive while younger than the
    /// validity it asks for. While the watch looks stalled (`live` false), earlier
    /// verdicts stand.
    pub fn current(&mut self, live: bool, default_lease: Duration) -> BTreeMap<String, Member> {
        let now = boottime();
        let mut out = BTreeMap::new();
        for (node, s) in &self.seen {
            let lease = if s.member.lease_ms > 0 {
                Duration::from_millis(s.member.lease_ms)
            } else {
                default_lease
            };
            let fresh = now.saturating_sub(s.at) < lease;
            let alive = if live {
                fresh
            } else {
                self.last.get(node).copied().unwrap_or(fresh)
            };
            let mut m = s.member.clone();
            m.alive = alive;
            out.insert(node.clone(), m);
        }
        self.last = out.iter().map(|(n, m)| (n.clone(), m.alive)).collect();
        out
    }
}

/// Node Leases feed the members.
impl Index<Lease> for Members {
    type Out = ();
    fn apply(&mut self, lease: Arc<Lease>) -> Vec<()> {
        Members::apply(self, &lease);
        Vec::new()
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<()> {
        Members::delete(self, &key.name);
        Vec::new()
    }
}
