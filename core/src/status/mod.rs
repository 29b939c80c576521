//! Where routing stands, answered from the cluster: each node's report (the daemon, its
//! BGP sessions, what the node announces), the BGPPeer and RouterConfig statuses the
//! allocator derives from all nodes' reports, and what `routelb status` prints.
//!
//! - [`bird`] and [`frr`]: the daemons' own session reports, read into [`SessionReport`]s.
//! - [`chain`]: the verdicts for one Service and the cluster summary.

pub mod bird;
pub mod chain;
pub mod frr;

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube_core::ResourceExt;

use crate::allocation::{Conditions, differs_but_times};
use crate::crd::{
    AnnouncedReport, BGPPeer, BGPPeerStatus, DaemonReport, KernelReport, L2Report,
    NodeRoutingReport, NodeRoutingStatus, RouterConfig, RouterConfigStatus, SessionReport,
};
use crate::routing::context::PeerCtx;

/// Addresses listed in a node's report at most (the counts are always there).
pub const LISTED_ADDRESSES: usize = 32;
/// Nodes named in a BGPPeer's or RouterConfig's status at most.
pub const LISTED_NODES: usize = 8;
/// A quiet agent rewrites its report this often (seconds), so that readers can tell a
/// running agent from one that is gone.
pub const HEARTBEAT: i64 = 300;
/// A report whose heartbeat is older than this (seconds) is stale: its agent is gone.
pub const STALE_AFTER: i64 = 2 * HEARTBEAT + 120;

/// A time as the API stores it (whole seconds): a finer one would never read back equal.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// How long ago a report was written, if it is stale (its agent is gone).
pub fn stale(r: &NodeRoutingStatus, now: Timestamp) -> Option<i64> {
    let t = r.status.as_ref()?.heartbeat_time.as_ref()?;
    let age = now.as_second() - t.0.as_second();
    (age > STALE_AFTER).then_some(age)
}

/// Whether a report is due to be written although nothing changed (its heartbeat).
pub fn heartbeat_due(r: &NodeRoutingReport, now: Timestamp) -> bool {
    r.heartbeat_time
        .as_ref()
        .is_none_or(|t| now.as_second() - t.0.as_second() >= HEARTBEAT)
}

/// The state a session gets when a BGPPeer selects the node but the daemon does not
/// run a session with the router (its configuration with the peer was not loaded).
pub const MISSING: &str = "NotConfigured";
/// The state sessions get while the node's routing daemon does not answer.
pub const DAEMON_DOWN: &str = "DaemonDown";
/// The state sessions get while the daemon answers but its sessions cannot be read.
pub const UNKNOWN: &str = "Unknown";

/// What the agent knows of its routing daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonFacts {
    pub name: String,
    pub version: Option<String>,
    pub up: bool,
    pub message: Option<String>,
    pub config_hash: Option<String>,
    pub last_reload: Option<crate::crd::ReloadReport>,
}

/// Everything a node's report is made of.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub router_config: Option<String>,
    pub also_selected_by: Vec<String>,
    pub daemon: Option<DaemonFacts>,
    /// As the daemon reports them; `None` when they could not be read this time.
    pub sessions: Option<Vec<SessionReport>>,
    /// Why the sessions have not been readable for a while (they are then unknown).
    pub sessions_error: Option<String>,
    /// Service addresses announced, by kind (loadbalancer, external, cluster).
    pub by_kind: [usize; 3],
    pub addresses: Vec<IpAddr>,
    pub prefixes: usize,
    pub kernel: Option<KernelReport>,
    pub l2: Vec<L2Report>,
}

/// The sessions to report: the daemon's, each named after the BGPPeer of its address,
/// and a [`MISSING`] one for each peer the node should have but the daemon lacks.
pub fn name_sessions(mut sessions: Vec<SessionReport>, peers: &[PeerCtx]) -> Vec<SessionReport> {
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    for s in &mut sessions {
        if let Some(p) = peers.iter().find(|p| ip(&p.address) == ip(&s.address)) {
            s.peer = Some(p.name.clone());
            s.asn = s.asn.or(Some(p.asn));
        }
    }
    for p in peers {
        if !sessions.iter().any(|s| ip(&s.address) == ip(&p.address)) {
            sessions.push(SessionReport {
                peer: Some(p.name.clone()),
                address: p.address.clone(),
                asn: Some(p.asn),
                state: MISSING.into(),
                last_error: Some(
                    "the routing daemon runs no session with this router: the configuration with it is not loaded (see the Reload column and the Node's Events)".into(),
                ),
                ..SessionReport::default()
            });
        }
    }
    sessions.sort_by(|a, b| (&a.peer, &a.address).cmp(&(&b.peer, &b.address)));
    sessions
}

/// A node's report at `now`; conditions keep their transition times from `previous`.
pub fn node_report(
    f: &NodeFacts,
    previous: Option<&NodeRoutingReport>,
    now: Timestamp,
) -> NodeRoutingReport {
    let now = whole_seconds(now);
    let current = previous.map_or(&[][..], |p| p.conditions.as_slice());
    let mut conditions = Conditions::new(None, current, now);
    let before = previous.map_or(&[][..], |p| p.sessions.as_slice());
    let mut sessions = match &f.sessions {
        Some(list) => steady(list, before),
        // Not read this time: the last known, so a slow daemon does not flap the report.
        None => before.to_vec(),
    };
    // A daemon that does not answer, or keeps not saying, runs no session routelb can
    // vouch for.
    let unknown = match (&f.daemon, &f.sessions_error) {
        (Some(d), _) if !d.up => Some((DAEMON_DOWN, "the node's routing daemon does not answer")),
        (_, Some(e)) => Some((UNKNOWN, e.as_str())),
        _ => None,
    };
    if let Some((state, why)) = unknown {
        for s in &mut sessions {
            if s.state == state {
                continue;
            }
            // Since when it is so: kept from the last report that said so.
            let since = before
                .iter()
                .find(|b| b.address == s.address && b.state == state)
                .and_then(|b| b.since.clone())
                .unwrap_or(Time(now));
            *s = SessionReport {
                state: state.into(),
                since: Some(since),
                last_error: Some(why.to_string()),
                prefixes_sent: None,
                prefixes_received: None,
                ..s.clone()
            };
        }
    }
    let up = sessions.iter().filter(|s| s.established()).count();
    let daemon = f.daemon.as_ref().map(|d| DaemonReport {
        name: d.name.clone(),
        version: d.version.clone(),
        up: d.up,
        summary: match (&d.version, d.up) {
            (Some(v), true) => format!("{} {v}", d.name),
            (None, true) => d.name.clone(),
            (_, false) => format!("{} down", d.name),
        },
        message: d.message.clone(),
        config_hash: d.config_hash.clone(),
        last_reload: d.last_reload.clone(),
    });
    match &daemon {
        Some(d) => {
            let why = d.message.clone().unwrap_or_default();
            if d.up {
                conditions.set(
                    "DaemonUp",
                    true,
                    "Answers",
                    &format!("{} answers", d.summary),
                );
            } else {
                conditions.set(
                    "DaemonUp",
                    false,
                    "NotAnswering",
                    &format!("{} does not answer: {why}", d.name),
                );
            }
            match &d.last_reload {
                Some(r) if r.result != "ok" => conditions.set(
                    "ConfigLoaded",
                    false,
                    "ReloadFailed",
                    &format!(
                        "the last configuration was refused, the one before keeps running: {}",
                        r.message.as_deref().unwrap_or("no message")
                    ),
                ),
                _ => conditions.set(
                    "ConfigLoaded",
                    true,
                    "Current",
                    &why_or(&why, "the daemon runs the current configuration"),
                ),
            }
            if sessions.is_empty() {
                conditions.set(
                    "SessionsEstablished",
                    false,
                    "NoSessions",
                    "no BGP session: no BGPPeer selects this node",
                );
            } else if up == sessions.len() {
                conditions.set(
                    "SessionsEstablished",
                    true,
                    "AllEstablished",
                    &format!("{up} of {} sessions Established", sessions.len()),
                );
            } else {
                let down: Vec<String> = sessions
                    .iter()
                    .filter(|s| !s.established())
                    .map(|s| format!("{} {}", s.address, s.state))
                    .collect();
                conditions.set(
                    "SessionsEstablished",
                    false,
                    "SomeDown",
                    &format!(
                        "{up} of {} sessions Established; not: {}",
                        sessions.len(),
                        down.join(", ")
                    ),
                );
            }
        }
        None => conditions.set(
            "DaemonUp",
            false,
            "NotConfigured",
            "no RouterConfig selects this node: routelb leaves its routing daemon alone",
        ),
    }
    let mut addresses: Vec<String> = f.addresses.iter().map(IpAddr::to_string).collect();
    let truncated = addresses.len() > LISTED_ADDRESSES;
    addresses.truncate(LISTED_ADDRESSES);
    NodeRoutingReport {
        router_config: f.router_config.clone(),
        also_selected_by: f.also_selected_by.clone(),
        sessions_established: daemon.as_ref().map(|_| format!("{up}/{}", sessions.len())),
        daemon,
        sessions,
        announced: AnnouncedReport {
            total: f.addresses.len() as u32,
            load_balancer: f.by_kind[0] as u32,
            external: f.by_kind[1] as u32,
            cluster: f.by_kind[2] as u32,
            prefixes: f.prefixes as u32,
            addresses,
            addresses_truncated: truncated,
        },
        kernel: f.kernel.clone(),
        l2: f.l2.clone(),
        conditions: conditions.into_list(),
        heartbeat_time: Some(Time(now)),
    }
}

/// Sessions whose "since" moved by a few seconds only, in the same state, keep the time
/// reported before: daemons that say "this long ago" in whole seconds would otherwise
/// make every report new.
fn steady(sessions: &[SessionReport], before: &[SessionReport]) -> Vec<SessionReport> {
    sessions
        .iter()
        .map(|s| {
            let mut s = s.clone();
            let old = before
                .iter()
                .find(|b| b.address == s.address && b.state == s.state && b.peer == s.peer);
            if let (Some(old), Some(Time(new))) = (old.and_then(|o| o.since.clone()), &s.since)
                && (new.as_second() - old.0.as_second()).abs() <= 2
            {
                s.since = Some(old);
            }
            s
        })
        .collect()
}

fn why_or(why: &str, default: &str) -> String {
    if why.is_empty() {
        default.to_string()
    } else {
        why.to_string()
    }
}

/// Whether two reports differ in anything but condition transition times and the
/// heartbeat.
pub fn report_differs(a: &NodeRoutingReport, b: &NodeRoutingReport) -> bool {
    let beatless = |r: &NodeRoutingReport| NodeRoutingReport {
        heartbeat_time: None,
        ..r.clone()
    };
    differs_but_times(&beatless(a), &beatless(b), |r| &mut r.conditions)
}

/// The nodes' sessions with one BGPPeer: `(report, session)`, by node name.
pub fn peer_sessions<'a>(
    peer: &BGPPeer,
    reports: &'a [std::sync::Arc<NodeRoutingStatus>],
) -> Vec<(&'a NodeRoutingStatus, &'a SessionReport)> {
    let name = peer.name_any();
    let address = peer.spec.address.parse::<IpAddr>().ok();
    let mut out: Vec<(&NodeRoutingStatus, &SessionReport)> = reports
        .iter()
        .filter_map(|r| {
            let s = r.status.as_ref()?.sessions.iter().find(|s| match &s.peer {
                Some(p) => *p == name,
                None => s.address.parse::<IpAddr>().ok() == address,
            })?;
            Some((r.as_ref(), s))
        })
        .collect();
    out.sort_by(|(a, _), (b, _)| a.spec.node_name.cmp(&b.spec.node_name));
    out
}

/// The session part of a BGPPeer's status: `Established` and the counts.
pub fn peer_session_status(
    peer: &BGPPeer,
    reports: &[std::sync::Arc<NodeRoutingStatus>],
    status: &mut BGPPeerStatus,
    now: Timestamp,
) {
    let sessions = peer_sessions(peer, reports);
    let current = peer
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    let mut conditions = Conditions::new(peer.metadata.generation, current, now);
    // A gone agent's report vouches for nothing.
    let up = sessions
        .iter()
        .filter(|(r, s)| s.established() && stale(r, now).is_none())
        .count();
    let down: Vec<String> = sessions
        .iter()
        .filter_map(|(r, s)| {
            let n = &r.spec.node_name;
            match stale(r, now) {
                Some(secs) => Some(format!(
                    "{n}: no report for {} (is its agent running?)",
                    age(secs)
                )),
                None => (!s.established()).then(|| format!("{n}: {}", session_state(s, now))),
            }
        })
        .collect();
    if sessions.is_empty() {
        conditions.set(
            "Established",
            false,
            "NoSessions",
            "no node reports a session with this router: check the BGPPeer's nodeSelector, that a RouterConfig selects those nodes, and that their agents run",
        );
    } else if down.is_empty() {
        conditions.set(
            "Established",
            true,
            "AllEstablished",
            &format!("Established on all {up} nodes that peer with it"),
        );
    } else {
        let mut shown = down.clone();
        shown.truncate(LISTED_NODES);
        conditions.set(
            "Established",
            false,
            "SomeDown",
            &format!(
                "Established on {up} of {} nodes; {}{}",
                sessions.len(),
                shown.join("; "),
                if down.len() > shown.len() {
                    "; ..."
                } else {
                    ""
                }
            ),
        );
    }
    status.conditions.retain(|c| c.type_ != "Established");
    status.conditions.extend(conditions.into_list());
    status.nodes = Some(sessions.len() as i32);
    status.established = Some(up as i32);
    status.sessions = Some(format!("{up}/{}", sessions.len()));
    status.down = down.into_iter().take(LISTED_NODES).collect();
}

/// A RouterConfig's status from the nodes' reports: how many nodes it governs, and the
/// nodes another RouterConfig also selects.
pub fn router_config_status(
    rc: &RouterConfig,
    reports: &[std::sync::Arc<NodeRoutingStatus>],
    now: Timestamp,
) -> RouterConfigStatus {
    let name = rc.name_any();
    let current = rc
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    let mut conditions = Conditions::new(rc.metadata.generation, current, now);
    let mut nodes = 0;
    let mut conflicts = Vec::new();
    let mut sorted: Vec<&NodeRoutingStatus> = reports.iter().map(|r| r.as_ref()).collect();
    sorted.sort_by(|a, b| a.spec.node_name.cmp(&b.spec.node_name));
    for r in sorted {
        let Some(s) = &r.status else { continue };
        let node = &r.spec.node_name;
        let governs = s.router_config.as_deref() == Some(name.as_str());
        if governs {
            nodes += 1;
            if !s.also_selected_by.is_empty() {
                conflicts.push(format!(
                    "{node}: also selected by {}",
                    s.also_selected_by.join(", ")
                ));
            }
        } else if s.also_selected_by.contains(&name) {
            conflicts.push(format!(
                "{node}: governed by {} (older), this one is ignored there",
                s.router_config.as_deref().unwrap_or("another RouterConfig")
            ));
        }
    }
    if conflicts.is_empty() {
        conditions.set(
            "Conflict",
            false,
            "NoConflict",
            "no other RouterConfig selects its nodes",
        );
    } else {
        conditions.set(
            "Conflict",
            true,
            "Overlapping",
            &format!(
                "{} nodes are selected by more than one RouterConfig (the oldest governs): make the nodeSelectors disjoint",
                conflicts.len()
            ),
        );
    }
    conflicts.truncate(LISTED_NODES);
    RouterConfigStatus {
        conditions: conditions.into_list(),
        observed_generation: rc.metadata.generation,
        nodes: Some(nodes),
        conflicts,
    }
}

/// Whether two RouterConfig statuses differ in anything but condition times.
pub fn router_config_status_differs(a: &RouterConfigStatus, b: &RouterConfigStatus) -> bool {
    differs_but_times(a, b, |s| &mut s.conditions)
}

/// Whether two BGPPeer statuses differ in anything but condition times.
pub fn peer_status_differs(a: &BGPPeerStatus, b: &BGPPeerStatus) -> bool {
    differs_but_times(a, b, |s| &mut s.conditions)
}

/// A duration as kubectl shows ages: `45s`, `5m`, `3h`, `2d`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `Active for 5m` (or just the state when the daemon does not say since when).
pub fn session_state(s: &SessionReport, now: Timestamp) -> String {
    match &s.since {
        Some(Time(t)) => format!("{} for {}", s.state, age(now.as_second() - t.as_second())),
        None => s.state.clone(),
    }
}

/// What to check when a session is not Established, from its state and last error.
pub fn session_fix(s: &SessionReport) -> &'static str {
    let err = s.last_error.as_deref().unwrap_or("").to_ascii_lowercase();
    if s.state == UNKNOWN {
        "routelb cannot read the daemon's sessions: see the agent's log and the daemon's control socket or vtysh"
    } else if s.state == DAEMON_DOWN {
        "the node's routing daemon does not answer: check its sidecar container (its log, its control socket)"
    } else if s.state == MISSING {
        "the node's daemon did not load a configuration with this router: see the node's Reload column and its RoutingConfigRejected Events"
    } else if err.contains("refused") {
        "the router refuses the TCP connection: check that its BGP daemon runs and listens on the BGPPeer's port"
    } else if err.contains("as") && (err.contains("bad peer") || err.contains("open message")) {
        "the AS numbers disagree: compare the BGPPeer's asn with the router's own AS, and the RouterConfig's asn with the router's neighbor remote-as"
    } else if [
        "cease",
        "administrative shutdown",
        "de-configured",
        "connection rejected",
        "administrative reset",
    ]
    .iter()
    .any(|w| err.contains(w))
    {
        "the router ended the session (Cease: shut down, reset or refused by its configuration): check that its BGP daemon runs and that its neighbor config still lists this node"
    } else if err.contains("hold timer") {
        "the router stopped answering (hold timer expired): check the link and the router's daemon"
    } else if err.contains("no route") || err.contains("unreachable") {
        "the node has no route to the router: check the node's interfaces and routes, or ebgpMultihop"
    } else if s.state.eq_ignore_ascii_case("idle") {
        "the daemon is not trying: check BFD, a shutdown on the session, or the daemon's log"
    } else if s.state.starts_with("Open") {
        "the session is negotiating: if it stays there, check AS numbers, router IDs and capabilities on both sides"
    } else {
        "check the router's neighbor config for this node's address and AS, and that TCP port 179 reaches it"
    }
}

#[cfg(test)]
mod tests;
