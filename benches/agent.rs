//! Agent latency benchmark (root): from an address assigned in the API to the route in
//! the node's kernel, and from an endpoint removed to the route withdrawn, p50/p99 over
//! 1,000 Services each, one at a time. fake-apiserver on loopback; the agent in this
//! process programming a network namespace; routes seen by a netlink monitor there.
//! Baseline in the same run: the API write round trip alone.
//!
//! Run: `cargo bench --bench agent` (`-- --services N`).

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nix::sched::{CloneFlags, setns};
use routelb::kernel::netlink::Monitor;
use routelb_core::crd::{AddressPool, AddressPoolSpec};
use routelb_core::net::Notification;
use serde_json::json;
use tokio::sync::watch;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn addr(i: usize) -> IpAddr {
    IpAddr::V4((0xC612_0000 + i as u32).into())
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.99), at(1.0))
}

/// Waits for the monitor to report `want` (added or removed route) for `ip`.
fn wait_route(
    rx: &mpsc::Receiver<(bool, IpAddr, Instant)>,
    seen: &mut HashMap<(bool, IpAddr), Instant>,
    added: bool,
    ip: IpAddr,
) -> Instant {
    loop {
        if let Some(t) = seen.remove(&(added, ip)) {
            return t;
        }
        let (a, got, t) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("route change within 10 s");
        seen.insert((a, got), t);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--services")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let ns = Ns(format!("rlb-bench-agent-{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success(),
        "needs root"
    );
    let path = format!("/run/netns/{}", ns.0);

    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    for crd in routelb_core::crd::crds() {
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &crd)
            .await
            .unwrap();
    }
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "bench-node"}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let spec = AddressPoolSpec {
        addresses: vec!["198.18.0.0/15".into()],
        ..Default::default()
    };
    Api::<AddressPool>::all(client.clone())
        .create(&PostParams::default(), &AddressPool::new("bench", spec))
        .await
        .unwrap();

    // The monitor: every route added to or removed from table 200, timestamped.
    let (tx, rx) = mpsc::channel();
    {
        let path = path.clone();
        std::thread::spawn(move || {
            setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
            let mut m = Monitor::new().unwrap();
            loop {
                for note in m.next(Duration::from_millis(100)).unwrap_or_default() {
                    let (added, r) = match note {
                        Notification::NewRoute(r) => (true, r),
                        Notification::DelRoute(r) => (false, r),
                        _ => continue,
                    };
                    if r.table == 200 && tx.send((added, r.dst.addr, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let mut opts = routelb::agent::Options::new("bench-node");
    opts.netns = Some(path.into());
    opts.events_per_second = 1000.0;
    let health = routelb::health::Health::new();
    let (stop, stopped) = watch::channel(false);
    let agent = tokio::spawn(routelb::agent::run(
        client.clone(),
        opts,
        health.clone(),
        stopped,
    ));
    while !health.ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let mut seen = HashMap::new();
    let (mut assign, mut withdraw, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("svc-{i}");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}
        }))
        .unwrap();
        svcs.create(&PostParams::default(), &svc).await.unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-x"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.1"], "nodeName": "bench-node", "conditions": {"ready": true}}]
        }))
        .unwrap();
        slices.create(&PostParams::default(), &slice).await.unwrap();
        let ip = addr(i);
        svcs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}}),
            ),
        )
        .await
        .unwrap();
        // The assignment is complete with the annotation: time from its write.
        let t0 = Instant::now();
        svcs.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"routelb.io/allocated-from": "bench"}}}),
            ),
        )
        .await
        .unwrap();
        rtt.push(t0.elapsed());
        assign.push(wait_route(&rx, &mut seen, true, ip).saturating_duration_since(t0));
    }
    for i in 0..n {
        let t0 = Instant::now();
        slices
            .delete(&format!("svc-{i}-x"), &DeleteParams::default())
            .await
            .unwrap();
        withdraw.push(wait_route(&rx, &mut seen, false, addr(i)).saturating_duration_since(t0));
    }
    let (a50, a99, amax) = percentiles(assign);
    let (w50, w99, wmax) = percentiles(withdraw);
    let (r50, r99, _) = percentiles(rtt);
    println!("{n} Services, one at a time, fake API server on loopback:");
    println!(
        "  assigned in the API -> route in the kernel: p50 {a50:.2} ms, p99 {a99:.2} ms, max {amax:.2} ms"
    );
    println!(
        "  endpoint removed -> route withdrawn:        p50 {w50:.2} ms, p99 {w99:.2} ms, max {wmax:.2} ms"
    );
    println!(
        "  baseline, one API write round trip:         p50 {r50:.2} ms, p99 {r99:.2} ms; assign p50 is {:.1}x it",
        a50 / r50
    );
    println!(
        "  target p99 < 100 ms: {}",
        if a99 < 100.0 && w99 < 100.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    stop.send_replace(true);
    agent.await.unwrap().unwrap();
    server.stop().await;
}
