//! The agent: real binary, fake API server, one network namespace per node.

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams};
use routelb::kernel::netlink::Monitor;
use routelb_core::net::Notification;
use serde_json::json;

use crate::netns::NetNs;
use crate::support::*;

const NS: &str = "default";

/// A node: its namespace and its agent process.
struct NodeUnderTest {
    name: String,
    ns: NetNs,
    agent: Option<Proc>,
    health: u16,
}

impl NodeUnderTest {
    async fn start(c: &Cluster, name: &str) -> NodeUnderTest {
        NodeUnderTest::start_with(c, name, &[]).await
    }

    /// A node whose agent has `extra` flags.
    async fn start_with(c: &Cluster, name: &str, extra: &[&str]) -> NodeUnderTest {
        c.node(name, &[]).await;
        let mut n = NodeUnderTest {
            name: name.into(),
            ns: NetNs::new("agent"),
            agent: None,
            health: 0,
        };
        n.start_agent_with(c, extra).await;
        n
    }

    async fn start_agent(&mut self, c: &Cluster) {
        self.start_agent_with(c, &[]).await;
    }

    async fn start_agent_with(&mut self, c: &Cluster, extra: &[&str]) {
        self.health = free_port();
        let kc = c.kubeconfig();
        let netns = format!("/run/netns/{}", self.ns.name);
        let health = format!("127.0.0.1:{}", self.health);
        let mut args = vec![
            "--kubeconfig",
            kc.to_str().unwrap(),
            "agent",
            "--node-name",
            &self.name,
            "--netns",
            &netns,
            "--health-addr",
            &health,
        ];
        args.extend_from_slice(extra);
        self.agent = Some(Proc::routelb(&args));
        let port = self.health;
        eventually(&format!("agent on {} ready", self.name), || async move {
            is_ready(port).await.then_some(())
        })
        .await;
    }

    fn stop_agent(&mut self) {
        if let Some(mut p) = self.agent.take() {
            // SIGTERM: a rolling restart.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &p.pid().to_string()])
                .status();
            let _ = p.0.wait();
        }
    }

    /// Table 200, both families ("" while the table does not exist yet).
    fn routes(&self) -> String {
        let show = |fam: &str| {
            let out = self.ns.exec(&["ip", fam, "route", "show", "table", "200"]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        show("-4") + &show("-6")
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, text) = http_get(self.health, "/metrics").await;
        metric(&text, name, labels)
    }

    fn on_interface(&self, ip: &str) -> bool {
        self.ns
            .ip(&["addr", "show", "dev", "kube-lb0"])
            .contains(&format!("{ip}/"))
    }

    fn announces(&self, ip: &str) -> bool {
        self.routes().lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|d| d.split('/').next() == Some(ip))
        }) && self.on_interface(ip)
    }

    async fn wait(&self, ip: &str, wanted: bool) {
        eventually(
            &format!(
                "{} {} {ip}",
                self.name,
                if wanted { "announcing" } else { "withdrawing" }
            ),
            || async { (self.announces(ip) == wanted).then_some(()) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policy_announces_everywhere_and_deletion_withdraws_everywhere() {
    let c = Cluster::new().await;
    let n1 = NodeUnderTest::start(&c, "node-1").await;
    let n2 = NodeUnderTest::start(&c, "node-2").await;
    c.pool("p", json!({"addresses": ["203.0.113.0/24"]})).await;
    c.service(NS, "web", json!({})).await;
    c.assign(NS, "web", &["203.0.113.10"], "p").await;
    n1.wait("203.0.113.10", true).await;
    n2.wait("203.0.113.10", true).await;
    assert!(n1.routes().contains("203.0.113.10 dev kube-lb0 proto 249"));
    c.wait_event(
        NS,
        "web",
        "Announcing",
        "node node-1 announces 203.0.113.10",
    )
    .await;
    c.wait_event(
        NS,
        "web",
        "Announcing",
        "node node-2 announces 203.0.113.10",
    )
    .await;
    // The address changes: the old one goes, the new one comes.
    c.assign(NS, "web", &["203.0.113.20"], "p").await;
    for n in [&n1, &n2] {
        n.wait("203.0.113.20", true).await;
        n.wait("203.0.113.10", false).await;
    }
    c.services(NS)
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    n1.wait("203.0.113.20", false).await;
    n2.wait("203.0.113.20", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_policy_follows_ready_endpoints() {
    let c = Cluster::new().await;
    let n1 = NodeUnderTest::start(&c, "node-1").await;
    let n2 = NodeUnderTest::start(&c, "node-2").await;
    c.pool("p", json!({"addresses": ["203.0.113.0/24"]})).await;
    c.service(
        NS,
        "api",
        json!({"spec": {"externalTrafficPolicy": "Local"}}),
    )
    .await;
    c.assign(NS, "api", &["203.0.113.30"], "p").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !n1.announces("203.0.113.30") && !n2.announces("203.0.113.30"),
        "no endpoints, no announcement"
    );
    c.endpoints(NS, "api", "api-x", &[("node-2", true)]).await;
    n2.wait("203.0.113.30", true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!n1.announces("203.0.113.30"), "only node-2 has an endpoint");
    c.endpoints(NS, "api", "api-x", &[("node-2", false)]).await;
    n2.wait("203.0.113.30", false).await;
    c.wait_event(
        NS,
        "api",
        "Withdrawn",
        "node node-2 withdrew 203.0.113.30: externalTrafficPolicy is Local",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_addresses_dual_stack_aggregation_and_excluded_nodes() {
    let c = Cluster::new().await;
    let n1 = NodeUnderTest::start(&c, "node-1").await;
    c.pool("p", json!({"addresses": ["203.0.113.0/24", "2001:db8::/64"], "aggregationLength": {"ipv4": 24, "ipv6": 64}})).await;
    c.service(
        NS,
        "dual",
        json!({"spec": {"ipFamilyPolicy": "RequireDualStack"}}),
    )
    .await;
    c.assign(NS, "dual", &["203.0.113.40", "2001:db8::40"], "p")
        .await;
    n1.wait("203.0.113.40", false).await; // the /24 route's destination is not the address itself
    eventually("aggregated routes", || async {
        let r = n1.routes();
        (r.contains("203.0.113.0/24 dev kube-lb0 proto 249")
            && r.contains("2001:db8::/64 dev kube-lb0 proto 249"))
        .then_some(())
    })
    .await;
    assert!(
        n1.ns
            .ip(&["addr", "show", "dev", "kube-lb0"])
            .contains("2001:db8::40/128")
    );
    // Two Services share .50: the Local one has no endpoint here, the Cluster one wants it.
    c.service(
        NS,
        "shared-local",
        json!({"spec": {"externalTrafficPolicy": "Local"}}),
    )
    .await;
    c.service(
        NS,
        "shared-cluster",
        json!({"spec": {"ports": [{"port": 443}]}}),
    )
    .await;
    c.assign(NS, "shared-local", &["203.0.113.50"], "p").await;
    c.assign(NS, "shared-cluster", &["203.0.113.50"], "p").await;
    eventually("shared address announced", || async {
        n1.ns
            .ip(&["addr", "show", "dev", "kube-lb0"])
            .contains("203.0.113.50/32")
            .then_some(())
    })
    .await;
    c.services(NS)
        .delete("shared-cluster", &DeleteParams::default())
        .await
        .unwrap();
    eventually("shared address withdrawn", || async {
        (!n1.ns
            .ip(&["addr", "show", "dev", "kube-lb0"])
            .contains("203.0.113.50/32"))
        .then_some(())
    })
    .await;
    // Labelled out of external load balancing: everything is withdrawn.
    c.node(
        "node-1",
        &[(
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "",
        )],
    )
    .await;
    eventually("excluded node withdraws", || async {
        n1.routes().trim().is_empty().then_some(())
    })
    .await;
    // Node object deleted: nothing announced; recreated: back.
    c.node("node-1", &[]).await;
    eventually("announcing again", || async {
        (!n1.routes().trim().is_empty()).then_some(())
    })
    .await;
    c.delete_node("node-1").await;
    eventually("deleted node withdraws", || async {
        n1.routes().trim().is_empty().then_some(())
    })
    .await;
}

/// Records every notification in a namespace until told to stop.
fn record(
    ns: &NetNs,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Notification>> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        nix::sched::setns(
            std::fs::File::open(&path).unwrap(),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .unwrap();
        let mut m = Monitor::new().unwrap();
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            seen.extend(m.next(Duration::from_millis(50)).unwrap_or_default());
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_withdraws_nothing() {
    let c = Cluster::new().await;
    let mut n1 = NodeUnderTest::start(&c, "node-1").await;
    c.pool("p", json!({"addresses": ["203.0.113.0/24"]})).await;
    for i in 0..20 {
        let name = format!("s{i}");
        c.service(NS, &name, json!({})).await;
        c.assign(NS, &name, &[&format!("203.0.113.{}", 100 + i)], "p")
            .await;
    }
    eventually("20 routes", || async {
        (n1.routes().lines().count() == 20).then_some(())
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let recorder = record(&n1.ns, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    n1.stop_agent();
    tokio::time::sleep(Duration::from_millis(500)).await;
    n1.start_agent(&c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The recorder works: a new Service after the restart is seen arriving.
    c.service(NS, "s20", json!({})).await;
    c.assign(NS, "s20", &["203.0.113.120"], "p").await;
    n1.wait("203.0.113.120", true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let notes = recorder.join().unwrap();
    assert!(
        notes.iter().any(|n| matches!(n, Notification::NewAddr { prefix, .. } if prefix.addr.to_string() == "203.0.113.120")),
        "the recorder saw the new address: {notes:?}"
    );
    let withdrawals: Vec<&Notification> = notes
        .iter()
        .filter(|n| {
            matches!(
                n,
                Notification::DelAddr { .. } | Notification::DelRoute(_) | Notification::DelLink(_)
            )
        })
        .collect();
    assert!(
        withdrawals.is_empty(),
        "withdrawals during a restart: {withdrawals:?}"
    );
    assert_eq!(n1.routes().lines().count(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_keeps_the_kernel_then_converges() {
    let c = Cluster::new().await;
    let n1 = NodeUnderTest::start(&c, "node-1").await;
    c.pool("p", json!({"addresses": ["203.0.113.0/24"]})).await;
    c.service(NS, "web", json!({})).await;
    c.assign(NS, "web", &["203.0.113.60"], "p").await;
    n1.wait("203.0.113.60", true).await;
    let before = n1.routes();
    c.server.faults().go_offline(Duration::from_secs(30));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(29) {
        assert_eq!(n1.routes(), before, "kernel changed during the outage");
        assert!(n1.announces("203.0.113.60"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually("API back", || async {
        c.services(NS).get("web").await.ok()
    })
    .await;
    c.service(NS, "after", json!({})).await;
    c.assign(NS, "after", &["203.0.113.61"], "p").await;
    c.services(NS)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    n1.wait("203.0.113.61", true).await;
    n1.wait("203.0.113.60", false).await;
}

/// Creates or replaces a RouterConfig selecting every node.
async fn router_config(c: &Cluster, name: &str, advertise: serde_json::Value) {
    use routelb_core::crd::RouterConfig;
    let api: kube::Api<RouterConfig> = kube::Api::all(c.client.clone());
    let rc: RouterConfig = serde_json::from_value(json!({
        "apiVersion": "routelb.io/v1alpha1", "kind": "RouterConfig",
        "metadata": {"name": name},
        "spec": {"asn": 64512, "advertise": advertise}
    }))
    .unwrap();
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&rc),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_and_cluster_ips_follow_router_config_annotations_and_policies() {
    let c = Cluster::new().await;
    let n1 = NodeUnderTest::start(&c, "node-1").await;
    let n2 = NodeUnderTest::start(&c, "node-2").await;
    router_config(
        &c,
        "all",
        json!({
            "externalIPs": {"enabled": true, "cidrs": ["192.0.2.0/25"]},
            "clusterIPs": {"cidrs": ["198.51.100.0/24", "2001:db8:96::/112"]}
        }),
    )
    .await;
    // A plain ClusterIP Service: its externalIP inside the allowed CIDRs is announced
    // everywhere, the one outside nowhere (with a Warning naming the list to change),
    // its cluster IPs not at all (off by default).
    c.service(
        NS,
        "ext",
        json!({"spec": {"type": "ClusterIP", "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
            "clusterIPs": ["198.51.100.10", "2001:db8:96::10"], "externalIPs": ["192.0.2.10", "192.0.2.200"]}}),
    )
    .await;
    for n in [&n1, &n2] {
        n.wait("192.0.2.10", true).await;
    }
    let warning = c
        .wait_event(NS, "ext", "ExternalIPNotAllowed", "externalIP 192.0.2.200")
        .await;
    assert!(
        warning.contains("RouterConfig all spec.advertise.externalIPs.cidrs [192.0.2.0/25]"),
        "{warning}"
    );
    c.wait_event(
        NS,
        "ext",
        "Announcing",
        "node node-1 announces 192.0.2.10 (externalIP) (routes 192.0.2.10/32 in table 200)",
    )
    .await;
    assert!(!n1.announces("192.0.2.200") && !n1.announces("198.51.100.10"));
    // The node says what it announces by default, and from which RouterConfig.
    c.wait_event(
        NS,
        "node-2",
        "AdvertiseChanged",
        "node node-2 announces LoadBalancer addresses on; externalIPs on (within 192.0.2.0/25); cluster IPs off (within 198.51.100.0/24, 2001:db8:96::/112) (RouterConfig all)",
    )
    .await;
    assert_eq!(
        n1.metric(
            "routelb_announced_service_addresses",
            &[("kind", "external")]
        )
        .await,
        Some(1.0)
    );

    // The Service asks for its cluster IPs (kube-router's annotation), both families.
    let annotate = |k: &str, v: &str| json!({"metadata": {"annotations": {k: v}}});
    c.services(NS)
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(annotate(
                "kube-router.io/service.advertise.clusterip",
                "true",
            )),
        )
        .await
        .unwrap();
    for n in [&n1, &n2] {
        n.wait("198.51.100.10", true).await;
        n.wait("2001:db8:96::10", true).await;
    }
    c.wait_event(NS, "ext", "Announcing", "198.51.100.10 (cluster IP)")
        .await;
    // Switched off by its own annotation: withdrawn everywhere, saying why.
    c.services(NS)
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(annotate("routelb.io/advertise-external-ips", "false")),
        )
        .await
        .unwrap();
    for n in [&n1, &n2] {
        n.wait("192.0.2.10", false).await;
    }
    assert!(n1.announces("198.51.100.10"), "the cluster IP stays");
    c.wait_event(
        NS,
        "ext",
        "Announcing",
        "withdrew 192.0.2.10 (externalIP): annotation routelb.io/advertise-external-ips is \"false\"",
    )
    .await;

    // internalTrafficPolicy Local: the cluster IP only from the node with an endpoint.
    c.service(
        NS,
        "itp",
        json!({"metadata": {"annotations": {"routelb.io/advertise-cluster-ips": "true"}},
               "spec": {"type": "ClusterIP", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"],
                        "clusterIPs": ["198.51.100.20"], "internalTrafficPolicy": "Local"}}),
    )
    .await;
    // externalTrafficPolicy Local: the externalIP only from the node with an endpoint.
    c.service(
        NS,
        "etp",
        json!({"spec": {"type": "NodePort", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"],
                        "clusterIPs": ["198.51.100.21"], "externalIPs": ["192.0.2.30"],
                        "externalTrafficPolicy": "Local"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [&n1, &n2] {
        assert!(!n.announces("198.51.100.20") && !n.announces("192.0.2.30"));
    }
    c.endpoints(NS, "itp", "itp-a", &[("node-2", true)]).await;
    c.endpoints(NS, "etp", "etp-a", &[("node-1", true)]).await;
    n2.wait("198.51.100.20", true).await;
    n1.wait("192.0.2.30", true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!n1.announces("198.51.100.20") && !n2.announces("192.0.2.30"));
    c.endpoints(NS, "itp", "itp-a", &[("node-2", false)]).await;
    n2.wait("198.51.100.20", false).await;
    c.wait_event(
        NS,
        "itp",
        "Withdrawn",
        "node node-2 withdrew 198.51.100.20 (cluster IP): internalTrafficPolicy is Local",
    )
    .await;
    c.endpoints(NS, "itp", "itp-a", &[("node-2", true)]).await;
    n2.wait("198.51.100.20", true).await;

    // Cluster IPs on for the node group, as the service CIDR: one aggregate (blackhole)
    // route from every node, no per-Service address on kube-lb0, the Local Service's host
    // route still from node-2 only, annotated ones unchanged.
    router_config(
        &c,
        "all",
        json!({
            "externalIPs": {"enabled": true, "cidrs": ["192.0.2.0/25"]},
            "clusterIPs": {"enabled": true, "aggregate": true, "cidrs": ["198.51.100.0/24"]}
        }),
    )
    .await;
    for n in [&n1, &n2] {
        eventually(&format!("{} routes the service CIDR", n.name), || async {
            let r = n.routes();
            (r.contains("blackhole 198.51.100.0/24 proto 249")
                && !r.contains("198.51.100.10 ")
                && !r.contains("198.51.100.21 "))
            .then_some(())
        })
        .await;
        assert!(!n.on_interface("198.51.100.21") && !n.on_interface("198.51.100.10"));
        assert!(
            !n.routes().contains("2001:db8:96::10"),
            "the IPv6 cluster IP is outside the CIDRs now"
        );
    }
    assert!(n2.announces("198.51.100.20") && !n1.announces("198.51.100.20"));
    c.wait_event(
        NS,
        "ext",
        "ClusterIPOutsideCIDRs",
        "cluster IP 2001:db8:96::10 is not announced",
    )
    .await;
    assert_eq!(
        n2.metric(
            "routelb_announced_service_addresses",
            &[("kind", "cluster")]
        )
        .await,
        Some(3.0),
        "198.51.100.10, .20 and .21"
    );

    // Off again for the group: the aggregate goes; the annotated Services keep theirs.
    router_config(
        &c,
        "all",
        json!({"externalIPs": {"enabled": false}, "clusterIPs": {"enabled": false, "aggregate": false, "cidrs": ["198.51.100.0/24"]}}),
    )
    .await;
    for n in [&n1, &n2] {
        eventually(&format!("{} drops the aggregate", n.name), || async {
            (!n.routes().contains("198.51.100.0/24")).then_some(())
        })
        .await;
        n.wait("198.51.100.10", true).await;
        // externalIPs are off by default again: the NodePort's goes.
        n.wait("192.0.2.30", false).await;
    }
    // The Service goes: everything it had goes.
    c.services(NS)
        .delete("ext", &DeleteParams::default())
        .await
        .unwrap();
    for n in [&n1, &n2] {
        n.wait("198.51.100.10", false).await;
    }
}

/// The node's NodeRoutingStatus: owned by its Node, written when something changed and
/// at most once per `--report-interval`, nothing while nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_report_is_written_on_change_only_at_a_bounded_rate() {
    use futures::StreamExt;
    use kube::api::WatchEvent;
    use routelb_core::crd::NodeRoutingStatus;
    let c = Cluster::new().await;
    let _node = NodeUnderTest::start_with(&c, "node-1", &["--report-interval", "2"]).await;
    let api: kube::Api<NodeRoutingStatus> =
        kube::Api::namespaced(c.client.clone(), "routelb-system");
    let first = eventually("the node's report", || async {
        api.get_opt("node-1")
            .await
            .unwrap()
            .filter(|r| r.status.is_some())
    })
    .await;
    let node: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c.client.clone());
    let uid = node.get("node-1").await.unwrap().metadata.uid.unwrap();
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", uid.as_str())
    );
    let s = first.status.as_ref().unwrap();
    assert_eq!(s.announced.total, 0);
    assert_eq!(s.daemon, None, "no RouterConfig: routing is left alone");
    assert_eq!(s.kernel.as_ref().unwrap().interface, "kube-lb0");

    // Everything that reaches the object from here on.
    let rv = first.metadata.resource_version.clone().unwrap();
    let mut stream = api
        .watch(
            &kube::api::WatchParams::default().fields("metadata.name=node-1"),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    type Seen = Vec<(Instant, u32, String)>;
    let writes = std::sync::Arc::new(std::sync::Mutex::new(Seen::new()));
    let seen = writes.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(e)) = stream.next().await {
            if let WatchEvent::Modified(r) = e {
                let total = r.status.as_ref().map_or(0, |s| s.announced.total);
                let text = serde_json::to_string(&r.status).unwrap();
                seen.lock().unwrap().push((Instant::now(), total, text));
            }
        }
    });
    // Quiet: no write.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        writes.lock().unwrap().is_empty(),
        "a quiet node writes nothing: first {}, then {:?}",
        serde_json::to_string(&first.status).unwrap(),
        writes.lock().unwrap()
    );

    // Churn: 12 Services over about 6 s; the report catches up, in few writes.
    c.pool("p", json!({"addresses": ["203.0.113.0/24"]})).await;
    let start = Instant::now();
    for i in 0..12 {
        let name = format!("s{i}");
        c.service(NS, &name, json!({})).await;
        c.assign(NS, &name, &[&format!("203.0.113.{}", 10 + i)], "p")
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually("the report shows the 12 addresses", || async {
        (writes.lock().unwrap().last().map(|w| w.1) == Some(12)).then_some(())
    })
    .await;
    let elapsed = start.elapsed();
    let w = writes.lock().unwrap().clone();
    watcher.abort();
    eprintln!(
        "{} report writes for 12 Services over {elapsed:?} (interval 2 s): {:?}",
        w.len(),
        w.iter()
            .map(|(t, n, _)| (t.duration_since(start).as_millis(), *n))
            .collect::<Vec<_>>()
    );
    let bound = (elapsed.as_secs_f64() / 2.0).ceil() as usize + 1;
    assert!(w.len() <= bound, "{} writes, at most {bound}", w.len());
    assert!(w.len() >= 2, "the report followed the churn: {w:?}");
    for pair in w.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(1900),
            "two writes within the interval: {w:?}"
        );
    }
    let listed = api.get("node-1").await.unwrap().status.unwrap().announced;
    assert_eq!(listed.addresses.len(), 12);
    assert!(listed.addresses.contains(&"203.0.113.21".to_string()));
}
