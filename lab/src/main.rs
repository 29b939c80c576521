//! `routelb-lab demo`: the README's main command. Builds the lab, creates a LoadBalancer
//! Service, shows its external address, the router's multipath route and how connections
//! spread over the nodes, then removes everything. `routelb-lab down` removes what an
//! interrupted lab left behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use lab::{Kind, Lab, Options};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The routelb lab: BIRD/FRR routers and nodes in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab, show a Service spread over three nodes by ECMP, tear it down.
    Demo(DemoArgs),
    /// Run a command in a host of the kept lab: router, node-1, node-2, node-3, client.
    Exec {
        host: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Remove a kept lab, and the namespaces and processes left by an interrupted one.
    Down,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// The router's daemon: bird or frr.
    #[arg(long, default_value = "bird")]
    router: String,
    /// The nodes' daemons, comma-separated (one per node).
    #[arg(long, default_value = "bird,bird,bird")]
    nodes: String,
    /// Connections opened from the client.
    #[arg(long, default_value_t = 60)]
    connections: usize,
    /// The routelb binary.
    #[arg(long, default_value = "target/release/routelb")]
    routelb: PathBuf,
    /// The repository (templates/, examples/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Show a local (L2) pool instead: one node answers ARP/NDP, then it dies and
    /// another takes over.
    #[arg(long)]
    l2: bool,
    /// Show cluster IPs instead: a ClusterIP Service reached by the router with
    /// ECMP, one route per address, then the service CIDR as one prefix.
    #[arg(long)]
    cluster_ip: bool,
    /// Leave the lab running afterwards (a playground for kubectl): prints the
    /// KUBECONFIG to use; `routelb-lab down` or Ctrl-C ends it.
    #[arg(long)]
    keep: bool,
}

fn section(title: &str) {
    println!("\n== {title}");
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
        router,
        nodes,
        connections,
        routelb,
        repo,
        l2,
        cluster_ip,
        keep,
    } = args;
    let (router, nodes) = (router.as_str(), nodes.as_str());
    let mut opts = Options::new(
        routelb.canonicalize().context("the routelb binary")?,
        repo.canonicalize()?,
    );
    opts.router = Kind::parse(router)?;
    opts.nodes = nodes
        .split(',')
        .map(Kind::parse)
        .collect::<anyhow::Result<_>>()?;
    opts.l2 = l2;
    section(&format!(
        "building the lab: a {} router, {} nodes ({nodes}), fake-apiserver, allocator and agents",
        router,
        opts.nodes.len()
    ));
    let started = Instant::now();
    let lab = Lab::up(opts).await?;
    println!(
        "up in {:.1} s; BGP sessions at the router: {:?}",
        started.elapsed().as_secs_f64(),
        lab.sessions()?
    );
    let lab = if l2 {
        demo_l2(lab).await?
    } else if cluster_ip {
        demo_cluster_ip(lab, connections).await?
    } else {
        demo_bgp(lab, connections).await?
    };
    if keep {
        return playground(lab).await;
    }
    section("cleaning up");
    lab.shutdown();
    println!("done");
    Ok(())
}

/// Leaves the lab up until SIGINT or SIGTERM (`scripts/lab down`), then removes it.
async fn playground(lab: Lab) -> anyhow::Result<()> {
    // Ready for `down` before saying how to call it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    lab.keep()?;
    section("the lab stays up: try it with kubectl (scripts/lab down ends it)");
    println!("export KUBECONFIG={}", lab.kubeconfig.display());
    println!("kubectl get svc,addresspools");
    println!("kubectl create service loadbalancer web --tcp=80:8080");
    println!("kubectl get svc web -w");
    println!("sudo scripts/lab exec router ip route        # the router's ECMP routes");
    println!("sudo scripts/lab exec node-1 ip route show table 200");
    println!("sudo scripts/lab down");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    section("cleaning up");
    lab.shutdown();
    println!("done");
    Ok(())
}

async fn demo_bgp(lab: Lab, connections: usize) -> anyhow::Result<Lab> {
    section("kubectl create service (type LoadBalancer, externalTrafficPolicy: Cluster)");
    let t = Instant::now();
    lab.create_service("demo", false).await?;
    let ip = lab.external_ip("demo", Duration::from_secs(20)).await?;
    println!(
        "Service default/demo got external IP {ip} after {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let all = lab.node_addrs(0..lab.nodes.len());
    let took = lab
        .wait_nexthops(0, ip, &all, Duration::from_secs(30))
        .await?;
    println!(
        "the router has a multipath route over {} nodes {:.0} ms later",
        all.len(),
        took.as_secs_f64() * 1e3
    );
    section(&format!("ip route show {ip}  (in the router's namespace)"));
    print!("{}", lab.route(0, ip));
    tally(&lab, ip, connections)?;
    section("routelb status svc demo  (the chain, as the cluster sees it)");
    // The nodes report what they announce within their report interval (5 s).
    let start = Instant::now();
    let (_, out) = loop {
        let (code, out) = lab.routelb_status(&["svc", "demo"])?;
        if code == 0 || start.elapsed() > Duration::from_secs(15) {
            break (code, out);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    print!("{out}");
    Ok(lab)
}

/// Opens `connections` to `ip:8080` from the client and prints how many each node answered.
fn tally(lab: &Lab, ip: std::net::IpAddr, connections: usize) -> anyhow::Result<()> {
    section(&format!(
        "{connections} TCP connections from the client to {ip}:8080"
    ));
    for (node, n) in lab.connect(ip, connections)? {
        println!("  {node:<10} {n:>4}  {}", "#".repeat(n));
    }
    Ok(())
}

/// Prints the first node's table 200 as `ip route` shows it.
fn show_node_table(lab: &Lab) {
    section(&format!(
        "ip route show table 200  (on {})",
        lab.nodes[0].name
    ));
    print!("{}", lab.node_routes(0, 200));
}

/// Polls `check` every 20 ms for up to `limit`.
async fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = check() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn demo_cluster_ip(lab: Lab, connections: usize) -> anyhow::Result<Lab> {
    let wait = Duration::from_secs(30);
    let cidr = "203.0.113.0/29";
    section(&format!(
        "RouterConfig spec.advertise.clusterIPs: {{enabled: true, cidrs: [{cidr}]}}"
    ));
    lab.set_advertise(serde_json::json!({"clusterIPs": {"enabled": true, "cidrs": [cidr]}}))
        .await?;
    let ip: std::net::IpAddr = "203.0.113.2".parse()?;
    section(&format!(
        "kubectl create service clusterip internal (clusterIP {ip})"
    ));
    let t = Instant::now();
    lab.create_cluster_ip_service("internal", ip, false).await?;
    let all = lab.node_addrs(0..lab.nodes.len());
    lab.wait_nexthops(0, ip, &all, wait).await?;
    println!(
        "the router has a multipath route over {} nodes {:.0} ms later",
        all.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    show_node_table(&lab);
    section(&format!("ip route show {ip}  (in the router's namespace)"));
    print!("{}", lab.route(0, ip));
    tally(&lab, ip, connections)?;
    section("clusterIPs.aggregate: true (the service CIDR as one prefix)");
    let t = Instant::now();
    lab.set_advertise(
        serde_json::json!({"clusterIPs": {"enabled": true, "aggregate": true, "cidrs": [cidr]}}),
    )
    .await?;
    lab.wait_nexthops_to(0, cidr, &all, wait).await?;
    lab.wait_nexthops(0, ip, &Default::default(), wait).await?;
    println!(
        "the router routes {cidr} over {} nodes, and no longer {ip} alone, {:.0} ms later",
        all.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    show_node_table(&lab);
    section(&format!(
        "ip route show {cidr}  (in the router's namespace)"
    ));
    print!("{}", lab.route_to(0, cidr));
    println!("(kube-proxy takes the packets for cluster IPs in use; the lab has none)");
    Ok(lab)
}

async fn demo_l2(mut lab: Lab) -> anyhow::Result<Lab> {
    let wait = Duration::from_secs(30);
    section("a Service from the local pool `lan` (mode: local), IPv4 and IPv6");
    let t = Instant::now();
    lab.create_service_with(
        "demo-l2",
        serde_json::json!({"routelb.io/pool": "lan"}),
        serde_json::json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
    )
    .await?;
    let ips = lab.external_ips("demo-l2", 2, wait).await?;
    let assigned = t.elapsed();
    let (v4, v6) = (ips[0], ips[1]);
    let h = wait_for(wait, || lab.lan_answer(v4))
        .await
        .context("no node answers the IPv4 address")?;
    println!(
        "external IPs {v4} and {v6} after {:.0} ms; {v4} answered on the LAN by {} ({}) {:.0} ms after that",
        assigned.as_secs_f64() * 1e3,
        lab.nodes[h].name,
        lab.node_mac(h)?,
        (t.elapsed() - assigned).as_secs_f64() * 1e3
    );
    let h6 = wait_for(wait, || lab.lan_answer(v6))
        .await
        .context("no node answers the IPv6 address")?;
    println!("{v6} answered by {} (NDP)", lab.nodes[h6].name);
    section(&format!("ip addr show eth0  (on {})", lab.nodes[h].name));
    print!(
        "{}",
        lab.exec(&lab.nodes[h].netns, &["ip", "addr", "show", "eth0"])?
    );
    section("ip neigh  (on the LAN client)");
    print!("{}", lab.exec(&lab.lan_netns, &["ip", "neigh"])?);
    let old = lab.nodes[h].name.clone();
    section(&format!(
        "{old} dies (its agent killed, its link down) while the LAN client connects every 10 ms"
    ));
    let l = lab.client_loop_from(
        &lab.lan_netns.clone(),
        v4,
        Duration::from_millis(10),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let died = Instant::now();
    lab.kill(&format!("agent-{old}"));
    lab.node_link(h, false)?;
    let (took, failed) = wait_for(wait, || l.recovery(died, &old))
        .await
        .context("no node took over")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = l.stop();
    let new = wait_for(wait, || lab.lan_answer(v4))
        .await
        .context("no node answers after the takeover")?;
    println!(
        "{} took over: the client connects again {:.0} ms after {old} died ({failed} connection attempts of 100 ms failed meanwhile)",
        lab.nodes[new].name,
        took.as_secs_f64() * 1e3
    );
    for (node, n) in tally {
        println!("  {node:<20} {n:>4}");
    }
    Ok(lab)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Demo(args) => demo(args).await,
        Cmd::Exec { host, cmd } => std::process::exit(lab::exec_in(&host, &cmd)?),
        Cmd::Down => {
            let n = lab::down()?;
            println!("removed {n} lab leftovers");
            Ok(())
        }
    }
}
