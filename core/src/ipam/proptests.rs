//! Property tests: random sequences of pool edits, allocations, requests, sharing,
//! releases and restarts, run against [`Ipam`] and a naive reference model that scans
//! address by address and keeps plain lists. After every step both must agree exactly,
//! and [`Ipam::check_invariants`] must hold. A restart rebuilds the index from the
//! recorded assignments only and must reproduce it exactly, then keep agreeing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::range::{Family, addr_value};
use super::*;
use crate::crd::AddressPoolSpec;
use crate::selector::Selector;

const V4_BASE: &str = "192.0.2.240"; // the universe crosses a /24 boundary (.255, .0)
const V6_BASE: &str = "2001:db8::";
const POOLS: [&str; 3] = ["p0", "p1", "p2"];

fn universe(family: Family, offset: u8) -> IpAddr {
    let base: IpAddr = match family {
        Family::V4 => V4_BASE.parse().unwrap(),
        Family::V6 => V6_BASE.parse().unwrap(),
    };
    family.addr(addr_value(base) + u128::from(offset))
}

// ----- operations ----------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    UpsertPool {
        pool: usize,
        entries: Vec<(Family, u8, u8)>,
        avoid_buggy: bool,
        disabled: bool,
        auto_assign: bool,
        priority: Option<i32>,
        selector: u8,
    },
    RemovePool(usize),
    Allocate(usize, Req),
    Release(usize),
    Restart,
}

#[derive(Clone, Debug)]
struct Req {
    pool: Option<usize>,
    addresses: Vec<(Family, u8)>,
    policy: FamilyPolicy,
    families: Vec<Family>,
    key: Option<u8>,
    port: u8,
    local: Option<u8>,
    team: bool,
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![3 => Just(Family::V4), 1 => Just(Family::V6)]
}

fn req() -> impl Strategy<Value = Req> {
    let families = prop_oneof![
        5 => Just((FamilyPolicy::SingleStack, vec![Family::V4])),
        2 => Just((FamilyPolicy::SingleStack, vec![Family::V6])),
        2 => Just((FamilyPolicy::PreferDualStack, vec![Family::V4, Family::V6])),
        1 => Just((FamilyPolicy::PreferDualStack, vec![Family::V6, Family::V4])),
        2 => Just((FamilyPolicy::RequireDualStack, vec![Family::V4, Family::V6])),
    ];
    (
        prop::option::weighted(0.2, 0..POOLS.len()),
        prop_oneof![6 => Just(vec![]), 2 => prop::collection::vec((family(), 0u8..32), 1..=2)],
        families,
        prop::option::weighted(0.4, 0u8..2),
        0u8..3,
        prop::option::weighted(0.2, 0u8..2),
        any::<bool>(),
    )
        .prop_map(
            |(pool, addresses, (policy, families), key, port, local, team)| Req {
                pool,
                addresses,
                policy,
                families,
                key,
                port,
                local,
                team,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            0..POOLS.len(),
            prop::collection::vec((family(), 0u8..30, 0u8..8), 1..=3),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.85),
            prop::option::of(0i32..3),
            0u8..4,
        )
            .prop_map(|(pool, entries, avoid_buggy, disabled, auto_assign, priority, selector)| {
                Op::UpsertPool { pool, entries, avoid_buggy, disabled, auto_assign, priority, selector }
            }),
        1 => (0..POOLS.len()).prop_map(Op::RemovePool),
        10 => (0usize..10, req()).prop_map(|(s, r)| Op::Allocate(s, r)),
        3 => (0usize..10).prop_map(Op::Release),
        1 => Just(Op::Restart),
    ]
}

fn pool_config(
    pool: usize,
    entries: &[(Family, u8, u8)],
    avoid_buggy: bool,
    disabled: bool,
    auto_assign: bool,
    priority: Option<i32>,
    selector: u8,
) -> Result<PoolConfig, PoolConfigError> {
    let spec = AddressPoolSpec {
        addresses: entries
            .iter()
            .map(|(f, start, len)| {
                let last = start.saturating_add(*len).min(31);
                format!("{}-{}", universe(*f, *start), universe(*f, last))
            })
            .collect(),
        ..Default::default()
    };
    // Creation times run against name order so that age and name orders differ.
    let mut cfg = PoolConfig::from_spec(POOLS[pool], Some(100 - pool as i64), &spec)?;
    cfg.avoid_buggy_ips = avoid_buggy;
    cfg.disabled = disabled;
    cfg.auto_assign = auto_assign;
    cfg.priority = priority;
    match selector {
        1 => cfg.service_selector = Selector::from_labels([("team", "a")]),
        2 => cfg.namespace_selector = Selector::from_labels([("env", "prod")]),
        _ => {}
    }
    Ok(cfg)
}

fn service_request(svc: usize, r: &Req) -> ServiceRequest {
    let mut req = ServiceRequest::new(
        if svc.is_multiple_of(2) { "prod" } else { "dev" },
        &format!("s{svc}"),
    );
    if svc.is_multiple_of(2) {
        req.namespace_labels.insert("env".into(), "prod".into());
    }
    if r.team {
        req.labels.insert("team".into(), "a".into());
    }
    req.pool = r.pool.map(|p| POOLS[p].to_string());
    req.addresses = r.addresses.iter().map(|(f, o)| universe(*f, *o)).collect();
    req.policy = r.policy;
    req.families = r.families.clone();
    req.share = ShareSpec {
        key: r.key.map(|k| Arc::from(format!("k{k}"))),
        ports: vec![
            [
                PortKey::new("TCP", 80),
                PortKey::new("TCP", 443),
                PortKey::new("UDP", 53),
            ][usize::from(r.port)]
            .clone(),
        ],
        traffic: match r.local {
            None => TrafficPolicy::Cluster,
            Some(app) => TrafficPolicy::Local {
                selector: [("app".to_string(), format!("a{app}"))].into(),
            },
        },
    };
    req
}

// ----- the reference model ---------------------------------------------------------------

#[derive(Clone, Debug)]
struct MSvc {
    pool: String,
    addrs: Vec<IpAddr>,
    share: ShareSpec,
}

/// The specification of the allocator written naively: lists and address-by-address scans.
#[derive(Default)]
struct Model {
    pools: BTreeMap<String, PoolConfig>,
    svcs: BTreeMap<ServiceKey, MSvc>,
}

impl Model {
    fn conflict(&self, name: &str) -> Option<String> {
        let p = &self.pools[name];
        let mut older: Vec<&PoolConfig> = self
            .pools
            .values()
            .filter(|o| o.age_key() < p.age_key())
            .collect();
        older.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        older
            .into_iter()
            .find(|o| {
                o.ranges
                    .iter()
                    .any(|r| p.ranges.iter().any(|x| x.overlaps(r)))
            })
            .map(|o| o.name.clone())
    }

    fn holders(&self, addr: IpAddr) -> Vec<(&ServiceKey, &MSvc)> {
        self.svcs
            .iter()
            .filter(|(_, s)| s.addrs.contains(&addr))
            .collect()
    }

    fn shareable(&self, addr: IpAddr, share: &ShareSpec) -> bool {
        let holders = self.holders(addr);
        !holders.is_empty()
            && share.key.is_some()
            && holders.iter().all(|(_, h)| {
                h.share.key == share.key
                    && !h.share.ports.iter().any(|p| share.ports.contains(p))
                    && h.share.traffic.compatible(&share.traffic)
            })
    }

    fn usable(p: &PoolConfig, addr: IpAddr) -> bool {
        p.contains(addr) && !p.index_map(Family::of(addr)).excluded(addr_value(addr))
    }

    fn free_addrs<'a>(
        &'a self,
        p: &'a PoolConfig,
        family: Family,
    ) -> impl Iterator<Item = IpAddr> + 'a {
        p.ranges_of(family)
            .flat_map(move |r| (r.first..=r.last).map(move |v| family.addr(v)))
            .filter(move |a| Self::usable(p, *a) && self.holders(*a).is_empty())
    }

    fn pick(
        &self,
        p: &PoolConfig,
        family: Family,
        share: &ShareSpec,
        preferred: Option<IpAddr>,
    ) -> Option<(IpAddr, bool)> {
        if !p.has_family(family) {
            return None;
        }
        if let Some(a) = preferred
            && Self::usable(p, a)
        {
            if self.holders(a).is_empty() {
                return Some((a, true));
            }
            if self.shareable(a, share) {
                return Some((a, false));
            }
        }
        if share.key.is_some() {
            let mut keyed: Vec<IpAddr> = self
                .svcs
                .values()
                .filter(|s| s.share.key == share.key)
                .flat_map(|s| s.addrs.iter().copied())
                .filter(|a| Family::of(*a) == family)
                .collect();
            keyed.sort();
            if let Some(a) = keyed
                .into_iter()
                .find(|a| Self::usable(p, *a) && self.shareable(*a, share))
            {
                return Some((a, false));
            }
        }
        self.free_addrs(p, family).next().map(|a| (a, true))
    }

    fn eligible(&self, p: &PoolConfig, req: &ServiceRequest, explicit: bool) -> bool {
        self.conflict(&p.name).is_none()
            && !p.disabled
            && (explicit || p.auto_assign)
            && p.service_selector.matches(&req.labels)
            && p.namespace_selector.matches(&req.namespace_labels)
    }

    fn allocate(&mut self, req: &ServiceRequest) -> Result<(Assignment, bool), &'static str> {
        let (wanted, required) = req.wanted_families().map_err(|e| e.reason())?;
        if let Some(old) = self.svcs.get(&req.key).cloned() {
            let pool_ok = self.pools.contains_key(&old.pool)
                && req.pool.as_ref().is_none_or(|p| *p == old.pool);
            let mut requested = req.addresses.clone();
            requested.sort();
            let addrs_ok = req.addresses.is_empty() || requested == old.addrs;
            let share_ok = old.share == req.share
                || old.addrs.iter().all(|a| {
                    let others: Vec<_> = self
                        .holders(*a)
                        .into_iter()
                        .filter(|(k, _)| **k != req.key)
                        .collect();
                    others.is_empty()
                        || others.iter().all(|(_, h)| {
                            h.share.key == req.share.key
                                && !h.share.ports.iter().any(|p| req.share.ports.contains(p))
                                && h.share.traffic.compatible(&req.share.traffic)
                        })
                });
            if pool_ok && addrs_ok && share_ok {
                let held: Vec<Family> = old.addrs.iter().map(|a| Family::of(*a)).collect();
                let same = |a: &[Family], b: &[Family]| {
                    a.iter().all(|f| b.contains(f)) && b.iter().all(|f| a.contains(f))
                };
                let outcome = if !req.addresses.is_empty() {
                    Some(Vec::new())
                } else if req.policy == FamilyPolicy::PreferDualStack
                    && held.iter().all(|f| wanted.contains(f))
                {
                    Some(
                        wanted
                            .iter()
                            .filter(|f| !held.contains(f))
                            .copied()
                            .collect(),
                    )
                } else if same(&held, &wanted) {
                    Some(Vec::new())
                } else {
                    None
                };
                if let Some(missing) = outcome {
                    self.svcs.get_mut(&req.key).unwrap().share = req.share.clone();
                    let p = &self.pools[&old.pool];
                    let mut added = Vec::new();
                    if !missing.is_empty() && self.conflict(&old.pool).is_none() && !p.disabled {
                        for f in missing {
                            if let Some((a, _)) = self.pick(p, f, &req.share, None) {
                                added.push(a);
                            }
                        }
                    }
                    let svc = self.svcs.get_mut(&req.key).unwrap();
                    svc.addrs.extend(&added);
                    svc.addrs.sort();
                    let a = Assignment {
                        pool: svc.pool.clone(),
                        addresses: svc.addrs.clone(),
                    };
                    return Ok((a, !added.is_empty()));
                }
            }
            self.svcs.remove(&req.key);
            match self.fresh(req, &wanted, required, &old.addrs) {
                Ok(a) => Ok((a, true)),
                Err(e) => {
                    self.svcs.insert(req.key.clone(), old);
                    Err(e)
                }
            }
        } else {
            self.fresh(req, &wanted, required, &[]).map(|a| (a, true))
        }
    }

    fn containing(&self, addr: IpAddr) -> Option<&PoolConfig> {
        let mut all: Vec<&PoolConfig> = self.pools.values().filter(|p| p.contains(addr)).collect();
        all.sort_by_key(|p| (self.conflict(&p.name).is_some(), p.age_key()));
        all.first().copied()
    }

    fn fresh(
        &mut self,
        req: &ServiceRequest,
        wanted: &[Family],
        required: bool,
        prefer: &[IpAddr],
    ) -> Result<Assignment, &'static str> {
        let (pool, addrs) = if !req.addresses.is_empty() {
            let mut chosen: Option<String> = None;
            let mut addrs = Vec::new();
            for a in &req.addresses {
                let p = match &req.pool {
                    Some(n) => {
                        let p = self.pools.get(n).ok_or("pool_not_found")?;
                        if !p.contains(*a) {
                            return Err("address_not_available");
                        }
                        p
                    }
                    None => self.containing(*a).ok_or("address_not_available")?,
                };
                if !self.eligible(p, req, true) {
                    return Err("pool_unusable");
                }
                if chosen.as_ref().is_some_and(|c| *c != p.name) {
                    return Err("invalid_request");
                }
                chosen = Some(p.name.clone());
                if !Self::usable(p, *a) {
                    return Err("address_not_available");
                }
                if !self.holders(*a).is_empty() && !self.shareable(*a, &req.share) {
                    return Err("already_allocated");
                }
                addrs.push(*a);
            }
            (chosen.unwrap(), addrs)
        } else {
            let mut candidates: Vec<&PoolConfig> = match &req.pool {
                Some(n) => {
                    let p = self.pools.get(n).ok_or("pool_not_found")?;
                    if !self.eligible(p, req, true) {
                        return Err("pool_unusable");
                    }
                    vec![p]
                }
                None => {
                    let mut c: Vec<&PoolConfig> = self
                        .pools
                        .values()
                        .filter(|p| self.eligible(p, req, false))
                        .collect();
                    c.sort_by(|a, b| a.allocation_key().cmp(&b.allocation_key()));
                    if c.is_empty() {
                        return Err("no_pool");
                    }
                    c
                }
            };
            let to_front = |c: &mut Vec<&PoolConfig>, pos: Option<usize>| {
                if let Some(pos) = pos {
                    let p = c.remove(pos);
                    c.insert(0, p);
                }
            };
            if req.share.key.is_some() {
                let pos = candidates.iter().position(|p| {
                    wanted
                        .iter()
                        .any(|f| matches!(self.pick(p, *f, &req.share, None), Some((_, false))))
                });
                to_front(&mut candidates, pos);
            }
            if let Some(first) = prefer.first() {
                let pos = candidates.iter().position(|p| p.contains(*first));
                to_front(&mut candidates, pos);
            }
            let pick_all = |p: &PoolConfig| -> Vec<IpAddr> {
                wanted
                    .iter()
                    .filter_map(|f| {
                        let preferred = prefer.iter().find(|a| Family::of(**a) == *f).copied();
                        self.pick(p, *f, &req.share, preferred).map(|(a, _)| a)
                    })
                    .collect()
            };
            let full = candidates.iter().find_map(|p| {
                let got = pick_all(p);
                (got.len() == wanted.len()).then(|| (p.name.clone(), got))
            });
            let partial = || {
                candidates.iter().find_map(|p| {
                    let got = pick_all(p);
                    (!got.is_empty()).then(|| (p.name.clone(), got))
                })
            };
            match full.or_else(|| if required { None } else { partial() }) {
                Some(found) => found,
                None if wanted
                    .iter()
                    .any(|f| !candidates.iter().any(|p| p.has_family(*f))) =>
                {
                    return Err("no_pool_for_family");
                }
                None => return Err("out_of_ips"),
            }
        };
        let mut addrs = addrs;
        addrs.sort();
        self.svcs.insert(
            req.key.clone(),
            MSvc {
                pool: pool.clone(),
                addrs: addrs.clone(),
                share: req.share.clone(),
            },
        );
        Ok(Assignment {
            pool,
            addresses: addrs,
        })
    }

    fn assignments(&self) -> Vec<(ServiceKey, Assignment)> {
        self.svcs
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    Assignment {
                        pool: s.pool.clone(),
                        addresses: s.addrs.clone(),
                    },
                )
            })
            .collect()
    }

    fn available(&self, name: &str, family: Family) -> u128 {
        let p = &self.pools[name];
        self.free_addrs(p, family).count() as u128
    }
}

// ----- the property --------------------------------------------------------------------

fn restart(
    old: &Ipam,
    reqs: &BTreeMap<ServiceKey, ServiceRequest>,
    pools: &BTreeMap<String, PoolConfig>,
) -> Ipam {
    let mut fresh = Ipam::new();
    // Pools arrive in reverse name order: conflicts must not depend on arrival order.
    for cfg in pools.values().rev() {
        fresh.upsert_pool(cfg.clone());
    }
    for (key, assignment) in old.assignments() {
        fresh
            .restore(&reqs[&key], &assignment.pool, &assignment.addresses)
            .unwrap_or_else(|e| panic!("restore {key}: {e}"));
    }
    fresh
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut ipam = Ipam::new();
    let mut model = Model::default();
    let mut reqs: BTreeMap<ServiceKey, ServiceRequest> = BTreeMap::new();
    for op in ops {
        match &op {
            Op::UpsertPool {
                pool,
                entries,
                avoid_buggy,
                disabled,
                auto_assign,
                priority,
                selector,
            } => {
                let Ok(cfg) = pool_config(
                    *pool,
                    entries,
                    *avoid_buggy,
                    *disabled,
                    *auto_assign,
                    *priority,
                    *selector,
                ) else {
                    continue;
                };
                let update = ipam.upsert_pool(cfg.clone());
                let name = cfg.name.clone();
                model.pools.insert(name.clone(), cfg);
                let uncovered: Vec<IpAddr> = model
                    .svcs
                    .values()
                    .filter(|s| s.pool == name)
                    .flat_map(|s| s.addrs.iter().copied())
                    .filter(|a| !model.pools[&name].contains(*a))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let reported: Vec<IpAddr> = update.uncovered.iter().map(|(a, _)| *a).collect();
                prop_assert_eq!(reported, uncovered, "{:?}", op);
            }
            Op::RemovePool(pool) => {
                let name = POOLS[*pool];
                let (affected, _) = ipam.remove_pool(name);
                let existed = model.pools.remove(name).is_some();
                let expected: Vec<ServiceKey> = model
                    .svcs
                    .iter()
                    .filter(|(_, s)| existed && s.pool == name)
                    .map(|(k, _)| k.clone())
                    .collect();
                prop_assert_eq!(&affected, &expected);
                // What the allocator does next: re-allocate the deleted pool's Services.
                for key in affected {
                    let req = reqs[&key].clone();
                    let got = ipam
                        .allocate(&req)
                        .map(|a| (a.assignment, a.changed))
                        .map_err(|e| e.reason());
                    prop_assert_eq!(got, model.allocate(&req), "re-allocating {}", key);
                }
            }
            Op::Allocate(svc, r) => {
                let req = service_request(*svc, r);
                let before = ipam.assignment(&req.key);
                let got = ipam
                    .allocate(&req)
                    .map(|a| (a.assignment, a.changed))
                    .map_err(|e| e.reason());
                let want = model.allocate(&req);
                prop_assert_eq!(&got, &want, "{:?}", op);
                if got.is_err() {
                    prop_assert_eq!(
                        ipam.assignment(&req.key),
                        before,
                        "a failure changes nothing"
                    );
                } else {
                    reqs.insert(req.key.clone(), req);
                }
            }
            Op::Release(svc) => {
                let key = ServiceKey::new(
                    if svc.is_multiple_of(2) { "prod" } else { "dev" },
                    format!("s{svc}"),
                );
                let released = ipam.release(&key).map(|a| a.addresses);
                let modelled = model.svcs.remove(&key).map(|s| s.addrs);
                prop_assert_eq!(released, modelled);
                reqs.remove(&key);
            }
            Op::Restart => {
                let restarted = restart(&ipam, &reqs, &model.pools);
                prop_assert_eq!(
                    restarted.assignments(),
                    ipam.assignments(),
                    "restart reproduces assignments"
                );
                for name in model.pools.keys() {
                    prop_assert_eq!(
                        restarted.pool_usage(name),
                        ipam.pool_usage(name),
                        "pool {}",
                        name
                    );
                }
                ipam = restarted;
            }
        }
        ipam.check_invariants();
        prop_assert_eq!(ipam.assignments(), model.assignments(), "after {:?}", op);
        for name in model.pools.keys() {
            let usage = ipam.pool_usage(name).unwrap();
            prop_assert_eq!(usage.conflict, model.conflict(name), "pool {}", name);
            for (family, u) in [(Family::V4, usage.ipv4), (Family::V6, usage.ipv6)] {
                if let Some(u) = u {
                    prop_assert_eq!(
                        u.available,
                        model.available(name, family),
                        "pool {} {}",
                        name,
                        family
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn ipam_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
