//! `routelb allocator`: the I/O around [`core::Core`].
//!
//! Watches Services, AddressPools and Namespaces into caches (leader and follower alike,
//! so a follower is warm). Only the Lease holder decides and writes: when it becomes
//! leader it rebuilds the allocation index from the caches (restoring every recorded
//! assignment before allocating anything), then applies each watch event and carries out
//! the resulting effects: Service status and annotation writes (coalesced per Service,
//! concurrent across Services), Events, and pool statuses at a bounded rate.

pub mod core;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};

use self::core::{Core, Effect, Outcome, Regarding, Settings, status_differs};
use crate::crd::AddressPool;
use crate::events::{Note, Publisher};
use crate::health::Health;
use crate::ipam::ServiceKey;
use crate::kubewatch::watch_into;
use crate::leader::{LeaderElector, Timing};
use crate::metrics::METRICS;
use crate::service;

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

enum Input {
    Service(watcher::Event<Service>),
    Pool(watcher::Event<AddressPool>),
    Namespace(watcher::Event<Namespace>),
}

const ALLOCATIONS: &str = "routelb_allocations_total";
const ALLOCATIONS_HELP: &str = "Services given addresses (or new addresses), by pool.";
const FAILURES: &str = "routelb_allocation_failures_total";
const FAILURES_HELP: &str = "Allocation failures reported to Services, by reason (out_of_ips, no_pool, already_allocated, ...).";
const LEADER_HELP: &str = "1 while this allocator replica holds the Lease and writes.";
const ERRORS: &str = "routelb_reconcile_errors_total";
const ERRORS_HELP: &str = "Failed writes to the API server, by component and operation.";

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

/// Runs the allocator until `shutdown` turns true.
pub async fn run(
    client: Client,
    opts: Options,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut inputs) = mpsc::channel::<Input>(4096);
    let services = watch_into(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        Input::Service,
    );
    let pools = watch_into(
        Api::<AddressPool>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        Input::Pool,
    );
    let namespaces = watch_into(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        tx,
        Input::Namespace,
    );

    let (leading_tx, mut leading) = watch::channel(false);
    let (stop_election, stop_rx) = watch::channel(false);
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &opts.lease_namespace),
        &opts.lease_name,
        &opts.identity,
        opts.timing,
    );
    let election = tokio::spawn(elector.run(leading_tx, stop_rx));
    let publisher = Publisher::start(client.clone(), "routelb.io/allocator", &opts.identity);

    health.set(
        false,
        "waiting for the Service, AddressPool and Namespace caches",
    );
    for reason in [
        "out_of_ips",
        "no_pool",
        "already_allocated",
        "invalid_annotation",
        "address_not_in_pool",
    ] {
        METRICS.declare(FAILURES, FAILURES_HELP, &[("reason", reason)]);
    }
    METRICS.declare(
        ERRORS,
        ERRORS_HELP,
        &[("component", "allocator"), ("operation", "service_status")],
    );
    METRICS.set("routelb_leader", LEADER_HELP, &[], 0.0);
    let mut synced = [false; 3];
    let mut session: Option<Session> = None;
    let mut tick = tokio::time::interval(opts.status_interval);
    loop {
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { break };
                let done = match &input {
                    Input::Service(watcher::Event::InitDone) => Some(0),
                    Input::Pool(watcher::Event::InitDone) => Some(1),
                    Input::Namespace(watcher::Event::InitDone) => Some(2),
                    _ => None,
                };
                if let Some(s) = session.as_mut() {
                    s.apply(input, &services, &pools);
                }
                if let Some(i) = done {
                    synced[i] = true;
                }
            }
            _ = leading.changed() => {}
            _ = tick.tick() => {
                if let Some(s) = session.as_mut() {
                    s.write_pool_statuses(&pools);
                    pool_gauges(&s.core);
                }
            }
            _ = shutdown.changed() => break,
        }
        let all_synced = synced.iter().all(|s| *s);
        let leader = *leading.borrow();
        match (&session, leader && all_synced) {
            (None, true) => {
                // Everything queued before now is in the caches.
                while inputs.try_recv().is_ok() {}
                let started = std::time::Instant::now();
                let s = Session::start(
                    client.clone(),
                    &opts,
                    publisher.clone(),
                    &services,
                    &pools,
                    &namespaces,
                );
                tracing::info!(
                    services = s.core.service_count(),
                    pools = s.core.pool_names().len(),
                    pending = s.core.pending_count(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "leading: restored assignments and allocated"
                );
                health.set(true, "leader: assigning addresses");
                METRICS.set("routelb_leader", LEADER_HELP, &[], 1.0);
                pool_gauges(&s.core);
                session = Some(s);
            }
            (Some(_), false) => {
                tracing::info!("no longer leading; stopping writes");
                if let Some(s) = session.take() {
                    s.stop();
                }
                METRICS.set("routelb_leader", LEADER_HELP, &[], 0.0);
                health.set(
                    all_synced,
                    if all_synced {
                        "follower: caches synced"
                    } else {
                        "waiting for caches"
                    },
                );
            }
            (None, false) if all_synced && !health.ready() => {
                health.set(true, "follower: caches synced")
            }
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

/// The state of one term as leader.
struct Session {
    core: Core,
    writer: Arc<ServiceWriter>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    publisher: Publisher,
    client: Client,
    dirty_pools: BTreeSet<String>,
    identity: String,
}

impl Session {
    fn start(
        client: Client,
        opts: &Options,
        publisher: Publisher,
        services: &Store<Service>,
        pools: &Store<AddressPool>,
        namespaces: &Store<Namespace>,
    ) -> Session {
        let writer = Arc::new(ServiceWriter::new(client.clone(), services.clone()));
        let workers = (0..opts.write_concurrency.max(1))
            .map(|_| tokio::spawn(writer.clone().work()))
            .collect();
        let mut s = Session {
            core: Core::new(opts.settings.clone()),
            writer,
            workers,
            publisher,
            client,
            dirty_pools: BTreeSet::new(),
            identity: opts.identity.clone(),
        };
        let effects = s
            .core
            .restore(&services.state(), &pools.state(), &namespaces.state());
        s.carry_out(effects);
        s
    }

    fn stop(self) {
        for w in self.workers {
            w.abort();
        }
    }

    fn apply(&mut self, input: Input, services: &Store<Service>, pools: &Store<AddressPool>) {
        let effects = match input {
            Input::Service(ev) => match ev {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    self.core.service_applied(Arc::new(s))
                }
                watcher::Event::Delete(s) => self.core.service_deleted(&s),
                watcher::Event::InitDone => {
                    let present: HashSet<ServiceKey> =
                        services.state().iter().map(|s| service::key(s)).collect();
                    self.core.services_relisted(&present)
                }
                watcher::Event::Init => Vec::new(),
            },
            Input::Pool(ev) => match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    self.core.pool_applied(&p)
                }
                watcher::Event::Delete(p) => self.core.pool_deleted(&p.name_any()),
                watcher::Event::InitDone => {
                    let present: HashSet<String> =
                        pools.state().iter().map(|p| p.name_any()).collect();
                    self.core.pools_relisted(&present)
                }
                watcher::Event::Init => Vec::new(),
            },
            Input::Namespace(ev) => match ev {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                    self.core.namespace_applied(&n)
                }
                _ => Vec::new(),
            },
        };
        self.carry_out(effects);
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
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
                } => self.publisher.publish(Note {
                    regarding: object_reference(&regarding),
                    warning,
                    reason: reason.to_string(),
                    action: "Allocate".into(),
                    note,
                }),
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

    /// Writes the status of pools that changed since the last tick, when it differs.
    fn write_pool_statuses(&mut self, pools: &Store<AddressPool>) {
        for name in std::mem::take(&mut self.dirty_pools) {
            let Some(current) = pools.get(&ObjectRef::new(&name)) else {
                continue;
            };
            let Some(status) =
                self.core
                    .pool_status(&name, current.metadata.generation, current.status.as_ref())
            else {
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
            let identity = self.identity.clone();
            tokio::spawn(async move {
                let patch: json_patch::Patch = match serde_json::from_value(
                    json!([{"op": "add", "path": "/status", "value": status}]),
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(pool = %name, error = %e, "building the pool status patch");
                        return;
                    }
                };
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

fn object_reference(r: &Regarding) -> ObjectReference {
    ObjectReference {
        api_version: Some(r.api_version.to_string()),
        kind: Some(r.kind.to_string()),
        name: Some(r.name.clone()),
        namespace: r.namespace.clone(),
        uid: r.uid.clone(),
        ..ObjectReference::default()
    }
}

/// What a Service should show.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Desired {
    addresses: Vec<IpAddr>,
    pool: Option<String>,
}

#[derive(Default)]
struct Queue {
    desired: HashMap<ServiceKey, Desired>,
    order: VecDeque<ServiceKey>,
    queued: HashSet<ServiceKey>,
    in_flight: HashSet<ServiceKey>,
    /// What was last written and the resourceVersion the write produced.
    written: HashMap<ServiceKey, (Desired, u64)>,
}

/// Writes Service statuses and annotations: latest desired state per Service, one write
/// at a time per Service, several Services at once.
struct ServiceWriter {
    client: Client,
    cache: Store<Service>,
    queue: Mutex<Queue>,
    notify: Notify,
}

impl ServiceWriter {
    fn new(client: Client, cache: Store<Service>) -> ServiceWriter {
        ServiceWriter {
            client,
            cache,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(
        &self,
        key: ServiceKey,
        addresses: Vec<IpAddr>,
        pool: Option<String>,
        observed: Option<String>,
    ) {
        let desired = Desired { addresses, pool };
        let observed = observed.and_then(|rv| rv.parse::<u64>().ok());
        let mut q = self.lock();
        // A stale observation of a state we already wrote needs no second write.
        if let (Some((written, rv)), Some(obs)) = (q.written.get(&key), observed)
            && *written == desired
            && *rv >= obs
        {
            return;
        }
        q.desired.insert(key.clone(), desired);
        if !q.in_flight.contains(&key) && q.queued.insert(key.clone()) {
            q.order.push_back(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    async fn work(self: Arc<Self>) {
        loop {
            let job = {
                let mut q = self.lock();
                let key = q.order.pop_front();
                key.map(|k| {
                    q.queued.remove(&k);
                    q.in_flight.insert(k.clone());
                    let d = q.desired.remove(&k);
                    (k, d)
                })
            };
            let Some((key, desired)) = job else {
                self.notify.notified().await;
                continue;
            };
            let mut retry = false;
            if let Some(desired) = desired {
                match self.write(&key, &desired).await {
                    Ok(Some(rv)) => {
                        self.lock().written.insert(key.clone(), (desired, rv));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        METRICS.inc(
                            ERRORS,
                            ERRORS_HELP,
                            &[("component", "allocator"), ("operation", "service_status")],
                            1.0,
                        );
                        tracing::warn!(service = %key, error = %e, "writing Service status failed; retrying");
                        let mut q = self.lock();
                        q.desired.entry(key.clone()).or_insert(desired);
                        retry = true;
                    }
                }
            }
            if retry {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let mut q = self.lock();
            q.in_flight.remove(&key);
            if q.desired.contains_key(&key) && q.queued.insert(key.clone()) {
                q.order.push_back(key);
                drop(q);
                self.notify.notify_one();
            }
        }
    }

    /// Brings one Service's status and annotation to `desired`. Returns the resulting
    /// resourceVersion, or `None` when the Service is gone or already right.
    async fn write(&self, key: &ServiceKey, desired: &Desired) -> kube::Result<Option<u64>> {
        let cached = self
            .cache
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let Some(current) = cached else {
            return Ok(None);
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut rv = None;
        if service::ingress_ips(&current) != desired.addresses {
            let ingress: Vec<serde_json::Value> = desired
                .addresses
                .iter()
                .map(|a| json!({"ip": a.to_string(), "ipMode": "VIP"}))
                .collect();
            let value = if ingress.is_empty() {
                serde_json::Value::Null
            } else {
                json!(ingress)
            };
            let patch = json!({"status": {"loadBalancer": {"ingress": value}}});
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(s) => rv = s.resource_version(),
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        if service::allocated_from(&current) != desired.pool.as_deref() {
            let patch =
                json!({"metadata": {"annotations": {service::ALLOCATED_FROM: desired.pool}}});
            match api
                .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(s) => rv = s.resource_version(),
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(rv.and_then(|rv| rv.parse().ok()))
    }
}
