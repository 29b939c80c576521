use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::chain::{Verdict, World, cluster_summary, render, service_chain};
use super::*;
use crate::crd::{AddressPool, BGPPeerSpec, ReloadReport, RouterConfigSpec};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn session(address: &str, state: &str, since: &str) -> SessionReport {
    SessionReport {
        address: address.into(),
        state: state.into(),
        since: Some(Time(t(since))),
        prefixes_sent: (state == "Established").then_some(3),
        ..SessionReport::default()
    }
}

fn peer_ctx(name: &str, address: &str) -> PeerCtx {
    serde_json::from_value(json!({
        "name": name, "id": name, "address": address, "family": "ipv4", "asn": 64500,
        "port": 179, "ebgp": true, "graceful_restart": false, "add_paths": false
    }))
    .unwrap()
}

fn facts(sessions: Vec<SessionReport>, addresses: usize) -> NodeFacts {
    NodeFacts {
        router_config: Some("rc".into()),
        daemon: Some(DaemonFacts {
            name: "bird".into(),
            version: Some("2.0.12".into()),
            up: true,
            last_reload: Some(ReloadReport {
                result: "ok".into(),
                time: Time(t("2026-12-03T10:00:00Z")),
                message: None,
            }),
            ..DaemonFacts::default()
        }),
        sessions: Some(sessions),
        by_kind: [addresses, 0, 0],
        addresses: (0..addresses)
            .map(|i| format!("198.51.100.{i}").parse().unwrap())
            .collect(),
        prefixes: addresses,
        ..NodeFacts::default()
    }
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

#[test]
fn sessions_are_named_after_their_peers_and_missing_ones_reported() {
    let peers = [
        peer_ctx("tor1", "2001:db8::1"),
        peer_ctx("tor2", "192.0.2.2"),
    ];
    let named = name_sessions(
        vec![
            session("2001:0db8:0::1", "Established", "2026-12-03T10:00:00Z"),
            session("192.0.2.77", "Active", "2026-12-03T10:00:00Z"),
        ],
        &peers,
    );
    let by = |a: &str| named.iter().find(|s| s.address == a).unwrap();
    assert_eq!(by("2001:0db8:0::1").peer.as_deref(), Some("tor1"));
    assert_eq!(by("192.0.2.77").peer, None, "a template's own session");
    let missing = by("192.0.2.2");
    assert_eq!(missing.state, MISSING);
    assert_eq!(missing.peer.as_deref(), Some("tor2"));
    assert!(!missing.established());
}

#[test]
fn a_node_report_counts_sessions_lists_few_addresses_and_keeps_condition_times() {
    let at = t("2026-12-03T10:05:00Z");
    let f = facts(
        vec![
            session("192.0.2.1", "Established", "2026-12-03T10:00:00Z"),
            session("192.0.2.2", "Active", "2026-12-03T10:01:00Z"),
        ],
        40,
    );
    let r = node_report(&f, None, at);
    assert_eq!(r.sessions_established.as_deref(), Some("1/2"));
    assert_eq!(r.daemon.as_ref().unwrap().summary, "bird 2.0.12");
    assert_eq!(r.announced.total, 40);
    assert_eq!(r.announced.addresses.len(), LISTED_ADDRESSES);
    assert!(r.announced.addresses_truncated);
    let c = condition(&r.conditions, "SessionsEstablished");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SomeDown")
    );
    assert!(c.message.contains("192.0.2.2 Active"), "{}", c.message);
    assert_eq!(condition(&r.conditions, "DaemonUp").status, "True");

    // The same facts later: nothing to write, and the times stay.
    let later = node_report(&f, Some(&r), t("2026-12-03T10:09:00Z"));
    assert!(!report_differs(&r, &later));
    assert_eq!(later.conditions, r.conditions);

    // The second session comes up: a write, and the condition's time moves.
    let mut up = f.clone();
    up.sessions.as_mut().unwrap()[1] = session("192.0.2.2", "Established", "2026-12-03T10:09:30Z");
    let now = t("2026-12-03T10:10:00Z");
    let r2 = node_report(&up, Some(&later), now);
    assert!(report_differs(&later, &r2));
    let c = condition(&r2.conditions, "SessionsEstablished");
    assert_eq!(c.status, "True");
    assert_eq!(c.last_transition_time, Time(now));
    assert_eq!(
        condition(&r2.conditions, "DaemonUp").last_transition_time,
        Time(at),
        "DaemonUp did not change"
    );

    // Sessions not read this time: the last known ones, not an empty list.
    let mut unread = up.clone();
    unread.sessions = None;
    assert_eq!(node_report(&unread, Some(&r2), now).sessions, r2.sessions);

    // The daemon down, a reload refused.
    let mut down = up.clone();
    let d = down.daemon.as_mut().unwrap();
    d.up = false;
    d.message = Some("connect /run/bird/bird.ctl: No such file".into());
    d.last_reload = Some(ReloadReport {
        result: "failed".into(),
        time: Time(now),
        message: Some("syntax error, line 3".into()),
    });
    down.sessions = None;
    let r3 = node_report(&down, Some(&r2), now);
    assert_eq!(r3.daemon.as_ref().unwrap().summary, "bird down");
    assert!(
        r3.sessions
            .iter()
            .all(|s| s.state == DAEMON_DOWN && !s.established()),
        "no session is vouched for while the daemon is down: {:?}",
        r3.sessions
    );
    assert_eq!(r3.sessions_established.as_deref(), Some("0/2"));
    assert!(session_fix(&r3.sessions[0]).contains("does not answer"));
    let r4 = node_report(&down, Some(&r3), t("2026-12-03T10:20:00Z"));
    assert!(
        !report_differs(&r3, &r4),
        "down stays down, since the same time"
    );
    let c = condition(&r3.conditions, "ConfigLoaded");
    assert_eq!(c.status, "False");
    assert!(c.message.contains("syntax error, line 3"));
    assert!(
        condition(&r3.conditions, "DaemonUp")
            .message
            .contains("No such file")
    );
}

fn report(
    node: &str,
    router_config: &str,
    also: &[&str],
    sessions: Vec<SessionReport>,
) -> Arc<NodeRoutingStatus> {
    let mut f = facts(sessions, 2);
    f.router_config = Some(router_config.into());
    f.also_selected_by = also.iter().map(|s| s.to_string()).collect();
    let mut r = NodeRoutingStatus::new(
        node,
        NodeRoutingStatusSpec {
            node_name: node.into(),
        },
    );
    r.status = Some(node_report(&f, None, t("2026-12-03T10:00:00Z")));
    Arc::new(r)
}

use crate::crd::NodeRoutingStatusSpec;

#[test]
fn a_peers_status_counts_the_nodes_with_the_session_established() {
    let now = t("2026-12-03T10:10:00Z");
    let mut tor1 = BGPPeer::new(
        "tor1",
        BGPPeerSpec {
            address: "192.0.2.1".into(),
            asn: 64500,
            ..Default::default()
        },
    );
    tor1.metadata.generation = Some(2);
    let named = |mut s: SessionReport| {
        s.peer = Some("tor1".into());
        s
    };
    let reports = vec![
        report(
            "node-1",
            "rc",
            &[],
            vec![named(session(
                "192.0.2.1",
                "Established",
                "2026-12-03T10:00:00Z",
            ))],
        ),
        report(
            "node-3",
            "rc",
            &[],
            vec![named(session(
                "192.0.2.1",
                "Active",
                "2026-12-03T10:05:00Z",
            ))],
        ),
        // A session the template configured, for the same router: matched by address.
        report(
            "node-2",
            "rc",
            &[],
            vec![session("192.0.2.1", "Established", "2026-12-03T10:00:00Z")],
        ),
        // Another router.
        report(
            "node-4",
            "rc",
            &[],
            vec![session("192.0.2.9", "Established", "2026-12-03T10:00:00Z")],
        ),
    ];
    let status = crate::allocation::peer_status(&tor1, &reports, now);
    assert_eq!((status.nodes, status.established), (Some(3), Some(2)));
    assert_eq!(status.sessions.as_deref(), Some("2/3"));
    assert_eq!(status.down, vec!["node-3: Active for 5m".to_string()]);
    let c = condition(&status.conditions, "Established");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SomeDown")
    );
    assert!(c.message.contains("2 of 3"), "{}", c.message);
    assert_eq!(condition(&status.conditions, "Valid").status, "True");

    let none = crate::allocation::peer_status(&tor1, &[], now);
    assert_eq!(
        condition(&none.conditions, "Established").reason,
        "NoSessions"
    );
    assert_eq!(none.sessions.as_deref(), Some("0/0"));
    assert!(peer_status_differs(&status, &none));
}

#[test]
fn a_router_configs_status_counts_its_nodes_and_names_conflicts() {
    let now = t("2026-12-03T10:10:00Z");
    let rc = |name: &str| {
        RouterConfig::new(
            name,
            RouterConfigSpec {
                asn: 64512,
                ..Default::default()
            },
        )
    };
    let reports = vec![
        report("node-1", "a", &["b"], vec![]),
        report("node-2", "a", &[], vec![]),
        report("node-3", "b", &[], vec![]),
    ];
    let a = router_config_status(&rc("a"), &reports, now);
    assert_eq!(a.nodes, Some(2));
    assert_eq!(a.conflicts, vec!["node-1: also selected by b".to_string()]);
    assert_eq!(condition(&a.conditions, "Conflict").status, "True");
    let b = router_config_status(&rc("b"), &reports, now);
    assert_eq!(b.nodes, Some(1));
    assert_eq!(
        b.conflicts,
        vec!["node-1: governed by a (older), this one is ignored there".to_string()]
    );
    let c = router_config_status(&rc("c"), &reports, now);
    assert_eq!((c.nodes, c.conflicts.len()), (Some(0), 0));
    assert_eq!(condition(&c.conditions, "Conflict").status, "False");
    assert!(!router_config_status_differs(
        &c,
        &router_config_status(&rc("c"), &reports, t("2026-12-04T00:00:00Z"))
    ));
}

#[test]
fn session_fixes_follow_the_state_and_the_error() {
    let s = |state: &str, err: Option<&str>| SessionReport {
        state: state.into(),
        last_error: err.map(str::to_string),
        ..SessionReport::default()
    };
    assert!(
        session_fix(&s("Active", Some("Socket: Connection refused")))
            .contains("refuses the TCP connection")
    );
    assert!(
        session_fix(&s("Active", Some("Received: Bad peer AS"))).contains("AS numbers disagree")
    );
    assert!(session_fix(&s("Active", Some("Hold timer expired"))).contains("hold timer"));
    assert!(
        session_fix(&s("Active", Some("Cease/Administrative Shutdown")))
            .contains("ended the session")
    );
    assert!(session_fix(&s(MISSING, None)).contains("did not load"));
    assert!(session_fix(&s("Active", None)).contains("neighbor config"));
    assert_eq!(age(59), "59s");
    assert_eq!(age(300), "5m");
    assert_eq!(age(3 * 3600), "3h");
    assert_eq!(age(3 * 86400), "3d");
}

// ----------------------------------------------------------------------------------
// The chain

fn service(policy: &str, ingress: Option<&str>) -> Service {
    let mut v = json!({
        "metadata": {"name": "web", "namespace": "demo", "annotations": {}},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {}}
    });
    if let Some(a) = ingress {
        v["status"]["loadBalancer"]["ingress"] = json!([{"ip": a}]);
        v["metadata"]["annotations"]["routelb.io/allocated-from"] = json!("pool-a");
    }
    serde_json::from_value(v).unwrap()
}

fn pool(allocated: i64, size: i64) -> AddressPool {
    serde_json::from_value(json!({
        "apiVersion": "routelb.io/v1alpha1", "kind": "AddressPool",
        "metadata": {"name": "pool-a"},
        "spec": {"addresses": ["198.51.100.0/29"]},
        "status": {"ipv4": {"poolSize": size, "allocated": allocated, "available": size - allocated,
                            "firstIP": "198.51.100.0", "lastIP": "198.51.100.7"}}
    }))
    .unwrap()
}

fn world(reports: Vec<Arc<NodeRoutingStatus>>) -> World {
    let nodes = reports
        .iter()
        .map(|r| {
            serde_json::from_value::<Node>(json!({"metadata": {"name": r.spec.node_name}})).unwrap()
        })
        .collect();
    World {
        pools: vec![pool(1, 8)],
        configs: vec![RouterConfig::new(
            "rc",
            RouterConfigSpec {
                asn: 64512,
                ..Default::default()
            },
        )],
        reports: reports.iter().map(|r| (**r).clone()).collect(),
        nodes,
        now: t("2026-12-03T10:10:00Z"),
        ..World::default()
    }
}

fn announcing(node: &str, state: &str) -> Arc<NodeRoutingStatus> {
    reporting(node, state, true)
}

/// A node's report with its session in `state`, listing 198.51.100.1 or not.
fn reporting(node: &str, state: &str, listed: bool) -> Arc<NodeRoutingStatus> {
    let mut s = session("192.0.2.1", state, "2026-12-03T10:05:00Z");
    s.peer = Some("tor1".into());
    if state != "Established" {
        s.last_error = Some("Socket: Connection refused".into());
    }
    let mut f = facts(vec![s], 1);
    f.addresses = if listed {
        vec!["198.51.100.1".parse().unwrap()]
    } else {
        Vec::new()
    };
    let mut r = NodeRoutingStatus::new(
        node,
        NodeRoutingStatusSpec {
            node_name: node.into(),
        },
    );
    r.status = Some(node_report(&f, None, t("2026-12-03T10:00:00Z")));
    Arc::new(r)
}

fn slice(node: &str, ready: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.5"], "nodeName": node, "conditions": {"ready": ready}}]
    }))
    .unwrap()
}

fn verdict_of<'a>(steps: &'a [chain::Step], what: &str) -> &'a chain::Step {
    steps
        .iter()
        .find(|s| s.what == what)
        .unwrap_or_else(|| panic!("no step {what}: {steps:?}"))
}

#[test]
fn a_healthy_service_is_ok_at_every_step() {
    let w = world(vec![
        announcing("node-1", "Established"),
        announcing("node-2", "Established"),
    ]);
    let steps = service_chain(&service("Cluster", Some("198.51.100.1")), &w);
    let text = render(&steps);
    assert!(steps.iter().all(|s| s.verdict == Verdict::Ok), "{text}");
    assert!(text.contains("announced by node-1, node-2"), "{text}");
    assert!(
        text.contains("session with 192.0.2.1 (BGPPeer tor1) Established for 5m, 3 prefixes sent"),
        "{text}"
    );
    assert!(text.ends_with("verdict: ok\n"), "{text}");
}

#[test]
fn a_local_service_without_ready_endpoints_is_announced_by_no_node() {
    let mut w = world(vec![
        reporting("node-1", "Established", false),
        reporting("node-2", "Established", false),
    ]);
    w.slices = vec![slice("node-2", false)];
    let steps = service_chain(&service("Local", Some("198.51.100.1")), &w);
    let nodes = verdict_of(&steps, "nodes");
    assert_eq!(nodes.verdict, Verdict::Fail, "{}", render(&steps));
    assert!(nodes.fix.as_deref().unwrap().contains("Local"), "{nodes:?}");
    // One ready endpoint on node-2: node-2 only.
    w.slices = vec![slice("node-2", true)];
    w.reports = vec![
        (*reporting("node-1", "Established", false)).clone(),
        (*reporting("node-2", "Established", true)).clone(),
    ];
    let steps = service_chain(&service("Local", Some("198.51.100.1")), &w);
    let nodes = verdict_of(&steps, "nodes");
    assert_eq!(nodes.verdict, Verdict::Ok, "{}", render(&steps));
    assert!(
        nodes.text.starts_with("announced by node-2; not by node-1"),
        "{}",
        render(&steps)
    );
    // A node that still lists the address is believed, with a warning.
    w.reports[0] = (*reporting("node-1", "Established", true)).clone();
    let steps = service_chain(&service("Local", Some("198.51.100.1")), &w);
    assert_eq!(
        verdict_of(&steps, "node-1").verdict,
        Verdict::Warn,
        "{}",
        render(&steps)
    );
    assert!(
        verdict_of(&steps, "nodes")
            .text
            .starts_with("announced by node-1, node-2")
    );
}

#[test]
fn a_service_without_an_address_names_the_full_pool() {
    let mut w = world(vec![announcing("node-1", "Established")]);
    w.pools = vec![pool(8, 8)];
    w.events = vec![Event {
        involved_object: ObjectReference {
            kind: Some("Service".into()),
            name: Some("web".into()),
            namespace: Some("demo".into()),
            ..Default::default()
        },
        reason: Some("AllocationFailed".into()),
        message: Some(
            "no free IPv4 address in pool-a: the pools are exhausted; add addresses or a pool"
                .into(),
        ),
        type_: Some("Warning".into()),
        ..Default::default()
    }];
    let steps = service_chain(&service("Cluster", None), &w);
    let address = verdict_of(&steps, "address");
    assert_eq!(address.verdict, Verdict::Fail);
    assert!(
        address.text.contains("the pools are exhausted"),
        "{}",
        address.text
    );
    assert!(
        address.text.contains("pool-a IPv4 8/8 used"),
        "{}",
        address.text
    );
    assert!(address.fix.as_deref().unwrap().contains("add addresses"));
    assert!(render(&steps).ends_with("verdict: broken (see FAIL above)\n"));
}

#[test]
fn a_node_whose_session_is_down_says_what_to_check() {
    let w = world(vec![
        announcing("node-1", "Established"),
        announcing("node-3", "Active"),
    ]);
    let steps = service_chain(&service("Cluster", Some("198.51.100.1")), &w);
    let down: Vec<&chain::Step> = steps
        .iter()
        .filter(|s| s.what == "node-3" && s.verdict == Verdict::Warn)
        .collect();
    assert_eq!(
        down.len(),
        1,
        "node-1 still carries it: a warning, {}",
        render(&steps)
    );
    assert!(render(&steps).ends_with("verdict: working, with warnings\n"));
    assert!(
        down[0]
            .text
            .contains("session with 192.0.2.1 (BGPPeer tor1) Active for 5m"),
        "{}",
        down[0].text
    );
    assert!(
        down[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("refuses the TCP connection")
    );
    // Every session down: no router hears it.
    let all_down = world(vec![
        announcing("node-1", "Active"),
        announcing("node-3", "Active"),
    ]);
    let steps = service_chain(&service("Cluster", Some("198.51.100.1")), &all_down);
    assert_eq!(
        verdict_of(&steps, "routers").verdict,
        Verdict::Fail,
        "{}",
        render(&steps)
    );
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.what.starts_with("node-") && s.verdict == Verdict::Fail)
            .count(),
        2,
        "{}",
        render(&steps)
    );
    let summary = cluster_summary(&World {
        services: vec![
            service("Cluster", Some("198.51.100.1")),
            service("Cluster", None),
        ],
        ..w
    });
    let text = render(&summary);
    assert_eq!(
        verdict_of(&summary, "node node-3").verdict,
        Verdict::Fail,
        "{text}"
    );
    assert_eq!(
        verdict_of(&summary, "node node-1").verdict,
        Verdict::Ok,
        "{text}"
    );
    assert!(
        text.contains("2 LoadBalancer Services, 1 without an address: demo/web"),
        "{text}"
    );
}

#[test]
fn a_service_of_another_class_or_type_stops_at_the_first_step() {
    let w = world(vec![]);
    let mut svc = service("Cluster", None);
    svc.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let steps = service_chain(&svc, &w);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].verdict, Verdict::Fail);
    svc.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
    svc.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
    let steps = service_chain(&svc, &w);
    assert!(steps[0].text.contains("another controller"), "{steps:?}");
}

// ----------------------------------------------------------------------------------
// The daemons' own reports, as captured from BIRD 2.0.12 and FRR 8.4.4 on the lab
// (`ROUTELB_CAPTURE_FIXTURES=DIR cargo test -p routelb-lab --test status`).

/// A captured reply (the core reads no files: the fixtures are compiled in).
macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../tests/fixtures/status/", $name))
    };
}

#[test]
fn bird_sessions_are_read_from_show_protocols_all() {
    let now = t("2026-12-03T11:10:00Z");
    let up = bird::parse_protocols(fixture!("bird-show-protocols-all-established.txt"), now);
    assert_eq!(
        up,
        vec![SessionReport {
            peer: None,
            address: "192.0.2.1".into(),
            asn: Some(64500),
            state: "Established".into(),
            since: Some(Time(t("2026-12-03T11:09:37Z"))),
            prefixes_sent: Some(1),
            prefixes_received: Some(0),
            last_error: None,
        }],
        "only BGP protocols, not device or kernel ones"
    );
    let down = bird::parse_protocols(fixture!("bird-show-protocols-all-router-down.txt"), now);
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].state, "Active");
    assert_eq!(
        down[0].last_error.as_deref(),
        Some("Socket: Connection refused")
    );
    assert_eq!(down[0].since, Some(Time(t("2026-12-03T11:09:53Z"))));
    assert_eq!(
        down[0].prefixes_sent, None,
        "a session that is down sends nothing"
    );
    assert_eq!(
        bird::parse_version(fixture!("bird-show-status.txt")).as_deref(),
        Some("2.0.12")
    );
}

#[test]
fn bird_times_of_day_without_a_date_are_the_last_such_time() {
    let reply = "2002-Name       Proto      Table      State  Since         Info\n\
                 1002-tor BGP        ---        up     23:59:58.123  Established\n\
                 1006-  BGP state:          Established\n     Neighbor address: 192.0.2.1\n0000 \n";
    let s = bird::parse_protocols(reply, t("2026-12-03T00:00:30Z"));
    assert_eq!(
        s[0].since,
        Some(Time(t("2026-12-02T23:59:58.123Z"))),
        "yesterday"
    );
    let s = bird::parse_protocols(reply, t("2026-12-03T23:59:59Z"));
    assert_eq!(
        s[0].since,
        Some(Time(t("2026-12-03T23:59:58.123Z"))),
        "today"
    );
}

#[test]
fn frr_sessions_are_read_from_show_bgp_neighbors_json() {
    let now = t("2026-12-03T11:10:00Z");
    let json = |f: &str| serde_json::from_str::<serde_json::Value>(f).unwrap();
    let up = frr::parse_neighbors(
        &json(fixture!("frr-show-bgp-neighbors-established.json")),
        now,
    );
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].address, "192.0.2.1");
    assert_eq!(up[0].asn, Some(64500));
    assert!(up[0].established());
    assert_eq!(
        up[0].since,
        Some(Time(Timestamp::from_second(1796296182).unwrap()))
    );
    assert_eq!(
        (up[0].prefixes_sent, up[0].prefixes_received),
        (Some(1), Some(0))
    );
    assert_eq!(
        up[0].last_error, None,
        "an Established session's last reset is no error"
    );
    let down = frr::parse_neighbors(
        &json(fixture!("frr-show-bgp-neighbors-router-down.json")),
        now,
    );
    assert_eq!(down[0].state, "Active");
    assert_eq!(
        down[0].last_error.as_deref(),
        Some("Cease/Administrative Shutdown")
    );
    assert_eq!(
        down[0].since,
        Some(Time(t("2026-12-03T11:09:56Z"))),
        "4 s before now"
    );
    assert_eq!(
        frr::parse_version(fixture!("frr-show-version.txt")).as_deref(),
        Some("8.4.4")
    );
    assert_eq!(frr::parse_neighbors(&serde_json::json!({}), now), vec![]);
    assert_eq!(
        frr::parse_neighbors(&serde_json::json!("not an object"), now),
        vec![]
    );
}

#[test]
fn a_since_that_wobbles_by_a_second_does_not_make_a_new_report() {
    let json: serde_json::Value =
        serde_json::from_str(fixture!("frr-show-bgp-neighbors-router-down.json")).unwrap();
    let mut f = facts(
        frr::parse_neighbors(&json, t("2026-12-03T11:10:00.400Z")),
        1,
    );
    let first = node_report(&f, None, t("2026-12-03T11:10:00Z"));
    // The same reset, read 5.6 s later: FRR says 9 s ago instead of 4 s.
    let mut later = json.clone();
    later["192.0.2.1"]["lastResetTimerMsecs"] = serde_json::json!(9000);
    f.sessions = Some(frr::parse_neighbors(&later, t("2026-12-03T11:10:06Z")));
    let second = node_report(&f, Some(&first), t("2026-12-03T11:10:06Z"));
    assert!(
        !report_differs(&first, &second),
        "{:?} vs {:?}",
        first.sessions,
        second.sessions
    );
    // A new reset (much later "since") is news.
    later["192.0.2.1"]["lastResetTimerMsecs"] = serde_json::json!(1000);
    f.sessions = Some(frr::parse_neighbors(&later, t("2026-12-03T11:10:06Z")));
    assert!(report_differs(
        &first,
        &node_report(&f, Some(&first), t("2026-12-03T11:10:06Z"))
    ));
}

#[test]
fn ipv6_sessions_and_a_peer_that_never_came_up_are_read_from_both_daemons() {
    let now = t("2026-12-03T11:35:30Z");
    let by =
        |list: &[SessionReport], a: &str| list.iter().find(|s| s.address == a).cloned().unwrap();
    let up = bird::parse_protocols(
        fixture!("three-peers/bird-show-protocols-all-established.txt"),
        now,
    );
    assert_eq!(up.len(), 3, "{up:?}");
    let v6 = by(&up, "2001:db8::1");
    assert!(v6.established());
    assert_eq!((v6.prefixes_sent, v6.asn), (Some(1), Some(64500)));
    assert_eq!(by(&up, "192.0.2.1").prefixes_sent, Some(3));
    let ghost = by(&up, "192.0.2.99");
    assert_eq!(ghost.state, "Connect");
    assert_eq!(
        ghost.last_error.as_deref(),
        Some("Socket: No route to host")
    );
    assert!(session_fix(&ghost).contains("no route to the router"));
    let down = bird::parse_protocols(
        fixture!("three-peers/bird-show-protocols-all-router-down.txt"),
        now,
    );
    assert!(down.iter().all(|s| !s.established()), "{down:?}");
    assert_eq!(
        by(&down, "2001:db8::1").since,
        Some(Time(t("2026-12-03T11:35:15Z")))
    );

    let json = |f: &str| serde_json::from_str::<serde_json::Value>(f).unwrap();
    let up = frr::parse_neighbors(
        &json(fixture!(
            "three-peers/frr-show-bgp-neighbors-established.json"
        )),
        now,
    );
    assert_eq!(up.len(), 3);
    let v6 = by(&up, "2001:db8::1");
    assert!(v6.established());
    assert_eq!((v6.prefixes_sent, v6.prefixes_received), (Some(1), Some(0)));
    assert_eq!(by(&up, "192.0.2.1").prefixes_sent, Some(3));
    let ghost = by(&up, "192.0.2.99");
    assert_eq!(ghost.state, "Connect");
    assert_eq!(
        ghost.last_error, None,
        "FRR's stale reset reason on a peer never reset"
    );
    let down = frr::parse_neighbors(
        &json(fixture!(
            "three-peers/frr-show-bgp-neighbors-router-down.json"
        )),
        now,
    );
    let v4 = by(&down, "192.0.2.1");
    assert_eq!(v4.state, "Active");
    assert_eq!(
        v4.last_error.as_deref(),
        Some("Cease/Administrative Shutdown")
    );
    assert_eq!(
        v4.since,
        Some(Time(t("2026-12-03T11:35:13Z"))),
        "17 s before now"
    );

    // Named after their BGPPeers, as the agent reports them.
    let peers = [
        peer_ctx("router-v4", "192.0.2.1"),
        peer_ctx("router-v6", "2001:db8::1"),
        peer_ctx("ghost", "192.0.2.99"),
    ];
    let named = name_sessions(up, &peers);
    assert!(
        named.iter().all(|s| s.peer.is_some() && s.state != MISSING),
        "{named:?}"
    );
}

#[test]
fn sessions_nobody_can_vouch_for_are_unknown_and_stay_so_without_rewrites() {
    let up = || session("192.0.2.1", "Established", "2026-12-03T10:00:00Z");
    let mut f = facts(vec![up()], 1);
    let first = node_report(&f, None, t("2026-12-03T10:05:00.123456Z"));
    assert_eq!(
        condition(&first.conditions, "DaemonUp").last_transition_time,
        Time(t("2026-12-03T10:05:00Z")),
        "whole seconds, as the API stores them"
    );
    // The daemon answers but its sessions cannot be read any more.
    f.sessions = None;
    f.sessions_error = Some("cannot read the sessions from bird: timeout".into());
    let r = node_report(&f, Some(&first), t("2026-12-03T10:06:00Z"));
    assert_eq!(r.sessions[0].state, UNKNOWN);
    assert_eq!(r.sessions_established.as_deref(), Some("0/1"));
    assert!(session_fix(&r.sessions[0]).contains("cannot read"));
    assert!(!report_differs(
        &r,
        &node_report(&f, Some(&r), t("2026-12-03T10:07:00Z"))
    ));
    // Marked down while its sessions still read Established: down, since the first time.
    let mut down = facts(vec![up()], 1);
    down.daemon.as_mut().unwrap().up = false;
    let d1 = node_report(&down, Some(&first), t("2026-12-03T10:08:00Z"));
    let d2 = node_report(&down, Some(&d1), t("2026-12-03T10:09:00Z"));
    assert_eq!(d1.sessions[0].state, DAEMON_DOWN);
    assert!(
        !report_differs(&d1, &d2),
        "{:?} vs {:?}",
        d1.sessions,
        d2.sessions
    );
}

#[test]
fn other_shapes_of_daemon_output() {
    let now = t("2026-12-03T11:10:00Z");
    // A dynamic BGP template is no session; its spawned protocol is.
    let reply = "1002-tors BGP        ---        start  2026-12-03 11:00:00  Passive\n\
                 1006-  BGP state:          Passive\n     Neighbor range:   192.0.2.0/24\n\
                 1002-dyn1 BGP        ---        up     2026-12-03 11:00:05  Established\n\
                 1006-  BGP state:          Established\n     Neighbor address: 192.0.2.7\n0000 \n";
    let s = bird::parse_protocols(reply, now);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].address, "192.0.2.7");
    // FRR's unnumbered sessions are keyed by interface.
    let j = serde_json::json!({"eth1": {"bgpState": "Established", "remoteAs": 64500,
        "bgpNeighborAddr": "fe80::1", "bgpTimerUpEstablishedEpoch": 1796296182}});
    assert_eq!(frr::parse_neighbors(&j, now)[0].address, "fe80::1");
    let j = serde_json::json!({"eth1": {"bgpState": "Active", "hostForeign": "Unknown"}});
    assert_eq!(frr::parse_neighbors(&j, now)[0].address, "eth1");
    // BIRD words a Cease its own way.
    for err in [
        "Received: Administrative shutdown",
        "Received: Peer de-configured",
        "Received: Connection rejected",
    ] {
        let s = SessionReport {
            state: "Active".into(),
            last_error: Some(err.into()),
            ..SessionReport::default()
        };
        assert!(session_fix(&s).contains("ended the session"), "{err}");
    }
}

#[test]
fn a_report_whose_agent_is_gone_vouches_for_nothing() {
    // Written at 10:00 (the reports of these tests are), read 20 minutes later.
    let late = t("2026-12-03T10:20:00Z");
    let r = announcing("node-1", "Established");
    assert_eq!(stale(&r, t("2026-12-03T10:05:00Z")), None);
    assert_eq!(stale(&r, late), Some(1200));
    assert!(!heartbeat_due(
        r.status.as_ref().unwrap(),
        t("2026-12-03T10:04:00Z")
    ));
    assert!(heartbeat_due(
        r.status.as_ref().unwrap(),
        t("2026-12-03T10:05:00Z")
    ));
    let peer = BGPPeer::new(
        "tor1",
        BGPPeerSpec {
            address: "192.0.2.1".into(),
            asn: 64500,
            ..Default::default()
        },
    );
    let status = crate::allocation::peer_status(
        &peer,
        &[r.clone(), announcing("node-2", "Established")],
        late,
    );
    assert_eq!(status.established, Some(0), "{status:?}");
    assert_eq!(
        status.down[0],
        "node-1: no report for 20m (is its agent running?)"
    );
    let mut w = world(vec![r]);
    w.now = late;
    let steps = service_chain(&service("Cluster", Some("198.51.100.1")), &w);
    assert_eq!(
        verdict_of(&steps, "node-1").verdict,
        Verdict::Warn,
        "{}",
        render(&steps)
    );
    assert_eq!(
        verdict_of(&steps, "nodes").verdict,
        Verdict::Fail,
        "{}",
        render(&steps)
    );
    assert_eq!(
        verdict_of(&cluster_summary(&w), "node node-1").verdict,
        Verdict::Fail
    );
}
