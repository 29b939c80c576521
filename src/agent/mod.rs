//! `routelb agent`: the shell around [`routelb_core::node::Model`] on one node.
//!
//! One set of watches (Services, EndpointSlices, its own Node, AddressPools,
//! RouterConfigs, BGPPeers, the BGP password Secrets) feeds one loop. Once every cache
//! has synced, the loop decides (pure) what the node announces and under which kernel
//! contract, and hands both to the dataplane ([`crate::kernel::Running`]), which
//! reconciles the kernel; the routing task ([`routing`]) renders the daemon's
//! configuration from the same decision. Until then nothing is touched, so a restarting
//! agent withdraws nothing; while the API server is unreachable the caches, and so the
//! kernel, stay as they were.
//!
//! The kernel contract (interface, table, protocol) comes from the RouterConfig that
//! selects the node, the flags where it sets nothing. When it changes, the dataplane
//! keeps the contract the daemon still reads programmed beside the new one; the routing
//! task reloads the daemon only once the new one is filled, and the old one is emptied
//! only once the daemon reads the new one: the routers never see a withdrawal.

pub mod l2;
pub mod report;
pub mod routing;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use routelb_core::advertise::{Advertise, Kind};
use routelb_core::crd::{AddressPool, BGPPeer, RouterConfig};
use routelb_core::index::{Both, Feed};
use routelb_core::l2::{L2Model, LEASE_LABEL};
use routelb_core::net::{KernelContract, LinkKind, NodeState, VipMode};
use routelb_core::node::{Announced, Change, Decision, Model};
use routelb_core::report::{Once, Regarding};
use routelb_core::routing::ContractFlags;
use tokio::sync::watch;

use crate::health::Health;
use crate::k8s::events::{Note, Publisher};
use crate::k8s::watch::{Input, Watches};
use crate::kernel::{Config, Running};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub node_name: String,
    pub handle_class_less: bool,
    /// The kernel contract where no RouterConfig sets it (`--interface`, ...).
    pub flags: ContractFlags,
    pub link_kind: LinkKind,
    pub vip_mode: VipMode,
    /// Full look at the kernel this often, besides notifications.
    pub resync: Duration,
    /// Program another network namespace's kernel (labs and tests).
    pub netns: Option<PathBuf>,
    /// Events per second at most (with a burst of ten times that).
    pub events_per_second: f64,
    /// The routing daemon beside the agent; `None` leaves routing alone.
    pub routing: Option<routing::RoutingOptions>,
    /// Local (L2) pools; `None` leaves them unannounced.
    pub l2: Option<l2::L2Options>,
    /// The node's NodeRoutingStatus; `None` writes none.
    pub report: Option<report::ReportOptions>,
}

impl Options {
    pub fn new(node_name: &str) -> Options {
        Options {
            node_name: node_name.to_string(),
            handle_class_less: true,
            flags: ContractFlags::default(),
            link_kind: LinkKind::Auto,
            vip_mode: VipMode::Address,
            resync: Duration::from_secs(60),
            netns: None,
            events_per_second: 10.0,
            routing: None,
            l2: Some(l2::L2Options::default()),
            report: Some(report::ReportOptions::default()),
        }
    }
}

/// The caches the routing configuration is rendered from.
#[derive(Clone, Debug)]
pub struct RoutingStores {
    pub configs: Store<RouterConfig>,
    pub peers: Store<BGPPeer>,
    pub pools: Store<AddressPool>,
    pub secrets: Store<Secret>,
    pub nodes: Store<Node>,
}

/// Where routing stands for this node: the RouterConfig that governs it and the kernel
/// contract, decided once in the agent's loop for both the dataplane and the daemon.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub router: Option<Arc<RouterConfig>>,
    pub contract: KernelContract,
    /// Bumped when any input of the routing configuration changed.
    pub generation: u64,
}

/// One feed per watched kind.
#[derive(Debug, Default)]
struct Feeds {
    services: Feed,
    slices: Feed,
    node: Feed,
    pools: Feed,
    configs: Feed,
    peers: Feed,
    secrets: Feed,
    leases: Feed,
}

impl Feeds {
    fn synced(&self, routing: bool) -> bool {
        let model = self.services.synced()
            && self.slices.synced()
            && self.node.synced()
            && self.pools.synced()
            && self.configs.synced();
        model && (!routing || (self.peers.synced() && self.secrets.synced()))
    }
}

/// What of a decision deserves Events: every announced address but cluster IPs switched
/// on for the whole node group (one Event per Service and node would flood the cluster).
fn shown(d: Option<&Decision>) -> Vec<&Announced> {
    d.map(|d| {
        d.announce
            .iter()
            .filter(|a| a.kind != Kind::Cluster || d.cluster_asked)
            .collect()
    })
    .unwrap_or_default()
}

/// An address as Events name it: LoadBalancer addresses bare, the other kinds tagged.
fn label(a: &Announced) -> String {
    match a.kind {
        Kind::LoadBalancer => a.addr.to_string(),
        kind => format!("{} ({kind})", a.addr),
    }
}

/// The Event a change deserves, if any: (reason, note).
fn describe(node: &str, c: &Change, table: u32, adv: &Advertise) -> Option<(&'static str, String)> {
    let before = shown(c.before.as_ref());
    let after = shown(c.after.as_ref());
    let key = |a: &&Announced| (a.kind, a.addr, a.prefix);
    if before.iter().map(key).eq(after.iter().map(key)) {
        return None;
    }
    let gone: Vec<&Announced> = before
        .iter()
        .filter(|b| !after.iter().any(|a| a.kind == b.kind && a.addr == b.addr))
        .copied()
        .collect();
    let why = |a: &Announced| match c.after.as_ref().and_then(|d| d.why_not(a.kind, a.addr)) {
        Some(why) => why.to_string(),
        None if a.kind == Kind::LoadBalancer => {
            "the Service no longer has routelb addresses".to_string()
        }
        None => format!(
            "the Service no longer has it, or its {} are switched off ({})",
            a.kind.plural(),
            adv.setting(
                a.kind,
                ".enabled",
                if adv.enabled[a.kind.idx()] {
                    "is true"
                } else {
                    "is false"
                }
            )
        ),
    };
    // Withdrawn addresses grouped by reason, in order.
    let mut withdrawn: Vec<(String, Vec<String>)> = Vec::new();
    for a in &gone {
        let w = why(a);
        match withdrawn.iter_mut().find(|(r, _)| *r == w) {
            Some((_, list)) => list.push(label(a)),
            None => withdrawn.push((w, vec![label(a)])),
        }
    }
    let withdrawn: Vec<String> = withdrawn
        .into_iter()
        .map(|(why, list)| format!("withdrew {}: {why}", list.join(", ")))
        .collect();
    if after.is_empty() {
        return Some(("Withdrawn", format!("node {node} {}", withdrawn.join("; "))));
    }
    let mut prefixes: Vec<String> = Vec::new();
    for a in &after {
        let p = a.prefix.to_string();
        if !prefixes.contains(&p) {
            prefixes.push(p);
        }
    }
    let mut note = format!(
        "node {node} announces {} (routes {} in table {table})",
        after
            .iter()
            .map(|a| label(a))
            .collect::<Vec<_>>()
            .join(", "),
        prefixes.join(", ")
    );
    for w in withdrawn {
        note.push_str("; ");
        note.push_str(&w);
    }
    Some(("Announcing", note))
}

/// The agent's state between inputs.
struct Agent {
    opts: Options,
    model: Model,
    /// What the L2 elections need (fed by the same watches as `model`).
    l2_model: L2Model,
    l2: Option<l2::L2>,
    feeds: Feeds,
    stores: RoutingStores,
    dataplane: Running,
    publisher: Publisher,
    /// What routing decided last, shared with the routing task.
    plan: watch::Sender<Plan>,
    /// Whether a routing input changed since the plan was last decided.
    routing_dirty: bool,
    /// The contracts the routing daemon may be reading (from the routing task).
    reads: watch::Receiver<Vec<KernelContract>>,
    /// The contracts last given to the dataplane.
    contracts: Vec<KernelContract>,
    /// The node state last given to the dataplane.
    state: Option<NodeState>,
    pending: Vec<Change>,
    /// Addresses the kernel had at start (an earlier run's): no news on the first pass.
    adopted: Option<BTreeSet<IpAddr>>,
    reported: Once<&'static str>,
    /// Other RouterConfigs selecting the node (ignored while the governing one exists).
    also_selected_by: Vec<String>,
    reporter: Option<report::Reporter>,
    /// When the node's report was last offered.
    published: Option<std::time::Instant>,
}

/// The node's report copies the whole node state: offered at most this often while
/// Services churn (a pass can be every few milliseconds then).
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Runs the agent until `shutdown` turns true. The kernel keeps its state on exit.
pub async fn run(
    client: Client,
    opts: Options,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cfg = Config {
        contract: opts.flags.fallback(),
        link_kind: opts.link_kind,
        vip_mode: opts.vip_mode,
    };
    let (netns, resync) = (opts.netns.clone(), opts.resync);
    let dataplane =
        tokio::task::spawn_blocking(move || Running::start_in(netns.as_deref(), cfg, resync))
            .await??;
    let (watches, mut inputs) = Watches::new(client.clone());
    let secrets_namespace = opts
        .routing
        .as_ref()
        .map_or("routelb-system", |r| r.secrets_namespace.as_str())
        .to_string();
    let stores = RoutingStores {
        configs: watches.all(Input::RouterConfig),
        peers: watches.all(Input::Peer),
        pools: watches.all(Input::Pool),
        secrets: watches.namespaced(&secrets_namespace, Input::Secret),
        nodes: watches.named(&opts.node_name, Input::Node),
    };
    // Only the models keep what they need of these (no cache of whole objects).
    watches.follow(Input::Service);
    watches.follow(Input::Slice);
    let l2 = match &opts.l2 {
        Some(l2opts) => {
            let _ = watches.labelled(&l2opts.namespace, LEASE_LABEL, Input::Lease);
            let (netns, timing) = (opts.netns.clone(), l2opts.lan.clone());
            let lan = tokio::task::spawn_blocking(move || {
                crate::kernel::l2::Lan::start_in(netns.as_deref(), timing)
            })
            .await??;
            Some(l2::L2::start(
                client.clone(),
                &opts.node_name,
                l2opts.clone(),
                lan,
            ))
        }
        None => None,
    };
    let reporter = opts
        .report
        .clone()
        .map(|r| report::Reporter::start(client.clone(), &opts.node_name, r));
    let publisher = Publisher::start(
        client,
        "routelb.io/agent",
        &opts.node_name,
        Some(opts.events_per_second),
    );
    let (plan, plan_rx) = watch::channel(Plan {
        contract: opts.flags.fallback(),
        ..Plan::default()
    });
    let routing_status = routing::status();
    let reads = match &opts.routing {
        Some(r) => routing::spawn(
            opts.node_name.clone(),
            r.clone(),
            routing::Inputs {
                stores: stores.clone(),
                plan: plan_rx,
                programmed: dataplane.programmed(),
            },
            opts.flags.fallback(),
            routing_status.clone(),
            publisher.clone(),
        ),
        // Nothing reads for routelb: only the planned contract is kept.
        None => watch::channel(Vec::new()).1,
    };
    let mut agent = Agent {
        model: Model::new(&opts.node_name, opts.handle_class_less),
        l2_model: L2Model::new(opts.handle_class_less),
        l2,
        opts,
        feeds: Feeds::default(),
        stores,
        dataplane,
        publisher,
        plan,
        routing_dirty: true,
        reads,
        contracts: Vec::new(),
        state: None,
        pending: Vec::new(),
        adopted: None,
        reported: Once::default(),
        also_selected_by: Vec::new(),
        reporter,
        published: None,
    };
    // L2 elections and lifetimes need a finer step than routing does.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    health.set(
        false,
        "waiting for the Service, EndpointSlice, Node, AddressPool and RouterConfig caches",
    );
    loop {
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { break };
                agent.apply(input);
            }
            _ = agent.reads.changed() => {}
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if !agent.feeds.synced(agent.opts.routing.is_some()) {
            continue;
        }
        // Everything queued so far is applied before deciding: bursts coalesce.
        while let Ok(input) = inputs.try_recv() {
            agent.apply(input);
        }
        agent.decide().await;
        agent.step_l2();
        agent.report_health(&health, &routing_status);
        if agent.published.is_none_or(|t| t.elapsed() >= PUBLISH_EVERY) {
            agent.publish(&routing_status);
            agent.published = Some(std::time::Instant::now());
        }
    }
    if let Some(l2) = agent.l2.take() {
        l2.stop(&agent.l2_model).await;
    }
    let stop = tokio::task::spawn_blocking(move || agent.dataplane.stop());
    let _ = stop.await;
    Ok(())
}

impl Agent {
    /// Applies one watch event: to the model, or as a change of routing's inputs.
    fn apply(&mut self, input: Input) {
        let (m, f) = (&mut self.model, &mut self.feeds);
        let l2 = &mut self.l2_model;
        let changes = match input {
            Input::Service(e) => f.services.feed(&mut Both(m, l2), e),
            Input::Slice(e) => f.slices.feed(&mut Both(m, l2), e),
            Input::Node(e) => {
                self.routing_dirty = true;
                f.node.feed(m, e)
            }
            Input::Pool(e) => {
                self.routing_dirty = true;
                f.pools.feed(&mut Both(m, l2), e)
            }
            Input::RouterConfig(e) => {
                self.routing_dirty = true;
                f.configs.track(e);
                Vec::new()
            }
            Input::Peer(e) => {
                self.routing_dirty = true;
                f.peers.track(e);
                Vec::new()
            }
            Input::Secret(e) => {
                self.routing_dirty = true;
                f.secrets.track(e);
                Vec::new()
            }
            Input::Lease(e) => {
                match self.l2.as_mut() {
                    Some(l2) => {
                        f.leases.feed(&mut l2.members, e);
                    }
                    None => f.leases.track(e),
                }
                Vec::new()
            }
            Input::Namespace(_) | Input::NodeStatus(_) => Vec::new(),
        };
        self.pending.extend(changes);
    }

    /// Decides and hands over: the plan, the contracts, the node state, the Events.
    async fn decide(&mut self) {
        if std::mem::take(&mut self.routing_dirty) {
            self.replan();
        }
        let contracts = self.contracts();
        if contracts != self.contracts {
            self.dataplane.set_contracts(contracts.clone());
            self.contracts = contracts;
        }
        if self.adopted.is_none() {
            self.adopted = Some(self.present().await);
        }
        // What the node announces changes only with some Service's decision.
        if self.state.is_none() || !self.pending.is_empty() {
            let state = self.model.desired();
            if self.state.as_ref() != Some(&state) {
                self.dataplane.set(state.clone());
                self.state = Some(state);
            }
        }
        self.announce();
    }

    /// One step of the L2 announcer.
    fn step_l2(&mut self) {
        let Some(l2) = self.l2.as_mut() else { return };
        let node = self.stores.nodes.state().first().cloned();
        l2.step(
            &self.l2_model,
            node.as_deref(),
            self.feeds.leases.synced(),
            &self.publisher,
        );
    }

    /// Decides which RouterConfig governs the node and the kernel contract.
    fn replan(&mut self) {
        let node = self.opts.node_name.clone();
        let labels = self
            .stores
            .nodes
            .state()
            .first()
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let selection = routelb_core::routing::select(&labels, &self.stores.configs.state());
        for (name, why) in &selection.invalid {
            self.warn(
                Regarding::router_config(name),
                "InvalidNodeSelector",
                why.clone(),
            );
        }
        self.also_selected_by = selection.also_selecting.clone();
        if let Some(conflict) = selection.conflict(&node) {
            self.warn(Regarding::node(&node), "RouterConfigConflict", conflict);
        }
        let current = self.plan.borrow().clone();
        let router = selection.chosen;
        let name = router.as_ref().map(|rc| rc.name_any());
        let governing = router
            .as_ref()
            .zip(name.as_deref())
            .map(|(rc, n)| (n, &rc.spec));
        let contract = match routelb_core::routing::contract(governing, &self.opts.flags) {
            Ok((contract, notes)) => {
                for n in notes {
                    self.warn(Regarding::node(&node), "FlagOverridden", n);
                }
                contract
            }
            Err(why) => {
                // Keep programming where the daemon reads now rather than go dark.
                self.warn(
                    Regarding::node(&node),
                    "InvalidKernelContract",
                    format!("{why}; keeping {}", current.contract),
                );
                current.contract.clone()
            }
        };
        if contract != current.contract {
            let note = format!(
                "routelb's entries move from {} to {} ({}); the old ones stay until the routing daemon reads the new ones",
                current.contract,
                contract,
                router.as_ref().map_or(
                    "no RouterConfig selects the node: the agent's flags".to_string(),
                    |rc| format!("RouterConfig {}", rc.name_any())
                )
            );
            tracing::info!(node = %node, from = %current.contract, to = %contract, "kernel contract changes");
            self.publisher.publish(Note {
                regarding: Regarding::node(&node),
                warning: false,
                reason: "KernelContractChanged".into(),
                action: "Program".into(),
                note,
            });
        }
        self.readvertise(router.as_deref());
        self.plan.send_replace(Plan {
            router,
            contract,
            generation: current.generation + 1,
        });
    }

    /// Takes the governing RouterConfig's `spec.advertise` into the model: the Services
    /// whose decision changes are announced or withdrawn on the next pass.
    fn readvertise(&mut self, router: Option<&RouterConfig>) {
        let node = self.opts.node_name.clone();
        let adv = match router {
            Some(rc) => {
                let name = rc.name_any();
                let (adv, problems) = Advertise::from_spec(&name, &rc.spec);
                for p in problems {
                    self.warn(Regarding::router_config(&name), "InvalidAdvertise", p);
                }
                adv
            }
            None => Advertise::default(),
        };
        if &adv == self.model.advertise() {
            return;
        }
        let first = self.state.is_none();
        let note = format!("node {node} announces {}", adv.summary());
        tracing::info!(node = %node, advertise = %adv.summary(), "what the node announces by default");
        let changes = self.model.set_advertise(adv);
        self.pending.extend(changes);
        // The defaults at start are news only when they differ from routelb's defaults.
        if !first || self.model.advertise() != &Advertise::default() {
            self.publisher.publish(Note {
                regarding: Regarding::node(&node),
                warning: false,
                reason: "AdvertiseChanged".into(),
                action: "Announce".into(),
                note,
            });
        }
    }

    /// The contracts to program: those the daemon may read, then the planned one.
    fn contracts(&self) -> Vec<KernelContract> {
        let mut out: Vec<KernelContract> = self.reads.borrow().clone();
        let planned = self.plan.borrow().contract.clone();
        if !out.contains(&planned) {
            out.push(planned);
        }
        out
    }

    /// What the kernel already holds under the planned contract.
    async fn present(&self) -> BTreeSet<IpAddr> {
        let contract = self.plan.borrow().contract.clone();
        match self.dataplane.present(&contract).await {
            Ok(present) => present,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read what the kernel holds; Events will repeat announcements");
                BTreeSet::new()
            }
        }
    }

    /// A Warning Event, once per distinct note.
    fn warn(&mut self, regarding: Regarding, reason: &'static str, note: String) {
        if !self
            .reported
            .news(reason, &format!("{}/{note}", regarding.name))
        {
            return;
        }
        tracing::warn!(object = %regarding.name, reason, "{note}");
        self.publisher.publish(Note {
            regarding,
            warning: true,
            reason: reason.into(),
            action: "Program".into(),
            note,
        });
    }

    /// Events for the Services whose announcement changed.
    fn announce(&mut self) {
        let table = self.plan.borrow().contract.table;
        let adopted = self.adopted.take().unwrap_or_default();
        for c in std::mem::take(&mut self.pending) {
            self.warn_service(&c);
            // On start, what the kernel already had is no news.
            if let Some(d) = &c.after
                && d.announces()
                && d.announce
                    .iter()
                    .all(|a| !a.on_interface || adopted.contains(&a.addr))
            {
                continue;
            }
            let adv = self.model.advertise();
            let Some((reason, note)) = describe(&self.opts.node_name, &c, table, adv) else {
                continue;
            };
            self.publisher.publish(Note {
                regarding: Regarding::service_key(&c.key).with_uid(c.uid.clone()),
                warning: false,
                reason: reason.into(),
                action: "Announce".into(),
                note,
            });
        }
        // Only the first pass compares with what an earlier run left.
        self.adopted = Some(BTreeSet::new());
    }

    /// Warning Events for the problems a Service's new decision brings (bad annotations,
    /// externalIPs or cluster IPs outside the allowed CIDRs): each once, when it appears.
    fn warn_service(&self, c: &Change) {
        let Some(after) = &c.after else { return };
        let before: &[(&'static str, String)] = c.before.as_ref().map_or(&[], |d| &d.warnings);
        for (reason, note) in after.warnings.iter().filter(|w| !before.contains(w)) {
            tracing::warn!(service = %format!("{}/{}", c.key.namespace, c.key.name), reason, "{note}");
            self.publisher.publish(Note {
                regarding: Regarding::service_key(&c.key).with_uid(c.uid.clone()),
                warning: true,
                reason: (*reason).into(),
                action: "Announce".into(),
                note: note.clone(),
            });
        }
    }

    fn report_health(&self, health: &Health, routing: &std::sync::Mutex<routing::RoutingStatus>) {
        let status = self.dataplane.status();
        let announced = self.state.as_ref().map_or(0, |d| d.addresses.len());
        let mut detail = format!(
            "{announced} addresses announced on {}; {} reconciles, {} repairs",
            status.interfaces.join(", "),
            status.reconciles,
            status.repairs
        );
        if status.fallback.is_some() {
            detail.push_str("; kube-lb0 is an empty bridge (no dummy support)");
        }
        if let Some(e) = &status.last_error {
            detail.push_str(&format!("; last dataplane error: {e}"));
        }
        if self.opts.routing.is_some() {
            detail.push_str("; ");
            detail.push_str(&routing::describe(routing));
        }
        if let Some(d) = self.l2.as_ref().and_then(|l| l.describe(&self.l2_model)) {
            detail.push_str("; ");
            detail.push_str(&d);
        }
        let dropped = self.publisher.dropped();
        if dropped > 0 {
            detail.push_str(&format!("; {dropped} Events dropped by rate limit"));
        }
        // Ready once synced and the kernel has been reconciled once (errors are in the detail).
        health.set(status.reconciles > 0, detail);
        if let Some(l2) = &self.l2 {
            l2.publish_metrics();
        }
        let by_kind = self.model.announced_by_kind();
        publish_metrics(self.state.as_ref(), by_kind, &status, routing, dropped);
    }

    /// The node's report: it copies what the node announces.
    fn publish(&self, routing: &std::sync::Mutex<routing::RoutingStatus>) {
        let status = self.dataplane.status();
        let by_kind = self.model.announced_by_kind();
        // Reported once the kernel was reconciled: before, the interface's kind (dummy or
        // the bridge fallback) and what it holds are not known yet.
        if let Some(reporter) = self.reporter.as_ref().filter(|_| status.reconciles > 0) {
            reporter.offer(self.offer(&status, by_kind, routing));
        }
    }

    /// What the node's report is made of, as the agent knows it now.
    fn offer(
        &self,
        dp: &crate::kernel::Status,
        by_kind: [usize; 3],
        routing: &std::sync::Mutex<routing::RoutingStatus>,
    ) -> report::Offer {
        let plan = self.plan.borrow();
        let node = self.stores.nodes.state().first().cloned();
        // The daemon, when routelb configures one here; else no sessions at all.
        let (daemon, sessions, sessions_error) = match (&plan.router, &self.opts.routing) {
            (Some(rc), Some(_)) => {
                let r = routing.lock().unwrap_or_else(|e| e.into_inner());
                let name = r.daemon.map(str::to_string).unwrap_or_else(|| {
                    format!("{:?}", rc.spec.daemon.unwrap_or_default()).to_lowercase()
                });
                let daemon = routelb_core::status::DaemonFacts {
                    name,
                    version: r.version.clone(),
                    up: r.reachable,
                    message: (!r.state.is_empty()).then(|| r.state.clone()),
                    config_hash: r.config_hash.clone(),
                    last_reload: r.last_reload.clone(),
                };
                (Some(daemon), r.sessions.clone(), r.sessions_error.clone())
            }
            _ => (None, Some(Vec::new()), None),
        };
        let state = self.state.as_ref();
        let c = &plan.contract;
        let facts = routelb_core::status::NodeFacts {
            router_config: plan.router.as_ref().map(|rc| rc.name_any()),
            also_selected_by: self.also_selected_by.clone(),
            daemon,
            sessions,
            sessions_error,
            by_kind,
            addresses: state
                .map(|s| s.addresses.iter().copied().collect())
                .unwrap_or_default(),
            prefixes: state.map_or(0, |s| s.prefixes.len()),
            kernel: Some(routelb_core::crd::KernelReport {
                interface: c.interface.clone(),
                link_kind: if dp.fallback.is_some() {
                    "bridge"
                } else {
                    "dummy"
                }
                .into(),
                vip_mode: match self.opts.vip_mode {
                    VipMode::Address => "address",
                    VipMode::LocalRoute => "local-route",
                }
                .into(),
                table: c.table,
                protocol: c.protocol,
                last_error: dp.last_error.clone(),
            }),
            l2: self.l2.as_ref().map(|l| l.held()).unwrap_or_default(),
        };
        report::Offer {
            facts,
            node_uid: node.and_then(|n| n.metadata.uid.clone()),
        }
    }
}

/// Updates the agent's metrics from what it knows now.
fn publish_metrics(
    desired: Option<&NodeState>,
    by_kind: [usize; 3],
    dp: &crate::kernel::Status,
    routing: &std::sync::Mutex<routing::RoutingStatus>,
    events_dropped: u64,
) {
    use crate::metrics::METRICS as M;
    for kind in Kind::ALL {
        M.set(
            "routelb_announced_service_addresses",
            "Service addresses this node announces, by kind (loadbalancer, external, cluster).",
            &[("kind", kind.label())],
            by_kind[kind.idx()] as f64,
        );
    }
    if let Some(d) = desired {
        for (family, v4) in [("ipv4", true), ("ipv6", false)] {
            let addrs = d.addresses.iter().filter(|a| a.is_ipv4() == v4).count();
            let prefixes = d.prefixes.iter().filter(|p| p.addr.is_ipv4() == v4).count();
            M.set(
                "routelb_announced_addresses",
                "Service addresses this node announces.",
                &[("family", family)],
                addrs as f64,
            );
            M.set(
                "routelb_announced_prefixes",
                "Prefixes this node routes to kube-lb0 in its table.",
                &[("family", family)],
                prefixes as f64,
            );
        }
    }
    for (name, help, value) in [
        (
            "routelb_dataplane_reconciles_total",
            "Reconciles of the kernel's owned addresses and routes.",
            dp.reconciles,
        ),
        (
            "routelb_dataplane_changes_total",
            "Addresses and routes added or removed in the kernel.",
            dp.changes,
        ),
        (
            "routelb_netlink_errors_total",
            "Netlink changes the kernel refused.",
            dp.errors,
        ),
        (
            "routelb_dataplane_repairs_total",
            "Drift repairs: owned entries changed by someone else, put right.",
            dp.repairs,
        ),
        (
            "routelb_events_dropped_total",
            "Events not sent (rate limit or full queue).",
            events_dropped,
        ),
    ] {
        M.set_counter(name, help, &[], value as f64);
    }
    routing::publish_metrics(&routing.lock().unwrap_or_else(|e| e.into_inner()));
}
