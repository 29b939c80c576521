//! Making a node's kernel match a [`NodeState`]: read, decide, write.
//!
//! The dataplane keeps one or more kernel contracts programmed: the one the RouterConfig
//! sets and, while the routing daemon still reads an older one, that one too, so the
//! daemon never reads an empty table. A contract no longer kept is cleaned up (its
//! entries removed unless a kept contract wants the same entry; its interface stays).
//! What the kernel has is dumped once and then followed by notifications
//! ([`Dataplane::note`]), so a reconcile does not dump tens of thousands of entries for
//! one change; [`Dataplane::invalidate`] forces a full look (periodic resync, lost
//! notifications). What is already right is never touched, so an agent restart
//! withdraws nothing still wanted.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, bail};
use routelb_core::net::{
    self, KernelContract, Link, LinkKind, Notification, Observed, Op, TABLE_LOCAL, Target, VipMode,
};

use super::netlink::Netlink;
use super::{Config, Kernel, OpError};

/// The outcome of one reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries added or replaced.
    pub added: usize,
    pub removed: usize,
    /// The changes the kernel refused, each naming what was attempted.
    pub errors: Vec<OpError>,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.added + self.removed > 0
    }
}

/// One contract and what the kernel has of it.
#[derive(Debug)]
struct Programmed {
    contract: KernelContract,
    link: Option<Link>,
    /// `None`: look at the kernel before the next plan.
    observed: Option<Observed>,
}

impl Programmed {
    fn new(contract: KernelContract) -> Programmed {
        Programmed {
            contract,
            link: None,
            observed: None,
        }
    }

    fn target<'a>(&'a self, empty: &'a Observed) -> Target<'a> {
        Target {
            contract: &self.contract,
            link: self.link.as_ref(),
            observed: self.observed.as_ref().unwrap_or(empty),
        }
    }

    /// Whether a notification says this contract's link changed under us.
    fn link_changed(&self, n: &Notification) -> bool {
        let (name, index) = (
            &self.contract.interface,
            self.link.as_ref().map(|l| l.index),
        );
        match n {
            Notification::DelLink(l) => Some(l.index) == index || l.name == *name,
            Notification::NewLink(l) => {
                (Some(l.index) == index || l.name == *name) && (!l.up || Some(l.index) != index)
            }
            _ => false,
        }
    }
}

/// What the kernel has that routelb owns under `contract`: the addresses on `link` (none
/// without one), the routes in its table, and local routes, all with its protocol.
fn observe<K: Kernel>(
    kernel: &mut K,
    contract: &KernelContract,
    link: Option<&Link>,
) -> anyhow::Result<Observed> {
    let what = || {
        format!(
            "read the addresses of {} and routes of table {}",
            contract.interface, contract.table
        )
    };
    let addresses = match link {
        Some(l) => kernel
            .addr_dump(l.index)
            .with_context(what)?
            .into_iter()
            .filter(|p| !p.is_link_local())
            .collect(),
        None => BTreeSet::new(),
    };
    let routes = kernel
        .route_dump(contract.table, contract.protocol)
        .with_context(what)?
        .into_iter()
        .collect();
    let local_routes = kernel
        .route_dump(TABLE_LOCAL, contract.protocol)
        .with_context(what)?
        .into_iter()
        .filter(|r| r.local)
        .collect();
    Ok(Observed {
        addresses,
        routes,
        local_routes,
    })
}

/// The dataplane of one node (one network namespace).
#[derive(Debug)]
pub struct Dataplane<K: Kernel = Netlink> {
    kernel: K,
    link_kind: LinkKind,
    vip_mode: VipMode,
    /// Contracts kept programmed, in priority order (a shared route slot goes to the
    /// first).
    keep: Vec<Programmed>,
    /// Contracts no longer kept whose entries are still to be removed.
    drop: Vec<Programmed>,
    /// The kind used when the requested one was unavailable (reported once).
    fallback: Option<&'static str>,
}

impl Dataplane<Netlink> {
    /// Opens netlink and makes sure the contract's interface exists and is up. An
    /// existing interface is adopted as it is.
    pub fn open(cfg: Config) -> anyhow::Result<Dataplane<Netlink>> {
        let nl = Netlink::new().context("open a netlink socket")?;
        let mut dp = Dataplane::new(nl, cfg.link_kind, cfg.vip_mode);
        dp.set_contracts(std::slice::from_ref(&cfg.contract))?;
        Ok(dp)
    }

    /// Removes everything routelb put into the kernel under `contract`, then its
    /// interface. Idempotent.
    pub fn cleanup(contract: &KernelContract) -> anyhow::Result<Report> {
        let mut nl = Netlink::new().context("open a netlink socket")?;
        cleanup(&mut nl, contract)
    }
}

/// [`Dataplane::cleanup`] on any kernel.
pub fn cleanup<K: Kernel>(kernel: &mut K, contract: &KernelContract) -> anyhow::Result<Report> {
    let link = kernel.link_get(&contract.interface)?;
    let observed = observe(kernel, contract, link.as_ref())?;
    let drop = [Target {
        contract,
        link: link.as_ref(),
        observed: &observed,
    }];
    let ops = net::plan(VipMode::Address, &[], &drop, &Default::default());
    let mut report = Report::default();
    for result in kernel.apply(&ops) {
        match result {
            Ok(()) => report.removed += 1,
            Err(e) => report.errors.push(e),
        }
    }
    if let Some(l) = link {
        kernel
            .link_del(l.index)
            .with_context(|| format!("delete {}", l.name))?;
        report.removed += 1;
    }
    Ok(report)
}

impl<K: Kernel> Dataplane<K> {
    /// A dataplane with no contract yet: nothing is touched until one is set.
    pub fn new(kernel: K, link_kind: LinkKind, vip_mode: VipMode) -> Dataplane<K> {
        Dataplane {
            kernel,
            link_kind,
            vip_mode,
            keep: Vec::new(),
            drop: Vec::new(),
            fallback: None,
        }
    }

    /// The kernel (tests look at it).
    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// `Some("bridge")` when an interface had to be an empty bridge.
    pub fn fallback(&self) -> Option<&'static str> {
        self.fallback
    }

    /// The interface of the first contract kept.
    pub fn link(&self) -> Option<&Link> {
        self.keep.first().and_then(|p| p.link.as_ref())
    }

    /// The contracts kept programmed, in priority order.
    pub fn contracts(&self) -> Vec<KernelContract> {
        self.keep.iter().map(|p| p.contract.clone()).collect()
    }

    /// The interfaces of the kept contracts, and the tables and protocols they use: what
    /// notifications concern this dataplane.
    pub fn interest(&self) -> Interest {
        let all = self.keep.iter().chain(&self.drop);
        Interest {
            indices: all
                .clone()
                .filter_map(|p| p.link.as_ref().map(|l| l.index))
                .collect(),
            names: all.clone().map(|p| p.contract.interface.clone()).collect(),
            tables: all.clone().map(|p| p.contract.table).collect(),
            protocols: all.map(|p| p.contract.protocol).collect(),
        }
    }

    /// Sets the contracts to keep programmed, in priority order: new ones get their
    /// interface now, those no longer listed are cleaned up at the next reconcile.
    pub fn set_contracts(&mut self, contracts: &[KernelContract]) -> anyhow::Result<()> {
        let mut old = std::mem::take(&mut self.keep);
        for c in contracts {
            if self.keep.iter().any(|p| p.contract == *c) {
                continue;
            }
            let existing = old
                .iter()
                .position(|p| p.contract == *c)
                .map(|i| old.remove(i))
                .or_else(|| {
                    self.drop
                        .iter()
                        .position(|p| p.contract == *c)
                        .map(|i| self.drop.remove(i))
                });
            let mut p = existing.unwrap_or_else(|| Programmed::new(c.clone()));
            if p.link.is_none() {
                let (link, fallback) = ensure_link(&mut self.kernel, &c.interface, self.link_kind)?;
                self.fallback = self.fallback.or(fallback);
                p.link = Some(link);
            }
            self.keep.push(p);
        }
        self.drop.extend(old);
        Ok(())
    }

    /// The addresses the node accepts traffic for under `contract` now (what a previous
    /// run left, before the first reconcile). Creates nothing.
    pub fn present(&mut self, contract: &KernelContract) -> anyhow::Result<BTreeSet<IpAddr>> {
        let link = self.kernel.link_get(&contract.interface)?;
        let o = observe(&mut self.kernel, contract, link.as_ref())?;
        Ok(o.addresses
            .iter()
            .map(|p| p.addr)
            .chain(o.local_routes.iter().map(|r| r.dst.addr))
            .collect())
    }

    /// Dumps what kept contract `i` has, checking its interface first (it may have been
    /// deleted or recreated behind our back).
    fn look(&mut self, i: usize) -> anyhow::Result<()> {
        if self.keep[i].observed.is_some() {
            return Ok(());
        }
        let name = self.keep[i].contract.interface.clone();
        let known = self.keep[i].link.as_ref().map(|l| l.index);
        match self.kernel.link_get(&name)? {
            Some(l) if Some(l.index) == known && l.up => {}
            _ => {
                let (link, fallback) = ensure_link(&mut self.kernel, &name, self.link_kind)?;
                if known.is_some() {
                    tracing::warn!(interface = %link.name, index = link.index, "interface was missing or down; restored");
                }
                self.fallback = self.fallback.or(fallback);
                self.keep[i].link = Some(link);
            }
        }
        let observed = observe(
            &mut self.kernel,
            &self.keep[i].contract,
            self.keep[i].link.as_ref(),
        )?;
        self.keep[i].observed = Some(observed);
        Ok(())
    }

    /// Forgets what was observed: the next reconcile dumps the kernel.
    pub fn invalidate(&mut self) {
        for p in self.keep.iter_mut().chain(self.drop.iter_mut()) {
            p.observed = None;
        }
    }

    /// Folds a kernel notification into what is known of the kernel; returns whether
    /// that changed anything (an echo of routelb's own change does not).
    pub fn note(&mut self, n: &Notification) -> bool {
        let mut changed = false;
        for p in self.keep.iter_mut().chain(self.drop.iter_mut()) {
            if p.link_changed(n) {
                p.observed = None;
                changed = true;
            } else if let Some(o) = p.observed.as_mut() {
                changed |= o.note(&p.contract, p.link.as_ref().map(|l| l.index), n);
            }
        }
        changed
    }

    /// Makes the kernel match `state` under every kept contract and removes what the
    /// dropped ones left. Failures of single entries are reported, not fatal: every
    /// other change is still applied.
    pub fn reconcile(&mut self, state: &net::NodeState) -> anyhow::Result<Report> {
        for i in 0..self.keep.len() {
            self.look(i)?;
        }
        for p in &mut self.drop {
            if p.observed.is_none() {
                // A dropped contract's interface may be gone; its routes still count.
                p.link = self.kernel.link_get(&p.contract.interface)?;
                p.observed = Some(observe(&mut self.kernel, &p.contract, p.link.as_ref())?);
            }
        }
        let empty = Observed::default();
        let keep: Vec<Target> = self.keep.iter().map(|p| p.target(&empty)).collect();
        let drop: Vec<Target> = self.drop.iter().map(|p| p.target(&empty)).collect();
        let ops = net::plan(self.vip_mode, &keep, &drop, state);
        let mut report = Report::default();
        if ops.is_empty() {
            self.drop.clear();
            return Ok(report);
        }
        let results = self.kernel.apply(&ops);
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => {
                    self.note(&Notification::of(op));
                    match op {
                        Op::AddrAdd { .. } | Op::RouteAdd(_) | Op::RouteReplace(_) => {
                            report.added += 1
                        }
                        Op::AddrDel { .. } | Op::RouteDel(_) => report.removed += 1,
                    }
                }
                Err(e) => report.errors.push(e),
            }
        }
        if report.errors.is_empty() {
            self.drop.clear();
        } else {
            // Something is not as assumed: look again next time.
            self.invalidate();
        }
        Ok(report)
    }
}

/// What notifications concern a dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub indices: Vec<u32>,
    pub names: Vec<String>,
    pub tables: Vec<u32>,
    pub protocols: Vec<u8>,
}

impl Interest {
    /// Whether a notification may change what the dataplane owns: its interfaces'
    /// addresses and state, any route in its tables (another's route can take a slot),
    /// local routes with its protocols.
    pub fn concerns(&self, n: &Notification) -> bool {
        match n {
            Notification::NewAddr { index, .. } | Notification::DelAddr { index, .. } => {
                self.indices.contains(index)
            }
            Notification::NewRoute(r) | Notification::DelRoute(r) => {
                self.tables.contains(&r.table)
                    || (r.table == TABLE_LOCAL && r.local && self.protocols.contains(&r.protocol))
            }
            Notification::NewLink(l) | Notification::DelLink(l) => {
                self.indices.contains(&l.index) || self.names.contains(&l.name)
            }
        }
    }
}

/// Finds or creates an interface and sets it up.
fn ensure_link<K: Kernel>(
    kernel: &mut K,
    name: &str,
    kind: LinkKind,
) -> anyhow::Result<(Link, Option<&'static str>)> {
    let mut fallback = None;
    let existing = kernel
        .link_get(name)
        .with_context(|| format!("look up {name}"))?;
    let link = match existing {
        Some(l) => l,
        None => {
            let create = |kernel: &mut K, kind: &str| {
                kernel
                    .link_add(name, kind)
                    .with_context(|| format!("create {name} (type {kind})"))
            };
            match kind {
                LinkKind::Dummy => create(kernel, "dummy").context(
                    "this kernel may lack the dummy link type; use --lb-link-kind auto or bridge",
                )?,
                LinkKind::Bridge => create(kernel, "bridge")?,
                LinkKind::Auto => {
                    if let Err(e) = create(kernel, "dummy") {
                        tracing::warn!(interface = %name, error = %format!("{e:#}"), "the kernel has no dummy link type; using an empty bridge instead (it behaves the same)");
                        create(kernel, "bridge")?;
                        fallback = Some("bridge");
                    }
                }
            }
            kernel
                .link_get(name)?
                .with_context(|| format!("{name} was created but cannot be found"))?
        }
    };
    if !link.up {
        kernel
            .link_set_up(link.index)
            .with_context(|| format!("set {name} up"))?;
    }
    let link = kernel
        .link_get(name)?
        .with_context(|| format!("{name} disappeared"))?;
    if !link.up {
        bail!("{name} does not stay up");
    }
    Ok((link, fallback))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;
    use routelb_core::net::{NodeState, Prefix, Route};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn state(addrs: &[&str]) -> NodeState {
        let addresses: BTreeSet<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
        NodeState {
            prefixes: addresses.iter().map(|a| Prefix::host(*a)).collect(),
            addresses,
            blackholes: Default::default(),
        }
    }

    fn dataplane(kernel: FakeKernel) -> Dataplane<FakeKernel> {
        let mut dp = Dataplane::new(kernel, LinkKind::Auto, VipMode::Address);
        dp.set_contracts(&[KernelContract::default()]).unwrap();
        dp
    }

    fn route(dst: &str, table: u32, protocol: u8, oif: u32) -> Route {
        Route {
            dst: Prefix::host(ip(dst)),
            table,
            protocol,
            local: false,
            blackhole: false,
            oif: Some(oif),
        }
    }

    #[test]
    fn no_dummy_support_falls_back_to_a_bridge() {
        let mut kernel = FakeKernel::new();
        kernel.no_dummy = true;
        let dp = dataplane(kernel);
        assert_eq!(dp.fallback(), Some("bridge"));
    }

    #[test]
    fn adoption_changes_only_what_differs() {
        let mut k = FakeKernel::new().with_link("kube-lb0", "dummy");
        let index = k.link_get("kube-lb0").unwrap().unwrap().index;
        for a in ["203.0.113.10", "203.0.113.99"] {
            let prefix = Prefix::host(ip(a));
            k.external(&Op::AddrAdd {
                index,
                ifname: "kube-lb0".into(),
                prefix,
            })
            .unwrap();
            k.external(&Op::RouteAdd(route(a, 200, 249, index)))
                .unwrap();
        }
        let mut dp = dataplane(k);
        assert_eq!(
            dp.present(&KernelContract::default()).unwrap(),
            [ip("203.0.113.10"), ip("203.0.113.99")].into()
        );
        let report = dp
            .reconcile(&state(&["203.0.113.10", "203.0.113.11"]))
            .unwrap();
        assert_eq!((report.added, report.removed), (2, 2), "{report:?}");
        let applied: Vec<String> = dp
            .kernel()
            .applied
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            applied,
            [
                "add 203.0.113.11/32 to kube-lb0",
                "add route 203.0.113.11/32 table 200 proto 249",
                "remove route 203.0.113.99/32 table 200 proto 249",
                "remove 203.0.113.99/32 from kube-lb0",
            ],
            "what is wanted and present is never touched"
        );
    }

    #[test]
    fn drift_is_repaired_from_notifications_without_a_dump() {
        let mut dp = dataplane(FakeKernel::new());
        let want = state(&["203.0.113.10"]);
        dp.reconcile(&want).unwrap();
        dp.kernel().take_notes();
        let index = dp.kernel().link_get("kube-lb0").unwrap().unwrap().index;
        // Someone removes our route and puts their own in another of our slots.
        dp.kernel()
            .external(&Op::RouteDel(route("203.0.113.10", 200, 249, index)))
            .unwrap();
        for n in dp.kernel().take_notes() {
            dp.note(&n);
        }
        dp.kernel().applied.clear();
        let report = dp.reconcile(&want).unwrap();
        assert_eq!(report.added, 1);
        assert_eq!(
            dp.kernel().routes_in(200),
            ["203.0.113.10/32 proto 249 dev kube-lb0"]
        );
        // Another's route in the slot is not overwritten: reported, naming the change.
        let report = dp
            .reconcile(&state(&["203.0.113.10", "203.0.113.20"]))
            .unwrap();
        assert!(report.errors.is_empty());
        dp.kernel()
            .external(&Op::RouteReplace(route("203.0.113.20", 200, 4, index)))
            .unwrap();
        for n in dp.kernel().take_notes() {
            dp.note(&n);
        }
        let report = dp
            .reconcile(&state(&["203.0.113.10", "203.0.113.20"]))
            .unwrap();
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert_eq!(report.errors[0].errno, libc::EEXIST);
        assert!(
            report.errors[0]
                .to_string()
                .contains("add route 203.0.113.20/32 table 200 proto 249"),
            "{}",
            report.errors[0]
        );
    }

    #[test]
    fn a_deleted_interface_is_restored_with_its_entries() {
        let mut dp = dataplane(FakeKernel::new());
        let want = state(&["203.0.113.10"]);
        dp.reconcile(&want).unwrap();
        dp.kernel().external_link_del("kube-lb0");
        for n in dp.kernel().take_notes() {
            dp.note(&n);
        }
        dp.reconcile(&want).unwrap();
        assert_eq!(dp.kernel().addresses_on("kube-lb0"), ["203.0.113.10/32"]);
        assert_eq!(dp.kernel().routes_in(200).len(), 1);
    }

    #[test]
    fn moving_to_a_new_table_keeps_the_old_until_it_is_dropped() {
        let mut dp = dataplane(FakeKernel::new());
        let want = state(&["203.0.113.10"]);
        dp.reconcile(&want).unwrap();
        let new = KernelContract {
            table: 201,
            ..KernelContract::default()
        };
        // The daemon still reads 200: both are programmed, and follow the state.
        dp.set_contracts(&[KernelContract::default(), new.clone()])
            .unwrap();
        let both = state(&["203.0.113.10", "203.0.113.11"]);
        dp.reconcile(&both).unwrap();
        assert_eq!(dp.kernel().routes_in(200).len(), 2);
        assert_eq!(dp.kernel().routes_in(201).len(), 2);
        // It reads 201 now: 200 is emptied, the interface keeps its addresses.
        dp.set_contracts(std::slice::from_ref(&new)).unwrap();
        dp.reconcile(&both).unwrap();
        assert!(dp.kernel().routes_in(200).is_empty());
        assert_eq!(dp.kernel().routes_in(201).len(), 2);
        assert_eq!(dp.kernel().addresses_on("kube-lb0").len(), 2);
        assert!(dp.reconcile(&both).unwrap().errors.is_empty());
        assert!(!dp.reconcile(&both).unwrap().changed());
    }

    #[test]
    fn cleanup_removes_everything_owned_and_the_interface() {
        let mut dp = dataplane(FakeKernel::new());
        dp.reconcile(&state(&["203.0.113.10", "2001:db8::10"]))
            .unwrap();
        let mut k = std::mem::take(dp.kernel());
        let report = cleanup(&mut k, &KernelContract::default()).unwrap();
        assert_eq!(report.removed, 5, "{report:?}");
        assert!(k.routes_in(200).is_empty());
        assert!(k.link_get("kube-lb0").unwrap().is_none());
    }
}
