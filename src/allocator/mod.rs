//! `routelb allocator`: the shell around [`routelb_core::allocation::Core`].
//!
//! Watches Services, AddressPools and Namespaces into caches (leader and follower alike,
//! so a follower is warm). Only the Lease holder decides and writes: when it becomes
//! leader it rebuilds the allocation index from the caches (restoring every recorded
//! assignment before allocating anything), then applies each watch event and carries out
//! the resulting effects: Service status and annotation writes ([`writer`]: coalesced per
//! Service, concurrent across Services), Events, and pool statuses at a bounded rate.
//! Every write of a term is fenced: it happens only while the Lease renewal of that
//! term is proven fresh ([`Fence`]); a term's pending writes are aborted when it ends.

mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use routelb_core::allocation::{Core, Effect, Outcome, Settings, peer_status, status_differs};
use routelb_core::crd::{AddressPool, BGPPeer, NodeRoutingStatus, PoolMode, RouterConfig};
use routelb_core::index::{Feed, WatchEvent};
use routelb_core::l2::{
    ANNOUNCING_IPV4, ANNOUNCING_IPV6, LEASE_LABEL, Member, announcing_patch, pool_reach,
};
use routelb_core::service;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::writer::ServiceWriter;
use crate::health::Health;
use crate::k8s::events::{Note, Publisher};
use crate::k8s::leader::{Fence, LeaderElector, Timing};
use crate::k8s::members::{Members, Timing as MembersTiming};
use crate::k8s::watch::{Input, Watches};
use crate::metrics::METRICS;

/// How the allocator runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub settings: Settings,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub timing: Timing,
    /// How often pool statuses are refreshed (at most).
    pub status_interval: Duration,
    /// Concurrent Service writes.
    pub write_concurrency: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            settings: Settings::default(),
            lease_namespace: "routelb-system".into(),
            lease_name: "routelb-allocator".into(),
            identity: format!("allocator-{}", std::process::id()),
            timing: Timing::default(),
            status_interval: Duration::from_secs(1),
            write_concurrency: 16,
        }
    }
}

const ALLOCATIONS: &str = "routelb_allocations_total";
const ALLOCATIONS_HELP: &str = "Services given addresses (or new addresses), by pool.";
const FAILURES: &str = "routelb_allocation_failures_total";
const FAILURES_HELP: &str = "Allocation failures reported to Services, by reason (out_of_ips, no_pool, already_allocated, ...).";
const LEADER_HELP: &str = "1 while this allocator replica holds the Lease and writes.";
pub(crate) const ERRORS: &str = "routelb_reconcile_errors_total";
pub(crate) const ERRORS_HELP: &str = "Failed writes to the API server, by component and operation.";

/// Publishes per-pool gauges and the number of waiting Services.
fn pool_gauges(core: &Core) {
    METRICS.clear("routelb_pool_addresses");
    for name in core.pool_names() {
        let Some(usage) = core.ipam().pool_usage(&name) else {
            continue;
        };
        for (family, u) in [("ipv4", usage.ipv4), ("ipv6", usage.ipv6)] {
            let Some(u) = u else { continue };
            for (state, n) in [
                ("size", u.size),
                ("allocated", u.allocated),
                ("available", u.available),
            ] {
                METRICS.set(
                    "routelb_pool_addresses",
                    "Addresses of each pool by family and state (size, allocated, available).",
                    &[("pool", &name), ("family", family), ("state", state)],
                    n as f64,
                );
            }
        }
    }
    METRICS.set(
        "routelb_services_pending",
        "Services waiting for an address.",
        &[],
        core.pending_count() as f64,
    );
}

/// The caches, and a feed per kind that tracks what the core holds.
struct Caches {
    services: Store<Service>,
    pools: Store<AddressPool>,
    peers: Store<BGPPeer>,
    configs: Store<RouterConfig>,
    /// The nodes' NodeRoutingStatus reports, for BGPPeer and RouterConfig status.
    reports: Store<NodeRoutingStatus>,
    feeds: [Feed; 3],
    /// Whether the BGPPeer, RouterConfig and report caches have synced.
    routing: [Feed; 3],
    /// The nodes' L2 records (node Leases), for the `announcing-*` annotations.
    members: Members,
    leases: Feed,
}

impl Caches {
    fn synced(&self) -> bool {
        self.feeds.iter().all(Feed::synced)
    }

    /// Feeds one event to the leader's core, or, while following, only keeps track.
    /// Events older than the list the term started from are already in the core (or
    /// superseded by it) and only tracked: the watch may lag behind that list.
    fn feed(&mut self, session: Option<&mut Session>, input: Input) -> Vec<Effect> {
        let [services, pools, namespaces] = &mut self.feeds;
        if let Input::Lease(e) = input {
            self.leases.feed(&mut self.members, e);
            return Vec::new();
        }
        let Some(s) = session else {
            match input {
                Input::Service(e) => services.track(e),
                Input::Pool(e) => pools.track(e),
                Input::Namespace(e) => namespaces.track(e),
                _ => {}
            }
            return Vec::new();
        };
        let listed = s.listed;
        match input {
            Input::Service(e) if stale(&e, listed[0]) => {
                services.track(e);
                Vec::new()
            }
            Input::Pool(e) if stale(&e, listed[1]) => {
                pools.track(e);
                Vec::new()
            }
            Input::Namespace(e) if stale(&e, listed[2]) => {
                namespaces.track(e);
                Vec::new()
            }
            Input::Service(e) => services.feed(&mut s.core, e),
            Input::Pool(e) => pools.feed(&mut s.core, e),
            Input::Namespace(e) => namespaces.feed(&mut s.core, e),
            _ => Vec::new(),
        }
    }
}

/// A resourceVersion as the number it is on etcd and on fake-apiserver; `None` for
/// anything else (then no event is taken for stale).
fn rv_number<K: kube::Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

/// Whether an event shows an object at or before the version a list already showed.
fn stale<K: kube::Resource>(event: &WatchEvent<K>, listed: Option<u64>) -> bool {
    let obj = match event {
        WatchEvent::Apply(o) | WatchEvent::InitApply(o) | WatchEvent::Delete(o) => o,
        WatchEvent::Init | WatchEvent::InitDone => return false,
    };
    matches!((rv_number(obj.as_ref()), listed), (Some(rv), Some(l)) if rv <= l)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a status write off the list of those under way when it ends (or is aborted).
struct Done(Arc<std::sync::Mutex<BTreeSet<String>>>, String);

impl Drop for Done {
    fn drop(&mut self) {
        lock(&self.0).remove(&self.1);
    }
}

/// A status as a merge patch, with `clear` set to null where the status leaves it out
/// (a merge patch keeps what it does not mention).
fn status_patch<T: serde::Serialize>(status: &T, clear: &[&str]) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for k in clear {
            m.entry(*k).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": v })
}

/// Runs the allocator until `shutdown` turns true.
pub async fn run(
    client: Client,
    opts: Options,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (watches, mut inputs) = Watches::new(client.clone());
    let mut caches = Caches {
        services: watches.all(Input::Service),
        pools: watches.all(Input::Pool),
        peers: watches.all(Input::Peer),
        configs: watches.all(Input::RouterConfig),
        reports: watches.namespaced(&opts.lease_namespace, Input::NodeStatus),
        feeds: Default::default(),
        routing: Default::default(),
        members: Members::new(None),
        leases: Feed::default(),
    };
    let _ = watches.labelled(&opts.lease_namespace, LEASE_LABEL, Input::Lease);
    // Namespaces are only followed (their labels reach the core through the feed).
    let _ = watches.all(Input::Namespace);
    let (leading_tx, mut leading) = watch::channel(false);
    let (stop_election, stop_rx) = watch::channel(false);
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &opts.lease_namespace),
        &opts.lease_name,
        &opts.identity,
        opts.timing,
    );
    let fence = elector.fence();
    let election = tokio::spawn(elector.run(leading_tx, stop_rx));
    let publisher = Publisher::start(client.clone(), "routelb.io/allocator", &opts.identity, None);

    health.set(
        false,
        "waiting for the Service, AddressPool and Namespace caches",
    );
    declare_metrics();
    let mut session: Option<Session> = None;
    let mut tick = tokio::time::interval(opts.status_interval);
    loop {
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { break };
                // In the caches already; their statuses are written at the next tick.
                match input {
                    Input::Peer(e) => {
                        caches.routing[0].track(e);
                        continue;
                    }
                    Input::RouterConfig(e) => {
                        caches.routing[1].track(e);
                        continue;
                    }
                    Input::NodeStatus(e) => {
                        caches.routing[2].track(e);
                        continue;
                    }
                    _ => {}
                }
                let effects = caches.feed(session.as_mut(), input);
                if let Some(s) = session.as_mut() {
                    s.carry_out(effects);
                }
            }
            _ = leading.changed() => {}
            _ = tick.tick() => {
                if let Some(s) = session.as_mut() {
                    s.write_routing_statuses(&caches);
                    s.write_pool_statuses(&caches.pools);
                    s.write_announcing(&caches.services, &caches.pools, &mut caches.members);
                    pool_gauges(&s.core);
                }
            }
            _ = shutdown.changed() => break,
        }
        // Leading means the elector says so and the fence proves it, for one term.
        let term = fence.term().filter(|_| *leading.borrow());
        match (&session, term.filter(|_| caches.synced())) {
            (None, Some(term)) => {
                // Everything queued before now is in the caches.
                while let Ok(input) = inputs.try_recv() {
                    caches.feed(None, input);
                }
                match Session::start(
                    client.clone(),
                    &opts,
                    publisher.clone(),
                    &caches,
                    fence.clone(),
                    term,
                )
                .await
                {
                    Ok(mut s) => {
                        s.write_routing_statuses(&caches);
                        health.set(true, "leader: assigning addresses");
                        session = Some(s);
                    }
                    // Not deciding from stale caches: tried again at the next tick.
                    Err(e) => {
                        tracing::warn!(error = %e, "leading, but listing Services, pools and Namespaces failed; retrying")
                    }
                }
            }
            (Some(s), t) if t != Some(s.term) => {
                tracing::info!(term = s.term, "no longer leading; stopping writes");
                if let Some(s) = session.take() {
                    s.stop();
                }
                follower_health(&health, caches.synced());
            }
            (None, None) if caches.synced() && !health.ready() => follower_health(&health, true),
            _ => {}
        }
    }
    if let Some(s) = session.take() {
        s.stop();
    }
    stop_election.send_replace(true);
    let _ = election.await;
    Ok(())
}

fn follower_health(health: &Health, synced: bool) {
    health.set(
        synced,
        if synced {
            "follower: caches synced"
        } else {
            "waiting for caches"
        },
    );
}

/// Metrics shown at zero before anything happens.
fn declare_metrics() {
    for reason in [
        "out_of_ips",
        "no_pool",
        "already_allocated",
        "invalid_annotation",
        "address_not_in_pool",
    ] {
        METRICS.declare(FAILURES, FAILURES_HELP, &[("reason", reason)]);
    }
    for operation in [
        "service_status",
        "pool_status",
        "peer_status",
        "router_config_status",
    ] {
        METRICS.declare(
            ERRORS,
            ERRORS_HELP,
            &[("component", "allocator"), ("operation", operation)],
        );
    }
    METRICS.set("routelb_leader", LEADER_HELP, &[], 0.0);
}

/// The state of one term as leader.
struct Session {
    core: Core,
    writer: Arc<ServiceWriter>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// Pool status writes under way, aborted when the term ends.
    pool_writes: JoinSet<()>,
    publisher: Publisher,
    client: Client,
    dirty_pools: BTreeSet<String>,
    identity: String,
    fence: Fence,
    term: u64,
    /// The resourceVersions of the lists the term started from (Services, pools,
    /// Namespaces).
    listed: [Option<u64>; 3],
    /// The `announcing-*` patches written this term (the cache may lag behind them).
    announced: BTreeMap<String, serde_json::Value>,
    started: std::time::Instant,
    /// BGPPeer and RouterConfig status writes under way (`Kind/name`).
    status_writes: Arc<std::sync::Mutex<BTreeSet<String>>>,
}

/// A fresh list of a kind and the resourceVersion it was taken at.
async fn list<K>(client: &Client) -> kube::Result<(Vec<Arc<K>>, Option<u64>)>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let list = Api::<K>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await?;
    let rv = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok());
    Ok((list.items.into_iter().map(Arc::new).collect(), rv))
}

impl Session {
    /// Starts a term from fresh lists, not from the caches: after a freeze or a long
    /// follow the watches may lag behind what another leader wrote meanwhile.
    async fn start(
        client: Client,
        opts: &Options,
        publisher: Publisher,
        caches: &Caches,
        fence: Fence,
        term: u64,
    ) -> kube::Result<Session> {
        let started = std::time::Instant::now();
        let (services, services_rv) = list::<Service>(&client).await?;
        let (pools, pools_rv) = list::<AddressPool>(&client).await?;
        let (namespaces, namespaces_rv) = list::<Namespace>(&client).await?;
        let writer = Arc::new(ServiceWriter::new(
            client.clone(),
            caches.services.clone(),
            fence.clone(),
            term,
        ));
        let workers = (0..opts.write_concurrency.max(1))
            .map(|_| tokio::spawn(writer.clone().work()))
            .collect();
        let mut s = Session {
            core: Core::new(opts.settings.clone()),
            writer,
            workers,
            pool_writes: JoinSet::new(),
            publisher,
            client,
            dirty_pools: BTreeSet::new(),
            identity: opts.identity.clone(),
            fence,
            term,
            listed: [services_rv, pools_rv, namespaces_rv],
            announced: BTreeMap::new(),
            started,
            status_writes: Arc::default(),
        };
        let effects = s.core.restore(&services, &pools, &namespaces);
        s.carry_out(effects);
        tracing::info!(
            term,
            services = s.core.service_count(),
            pools = s.core.pool_names().len(),
            pending = s.core.pending_count(),
            took_ms = started.elapsed().as_millis() as u64,
            "leading: restored assignments and allocated"
        );
        METRICS.set("routelb_leader", LEADER_HELP, &[], 1.0);
        pool_gauges(&s.core);
        Ok(s)
    }

    /// Ends the term: pending Service and pool writes are aborted.
    fn stop(mut self) {
        for w in self.workers {
            w.abort();
        }
        self.pool_writes.abort_all();
        METRICS.set("routelb_leader", LEADER_HELP, &[], 0.0);
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        // Decisions made once leadership is no longer proven are not said or written.
        if !self.fence.holds(self.term) {
            return;
        }
        for e in effects {
            match e {
                Effect::Publish {
                    key,
                    addresses,
                    pool,
                    observed,
                } => self.writer.submit(key, addresses, pool, observed),
                Effect::Event {
                    regarding,
                    warning,
                    reason,
                    note,
                } => {
                    // Every decision is in the log too, at the default level.
                    let object = match &regarding.namespace {
                        Some(ns) => format!("{ns}/{}", regarding.name),
                        None => regarding.name.clone(),
                    };
                    if warning {
                        tracing::warn!(kind = regarding.kind, %object, reason, "{note}");
                    } else {
                        tracing::info!(kind = regarding.kind, %object, reason, "{note}");
                    }
                    self.publisher.publish(Note {
                        regarding,
                        warning,
                        reason: reason.to_string(),
                        action: "Allocate".into(),
                        note,
                    })
                }
                Effect::PoolStatus(p) => {
                    self.dirty_pools.insert(p);
                }
                Effect::Count(Outcome::Allocated { pool }) => {
                    METRICS.inc(ALLOCATIONS, ALLOCATIONS_HELP, &[("pool", &pool)], 1.0);
                }
                Effect::Count(Outcome::Failed { reason }) => {
                    METRICS.inc(FAILURES, FAILURES_HELP, &[("reason", reason)], 1.0);
                }
            }
        }
    }

    /// Brings the `announcing-ipv4`/`-ipv6` annotations of Services of local pools to
    /// the nodes that claim their addresses now (and removes them elsewhere).
    fn write_announcing(
        &mut self,
        services: &Store<Service>,
        pools: &Store<AddressPool>,
        members: &mut Members,
    ) {
        if !self.fence.holds(self.term) {
            return;
        }
        let local: BTreeSet<String> = pools
            .state()
            .iter()
            .filter(|p| p.spec.mode == PoolMode::Local)
            .map(|p| p.name_any())
            .collect();
        if local.is_empty() && self.announced.is_empty() {
            return;
        }
        let members = members.current(true, MembersTiming::default().lease);
        self.report_reach(pools, &members);
        for svc in services.state() {
            let is_local = service::allocated_from(&svc).is_some_and(|p| local.contains(p));
            let a = svc.annotations();
            if !is_local && !a.contains_key(ANNOUNCING_IPV4) && !a.contains_key(ANNOUNCING_IPV6) {
                continue;
            }
            let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
            let Some(patch) = announcing_patch(&svc, is_local, &members) else {
                self.announced.remove(&key);
                continue;
            };
            if self.announced.get(&key) == Some(&patch) {
                continue;
            }
            self.announced.insert(key, patch.clone());
            let api: Api<Service> =
                Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
            let (fence, term, name) = (self.fence.clone(), self.term, svc.name_any());
            self.pool_writes.spawn(async move {
                if !fence.holds(term) {
                    return;
                }
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    METRICS.inc(
                        ERRORS,
                        ERRORS_HELP,
                        &[("component", "allocator"), ("operation", "announcing")],
                        1.0,
                    );
                    tracing::warn!(service = %name, error = %e, "writing the announcing annotation failed");
                }
            });
        }
    }

    /// Tells the core, for each local pool, whether some node can answer for it (its
    /// condition, Events and pool choice follow). Right after a term starts the nodes'
    /// records may not all have been seen: nothing is said before two lease durations.
    fn report_reach(&mut self, pools: &Store<AddressPool>, members: &BTreeMap<String, Member>) {
        if self.started.elapsed() < MembersTiming::default().lease * 2 {
            return;
        }
        for pool in pools
            .state()
            .iter()
            .filter(|p| p.spec.mode == PoolMode::Local)
        {
            let name = pool.name_any();
            let reach = pool_reach(pool, members).map(|nodes| nodes.len());
            METRICS.set(
                "routelb_pool_answering_nodes",
                "Nodes that can answer for a local pool (ARP/NDP).",
                &[("pool", &name)],
                *reach.as_ref().unwrap_or(&0) as f64,
            );
            let effects = self.core.pool_reach(&name, reach);
            self.carry_out(effects);
        }
    }

    /// Writes the BGPPeers' and RouterConfigs' status where it changed: `Valid`, and
    /// from the nodes' reports the sessions Established and the nodes governed. One
    /// writer (the leader), at most once per object per tick.
    fn write_routing_statuses(&mut self, caches: &Caches) {
        let [peers_synced, configs_synced, reports_synced] =
            [0, 1, 2].map(|i| caches.routing[i].synced());
        if !self.fence.holds(self.term) || !peers_synced {
            return;
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let reports = caches.reports.state();
        for peer in caches.peers.state() {
            let mut status = peer_status(&peer, &reports, now);
            // Until the reports are listed (or when they cannot be: a CRD or a Role
            // missing), only `Valid`: a cache still filling would say "no session".
            if !reports_synced {
                let mut kept = peer.status.clone().unwrap_or_default();
                kept.conditions.retain(|c| c.type_ != "Valid");
                kept.conditions
                    .extend(status.conditions.into_iter().filter(|c| c.type_ == "Valid"));
                kept.observed_generation = status.observed_generation;
                status = kept;
            }
            if !peer
                .status
                .as_ref()
                .is_none_or(|c| routelb_core::status::peer_status_differs(c, &status))
            {
                continue;
            }
            let patch = status_patch(&status, &["nodes", "established", "sessions", "down"]);
            self.write_status::<BGPPeer>(peer.name_any(), patch, "peer_status");
        }
        if !(configs_synced && reports_synced) {
            return;
        }
        for rc in caches.configs.state() {
            let status = routelb_core::status::router_config_status(&rc, &reports, now);
            if !rc
                .status
                .as_ref()
                .is_none_or(|c| routelb_core::status::router_config_status_differs(c, &status))
            {
                continue;
            }
            let patch = status_patch(&status, &["nodes", "conflicts"]);
            self.write_status::<RouterConfig>(rc.name_any(), patch, "router_config_status");
        }
    }

    /// Merge-patches a cluster-scoped object's status, fenced on the term.
    fn write_status<K>(&mut self, name: String, patch: serde_json::Value, operation: &'static str)
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + 'static,
    {
        // One write per object at a time (in order); a failed one is retried at the
        // next tick, when the status still differs.
        let key = format!("{}/{name}", K::kind(&()));
        if !lock(&self.status_writes).insert(key.clone()) {
            return;
        }
        let api: Api<K> = Api::all(self.client.clone());
        let (fence, term) = (self.fence.clone(), self.term);
        let writes = self.status_writes.clone();
        self.pool_writes.spawn(async move {
            let _done = Done(writes, key);
            if !fence.holds(term) {
                return;
            }
            // A write that hangs must not hold the object's status for the client's
            // whole read timeout: given up after 10 s, tried again at a later tick.
            let (params, body) = (PatchParams::default(), Patch::Merge(&patch));
            let write = api.patch_status(&name, &params, &body);
            let result = match tokio::time::timeout(Duration::from_secs(10), write).await {
                Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                Err(_) => Err("no answer within 10 s".to_string()),
            };
            if let Err(e) = result {
                METRICS.inc(
                    ERRORS,
                    ERRORS_HELP,
                    &[("component", "allocator"), ("operation", operation)],
                    1.0,
                );
                tracing::warn!(object = %name, kind = K::kind(&()).as_ref(), error = %e, "writing status failed");
            }
        });
    }

    /// Writes the status of pools that changed since the last tick, when it differs.
    fn write_pool_statuses(&mut self, pools: &Store<AddressPool>) {
        while self.pool_writes.try_join_next().is_some() {}
        if !self.fence.holds(self.term) {
            return;
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        for name in std::mem::take(&mut self.dirty_pools) {
            let Some(current) = pools.get(&ObjectRef::new(&name)) else {
                continue;
            };
            let Some(status) = self.core.pool_status(
                &name,
                current.metadata.generation,
                current.status.as_ref(),
                now,
            ) else {
                continue;
            };
            if current
                .status
                .as_ref()
                .is_some_and(|c| !status_differs(c, &status))
            {
                continue;
            }
            let api: Api<AddressPool> = Api::all(self.client.clone());
            let (identity, fence, term) = (self.identity.clone(), self.fence.clone(), self.term);
            self.pool_writes.spawn(async move {
                let patch: json_patch::Patch = match serde_json::from_value(
                    json!([{"op": "add", "path": "/status", "value": status}]),
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(pool = %name, error = %e, "building the pool status patch");
                        return;
                    }
                };
                if !fence.holds(term) {
                    return;
                }
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
                    .await
                {
                    METRICS.inc(
                        ERRORS,
                        ERRORS_HELP,
                        &[("component", "allocator"), ("operation", "pool_status")],
                        1.0,
                    );
                    tracing::warn!(pool = %name, %identity, error = %e, "writing pool status failed");
                }
            });
        }
    }
}
