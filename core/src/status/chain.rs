//! What `routelb status` prints: for one Service, the chain from the Service to the
//! routers (Service, address, pool, nodes announcing, each node's daemon, each session),
//! a verdict per step and what to fix; for the cluster, a one-screen summary. Pure: the
//! CLI lists the objects and calls in here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Event, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube_core::ResourceExt;

use super::{session_fix, session_state};
use crate::advertise::{Advertise, Kind};
use crate::crd::{AddressPool, NodeRoutingStatus, PoolMode, RouterConfig};
use crate::node::{
    NodeFacts, PoolFacts, SERVICE_NAME_LABEL, ServiceAddresses, decide, ready_endpoint_on,
};
use crate::service::{Handling, allocated_from, handling, ingress_ips};

/// How a step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One step of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub verdict: Verdict,
    /// What the step is about: `service`, `address`, `pool`, `node-1`, ...
    pub what: String,
    pub text: String,
    /// What to do about it, when it is not ok.
    pub fix: Option<String>,
}

fn step(verdict: Verdict, what: &str, text: impl Into<String>, fix: Option<&str>) -> Step {
    Step {
        verdict,
        what: what.to_string(),
        text: text.into(),
        fix: fix.map(str::to_string),
    }
}

/// What the cluster holds, as listed by the CLI.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub services: Vec<Service>,
    pub pools: Vec<AddressPool>,
    pub configs: Vec<RouterConfig>,
    pub reports: Vec<NodeRoutingStatus>,
    pub nodes: Vec<Node>,
    pub slices: Vec<EndpointSlice>,
    /// Events (any; those about the Service are picked out).
    pub events: Vec<Event>,
    pub now: Timestamp,
}

impl World {
    fn report(&self, node: &str) -> Option<&NodeRoutingStatus> {
        self.reports.iter().find(|r| r.spec.node_name == node)
    }

    fn pool(&self, name: &str) -> Option<&AddressPool> {
        self.pools.iter().find(|p| p.name_any() == name)
    }

    fn slices_of(&self, svc: &Service) -> Vec<&EndpointSlice> {
        let name = svc.name_any();
        let ns = svc.namespace();
        self.slices
            .iter()
            .filter(|s| s.namespace() == ns && s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
            .collect()
    }

    /// The newest Warning Event about `svc` with `reason`, if any.
    fn last_warning(&self, svc: &Service, reason: &str) -> Option<&Event> {
        let name = svc.name_any();
        let ns = svc.namespace();
        self.events
            .iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(name.as_str())
                    && e.involved_object.namespace == ns
                    && e.involved_object.kind.as_deref() == Some("Service")
                    && e.reason.as_deref() == Some(reason)
            })
            .max_by_key(|e| event_time(e))
    }

    /// The advertise defaults of the RouterConfig governing a node.
    fn advertise(&self, report: &NodeRoutingStatus) -> Advertise {
        let name = report
            .status
            .as_ref()
            .and_then(|s| s.router_config.as_deref());
        self.configs
            .iter()
            .find(|rc| Some(rc.name_any().as_str()) == name)
            .map(|rc| Advertise::from_spec(&rc.name_any(), &rc.spec).0)
            .unwrap_or_default()
    }
}

fn event_time(e: &Event) -> i64 {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.as_second()))
        .unwrap_or(0)
}

/// The chain for one Service.
pub fn service_chain(svc: &Service, w: &World) -> Vec<Step> {
    let mut out = Vec::new();
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    let spec = svc.spec.clone().unwrap_or_default();
    match handling(svc, true) {
        Handling::Handled => {}
        Handling::NotLoadBalancer => {
            out.push(step(
                Verdict::Fail,
                "service",
                format!("{key} is of type {}", spec.type_.as_deref().unwrap_or("ClusterIP")),
                Some("routelb gives addresses to type LoadBalancer Services: set spec.type: LoadBalancer"),
            ));
            return out;
        }
        Handling::OtherClass(c) => {
            out.push(step(
                Verdict::Fail,
                "service",
                format!("{key} has loadBalancerClass {c}: another controller handles it"),
                Some("create the Service without spec.loadBalancerClass or with routelb.io/routelb (the field cannot change)"),
            ));
            return out;
        }
        // Only with class-less Services switched off, which the CLI does not assume.
        Handling::ClassLessIgnored => {}
    }
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    out.push(step(
        Verdict::Ok,
        "service",
        format!(
            "{key}: LoadBalancer, externalTrafficPolicy {}",
            if local { "Local" } else { "Cluster" }
        ),
        None,
    ));

    // Address.
    let addrs = ingress_ips(svc);
    let from = allocated_from(svc).map(str::to_string);
    if addrs.is_empty() {
        let failed = w.last_warning(svc, "AllocationFailed");
        let why = failed.and_then(|e| e.message.clone()).unwrap_or_else(|| {
            "no AllocationFailed Event: is the allocator running (its leader writes addresses)?"
                .into()
        });
        let exhausted = w
            .pools
            .iter()
            .filter(|p| pool_full(p))
            .map(|p| p.name_any())
            .collect::<Vec<_>>();
        let fix = if why.contains("exhausted") || !exhausted.is_empty() && why.contains("no free") {
            "add addresses to the pool (spec.addresses) or another pool the Service may use, or delete Services that no longer need theirs"
        } else if why.contains("annotation") {
            "correct the Service's routelb.io annotation named above"
        } else {
            "see `kubectl describe service` for the allocator's Events, and `kubectl get addresspools`"
        };
        let mut text = format!("no address: {why}");
        if !exhausted.is_empty() {
            let _ = write!(
                text,
                " (full: {})",
                exhausted
                    .iter()
                    .map(|p| usage_of(w, p))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out.push(step(Verdict::Fail, "address", text, Some(fix)));
        return out;
    }
    out.push(step(
        Verdict::Ok,
        "address",
        format!(
            "{}{}",
            addrs
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            from.as_ref()
                .map_or(String::new(), |p| format!(" from pool {p}"))
        ),
        None,
    ));

    // Pool.
    let pool = from.as_deref().and_then(|p| w.pool(p));
    let mode = pool.map_or(PoolMode::Routed, |p| p.spec.mode);
    match (&from, pool) {
        (Some(name), None) => out.push(step(
            Verdict::Warn,
            "pool",
            format!("pool {name} no longer exists; the address stays until the Service goes"),
            Some(
                "recreate the pool, or let the Service take a new address (delete and recreate it)",
            ),
        )),
        (_, Some(p)) => out.push(step(
            Verdict::Ok,
            "pool",
            format!(
                "{}: {} pool, {}",
                p.name_any(),
                if mode == PoolMode::Local {
                    "local (L2)"
                } else {
                    "routed (BGP)"
                },
                usage_of(w, &p.name_any())
            ),
            None,
        )),
        _ => {}
    }
    if mode == PoolMode::Local {
        local_chain(svc, &addrs, w, &mut out);
        return out;
    }

    // Nodes announcing: each node's own rule, as its agent decides.
    let facts = ServiceAddresses::of(svc, true);
    let pool_facts = pool.map(PoolFacts::from_pool);
    let slices = w.slices_of(svc);
    let mut announcing: Vec<&NodeRoutingStatus> = Vec::new();
    let mut not: Vec<String> = Vec::new();
    for r in &w.reports {
        let node = &r.spec.node_name;
        let Some(status) = &r.status else { continue };
        if status.router_config.is_none() {
            continue;
        }
        if let Some(age) = super::stale(r, w.now) {
            out.push(step(
                Verdict::Warn,
                node,
                format!("its report is {} old: what it says is not trusted", super::age(age)),
                Some("is routelb's agent running on the node? (kubectl -n routelb-system get pods -o wide)"),
            ));
            continue;
        }
        let labels = w
            .nodes
            .iter()
            .find(|n| n.name_any() == *node)
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let ready = slices.iter().any(|s| ready_endpoint_on(node, s));
        let adv = w.advertise(r);
        let decision = facts.as_ref().and_then(|f| {
            decide(
                Some(&NodeFacts {
                    name: node.clone(),
                    labels,
                }),
                f,
                ready,
                pool_facts.as_ref(),
                &adv,
            )
        });
        let announces = decision.as_ref().is_some_and(|d| {
            d.announce
                .iter()
                .any(|a| a.kind == Kind::LoadBalancer && addrs.contains(&a.addr))
        });
        // Where the node lists what it announces, that is the word.
        let listed = &status.announced;
        let confirmed = if listed.addresses_truncated {
            None
        } else {
            Some(
                addrs
                    .iter()
                    .any(|a| listed.addresses.contains(&a.to_string())),
            )
        };
        match (announces, confirmed) {
            (true, Some(false)) => {
                out.push(step(
                    Verdict::Fail,
                    node,
                    "should announce the address but its agent does not report it".to_string(),
                    Some("see the agent's readiness and the Node's Events (kernel errors), `ip route show table 200` on the node"),
                ));
            }
            (true, _) => announcing.push(r),
            // The node says it announces the address: that is the word, but say that
            // the rule disagrees (an agent behind its inputs, or a rule changed).
            (false, Some(true)) => {
                out.push(step(
                    Verdict::Warn,
                    node,
                    format!(
                        "announces the address, though by the Service, its endpoints and the node's RouterConfig it should not ({})",
                        decision
                            .as_ref()
                            .and_then(|d| addrs.iter().find_map(|a| d.why_not(Kind::LoadBalancer, *a)))
                            .unwrap_or("no rule for it")
                    ),
                    Some("wait a few seconds (the node reports every few seconds); if it stays, see the agent's log on that node"),
                ));
                announcing.push(r);
            }
            (false, _) => not.push(format!(
                "{node} ({})",
                decision
                    .as_ref()
                    .and_then(|d| addrs.iter().find_map(|a| d.why_not(Kind::LoadBalancer, *a)))
                    .unwrap_or("not announced there")
            )),
        }
    }
    if announcing.is_empty() {
        let fix = if local {
            "externalTrafficPolicy is Local: only nodes with a ready endpoint announce; scale the workload up or fix its readiness probe (or use Cluster)"
        } else if w.reports.is_empty() {
            "no node reports: are the agents running (DaemonSet routelb-agent)?"
        } else {
            "check which RouterConfig selects the nodes and the nodes' exclude-from-external-load-balancers label"
        };
        out.push(step(
            Verdict::Fail,
            "nodes",
            format!(
                "no node announces it{}",
                if !not.is_empty() {
                    format!(": {}", not.join("; "))
                } else {
                    String::new()
                }
            ),
            Some(fix),
        ));
        return out;
    }
    out.push(step(
        Verdict::Ok,
        "nodes",
        format!(
            "announced by {}{}",
            announcing
                .iter()
                .map(|r| r.spec.node_name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if !not.is_empty() {
                format!("; not by {}", not.join("; "))
            } else {
                String::new()
            }
        ),
        None,
    ));
    // A session down is a failure only when no router hears the address any more.
    let heard = announcing.iter().any(|r| {
        r.status.as_ref().is_some_and(|s| {
            s.daemon.as_ref().is_some_and(|d| d.up) && s.sessions.iter().any(|x| x.established())
        })
    });
    for r in announcing {
        node_steps(r, w, heard, &mut out);
    }
    if !heard {
        out.push(step(
            Verdict::Fail,
            "routers",
            "no announcing node has an Established session: no router hears the address",
            Some("start with the first FAIL above"),
        ));
    }
    out
}

/// The chain's tail for an address of a local (L2) pool: the elected node answers.
fn local_chain(svc: &Service, addrs: &[IpAddr], w: &World, out: &mut Vec<Step>) {
    for a in addrs {
        let family = if a.is_ipv4() { "ipv4" } else { "ipv6" };
        let annotation = format!("routelb.io/announcing-{family}");
        let Some(node) = svc.annotations().get(&annotation) else {
            out.push(step(
                Verdict::Fail,
                "nodes",
                format!("no node answers ARP/NDP for {a} ({annotation} is not set)"),
                Some("see the Service's and the pool's Events (NoNodeCanAnswer names why each node is not eligible)"),
            ));
            continue;
        };
        let node = node.split_whitespace().next().unwrap_or(node);
        let held = w
            .report(node)
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.l2.iter().find(|l| l.address == a.to_string()));
        match held {
            Some(l) => out.push(step(
                Verdict::Ok,
                node,
                format!("answers ARP/NDP for {a} on {}", l.interface),
                None,
            )),
            None => out.push(step(
                Verdict::Warn,
                node,
                format!("elected for {a}, but its report does not list it (yet)"),
                Some("wait a few seconds; if it stays, see the agent's readiness detail on that node"),
            )),
        }
    }
}

/// The daemon and sessions of one announcing node.
/// `heard`: some router hears the address from some node, so a session down elsewhere
/// costs redundancy, not the route.
fn node_steps(r: &NodeRoutingStatus, w: &World, heard: bool, out: &mut Vec<Step>) {
    let down = if heard { Verdict::Warn } else { Verdict::Fail };
    let node = &r.spec.node_name;
    let Some(s) = &r.status else { return };
    match &s.daemon {
        None => out.push(step(
            Verdict::Fail,
            node,
            "routelb does not configure its routing daemon",
            Some("create a RouterConfig whose nodeSelector selects the node"),
        )),
        Some(d) if !d.up => out.push(step(
            down,
            node,
            format!("{}: {}", d.summary, d.message.as_deref().unwrap_or("does not answer")),
            Some("check the routing daemon's sidecar container on the node (its log, its control socket path)"),
        )),
        Some(d) => match &d.last_reload {
            Some(rl) if rl.result != "ok" => out.push(step(
                Verdict::Warn,
                node,
                format!(
                    "{} runs its previous configuration: the last one was refused: {}",
                    d.summary,
                    rl.message.as_deref().unwrap_or("")
                ),
                Some("fix the template or the object named in the message (the Node's RoutingConfigRejected Event)"),
            )),
            _ => out.push(step(
                Verdict::Ok,
                node,
                format!("{} runs the current configuration", d.summary),
                None,
            )),
        },
    }
    if s.sessions.is_empty() && s.daemon.is_some() {
        out.push(step(
            down,
            node,
            "no BGP session: the address reaches no router",
            Some("create a BGPPeer whose nodeSelector selects the node"),
        ));
    }
    for sess in &s.sessions {
        let peer = sess
            .peer
            .as_ref()
            .map_or(String::new(), |p| format!(" (BGPPeer {p})"));
        if sess.established() {
            let sent = sess.prefixes_sent.map_or(String::new(), |n| {
                format!(", {n} {} sent", if n == 1 { "prefix" } else { "prefixes" })
            });
            out.push(step(
                Verdict::Ok,
                node,
                format!(
                    "session with {}{peer} {}{sent}",
                    sess.address,
                    session_state(sess, w.now)
                ),
                None,
            ));
        } else {
            let err = sess
                .last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (last error: {e})"));
            out.push(step(
                down,
                node,
                format!(
                    "session with {}{peer} {}{err}",
                    sess.address,
                    session_state(sess, w.now)
                ),
                Some(session_fix(sess)),
            ));
        }
    }
}

fn pool_full(p: &AddressPool) -> bool {
    let Some(s) = &p.status else { return false };
    [&s.ipv4, &s.ipv6]
        .into_iter()
        .flatten()
        .any(|u| u.pool_size > 0 && u.available == 0)
}

fn usage_of(w: &World, pool: &str) -> String {
    let Some(s) = w.pool(pool).and_then(|p| p.status.as_ref()) else {
        return format!("{pool} (no status yet)");
    };
    let mut parts = Vec::new();
    for (family, u) in [("IPv4", &s.ipv4), ("IPv6", &s.ipv6)] {
        if let Some(u) = u {
            parts.push(format!("{family} {}/{} used", u.allocated, u.pool_size));
        }
    }
    format!("{pool} {}", parts.join(", "))
}

/// The one-screen cluster summary: pools, nodes and sessions, Services in trouble.
pub fn cluster_summary(w: &World) -> Vec<Step> {
    let mut out = Vec::new();
    if w.pools.is_empty() {
        out.push(step(
            Verdict::Fail,
            "pools",
            "no AddressPool",
            Some("create an AddressPool (see deploy/examples)"),
        ));
    }
    for p in &w.pools {
        let name = p.name_any();
        let ratio = p.status.as_ref().map_or(0.0, |s| {
            [&s.ipv4, &s.ipv6]
                .into_iter()
                .flatten()
                .filter(|u| u.pool_size > 0)
                .map(|u| u.allocated as f64 / u.pool_size as f64)
                .fold(0.0, f64::max)
        });
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let (verdict, fix) = match ready {
            Some(c) if c.status != "True" => (Verdict::Fail, Some(c.message.as_str())),
            _ if ratio >= 1.0 => (
                Verdict::Warn,
                Some("the pool is full: new Services wait; add addresses or another pool"),
            ),
            _ if ratio > 0.9 => (
                Verdict::Warn,
                Some("the pool is above 90 %: add addresses soon"),
            ),
            _ => (Verdict::Ok, None),
        };
        let mode = if p.spec.mode == PoolMode::Local {
            "local"
        } else {
            "routed"
        };
        out.push(step(
            verdict,
            &format!("pool {name}"),
            format!(
                "{mode}, {}",
                usage_of(w, &name).trim_start_matches(&name).trim()
            ),
            fix,
        ));
    }
    let mut reported: BTreeMap<&str, &NodeRoutingStatus> = BTreeMap::new();
    for r in &w.reports {
        reported.insert(r.spec.node_name.as_str(), r);
    }
    for n in &w.nodes {
        let name = n.name_any();
        let Some(r) = reported.get(name.as_str()) else {
            out.push(step(
                Verdict::Warn,
                &format!("node {name}"),
                "no NodeRoutingStatus",
                Some("is routelb's agent running on the node?"),
            ));
            continue;
        };
        let Some(s) = &r.status else { continue };
        if let Some(age) = super::stale(r, w.now) {
            out.push(step(
                Verdict::Fail,
                &format!("node {name}"),
                format!("no report for {}", super::age(age)),
                Some("is routelb's agent running on the node?"),
            ));
            continue;
        }
        let daemon = s
            .daemon
            .as_ref()
            .map_or("routing left alone (no RouterConfig)".to_string(), |d| {
                d.summary.clone()
            });
        let down: Vec<String> = s
            .sessions
            .iter()
            .filter(|x| !x.established())
            .map(|x| format!("{} {}", x.address, session_state(x, w.now)))
            .collect();
        let verdict = match &s.daemon {
            Some(d) if !d.up => Verdict::Fail,
            Some(_) if s.sessions.is_empty() || down.len() == s.sessions.len() => Verdict::Fail,
            Some(_) if !down.is_empty() => Verdict::Warn,
            _ => Verdict::Ok,
        };
        let mut text = format!(
            "{daemon}, sessions {}, {} addresses announced",
            s.sessions_established.as_deref().unwrap_or("-"),
            s.announced.total
        );
        if !s.l2.is_empty() {
            let _ = write!(text, ", answers ARP/NDP for {}", s.l2.len());
        }
        if !down.is_empty() {
            let _ = write!(text, "; down: {}", down.join(", "));
        }
        let fix = (verdict != Verdict::Ok).then_some(
            "run `routelb status svc -n NAMESPACE NAME` for a Service, or see the node's NodeRoutingStatus conditions",
        );
        out.push(step(verdict, &format!("node {name}"), text, fix));
    }
    let lb: Vec<&Service> = w
        .services
        .iter()
        .filter(|s| handling(s, true) == Handling::Handled)
        .collect();
    let without: Vec<String> = lb
        .iter()
        .filter(|s| ingress_ips(s).is_empty())
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    let unannounced: Vec<String> = lb
        .iter()
        .filter(|s| !ingress_ips(s).is_empty())
        .filter(|s| {
            service_chain(s, w)
                .iter()
                .any(|st| st.what == "nodes" && st.verdict == Verdict::Fail)
        })
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    out.push(step(
        if without.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Fail
        },
        "services",
        format!(
            "{} LoadBalancer Services, {} without an address{}",
            lb.len(),
            without.len(),
            list_some(&without)
        ),
        (!without.is_empty())
            .then_some("run `routelb status svc -n NAMESPACE NAME` on one of them"),
    ));
    if !unannounced.is_empty() {
        out.push(step(
            Verdict::Fail,
            "services",
            format!(
                "{} with an address no node announces{}",
                unannounced.len(),
                list_some(&unannounced)
            ),
            Some("run `routelb status svc -n NAMESPACE NAME` on one of them"),
        ));
    }
    out
}

fn list_some(names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    format!(
        ": {}{}",
        shown.join(", "),
        if names.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    )
}

/// The steps as text: one line per step, the fix indented below, then the verdict.
pub fn render(steps: &[Step]) -> String {
    let width = steps.iter().map(|s| s.what.len()).max().unwrap_or(0);
    let mut out = String::new();
    for s in steps {
        let _ = writeln!(
            out,
            "{:<4} {:<width$}  {}",
            s.verdict.label(),
            s.what,
            s.text
        );
        if let Some(f) = &s.fix {
            let _ = writeln!(out, "     {:<width$}  -> {f}", "");
        }
    }
    let worst = steps.iter().map(|s| s.verdict).max().unwrap_or(Verdict::Ok);
    let _ = writeln!(
        out,
        "{}",
        match worst {
            Verdict::Ok => "verdict: ok",
            Verdict::Warn => "verdict: working, with warnings",
            Verdict::Fail => "verdict: broken (see FAIL above)",
        }
    );
    out
}
