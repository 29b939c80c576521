//! End-to-end latency on the lab (root): a Service created until its multipath route is
//! in the router's kernel, and deleted until the route is gone, p50/p99 over 100 Services,
//! with BIRD everywhere and with FRR everywhere. The same run measures the floor (a route
//! put straight into table 200 on every node until the router has the multipath route)
//! and the node-side time (Service created until the route is in node-1's table 200), so
//! the rest is the routing daemons' share.
//!
//! Run: `cargo bench -p routelb-lab` (`-- --services N`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::{Kind, Lab, Options};
use nix::sched::{CloneFlags, setns};
use routelb::kernel::netlink::Netlink;
use routelb_core::net::{Op, Prefix, Route};

/// Adds (or removes) a route to table 200 with routelb's protocol on every node at once,
/// over netlink from one thread per node: the routing daemons' floor, without routelb.
fn table200_everywhere(lab: &Lab, ip: IpAddr, add: bool) {
    let handles: Vec<_> = lab
        .nodes
        .iter()
        .map(|n| {
            let ns = n.netns.clone();
            std::thread::spawn(move || {
                setns(
                    File::open(format!("/run/netns/{ns}")).unwrap(),
                    CloneFlags::CLONE_NEWNET,
                )
                .unwrap();
                let mut nl = Netlink::new().unwrap();
                let link = nl.link_get("kube-lb0").unwrap().expect("kube-lb0");
                let route = Route {
                    dst: Prefix::host(ip),
                    table: 200,
                    protocol: 249,
                    local: false,
                    blackhole: false,
                    oif: Some(link.index),
                };
                let op = if add {
                    Op::RouteAdd(route)
                } else {
                    Op::RouteDel(route)
                };
                nl.apply(&[op]).pop().unwrap().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// When each address first had `want` next hops at the router, and when it vanished;
/// when it first appeared in node-1's table 200.
#[derive(Default)]
struct Seen {
    router_full: BTreeMap<IpAddr, Instant>,
    router_gone: BTreeMap<IpAddr, Instant>,
    node_present: BTreeMap<IpAddr, Instant>,
}

fn poll(
    ns: String,
    table: u32,
    want: usize,
    seen: Arc<Mutex<Seen>>,
    router: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        setns(
            File::open(format!("/run/netns/{ns}")).unwrap(),
            CloneFlags::CLONE_NEWNET,
        )
        .unwrap();
        let mut nl = Netlink::new().unwrap();
        let mut present: BTreeSet<IpAddr> = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            let now_routes = nl.routes_with_gateways(table).unwrap_or_default();
            let now = Instant::now();
            let mut here = BTreeSet::new();
            let mut s = seen.lock().unwrap();
            for (dst, gws) in now_routes {
                let in_pool = matches!(dst.addr, IpAddr::V4(a) if a.octets()[..3] == [203, 0, 113]);
                if !in_pool {
                    continue;
                }
                here.insert(dst.addr);
                if router && gws.len() >= want {
                    s.router_full.entry(dst.addr).or_insert(now);
                }
                if !router {
                    s.node_present.entry(dst.addr).or_insert(now);
                }
            }
            if router {
                for gone in present.difference(&here) {
                    s.router_gone.insert(*gone, now);
                }
            }
            present = here;
            drop(s);
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

fn pct(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort();
    let at = |q: f64| {
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    };
    format!("p50 {:>6.1} ms  p99 {:>6.1} ms", at(0.5), at(0.99))
}

async fn run(kind: Kind, node_kind: Kind, n: usize) -> anyhow::Result<()> {
    let opts = Options::for_benches(kind, &[node_kind; 3]);
    let mut lab = Lab::up(opts).await?;
    eprintln!("{}: lab up", kind.name());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let pollers = [
        poll(
            lab.routers[0].netns.clone(),
            254,
            3,
            seen.clone(),
            true,
            stop.clone(),
        ),
        poll(
            lab.nodes[0].netns.clone(),
            200,
            1,
            seen.clone(),
            false,
            stop.clone(),
        ),
    ];

    // Floor: straight into table 200 on all nodes, no routelb involved (the agents are
    // stopped: they would remove routes they did not put there).
    for i in 0..lab.nodes.len() {
        lab.stop_agent(i);
    }
    let mut floor = Vec::new();
    for i in 0..20 {
        let ip: IpAddr = format!("203.0.113.{}", 251 - (i % 5)).parse()?;
        let t0 = Instant::now();
        table200_everywhere(&lab, ip, true);
        loop {
            if seen
                .lock()
                .unwrap()
                .router_full
                .get(&ip)
                .is_some_and(|t| *t >= t0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        floor.push(seen.lock().unwrap().router_full[&ip] - t0);
        table200_everywhere(&lab, ip, false);
        while seen
            .lock()
            .unwrap()
            .router_gone
            .get(&ip)
            .is_none_or(|t| *t < t0)
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let mut s = seen.lock().unwrap();
        s.router_full.remove(&ip);
        s.router_gone.remove(&ip);
        s.node_present.remove(&ip);
    }

    for i in 0..lab.nodes.len() {
        lab.start_agent(i)?;
    }
    for i in 0..lab.nodes.len() {
        lab.wait_agent_ready(i).await?;
    }
    eprintln!(
        "{}: floor measured over {} routes",
        kind.name(),
        floor.len()
    );
    let mut create = Vec::new();
    let mut node_side = Vec::new();
    let mut ips = Vec::new();
    for i in 0..n {
        let name = format!("bench-{i}");
        let t0 = Instant::now();
        lab.create_service(&name, false).await?;
        let ip = lab.external_ip(&name, Duration::from_secs(20)).await?;
        let t_route = loop {
            if let Some(t) = seen.lock().unwrap().router_full.get(&ip) {
                break *t;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "no multipath route for {ip}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        create.push(t_route - t0);
        if let Some(t) = seen.lock().unwrap().node_present.get(&ip) {
            node_side.push(*t - t0);
        }
        ips.push((name, ip));
    }
    let mut delete = Vec::new();
    for (name, ip) in &ips {
        let t0 = Instant::now();
        lab.delete_service(name).await?;
        let t_gone = loop {
            if let Some(t) = seen.lock().unwrap().router_gone.get(ip) {
                break *t;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "{ip} not withdrawn");
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        delete.push(t_gone - t0);
    }
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        let _ = p.join();
    }
    let name = kind.name();
    println!(
        "{name}: {n} Services, one at a time, router {name}, 3 {} nodes",
        node_kind.name()
    );
    println!(
        "  created -> multipath route at the router:   {}",
        pct(create)
    );
    println!(
        "  created -> route in node-1's table 200:     {}",
        pct(node_side)
    );
    println!(
        "  deleted -> route gone at the router:        {}",
        pct(delete)
    );
    println!(
        "  floor: table 200 on 3 nodes -> router route: {}",
        pct(floor)
    );
    lab.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--services")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // `--combo router/nodes` (e.g. bird/frr) to run one combination.
    let combo = args
        .iter()
        .position(|a| a == "--combo")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let combos = match combo.as_deref().and_then(|c| c.split_once('/')) {
        Some((r, n)) => vec![(Kind::parse(r)?, Kind::parse(n)?)],
        None => vec![(Kind::Bird, Kind::Bird), (Kind::Frr, Kind::Frr)],
    };
    for (router, nodes) in combos {
        run(router, nodes, n).await?;
    }
    println!(
        "target: p99 under 100 ms from create to the router's route (PureLB publishes 0.37-1.04 s to an address on the NIC)"
    );
    Ok(())
}
