//! The agent's routing-daemon task: renders the node's configuration when RouterConfigs,
//! BGPPeers, pools, Secrets, the Node or the template change, validates it, writes it
//! atomically and reloads the daemon only when the text changed. It runs apart from the
//! kernel path: a daemon that is down, slow or misconfigured never delays an address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::crd::{AddressPool, BGPPeer, Daemon as DaemonKind, RouterConfig, SecretKeyRef};
use crate::events::{Note, Publisher};
use crate::kubewatch::watch_into;
use crate::routing::context::{NodeInput, build};
use crate::routing::daemon::{Daemon, DaemonError};
use crate::selector::Selector;

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
            interval: Duration::from_secs(5),
        }
    }
}

/// What the routing task last did, for readiness details and metrics.
#[derive(Clone, Debug, Default)]
pub struct RoutingStatus {
    pub state: String,
    pub daemon: Option<&'static str>,
    pub reachable: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_good_reload: Option<SystemTime>,
}

/// Something the routing configuration depends on changed.
struct Tick;

fn tick<K>(_: watcher::Event<K>) -> Tick {
    Tick
}

/// Starts the routing task; it runs until the client's watches end.
pub fn spawn(
    client: Client,
    node_name: String,
    opts: RoutingOptions,
    status: Arc<Mutex<RoutingStatus>>,
    publisher: Publisher,
) {
    let (tx, rx) = mpsc::channel::<Tick>(1024);
    let configs = watch_into(
        Api::<RouterConfig>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        tick,
    );
    let peers = watch_into(
        Api::<BGPPeer>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        tick,
    );
    let pools = watch_into(
        Api::<AddressPool>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        tick,
    );
    let secrets = watch_into(
        Api::<Secret>::namespaced(client.clone(), &opts.secrets_namespace),
        watcher::Config::default(),
        tx.clone(),
        tick,
    );
    let node_cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let nodes = watch_into(Api::<Node>::all(client), node_cfg, tx, tick);
    let stores = Stores {
        configs,
        peers,
        pools,
        secrets,
        nodes,
    };
    tokio::spawn(run(node_name, opts, stores, rx, status, publisher));
}

struct Stores {
    configs: Store<RouterConfig>,
    peers: Store<BGPPeer>,
    pools: Store<AddressPool>,
    secrets: Store<Secret>,
    nodes: Store<Node>,
}

impl Stores {
    async fn ready(&self) {
        let _ = self.configs.wait_until_ready().await;
        let _ = self.peers.wait_until_ready().await;
        let _ = self.pools.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }
}

/// The rendered configuration, or why there is none.
enum Rendered {
    Text(Daemon, String),
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

fn render_now(node_name: &str, opts: &RoutingOptions, s: &Stores) -> Rendered {
    let Some(node) = s
        .nodes
        .state()
        .into_iter()
        .find(|n| n.name_any() == node_name)
    else {
        return Rendered::Nothing(format!("the Node {node_name} does not exist"));
    };
    let input = node_input(&node);
    let mut configs: Vec<Arc<RouterConfig>> = s
        .configs
        .state()
        .into_iter()
        .filter(|rc| match &rc.spec.node_selector {
            Some(sel) => Selector::from_k8s(sel).is_ok_and(|sel| sel.matches(&input.labels)),
            None => true,
        })
        .collect();
    configs.sort_by_key(|rc| (rc.creation_timestamp().map(|t| t.0), rc.name_any()));
    let Some(rc) = configs.first() else {
        return Rendered::Nothing(format!(
            "no RouterConfig selects node {node_name}; the routing daemon is left as it is"
        ));
    };
    if configs.len() > 1 {
        tracing::warn!(chosen = %rc.name_any(), count = configs.len(), "several RouterConfigs select this node; using the oldest");
    }
    let peers: Vec<(String, crate::crd::BGPPeerSpec)> = s
        .peers
        .state()
        .iter()
        .map(|p| (p.name_any(), p.spec.clone()))
        .collect();
    let pools: Vec<(String, crate::crd::AddressPoolSpec)> = s
        .pools
        .state()
        .iter()
        .map(|p| (p.name_any(), p.spec.clone()))
        .collect();
    let lookup = |r: &SecretKeyRef| -> Result<String, String> {
        let ns = r.namespace.as_deref().unwrap_or(&opts.secrets_namespace);
        if ns != opts.secrets_namespace {
            return Err(format!(
                "Secrets are read from {} only, not {ns}",
                opts.secrets_namespace
            ));
        }
        let key = r.key.as_deref().unwrap_or("password");
        let secret = s
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
    };
    let ctx = match build(&input, (&rc.name_any(), &rc.spec), &peers, &pools, &lookup) {
        Ok(c) => c,
        Err(e) => return Rendered::Error(e.to_string()),
    };
    let kind = rc.spec.daemon.unwrap_or_default();
    let daemon = match kind {
        DaemonKind::Bird => Daemon::Bird {
            config: opts.bird_config.clone(),
            socket: opts.bird_socket.clone(),
        },
        DaemonKind::Frr => Daemon::Frr {
            config: opts.frr_config.clone(),
            vty_dir: opts.frr_vty_dir.clone(),
            vtysh: opts.vtysh.clone(),
            reload: opts.frr_reload.clone(),
        },
    };
    let file = rc
        .spec
        .template
        .clone()
        .unwrap_or_else(|| format!("{}.conf.tera", daemon.name()));
    let path = opts.template_dir.join(&file);
    let template = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Rendered::Error(format!("read template {}: {e}", path.display())),
    };
    match crate::routing::render(&template, &ctx) {
        Ok(text) => Rendered::Text(daemon, text),
        Err(e) => Rendered::Error(format!("template {}: {e:#}", path.display())),
    }
}

async fn run(
    node_name: String,
    opts: RoutingOptions,
    stores: Stores,
    mut rx: mpsc::Receiver<Tick>,
    status: Arc<Mutex<RoutingStatus>>,
    publisher: Publisher,
) {
    stores.ready().await;
    let set = |f: &dyn Fn(&mut RoutingStatus)| {
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        publish_metrics(&s);
    };
    // What the daemon runs now: start from the file on disk, so a restarted agent does
    // not reload a daemon that already has this configuration.
    let mut applied: BTreeMap<&'static str, String> = BTreeMap::new();
    for (name, path) in [("bird", &opts.bird_config), ("frr", &opts.frr_config)] {
        if let Ok(text) = std::fs::read_to_string(path) {
            applied.insert(name, text);
        }
    }
    let mut reported: Option<String> = None;
    let mut tick = tokio::time::interval(opts.interval);
    loop {
        // Coalesce bursts of changes.
        tokio::select! {
            t = rx.recv() => if t.is_none() { return },
            _ = tick.tick() => {}
        }
        while rx.try_recv().is_ok() {}
        let rendered = render_now(&node_name, &opts, &stores);
        let (daemon, text) = match rendered {
            Rendered::Nothing(why) => {
                set(&|s| {
                    s.state = why.clone();
                    s.daemon = None;
                });
                continue;
            }
            Rendered::Error(why) => {
                report(
                    &publisher,
                    &node_name,
                    &mut reported,
                    "RoutingConfigInvalid",
                    &why,
                );
                set(&|s| {
                    s.state = format!("keeping the last good configuration: {why}");
                });
                continue;
            }
            Rendered::Text(d, t) => (d, t),
        };
        let name = daemon.name();
        if applied.get(name) == Some(&text) {
            let d = daemon.clone();
            let probe = tokio::task::spawn_blocking(move || d.probe())
                .await
                .unwrap_or_else(|e| Err(DaemonError::Failed(e.to_string())));
            set(&|s| {
                s.daemon = Some(name);
                s.reachable = probe.is_ok();
                s.state = match &probe {
                    Ok(_) => format!("{name} runs the current configuration"),
                    Err(e) => format!("{name} configuration is current but {e}"),
                };
            });
            continue;
        }
        let d = daemon.clone();
        let t = text.clone();
        let outcome =
            tokio::task::spawn_blocking(move || d.validate(&t).and_then(|_| d.apply(&t))).await;
        let outcome = outcome
            .unwrap_or_else(|e| Err(DaemonError::Failed(format!("the reload task failed: {e}"))));
        match outcome {
            Ok(()) => {
                tracing::info!(daemon = name, path = %daemon.config_path().display(), "routing daemon reloaded with a new configuration");
                applied.insert(name, text);
                reported = None;
                set(&|s| {
                    s.daemon = Some(name);
                    s.reachable = true;
                    s.reloads_ok += 1;
                    s.last_good_reload = Some(SystemTime::now());
                    s.state = format!("{name} reloaded");
                });
            }
            Err(DaemonError::Unreachable(why)) => {
                // Retried at the next tick; the kernel side is unaffected.
                tracing::warn!(daemon = name, error = %why, "routing daemon unreachable; will retry");
                set(&|s| {
                    s.daemon = Some(name);
                    s.reachable = false;
                    s.state = format!("{name} unreachable: {why}");
                });
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(daemon = name, error = %why, "new routing configuration rejected; the last good one keeps running");
                // Do not try the same text again until something changes.
                applied.insert(name, text);
                set(&|s| {
                    s.daemon = Some(name);
                    s.reloads_failed += 1;
                    s.state = format!("keeping the last good {name} configuration: {why}");
                });
                report(
                    &publisher,
                    &node_name,
                    &mut reported,
                    "RoutingConfigRejected",
                    &why,
                );
            }
        }
    }
}

/// An Event on the Node, once per distinct problem.
fn report(
    publisher: &Publisher,
    node: &str,
    reported: &mut Option<String>,
    reason: &str,
    why: &str,
) {
    if reported.as_deref() == Some(why) {
        return;
    }
    *reported = Some(why.to_string());
    publisher.publish(Note {
        regarding: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..ObjectReference::default()
        },
        warning: true,
        reason: reason.into(),
        action: "Reload".into(),
        note: why.to_string(),
    });
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
