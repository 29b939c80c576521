//! The agent's dataplane: makes the node's kernel match a desired state.
//!
//! routelb owns, and only touches: the `kube-lb0` interface and its addresses, routes in
//! its table (default 200) with its protocol (default 249), and — in `local-route` VIP
//! mode — `local` routes with its protocol in the kernel's local table. Reconciling is
//! read, decide, write: dump what is owned, compute the difference ([`plan`], pure),
//! apply it in batches, adding before removing. What is already right is never touched,
//! so an agent restart withdraws nothing that is still wanted.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netlink::{Link, Monitor, Netlink, Notification, Op, Prefix, Route, TABLE_LOCAL};

/// How `kube-lb0` is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkKind {
    /// `dummy`, falling back to an empty bridge where the kernel has no dummy support.
    #[default]
    Auto,
    Dummy,
    Bridge,
}

/// How the node accepts traffic for an address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VipMode {
    /// The address on kube-lb0 (`ip addr show kube-lb0` lists it). Adding n addresses to
    /// one interface costs O(n²) in the kernel: fine for hundreds, slow for many thousands.
    #[default]
    Address,
    /// A `local` route per address in the local table (`ip route show table local proto
    /// 249`): linear, for nodes with thousands of addresses.
    LocalRoute,
}

/// Where and how the dataplane writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interface: String,
    pub table: u32,
    pub protocol: u8,
    pub link_kind: LinkKind,
    pub vip_mode: VipMode,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interface: "kube-lb0".into(),
            table: 200,
            protocol: 249,
            link_kind: LinkKind::Auto,
            vip_mode: VipMode::Address,
        }
    }
}

/// What the node should announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Addresses the node accepts traffic for.
    pub addresses: BTreeSet<IpAddr>,
    /// Prefixes routed to kube-lb0 in the routelb table, for the routing daemon.
    pub prefixes: BTreeSet<Prefix>,
}

/// What the kernel has that routelb owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub addresses: BTreeSet<Prefix>,
    pub routes: BTreeSet<Route>,
    pub local_routes: BTreeSet<Route>,
}

/// What the kernel has that routelb owns: addresses on the interface `index` (none
/// without one), routes in its table, and local routes, all with its protocol.
fn observe(nl: &mut Netlink, cfg: &Config, index: Option<u32>) -> io::Result<Observed> {
    let addresses = match index {
        Some(i) => nl
            .addr_dump(i)?
            .into_iter()
            .filter(|p| !link_local(p))
            .collect(),
        None => BTreeSet::new(),
    };
    let routes = nl
        .route_dump(cfg.table, cfg.protocol)?
        .into_iter()
        .collect();
    let local_routes = nl
        .route_dump(TABLE_LOCAL, cfg.protocol)?
        .into_iter()
        .filter(|r| r.local)
        .collect();
    Ok(Observed {
        addresses,
        routes,
        local_routes,
    })
}

/// The changes that turn `observed` into `desired`: additions first (make before break).
pub fn plan(cfg: &Config, link: &Link, desired: &Desired, observed: &Observed) -> Vec<Op> {
    let addresses: BTreeSet<Prefix> = match cfg.vip_mode {
        VipMode::Address => desired.addresses.iter().map(|a| Prefix::host(*a)).collect(),
        VipMode::LocalRoute => BTreeSet::new(),
    };
    let routes: BTreeSet<Route> = desired
        .prefixes
        .iter()
        .map(|p| Route {
            dst: Prefix::network(p.addr, p.len),
            table: cfg.table,
            protocol: cfg.protocol,
            local: false,
            oif: Some(link.index),
        })
        .collect();
    let local_routes: BTreeSet<Route> = match cfg.vip_mode {
        VipMode::Address => BTreeSet::new(),
        VipMode::LocalRoute => desired
            .addresses
            .iter()
            .map(|a| Route {
                dst: Prefix::host(*a),
                table: TABLE_LOCAL,
                protocol: cfg.protocol,
                local: true,
                oif: Some(link.index),
            })
            .collect(),
    };
    let addr_op = |add: bool, prefix: Prefix| {
        let (index, ifname) = (link.index, link.name.clone());
        if add {
            Op::AddrAdd {
                index,
                ifname,
                prefix,
            }
        } else {
            Op::AddrDel {
                index,
                ifname,
                prefix,
            }
        }
    };
    let mut ops = Vec::new();
    ops.extend(
        addresses
            .difference(&observed.addresses)
            .map(|p| addr_op(true, *p)),
    );
    ops.extend(
        local_routes
            .difference(&observed.local_routes)
            .map(|r| Op::RouteAdd(*r)),
    );
    ops.extend(
        routes
            .difference(&observed.routes)
            .map(|r| Op::RouteAdd(*r)),
    );
    ops.extend(
        observed
            .routes
            .difference(&routes)
            .map(|r| Op::RouteDel(*r)),
    );
    ops.extend(
        observed
            .local_routes
            .difference(&local_routes)
            .map(|r| Op::RouteDel(*r)),
    );
    ops.extend(
        observed
            .addresses
            .difference(&addresses)
            .map(|p| addr_op(false, *p)),
    );
    ops
}

/// The outcome of one reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub added: usize,
    pub removed: usize,
    /// One message per failed change, naming it ("add 203.0.113.10/32 to kube-lb0: ...").
    pub errors: Vec<String>,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.added + self.removed > 0
    }
}

fn link_local(p: &Prefix) -> bool {
    match p.addr {
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// The dataplane of one node (one network namespace).
///
/// It keeps what it observed in the kernel, updated by its own changes and by netlink
/// notifications ([`Dataplane::note`]), so a reconcile does not dump tens of thousands
/// of entries for a single change; [`Dataplane::invalidate`] forces a full dump (periodic
/// resync, lost notifications).
#[derive(Debug)]
pub struct Dataplane {
    nl: Netlink,
    cfg: Config,
    link: Link,
    /// The kind used when the requested one was unavailable (reported once).
    fallback: Option<&'static str>,
    cache: Option<Observed>,
}

impl Dataplane {
    /// Opens netlink and makes sure the interface exists and is up. An existing interface
    /// is adopted as it is.
    pub fn open(cfg: Config) -> anyhow::Result<Dataplane> {
        let mut nl = Netlink::new().context("open a netlink socket")?;
        let (link, fallback) = ensure_link(&mut nl, &cfg)?;
        Ok(Dataplane {
            nl,
            cfg,
            link,
            fallback,
            cache: None,
        })
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// `Some("bridge")` when kube-lb0 had to be an empty bridge.
    pub fn fallback(&self) -> Option<&'static str> {
        self.fallback
    }

    /// What the kernel has that routelb owns.
    pub fn observe(&mut self) -> io::Result<Observed> {
        observe(&mut self.nl, &self.cfg, Some(self.link.index))
    }

    /// Forgets what was observed: the next reconcile dumps the kernel.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Folds a kernel notification into what is known of the kernel.
    pub fn note(&mut self, n: &Notification) {
        let (index, table, protocol) = (self.link.index, self.cfg.table, self.cfg.protocol);
        let name = self.cfg.interface.clone();
        let Some(c) = self.cache.as_mut() else { return };
        match n {
            Notification::NewAddr { index: i, prefix } if *i == index && !link_local(prefix) => {
                c.addresses.insert(*prefix);
            }
            Notification::DelAddr { index: i, prefix } if *i == index => {
                c.addresses.remove(prefix);
            }
            Notification::NewRoute(r) if r.protocol == protocol && r.table == table && !r.local => {
                c.routes.insert(*r);
            }
            Notification::DelRoute(r) if r.protocol == protocol && r.table == table && !r.local => {
                c.routes.remove(r);
            }
            Notification::NewRoute(r)
                if r.protocol == protocol && r.table == TABLE_LOCAL && r.local =>
            {
                c.local_routes.insert(*r);
            }
            Notification::DelRoute(r)
                if r.protocol == protocol && r.table == TABLE_LOCAL && r.local =>
            {
                c.local_routes.remove(r);
            }
            // Our interface deleted, down, or replaced: look again.
            Notification::DelLink(l) if l.index == index || l.name == name => self.cache = None,
            Notification::NewLink(l)
                if (l.index == index || l.name == name) && (!l.up || l.index != index) =>
            {
                self.cache = None;
            }
            _ => {}
        }
    }

    /// Makes the kernel match `desired`. Failures of single entries are reported, not
    /// fatal: every other change is still applied.
    pub fn reconcile(&mut self, desired: &Desired) -> anyhow::Result<Report> {
        if self.cache.is_none() {
            // The interface may have been deleted or recreated behind our back.
            match self.nl.link_get(&self.cfg.interface)? {
                Some(l) if l.index == self.link.index && l.up => {}
                _ => {
                    let (link, fallback) = ensure_link(&mut self.nl, &self.cfg)?;
                    tracing::warn!(interface = %link.name, index = link.index, "interface was missing or down; restored");
                    self.link = link;
                    self.fallback = self.fallback.or(fallback);
                }
            }
            let observed = self.observe().with_context(|| {
                format!(
                    "read the addresses of {} and routes of table {}",
                    self.cfg.interface, self.cfg.table
                )
            })?;
            self.cache = Some(observed);
        }
        let cache = self.cache.as_mut().expect("observed");
        let ops = plan(&self.cfg, &self.link, desired, cache);
        let mut report = Report::default();
        if ops.is_empty() {
            return Ok(report);
        }
        let results = self.nl.apply(&ops);
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => match op {
                    Op::AddrAdd { prefix, .. } => {
                        cache.addresses.insert(*prefix);
                        report.added += 1;
                    }
                    Op::RouteAdd(r) => {
                        if r.local {
                            cache.local_routes.insert(*r);
                        } else {
                            cache.routes.insert(*r);
                        }
                        report.added += 1;
                    }
                    Op::AddrDel { prefix, .. } => {
                        cache.addresses.remove(prefix);
                        report.removed += 1;
                    }
                    Op::RouteDel(r) => {
                        cache.routes.remove(r);
                        cache.local_routes.remove(r);
                        report.removed += 1;
                    }
                },
                Err(e) if e.errno == libc::EEXIST => {
                    report
                        .errors
                        .push(format!("{e} (an entry routelb does not own is in the way)"));
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        if !report.errors.is_empty() {
            // Something is not as assumed: look again next time.
            self.cache = None;
        }
        Ok(report)
    }

    /// Removes everything routelb put into the kernel, then the interface. Idempotent.
    pub fn cleanup(cfg: &Config) -> anyhow::Result<Report> {
        let mut nl = Netlink::new().context("open a netlink socket")?;
        let link = nl.link_get(&cfg.interface)?;
        let observed = observe(&mut nl, cfg, link.as_ref().map(|l| l.index))?;
        let mut ops: Vec<Op> = (observed.routes.into_iter())
            .chain(observed.local_routes)
            .map(Op::RouteDel)
            .collect();
        if let Some(l) = &link {
            ops.extend(observed.addresses.into_iter().map(|prefix| Op::AddrDel {
                index: l.index,
                ifname: l.name.clone(),
                prefix,
            }));
        }
        let mut report = Report::default();
        for (op, result) in ops.iter().zip(nl.apply(&ops)) {
            match result {
                Ok(()) => report.removed += 1,
                Err(e) => report.errors.push(format!("{op}: {}", e.error)),
            }
        }
        if let Some(l) = link {
            match nl.link_del(l.index) {
                Ok(()) => report.removed += 1,
                Err(e) => report.errors.push(format!("delete {}: {e}", l.name)),
            }
        }
        Ok(report)
    }
}

/// Finds or creates the interface and sets it up.
fn ensure_link(nl: &mut Netlink, cfg: &Config) -> anyhow::Result<(Link, Option<&'static str>)> {
    let name = &cfg.interface;
    let mut fallback = None;
    let existing = nl
        .link_get(name)
        .with_context(|| format!("look up {name}"))?;
    let link = match existing {
        Some(l) => l,
        None => {
            let create = |nl: &mut Netlink, kind: &str| {
                nl.link_add(name, kind)
                    .with_context(|| format!("create {name} (type {kind})"))
            };
            match cfg.link_kind {
                LinkKind::Dummy => create(nl, "dummy").context(
                    "this kernel may lack the dummy link type; use --lb-link-kind auto or bridge",
                )?,
                LinkKind::Bridge => create(nl, "bridge")?,
                LinkKind::Auto => {
                    if let Err(e) = create(nl, "dummy") {
                        tracing::warn!(interface = %name, error = %format!("{e:#}"), "the kernel has no dummy link type; using an empty bridge instead (it behaves the same)");
                        create(nl, "bridge")?;
                        fallback = Some("bridge");
                    }
                }
            }
            nl.link_get(name)?
                .with_context(|| format!("{name} was created but cannot be found"))?
        }
    };
    if !link.up {
        nl.link_set_up(link.index)
            .with_context(|| format!("set {name} up"))?;
    }
    let link = nl
        .link_get(name)?
        .with_context(|| format!("{name} disappeared"))?;
    if !link.up {
        bail!("{name} does not stay up");
    }
    Ok((link, fallback))
}

// ----- the running dataplane ---------------------------------------------------------------

/// What the running dataplane last did.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub reconciles: u64,
    /// Changes made since start (added + removed).
    pub changes: u64,
    /// Failed changes since start.
    pub errors: u64,
    /// Drift repairs: reconciles triggered by someone else's change that fixed something.
    pub repairs: u64,
    pub interface: String,
    pub fallback: Option<&'static str>,
    pub last_error: Option<String>,
    /// Addresses the node already accepted traffic for when the dataplane started
    /// (adopted from a previous run).
    pub adopted: BTreeSet<IpAddr>,
}

enum Cmd {
    Desired(Desired),
    /// Notifications about owned entries (possibly our own changes echoing back).
    Notes(Vec<Notification>),
    /// Notifications were lost: look at the kernel again.
    Resync,
    Stop,
}

/// A dataplane running on its own thread: reconciles when the desired state changes,
/// when netlink notifications show a change to owned entries (drift), and every
/// `resync` as a safety net.
#[derive(Debug)]
pub struct Running {
    tx: mpsc::Sender<Cmd>,
    status: Arc<Mutex<Status>>,
    stopped: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts in the caller's network namespace. Nothing is reconciled until the first
    /// desired state arrives, so an agent that has not synced yet withdraws nothing.
    pub fn start(cfg: Config, resync: Duration) -> anyhow::Result<Running> {
        let mut dp = Dataplane::open(cfg.clone())?;
        let monitor = Monitor::new().context("subscribe to netlink notifications")?;
        let index = Arc::new(AtomicU32::new(dp.link().index));
        let observed = dp
            .observe()
            .context("read the owned addresses and routes")?;
        let adopted = observed
            .addresses
            .iter()
            .map(|p| p.addr)
            .chain(observed.local_routes.iter().map(|r| r.dst.addr))
            .collect();
        let status = Arc::new(Mutex::new(Status {
            interface: dp.link().name.clone(),
            fallback: dp.fallback(),
            adopted,
            ..Status::default()
        }));
        let (tx, rx) = mpsc::channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let watcher = {
            let tx = tx.clone();
            let index = index.clone();
            let cfg = cfg.clone();
            let stopped = stopped.clone();
            std::thread::Builder::new()
                .name("dataplane-monitor".into())
                .spawn(move || watch_drift(monitor, &cfg, &index, &tx, &stopped))?
        };
        let worker = {
            let status = status.clone();
            std::thread::Builder::new()
                .name("dataplane".into())
                .spawn(move || run(dp, &rx, resync, &index, &status))?
        };
        Ok(Running {
            tx,
            status,
            stopped,
            threads: vec![worker, watcher],
        })
    }

    /// Starts inside the network namespace at `netns` (labs and tests: an agent on the
    /// host programming a node namespace), or in the caller's when `None`.
    pub fn start_in(
        netns: Option<&std::path::Path>,
        cfg: Config,
        resync: Duration,
    ) -> anyhow::Result<Running> {
        let Some(path) = netns else {
            return Running::start(cfg, resync);
        };
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path)
                .with_context(|| format!("open network namespace {}", path.display()))?;
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("enter network namespace {}", path.display()))?;
            // Threads started from here live in the namespace too.
            Running::start(cfg, resync)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the dataplane start thread panicked"))?
    }

    /// Sets the desired state (the latest one wins).
    pub fn set(&self, desired: Desired) {
        let _ = self.tx.send(Cmd::Desired(desired));
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the threads. The kernel keeps everything (hitless restarts).
    pub fn stop(mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn concerns_us(n: &Notification, cfg: &Config, index: u32) -> bool {
    match n {
        Notification::NewAddr { index: i, .. } | Notification::DelAddr { index: i, .. } => {
            *i == index
        }
        Notification::NewRoute(r) | Notification::DelRoute(r) => {
            r.protocol == cfg.protocol
                && (r.table == cfg.table || (r.table == TABLE_LOCAL && r.local))
        }
        Notification::NewLink(l) | Notification::DelLink(l) => {
            l.index == index || l.name == cfg.interface
        }
    }
}

fn watch_drift(
    mut monitor: Monitor,
    cfg: &Config,
    index: &AtomicU32,
    tx: &mpsc::Sender<Cmd>,
    stopped: &AtomicBool,
) {
    while !stopped.load(Ordering::Relaxed) {
        let cmd = match monitor.next(Duration::from_millis(500)) {
            Ok(notes) => {
                let ours: Vec<Notification> = notes
                    .into_iter()
                    .filter(|n| concerns_us(n, cfg, index.load(Ordering::Relaxed)))
                    .collect();
                if ours.is_empty() {
                    continue;
                }
                Cmd::Notes(ours)
            }
            Err(_) => Cmd::Resync,
        };
        if tx.send(cmd).is_err() {
            return;
        }
    }
}

fn run(
    mut dp: Dataplane,
    rx: &mpsc::Receiver<Cmd>,
    resync: Duration,
    index: &AtomicU32,
    status: &Mutex<Status>,
) {
    let mut desired: Option<Desired> = None;
    let mut next_resync = Instant::now() + resync;
    loop {
        let wait = next_resync.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(cmd) => Some(cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let (mut dirty, mut drift) = (false, false);
        if first.is_none() {
            // The periodic resync: a full look at the kernel.
            dp.invalidate();
            next_resync = Instant::now() + resync;
            dirty = true;
        }
        // Take everything already queued: a burst becomes one reconcile.
        for cmd in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match cmd {
                Cmd::Stop => return,
                Cmd::Desired(d) => {
                    dirty |= desired.as_ref() != Some(&d);
                    desired = Some(d);
                }
                Cmd::Notes(notes) => {
                    for n in &notes {
                        dp.note(n);
                    }
                    drift = true;
                }
                Cmd::Resync => {
                    dp.invalidate();
                    drift = true;
                }
            }
        }
        let Some(want) = &desired else { continue };
        if !dirty && !drift {
            continue;
        }
        let result = dp.reconcile(want);
        index.store(dp.link().index, Ordering::Relaxed);
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.reconciles += 1;
        match result {
            Ok(report) => {
                s.changes += (report.added + report.removed) as u64;
                s.errors += report.errors.len() as u64;
                if drift && !dirty && report.changed() {
                    s.repairs += 1;
                    tracing::info!(
                        added = report.added,
                        removed = report.removed,
                        "repaired drift in owned addresses and routes"
                    );
                }
                for e in &report.errors {
                    tracing::warn!(error = %e, "dataplane change failed");
                }
                s.last_error = report.errors.first().cloned();
                s.fallback = dp.fallback();
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reconcile failed; retrying");
                s.errors += 1;
                s.last_error = Some(format!("{e:#}"));
                dp.invalidate();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            index: 7,
            name: "kube-lb0".into(),
            kind: Some("dummy".into()),
            up: true,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(dst: &str, len: u8, table: u32, local: bool) -> Route {
        Route {
            dst: Prefix::new(ip(dst), len),
            table,
            protocol: 249,
            local,
            oif: Some(7),
        }
    }

    #[test]
    fn plans_only_the_difference_adding_before_removing() {
        let cfg = Config::default();
        let desired = Desired {
            addresses: [ip("203.0.113.10"), ip("2001:db8::10")].into(),
            prefixes: [
                Prefix::new(ip("203.0.113.10"), 24),
                Prefix::host(ip("2001:db8::10")),
            ]
            .into(),
        };
        let observed = Observed {
            addresses: [
                Prefix::host(ip("203.0.113.10")),
                Prefix::host(ip("203.0.113.99")),
            ]
            .into(),
            routes: [
                route("203.0.113.0", 24, 200, false),
                route("203.0.113.99", 32, 200, false),
            ]
            .into(),
            local_routes: BTreeSet::new(),
        };
        let ops: Vec<String> = plan(&cfg, &link(), &desired, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ops,
            [
                "add 2001:db8::10/128 to kube-lb0",
                "add route 2001:db8::10/128 table 200 proto 249",
                "remove route 203.0.113.99/32 table 200 proto 249",
                "remove 203.0.113.99/32 from kube-lb0",
            ]
        );
        // Nothing to do when the kernel already matches.
        let matching = Observed {
            addresses: desired.addresses.iter().map(|a| Prefix::host(*a)).collect(),
            routes: [
                route("203.0.113.0", 24, 200, false),
                route("2001:db8::10", 128, 200, false),
            ]
            .into(),
            local_routes: BTreeSet::new(),
        };
        assert!(plan(&cfg, &link(), &desired, &matching).is_empty());
    }

    #[test]
    fn local_route_mode_uses_local_routes_instead_of_addresses() {
        let cfg = Config {
            vip_mode: VipMode::LocalRoute,
            ..Config::default()
        };
        let desired = Desired {
            addresses: [ip("203.0.113.10")].into(),
            prefixes: BTreeSet::new(),
        };
        let observed = Observed {
            addresses: [Prefix::host(ip("203.0.113.10"))].into(),
            ..Observed::default()
        };
        let ops: Vec<String> = plan(&cfg, &link(), &desired, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ops,
            [
                "add local route 203.0.113.10/32 table 255 proto 249",
                "remove 203.0.113.10/32 from kube-lb0"
            ]
        );
    }
}
