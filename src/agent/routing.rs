//! The agent's routing-daemon task: renders the node's configuration from the agent's
//! [`Plan`] (the governing RouterConfig and kernel contract) and the cached BGPPeers,
//! pools, Secrets and Node, validates it, writes it atomically and reloads the daemon
//! only when the text changed. It runs apart from the kernel path: a daemon that is
//! down, slow or misconfigured never delays an address.
//!
//! It also tells the agent which kernel contracts the daemon may be reading, so the
//! dataplane keeps them programmed; and it loads a configuration that reads a new
//! contract only once the dataplane holds the node's state under it. What the daemon
//! was last given is recorded beside its configuration (`<config>.routelb`), so a
//! restarted agent knows it too.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use routelb_core::crd::{
    AddressPoolSpec, BGPPeerSpec, Daemon as DaemonKind, ReloadReport, SecretKeyRef, SessionReport,
};
use routelb_core::net::KernelContract;
use routelb_core::report::{Once, Regarding};
use routelb_core::routing::context::{
    Context, ContextError, Inputs as ContextInputs, NodeInput, build,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Plan, RoutingStores};
use crate::daemon::bird::Bird;
use crate::daemon::frr::Frr;
use crate::daemon::{DaemonError, RoutingDaemon, write_atomic};
use crate::k8s::events::{Note, Publisher};

/// Where the daemons and templates are.
#[derive(Clone, Debug)]
pub struct RoutingOptions {
    pub template_dir: PathBuf,
    pub bird_config: PathBuf,
    pub bird_socket: PathBuf,
    pub frr_config: PathBuf,
    pub frr_vty_dir: PathBuf,
    pub vtysh: PathBuf,
    pub frr_reload: PathBuf,
    /// Namespace of the Secrets holding BGP passwords (routelb's own).
    pub secrets_namespace: String,
    /// How often the template is re-read and a failed or unreachable daemon retried.
    pub interval: Duration,
}

impl Default for RoutingOptions {
    fn default() -> RoutingOptions {
        RoutingOptions {
            template_dir: "/etc/routelb/templates".into(),
            bird_config: "/etc/bird/bird.conf".into(),
            bird_socket: "/run/bird/bird.ctl".into(),
            frr_config: "/etc/frr/frr.conf".into(),
            frr_vty_dir: "/var/run/frr".into(),
            vtysh: "/usr/bin/vtysh".into(),
            frr_reload: "/usr/lib/frr/frr-reload.py".into(),
            secrets_namespace: "routelb-system".into(),
            interval: Duration::from_secs(2),
        }
    }
}

impl RoutingOptions {
    fn daemon(&self, kind: DaemonKind) -> Arc<dyn RoutingDaemon> {
        match kind {
            DaemonKind::Bird => Arc::new(Bird {
                config: self.bird_config.clone(),
                socket: self.bird_socket.clone(),
            }),
            DaemonKind::Frr => Arc::new(Frr {
                config: self.frr_config.clone(),
                vty_dir: self.frr_vty_dir.clone(),
                vtysh: self.vtysh.clone(),
                reload: self.frr_reload.clone(),
            }),
        }
    }
}

/// What the routing task last did, for readiness details, metrics and the node's
/// NodeRoutingStatus.
#[derive(Clone, Debug, Default)]
pub struct RoutingStatus {
    pub state: String,
    pub daemon: Option<&'static str>,
    pub reachable: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_good_reload: Option<SystemTime>,
    /// The daemon's version, read once per daemon process.
    pub version: Option<String>,
    /// The sessions as the daemon last reported them, named after their BGPPeers;
    /// `None` when they could not be read.
    pub sessions: Option<Vec<SessionReport>>,
    /// SHA-256 of the configuration the daemon runs, as routelb rendered it.
    pub config_hash: Option<String>,
    /// The last reload with a new configuration (or the last failed rendering).
    pub last_reload: Option<ReloadReport>,
    /// Why the sessions are unknown: the daemon answers but keeps not saying.
    pub sessions_error: Option<String>,
}

/// What the routing task reads.
#[derive(Debug)]
pub struct Inputs {
    pub stores: RoutingStores,
    pub plan: watch::Receiver<Plan>,
    /// The contracts the dataplane holds the node's state under.
    pub programmed: watch::Receiver<Vec<KernelContract>>,
}

/// What routelb records beside a configuration it gave the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Given {
    contract: KernelContract,
}

fn given_path(config: &Path) -> PathBuf {
    let mut name = config
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".routelb");
    config.with_file_name(name)
}

fn read_given(config: &Path) -> Option<Given> {
    let text = std::fs::read_to_string(given_path(config)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The contracts the daemon may be reading when the agent starts: what was recorded
/// beside each configuration, else `fallback` (what agents before 0.2 programmed).
fn initial_reads(opts: &RoutingOptions, fallback: &KernelContract) -> Vec<KernelContract> {
    let mut reads: Vec<KernelContract> = [&opts.bird_config, &opts.frr_config]
        .into_iter()
        .filter_map(|p| read_given(p))
        .map(|g| g.contract)
        .collect();
    reads.dedup();
    if reads.is_empty() {
        reads.push(fallback.clone());
    }
    reads
}

/// Starts the routing task; it runs until the agent's plan channel closes. Returns the
/// contracts the daemon may be reading, kept current.
pub fn spawn(
    node_name: String,
    opts: RoutingOptions,
    inputs: Inputs,
    fallback: KernelContract,
    status: Arc<Mutex<RoutingStatus>>,
    publisher: Publisher,
) -> watch::Receiver<Vec<KernelContract>> {
    let (reads, reads_rx) = watch::channel(initial_reads(&opts, &fallback));
    let task = Task {
        node_name,
        opts,
        status,
        publisher,
        reads,
        applied: BTreeMap::new(),
        rejected: BTreeMap::new(),
        reported: Once::default(),
        previous: None,
        applied_context: BTreeMap::new(),
        instances: BTreeMap::new(),
        given: BTreeMap::new(),
        objects: Once::default(),
        versions: BTreeMap::new(),
        session_failures: 0,
    };
    tokio::spawn(task.run(inputs));
    reads_rx
}

/// The rendered configuration, or why there is none.
enum Rendered {
    Text {
        daemon: Arc<dyn RoutingDaemon>,
        text: String,
        context: Box<Context>,
    },
    Nothing(String),
    Error(String),
}

fn node_input(node: &Node) -> NodeInput {
    let mut addresses: Vec<(u8, IpAddr)> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let rank = match a.type_.as_str() {
                "InternalIP" => 0,
                "ExternalIP" => 1,
                _ => return None,
            };
            a.address.parse().ok().map(|ip| (rank, ip))
        })
        .collect();
    addresses.sort();
    NodeInput {
        name: node.name_any(),
        labels: node.labels().clone(),
        addresses: addresses.into_iter().map(|(_, ip)| ip).collect(),
    }
}

/// A BGP password from the cached Secrets of routelb's namespace.
fn password(stores: &RoutingStores, namespace: &str, r: &SecretKeyRef) -> Result<String, String> {
    let ns = r.namespace.as_deref().unwrap_or(namespace);
    if ns != namespace {
        return Err(format!("Secrets are read from {namespace} only, not {ns}"));
    }
    let key = r.key.as_deref().unwrap_or("password");
    let secret = stores
        .secrets
        .state()
        .into_iter()
        .find(|x| x.name_any() == r.name)
        .ok_or_else(|| format!("Secret {ns}/{} not found", r.name))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {ns}/{} has no key {key}", r.name))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| format!("Secret {ns}/{} key {key} is not text", r.name))
}

struct Task {
    node_name: String,
    opts: RoutingOptions,
    status: Arc<Mutex<RoutingStatus>>,
    publisher: Publisher,
    reads: watch::Sender<Vec<KernelContract>>,
    /// What each daemon runs, as far as routelb knows.
    applied: BTreeMap<&'static str, String>,
    /// A configuration the daemon refused: not tried again until it changes.
    rejected: BTreeMap<&'static str, String>,
    reported: Once<()>,
    /// The last context rendered: invalid objects keep their version from it.
    previous: Option<Context>,
    /// The context each daemon's configuration was last rendered from, as loaded.
    applied_context: BTreeMap<&'static str, Context>,
    /// Each daemon's process as last seen, or why it did not answer.
    instances: BTreeMap<&'static str, Result<String, String>>,
    /// The contract recorded beside each daemon's configuration, as last read or written.
    given: BTreeMap<&'static str, Option<KernelContract>>,
    /// Problems with single objects, reported once each.
    objects: Once<String>,
    /// Each daemon's version, with the process it was read from.
    versions: BTreeMap<&'static str, (String, Option<String>)>,
    /// Failed session reads in a row.
    session_failures: u32,
}

/// Failed session reads in a row after which the sessions are reported unknown.
const SESSION_FAILURES: u32 = 3;

/// Now, as the API stores times (whole seconds), so what is read back compares equal.
fn now_second() -> Time {
    Time(routelb_core::status::whole_seconds(
        k8s_openapi::jiff::Timestamp::now(),
    ))
}

impl Task {
    fn render(&mut self, stores: &RoutingStores, plan: &Plan) -> Rendered {
        let node_name = &self.node_name;
        let Some(node) = stores
            .nodes
            .state()
            .into_iter()
            .find(|n| n.name_any() == *node_name)
        else {
            return Rendered::Nothing(format!("the Node {node_name} does not exist"));
        };
        let Some(rc) = &plan.router else {
            return Rendered::Nothing(format!(
                "no RouterConfig selects node {node_name}; the routing daemon is left as it is"
            ));
        };
        let peers: Vec<(String, BGPPeerSpec)> = stores
            .peers
            .state()
            .iter()
            .map(|p| (p.name_any(), p.spec.clone()))
            .collect();
        let pools: Vec<(String, AddressPoolSpec)> = stores
            .pools
            .state()
            .iter()
            .map(|p| (p.name_any(), p.spec.clone()))
            .collect();
        let namespace = self.opts.secrets_namespace.clone();
        let lookup = |r: &SecretKeyRef| password(stores, &namespace, r);
        let input = node_input(&node);
        let name = rc.name_any();
        let built = build(&ContextInputs {
            node: &input,
            router: (&name, &rc.spec),
            kernel: &plan.contract,
            peers: &peers,
            pools: &pools,
            password: &lookup,
            previous: self.previous.as_ref(),
        });
        let built = match built {
            Ok(b) => b,
            Err(e) => return Rendered::Error(e.to_string()),
        };
        for p in &built.problems {
            self.object_problem(p);
        }
        for n in &built.notes {
            self.unsupported(&name, n);
        }
        let ctx = built.context;
        let daemon = self.opts.daemon(rc.spec.daemon.unwrap_or_default());
        let file = rc
            .spec
            .template
            .clone()
            .unwrap_or_else(|| format!("{}.conf.tera", daemon.name()));
        let path = self.opts.template_dir.join(&file);
        let template = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Rendered::Error(format!("read template {}: {e}", path.display())),
        };
        let rendered = routelb_core::routing::render(&template, &ctx);
        if rendered.is_ok() {
            self.previous = Some(ctx.clone());
        }
        match rendered {
            Ok(text) => Rendered::Text {
                daemon,
                text,
                context: Box::new(ctx),
            },
            Err(e) => Rendered::Error(format!("template {}: {e}", path.display())),
        }
    }

    fn set(&self, f: impl FnOnce(&mut RoutingStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        publish_metrics(&s);
    }

    /// The daemon reads `contract` now: record it, and tell the agent.
    fn reads(&mut self, daemon: &dyn RoutingDaemon, contract: &KernelContract) {
        let recorded = self
            .given
            .entry(daemon.name())
            .or_insert_with(|| read_given(daemon.config_path()).map(|g| g.contract));
        if recorded.as_ref() != Some(contract) {
            let path = given_path(daemon.config_path());
            let given = Given {
                contract: contract.clone(),
            };
            let text = serde_json::to_string(&given).unwrap_or_default();
            match write_atomic(&path, &text) {
                Ok(()) => *recorded = Some(contract.clone()),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot record the kernel contract the daemon reads; a restarted agent keeps the old one programmed too")
                }
            }
        }
        self.reads.send_if_modified(|r| {
            let changed = r.as_slice() != std::slice::from_ref(contract);
            if changed {
                *r = vec![contract.clone()];
            }
            changed
        });
    }

    async fn run(mut self, mut inputs: Inputs) {
        // What the daemon runs now: start from the file on disk, so a restarted agent does
        // not reload a daemon that already has this configuration.
        for (name, path) in [
            ("bird", &self.opts.bird_config),
            ("frr", &self.opts.frr_config),
        ] {
            if let Ok(text) = std::fs::read_to_string(path) {
                self.applied.insert(name, text);
            }
        }
        // Nothing to render before the agent's caches have synced and it has decided.
        while inputs.plan.borrow().generation == 0 {
            if inputs.plan.changed().await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(self.opts.interval);
        loop {
            tokio::select! {
                changed = inputs.plan.changed() => if changed.is_err() { return },
                _ = inputs.programmed.changed() => {}
                _ = tick.tick() => {}
            }
            let plan = inputs.plan.borrow_and_update().clone();
            // The daemon the node's RouterConfig names is followed and its sessions read
            // whatever the rendering gives: a daemon keeps running its last configuration.
            if let Some(rc) = &plan.router {
                let daemon = self.opts.daemon(rc.spec.daemon.unwrap_or_default());
                self.follow(&daemon).await;
                self.observe(&daemon).await;
            }
            match self.render(&inputs.stores, &plan) {
                Rendered::Nothing(why) => self.set(|s| {
                    s.state = why;
                    s.daemon = None;
                }),
                Rendered::Error(why) => {
                    self.report("RoutingConfigInvalid", &why);
                    let message = format!("the configuration cannot be rendered: {why}");
                    self.set(|s| {
                        s.state = format!("keeping the last good configuration: {why}");
                        // Once per distinct failure, so the report does not change each tick.
                        let same = s.last_reload.as_ref().is_some_and(|r| {
                            r.result == "failed" && r.message.as_deref() == Some(message.as_str())
                        });
                        if !same {
                            s.last_reload = Some(ReloadReport {
                                result: "failed".into(),
                                time: now_second(),
                                message: Some(message),
                            });
                        }
                    });
                }
                Rendered::Text {
                    daemon,
                    text,
                    context,
                } => {
                    let programmed = inputs.programmed.borrow().contains(&plan.contract);
                    self.offer(daemon, text, plan.contract.clone(), *context, programmed)
                        .await;
                }
            }
        }
    }

    /// Follows the daemon's process: says when it stops answering and when it is back,
    /// and when it restarted (it may run any configuration then, its bootstrap one for
    /// instance) forgets what it was given, so that it is given its configuration again.
    async fn follow(&mut self, daemon: &Arc<dyn RoutingDaemon>) {
        let name = daemon.name();
        let d = daemon.clone();
        let instance = tokio::task::spawn_blocking(move || d.instance())
            .await
            .unwrap_or_else(|e| Err(task_failed(&e)));
        let seen = self.instances.get(name).cloned();
        let event = |reason: &str, warning: bool, note: String| Note {
            regarding: Regarding::node(&self.node_name),
            warning,
            reason: reason.into(),
            action: "Follow".into(),
            note,
        };
        match instance {
            Ok(id) => {
                let note = match &seen {
                    Some(Ok(old)) if daemon.restarted(old, &id) => Some((
                        "RoutingDaemonRestarted",
                        format!(
                            "{name} restarted on node {}; routelb gives it its configuration again",
                            self.node_name
                        ),
                    )),
                    Some(Err(_)) => Some((
                        "RoutingDaemonUp",
                        format!(
                            "{name} answers again on node {}; routelb gives it its configuration again",
                            self.node_name
                        ),
                    )),
                    _ => None,
                };
                if let Some((reason, note)) = note {
                    let was = match &seen {
                        Some(Ok(old)) => old.clone(),
                        _ => String::new(),
                    };
                    tracing::warn!(daemon = name, was = %was, now = %id, "{note}");
                    self.publisher.publish(event(reason, false, note));
                    self.applied.remove(name);
                    self.applied_context.remove(name);
                }
                self.instances.insert(name, Ok(id));
                // It answers, whatever becomes of the configuration (one that cannot be
                // rendered must not show the daemon as down).
                self.set(|s| {
                    s.daemon = Some(name);
                    s.reachable = true;
                });
            }
            Err(e) => {
                if !matches!(seen, Some(Err(_))) {
                    let note = format!(
                        "{name} does not answer on node {}: {e}; the kernel side goes on, the configuration is given again when it is back",
                        self.node_name
                    );
                    tracing::warn!(daemon = name, error = %e, "routing daemon down");
                    self.publisher
                        .publish(event("RoutingDaemonDown", true, note));
                }
                self.instances.insert(name, Err(e.to_string()));
                self.set(|s| {
                    s.daemon = Some(name);
                    s.reachable = false;
                    s.state = format!("{name} unreachable: {e}");
                });
            }
        }
    }

    /// Reads the daemon's sessions (and, once per daemon process, its version) for the
    /// node's report, naming each after the BGPPeer of its address.
    async fn observe(&mut self, daemon: &Arc<dyn RoutingDaemon>) {
        let name = daemon.name();
        let Some(Ok(instance)) = self.instances.get(name).cloned() else {
            self.set(|s| s.sessions = None);
            return;
        };
        // Read again after a daemon restart, and until the daemon has said.
        let fresh = self
            .versions
            .get(name)
            .is_none_or(|(i, v)| daemon.restarted(i, &instance) || v.is_none());
        let d = daemon.clone();
        let read = tokio::task::spawn_blocking(move || {
            let version = if fresh { d.version() } else { None };
            (version, d.sessions(k8s_openapi::jiff::Timestamp::now()))
        })
        .await;
        let Ok((version, sessions)) = read else {
            return;
        };
        if fresh {
            self.versions.insert(name, (instance, version));
        }
        let version = self.versions.get(name).and_then(|(_, v)| v.clone());
        // Named after the peers of the configuration as rendered (what the node should
        // run): a peer the daemon lacks because its reload was refused shows as such.
        let peers = self
            .previous
            .as_ref()
            .or(self.applied_context.get(name))
            .map(|c| c.peers.clone())
            .unwrap_or_default();
        let (sessions, error) = match sessions {
            Ok(list) => {
                self.session_failures = 0;
                (
                    Some(routelb_core::status::name_sessions(list, &peers)),
                    None,
                )
            }
            Err(e) => {
                self.session_failures += 1;
                tracing::debug!(daemon = name, error = %e, failures = self.session_failures, "cannot read the daemon's sessions");
                // A slow reply now and then keeps the last known sessions; a daemon
                // that keeps not saying makes them unknown.
                let error = (self.session_failures >= SESSION_FAILURES)
                    .then(|| format!("cannot read the sessions from {name}: {e}"));
                (None, error)
            }
        };
        self.set(|s| {
            s.version = version;
            s.sessions = sessions;
            s.sessions_error = error;
        });
    }

    /// Gives the daemon a rendered configuration, unless it runs it already, refused it,
    /// or it reads a contract the kernel does not hold yet.
    async fn offer(
        &mut self,
        daemon: Arc<dyn RoutingDaemon>,
        text: String,
        contract: KernelContract,
        context: Context,
        programmed: bool,
    ) {
        let name = daemon.name();
        if self.applied.get(name) == Some(&text) {
            let hash = config_hash(&text);
            self.set(|s| {
                s.config_hash = Some(hash);
                // A refused or unrenderable configuration was taken back: current again.
                if s.last_reload.as_ref().is_some_and(|r| r.result != "ok") {
                    s.last_reload = Some(ReloadReport {
                        result: "ok".into(),
                        time: now_second(),
                        message: Some("the daemon runs the current configuration again".into()),
                    });
                }
            });
            self.reads(daemon.as_ref(), &contract);
            self.applied_context.entry(name).or_insert(context);
            // `follow` asked the daemon this round.
            let answer = self.instances.get(name).cloned();
            self.set(|s| {
                s.daemon = Some(name);
                s.reachable = matches!(answer, Some(Ok(_)));
                s.state = match &answer {
                    Some(Err(e)) => format!("{name} configuration is current but {e}"),
                    _ => format!("{name} runs the current configuration"),
                };
            });
            return;
        }
        if self.rejected.get(name) == Some(&text) {
            return;
        }
        if !programmed {
            self.set(|s| {
                s.daemon = Some(name);
                s.state = format!("waiting for the kernel to hold the Services under {contract} before reloading {name}");
            });
            return;
        }
        let (d, t) = (daemon.clone(), text.clone());
        let before = self.applied_context.get(name).cloned();
        let after = context.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            d.validate(&t)?;
            d.apply(&t)?;
            d.settle(before.as_ref(), &after)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed(&e)));
        match outcome {
            Ok(()) => {
                tracing::info!(daemon = name, path = %daemon.config_path().display(), %contract, "routing daemon reloaded with a new configuration");
                self.applied.insert(name, text);
                self.applied_context.insert(name, context);
                self.rejected.remove(name);
                self.reads(daemon.as_ref(), &contract);
                self.reported.clear(&());
                let hash = config_hash(self.applied.get(name).map_or("", String::as_str));
                self.set(|s| {
                    s.daemon = Some(name);
                    s.reachable = true;
                    s.reloads_ok += 1;
                    s.last_good_reload = Some(SystemTime::now());
                    s.state = format!("{name} reloaded");
                    s.config_hash = Some(hash);
                    s.last_reload = Some(ReloadReport {
                        result: "ok".into(),
                        time: now_second(),
                        message: None,
                    });
                });
            }
            Err(e) if e.is_unreachable() => {
                // Retried at the next tick; the kernel side is unaffected.
                tracing::warn!(daemon = name, error = %e, "routing daemon unreachable; will retry");
                self.set(|s| {
                    s.daemon = Some(name);
                    s.reachable = false;
                    s.state = format!("{name} unreachable: {e}");
                });
            }
            Err(e) => {
                tracing::warn!(daemon = name, error = %e, "new routing configuration rejected; the last good one keeps running");
                self.rejected.insert(name, text);
                self.set(|s| {
                    s.daemon = Some(name);
                    s.reloads_failed += 1;
                    s.state = format!("keeping the last good {name} configuration: {e}");
                    s.last_reload = Some(ReloadReport {
                        result: "failed".into(),
                        time: now_second(),
                        message: Some(e.to_string()),
                    });
                });
                self.report("RoutingConfigRejected", &e.to_string());
            }
        }
    }

    /// A Warning Event on an object the context could not use, once per distinct problem.
    fn object_problem(&mut self, p: &routelb_core::routing::context::Problem) {
        let regarding = match &p.error {
            ContextError::Peer { name, .. } => Regarding::peer(name),
            ContextError::Pool { name, .. } => Regarding::pool(name),
            ContextError::RouterConfig { name, .. } => Regarding::router_config(name),
        };
        let note = format!("node {}: {p}", self.node_name);
        if !self
            .objects
            .news(format!("{}/{}", regarding.kind, regarding.name), &note)
        {
            return;
        }
        tracing::warn!(object = %regarding.name, kind = regarding.kind, "{note}");
        self.publisher.publish(Note {
            regarding,
            warning: true,
            reason: "RoutingObjectInvalid".into(),
            action: "Render".into(),
            note,
        });
    }

    /// A Warning Event on the RouterConfig for a setting the daemon cannot apply.
    fn unsupported(&mut self, router: &str, note: &str) {
        if !self.objects.news(format!("RouterConfig/{router}"), note) {
            return;
        }
        tracing::warn!(router, "{note}");
        self.publisher.publish(Note {
            regarding: Regarding::router_config(router),
            warning: true,
            reason: "UnsupportedSetting".into(),
            action: "Render".into(),
            note: note.to_string(),
        });
    }

    /// A Warning Event on the Node, once per distinct problem.
    fn report(&mut self, reason: &str, why: &str) {
        if !self.reported.news((), why) {
            return;
        }
        self.publisher.publish(Note {
            regarding: Regarding::node(&self.node_name),
            warning: true,
            reason: reason.into(),
            action: "Reload".into(),
            note: why.to_string(),
        });
    }
}

/// `sha256:<hex>` of a configuration.
fn config_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn task_failed(e: &tokio::task::JoinError) -> DaemonError {
    DaemonError::Failed {
        what: "the routing daemon task".into(),
        errno: None,
        message: e.to_string(),
    }
}

/// A status handle shared with the agent's readiness detail.
pub fn status() -> Arc<Mutex<RoutingStatus>> {
    Arc::default()
}

/// Formats the routing part of the readiness detail.
pub fn describe(status: &Mutex<RoutingStatus>) -> String {
    let s = status.lock().unwrap_or_else(|e| e.into_inner());
    if s.state.is_empty() {
        return "routing: starting".into();
    }
    let mut d = format!("routing: {}", s.state);
    if s.reloads_ok + s.reloads_failed > 0 {
        d.push_str(&format!(
            " ({} reloads, {} rejected)",
            s.reloads_ok, s.reloads_failed
        ));
    }
    d
}

/// Publishes the routing daemon's metrics; called on every status change, so a scrape
/// right after a reload or a rejection sees it.
pub(crate) fn publish_metrics(r: &RoutingStatus) {
    use crate::metrics::METRICS as M;
    let reloads = "Routing daemon reloads with a new configuration, by result (failed: rejected by validation or the daemon).";
    M.set_counter(
        "routelb_daemon_reloads_total",
        reloads,
        &[("result", "ok")],
        r.reloads_ok as f64,
    );
    M.set_counter(
        "routelb_daemon_reloads_total",
        reloads,
        &[("result", "failed")],
        r.reloads_failed as f64,
    );
    M.set(
        "routelb_daemon_up",
        "1 when the routing daemon answered at the last check.",
        &[],
        if r.reachable { 1.0 } else { 0.0 },
    );
    if let Some(sessions) = &r.sessions {
        M.clear("routelb_bgp_session_up");
        M.clear("routelb_bgp_session_prefixes_sent");
        M.clear("routelb_bgp_session_prefixes_received");
        for s in sessions {
            let peer = s.peer.as_deref().unwrap_or("");
            let labels = [("peer", peer), ("address", s.address.as_str())];
            M.set(
                "routelb_bgp_session_up",
                "1 when the BGP session with the router (peer: its BGPPeer) is Established, as the routing daemon reports it.",
                &labels,
                if s.established() { 1.0 } else { 0.0 },
            );
            if let Some(n) = s.prefixes_sent {
                M.set(
                    "routelb_bgp_session_prefixes_sent",
                    "Prefixes the routing daemon sends to the router on the session.",
                    &labels,
                    n as f64,
                );
            }
            if let Some(n) = s.prefixes_received {
                M.set(
                    "routelb_bgp_session_prefixes_received",
                    "Prefixes the routing daemon receives from the router on the session.",
                    &labels,
                    n as f64,
                );
            }
        }
    }
    if let Some(t) = r
        .last_good_reload
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        M.set(
            "routelb_daemon_last_good_reload_timestamp_seconds",
            "When the routing daemon last loaded a new configuration (Unix time).",
            &[],
            t.as_secs_f64(),
        );
    }
}
