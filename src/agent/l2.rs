//! The agent's L2 announcer: local pools answered by ARP/NDP from one elected node.
//!
//! Each step publishes this node's record in its Lease (only while some pool is local),
//! reads everyone's records ([`Members`]), elects (pure: [`routelb_core::l2`]) and tells
//! the LAN side ([`Lan`]) what to answer for. It elects only while it can prove its view
//! is current: its own Lease renewed within the renew deadline and its own renewals
//! coming back through the watch. Otherwise it holds what it has (adding nothing), so a
//! frozen or cut-off agent never takes an address, and the kernel's address lifetime
//! and the wire (another node's announcement) make it let go.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client, ResourceExt};
use routelb_core::ipam::ServiceKey;
use routelb_core::l2::{AddressElection, Elected, L2Model, Member, eligibility, unfit};
use routelb_core::report::{Once, Regarding};
use tokio::sync::watch;

use crate::k8s::events::{Note, Publisher};
use crate::k8s::members::{Members, Renewer, Timing};
use crate::kernel::l2::{Lan, View, Want};

/// How the L2 announcer runs.
#[derive(Clone, Debug)]
pub struct L2Options {
    pub timing: Timing,
    pub lan: crate::kernel::l2::Timing,
    /// Where node Leases live.
    pub namespace: String,
}

impl Default for L2Options {
    fn default() -> L2Options {
        L2Options {
            timing: Timing::default(),
            lan: crate::kernel::l2::Timing::default(),
            namespace: "routelb-system".into(),
        }
    }
}

/// What this node answers for, and why, as last decided.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answering {
    interface: String,
    election: AddressElection,
}

/// The L2 announcer's state.
#[derive(Debug)]
pub struct L2 {
    node: String,
    opts: L2Options,
    pub members: Members,
    renewer: Renewer,
    lan: Option<Lan>,
    view: watch::Receiver<View>,
    owner: watch::Sender<Option<OwnerReference>>,
    named: BTreeSet<String>,
    /// (model generation, members) of the last election, to elect only on change.
    last: Option<(u64, BTreeMap<String, Member>)>,
    answering: BTreeMap<IpAddr, Answering>,
    /// Addresses moving to another live node: kept (make before break) until that node
    /// claims them or the lease duration passes. Address -> (node, on interface, since).
    handing_over: BTreeMap<IpAddr, (String, String, std::time::Duration)>,
    /// The term of each of this node's claims.
    terms: BTreeMap<IpAddr, u64>,
    elections: Vec<AddressElection>,
    takeovers: u64,
    reported: Once<&'static str>,
}

/// A (non-warning) Event on each of the Services using an address.
fn tell(
    publisher: &Publisher,
    services: &[(ServiceKey, Option<String>)],
    reason: &str,
    note: &str,
) {
    for (key, uid) in services {
        publisher.publish(Note {
            regarding: Regarding::service_key(key).with_uid(uid.clone()),
            warning: false,
            reason: reason.into(),
            action: "Announce".into(),
            note: note.to_string(),
        });
    }
}

impl L2 {
    pub fn start(client: Client, node: &str, opts: L2Options, lan: Lan) -> L2 {
        let api: Api<Lease> = Api::namespaced(client, &opts.namespace);
        let (owner, owner_rx) = watch::channel(None);
        let renewer = Renewer::start(api, node, owner_rx, opts.timing);
        L2 {
            node: node.to_string(),
            members: Members::new(Some(node)),
            renewer,
            view: lan.view(),
            lan: Some(lan),
            owner,
            named: BTreeSet::new(),
            last: None,
            answering: BTreeMap::new(),
            handing_over: BTreeMap::new(),
            terms: BTreeMap::new(),
            elections: Vec::new(),
            takeovers: 0,
            reported: Once::default(),
            opts,
        }
    }

    fn lan(&self) -> &Lan {
        self.lan.as_ref().expect("running until stopped")
    }

    /// One step: publish, elect, tell the LAN side, report.
    pub fn step(
        &mut self,
        model: &L2Model,
        node: Option<&Node>,
        leases_synced: bool,
        publisher: &Publisher,
    ) {
        if let Some(n) = node
            && self.owner.borrow().is_none()
        {
            let _ = self.owner.send(n.uid().map(|uid| OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: n.name_any(),
                uid,
                ..OwnerReference::default()
            }));
        }
        let named = model.named_interfaces();
        if named != self.named {
            self.lan().named(named.clone());
            self.named = named;
        }
        let view = self.view.borrow().clone();
        let timing = self.opts.timing;
        let me = Member {
            eligible: eligibility(node),
            interfaces: view.interfaces.clone(),
            claims: self.claims(&view),
            lease_ms: u64::try_from(timing.lease.as_millis()).unwrap_or(u64::MAX),
            alive: true,
        };
        let local = model.has_local_pools();
        self.renewer.set(local.then(|| me.clone()));
        self.report_traps(model, &view, publisher);
        if !view.ready {
            return;
        }
        if !local {
            // No local pool any more: answer for nothing.
            self.lan().want(Want::Set(BTreeMap::new()));
            self.change(BTreeMap::new(), &BTreeMap::new(), publisher);
            return;
        }
        let live = self.members.watch_live(timing.lease);
        let mut members = self.members.current(live, timing.lease);
        let fresh = leases_synced
            && live
            && self
                .renewer
                .fresh(timing.lease.saturating_sub(timing.renew));
        if !fresh {
            self.lan().want(Want::Hold);
            return;
        }
        members.insert(self.node.clone(), me);
        let inputs = (model.generation(), members);
        if self.last.as_ref() != Some(&inputs) {
            self.elections = model.elections(&inputs.1);
            let mine: BTreeMap<IpAddr, Answering> = self
                .elections
                .iter()
                .filter_map(|e| match &e.elected {
                    Elected::Node { node, interface } if *node == self.node => Some((
                        e.addr,
                        Answering {
                            interface: interface.clone(),
                            election: e.clone(),
                        },
                    )),
                    _ => None,
                })
                .collect();
            self.change(mine, &inputs.1, publisher);
            self.last = Some(inputs);
        }
        // A planned move (drain, endpoints moving, a pool edit) is make before break:
        // this node keeps answering until the new holder says it answers.
        let now = crate::clock::boottime();
        let members = &self.last.as_ref().expect("elected above").1;
        self.handing_over.retain(|addr, (to, _, since)| {
            let taken = members.get(to).is_some_and(|m| m.claims.contains_key(addr));
            !taken && now.saturating_sub(*since) < timing.lease
        });
        // Repeated every step: a want not repeated goes stale on the LAN side.
        let mut want: BTreeMap<IpAddr, String> = self
            .handing_over
            .iter()
            .map(|(a, (_, iface, _))| (*a, iface.clone()))
            .collect();
        want.extend(
            self.answering
                .iter()
                .map(|(a, x)| (*a, x.interface.clone())),
        );
        self.lan().want(Want::Set(want));
    }

    /// What this node claims: what it holds, each with its term (an address adopted
    /// from before a restart keeps the term of the earlier record).
    fn claims(&self, view: &View) -> BTreeMap<IpAddr, u64> {
        let before = self.members.record(&self.node);
        view.held
            .keys()
            .map(|a| {
                let term = self
                    .terms
                    .get(a)
                    .or_else(|| before.and_then(|m| m.claims.get(a)))
                    .copied()
                    .unwrap_or(1);
                (*a, term)
            })
            .collect()
    }

    /// Events for what this node starts or stops answering for.
    fn change(
        &mut self,
        mine: BTreeMap<IpAddr, Answering>,
        members: &BTreeMap<String, Member>,
        publisher: &Publisher,
    ) {
        let me = self.node.clone();
        for (addr, a) in &mine {
            if self.answering.get(addr).map(|o| &o.interface) == Some(&a.interface) {
                continue;
            }
            let term = members
                .get(&me)
                .and_then(|m| m.claims.get(addr).copied())
                .unwrap_or_else(|| routelb_core::l2::next_term(*addr, members));
            self.terms.insert(*addr, term);
            let previous = members
                .iter()
                .filter(|(n, m)| **n != me && m.claims.contains_key(addr))
                .max_by_key(|(_, m)| m.claims.get(addr));
            let protocol = if addr.is_ipv4() { "ARP" } else { "NDP" };
            let mut note = format!(
                "node {me} answers for {addr} on {} ({protocol})",
                a.interface
            );
            if let Some((prev, m)) = previous {
                self.takeovers += 1;
                let ballot = routelb_core::l2::Ballot {
                    addr: *addr,
                    interfaces: &[],
                    endpoints: None,
                };
                let why = unfit(prev, m, &ballot)
                    .unwrap_or_else(|| format!("{prev} can no longer hold it"));
                note.push_str(&format!(", took over from {prev}: {why}"));
                tracing::info!(address = %addr, from = %prev, interface = %a.interface, "took over a local address");
            } else {
                tracing::info!(address = %addr, interface = %a.interface, "answering for a local address");
            }
            tell(publisher, &a.election.services, "Announcing", &note);
        }
        for (addr, old) in &self.answering {
            if mine.contains_key(addr) {
                continue;
            }
            let now = self.elections.iter().find(|e| e.addr == *addr);
            let why = match now.map(|e| &e.elected) {
                Some(Elected::Node { node, interface }) if *node != me => {
                    if members.get(node).is_some_and(|m| m.alive) {
                        self.handing_over.insert(
                            *addr,
                            (
                                node.clone(),
                                old.interface.clone(),
                                crate::clock::boottime(),
                            ),
                        );
                    }
                    format!("{node} answers for it on {interface}")
                }
                Some(Elected::Nobody(why)) => why.clone(),
                Some(Elected::Node { .. }) => "it moved to another interface".into(),
                None => "no Service uses it any more".into(),
            };
            tracing::info!(address = %addr, reason = %why, "stopped answering for a local address");
            let services = now.map_or(&old.election.services, |e| &e.services);
            let note = format!("node {me} no longer answers for {addr}: {why}");
            tell(publisher, services, "Withdrawn", &note);
        }
        self.terms
            .retain(|a, _| mine.contains_key(a) || self.handing_over.contains_key(a));
        self.answering = mine;
    }

    /// Warnings for the traps users otherwise find the hard way.
    fn report_traps(&mut self, model: &L2Model, view: &View, publisher: &Publisher) {
        let node = self.node.clone();
        let warn = |reported: &mut Once<&'static str>,
                    regarding: Regarding,
                    reason: &'static str,
                    note: String| {
            if reported.news(reason, &note) {
                tracing::warn!(reason, "{note}");
                publisher.publish(Note {
                    regarding,
                    warning: true,
                    reason: reason.into(),
                    action: "Announce".into(),
                    note,
                });
            }
        };
        if let Some(trap) = &view.ipvs_trap
            && model.has_local_pools()
        {
            warn(
                &mut self.reported,
                Regarding::node(&node),
                "StrictARPMissing",
                format!("node {node}: {trap}"),
            );
        }
        for c in &view.conflicts {
            let services = self
                .elections
                .iter()
                .find(|e| e.addr == c.addr)
                .map(|e| e.services.clone())
                .unwrap_or_default();
            let note = format!(
                "node {node} answers for {} on {}, and so does {} on the same LAN: two nodes claim it (a split brain, or the address is configured on another host)",
                c.addr, c.interface, c.mac
            );
            for (key, uid) in services {
                warn(
                    &mut self.reported,
                    Regarding::service_key(&key).with_uid(uid),
                    "SplitBrain",
                    note.clone(),
                );
            }
        }
        for e in &self.elections {
            for i in &view.interfaces {
                if i.subnets.iter().any(|p| p.addr == e.addr) {
                    warn(
                        &mut self.reported,
                        Regarding::node(&node),
                        "ForeignAddress",
                        format!(
                            "{} of AddressPool {} is configured on {} of node {node} by someone other than routelb: remove it there or take it out of the pool",
                            e.addr, e.pool, i.name
                        ),
                    );
                }
            }
        }
    }

    /// The addresses this node answers for, and on which interface.
    pub fn held(&self) -> Vec<routelb_core::crd::L2Report> {
        self.view
            .borrow()
            .held
            .iter()
            .map(|(a, i)| routelb_core::crd::L2Report {
                address: a.to_string(),
                interface: i.clone(),
            })
            .collect()
    }

    /// A one-line summary for the health detail.
    pub fn describe(&self, model: &L2Model) -> Option<String> {
        if !model.has_local_pools() {
            return None;
        }
        let view = self.view.borrow();
        let mut s = format!(
            "L2: answering for {} addresses ({} takeovers, {} lease writes)",
            view.held.len(),
            self.takeovers,
            self.renewer.writes()
        );
        if let Some(e) = &view.last_error {
            s.push_str(&format!("; last LAN error: {e}"));
        }
        Some(s)
    }

    /// Updates the L2 metrics.
    pub fn publish_metrics(&self) {
        use crate::metrics::METRICS as M;
        let view = self.view.borrow();
        for (family, v4) in [("ipv4", true), ("ipv6", false)] {
            M.set(
                "routelb_l2_answering_addresses",
                "Addresses of local pools this node answers for (ARP/NDP).",
                &[("family", family)],
                view.held.keys().filter(|a| a.is_ipv4() == v4).count() as f64,
            );
        }
        for (name, help, v) in [
            (
                "routelb_l2_takeovers_total",
                "Local addresses this node took over from another node.",
                self.takeovers,
            ),
            (
                "routelb_l2_announcements_total",
                "Gratuitous ARP and unsolicited NA frames sent.",
                view.announcements,
            ),
            (
                "routelb_l2_split_brains_total",
                "Addresses this node holds that another MAC claimed on the wire.",
                view.conflicts.len() as u64,
            ),
            (
                "routelb_l2_lease_writes_total",
                "Renewals of this node's Lease.",
                self.renewer.writes(),
            ),
        ] {
            M.set_counter(name, help, &[], v as f64);
        }
    }

    /// Stops for a restart: the record and the kernel keep every address valid for the
    /// restart grace, so nothing moves while the agent is away.
    pub async fn stop(mut self, model: &L2Model) {
        let grace = self.opts.timing.restart_grace;
        if model.has_local_pools() {
            self.renewer.hand_over(grace).await;
        }
        if let Some(lan) = self.lan.take() {
            let _ = tokio::task::spawn_blocking(move || lan.stop(grace)).await;
        }
    }
}
