//! The allocator's decisions, pure: from Services, AddressPools and Namespaces as they
//! change, to effects (what each Service's status should show, Events, pool statuses
//! to refresh). The I/O layer feeds it watch events and carries the effects out.
//!
//! Work per event is proportional to the change: a Service event costs one O(log n)
//! allocation; a release or a pool change retries only the Services waiting for an
//! address, oldest first, never every Service.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube_core::ResourceExt;

use crate::crd::{
    AddressPool, AddressPoolStatus, BGPPeer, BGPPeerStatus, FamilyUsage, NodeRoutingStatus,
};
use crate::index::{Index, ObjectKey};
use crate::ipam::{Allocation, Assignment, Ipam, PoolConfig, ServiceKey, ServiceRequest};
use crate::report::Once;
pub use crate::report::Regarding;
use crate::selector::Labels;
use crate::service::{self, Handling};

/// Event reasons, as `kubectl describe` shows them.
pub mod reason {
    pub const ASSIGNED: &str = "AddressAssigned";
    pub const FAILED: &str = "AllocationFailed";
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    pub const RELEASED: &str = "AddressReleased";
    pub const DEPRECATED_LB_IP: &str = "LoadBalancerIPDeprecated";
    pub const OUTSIDE_POOL: &str = "AddressOutsidePool";
    pub const CONFLICT: &str = "AddressConflict";
    pub const NOT_IN_POOL: &str = "AddressNotInPool";
    pub const POOL_INVALID: &str = "InvalidSpec";
    pub const POOL_CONFLICT: &str = "PoolConflict";
    pub const POOL_CONFLICT_RESOLVED: &str = "PoolConflictResolved";
    pub const NO_NODE_CAN_ANSWER: &str = "NoNodeCanAnswer";
    pub const NODES_CAN_ANSWER: &str = "NodesCanAnswer";
}

/// What the I/O layer must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Make the Service's `status.loadBalancer.ingress` list `addresses` and its
    /// `allocated-from` annotation name `pool` (both cleared when empty / `None`).
    /// `observed` is the resourceVersion of the Service version that showed otherwise.
    Publish {
        key: ServiceKey,
        addresses: Vec<IpAddr>,
        pool: Option<String>,
        observed: Option<String>,
    },
    Event {
        regarding: Regarding,
        warning: bool,
        reason: &'static str,
        note: String,
    },
    /// The pool's status may have changed; the I/O layer refreshes it at a bounded rate.
    PoolStatus(String),
    /// A countable outcome for the metrics (`allocation{pool}`, `failure{reason}`).
    Count(Outcome),
}

/// Outcomes the allocator counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allocated { pool: String },
    Failed { reason: &'static str },
}

/// Allocator settings that change decisions.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Handle Services without a `loadBalancerClass`.
    pub handle_class_less: bool,
    /// Pools with more allocations than this list none in `status.used`.
    pub used_limit: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            handle_class_less: true,
            used_limit: 256,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct PoolEntry {
    error: Option<String>,
    uncovered: Vec<IpAddr>,
    /// Local pools: how many nodes can answer for its addresses, or why none can
    /// (unknown until the shell has heard from the nodes).
    reach: Option<Result<usize, String>>,
}

/// The allocator's state.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    ipam: Ipam,
    pools: BTreeMap<String, PoolEntry>,
    namespaces: HashMap<String, Labels>,
    /// Handled Services, latest version seen.
    services: HashMap<ServiceKey, Arc<Service>>,
    /// Services waiting for an address that may come, oldest first: by creation time,
    /// then by when they started waiting (creation times have one-second resolution).
    pending: BTreeSet<(i64, u64, ServiceKey)>,
    pending_since: HashMap<ServiceKey, (i64, u64)>,
    pending_seq: u64,
    /// Last failure reported per Service, so a repeated failure is not re-reported.
    last_failure: Once<ServiceKey>,
    /// Statuses cleared because they showed what the Service cannot have.
    cleared: Once<ServiceKey>,
    deprecation_reported: HashSet<ServiceKey>,
    retry: bool,
    context: Option<String>,
    effects: Vec<Effect>,
}

fn created(svc: &Service) -> i64 {
    svc.metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second())
}

fn list(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Core {
    pub fn new(settings: Settings) -> Core {
        Core {
            settings,
            ipam: Ipam::new(),
            pools: BTreeMap::new(),
            namespaces: HashMap::new(),
            services: HashMap::new(),
            pending: BTreeSet::new(),
            pending_since: HashMap::new(),
            pending_seq: 0,
            last_failure: Once::default(),
            cleared: Once::default(),
            deprecation_reported: HashSet::new(),
            retry: false,
            context: None,
            effects: Vec::new(),
        }
    }

    /// The allocation index (read-only), for status and tests.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// Services waiting for an address.
    pub fn pending(&self) -> Vec<ServiceKey> {
        self.pending.iter().map(|(_, _, k)| k.clone()).collect()
    }

    /// How many Services wait for an address.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// How many handled Services the core knows.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Names of pools known to the core.
    pub fn pool_names(&self) -> Vec<String> {
        self.pools.keys().cloned().collect()
    }

    fn emit(&mut self, e: Effect) {
        self.effects.push(e);
    }

    fn event(&mut self, regarding: Regarding, warning: bool, reason: &'static str, note: String) {
        self.emit(Effect::Event {
            regarding,
            warning,
            reason,
            note,
        });
    }

    /// Runs pending retries, then hands over the effects.
    fn finish(&mut self) -> Vec<Effect> {
        while std::mem::take(&mut self.retry) {
            for key in self.pending() {
                if let Some(svc) = self.services.get(&key).cloned() {
                    self.handle(&svc);
                }
            }
        }
        // Keep the order of effects but drop repeated pool refreshes.
        let mut seen = HashSet::new();
        let effects = std::mem::take(&mut self.effects);
        effects
            .into_iter()
            .filter(|e| match e {
                Effect::PoolStatus(p) => seen.insert(p.clone()),
                _ => true,
            })
            .collect()
    }

    // ----- startup ------------------------------------------------------------------

    /// Builds the state from a full snapshot: pools first, then every recorded
    /// assignment, and only then new allocations (oldest Services first). A restored
    /// assignment is never moved.
    pub fn restore(
        &mut self,
        services: &[Arc<Service>],
        pools: &[Arc<AddressPool>],
        namespaces: &[Arc<Namespace>],
    ) -> Vec<Effect> {
        for ns in namespaces {
            self.namespaces.insert(ns.name_any(), ns.labels().clone());
        }
        let mut pools: Vec<&Arc<AddressPool>> = pools.iter().collect();
        pools.sort_by_key(|p| {
            (
                p.creation_timestamp().map_or(i64::MAX, |t| t.0.as_second()),
                p.name_any(),
            )
        });
        for p in pools {
            self.apply_pool(p);
        }
        let mut ordered: Vec<&Arc<Service>> = services.iter().collect();
        ordered.sort_by_key(|s| (created(s), service::key(s)));
        for svc in &ordered {
            if service::handling(svc, self.settings.handle_class_less) != Handling::Handled {
                continue;
            }
            let key = service::key(svc);
            self.services.insert(key.clone(), (*svc).clone());
            let ips = service::ingress_ips(svc);
            if ips.is_empty() {
                continue;
            }
            // Ours when annotated, or when the addresses lie in our pools (an assignment
            // whose annotation write was interrupted, or one made by MetalLB and co.
            // before a migration): adopting them keeps addresses from reshuffling.
            let hint = match service::allocated_from(svc) {
                Some(p) => p.to_string(),
                None => match ips
                    .iter()
                    .map(|a| self.ipam.pool_containing(*a))
                    .collect::<Option<Vec<_>>>()
                {
                    Some(found) if !found.is_empty() => found[0].to_string(),
                    _ => continue,
                },
            };
            let request = self.request_for_restore(svc);
            // A status that cannot be restored (another Service holds the address, the
            // pool is gone) is sorted out by `handle`, which says so.
            let _ = self.ipam.restore(&request, &hint, &ips);
        }
        for svc in &ordered {
            match service::handling(svc, self.settings.handle_class_less) {
                Handling::Handled => self.handle(svc),
                _ => self.unhandled(svc),
            }
        }
        for p in self.pool_names() {
            self.emit(Effect::PoolStatus(p));
        }
        self.finish()
    }

    /// The request used to restore: annotations as they are, or without the broken ones.
    fn request_for_restore(&self, svc: &Service) -> ServiceRequest {
        let labels = self.ns_labels(svc);
        match service::parse(svc, &labels) {
            Ok(p) => p.request,
            Err(_) => {
                let mut bare = (*svc).clone();
                bare.metadata.annotations = None;
                if let Some(spec) = bare.spec.as_mut() {
                    spec.load_balancer_ip = None;
                }
                service::parse(&bare, &labels)
                    .map(|p| p.request)
                    .unwrap_or_else(|_| ServiceRequest {
                        key: service::key(svc),
                        ..ServiceRequest::default()
                    })
            }
        }
    }

    fn ns_labels(&self, svc: &Service) -> Labels {
        svc.namespace()
            .and_then(|ns| self.namespaces.get(&ns).cloned())
            .unwrap_or_default()
    }

    // ----- Services -------------------------------------------------------------------

    /// A Service was created or changed.
    pub fn service_applied(&mut self, svc: Arc<Service>) -> Vec<Effect> {
        match service::handling(&svc, self.settings.handle_class_less) {
            Handling::Handled => {
                self.services.insert(service::key(&svc), svc.clone());
                self.handle(&svc);
            }
            _ => {
                self.services.remove(&service::key(&svc));
                self.unhandled(&svc);
            }
        }
        self.finish()
    }

    /// A Service was deleted.
    pub fn service_deleted(&mut self, key: &ServiceKey) -> Vec<Effect> {
        self.drop_service(key);
        self.finish()
    }

    /// Forgets a Service and frees what it held; returns what was released.
    fn drop_service(&mut self, key: &ServiceKey) -> Option<Assignment> {
        self.forget(key);
        let released = self.ipam.release(key);
        if let Some(a) = &released {
            self.emit(Effect::PoolStatus(a.pool.clone()));
            self.retry = true;
        }
        released
    }

    fn forget(&mut self, key: &ServiceKey) {
        self.services.remove(key);
        self.unpend(key);
        self.last_failure.clear(key);
        self.cleared.clear(key);
        self.deprecation_reported.remove(key);
    }

    fn pend(&mut self, svc: &Service) {
        let key = service::key(svc);
        if !self.pending_since.contains_key(&key) {
            let t = created(svc);
            self.pending_seq += 1;
            self.pending_since
                .insert(key.clone(), (t, self.pending_seq));
            self.pending.insert((t, self.pending_seq, key));
        }
    }

    fn unpend(&mut self, key: &ServiceKey) {
        if let Some((t, seq)) = self.pending_since.remove(key) {
            self.pending.remove(&(t, seq, key.clone()));
        }
    }

    /// A Service routelb does not (or no longer) handle: release what it held.
    fn unhandled(&mut self, svc: &Service) {
        let released = self.drop_service(&service::key(svc));
        let marked = service::allocated_from(svc).is_some();
        if let Some(a) = &released {
            let why = match service::handling(svc, self.settings.handle_class_less) {
                Handling::NotLoadBalancer => {
                    "the Service is no longer of type LoadBalancer".to_string()
                }
                Handling::OtherClass(c) => format!("the Service's loadBalancerClass is {c}"),
                _ => "routelb ignores Services without a loadBalancerClass".to_string(),
            };
            self.event(
                Regarding::service(svc),
                false,
                reason::RELEASED,
                format!(
                    "Released {} to AddressPool {}: {why}",
                    list(&a.addresses),
                    a.pool
                ),
            );
        }
        if released.is_some() || marked {
            self.publish(svc, &[], None);
        }
    }

    /// Emits a Publish effect when the Service does not already show this.
    fn publish(&mut self, svc: &Service, addresses: &[IpAddr], pool: Option<&str>) {
        let shown = service::ingress_ips(svc);
        let annotated = service::allocated_from(svc);
        let mut wanted = addresses.to_vec();
        wanted.sort();
        if shown == wanted && annotated == pool {
            return;
        }
        self.emit(Effect::Publish {
            key: service::key(svc),
            addresses: wanted,
            pool: pool.map(str::to_string),
            observed: svc.resource_version(),
        });
    }

    fn handle(&mut self, svc: &Service) {
        let key = service::key(svc);
        let parsed = match service::parse(svc, &self.ns_labels(svc)) {
            Ok(p) => p,
            Err(e) => {
                self.unpend(&key);
                self.report_failure(svc, reason::INVALID_ANNOTATION, e.to_string(), None);
                if let Some(a) = self.ipam.assignment(&key) {
                    self.publish(svc, &a.addresses, Some(&a.pool));
                }
                return;
            }
        };
        if parsed.uses_load_balancer_ip && self.deprecation_reported.insert(key.clone()) {
            self.event(
                Regarding::service(svc),
                true,
                reason::DEPRECATED_LB_IP,
                format!(
                    "spec.loadBalancerIP is deprecated; use the annotation {}: \"{}\"",
                    service::ADDRESSES,
                    list(&parsed.request.addresses)
                ),
            );
        }
        let before = self.ipam.assignment(&key);
        if before.is_none() {
            // The Service shows addresses routelb has not assigned to it: another load
            // balancer's, an interrupted write, or someone's edit.
            let shown = service::ingress_ips(svc);
            if shown.is_empty() {
                // A cleared status took effect: the next such edit is news again.
                self.cleared.clear(&key);
            } else if self.adopt_or_hold(svc, &parsed.request, &shown) {
                return;
            }
        }
        match self.ipam.allocate(&parsed.request) {
            Ok(allocation) => {
                self.unpend(&key);
                self.last_failure.clear(&key);
                if allocation.changed {
                    self.report_assignment(
                        svc,
                        &allocation,
                        before.as_ref().map(|b| b.pool.as_str()),
                    );
                }
                let a = allocation.assignment;
                self.publish(svc, &a.addresses, Some(&a.pool));
            }
            Err(e) => {
                let note = match &before {
                    Some(b) if self.ipam.pool(&b.pool).is_none() => format!(
                        "{e}; keeping {} from AddressPool {}, which was deleted: the Service keeps the address, announced, until it is deleted or asks for another pool (recreate the pool to manage it again)",
                        list(&b.addresses),
                        b.pool
                    ),
                    Some(b) => format!(
                        "{e}; keeping {} from AddressPool {}",
                        list(&b.addresses),
                        b.pool
                    ),
                    None => e.to_string(),
                };
                self.report_failure(svc, reason::FAILED, note, Some(e.reason()));
                if e.may_clear() {
                    self.pend(svc);
                } else {
                    self.unpend(&key);
                }
                if let Some(b) = before {
                    self.publish(svc, &b.addresses, Some(&b.pool));
                }
            }
        }
    }

    /// A Service showing addresses routelb did not assign to it (another load balancer's,
    /// from before a migration; an interrupted write; an edit): adopted when one pool
    /// covers them and nobody holds them; kept, reported and retried when pools change
    /// when no pool covers them (never replaced, but never announced: routelb's
    /// annotation, if any, is removed). Returns false when they cannot be adopted because
    /// another Service holds them (or the pool refuses them): then the status is cleared,
    /// with an Event, and the Service allocated afresh. An address is never shown on two
    /// Services.
    fn adopt_or_hold(&mut self, svc: &Service, request: &ServiceRequest, shown: &[IpAddr]) -> bool {
        let key = service::key(svc);
        let pools: Vec<Option<String>> = shown
            .iter()
            .map(|a| self.ipam.pool_containing(*a).map(str::to_string))
            .collect();
        if let Some(Some(pool)) = pools.first().cloned()
            && pools.iter().all(|p| p.as_deref() == Some(pool.as_str()))
        {
            if let Err(e) = self.ipam.restore(request, &pool, shown) {
                let note = format!(
                    "status.loadBalancer.ingress showed {}, which routelb cannot give this Service ({e}); cleared it",
                    list(shown)
                );
                // Retries see the same (cached) version until the write echoes back.
                if self.cleared.news(key.clone(), &note) {
                    self.event(Regarding::service(svc), true, reason::CONFLICT, note);
                    self.publish(svc, &[], None);
                }
                return false;
            }
            self.unpend(&key);
            self.last_failure.clear(&key);
            self.event(
                Regarding::service(svc),
                false,
                reason::ASSIGNED,
                format!(
                    "Adopted {} (already in the Service's status) into AddressPool {pool}",
                    list(shown)
                ),
            );
            self.emit(Effect::Count(Outcome::Allocated { pool: pool.clone() }));
            self.emit(Effect::PoolStatus(pool.clone()));
            self.publish(svc, shown, Some(&pool));
            return true;
        }
        let outside: Vec<IpAddr> = shown
            .iter()
            .zip(&pools)
            .filter(|(_, p)| p.is_none())
            .map(|(a, _)| *a)
            .collect();
        let note = if outside.is_empty() {
            format!(
                "status.loadBalancer.ingress shows {} from different AddressPools; it is kept and nothing is allocated. Put them in one pool to adopt them, or clear the Service's status to get new addresses",
                list(shown)
            )
        } else {
            format!(
                "status.loadBalancer.ingress shows {}, in no AddressPool and not assigned by routelb (another load balancer's?); it is kept and nothing is allocated. Add an AddressPool covering it to adopt it, or clear the Service's status to get a new address",
                list(&outside)
            )
        };
        self.report_failure(svc, reason::NOT_IN_POOL, note, Some("address_not_in_pool"));
        self.pend(svc);
        // Not routelb's: never announced as if it were.
        if service::allocated_from(svc).is_some() {
            self.publish(svc, shown, None);
        }
        true
    }

    /// Reports a Service's problem once per distinct note: a Warning Event and, when
    /// `count` names a reason, the failures metric.
    fn report_failure(
        &mut self,
        svc: &Service,
        reason: &'static str,
        note: String,
        count: Option<&'static str>,
    ) {
        if !self.last_failure.news(service::key(svc), &note) {
            return;
        }
        self.event(Regarding::service(svc), true, reason, note);
        if let Some(reason) = count {
            self.emit(Effect::Count(Outcome::Failed { reason }));
        }
    }

    fn report_assignment(
        &mut self,
        svc: &Service,
        allocation: &Allocation,
        old_pool: Option<&str>,
    ) {
        let a = &allocation.assignment;
        let mut note = String::new();
        if let Some(ctx) = &self.context {
            let _ = write!(note, "{ctx}; ");
        }
        let _ = write!(
            note,
            "Assigned {} from AddressPool {}",
            list(&a.addresses),
            a.pool
        );
        if !allocation.released.is_empty() {
            let _ = write!(note, " (released {})", list(&allocation.released));
            self.retry = true;
        }
        self.event(Regarding::service(svc), false, reason::ASSIGNED, note);
        self.emit(Effect::Count(Outcome::Allocated {
            pool: a.pool.clone(),
        }));
        self.emit(Effect::PoolStatus(a.pool.clone()));
        if let Some(old) = old_pool.filter(|o| *o != a.pool) {
            self.emit(Effect::PoolStatus(old.to_string()));
        }
    }

    // ----- pools --------------------------------------------------------------------

    /// An AddressPool was created or changed.
    pub fn pool_applied(&mut self, pool: &AddressPool) -> Vec<Effect> {
        self.apply_pool(pool);
        self.finish()
    }

    fn apply_pool(&mut self, pool: &AddressPool) {
        let name = pool.name_any();
        let created = pool.creation_timestamp().map(|t| t.0.as_second());
        let entry = self.pools.entry(name.clone()).or_default();
        match PoolConfig::from_spec(&name, created, &pool.spec) {
            Err(e) => {
                let note = format!("{e}; the last valid version stays in use");
                if entry.error.as_ref() != Some(&note) {
                    entry.error = Some(note.clone());
                    self.event(Regarding::pool(&name), true, reason::POOL_INVALID, note);
                }
            }
            Ok(cfg) => {
                entry.error = None;
                let update = self.ipam.upsert_pool(cfg);
                self.report_conflicts(&update.conflicts);
                let newly: Vec<(IpAddr, Vec<ServiceKey>)> = {
                    let entry = self.pools.get(&name).expect("inserted");
                    update
                        .uncovered
                        .iter()
                        .filter(|(a, _)| !entry.uncovered.contains(a))
                        .cloned()
                        .collect()
                };
                for (addr, holders) in &newly {
                    for h in holders {
                        self.event(
                            Regarding::service_key(h),
                            true,
                            reason::OUTSIDE_POOL,
                            format!("AddressPool {name} no longer contains {addr}; the Service keeps it (edit the pool to cover it again, or delete the Service to release it)"),
                        );
                    }
                }
                self.pools.get_mut(&name).expect("inserted").uncovered =
                    update.uncovered.iter().map(|(a, _)| *a).collect();
                self.retry = true;
            }
        }
        self.emit(Effect::PoolStatus(name));
    }

    fn report_conflicts(&mut self, conflicts: &[(String, Option<String>)]) {
        for (pool, with) in conflicts {
            match with {
                Some(older) => self.event(
                    Regarding::pool(pool),
                    true,
                    reason::POOL_CONFLICT,
                    format!("overlaps the older AddressPool {older}; not used until the overlap is removed"),
                ),
                None => self.event(
                    Regarding::pool(pool),
                    false,
                    reason::POOL_CONFLICT_RESOLVED,
                    "no longer overlaps an older pool; in use again".into(),
                ),
            }
            self.emit(Effect::PoolStatus(pool.clone()));
        }
    }

    /// An AddressPool was deleted: its Services are re-allocated from the remaining pools
    /// (keeping their address where another pool covers it).
    pub fn pool_deleted(&mut self, name: &str) -> Vec<Effect> {
        self.pools.remove(name);
        let (affected, conflicts) = self.ipam.remove_pool(name);
        self.report_conflicts(&conflicts);
        self.context = Some(format!("AddressPool {name} was deleted"));
        for key in affected {
            if let Some(svc) = self.services.get(&key).cloned() {
                self.handle(&svc);
            }
        }
        self.context = None;
        self.retry = true;
        self.finish()
    }

    /// Whether nodes can answer (ARP/NDP) for a local pool: `Ok(nodes)` or `Err(why)`.
    /// While none can, Services that do not name the pool are not given its addresses
    /// (assignments stay); when nodes can again, waiting Services are retried.
    pub fn pool_reach(&mut self, name: &str, reach: Result<usize, String>) -> Vec<Effect> {
        let Some(entry) = self.pools.get_mut(name) else {
            return Vec::new();
        };
        if entry.reach.as_ref() == Some(&reach) {
            return Vec::new();
        }
        let was = entry.reach.replace(reach.clone());
        self.ipam
            .set_unanswerable(name, reach.as_ref().err().map(String::as_str));
        match (&was, &reach) {
            (Some(Err(old)), Err(why)) if old == why => {}
            (_, Err(why)) => self.event(
                Regarding::pool(name),
                true,
                reason::NO_NODE_CAN_ANSWER,
                format!("{why}; Services that do not name this pool get addresses elsewhere until a node can"),
            ),
            (Some(Err(_)), Ok(n)) => {
                self.event(
                    Regarding::pool(name),
                    false,
                    reason::NODES_CAN_ANSWER,
                    format!("{n} node(s) can answer for its addresses again"),
                );
                self.retry = true;
            }
            (_, Ok(_)) => {}
        }
        self.emit(Effect::PoolStatus(name.to_string()));
        self.finish()
    }

    /// A Namespace was created or its labels changed.
    pub fn namespace_applied(&mut self, ns: &Namespace) -> Vec<Effect> {
        let (name, labels) = (ns.name_any(), ns.labels().clone());
        if self.namespaces.get(&name) != Some(&labels) {
            self.retry = self.pending.iter().any(|(_, _, k)| k.namespace == name);
            self.namespaces.insert(name, labels);
        }
        self.finish()
    }

    // ----- pool status ----------------------------------------------------------------

    /// The status a pool should have at `now`; `current` keeps condition transition
    /// times.
    pub fn pool_status(
        &self,
        name: &str,
        generation: Option<i64>,
        current: Option<&AddressPoolStatus>,
        now: Timestamp,
    ) -> Option<AddressPoolStatus> {
        let entry = self.pools.get(name)?;
        let usage = self.ipam.pool_usage(name);
        let clamp = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        let family = |u: Option<crate::ipam::FamilyUsage>| {
            u.map(|u| FamilyUsage {
                pool_size: clamp(u.size),
                allocated: clamp(u.allocated),
                available: clamp(u.available),
                first_ip: u.first.to_string(),
                last_ip: u.last.to_string(),
            })
        };
        let conflict = usage.as_ref().and_then(|u| u.conflict.clone());
        let uncovered = usage
            .as_ref()
            .map(|u| u.uncovered.clone())
            .unwrap_or_default();
        let mut conditions = Conditions {
            generation,
            current: current.map_or(&[], |c| c.conditions.as_slice()),
            now,
            list: Vec::new(),
        };
        let (ready, reason, message) = readiness(
            entry.error.as_ref(),
            self.ipam.pool(name),
            conflict.as_ref(),
        );
        conditions.set("Ready", ready, reason, &message);
        match &conflict {
            Some(older) => conditions.set(
                "Conflict",
                true,
                "Overlap",
                &format!("overlaps the older AddressPool {older}"),
            ),
            None => conditions.set(
                "Conflict",
                false,
                "NoOverlap",
                "no overlap with older pools",
            ),
        }
        if !uncovered.is_empty() {
            conditions.set(
                "Uncovered",
                true,
                "AddressesOutsidePool",
                &format!(
                    "assigned addresses outside spec.addresses, kept until released: {}",
                    list(&uncovered)
                ),
            );
        }
        match &entry.reach {
            Some(Ok(n)) => conditions.set(
                "Answerable",
                true,
                reason::NODES_CAN_ANSWER,
                &format!("{n} node(s) can answer ARP/NDP for its addresses"),
            ),
            Some(Err(why)) => conditions.set("Answerable", false, reason::NO_NODE_CAN_ANSWER, why),
            None => {}
        }
        let (used, truncated) = self.ipam.pool_used(name, self.settings.used_limit);
        let used = if truncated {
            BTreeMap::new()
        } else {
            used.into_iter()
                .map(|(a, holders)| {
                    let holders: Vec<String> = holders.iter().map(ToString::to_string).collect();
                    (a.to_string(), holders.join(","))
                })
                .collect()
        };
        Some(AddressPoolStatus {
            ipv4: family(usage.as_ref().and_then(|u| u.ipv4.clone())),
            ipv6: family(usage.as_ref().and_then(|u| u.ipv6.clone())),
            used,
            used_truncated: truncated,
            conditions: conditions.list,
            observed_generation: generation,
        })
    }
}

/// A pool's `Ready` condition: (status, reason, message).
fn readiness(
    error: Option<&String>,
    cfg: Option<&PoolConfig>,
    conflict: Option<&String>,
) -> (bool, &'static str, String) {
    match (error, cfg, conflict) {
        (Some(e), None, _) => (false, "InvalidSpec", e.clone()),
        (_, _, Some(older)) => (
            false,
            "Conflict",
            format!("overlaps the older AddressPool {older}"),
        ),
        (Some(e), Some(_), None) => (true, "InvalidSpec", e.clone()),
        (None, Some(c), None) if c.disabled => (
            false,
            "Disabled",
            "disabled: no new allocations; existing ones are kept".into(),
        ),
        (None, Some(_), None) => (true, "Ready", "assigning addresses".into()),
        (None, None, None) => (false, "Unknown", "not loaded".into()),
    }
}

/// Conditions being built, keeping each one's transition time when its status did not
/// change.
pub(crate) struct Conditions<'a> {
    generation: Option<i64>,
    current: &'a [Condition],
    now: Timestamp,
    list: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    /// Conditions for an object at `generation`, keeping transition times from `current`.
    pub(crate) fn new(generation: Option<i64>, current: &'a [Condition], now: Timestamp) -> Self {
        Conditions {
            generation,
            current,
            now,
            list: Vec::new(),
        }
    }

    pub(crate) fn into_list(self) -> Vec<Condition> {
        self.list
    }

    pub(crate) fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        let previous = self.current.iter().find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(self.now),
        };
        self.list.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: self.generation,
            last_transition_time,
        });
    }
}

impl Index<Service> for Core {
    type Out = Effect;
    fn apply(&mut self, svc: Arc<Service>) -> Vec<Effect> {
        self.service_applied(svc)
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<Effect> {
        self.service_deleted(&key.into())
    }
}

impl Index<AddressPool> for Core {
    type Out = Effect;
    fn apply(&mut self, pool: Arc<AddressPool>) -> Vec<Effect> {
        self.pool_applied(&pool)
    }
    fn delete(&mut self, key: &ObjectKey) -> Vec<Effect> {
        self.pool_deleted(&key.name)
    }
}

/// A deleted Namespace takes its Services with it; their deletions free the addresses.
impl Index<Namespace> for Core {
    type Out = Effect;
    fn apply(&mut self, ns: Arc<Namespace>) -> Vec<Effect> {
        self.namespace_applied(&ns)
    }
    fn delete(&mut self, _: &ObjectKey) -> Vec<Effect> {
        Vec::new()
    }
}

/// The status a BGPPeer should have at `now`: whether the allocator finds it usable
/// (`Valid`), from the checks that do not depend on a node (a node may still leave it
/// out, for its password or its own address: the agents say so in Events), and whether
/// the nodes that peer with it have the session Established, from their reports.
pub fn peer_status(
    peer: &BGPPeer,
    reports: &[Arc<NodeRoutingStatus>],
    now: Timestamp,
) -> BGPPeerStatus {
    let generation = peer.metadata.generation;
    let current = peer
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    let mut conditions = Conditions::new(generation, current, now);
    match crate::routing::context::check_peer(&peer.spec) {
        Ok(_) => conditions.set("Valid", true, "Valid", "rendered for the nodes it selects"),
        Err(why) => conditions.set(
            "Valid",
            false,
            "Invalid",
            &format!("{why}; nodes keep its last valid version, or leave it out"),
        ),
    }
    let mut status = BGPPeerStatus {
        conditions: conditions.into_list(),
        observed_generation: generation,
        ..BGPPeerStatus::default()
    };
    crate::status::peer_session_status(peer, reports, &mut status, now);
    status
}

/// Whether two statuses differ in anything but condition transition times.
pub fn status_differs(a: &AddressPoolStatus, b: &AddressPoolStatus) -> bool {
    differs_but_times(a, b, |s| &mut s.conditions)
}

/// Whether two statuses differ in anything but the transition times of the conditions
/// `conditions` picks out of them.
pub fn differs_but_times<T: Clone + PartialEq>(
    a: &T,
    b: &T,
    conditions: impl Fn(&mut T) -> &mut Vec<Condition>,
) -> bool {
    let strip = |s: &T| {
        let mut s = s.clone();
        for c in conditions(&mut s) {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn svc(name: &str, extra: Value) -> Arc<Service> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "10",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}
        });
        json_patch::merge(&mut v, &extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn pool(name: &str, addrs: &[&str]) -> Arc<AddressPool> {
        Arc::new(AddressPool::new(
            name,
            crate::crd::AddressPoolSpec {
                addresses: addrs.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        ))
    }

    fn published(effects: &[Effect]) -> Vec<(String, Vec<String>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { key, addresses, .. } => Some((
                    key.name.clone(),
                    addresses.iter().map(ToString::to_string).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    fn reasons(effects: &[Effect]) -> Vec<&'static str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Event { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn shown(addr: &str) -> Value {
        json!({"metadata": {"annotations": {"routelb.io/allocated-from": "p"}}, "status": {"loadBalancer": {"ingress": [{"ip": addr}]}}})
    }

    #[test]
    fn a_local_pool_no_node_can_answer_serves_only_services_naming_it() {
        let mut core = Core::new(Settings::default());
        let mut lan = (*pool("lan", &["192.0.2.200-192.0.2.203"])).clone();
        lan.spec.mode = crate::crd::PoolMode::Local;
        core.restore(&[svc("a", json!({}))], &[Arc::new(lan)], &[]);
        let held = core.ipam().assignment(&ServiceKey::new("ns", "a")).unwrap();
        // No node can answer: said once, the assignment stays.
        let why = "no node can answer for its addresses: node-1 has no LAN interface with a subnet holding 192.0.2.200";
        let down = core.pool_reach("lan", Err(why.into()));
        assert_eq!(reasons(&down), ["NoNodeCanAnswer"]);
        assert!(published(&down).is_empty(), "nothing moves: {down:?}");
        assert!(core.pool_reach("lan", Err(why.into())).is_empty());
        let status = core
            .pool_status("lan", None, None, Timestamp::UNIX_EPOCH)
            .unwrap();
        let answerable = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Answerable")
            .unwrap();
        assert_eq!(
            (answerable.status.as_str(), answerable.message.as_str()),
            ("False", why)
        );
        // A Service that names no pool is not given an address nobody answers for ...
        let b = core.service_applied(svc("b", json!({})));
        assert!(published(&b).is_empty());
        let failed = b.iter().find_map(|e| match e {
            Effect::Event { note, .. } => Some(note.clone()),
            _ => None,
        });
        assert!(failed.unwrap().contains("no node can answer"), "{b:?}");
        // ... one that names it is.
        let named = core.service_applied(svc(
            "c",
            json!({"metadata": {"annotations": {"routelb.io/pool": "lan"}}}),
        ));
        assert_eq!(published(&named).len(), 1, "{named:?}");
        // Nodes can answer again: the waiting Service gets its address.
        let up = core.pool_reach("lan", Ok(2));
        assert!(reasons(&up).contains(&"NodesCanAnswer"), "{up:?}");
        assert_eq!(
            published(&up)
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            core.ipam().assignment(&ServiceKey::new("ns", "a")).unwrap(),
            held
        );
    }

    #[test]
    fn restore_keeps_recorded_addresses_and_only_publishes_new_ones() {
        let mut core = Core::new(Settings::default());
        let services = [svc("old", shown("192.0.2.2")), svc("new", json!({}))];
        let effects = core.restore(&services, &[pool("p", &["192.0.2.0/30"])], &[]);
        assert_eq!(
            published(&effects),
            [("new".to_string(), vec!["192.0.2.0".to_string()])]
        );
        assert_eq!(reasons(&effects), ["AddressAssigned"]);
        assert!(effects.contains(&Effect::PoolStatus("p".into())));
        // The echo of our own write changes nothing.
        let echo = core.service_applied(svc("new", shown("192.0.2.0")));
        assert!(echo.is_empty(), "{echo:?}");
    }

    #[test]
    fn a_release_serves_the_waiting_service_and_failures_are_reported_once() {
        let mut core = Core::new(Settings::default());
        core.restore(&[svc("a", json!({}))], &[pool("p", &["192.0.2.1"])], &[]);
        let first = core.service_applied(svc("b", json!({})));
        assert_eq!(reasons(&first), ["AllocationFailed"]);
        let again = core.service_applied(svc("b", json!({"metadata": {"labels": {"x": "y"}}})));
        assert!(
            reasons(&again).is_empty(),
            "the same failure is not re-reported"
        );
        assert_eq!(core.pending(), [ServiceKey::new("ns", "b")]);
        let released = core.service_deleted(&ServiceKey::new("ns", "a"));
        assert_eq!(
            published(&released),
            [("b".to_string(), vec!["192.0.2.1".to_string()])]
        );
        assert!(core.pending().is_empty());
    }

    #[test]
    fn foreign_addresses_are_kept_until_a_pool_covers_them_then_adopted() {
        let mut core = Core::new(Settings::default());
        let foreign = || {
            svc(
                "m",
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}),
            )
        };
        let effects = core.restore(&[foreign()], &[pool("p", &["192.0.2.0/30"])], &[]);
        assert!(
            published(&effects).is_empty(),
            "never replaced: {effects:?}"
        );
        assert_eq!(reasons(&effects), ["AddressNotInPool"]);
        assert!(core.service_applied(foreign()).is_empty(), "reported once");
        // Other Services still allocate meanwhile.
        let other = core.service_applied(svc("n", json!({})));
        assert_eq!(
            published(&other),
            [("n".to_string(), vec!["192.0.2.0".to_string()])]
        );
        // A pool covering it adopts it, at the same address.
        let adopted = core.pool_applied(&pool("migrated", &["198.51.100.0/24"]));
        assert_eq!(
            published(&adopted),
            [("m".to_string(), vec!["198.51.100.7".to_string()])]
        );
        assert_eq!(reasons(&adopted), ["AddressAssigned"]);
        assert!(core.pending().is_empty());
        assert_eq!(
            core.ipam()
                .assignment(&ServiceKey::new("ns", "m"))
                .unwrap()
                .pool,
            "migrated"
        );
    }

    #[test]
    fn leaving_routelb_releases_and_clears() {
        let mut core = Core::new(Settings::default());
        core.restore(
            &[svc("a", shown("192.0.2.1"))],
            &[pool("p", &["192.0.2.1"])],
            &[],
        );
        let effects = core.service_applied(svc("a", json!({"spec": {"type": "ClusterIP"}, "metadata": {"annotations": {"routelb.io/allocated-from": "p"}}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}})));
        assert_eq!(reasons(&effects), ["AddressReleased"]);
        assert_eq!(published(&effects), [("a".to_string(), vec![])]);
    }

    #[test]
    fn a_status_showing_another_services_address_is_cleared_with_an_event() {
        let forged = |annotated: bool| {
            let mut v = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
            if annotated {
                v["metadata"] = json!({"annotations": {"routelb.io/allocated-from": "p"}});
            }
            svc("sb", v)
        };
        for annotated in [false, true] {
            // A running leader sees the edit.
            let mut core = Core::new(Settings::default());
            core.restore(
                &[svc("sa", shown("192.0.2.1")), svc("sb", json!({}))],
                &[pool("p", &["192.0.2.1"])],
                &[],
            );
            let effects = core.service_applied(forged(annotated));
            assert_eq!(
                published(&effects),
                [("sb".to_string(), vec![])],
                "{effects:?}"
            );
            assert!(
                reasons(&effects).contains(&"AddressConflict"),
                "{effects:?}"
            );
            assert!(core.pending().contains(&ServiceKey::new("ns", "sb")));
            // A leader restarting on it does the same, and sa keeps its address.
            let mut core = Core::new(Settings::default());
            let effects = core.restore(
                &[svc("sa", shown("192.0.2.1")), forged(annotated)],
                &[pool("p", &["192.0.2.1"])],
                &[],
            );
            assert_eq!(
                published(&effects),
                [("sb".to_string(), vec![])],
                "{effects:?}"
            );
            assert_eq!(
                reasons(&effects)
                    .iter()
                    .filter(|r| **r == "AddressConflict")
                    .count(),
                1,
                "said once: {effects:?}"
            );
            assert_eq!(
                core.ipam()
                    .assignment(&ServiceKey::new("ns", "sa"))
                    .unwrap()
                    .addresses,
                [IpAddr::from([192, 0, 2, 1])]
            );
        }
    }

    #[test]
    fn routelbs_annotation_on_an_address_it_did_not_assign_is_removed() {
        let mut core = Core::new(Settings::default());
        core.restore(&[], &[pool("p", &["192.0.2.0/30"])], &[]);
        let effects = core.service_applied(svc(
            "m",
            json!({"metadata": {"annotations": {"routelb.io/allocated-from": "p"}}, "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}),
        ));
        let publish = effects
            .iter()
            .find_map(|e| match e {
                Effect::Publish {
                    addresses, pool, ..
                } => Some((addresses.clone(), pool.clone())),
                _ => None,
            })
            .expect("a publish");
        assert_eq!(publish, (vec![IpAddr::from([198, 51, 100, 7])], None));
    }

    #[test]
    fn a_service_pinned_to_a_deleted_pool_keeps_its_address_and_is_told_why() {
        let mut core = Core::new(Settings::default());
        let pinned = |extra: Value| {
            let mut v = json!({"metadata": {"annotations": {"routelb.io/pool": "p", "routelb.io/allocated-from": "p"}}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
            json_patch::merge(&mut v, &extra);
            svc("s", v)
        };
        core.restore(&[pinned(json!({}))], &[pool("p", &["192.0.2.0/30"])], &[]);
        let effects = core.pool_deleted("p");
        assert!(
            published(&effects).is_empty(),
            "never taken away: {effects:?}"
        );
        let note = effects
            .iter()
            .find_map(|e| match e {
                Effect::Event {
                    reason: "AllocationFailed",
                    note,
                    ..
                } => Some(note.clone()),
                _ => None,
            })
            .expect("an Event");
        assert!(note.contains("which was deleted"), "{note}");
        // Recreated, the pool manages it again, at the same address.
        core.pool_applied(&pool("p", &["192.0.2.0/30"]));
        let again = core.service_applied(pinned(json!({"metadata": {"labels": {"x": "y"}}})));
        assert!(published(&again).is_empty(), "{again:?}");
        assert_eq!(
            core.ipam()
                .assignment(&ServiceKey::new("ns", "s"))
                .unwrap()
                .addresses,
            [IpAddr::from([192, 0, 2, 1])]
        );
    }
}
