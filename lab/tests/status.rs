//! Per-node routing status on the lab: each agent's NodeRoutingStatus follows its
//! daemon's real BGP sessions (BIRD on one node, FRR on the other), the allocator sums
//! them up into BGPPeer and RouterConfig status, and `routelb status` gives the right
//! verdict for a healthy Service, one whose Local endpoints are gone, one whose pool is
//! exhausted and one whose node's session is down.
//!
//! With `ROUTELB_CAPTURE_FIXTURES=DIR` it also writes what the node daemons answered
//! (the fixtures of `core/tests/fixtures/status/`) into DIR.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Api;
use lab::{Kind, Lab, Options};
use routelb_core::crd::{BGPPeer, NodeRoutingStatus, RouterConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(40);

fn options(router: Kind, nodes: &[Kind]) -> Options {
    Options::for_tests(router, nodes)
}

/// Waits until every node's report satisfies `ok`; returns the reports.
async fn wait_reports(
    lab: &Lab,
    what: &str,
    ok: impl Fn(&NodeRoutingStatus) -> bool,
) -> Vec<NodeRoutingStatus> {
    let api: Api<NodeRoutingStatus> = Api::namespaced(lab.client.clone(), "routelb-system");
    let start = Instant::now();
    loop {
        let list = api.list(&Default::default()).await.unwrap().items;
        if list.len() == lab.nodes.len() && list.iter().all(&ok) {
            return list;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: the nodes' reports after {WAIT:?}: {}",
            serde_json::to_string_pretty(&list).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until a cluster object's status satisfies `ok`.
async fn wait_status<K>(lab: &Lab, api: &Api<K>, name: &str, ok: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + for<'de> k8s_openapi::serde::Deserialize<'de>
        + k8s_openapi::serde::Serialize,
{
    let start = Instant::now();
    loop {
        let o = api.get(name).await.unwrap();
        if ok(&o) {
            return o;
        }
        assert!(
            start.elapsed() < WAIT,
            "{name} after {WAIT:?}: {}\nthe allocator's log:\n{}",
            serde_json::to_string_pretty(&o).unwrap(),
            lab.allocator_log("allocator")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `routelb status ...` against the lab: exit code and output.
fn status(lab: &Lab, args: &[&str]) -> (i32, String) {
    lab.routelb_status(args).unwrap()
}

fn established(r: &NodeRoutingStatus) -> bool {
    r.status.as_ref().is_some_and(|s| {
        !s.sessions.is_empty()
            && s.sessions.iter().all(|x| x.established())
            && s.daemon
                .as_ref()
                .is_some_and(|d| d.up && d.version.is_some())
    })
}

fn none_established(r: &NodeRoutingStatus) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| !s.sessions.is_empty() && s.sessions.iter().all(|x| !x.established()))
}

/// What the node daemons answer, as fixtures, when asked to.
fn capture(lab: &Lab, case: &str) {
    let Some(dir) = std::env::var_os("ROUTELB_CAPTURE_FIXTURES") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    for n in &lab.nodes {
        match n.kind {
            Kind::Bird => {
                let socket = n.dir.join("bird.ctl");
                let raw = routelb::daemon::bird::bird_reply(&socket, "show protocols all").unwrap();
                std::fs::write(
                    dir.join(format!("bird-show-protocols-all-{case}.txt")),
                    raw.join("\n") + "\n",
                )
                .unwrap();
                let raw = routelb::daemon::bird::bird_reply(&socket, "show status").unwrap();
                std::fs::write(dir.join("bird-show-status.txt"), raw.join("\n") + "\n").unwrap();
            }
            Kind::Frr => {
                let vtysh = |c: &str| {
                    let out = Command::new("vtysh")
                        .arg("--vty_socket")
                        .arg(n.dir.join("frr"))
                        .args(["-c", c])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout).to_string()
                };
                std::fs::write(
                    dir.join(format!("frr-show-bgp-neighbors-{case}.json")),
                    vtysh("show bgp neighbors json"),
                )
                .unwrap();
                std::fs::write(dir.join("frr-show-version.txt"), vtysh("show version")).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_follows_the_sessions_and_routelb_status_explains_each_service() {
    let mut lab = Lab::up(options(Kind::Bird, &[Kind::Bird, Kind::Frr]))
        .await
        .expect("the lab comes up");

    // Each node reports its daemon and its session with the router, Established.
    let reports = wait_reports(&lab, "sessions Established", established).await;
    for r in &reports {
        let s = r.status.as_ref().unwrap();
        let node = lab
            .nodes
            .iter()
            .find(|n| n.name == r.spec.node_name)
            .unwrap();
        let d = s.daemon.as_ref().unwrap();
        assert_eq!(d.name, node.kind.name(), "{r:?}");
        assert!(
            d.config_hash.as_deref().unwrap().starts_with("sha256:"),
            "{d:?}"
        );
        assert_eq!(s.sessions.len(), 1, "{s:?}");
        let session = &s.sessions[0];
        assert_eq!(session.peer.as_deref(), Some("leaf1"));
        assert_eq!(session.address, "192.0.2.1");
        assert_eq!(session.asn, Some(64500));
        assert!(session.since.is_some(), "since when: {session:?}");
        assert_eq!(s.sessions_established.as_deref(), Some("1/1"));
        assert_eq!(
            s.router_config.as_deref(),
            Some(format!("lab-{}", node.kind.name()).as_str()),
            "{s:?}"
        );
        let owners = r.metadata.owner_references.as_ref().unwrap();
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str()),
            ("Node", node.name.as_str())
        );
        assert_eq!(s.kernel.as_ref().unwrap().table, 200);
    }
    let peers: Api<BGPPeer> = Api::all(lab.client.clone());
    wait_status(&lab, &peers, "leaf1", |p| {
        p.status.as_ref().and_then(|s| s.sessions.as_deref()) == Some("2/2")
    })
    .await;
    let configs: Api<RouterConfig> = Api::all(lab.client.clone());
    for rc in configs.list(&Default::default()).await.unwrap() {
        let name = kube::ResourceExt::name_any(&rc);
        wait_status(&lab, &configs, &name, |c| {
            c.status.as_ref().and_then(|s| s.nodes) == Some(1)
        })
        .await;
    }

    // The real kubectl reads the reports (by the CRD's short name), and prints the
    // CRD's columns.
    let listed = lab::kubectl(
        &lab.kubeconfig,
        &[
            "get",
            "lbnode",
            "-n",
            "routelb-system",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.status.daemon.name} {.status.sessionsEstablished}{\"\\n\"}{end}",
        ],
    )
    .unwrap();
    for n in &lab.nodes {
        assert!(
            listed.contains(&format!("{} {} 1/1", n.name, n.kind.name())),
            "kubectl get lbnode: {listed}"
        );
    }
    let table = lab::kubectl(&lab.kubeconfig, &["get", "lbnode", "-n", "routelb-system"]).unwrap();
    eprintln!("kubectl get lbnode:\n{table}");
    for n in &lab.nodes {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{} ", n.name)))
            .unwrap_or_else(|| panic!("no row for {} in:\n{table}", n.name));
        assert!(row.contains(" 1/1 "), "{row}");
    }

    // Quiet nodes write nothing: once the reports have settled after start (the first
    // reload's aftermath, at most an interval later), they stay as they are over two
    // intervals. A node that rewrote on every interval never settles.
    let api: Api<NodeRoutingStatus> = Api::namespaced(lab.client.clone(), "routelb-system");
    let version = |r: &NodeRoutingStatus| r.metadata.resource_version.clone();
    let start = Instant::now();
    let mut before = api.list(&Default::default()).await.unwrap().items;
    for window in [Duration::from_secs(6), Duration::from_secs(11)] {
        loop {
            tokio::time::sleep(window).await;
            let after = api.list(&Default::default()).await.unwrap().items;
            let changed: Vec<String> = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| version(b) != version(a))
                .map(|(b, a)| {
                    format!(
                        "before {}\nafter {}",
                        serde_json::to_string(&b.status).unwrap(),
                        serde_json::to_string(&a.status).unwrap()
                    )
                })
                .collect();
            before = after;
            if changed.is_empty() {
                break;
            }
            assert!(
                window < Duration::from_secs(10) && start.elapsed() < WAIT,
                "a quiet node rewrote its report within {window:?}:\n{}",
                changed.join("\n")
            );
        }
    }

    // A healthy Service.
    lab.create_service("web", false).await.unwrap();
    let ip = lab.external_ip("web", WAIT).await.unwrap();
    let all = lab.node_addrs(0..lab.nodes.len());
    lab.wait_nexthops(0, ip, &all, WAIT).await.unwrap();
    wait_reports(&lab, "web announced", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.announced.addresses.contains(&ip.to_string()))
    })
    .await;
    let (code, out) = status(&lab, &["svc", "web"]);
    eprintln!("routelb status svc web:\n{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{ip} from pool lab")), "{out}");
    assert!(out.contains("announced by node-1, node-2"), "{out}");
    assert!(
        out.contains("session with 192.0.2.1 (BGPPeer leaf1) Established"),
        "{out}"
    );
    assert!(out.ends_with("verdict: ok\n"), "{out}");
    capture(&lab, "established");

    // A Local Service whose endpoints are gone.
    lab.create_service("loc", true).await.unwrap();
    lab.endpoints("loc", &[0]).await.unwrap();
    let loc = lab.external_ip("loc", WAIT).await.unwrap();
    lab.wait_nexthops(0, loc, &lab.node_addrs([0]), WAIT)
        .await
        .unwrap();
    lab.endpoints("loc", &[]).await.unwrap();
    lab.wait_nexthops(0, loc, &Default::default(), WAIT)
        .await
        .unwrap();
    let (code, out) = status(&lab, &["svc", "-n", "default", "loc"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no node announces it"), "{out}");
    assert!(out.contains("has no ready endpoint"), "{out}");
    assert!(out.contains("externalTrafficPolicy is Local"), "{out}");

    // An exhausted pool.
    lab.apply_routelb(
        "AddressPool",
        "addresspools",
        "tiny",
        json!({"addresses": ["198.51.100.250/32"], "autoAssign": false}),
    )
    .await
    .unwrap();
    for name in ["tiny-1", "tiny-2"] {
        lab.create_service_with(name, json!({"routelb.io/pool": "tiny"}), json!({}))
            .await
            .unwrap();
    }
    lab.external_ip("tiny-1", WAIT).await.unwrap();
    let start = Instant::now();
    let out = loop {
        let (code, out) = status(&lab, &["svc", "tiny-2"]);
        if code == 2 && out.contains("tiny IPv4 1/1 used") {
            break out;
        }
        assert!(start.elapsed() < WAIT, "{out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(out.contains("FAIL address"), "{out}");
    assert!(out.contains("exhausted"), "{out}");
    assert!(out.contains("add addresses to the pool"), "{out}");

    // The router's daemon stops: every node reports its session down, within seconds.
    let stopped = Instant::now();
    lab.stop_router(0);
    let reports = wait_reports(&lab, "sessions down", none_established).await;
    let took = stopped.elapsed();
    eprintln!("router stopped: both nodes report their session down after {took:?}");
    for r in &reports {
        let c = r
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "SessionsEstablished")
            .unwrap();
        assert_eq!(c.status, "False", "{c:?}");
    }
    capture(&lab, "router-down");
    wait_status(&lab, &peers, "leaf1", |p| {
        p.status.as_ref().is_some_and(|s| {
            s.sessions.as_deref() == Some("0/2")
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "False")
        })
    })
    .await;
    let (code, out) = status(&lab, &["svc", "web"]);
    eprintln!("routelb status svc web, the router stopped:\n{out}");
    assert_eq!(code, 2, "{out}");
    for n in &lab.nodes {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("FAIL {}", n.name))
                    && l.contains("session with 192.0.2.1 (BGPPeer leaf1)")),
            "{out}"
        );
    }
    assert!(out.contains("-> "), "what to fix: {out}");
    let (code, summary) = status(&lab, &[]);
    eprintln!("routelb status, the router stopped:\n{summary}");
    assert_eq!(code, 2, "{summary}");
    assert!(summary.contains("FAIL node node-1"), "{summary}");
    assert!(summary.contains("WARN pool tiny"), "{summary}");
    assert!(
        summary.contains("1 with an address no node announces: default/loc"),
        "{summary}"
    );
    assert!(
        summary.contains("1 without an address: default/tiny-2"),
        "{summary}"
    );

    // And back.
    lab.start_router(0).unwrap();
    wait_reports(&lab, "sessions Established again", established).await;
    wait_status(&lab, &peers, "leaf1", |p| {
        p.status.as_ref().and_then(|s| s.sessions.as_deref()) == Some("2/2")
    })
    .await;
    let (code, out) = status(&lab, &["svc", "web"]);
    assert_eq!(code, 0, "{out}");
}
