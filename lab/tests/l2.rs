//! Local (L2) pools on the lab's LAN: a client on the nodes' segment, one node answering
//! ARP/NDP for each address, takeovers when that node dies, is drained or loses its
//! endpoints, and agent restarts that move nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lab::{Kind, Lab, Options};
use routelb::kernel::arp::{Wire, arp_probe, mac_string, parse_arp};
use routelb_core::crd::AddressPool;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
/// Client connect timeout: a failover is timed to about this.
const FINE: Duration = Duration::from_millis(100);

async fn up() -> Lab {
    let mut o = Options::for_tests(Kind::Bird, &[Kind::Bird; 3]);
    o.l2 = true;
    Lab::up(o).await.expect("the lab comes up")
}

/// The MACs that answer an ARP probe for `addr` from the LAN client (three probes).
fn arp_repliers(lab: &Lab, addr: Ipv4Addr) -> BTreeSet<String> {
    let link = lab
        .exec(&lab.lan_netns, &["ip", "-o", "link", "show", "eth0"])
        .unwrap();
    let index: u32 = link.split(':').next().unwrap().trim().parse().unwrap();
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string();
    let mac: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let mac: [u8; 6] = mac.try_into().unwrap();
    lab::in_netns(&lab.lan_netns, move || {
        let wire = Wire::open(index).unwrap();
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            wire.send(&arp_probe(mac, addr)).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            for h in wire.heard() {
                if h.op == 2 && h.sender == addr {
                    seen.insert(mac_string(&h.sender_mac));
                }
            }
        }
        // A frame built by hand parses back (the probe itself is ARP).
        assert!(parse_arp(&arp_probe(mac, addr)).is_some());
        seen
    })
    .join()
    .unwrap()
    .unwrap()
}

/// Polls until `check` returns Some, or panics after WAIT saying `what`.
/// The allocator's log lines that mention `what`, for failure messages.
fn allocator_log(lab: &Lab, what: &str) -> String {
    std::fs::read_dir(&lab.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("allocator"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|l| {
            l.lines()
                .filter(|l| l.contains(what))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{what} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node answering `addr` to the LAN client, once connections succeed through it
/// and the client's neighbour entry names it.
async fn holder(lab: &Lab, addr: IpAddr) -> usize {
    eventually(&format!("no node answers {addr}"), || lab.lan_answer(addr)).await
}

/// Waits until the Service's annotation `key` is `node` (written by the allocator).
async fn announcing(lab: &Lab, service: &str, key: &str, node: &str) {
    let start = Instant::now();
    loop {
        let svc = lab.services().get(service).await.unwrap();
        let value = svc.metadata.annotations.and_then(|a| a.get(key).cloned());
        if value.as_deref() == Some(node) {
            return;
        }
        assert!(start.elapsed() < WAIT, "{key} is {value:?}, not {node}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn notes(lab: &Lab, service: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(lab.client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_node_answers_and_another_takes_over_when_it_dies() {
    let mut lab = up().await;
    lab.create_service_with(
        "l2web",
        json!({"routelb.io/pool": "lan"}),
        json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
    )
    .await
    .unwrap();
    let ips = lab.external_ips("l2web", 2, WAIT).await.unwrap();
    let (v4, v6) = (ips[0], ips[1]);
    assert!(v4.is_ipv4() && v6.is_ipv6(), "{ips:?}");
    let h = holder(&lab, v4).await;
    let IpAddr::V4(v4a) = v4 else { unreachable!() };
    let repliers = arp_repliers(&lab, v4a);
    assert_eq!(
        repliers,
        BTreeSet::from([lab.node_mac(h).unwrap()]),
        "exactly the elected node answers ARP"
    );
    for i in 0..lab.nodes.len() {
        assert_eq!(
            lab.node_lan_addrs(i).contains(&v4),
            i == h,
            "only the elected node has {v4} on its LAN interface"
        );
    }
    announcing(
        &lab,
        "l2web",
        "routelb.io/announcing-ipv4",
        &lab.nodes[h].name,
    )
    .await;
    // IPv6 through NDP (the election may pick another node for it).
    let h6 = holder(&lab, v6).await;
    announcing(
        &lab,
        "l2web",
        "routelb.io/announcing-ipv6",
        &lab.nodes[h6].name,
    )
    .await;
    println!(
        "{v4} on {}, {v6} on {}",
        lab.nodes[h].name, lab.nodes[h6].name
    );
    let announced = notes(&lab, "l2web").await;
    assert!(
        announced
            .iter()
            .any(|n| n.contains(&format!("answers for {v4} on eth0 (ARP)"))),
        "{announced:?}"
    );
    // The nodes' reports list the address on the holder only, and `routelb status`
    // follows the Service to it.
    let reports: kube::Api<routelb_core::crd::NodeRoutingStatus> =
        kube::Api::namespaced(lab.client.clone(), "routelb-system");
    let start = Instant::now();
    loop {
        let list = reports.list(&Default::default()).await.unwrap().items;
        let holders: Vec<(String, String)> = list
            .iter()
            .filter_map(|r| {
                let l = r
                    .status
                    .as_ref()?
                    .l2
                    .iter()
                    .find(|l| l.address == v4.to_string())?;
                Some((r.spec.node_name.clone(), l.interface.clone()))
            })
            .collect();
        if holders == [(lab.nodes[h].name.clone(), "eth0".to_string())] {
            break;
        }
        assert!(start.elapsed() < WAIT, "reports listing {v4}: {holders:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = std::process::Command::new(&lab.opts.routelb)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(["status", "svc", "l2web"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = format!("answers ARP/NDP for {v4} on eth0");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok ") && l.contains(&lab.nodes[h].name) && l.ends_with(&line)),
        "{text}"
    );

    // The holder dies: its agent is killed and its link goes down.
    let old = lab.nodes[h].name.clone();
    let l = lab.client_loop_from(&lab.lan_netns.clone(), v4, Duration::from_millis(10), FINE);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let died = Instant::now();
    lab.kill(&format!("agent-{old}"));
    lab.node_link(h, false).unwrap();
    let (took, failed) = eventually("no takeover", || l.recovery(died, &old)).await;
    let tally = l.stop();
    println!("takeover after the holder died: {took:?}, {failed} failed connections; {tally:?}");
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    let h2 = holder(&lab, v4).await;
    assert_ne!(h2, h);
    let new = lab.nodes[h2].name.clone();
    let start = Instant::now();
    loop {
        let announced = notes(&lab, "l2web").await;
        if announced.iter().any(|n| {
            n.contains(&format!("{new} answers for {v4}"))
                && n.contains(&format!("took over from {old}"))
        }) {
            break;
        }
        assert!(start.elapsed() < WAIT, "no takeover Event: {announced:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    announcing(&lab, "l2web", "routelb.io/announcing-ipv4", &new).await;

    // The dead node comes back: it takes nothing back (an election is sticky).
    lab.node_link(h, true).unwrap();
    lab.start_agent(h).unwrap();
    lab.wait_agent_ready(h).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = holder(&lab, v4).await;
    if back != h2 {
        for i in 0..3 {
            println!(
                "--- {}\n{}",
                lab.nodes[i].name,
                lab.agent_log(i)
                    .lines()
                    .filter(|l| l.contains("l2") || l.contains("LAN"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert_eq!(back, h2, "the returning node took the address back");
    assert!(!lab.node_lan_addrs(h).contains(&v4));

    // A graceful restart of the holder's agent moves nothing and drops nothing.
    let l = lab.client_loop_from(&lab.lan_netns.clone(), v4, Duration::from_millis(10), FINE);
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.stop_agent(h2);
    lab.start_agent(h2).unwrap();
    lab.wait_agent_ready(h2).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = l.stop();
    println!("holder agent restart: {tally:?}");
    let failed: usize = tally
        .iter()
        .filter(|(k, _)| k.starts_with("failed"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failed, 0, "{tally:?}");
    assert_eq!(tally.len(), 1, "one node answered throughout: {tally:?}");
    assert_eq!(holder(&lab, v4).await, h2);
    lab.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn local_policy_follows_endpoints_and_a_drain_moves_the_address() {
    let lab = up().await;
    lab.create_service_with(
        "l2local",
        json!({"routelb.io/pool": "lan"}),
        json!({"externalTrafficPolicy": "Local"}),
    )
    .await
    .unwrap();
    let v4 = lab.external_ip("l2local", WAIT).await.unwrap();
    lab.endpoints("l2local", &[1]).await.unwrap();
    assert_eq!(
        holder(&lab, v4).await,
        1,
        "the node with the endpoint answers"
    );
    lab.endpoints("l2local", &[2]).await.unwrap();
    assert_eq!(holder(&lab, v4).await, 2, "the answer follows the endpoint");
    lab.endpoints("l2local", &[]).await.unwrap();
    eventually("the address is withdrawn without endpoints", || {
        (0..3)
            .all(|i| !lab.node_lan_addrs(i).contains(&v4))
            .then_some(())
    })
    .await;

    // A local pool no node has a subnet for: assigned, answered by nobody, and said so.
    lab.apply_routelb(
        "AddressPool",
        "addresspools",
        "far",
        json!({"addresses": ["2001:db8:9::/120"], "mode": "local", "autoAssign": false}),
    )
    .await
    .unwrap();
    lab.create_service_with(
        "l2far",
        json!({"routelb.io/pool": "far"}),
        json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}),
    )
    .await
    .unwrap();
    let far = lab.external_ip("l2far", WAIT).await.unwrap();
    event_note(
        &lab,
        "NoNodeCanAnswer",
        "far",
        "has no LAN interface with a subnet holding 2001:db8:9::",
    )
    .await;
    assert!((0..3).all(|i| !lab.node_lan_addrs(i).contains(&far)));
    // The pool says so in its status too (kubectl get addresspool far -o yaml).
    let pools: Api<AddressPool> = Api::all(lab.client.clone());
    let start = Instant::now();
    let answerable = loop {
        let found = pools
            .get("far")
            .await
            .unwrap()
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Answerable"));
        if let Some(c) = found {
            break c;
        }
        assert!(
            start.elapsed() < WAIT,
            "no Answerable condition on pool far; allocator log: {}",
            allocator_log(&lab, "far")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answerable.status, "False", "{answerable:?}");
    assert_eq!(answerable.reason, "NoNodeCanAnswer");
    // What the README prints works with the real kubectl.
    let kubectl = |args: &[&str]| lab::kubectl(&lab.kubeconfig, args).unwrap();
    let described = kubectl(&["describe", "addresspool", "far"]);
    assert!(
        described.contains("Answerable") && described.contains("NoNodeCanAnswer"),
        "{described}"
    );
    let leases = kubectl(&["get", "leases", "-n", "routelb-system"]);
    assert!(
        (1..=3).all(|i| leases.contains(&format!("routelb-node-node-{i}"))),
        "{leases}"
    );

    // Cluster policy: cordoning the holder (kubectl drain) moves the address first.
    lab.create_service_with("l2drain", json!({"routelb.io/pool": "lan"}), json!({}))
        .await
        .unwrap();
    let addr = lab.external_ip("l2drain", WAIT).await.unwrap();
    let h = holder(&lab, addr).await;
    let old = lab.nodes[h].name.clone();
    let l = lab.client_loop_from(
        &lab.lan_netns.clone(),
        addr,
        Duration::from_millis(10),
        FINE,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drained = Instant::now();
    Api::<Node>::all(lab.client.clone())
        .patch(
            &old,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let (took, failed) = eventually("no move on drain", || l.recovery(drained, &old)).await;
    let tally: BTreeMap<String, usize> = l.stop();
    println!("drain of {old}: moved after {took:?}, {failed} failed connections; {tally:?}");
    assert_ne!(holder(&lab, addr).await, h);
    eventually("the drained node lets go once the new one answers", || {
        (!lab.node_lan_addrs(h).contains(&addr)).then_some(())
    })
    .await;
    lab.shutdown();
}

/// The first Event with `reason` about `regarding` (any namespace) whose note mentions
/// `mentions`, waited for: its note.
async fn event_note(lab: &Lab, reason: &str, regarding: &str, mentions: &str) -> String {
    let events: Api<Event> = Api::all(lab.client.clone());
    let start = Instant::now();
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
                    && e.note.as_deref().is_some_and(|n| n.contains(mentions))
            })
            .and_then(|e| e.note);
        if let Some(n) = found {
            return n;
        }
        assert!(
            start.elapsed() < WAIT,
            "no {reason} Event about {regarding} mentioning {mentions} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_known_traps_are_reported() {
    let lab = up().await;
    lab.create_service_with(
        "l2trap",
        json!({"routelb.io/pool": "lan"}),
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
    )
    .await
    .unwrap();
    let addr = lab.external_ip("l2trap", WAIT).await.unwrap();
    let h = holder(&lab, addr).await;
    let other = (h + 1) % lab.nodes.len();
    let (holder_mac, other_mac) = (lab.node_mac(h).unwrap(), lab.node_mac(other).unwrap());
    let (other_name, other_ns) = (
        lab.nodes[other].name.clone(),
        lab.nodes[other].netns.clone(),
    );

    // Someone configures the Service's address on another node by hand: that node's
    // agent says it is foreign there, and the holder hears a second MAC answer its
    // ARP probes (a split brain on the wire).
    let a = format!("{addr}/32");
    lab.exec(&other_ns, &["ip", "addr", "add", &a, "dev", "eth0"])
        .unwrap();
    let foreign = event_note(&lab, "ForeignAddress", &other_name, &addr.to_string()).await;
    assert!(
        foreign.contains(&format!(
            "{addr} of AddressPool lan is configured on eth0 of node {other_name}"
        )),
        "{foreign}"
    );
    let split = event_note(&lab, "SplitBrain", "l2trap", &addr.to_string()).await;
    assert!(
        split.contains(&format!(
            "answers for {addr} on eth0, and so does {other_mac}"
        )),
        "{split}"
    );
    // The elected node keeps the address (its record is current): no flapping.
    assert_eq!(holder(&lab, addr).await, h);
    assert_ne!(holder_mac, other_mac);
    lab.exec(&other_ns, &["ip", "addr", "del", &a, "dev", "eth0"])
        .unwrap();

    // The same for IPv6: the holder's duplicate address detection probe is answered by
    // the other host's Neighbor Advertisement.
    let v6 = lab
        .services()
        .get("l2trap")
        .await
        .unwrap()
        .status
        .and_then(|s| s.load_balancer?.ingress)
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip?.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv6)
        .expect("an IPv6 address");
    let h6 = holder(&lab, v6).await;
    let other6 = (h6 + 1) % lab.nodes.len();
    let (other6_ns, other6_mac) = (
        lab.nodes[other6].netns.clone(),
        lab.node_mac(other6).unwrap(),
    );
    let a6 = format!("{v6}/128");
    lab.exec(
        &other6_ns,
        &["ip", "-6", "addr", "add", &a6, "dev", "eth0", "nodad"],
    )
    .unwrap();
    let split6 = event_note(&lab, "SplitBrain", "l2trap", &v6.to_string()).await;
    assert!(
        split6.contains(&format!(
            "answers for {v6} on eth0, and so does {other6_mac}"
        )),
        "{split6}"
    );
    lab.exec(&other6_ns, &["ip", "-6", "addr", "del", &a6, "dev", "eth0"])
        .unwrap();

    // kube-proxy in IPVS mode without strict ARP (kube-ipvs0 exists, arp_ignore 0):
    // reported on the Node with what to set. (No dummy links here: a bridge stands in.)
    let third = (h + 2) % lab.nodes.len();
    let (third_name, third_ns) = (
        lab.nodes[third].name.clone(),
        lab.nodes[third].netns.clone(),
    );
    lab.exec(
        &third_ns,
        &["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0"],
    )
    .unwrap();
    lab.exec(
        &third_ns,
        &["ip", "link", "add", "kube-ipvs0", "type", "bridge"],
    )
    .unwrap();
    let trap = event_note(&lab, "StrictARPMissing", &third_name, "kube-ipvs0").await;
    assert!(
        trap.contains("kube-ipvs0 exists") && trap.contains("ipvs.strictARP: true"),
        "{trap}"
    );
    lab.shutdown();
}
