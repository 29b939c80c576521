//! Scale on the lab (root; run on demand, not in CI): 10,000 LoadBalancer Services end to
//! end, with 3 nodes and a router, BIRD everywhere and FRR everywhere.
//!
//! - The floor, measured first in the same run: the same routes put into table 200 on
//!   the 3 nodes with `ip -batch` (agents stopped) until the router's kernel has every
//!   multipath route; 1,000 of them deleted until gone at the router.
//! - 10,000 Services created as fast as the API takes them (Cluster policy, one pool, a
//!   /32 each): until the allocator has assigned all, until every node's table 200 holds
//!   all, until the router has all multipath routes. Ratio to the floor.
//! - 1,000 Services deleted until gone at the router. Ratio to the floor.
//! - An agent restarted with 9,000 announced: route changes at the router (target 0),
//!   time until the agent is ready again.
//! - Peak RSS of the agents and the allocator, CPU seconds each process spent during the
//!   mass creation, API requests by kind.
//!
//! Addresses come from 198.18.0.0/17 (RFC 2544 benchmarking space): routes between the
//! lab's namespaces only; no packet is ever sent to them.
//!
//! Run: `cargo build --release -p routelb && cargo bench -p routelb-lab --bench scale`
//! (`-- --services N --delete M --daemon bird|frr|both --vip-mode address|local-route|both
//! --poll-ms MS`).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use lab::{Kind, Lab, Options};
use nix::sched::{CloneFlags, setns};
use routelb::kernel::netlink::Netlink;
use serde_json::json;

/// The pool: 32,768 addresses.
const POOL: &str = "198.18.0.0/17";
const BASE: u32 = 0xC612_0000;
/// Create and delete requests in flight at once.
const IN_FLIGHT: usize = 64;
const LIMIT: Duration = Duration::from_secs(600);

fn in_pool(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if u32::from(v) & 0xFFFF_8000 == BASE)
}

fn addr(i: usize) -> Ipv4Addr {
    // .0 is skipped so that the floor's addresses look like the allocator's.
    Ipv4Addr::from(BASE + 1 + i as u32)
}

/// When a sampled count first was `want` at or after `since`; `Err` after [`LIMIT`].
async fn first_at(
    samples: &Mutex<Vec<(Instant, usize)>>,
    since: Instant,
    want: usize,
) -> Result<Instant, ()> {
    loop {
        let found = samples
            .lock()
            .unwrap()
            .iter()
            .find(|(t, n)| *t >= since && *n == want)
            .map(|s| s.0);
        if let Some(t) = found {
            return Ok(t);
        }
        if since.elapsed() > LIMIT {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A count sampled over time in one namespace: (when, value) at every change.
struct Poller {
    samples: Arc<Mutex<Vec<(Instant, usize)>>>,
    cost: Arc<Mutex<(Duration, u32)>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Counts, every `every`, the pool's routes in `table`: those with at least `hops`
    /// next hops (router), or with routelb's protocol (node, `hops` 0).
    fn start(ns: &str, table: u32, hops: usize, every: Duration) -> Poller {
        let samples = Arc::new(Mutex::new(vec![(Instant::now(), 0)]));
        let cost = Arc::new(Mutex::new((Duration::ZERO, 0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c, st) = (samples.clone(), cost.clone(), stop.clone());
        let path = format!("/run/netns/{ns}");
        let handle = std::thread::spawn(move || {
            setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
            let mut nl = Netlink::new().unwrap();
            while !st.load(Ordering::Relaxed) {
                let t = Instant::now();
                let n = if hops == 0 {
                    nl.route_dump(table, 249)
                        .unwrap_or_default()
                        .iter()
                        .filter(|r| in_pool(r.dst.addr))
                        .count()
                } else {
                    nl.routes_with_gateways(table)
                        .unwrap_or_default()
                        .iter()
                        .filter(|(p, gws)| in_pool(p.addr) && gws.len() >= hops)
                        .count()
                };
                {
                    let mut c = c.lock().unwrap();
                    c.0 += t.elapsed();
                    c.1 += 1;
                }
                let mut s = s.lock().unwrap();
                if s.last().map(|l| l.1) != Some(n) {
                    s.push((t, n));
                }
                drop(s);
                std::thread::sleep(every.saturating_sub(t.elapsed()));
            }
        });
        Poller {
            samples,
            cost,
            stop,
            handle: Some(handle),
        }
    }

    fn now(&self) -> usize {
        self.samples.lock().unwrap().last().map_or(0, |s| s.1)
    }

    /// The lowest count seen since `since` (the value at `since` included).
    fn min_since(&self, since: Instant) -> usize {
        let s = self.samples.lock().unwrap();
        let before = s.iter().rev().find(|x| x.0 <= since).map(|x| x.1);
        s.iter()
            .filter(|x| x.0 > since)
            .map(|x| x.1)
            .chain(before)
            .min()
            .unwrap_or(0)
    }

    /// When the count first was `want` at or after `since`.
    async fn wait(&self, since: Instant, want: usize, what: &str) -> anyhow::Result<Instant> {
        first_at(&self.samples, since, want)
            .await
            .map_err(|()| anyhow::anyhow!("{what}: {} after {LIMIT:?}, wanted {want}", self.now()))
    }

    /// Mean time of one dump.
    fn mean_cost(&self) -> Duration {
        let c = self.cost.lock().unwrap();
        c.0 / c.1.max(1)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Services of the pool with an address in their status, counted from a watch.
struct Assigned {
    samples: Arc<Mutex<Vec<(Instant, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Assigned {
    fn start(api: Api<Service>) -> Assigned {
        let samples = Arc::new(Mutex::new(vec![(Instant::now(), 0)]));
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut have: HashSet<String> = HashSet::new();
            let cfg = watcher::Config::default().labels("bench=scale");
            let mut events = watcher::watcher(api, cfg).boxed();
            while let Ok(Some(e)) = events.try_next().await {
                let assigned = |svc: &Service| {
                    svc.status
                        .as_ref()
                        .and_then(|s| s.load_balancer.as_ref())
                        .and_then(|lb| lb.ingress.as_ref())
                        .is_some_and(|i| {
                            i.iter().any(|i| {
                                i.ip.as_deref()
                                    .and_then(|ip| ip.parse().ok())
                                    .is_some_and(in_pool)
                            })
                        })
                };
                let name = |svc: &Service| svc.metadata.name.clone().unwrap_or_default();
                match e {
                    watcher::Event::Apply(svc) | watcher::Event::InitApply(svc) => {
                        if assigned(&svc) {
                            have.insert(name(&svc));
                        } else {
                            have.remove(&name(&svc));
                        }
                    }
                    watcher::Event::Delete(svc) => {
                        have.remove(&name(&svc));
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
                let mut s = s.lock().unwrap();
                if s.last().map(|l| l.1) != Some(have.len()) {
                    s.push((Instant::now(), have.len()));
                }
            }
        });
        Assigned { samples, task }
    }

    async fn wait(&self, since: Instant, want: usize) -> anyhow::Result<Instant> {
        first_at(&self.samples, since, want)
            .await
            .map_err(|()| anyhow::anyhow!("Services with an address: never {want}"))
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// CPU seconds (user + system, the reaped children's included) of a process.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..17, i.e. 11..14 after the command.
    let ticks: f64 = f.get(11..15).map_or(0.0, |v| v.iter().sum());
    ticks / 100.0
}

/// A process's memory: (peak RSS, RSS) in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
}

/// The lab's processes worth measuring: (label, pid). The benchmark's own process runs
/// fake-apiserver.
fn processes(lab: &Lab) -> Vec<(String, u32)> {
    let mut out = vec![("fake-apiserver (+bench)".to_string(), std::process::id())];
    let mut names = vec!["allocator".to_string()];
    for n in &lab.nodes {
        names.push(format!("agent-{}", n.name));
        for d in ["bird", "zebra", "bgpd"] {
            names.push(format!("{d}-{}", n.name));
        }
    }
    names.extend(["router0", "router0-zebra", "router0-bgpd"].map(String::from));
    for name in names {
        if let Some(pid) = lab.pid(&name) {
            // `ip netns exec` execs the daemon: the PID is the daemon's.
            out.push((name, pid));
        }
    }
    out
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("scale-{i}"), "labels": {"bench": "scale"},
                     "annotations": {"routelb.io/pool": "scale"}},
        "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                 "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap()
}

/// Writes an `ip -batch` script for addresses `range` and runs it on every node at once;
/// returns when every node's kernel has taken it.
fn ip_batch(lab: &Lab, range: std::ops::Range<usize>, add: bool) -> anyhow::Result<Duration> {
    let verb = if add { "add" } else { "del" };
    let script: String = range
        .map(|i| {
            format!(
                "route {verb} {}/32 dev kube-lb0 table 200 proto 249\n",
                addr(i)
            )
        })
        .collect();
    let path = lab.dir.join(format!("floor-{verb}.batch"));
    std::fs::write(&path, script)?;
    let t = Instant::now();
    let children: Vec<_> = lab
        .nodes
        .iter()
        .map(|n| {
            Command::new("ip")
                .args(["-n", &n.netns, "-batch"])
                .arg(&path)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut c in children {
        anyhow::ensure!(c.wait()?.success(), "ip -batch failed");
    }
    Ok(t.elapsed())
}

fn secs(d: Duration) -> String {
    format!("{:>7.2} s", d.as_secs_f64())
}

fn metric_sum(lab: &Lab, name: &str) -> f64 {
    (0..lab.nodes.len())
        .filter_map(|i| lab::metric(&lab.agent_metrics(i), name, &[]))
        .sum()
}

fn requests_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let mut out: Vec<(u64, String)> = after
        .iter()
        .filter(|(k, _)| !k.starts_with("WATCH"))
        .map(|(k, v)| (v - before.get(k).copied().unwrap_or(0), k.clone()))
        .filter(|(d, _)| *d > 0)
        .collect();
    out.sort_by(|a, b| b.cmp(a));
    out.iter()
        .take(8)
        .map(|(d, k)| format!("{k} {d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Args {
    services: usize,
    delete: usize,
    daemons: Vec<Kind>,
    modes: Vec<&'static str>,
    poll: Duration,
}

fn args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let services = get("--services")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Args {
        services,
        delete: get("--delete")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000)
            .min(services),
        daemons: match get("--daemon").as_deref() {
            Some("bird") => vec![Kind::Bird],
            Some("frr") => vec![Kind::Frr],
            _ => vec![Kind::Bird, Kind::Frr],
        },
        modes: match get("--vip-mode").as_deref() {
            Some("local-route") => vec!["local-route"],
            Some("both") => vec!["address", "local-route"],
            _ => vec!["address"],
        },
        poll: Duration::from_millis(get("--poll-ms").and_then(|v| v.parse().ok()).unwrap_or(100)),
    }
}

async fn run(kind: Kind, mode: &str, a: &Args) -> anyhow::Result<()> {
    let n = a.services;
    let mut opts = Options::for_benches(kind, &[kind; 3]);
    opts.agent_args = vec!["--vip-mode".into(), mode.into()];
    let mut lab = Lab::up(opts).await?;
    let label = format!("{} nodes, --vip-mode {mode}", kind.name());
    println!("\n== {label}: {n} Services, 3 nodes, 1 router ==");
    lab.apply_routelb(
        "AddressPool",
        "addresspools",
        "scale",
        json!({"addresses": [POOL], "autoAssign": false}),
    )
    .await?;
    // The nodes' configurations take the pool (FRR filters by the pools' prefixes and
    // applies new prefix-list entries after bgpd's 5 s delay).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let all = lab.nodes.iter().all(|n| {
            let conf = match kind {
                Kind::Bird => n.dir.join("bird.conf"),
                Kind::Frr => n.dir.join("frr/frr.conf"),
            };
            std::fs::read_to_string(conf).is_ok_and(|c| c.contains("198.18.0.0/17"))
        });
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if kind == Kind::Frr {
        tokio::time::sleep(Duration::from_secs(7)).await;
    }
    let hops = lab.nodes.len();
    let router = Poller::start(&lab.routers[0].netns, 254, hops, a.poll);
    let nodes: Vec<Poller> = lab
        .nodes
        .iter()
        .map(|nd| Poller::start(&nd.netns, 200, 0, a.poll))
        .collect();

    // The floor: the routing daemons alone.
    for i in 0..lab.nodes.len() {
        lab.stop_agent(i);
    }
    let t0 = Instant::now();
    let kernel = ip_batch(&lab, 0..n, true)?;
    let floor_add = router.wait(t0, n, "floor: routes at the router").await? - t0;
    let t1 = Instant::now();
    ip_batch(&lab, 0..a.delete, false)?;
    let floor_del = router
        .wait(t1, n - a.delete, "floor: deleted routes gone at the router")
        .await?
        - t1;
    let t2 = Instant::now();
    ip_batch(&lab, a.delete..n, false)?;
    router.wait(t2, 0, "floor: all routes gone").await?;
    for p in &nodes {
        p.wait(t2, 0, "floor: node tables empty").await?;
    }
    println!(
        "floor (ip -batch on 3 nodes): {n} routes at the router in {} (kernel took them in {}), {} deleted gone in {}",
        secs(floor_add),
        secs(kernel),
        a.delete,
        secs(floor_del)
    );
    for i in 0..lab.nodes.len() {
        lab.start_agent(i)?;
    }
    for i in 0..lab.nodes.len() {
        lab.wait_agent_ready(i).await?;
    }
    lab.wait_sessions(lab.nodes.len(), Duration::from_secs(60))
        .await?;

    // Mass creation.
    let assigned = Assigned::start(lab.services());
    let procs = processes(&lab);
    let cpu0: Vec<f64> = procs.iter().map(|(_, p)| cpu(*p)).collect();
    let req0 = lab.api.requests();
    let (rec0, chg0) = (
        metric_sum(&lab, "routelb_dataplane_reconciles_total"),
        metric_sum(&lab, "routelb_dataplane_changes_total"),
    );
    let t0 = Instant::now();
    let api = lab.services();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &service(i)).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    let created = t0.elapsed();
    let all_assigned = assigned.wait(t0, n).await? - t0;
    let mut node_full = Duration::ZERO;
    for (i, p) in nodes.iter().enumerate() {
        let t = p.wait(t0, n, &format!("node-{} table 200", i + 1)).await? - t0;
        node_full = node_full.max(t);
    }
    let router_full = router.wait(t0, n, "routes at the router").await? - t0;
    let cpu1: Vec<f64> = procs.iter().map(|(_, p)| cpu(*p)).collect();
    let req1 = lab.api.requests();
    let (rec1, chg1) = (
        metric_sum(&lab, "routelb_dataplane_reconciles_total"),
        metric_sum(&lab, "routelb_dataplane_changes_total"),
    );
    println!("create {n} Services ({IN_FLIGHT} requests in flight):");
    println!(
        "  API took all      {}  ({:.0} Services/s)",
        secs(created),
        n as f64 / created.as_secs_f64()
    );
    println!("  all assigned      {}", secs(all_assigned));
    println!(
        "  all in table 200  {}  (slowest of 3 nodes)",
        secs(node_full)
    );
    println!(
        "  all at the router {}  = {:.2}x the floor ({:.0} Services/s end to end); {:.2}x the API's time plus the floor",
        secs(router_full),
        router_full.as_secs_f64() / floor_add.as_secs_f64(),
        n as f64 / router_full.as_secs_f64(),
        router_full.as_secs_f64() / (created + floor_add).as_secs_f64()
    );
    println!(
        "  where the time goes: API {} | allocator {} | agents {} | daemons and router {}",
        secs(created),
        secs(all_assigned.saturating_sub(created)),
        secs(node_full.saturating_sub(all_assigned)),
        secs(router_full.saturating_sub(node_full))
    );
    println!("  API requests: {}", requests_delta(&req0, &req1));
    println!(
        "  agents: {:.0} reconciles, {:.0} kernel changes (3 nodes)",
        rec1 - rec0,
        chg1 - chg0
    );
    println!("  CPU seconds during the creation, peak RSS:");
    for (((name, pid), c0), c1) in procs.iter().zip(&cpu0).zip(&cpu1) {
        let (peak, _) = memory(*pid);
        println!("    {name:<24} {:>6.2} s  {peak:>6.1} MiB", c1 - c0);
    }

    // Deletion.
    let t0 = Instant::now();
    futures::stream::iter(0..a.delete)
        .map(|i| {
            let api = api.clone();
            async move {
                api.delete(&format!("scale-{i}"), &DeleteParams::default())
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    let deleted = t0.elapsed();
    let gone = router
        .wait(t0, n - a.delete, "deleted routes gone at the router")
        .await?
        - t0;
    println!(
        "delete {} Services: API took them in {}, gone at the router in {} = {:.2}x the floor",
        a.delete,
        secs(deleted),
        secs(gone),
        gone.as_secs_f64() / floor_del.as_secs_f64()
    );

    // Agent restart with what is left announced.
    let left = n - a.delete;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sessions = lab.sessions()?;
    lab.start_route_monitor(0)?;
    let t0 = Instant::now();
    lab.stop_agent(0);
    let stopped = t0.elapsed();
    let t1 = Instant::now();
    lab.start_agent(0)?;
    lab.wait_agent_ready(0).await?;
    let ready = t1.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = lab.stop_route_monitor(0);
    let changes = log
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w.starts_with("198.18.")))
        .count();
    let withdrawn = log
        .lines()
        .filter(|l| l.contains("Deleted") && l.contains("198.18."))
        .count();
    let pid = lab.pid("agent-node-1").unwrap_or(0);
    let (peak, rss) = memory(pid);
    println!(
        "agent restart with {left} announced: stopped in {}, ready again {} after start; at the router {withdrawn} routes withdrawn, {changes} route changes (lowest full count {}, node-1 table 200 lowest {}); sessions kept: {}; new agent peak RSS {peak:.1} MiB (now {rss:.1})",
        secs(stopped),
        secs(ready),
        router.min_since(t0),
        nodes[0].min_since(t0),
        lab.sessions()? == sessions
    );
    println!(
        "poll cost: router dump {:.1} ms, node dump {:.1} ms (every {} ms)",
        router.mean_cost().as_secs_f64() * 1e3,
        nodes[0].mean_cost().as_secs_f64() * 1e3,
        a.poll.as_millis()
    );
    drop(assigned);
    drop(router);
    drop(nodes);
    lab.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    if std::env::args().any(|x| x == "--list") {
        return Ok(());
    }
    for kind in &a.daemons {
        for mode in &a.modes {
            run(*kind, mode, &a).await?;
        }
    }
    Ok(())
}
