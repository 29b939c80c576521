//! `routelb agent`: the I/O around [`model::Model`] on one node.
//!
//! Watches Services, EndpointSlices, its own Node and the AddressPools; once every cache
//! has synced, hands the model's desired state to the dataplane, which reconciles the
//! kernel (coalescing bursts). Until then nothing is touched, so a restarting agent
//! withdraws nothing; while the API server is unreachable the caches, and so the kernel,
//! stay as they were. Events (`Announcing`, `Withdrawn`) are sent on changes only, at a
//! bounded rate.

pub mod model;
pub mod routing;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};

use self::model::{Change, Decision, Model};
use crate::crd::AddressPool;
use crate::dataplane::{Config, Running};
use crate::events::{Note, Publisher};
use crate::health::Health;
use crate::kubewatch::watch_into;
use crate::service;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub node_name: String,
    pub handle_class_less: bool,
    pub dataplane: Config,
    /// Full look at the kernel this often, besides notifications.
    pub resync: Duration,
    /// Program another network namespace's kernel (labs and tests).
    pub netns: Option<PathBuf>,
    /// Events per second at most (with a burst of ten times that).
    pub events_per_second: f64,
    /// The routing daemon beside the agent; `None` leaves routing alone.
    pub routing: Option<routing::RoutingOptions>,
}

impl Options {
    pub fn new(node_name: &str) -> Options {
        Options {
            node_name: node_name.to_string(),
            handle_class_less: true,
            dataplane: Config::default(),
            resync: Duration::from_secs(60),
            netns: None,
            events_per_second: 10.0,
            routing: None,
        }
    }
}

enum Input {
    Service(watcher::Event<Service>),
    Slice(watcher::Event<EndpointSlice>),
    Node(Box<watcher::Event<Node>>),
    Pool(watcher::Event<AddressPool>),
}

/// A token bucket for Events.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    dropped: u64,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        let burst = (rate * 10.0).max(1.0);
        Bucket {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
            dropped: 0,
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

fn addresses(d: &Decision) -> Vec<IpAddr> {
    match d {
        Decision::Announce(a) => a.iter().map(|(ip, _)| *ip).collect(),
        Decision::Withhold(_) => Vec::new(),
    }
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Event a change deserves, if any: (reason, note).
fn describe(node: &str, c: &Change, table: u32) -> Option<(&'static str, String)> {
    let before = c.before.as_ref().filter(|d| d.announces());
    let after = c.after.as_ref().filter(|d| d.announces());
    match (before, after, &c.after) {
        (_, Some(Decision::Announce(now)), _) if before != after => {
            let prefixes: Vec<String> = now.iter().map(|(_, p)| p.to_string()).collect();
            Some((
                "Announcing",
                format!(
                    "node {node} announces {} (routes {} in table {table})",
                    list(&addresses(after.expect("announcing"))),
                    prefixes.join(", ")
                ),
            ))
        }
        (Some(b), None, Some(Decision::Withhold(why))) => Some((
            "Withdrawn",
            format!("node {node} withdrew {}: {why}", list(&addresses(b))),
        )),
        (Some(b), None, None) => Some((
            "Withdrawn",
            format!(
                "node {node} withdrew {}: the Service no longer has routelb addresses",
                list(&addresses(b))
            ),
        )),
        _ => None,
    }
}

/// Runs the agent until `shutdown` turns true. The kernel keeps its state on exit.
pub async fn run(
    client: Client,
    opts: Options,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (netns, cfg, resync) = (opts.netns.clone(), opts.dataplane.clone(), opts.resync);
    let dataplane =
        tokio::task::spawn_blocking(move || Running::start_in(netns.as_deref(), cfg, resync))
            .await??;
    let started = dataplane.status();
    if let Some(kind) = started.fallback {
        tracing::warn!(interface = %started.interface, kind, "no dummy link support in this kernel; kube-lb0 is an empty bridge");
    }
    let (tx, mut inputs) = mpsc::channel::<Input>(4096);
    let services = watch_into(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        Input::Service,
    );
    let slices = watch_into(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        Input::Slice,
    );
    let node_cfg = watcher::Config::default().fields(&format!("metadata.name={}", opts.node_name));
    let nodes = watch_into(
        Api::<Node>::all(client.clone()),
        node_cfg,
        tx.clone(),
        |e| Input::Node(Box::new(e)),
    );
    let pools = watch_into(
        Api::<AddressPool>::all(client.clone()),
        watcher::Config::default(),
        tx,
        Input::Pool,
    );
    let publisher = Publisher::start(client.clone(), "routelb.io/agent", &opts.node_name);
    let routing_status = routing::status();
    if let Some(r) = &opts.routing {
        routing::spawn(
            client.clone(),
            opts.node_name.clone(),
            r.clone(),
            routing_status.clone(),
            publisher.clone(),
        );
    }
    let mut bucket = Bucket::new(opts.events_per_second);
    let mut model = Model::new(&opts.node_name, opts.handle_class_less);
    let mut synced = [false; 4];
    let mut live = false;
    let mut last_set: Option<crate::dataplane::Desired> = None;
    let mut pending_events: Vec<Change> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    health.set(
        false,
        "waiting for the Service, EndpointSlice, Node and AddressPool caches",
    );
    loop {
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { break };
                let changes = apply(&mut model, input, &mut synced, &services, &slices, &nodes, &pools);
                pending_events.extend(changes);
            }
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if !synced.iter().all(|s| *s) {
            continue;
        }
        // Everything queued so far is applied before deciding: bursts coalesce.
        while let Ok(input) = inputs.try_recv() {
            let changes = apply(
                &mut model,
                input,
                &mut synced,
                &services,
                &slices,
                &nodes,
                &pools,
            );
            pending_events.extend(changes);
        }
        // What the node announces changes only with some Service's decision.
        if last_set.is_none() || !pending_events.is_empty() {
            let desired = model.desired();
            if last_set.as_ref() != Some(&desired) {
                dataplane.set(desired.clone());
                last_set = Some(desired);
            }
        }
        let first = !live;
        live = true;
        for c in pending_events.drain(..) {
            // On start, what the kernel already had is no news.
            if first
                && let Some(Decision::Announce(a)) = &c.after
                && a.iter().all(|(ip, _)| started.adopted.contains(ip))
            {
                continue;
            }
            let Some((reason, note)) = describe(&opts.node_name, &c, opts.dataplane.table) else {
                continue;
            };
            if !bucket.take() {
                continue;
            }
            publisher.publish(Note {
                regarding: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Service".into()),
                    namespace: Some(c.key.namespace.clone()),
                    name: Some(c.key.name.clone()),
                    uid: c.uid.clone(),
                    ..ObjectReference::default()
                },
                warning: false,
                reason: reason.into(),
                action: "Announce".into(),
                note,
            });
        }
        let status = dataplane.status();
        let mut detail = format!(
            "{} addresses announced on {}; {} reconciles, {} repairs",
            last_set.as_ref().map_or(0, |d| d.addresses.len()),
            status.interface,
            status.reconciles,
            status.repairs
        );
        if status.fallback.is_some() {
            detail.push_str("; kube-lb0 is an empty bridge (no dummy support)");
        }
        if let Some(e) = &status.last_error {
            detail.push_str(&format!("; last dataplane error: {e}"));
        }
        if opts.routing.is_some() {
            detail.push_str("; ");
            detail.push_str(&routing::describe(&routing_status));
        }
        if bucket.dropped > 0 {
            detail.push_str(&format!(
                "; {} Events dropped by rate limit",
                bucket.dropped
            ));
        }
        // Ready once synced and the kernel has been reconciled once (errors are in the detail).
        health.set(status.reconciles > 0, detail);
        publish_metrics(
            last_set.as_ref(),
            &status,
            &routing_status,
            publisher.dropped() + bucket.dropped,
        );
    }
    let stop = tokio::task::spawn_blocking(move || dataplane.stop());
    let _ = stop.await;
    Ok(())
}

/// Updates the agent's metrics from what it knows now.
fn publish_metrics(
    desired: Option<&crate::dataplane::Desired>,
    dp: &crate::dataplane::Status,
    routing: &std::sync::Mutex<routing::RoutingStatus>,
    events_dropped: u64,
) {
    use crate::metrics::METRICS as M;
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
    M.set_counter(
        "routelb_dataplane_reconciles_total",
        "Reconciles of the kernel's owned addresses and routes.",
        &[],
        dp.reconciles as f64,
    );
    M.set_counter(
        "routelb_dataplane_changes_total",
        "Addresses and routes added or removed in the kernel.",
        &[],
        dp.changes as f64,
    );
    M.set_counter(
        "routelb_netlink_errors_total",
        "Netlink changes the kernel refused.",
        &[],
        dp.errors as f64,
    );
    M.set_counter(
        "routelb_dataplane_repairs_total",
        "Drift repairs: owned entries changed by someone else, put right.",
        &[],
        dp.repairs as f64,
    );
    M.set_counter(
        "routelb_events_dropped_total",
        "Events not sent (rate limit or full queue).",
        &[],
        events_dropped as f64,
    );
    routing::publish_metrics(&routing.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Applies one watch event to the model. On a relist's end, objects that vanished while
/// the watch was down are treated as deleted.
fn apply(
    model: &mut Model,
    input: Input,
    synced: &mut [bool; 4],
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    nodes: &Store<Node>,
    pools: &Store<AddressPool>,
) -> Vec<Change> {
    match input {
        Input::Service(ev) => match ev {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                model.service_applied(Arc::new(s))
            }
            watcher::Event::Delete(s) => model.service_deleted(&service::key(&s)),
            watcher::Event::InitDone => {
                synced[0] = true;
                let present = services.state().iter().map(|s| service::key(s)).collect();
                model.services_relisted(&present)
            }
            watcher::Event::Init => Vec::new(),
        },
        Input::Slice(ev) => match ev {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => model.slice_applied(&s),
            watcher::Event::Delete(s) => {
                model.slice_deleted(&s.namespace().unwrap_or_default(), &s.name_any())
            }
            watcher::Event::InitDone => {
                synced[1] = true;
                let present = slices
                    .state()
                    .iter()
                    .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
                    .collect();
                model.slices_relisted(&present)
            }
            watcher::Event::Init => Vec::new(),
        },
        Input::Node(ev) => match *ev {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => model.node_applied(&n),
            watcher::Event::Delete(_) => model.node_deleted(),
            watcher::Event::InitDone => {
                synced[2] = true;
                if nodes.state().is_empty() {
                    model.node_deleted()
                } else {
                    Vec::new()
                }
            }
            watcher::Event::Init => Vec::new(),
        },
        Input::Pool(ev) => match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => model.pool_applied(&p),
            watcher::Event::Delete(p) => model.pool_deleted(&p.name_any()),
            watcher::Event::InitDone => {
                synced[3] = true;
                let present = pools.state().iter().map(|p| p.name_any()).collect();
                model.pools_relisted(&present)
            }
            watcher::Event::Init => Vec::new(),
        },
    }
}
