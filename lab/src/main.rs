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
    Demo {
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
    },
    /// Remove namespaces and processes left by an interrupted lab.
    Down,
}

fn section(title: &str) {
    println!("\n== {title}");
}

async fn demo(
    router: &str,
    nodes: &str,
    connections: usize,
    routelb: PathBuf,
    repo: PathBuf,
) -> anyhow::Result<()> {
    let mut opts = Options::new(
        routelb.canonicalize().context("the routelb binary")?,
        repo.canonicalize()?,
    );
    opts.router = Kind::parse(router)?;
    opts.nodes = nodes
        .split(',')
        .map(Kind::parse)
        .collect::<anyhow::Result<_>>()?;
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
    section(&format!(
        "{connections} TCP connections from the client to {ip}:8080"
    ));
    for (node, n) in lab.connect(ip, connections)? {
        println!("  {node:<10} {n:>4}  {}", "#".repeat(n));
    }
    section("cleaning up");
    lab.shutdown();
    println!("done");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Demo {
            router,
            nodes,
            connections,
            routelb,
            repo,
        } => demo(&router, &nodes, connections, routelb, repo).await,
        Cmd::Down => {
            let n = lab::down()?;
            println!("removed {n} lab leftovers");
            Ok(())
        }
    }
}
