//! The IPAM core: pools, requests and the allocation index. Pure: no kube client, no I/O.
//!
//! [`Ipam`] owns every assignment. Its invariants:
//! - an address is held by one Service, or by several that legally share it (same
//!   sharing key, no common protocol/port, compatible traffic policy);
//! - active pools (those not in conflict) never overlap, and each keeps a [`FreeSet`] per
//!   family equal to its usable addresses minus every allocated address;
//! - an assignment never moves unless its own Service's request changes or its pool is
//!   deleted: pool edits, selector changes, `disabled` and restarts leave it in place.
//!
//! Allocation, requests and release are O(log n) in the number of allocations (plus the
//! number of pools, which is small); nothing scans a pool's addresses.

mod error;
mod freeset;
mod pool;
pub mod range;
mod request;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

pub use error::{AllocError, Ineligible, RestoreError, ShareConflict};
pub use freeset::FreeSet;
pub use pool::{PoolConfig, PoolConfigError};
use range::{Family, addr_value};
pub use request::{FamilyPolicy, PortKey, ServiceKey, ServiceRequest, ShareSpec, TrafficPolicy};

/// A Service's addresses and the pool they came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assignment {
    pub pool: String,
    /// At most one address per family, IPv4 first.
    pub addresses: Vec<IpAddr>,
}

/// Result of [`Ipam::allocate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub assignment: Assignment,
    /// False when the Service already had exactly this assignment.
    pub changed: bool,
    /// Addresses the Service held before and no longer holds.
    pub released: Vec<IpAddr>,
}

/// Result of [`Ipam::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub assignment: Assignment,
    /// Addresses the recorded pool does not contain (any more); kept, never moved.
    pub uncovered: Vec<IpAddr>,
}

/// Result of [`Ipam::upsert_pool`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolUpdate {
    /// Pools whose conflict state changed: (pool, the older pool it overlaps, if any).
    pub conflicts: Vec<(String, Option<String>)>,
    /// Allocated addresses of this pool that its ranges no longer cover.
    pub uncovered: Vec<(IpAddr, Vec<ServiceKey>)>,
}

/// Usage of one family of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyUsage {
    pub size: u128,
    pub allocated: u128,
    pub available: u128,
    pub first: IpAddr,
    pub last: IpAddr,
}

/// Usage of a pool, for its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub ipv4: Option<FamilyUsage>,
    pub ipv6: Option<FamilyUsage>,
    /// The older pool this one overlaps; a pool in conflict is not used.
    pub conflict: Option<String>,
    /// Addresses attributed to this pool that its ranges no longer cover.
    pub uncovered: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
struct PoolState {
    cfg: PoolConfig,
    name: Arc<str>,
    conflict: Option<Arc<str>>,
    /// Why no node can announce the pool's addresses now (local pools): it then serves
    /// only Services that name it.
    unanswerable: Option<Arc<str>>,
    /// Free indexes per family; present only while the pool is active.
    free: [Option<FreeSet>; 2],
}

impl PoolState {
    fn active(&self) -> bool {
        self.conflict.is_none()
    }
}

#[derive(Clone, Debug)]
struct AddrEntry {
    key: Option<Arc<str>>,
    /// Sorted.
    holders: Vec<ServiceKey>,
}

#[derive(Clone, Debug)]
struct ServiceEntry {
    pool: Arc<str>,
    addrs: Vec<IpAddr>,
    share: ShareSpec,
}

/// One family's choice inside a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    Fresh(IpAddr),
    Shared(IpAddr),
}

impl Pick {
    fn addr(self) -> IpAddr {
        match self {
            Pick::Fresh(a) | Pick::Shared(a) => a,
        }
    }
}

/// The allocation index.
#[derive(Clone, Debug, Default)]
pub struct Ipam {
    pools: BTreeMap<Arc<str>, PoolState>,
    /// Active pools in automatic-allocation order.
    alloc_order: Vec<Arc<str>>,
    /// Per family: start -> (end, pool) of every active pool's ranges.
    active_ranges: [BTreeMap<u128, (u128, Arc<str>)>; 2],
    addrs: BTreeMap<IpAddr, AddrEntry>,
    services: HashMap<ServiceKey, ServiceEntry>,
    by_share_key: HashMap<Arc<str>, BTreeSet<IpAddr>>,
    /// Services by the pool they are attributed to (`allocated-from`).
    by_pool: HashMap<Arc<str>, BTreeSet<ServiceKey>>,
}

enum Satisfaction {
    Satisfied,
    /// PreferDualStack holds fewer families than it wants: try to add them in place.
    Extend(Vec<Family>),
    Unsatisfied,
}

impl Ipam {
    pub fn new() -> Ipam {
        Ipam::default()
    }

    // ----- pools -------------------------------------------------------------------

    /// Adds or replaces a pool. Allocations are never moved: addresses the new ranges no
    /// longer cover stay with their Services and are reported in `uncovered`.
    pub fn upsert_pool(&mut self, cfg: PoolConfig) -> PoolUpdate {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        if self.pools.get(&name).is_some_and(|p| p.cfg == cfg) {
            return PoolUpdate {
                conflicts: Vec::new(),
                uncovered: self.uncovered_of(&name),
            };
        }
        let before = self.conflict_states();
        let unanswerable = self.pools.get(&name).and_then(|p| p.unanswerable.clone());
        self.pools.insert(
            name.clone(),
            PoolState {
                cfg,
                name: name.clone(),
                conflict: None,
                unanswerable,
                free: [None, None],
            },
        );
        let conflicts = self.recompute_pools(&before, Some(&name));
        PoolUpdate {
            conflicts,
            uncovered: self.uncovered_of(&name),
        }
    }

    /// Removes a pool. Returns the Services whose assignment came from it; they keep
    /// their addresses until [`Ipam::allocate`] re-allocates them (it will, since their
    /// pool is gone), and other pools' conflict changes.
    pub fn remove_pool(&mut self, name: &str) -> (Vec<ServiceKey>, Vec<(String, Option<String>)>) {
        if !self.pools.contains_key(name) {
            return (Vec::new(), Vec::new());
        }
        let before = self.conflict_states();
        self.pools.remove(name);
        let conflicts = self.recompute_pools(&before, None);
        let affected = self
            .by_pool
            .get(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        (affected, conflicts)
    }

    /// Marks a pool as one no node can announce now (`Some(why)`) or as announceable
    /// again. An unanswerable pool keeps its assignments but is skipped by Services that
    /// do not name it. Returns whether anything changed.
    pub fn set_unanswerable(&mut self, name: &str, why: Option<&str>) -> bool {
        let Some(p) = self.pools.get_mut(name) else {
            return false;
        };
        if p.unanswerable.as_deref() == why {
            return false;
        }
        p.unanswerable = why.map(Arc::from);
        true
    }

    /// A pool's configuration.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.get(name).map(|p| &p.cfg)
    }

    fn conflict_states(&self) -> HashMap<Arc<str>, Option<Arc<str>>> {
        self.pools
            .iter()
            .map(|(n, p)| (n.clone(), p.conflict.clone()))
            .collect()
    }

    /// Recomputes conflicts (a pool conflicts with any older pool it overlaps), active
    /// ranges, allocation order, and the free sets of pools that became active or were
    /// replaced (`changed`). Returns conflict transitions.
    fn recompute_pools(
        &mut self,
        before: &HashMap<Arc<str>, Option<Arc<str>>>,
        changed: Option<&Arc<str>>,
    ) -> Vec<(String, Option<String>)> {
        let mut by_age: Vec<Arc<str>> = self.pools.keys().cloned().collect();
        by_age.sort_by(|a, b| {
            self.pools[a]
                .cfg
                .age_key()
                .cmp(&self.pools[b].cfg.age_key())
        });
        let mut seen: [FreeSet; 2] = [FreeSet::new(), FreeSet::new()];
        let mut conflicts: Vec<(Arc<str>, Option<Arc<str>>)> = Vec::new();
        for (pos, name) in by_age.iter().enumerate() {
            let cfg = &self.pools[name].cfg;
            let overlapping = cfg
                .ranges
                .iter()
                .any(|r| seen[r.family.idx()].intersects(r.first, r.last));
            let conflict = overlapping.then(|| {
                by_age[..pos]
                    .iter()
                    .find(|older| {
                        let o = &self.pools[*older].cfg;
                        cfg.ranges
                            .iter()
                            .any(|r| o.ranges.iter().any(|x| x.overlaps(r)))
                    })
                    .cloned()
                    .expect("an overlap has an older pool")
            });
            for r in &cfg.ranges {
                seen[r.family.idx()].insert_range(r.first, r.last);
            }
            conflicts.push((name.clone(), conflict));
        }
        let mut transitions = Vec::new();
        for (name, conflict) in conflicts {
            let was = before.get(&name).cloned().flatten();
            let existed = before.contains_key(&name);
            let pool = self.pools.get_mut(&name).expect("pool exists");
            pool.conflict = conflict.clone();
            let needs_free =
                pool.active() && (pool.free.iter().all(Option::is_none) || changed == Some(&name));
            if !pool.active() {
                pool.free = [None, None];
            }
            if needs_free {
                self.rebuild_free(&name);
            }
            if (existed && was != conflict) || (!existed && conflict.is_some()) {
                transitions.push((name.to_string(), conflict.map(|c| c.to_string())));
            }
        }
        self.active_ranges = [BTreeMap::new(), BTreeMap::new()];
        for p in self.pools.values().filter(|p| p.active()) {
            for r in &p.cfg.ranges {
                self.active_ranges[r.family.idx()].insert(r.first, (r.last, p.name.clone()));
            }
        }
        let mut order: Vec<Arc<str>> = self
            .pools
            .values()
            .filter(|p| p.active())
            .map(|p| p.name.clone())
            .collect();
        order.sort_by(|a, b| {
            self.pools[a]
                .cfg
                .allocation_key()
                .cmp(&self.pools[b].cfg.allocation_key())
        });
        self.alloc_order = order;
        transitions
    }

    /// Free set = usable indexes of the ranges minus allocated addresses inside them.
    fn rebuild_free(&mut self, name: &str) {
        let pool = &self.pools[name];
        let mut free: [Option<FreeSet>; 2] = [None, None];
        for family in Family::ALL {
            if !pool.cfg.has_family(family) {
                continue;
            }
            let map = pool.cfg.index_map(family);
            let mut set = FreeSet::new();
            for r in pool.cfg.ranges_of(family) {
                if let Some((a, b)) = map.index_range(r) {
                    set.insert_range(a, b);
                }
                for addr in self
                    .addrs
                    .range(r.first_addr()..=r.last_addr())
                    .map(|(a, _)| a)
                {
                    if let Some(i) = map.index(addr_value(*addr)) {
                        set.remove(i);
                    }
                }
            }
            free[family.idx()] = Some(set);
        }
        self.pools.get_mut(name).expect("pool exists").free = free;
    }

    fn uncovered_of(&self, name: &str) -> Vec<(IpAddr, Vec<ServiceKey>)> {
        let Some(pool) = self.pools.get(name) else {
            return Vec::new();
        };
        let addrs: BTreeSet<IpAddr> = self
            .by_pool
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|k| self.services[k].addrs.iter().copied())
            .filter(|a| !pool.cfg.contains(*a))
            .collect();
        addrs
            .into_iter()
            .map(|a| (a, self.addrs[&a].holders.clone()))
            .collect()
    }

    /// The active pool whose free set an address belongs to, if any.
    fn covering_active(&self, addr: IpAddr) -> Option<&PoolState> {
        let family = Family::of(addr);
        let v = addr_value(addr);
        let (_, (end, name)) = self.active_ranges[family.idx()].range(..=v).next_back()?;
        (*end >= v).then(|| &self.pools[name])
    }

    /// Any pool containing `addr`: the active one if there is one, else the oldest.
    fn containing_pool(&self, addr: IpAddr) -> Option<&PoolState> {
        self.covering_active(addr).or_else(|| {
            self.pools
                .values()
                .filter(|p| p.cfg.contains(addr))
                .min_by(|a, b| a.cfg.age_key().cmp(&b.cfg.age_key()))
        })
    }

    /// The name of the pool containing `addr` (the active one if any, else the oldest).
    pub fn pool_containing(&self, addr: IpAddr) -> Option<&str> {
        self.containing_pool(addr).map(|p| p.cfg.name.as_str())
    }

    /// Usage of a pool for its status.
    pub fn pool_usage(&self, name: &str) -> Option<PoolUsage> {
        let pool = self.pools.get(name)?;
        let usage = |family: Family| {
            let ranges: Vec<_> = pool.cfg.ranges_of(family).collect();
            let (first, last) = (ranges.first()?.first_addr(), ranges.last()?.last_addr());
            let size = pool.cfg.size(family);
            let available = match &pool.free[family.idx()] {
                Some(set) => set.count(),
                None => {
                    let map = pool.cfg.index_map(family);
                    let used = ranges
                        .iter()
                        .flat_map(|r| self.addrs.range(r.first_addr()..=r.last_addr()))
                        .filter(|(a, _)| !map.excluded(addr_value(**a)))
                        .count() as u128;
                    size.saturating_sub(used)
                }
            };
            Some(FamilyUsage {
                size,
                allocated: size.saturating_sub(available),
                available,
                first,
                last,
            })
        };
        Some(PoolUsage {
            ipv4: usage(Family::V4),
            ipv6: usage(Family::V6),
            conflict: pool.conflict.as_ref().map(|c| c.to_string()),
            uncovered: self
                .uncovered_of(name)
                .into_iter()
                .map(|(a, _)| a)
                .collect(),
        })
    }

    /// Allocated addresses inside a pool's ranges with their Services, lowest first, at
    /// most `limit`; the flag says whether more exist.
    pub fn pool_used(&self, name: &str, limit: usize) -> (Vec<(IpAddr, Vec<ServiceKey>)>, bool) {
        let Some(pool) = self.pools.get(name) else {
            return (Vec::new(), false);
        };
        let mut used = pool
            .cfg
            .ranges
            .iter()
            .flat_map(|r| self.addrs.range(r.first_addr()..=r.last_addr()))
            .map(|(a, e)| (*a, e.holders.clone()));
        let listed: Vec<_> = used.by_ref().take(limit).collect();
        (listed, used.next().is_some())
    }

    // ----- services ----------------------------------------------------------------

    /// The current assignment of a Service.
    pub fn assignment(&self, key: &ServiceKey) -> Option<Assignment> {
        self.services.get(key).map(|e| Assignment {
            pool: e.pool.to_string(),
            addresses: e.addrs.clone(),
        })
    }

    /// Every assignment, sorted by Service.
    pub fn assignments(&self) -> Vec<(ServiceKey, Assignment)> {
        let mut all: Vec<_> = self
            .services
            .keys()
            .map(|k| (k.clone(), self.assignment(k).expect("present")))
            .collect();
        all.sort();
        all
    }

    /// The Services holding an address.
    pub fn holders(&self, addr: IpAddr) -> &[ServiceKey] {
        self.addrs.get(&addr).map_or(&[], |e| &e.holders)
    }

    /// Records an existing assignment (read back from a Service at startup) without
    /// moving it. `pool` is the recorded `allocated-from`. Fails only when the address is
    /// already held by a Service it may not share with; that Service keeps it. Restoring
    /// every Service, in any order, into an index with the same pools reproduces the
    /// index exactly.
    pub fn restore(
        &mut self,
        req: &ServiceRequest,
        pool: &str,
        addresses: &[IpAddr],
    ) -> Result<Restored, RestoreError> {
        let mut addrs: Vec<IpAddr> = addresses.to_vec();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty()
            || addrs.len() > 2
            || (addrs.len() == 2 && Family::of(addrs[0]) == Family::of(addrs[1]))
        {
            return Err(RestoreError::Invalid {
                addresses: addresses.to_vec(),
            });
        }
        // Restoring a Service twice replaces its entry; a refused restore keeps the old one.
        let previous = self.services.get(&req.key).cloned();
        if previous.is_some() {
            self.release(&req.key);
        }
        for addr in &addrs {
            if let Some(entry) = self.addrs.get(addr)
                && let Err(why) = self.shareable(entry, &req.share)
            {
                if let Some(old) = previous {
                    self.insert_service(&req.key, old);
                }
                return Err(RestoreError::Conflict { addr: *addr, why });
            }
        }
        // The recorded pool stays the attribution even when it no longer contains the
        // address (or no longer exists): a restart must reproduce the state before it.
        let name: Arc<str> = self
            .pools
            .get_key_value(pool)
            .map_or_else(|| Arc::from(pool), |(k, _)| k.clone());
        let uncovered: Vec<IpAddr> = addrs
            .iter()
            .filter(|a| !self.pools.get(pool).is_some_and(|p| p.cfg.contains(**a)))
            .copied()
            .collect();
        self.insert_service(
            &req.key,
            ServiceEntry {
                pool: name,
                addrs: addrs.clone(),
                share: req.share.clone(),
            },
        );
        Ok(Restored {
            assignment: Assignment {
                pool: pool.to_string(),
                addresses: addrs,
            },
            uncovered,
        })
    }
    /// Gives a Service the addresses its request asks for, or confirms it has them.
    ///
    /// An existing assignment that still satisfies the request is returned unchanged
    /// (`changed == false`), even if its pool was since disabled, edited or deselected.
    /// When the request changed, addresses that still fit are kept. On error nothing
    /// changes: a Service keeps its previous addresses.
    pub fn allocate(&mut self, req: &ServiceRequest) -> Result<Allocation, AllocError> {
        let (wanted, required) = req.wanted_families()?;
        let Some(old) = self.services.get(&req.key).cloned() else {
            return self
                .allocate_fresh(req, &wanted, required, &[])
                .map(|a| Allocation {
                    assignment: a,
                    changed: true,
                    released: Vec::new(),
                });
        };
        let unchanged = |ipam: &Ipam| Allocation {
            assignment: ipam.assignment(&req.key).expect("present"),
            changed: false,
            released: Vec::new(),
        };
        match self.satisfaction(&old, req, &wanted) {
            Satisfaction::Satisfied => {
                self.update_share(&req.key, &req.share);
                Ok(unchanged(self))
            }
            Satisfaction::Extend(missing) => {
                self.update_share(&req.key, &req.share);
                let picks: Vec<Pick> = match self.pools.get(&old.pool) {
                    Some(p) if p.active() && !p.cfg.disabled => missing
                        .iter()
                        .filter_map(|f| self.pick(p, *f, &req.share, None))
                        .collect(),
                    _ => Vec::new(),
                };
                if picks.is_empty() {
                    return Ok(unchanged(self));
                }
                for pick in &picks {
                    self.hold(&req.key, pick.addr(), &req.share);
                }
                let entry = self.services.get_mut(&req.key).expect("present");
                entry.addrs.extend(picks.iter().map(|p| p.addr()));
                entry.addrs.sort();
                Ok(Allocation {
                    assignment: self.assignment(&req.key).expect("present"),
                    changed: true,
                    released: Vec::new(),
                })
            }
            Satisfaction::Unsatisfied => {
                self.release(&req.key);
                match self.allocate_fresh(req, &wanted, required, &old.addrs) {
                    Ok(assignment) => Ok(Allocation {
                        released: old
                            .addrs
                            .iter()
                            .filter(|a| !assignment.addresses.contains(a))
                            .copied()
                            .collect(),
                        assignment,
                        changed: true,
                    }),
                    Err(e) => {
                        self.insert_service(&req.key, old);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Releases a Service's addresses. Returns what it held.
    pub fn release(&mut self, key: &ServiceKey) -> Option<Assignment> {
        let entry = self.services.remove(key)?;
        if let Some(set) = self.by_pool.get_mut(&entry.pool) {
            set.remove(key);
            if set.is_empty() {
                self.by_pool.remove(&entry.pool);
            }
        }
        for addr in &entry.addrs {
            self.unhold(key, *addr);
        }
        Some(Assignment {
            pool: entry.pool.to_string(),
            addresses: entry.addrs,
        })
    }

    fn satisfaction(
        &self,
        old: &ServiceEntry,
        req: &ServiceRequest,
        wanted: &[Family],
    ) -> Satisfaction {
        if !self.pools.contains_key(&old.pool) {
            return Satisfaction::Unsatisfied;
        }
        if req.pool.as_deref().is_some_and(|p| p != &*old.pool) {
            return Satisfaction::Unsatisfied;
        }
        if !req.addresses.is_empty() {
            let mut requested = req.addresses.clone();
            requested.sort();
            if requested != old.addrs {
                return Satisfaction::Unsatisfied;
            }
        }
        // Sharing: the new ports, key or policy must still fit the other holders.
        if old.share != req.share {
            for addr in &old.addrs {
                let entry = &self.addrs[addr];
                let others: Vec<&ServiceKey> =
                    entry.holders.iter().filter(|h| **h != req.key).collect();
                if others.is_empty() {
                    continue;
                }
                if entry.key != req.share.key
                    || others
                        .iter()
                        .any(|h| self.conflict_with(h, &req.share).is_some())
                {
                    return Satisfaction::Unsatisfied;
                }
            }
        }
        if !req.addresses.is_empty() {
            return Satisfaction::Satisfied;
        }
        let held: BTreeSet<Family> = old.addrs.iter().map(|a| Family::of(*a)).collect();
        let wanted_set: BTreeSet<Family> = wanted.iter().copied().collect();
        match req.policy {
            FamilyPolicy::PreferDualStack if held.is_subset(&wanted_set) => {
                let missing: Vec<Family> = wanted
                    .iter()
                    .filter(|f| !held.contains(f))
                    .copied()
                    .collect();
                if missing.is_empty() {
                    Satisfaction::Satisfied
                } else {
                    Satisfaction::Extend(missing)
                }
            }
            _ if held == wanted_set => Satisfaction::Satisfied,
            _ => Satisfaction::Unsatisfied,
        }
    }

    /// Keeps the stored sharing spec current (ports, policy, or a key while unshared).
    fn update_share(&mut self, key: &ServiceKey, share: &ShareSpec) {
        let entry = self.services.get_mut(key).expect("present");
        if entry.share == *share {
            return;
        }
        let old_key = std::mem::replace(&mut entry.share, share.clone()).key;
        if old_key == share.key {
            return;
        }
        for addr in entry.addrs.clone() {
            // Only reached for addresses this Service holds alone (see `satisfaction`).
            if let Some(k) = &old_key
                && let Some(set) = self.by_share_key.get_mut(k)
            {
                set.remove(&addr);
                if set.is_empty() {
                    self.by_share_key.remove(k);
                }
            }
            if let Some(k) = &share.key {
                self.by_share_key.entry(k.clone()).or_default().insert(addr);
            }
            self.addrs.get_mut(&addr).expect("held").key = share.key.clone();
        }
    }

    /// Records a Service's entry: holds its addresses and indexes it by pool.
    fn insert_service(&mut self, key: &ServiceKey, entry: ServiceEntry) {
        for addr in &entry.addrs {
            self.hold(key, *addr, &entry.share);
        }
        self.by_pool
            .entry(entry.pool.clone())
            .or_default()
            .insert(key.clone());
        self.services.insert(key.clone(), entry);
    }

    fn allocate_fresh(
        &mut self,
        req: &ServiceRequest,
        wanted: &[Family],
        required: bool,
        prefer: &[IpAddr],
    ) -> Result<Assignment, AllocError> {
        let (pool, picks) = if req.addresses.is_empty() {
            self.choose_auto(req, wanted, required, prefer)?
        } else {
            self.choose_requested(req)?
        };
        let mut addrs: Vec<IpAddr> = picks.iter().map(|p| p.addr()).collect();
        addrs.sort();
        self.insert_service(
            &req.key,
            ServiceEntry {
                pool: pool.clone(),
                addrs: addrs.clone(),
                share: req.share.clone(),
            },
        );
        Ok(Assignment {
            pool: pool.to_string(),
            addresses: addrs,
        })
    }

    fn eligibility(
        &self,
        p: &PoolState,
        req: &ServiceRequest,
        explicit: bool,
    ) -> Result<(), Ineligible> {
        if let Some(other) = &p.conflict {
            return Err(Ineligible::Conflict(other.to_string()));
        }
        if p.cfg.disabled {
            return Err(Ineligible::Disabled);
        }
        if !explicit && !p.cfg.auto_assign {
            return Err(Ineligible::NoAutoAssign);
        }
        if !explicit && let Some(why) = &p.unanswerable {
            return Err(Ineligible::Unanswerable(why.to_string()));
        }
        if !p.cfg.service_selector.matches(&req.labels) {
            return Err(Ineligible::ServiceSelector(
                p.cfg.service_selector.to_string(),
            ));
        }
        if !p.cfg.namespace_selector.matches(&req.namespace_labels) {
            return Err(Ineligible::NamespaceSelector(
                p.cfg.namespace_selector.to_string(),
            ));
        }
        Ok(())
    }

    fn choose_requested(&self, req: &ServiceRequest) -> Result<(Arc<str>, Vec<Pick>), AllocError> {
        let mut chosen: Option<&PoolState> = None;
        let mut picks = Vec::new();
        for addr in &req.addresses {
            let pool = match &req.pool {
                Some(name) => {
                    let p = self
                        .pools
                        .get(name.as_str())
                        .ok_or_else(|| AllocError::PoolNotFound { pool: name.clone() })?;
                    if !p.cfg.contains(*addr) {
                        return Err(AllocError::AddressNotInPool {
                            addr: *addr,
                            pool: name.clone(),
                        });
                    }
                    p
                }
                None => self
                    .containing_pool(*addr)
                    .ok_or(AllocError::AddressOutsidePools { addr: *addr })?,
            };
            self.eligibility(pool, req, true)
                .map_err(|why| AllocError::PoolUnusable {
                    pool: pool.cfg.name.clone(),
                    why,
                })?;
            if let Some(first) = chosen
                && first.name != pool.name
            {
                return Err(AllocError::AddressesInDifferentPools {
                    first: req.addresses[0],
                    first_pool: first.cfg.name.clone(),
                    second: *addr,
                    second_pool: pool.cfg.name.clone(),
                });
            }
            chosen = Some(pool);
            let family = Family::of(*addr);
            let map = pool.cfg.index_map(family);
            let Some(index) = map.index(addr_value(*addr)) else {
                return Err(AllocError::AddressExcluded {
                    addr: *addr,
                    pool: pool.cfg.name.clone(),
                });
            };
            if pool.free[family.idx()]
                .as_ref()
                .is_some_and(|f| f.contains(index))
            {
                picks.push(Pick::Fresh(*addr));
            } else if let Some(entry) = self.addrs.get(addr) {
                self.shareable(entry, &req.share)
                    .map_err(|why| AllocError::AddressInUse { addr: *addr, why })?;
                picks.push(Pick::Shared(*addr));
            } else {
                unreachable!("an active pool's address is either free or allocated");
            }
        }
        let pool = chosen.expect("at least one address requested").name.clone();
        Ok((pool, picks))
    }

    fn choose_auto(
        &self,
        req: &ServiceRequest,
        wanted: &[Family],
        required: bool,
        prefer: &[IpAddr],
    ) -> Result<(Arc<str>, Vec<Pick>), AllocError> {
        let mut candidates: Vec<&PoolState> = Vec::new();
        let mut rejected: Vec<(String, Ineligible)> = Vec::new();
        match &req.pool {
            Some(name) => {
                let p = self
                    .pools
                    .get(name.as_str())
                    .ok_or_else(|| AllocError::PoolNotFound { pool: name.clone() })?;
                self.eligibility(p, req, true)
                    .map_err(|why| AllocError::PoolUnusable {
                        pool: name.clone(),
                        why,
                    })?;
                candidates.push(p);
            }
            None => {
                for name in &self.alloc_order {
                    let p = &self.pools[name];
                    match self.eligibility(p, req, false) {
                        Ok(()) => candidates.push(p),
                        Err(why) => rejected.push((name.to_string(), why)),
                    }
                }
                for p in self.pools.values().filter(|p| !p.active()) {
                    rejected.push((
                        p.cfg.name.clone(),
                        Ineligible::Conflict(p.conflict.as_deref().unwrap_or_default().to_string()),
                    ));
                }
                if candidates.is_empty() {
                    return Err(AllocError::NoPoolMatches { rejected });
                }
            }
        }
        // Pools to try first: where the Service's previous addresses are, then where
        // its sharing key already has a compatible address.
        let front = |c: &mut Vec<&PoolState>, pos: Option<usize>| {
            if let Some(pos) = pos {
                let p = c.remove(pos);
                c.insert(0, p);
            }
        };
        if req.share.key.is_some() {
            let pos = candidates.iter().position(|p| {
                wanted
                    .iter()
                    .any(|f| matches!(self.pick(p, *f, &req.share, None), Some(Pick::Shared(_))))
            });
            front(&mut candidates, pos);
        }
        if let Some(prev) = prefer.first() {
            let pos = candidates.iter().position(|p| p.cfg.contains(*prev));
            front(&mut candidates, pos);
        }
        let pick_all = |p: &PoolState| -> Vec<Pick> {
            wanted
                .iter()
                .filter_map(|f| {
                    let preferred = prefer.iter().find(|a| Family::of(**a) == *f).copied();
                    self.pick(p, *f, &req.share, preferred)
                })
                .collect()
        };
        for p in &candidates {
            let picks = pick_all(p);
            if picks.len() == wanted.len() {
                return Ok((p.name.clone(), picks));
            }
        }
        if !required {
            for p in &candidates {
                let picks = pick_all(p);
                if !picks.is_empty() {
                    return Ok((p.name.clone(), picks));
                }
            }
        }
        let pools: Vec<String> = candidates.iter().map(|p| p.cfg.name.clone()).collect();
        if let Some(f) = wanted
            .iter()
            .find(|f| !candidates.iter().any(|p| p.cfg.has_family(**f)))
        {
            return Err(AllocError::NoFamily { family: *f, pools });
        }
        Err(AllocError::Exhausted {
            families: wanted.to_vec(),
            pools,
        })
    }

    /// Chooses an address of `family` in an active pool: the preferred one if usable,
    /// else the lowest compatible address of the sharing key, else the lowest free one.
    fn pick(
        &self,
        p: &PoolState,
        family: Family,
        share: &ShareSpec,
        preferred: Option<IpAddr>,
    ) -> Option<Pick> {
        let free = p.free[family.idx()].as_ref()?;
        let map = p.cfg.index_map(family);
        let usable = |addr: IpAddr| -> Option<Pick> {
            if !p.cfg.contains(addr) {
                return None;
            }
            let index = map.index(addr_value(addr))?;
            if free.contains(index) {
                return Some(Pick::Fresh(addr));
            }
            let entry = self.addrs.get(&addr)?;
            self.shareable(entry, share)
                .ok()
                .map(|_| Pick::Shared(addr))
        };
        if let Some(pick) = preferred.and_then(usable) {
            return Some(pick);
        }
        if let Some(key) = &share.key
            && let Some(addrs) = self.by_share_key.get(key)
        {
            let shared = addrs
                .iter()
                .filter(|a| Family::of(**a) == family)
                .find_map(|a| usable(*a).filter(|pick| matches!(pick, Pick::Shared(_))));
            if shared.is_some() {
                return shared;
            }
        }
        free.first().map(|i| Pick::Fresh(family.addr(map.value(i))))
    }

    /// Whether a Service with `share` may join the holders of an address.
    fn shareable(&self, entry: &AddrEntry, share: &ShareSpec) -> Result<(), ShareConflict> {
        let holder = entry
            .holders
            .first()
            .cloned()
            .expect("an entry has holders");
        match (&entry.key, &share.key) {
            (Some(a), Some(b)) if a == b => {}
            (held, _) => {
                return Err(ShareConflict::NotShared {
                    holder,
                    holder_key: held.as_deref().map(str::to_string),
                    key: share.key.as_deref().map(str::to_string),
                });
            }
        }
        match entry
            .holders
            .iter()
            .find_map(|h| self.conflict_with(h, share))
        {
            Some(conflict) => Err(conflict),
            None => Ok(()),
        }
    }

    /// Port or traffic-policy conflict between a holder and a would-be co-holder.
    fn conflict_with(&self, holder: &ServiceKey, share: &ShareSpec) -> Option<ShareConflict> {
        let theirs = &self.services.get(holder)?.share;
        if let Some(port) = share.ports.iter().find(|p| theirs.ports.contains(p)) {
            return Some(ShareConflict::PortInUse {
                holder: holder.clone(),
                port: port.clone(),
            });
        }
        if !theirs.traffic.compatible(&share.traffic) {
            return Some(ShareConflict::TrafficPolicy {
                holder: holder.clone(),
                theirs: theirs.traffic.to_string(),
                ours: share.traffic.to_string(),
            });
        }
        None
    }

    /// Adds `key` as a holder of `addr`, creating the entry (and taking the address out of
    /// its active pool's free set) if needed.
    fn hold(&mut self, key: &ServiceKey, addr: IpAddr, share: &ShareSpec) {
        if let Some(entry) = self.addrs.get_mut(&addr) {
            if let Err(pos) = entry.holders.binary_search(key) {
                entry.holders.insert(pos, key.clone());
            }
            return;
        }
        self.set_free(addr, false);
        self.addrs.insert(
            addr,
            AddrEntry {
                key: share.key.clone(),
                holders: vec![key.clone()],
            },
        );
        if let Some(k) = &share.key {
            self.by_share_key.entry(k.clone()).or_default().insert(addr);
        }
    }

    /// Removes `key` from the holders of `addr`; the last holder frees the address.
    fn unhold(&mut self, key: &ServiceKey, addr: IpAddr) {
        let Some(entry) = self.addrs.get_mut(&addr) else {
            return;
        };
        entry.holders.retain(|h| h != key);
        if !entry.holders.is_empty() {
            return;
        }
        let entry = self.addrs.remove(&addr).expect("present");
        if let Some(k) = &entry.key
            && let Some(set) = self.by_share_key.get_mut(k)
        {
            set.remove(&addr);
            if set.is_empty() {
                self.by_share_key.remove(k);
            }
        }
        self.set_free(addr, true);
    }

    /// Marks `addr` free or taken in the free set of the active pool covering it.
    fn set_free(&mut self, addr: IpAddr, free: bool) {
        let family = Family::of(addr);
        let covering = self.covering_active(addr).map(|p| p.name.clone());
        if let Some(name) = covering {
            let p = self.pools.get_mut(&name).expect("active pool");
            if let Some(i) = p.cfg.index_map(family).index(addr_value(addr))
                && let Some(set) = p.free[family.idx()].as_mut()
            {
                if free {
                    set.insert(i);
                } else {
                    set.remove(i);
                }
            }
        }
    }

    /// Checks every invariant against a naive recomputation. Costs O(pool sizes): for
    /// tests only.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        // Free sets equal usable addresses minus allocated ones.
        for p in self.pools.values() {
            for family in Family::ALL {
                match &p.free[family.idx()] {
                    None => assert!(
                        !p.active() || !p.cfg.has_family(family),
                        "{} lacks a free set",
                        p.name
                    ),
                    Some(set) => {
                        let map = p.cfg.index_map(family);
                        let mut expected = 0u128;
                        for r in p.cfg.ranges_of(family) {
                            for v in r.first..=r.last {
                                let addr = family.addr(v);
                                let free =
                                    map.index(v).is_some() && !self.addrs.contains_key(&addr);
                                if free {
                                    expected += 1;
                                }
                                assert_eq!(
                                    map.index(v).is_some_and(|i| set.contains(i)),
                                    free,
                                    "pool {} address {addr}",
                                    p.name
                                );
                            }
                        }
                        assert_eq!(set.count(), expected, "pool {}", p.name);
                    }
                }
            }
        }
        // Active pools never overlap.
        let active: Vec<&PoolState> = self.pools.values().filter(|p| p.active()).collect();
        for (i, a) in active.iter().enumerate() {
            for b in &active[i + 1..] {
                assert!(
                    !a.cfg
                        .ranges
                        .iter()
                        .any(|r| b.cfg.ranges.iter().any(|x| x.overlaps(r))),
                    "active pools {} and {} overlap",
                    a.name,
                    b.name
                );
            }
        }
        // Services and address entries agree; holders may share.
        for (key, svc) in &self.services {
            for addr in &svc.addrs {
                let entry = &self.addrs[addr];
                assert!(entry.holders.contains(key));
                for other in entry.holders.iter().filter(|h| *h != key) {
                    let theirs = &self.services[other].share;
                    assert!(
                        entry.key.is_some()
                            && svc.share.key == entry.key
                            && theirs.key == entry.key
                    );
                    assert!(!svc.share.ports.iter().any(|p| theirs.ports.contains(p)));
                    assert!(svc.share.traffic.compatible(&theirs.traffic));
                }
            }
        }
        for (addr, entry) in &self.addrs {
            assert!(!entry.holders.is_empty());
            for h in &entry.holders {
                assert!(self.services[h].addrs.contains(addr));
            }
            if let Some(k) = &entry.key {
                assert!(self.by_share_key[k].contains(addr));
            }
        }
        for (pool, keys) in &self.by_pool {
            for k in keys {
                assert_eq!(&self.services[k].pool, pool);
            }
        }
        let indexed: usize = self.by_pool.values().map(BTreeSet::len).sum();
        assert_eq!(indexed, self.services.len());
    }
}
