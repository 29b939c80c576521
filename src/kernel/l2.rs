//! The LAN side of local (L2) pools, on its own thread in the node's namespace: the
//! addresses this node answers for, on the LAN interface the election chose, and the
//! announcements that move clients to this node.
//!
//! An address goes on the interface as a host address (`/32`, `/128`) marked with
//! routelb's address protocol (`IFA_PROTO`, so ownership is read from the kernel, never
//! guessed), `noprefixroute` and deprecated (never a source for the node's own
//! traffic), and with a short valid lifetime that this thread keeps refreshing: if the
//! agent dies or freezes, the kernel removes the address by itself, so a dead agent never
//! leaves its node answering beside the one that took over. On a graceful stop the
//! lifetime is extended to the restart grace, so a restarting agent drops nothing.
//!
//! Each new address is announced at once (gratuitous ARP request and reply, or an
//! unsolicited Neighbor Advertisement with Override) and again on a short schedule, so a
//! lost frame does not leave clients on the old node's MAC. The same packet socket hears
//! the LAN's ARP: another MAC claiming an address this node holds is a split brain, and
//! is reported; this node yields such an address when it cannot prove its own record is
//! current.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use routelb_core::l2::LanInterface;
use routelb_core::net::Prefix;
use tokio::sync::watch;

use super::arp::{Wire, mac_string};
use super::netlink::{LanAddress, LanLink, Netlink};
use crate::clock::boottime;

/// The address protocol (`IFA_PROTO`) marking routelb's LAN addresses.
pub const ADDRESS_PROTOCOL: u8 = 249;
/// When a new address is announced, after it is put on the interface.
const SCHEDULE_MS: [u64; 5] = [0, 200, 500, 1000, 2000];
/// How often each held address is probed for a second holder.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How the LAN side runs.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often lifetimes are refreshed and the links looked at.
    pub refresh: Duration,
    /// The address's lifetime in the kernel after each refresh (whole seconds).
    pub valid: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            refresh: Duration::from_millis(500),
            valid: Duration::from_secs(2),
        }
    }
}

/// What the agent wants of the LAN side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// Answer for exactly these addresses, each on its interface (by name).
    Set(BTreeMap<IpAddr, String>),
    /// The agent cannot prove its view is current: keep what is held (refreshed), add
    /// nothing, and yield any address another node claims on the wire.
    Hold,
}

/// Another MAC claiming an address this node holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub addr: IpAddr,
    pub interface: String,
    pub mac: String,
}

/// What the LAN side sees and holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The node's LAN interfaces (running, ARP-capable, with an address) and subnets.
    pub interfaces: Vec<LanInterface>,
    /// The addresses this node answers for now, and where.
    pub held: BTreeMap<IpAddr, String>,
    /// Split brains heard since start (latest per address).
    pub conflicts: BTreeSet<Conflict>,
    /// kube-proxy's IPVS interface without strict ARP: why every node answers ARP.
    pub ipvs_trap: Option<String>,
    /// Whether a first look at the kernel is done.
    pub ready: bool,
    pub announcements: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

enum Cmd {
    Want(Want),
    Named(BTreeSet<String>),
    Stop(Duration, mpsc::Sender<()>),
}

/// The LAN side on its thread.
#[derive(Debug)]
pub struct Lan {
    tx: mpsc::Sender<Cmd>,
    view: watch::Receiver<View>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lan {
    /// Starts in the network namespace at `netns` (or the caller's).
    pub fn start_in(netns: Option<&Path>, timing: Timing) -> anyhow::Result<Lan> {
        let (tx, rx) = mpsc::channel();
        let (view_tx, view) = watch::channel(View::default());
        let netns = netns.map(Path::to_path_buf);
        let (started_tx, started) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lan".into())
            .spawn(move || {
                let opened = (|| {
                    if let Some(path) = &netns {
                        super::enter_netns(path)?;
                    }
                    Netlink::new().context("open a netlink socket")
                })();
                match opened {
                    Ok(nl) => {
                        let _ = started_tx.send(Ok(()));
                        Worker::new(nl, timing, view_tx).run(&rx);
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            })?;
        started
            .recv()
            .map_err(|_| anyhow::anyhow!("the LAN thread died at start"))??;
        Ok(Lan {
            tx,
            view,
            thread: Some(thread),
        })
    }

    /// Sets what to answer for (repeat it: a want not repeated within the address
    /// lifetime counts as [`Want::Hold`], so a frozen agent adds nothing on waking).
    pub fn want(&self, want: Want) {
        let _ = self.tx.send(Cmd::Want(want));
    }

    /// Interfaces that pools name: published even where their names look unlike a LAN.
    pub fn named(&self, names: BTreeSet<String>) {
        let _ = self.tx.send(Cmd::Named(names));
    }

    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Stops, leaving every held address valid for `grace` (a restart drops nothing).
    pub fn stop(mut self, grace: Duration) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Cmd::Stop(grace, ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    nl: Netlink,
    timing: Timing,
    view_tx: watch::Sender<View>,
    view: View,
    want: Want,
    /// When the want was last repeated (boot time).
    want_at: Duration,
    named: BTreeSet<String>,
    links: Vec<LanLink>,
    /// Frames due: (when, address, link index).
    due: Vec<(Duration, IpAddr, u32)>,
    wires: HashMap<u32, Wire>,
    probed: Duration,
    /// Addresses yielded to another holder (until the agent asks for them anew).
    yielded: BTreeSet<IpAddr>,
}

impl Worker {
    fn new(nl: Netlink, timing: Timing, view_tx: watch::Sender<View>) -> Worker {
        Worker {
            nl,
            timing,
            view_tx,
            view: View::default(),
            want: Want::Hold,
            want_at: Duration::ZERO,
            named: BTreeSet::new(),
            links: Vec::new(),
            due: Vec::new(),
            wires: HashMap::new(),
            probed: Duration::ZERO,
            yielded: BTreeSet::new(),
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Cmd>) {
        let mut next = Duration::ZERO;
        loop {
            let now = boottime();
            let next_frame = self.due.iter().map(|d| d.0).min().unwrap_or(next);
            let wait = next.min(next_frame).saturating_sub(now);
            let mut dirty = false;
            match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
                Ok(cmd) => {
                    for cmd in std::iter::once(cmd).chain(std::iter::from_fn(|| rx.try_recv().ok()))
                    {
                        match cmd {
                            Cmd::Want(w) => {
                                dirty |= w != self.want;
                                if let Want::Set(m) = &w {
                                    self.yielded.retain(|a| !m.contains_key(a));
                                }
                                self.want = w;
                                self.want_at = boottime();
                            }
                            Cmd::Named(n) => self.named = n,
                            Cmd::Stop(grace, ack) => {
                                self.extend(grace);
                                let _ = ack.send(());
                                return;
                            }
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = boottime();
            if dirty || now >= next {
                self.reconcile(now);
                next = now + self.timing.refresh;
            }
            self.listen();
            self.send_due(now);
            self.view_tx.send_if_modified(|v| {
                let changed = *v != self.view;
                if changed {
                    v.clone_from(&self.view);
                }
                changed
            });
        }
    }

    fn fail(&mut self, what: String) {
        tracing::warn!(error = %what, "LAN side");
        self.view.errors += 1;
        self.view.last_error = Some(what);
    }

    /// Looks at links and addresses, then puts, refreshes and removes.
    fn reconcile(&mut self, now: Duration) {
        let (links, addrs) = match (self.nl.lan_links(), self.nl.lan_addresses()) {
            (Ok(l), Ok(a)) => (l, a),
            (Err(e), _) | (_, Err(e)) => {
                self.fail(format!("read links and addresses: {e}"));
                return;
            }
        };
        self.links = links;
        self.view.interfaces = self.interfaces(&addrs);
        self.view.ipvs_trap = ipvs_trap(&self.links);
        let by_name: HashMap<&str, &LanLink> =
            self.links.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut present: BTreeMap<IpAddr, u32> = addrs
            .iter()
            .filter(|a| a.protocol == ADDRESS_PROTOCOL)
            .map(|a| (a.prefix.addr, a.index))
            .collect();
        if !self.view.ready {
            // At start, an address is adopted only if a graceful stop extended it past the
            // usual lifetime. One about to expire is a crashed agent's: another node may
            // already answer for it, so it goes now rather than come back as a claim.
            let keep = self.timing.valid.as_secs();
            for a in addrs.iter().filter(|a| a.protocol == ADDRESS_PROTOCOL) {
                if a.valid_secs.is_some_and(|v| u64::from(v) <= keep) {
                    tracing::info!(address = %a.prefix.addr, "a crashed agent's LAN address: removed, not adopted");
                    self.yielded.insert(a.prefix.addr);
                }
            }
            present.retain(|a, _| !self.yielded.contains(a));
            let gone: Vec<(u32, IpAddr)> = addrs
                .iter()
                .filter(|a| a.protocol == ADDRESS_PROTOCOL && self.yielded.contains(&a.prefix.addr))
                .map(|a| (a.index, a.prefix.addr))
                .collect();
            let _ = self
                .nl
                .vip_apply(&[], &gone, ADDRESS_PROTOCOL, self.timing.valid);
        }
        // A want not repeated within the lifetime is stale: the agent froze or is stuck.
        let stale = now.saturating_sub(self.want_at) >= self.timing.valid;
        let wanted: BTreeMap<IpAddr, u32> = match &self.want {
            Want::Set(m) if !stale => m
                .iter()
                .filter(|(a, _)| !self.yielded.contains(a))
                .filter_map(|(a, name)| {
                    let l = by_name.get(name.as_str())?;
                    (l.running && l.mac.is_some()).then_some((*a, l.index))
                })
                .collect(),
            _ => present
                .iter()
                .filter(|(a, _)| !self.yielded.contains(a))
                .map(|(a, i)| (*a, *i))
                .collect(),
        };
        let set: Vec<(u32, IpAddr)> = wanted.iter().map(|(a, i)| (*i, *a)).collect();
        let remove: Vec<(u32, IpAddr)> = present
            .iter()
            .filter(|(a, i)| wanted.get(a) != Some(i))
            .map(|(a, i)| (*i, *a))
            .collect();
        let results = self
            .nl
            .vip_apply(&set, &remove, ADDRESS_PROTOCOL, self.timing.valid);
        let mut held = BTreeMap::new();
        let names: HashMap<u32, String> = self
            .links
            .iter()
            .map(|l| (l.index, l.name.clone()))
            .collect();
        let mut failures = Vec::new();
        for ((index, addr), r) in set.iter().zip(&results) {
            match r {
                Ok(()) => {
                    held.insert(*addr, names.get(index).cloned().unwrap_or_default());
                    if present.get(addr) != Some(index) {
                        for ms in SCHEDULE_MS {
                            self.due
                                .push((now + Duration::from_millis(ms), *addr, *index));
                        }
                    }
                }
                Err(e) => failures.push(format!(
                    "put {addr} on {}: {e}",
                    names.get(index).map_or("?", |s| s)
                )),
            }
        }
        for ((index, addr), r) in remove.iter().zip(&results[set.len()..]) {
            if let Err(e) = r {
                held.insert(*addr, names.get(index).cloned().unwrap_or_default());
                failures.push(format!("remove {addr}: {e}"));
            }
        }
        for f in failures {
            self.fail(f);
        }
        // Frames for addresses no longer held are not sent.
        self.due
            .retain(|(_, a, i)| held.contains_key(a) && wanted.get(a) == Some(i));
        self.view.held = held;
        self.view.ready = true;
    }

    /// The LAN interfaces: running, ARP-capable, with a routable address (or named by a
    /// pool), and their subnets (routelb's own addresses left out).
    fn interfaces(&self, addrs: &[LanAddress]) -> Vec<LanInterface> {
        self.links
            .iter()
            .filter(|l| l.running && l.mac.is_some() && l.name != "lo")
            .filter_map(|l| {
                let subnets: Vec<Prefix> = addrs
                    .iter()
                    .filter(|a| a.index == l.index && a.protocol != ADDRESS_PROTOCOL)
                    .map(|a| a.prefix)
                    .filter(|p| !p.is_link_local())
                    .collect();
                (!subnets.is_empty() || self.named.contains(&l.name)).then(|| LanInterface {
                    name: l.name.clone(),
                    subnets,
                })
            })
            .collect()
    }

    fn wire(&mut self, index: u32) -> Option<&Wire> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.wires.entry(index) {
            match Wire::open(index) {
                Ok(w) => {
                    slot.insert(w);
                }
                Err(e) => {
                    self.fail(format!("open a packet socket on link {index}: {e}"));
                    return None;
                }
            }
        }
        self.wires.get(&index)
    }

    fn mac(&self, index: u32) -> Option<[u8; 6]> {
        self.links.iter().find(|l| l.index == index)?.mac
    }

    fn send_due(&mut self, now: Duration) {
        let (ready, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|d| d.0 <= now);
        self.due = later;
        for (_, addr, index) in ready {
            let Some(mac) = self.mac(index) else { continue };
            let sent = self.wire(index).map(|w| w.announce(mac, addr));
            match sent {
                Some(Ok(())) => self.view.announcements += 1,
                Some(Err(e)) => {
                    self.wires.remove(&index);
                    self.fail(format!("announce {addr}: {e}"));
                }
                None => {}
            }
        }
        // Probe held addresses now and then (ARP probe, DAD solicitation): a second
        // holder replies.
        if now.saturating_sub(self.probed) >= PROBE_EVERY {
            self.probed = now;
            let held: Vec<(IpAddr, u32)> = self
                .view
                .held
                .iter()
                .filter_map(|(a, name)| {
                    let l = self.links.iter().find(|l| &l.name == name)?;
                    Some((*a, l.index))
                })
                .collect();
            for (addr, index) in held {
                let Some(mac) = self.mac(index) else {
                    continue;
                };
                if let Some(w) = self.wire(index) {
                    let _ = w.probe(mac, addr);
                }
            }
        }
    }

    /// Reads the ARP and Neighbor Advertisements heard on the interfaces that hold
    /// addresses.
    fn listen(&mut self) {
        let mut yield_now = Vec::new();
        for (index, wire) in &self.wires {
            let Some(link) = self.links.iter().find(|l| l.index == *index) else {
                continue;
            };
            for h in wire.claims() {
                let addr = h.addr;
                if Some(h.mac) == link.mac || self.view.held.get(&addr) != Some(&link.name) {
                    continue;
                }
                let c = Conflict {
                    addr,
                    interface: link.name.clone(),
                    mac: mac_string(&h.mac),
                };
                if !self.view.conflicts.contains(&c) {
                    tracing::warn!(address = %addr, interface = %link.name, mac = %c.mac, "another node claims an address this node answers for");
                    self.view.conflicts.retain(|o| o.addr != addr);
                    self.view.conflicts.insert(c);
                }
                if matches!(self.want, Want::Hold) {
                    yield_now.push(addr);
                }
            }
        }
        if !yield_now.is_empty() {
            tracing::warn!(addresses = ?yield_now, "yielding addresses claimed by another node while this node's record is not current");
            self.yielded.extend(yield_now);
            self.reconcile(boottime());
        }
    }

    /// Extends every held address to `grace` (graceful stop).
    fn extend(&mut self, grace: Duration) {
        let by_name: HashMap<&str, u32> = self
            .links
            .iter()
            .map(|l| (l.name.as_str(), l.index))
            .collect();
        let set: Vec<(u32, IpAddr)> = self
            .view
            .held
            .iter()
            .filter_map(|(a, n)| Some((*by_name.get(n.as_str())?, *a)))
            .collect();
        for (r, (_, a)) in self
            .nl
            .vip_apply(&set, &[], ADDRESS_PROTOCOL, grace)
            .into_iter()
            .zip(&set)
        {
            if let Err(e) = r {
                tracing::warn!(address = %a, error = %e, "cannot extend an address for the restart");
            }
        }
        tracing::info!(addresses = set.len(), grace = ?grace, "LAN addresses kept for the restart");
    }
}

/// kube-proxy in IPVS mode puts every Service address on `kube-ipvs0`; without strict
/// ARP (`arp_ignore` 1 and `arp_announce` 2) every node then answers ARP for them all.
fn ipvs_trap(links: &[LanLink]) -> Option<String> {
    if !links.iter().any(|l| l.name == "kube-ipvs0") {
        return None;
    }
    let read = |k: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/all/{k}"))
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .unwrap_or(0)
    };
    let (ignore, announce) = (read("arp_ignore"), read("arp_announce"));
    (ignore == 0 || announce < 2).then(|| {
        format!(
            "kube-ipvs0 exists (kube-proxy in IPVS mode) and net.ipv4.conf.all.arp_ignore={ignore}, arp_announce={announce}: every node answers ARP for every Service address; set kube-proxy's ipvs.strictARP: true (arp_ignore=1, arp_announce=2)"
        )
    })
}
