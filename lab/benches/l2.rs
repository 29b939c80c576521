//! L2 failover on the lab (root): a local pool's address answered by one node, taken
//! over when that node dies (agent SIGKILLed, link down) and moved when it is drained
//! (cordoned), p50/p99 over `--takeovers N` (default 20) of each, timed from a LAN
//! client connecting every 10 ms with 100 ms connect timeouts. Also: from the Service's
//! creation to the first connection through the elected node, the Lease writes per
//! node per second at the defaults, and the floor of a takeover by hand (the address
//! moved with `ip addr` and one gratuitous ARP sent, no routelb): the network's share.
//!
//! Run: `cargo bench -p routelb-lab --bench l2` (`-- --takeovers N`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use lab::{Kind, Lab, Options};
use routelb::kernel::arp::{Wire, gratuitous_arp};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(10);
const TIMEOUT: Duration = Duration::from_millis(100);

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > WAIT {
            anyhow::bail!("gave up after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cordon(lab: &Lab, node: &str, on: bool) -> anyhow::Result<()> {
    Api::<Node>::all(lab.client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": on}})),
        )
        .await?;
    Ok(())
}

/// One takeover: `kill` makes the holder go; returns (time to recovery, failures) and
/// then `restore` brings it back.
async fn takeover(lab: &mut Lab, addr: IpAddr, dead: bool) -> anyhow::Result<(Duration, usize)> {
    let h = wait_for(|| lab.lan_answer(addr)).await?;
    let old = lab.nodes[h].name.clone();
    let l = lab.client_loop_from(&lab.lan_netns.clone(), addr, EVERY, TIMEOUT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    if dead {
        lab.kill(&format!("agent-{old}"));
        lab.node_link(h, false)?;
    } else {
        cordon(lab, &old, true).await?;
    }
    let r = wait_for(|| l.recovery(t, &old)).await?;
    l.stop();
    if dead {
        lab.node_link(h, true)?;
        lab.start_agent(h)?;
        lab.wait_agent_ready(h).await?;
    } else {
        cordon(lab, &old, false).await?;
    }
    // Let the returning node publish its record before the next round.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(r)
}

/// The network's floor: `addr` moved from node 0 to node 1 by hand, one gratuitous ARP
/// from node 1, until the LAN client connects through node 1.
async fn by_hand(lab: &Lab, addr: Ipv4Addr) -> anyhow::Result<Duration> {
    let a = format!("{addr}/32");
    lab.exec(
        &lab.nodes[0].netns,
        &["ip", "addr", "add", &a, "dev", "eth0"],
    )?;
    let ip = IpAddr::V4(addr);
    wait_for(|| (lab.lan_answer(ip) == Some(0)).then_some(())).await?;
    let l = lab.client_loop_from(&lab.lan_netns.clone(), ip, EVERY, TIMEOUT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = lab.nodes[0].name.clone();
    let link = lab.exec(&lab.nodes[1].netns, &["ip", "-o", "link", "show", "eth0"])?;
    let index: u32 = link.split(':').next().unwrap_or("0").trim().parse()?;
    let mac: Vec<u8> = lab
        .node_mac(1)?
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    let mac: [u8; 6] = mac.try_into().map_err(|_| anyhow::anyhow!("MAC"))?;
    let t = Instant::now();
    lab.exec(
        &lab.nodes[0].netns,
        &["ip", "addr", "del", &a, "dev", "eth0"],
    )?;
    lab.exec(
        &lab.nodes[1].netns,
        &["ip", "addr", "add", &a, "dev", "eth0"],
    )?;
    lab::in_netns(&lab.nodes[1].netns, move || {
        let w = Wire::open(index)?;
        w.send(&gratuitous_arp(mac, addr, false))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("GARP thread"))???;
    let (took, _) = wait_for(|| l.recovery(t, &old)).await?;
    l.stop();
    lab.exec(
        &lab.nodes[1].netns,
        &["ip", "addr", "del", &a, "dev", "eth0"],
    )?;
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--takeovers")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut o = Options::for_benches(Kind::Bird, &[Kind::Bird; 3]);
    o.l2 = true;
    let mut lab = Lab::up(o).await?;

    // Creation to first answer (allocation, election, address, GARP), and the part
    // after the bench saw the address in the Service's status, over five Services.
    let mut first = Vec::new();
    let mut after_seen = Vec::new();
    for i in 0..5 {
        let name = format!("l2-{i}");
        let t = Instant::now();
        lab.create_service_with(&name, json!({"routelb.io/pool": "lan"}), json!({}))
            .await?;
        let ip = lab.external_ip(&name, WAIT).await?;
        let seen = Instant::now();
        wait_for(|| {
            lab.connect_from(&lab.lan_netns, ip, 1)
                .ok()
                .filter(|m| m.keys().all(|k| k.starts_with("node-")))
        })
        .await?;
        first.push(t.elapsed());
        after_seen.push(seen.elapsed());
    }
    let addr = lab.external_ip("l2-0", WAIT).await?;

    // API writes per node per second at the defaults.
    let writes = |lab: &Lab| -> f64 {
        (0..lab.nodes.len())
            .filter_map(|i| {
                lab::metric(&lab.agent_metrics(i), "routelb_l2_lease_writes_total", &[])
            })
            .sum()
    };
    let before = writes(&lab);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let per_node = (writes(&lab) - before) / t.elapsed().as_secs_f64() / lab.nodes.len() as f64;

    let mut dead = Vec::new();
    let mut dead_failed = 0;
    for _ in 0..n {
        let (d, f) = takeover(&mut lab, addr, true).await?;
        dead.push(d);
        dead_failed += f;
    }
    let mut drained = Vec::new();
    let mut drain_failed = 0;
    for _ in 0..n {
        let (d, f) = takeover(&mut lab, addr, false).await?;
        drained.push(d);
        drain_failed += f;
    }
    let mut floor: Vec<Duration> = Vec::new();
    for _ in 0..5 {
        floor.push(by_hand(&lab, Ipv4Addr::new(192, 0, 2, 230)).await?);
    }
    lab.shutdown();

    let lease = Duration::from_millis(1500);
    let floor50 = pct(&mut floor, 0.5);
    println!(
        "L2 failover, 3 BIRD nodes, defaults (lease 1.5 s, renew 0.5 s), LAN client every 10 ms, 100 ms connect timeout"
    );
    println!(
        "  Service created to first answer p50 {:7.1} ms  max {:7.1} ms  (5 Services; after the address showed in its status: p50 {:.1} ms)",
        ms(pct(&mut first, 0.5)),
        ms(pct(&mut first, 1.0)),
        ms(pct(&mut after_seen, 0.5))
    );
    println!(
        "  dead node (kill -9, link down) p50 {:7.1} ms  p99 {:7.1} ms  ({n} takeovers, {dead_failed} failed connection attempts in all)",
        ms(pct(&mut dead, 0.5)),
        ms(pct(&mut dead, 0.99))
    );
    println!(
        "  drained node (cordon)        p50 {:7.1} ms  p99 {:7.1} ms  ({n} moves, {drain_failed} failed connection attempts in all)",
        ms(pct(&mut drained, 0.5)),
        ms(pct(&mut drained, 0.99))
    );
    println!(
        "  floor: moved by hand + one gratuitous ARP  p50 {:7.1} ms",
        ms(floor50)
    );
    println!(
        "  ratio dead-node p50 / lease duration: {:.2} (detection is the lease by design)",
        pct(&mut dead, 0.5).as_secs_f64() / lease.as_secs_f64()
    );
    println!("  Lease writes per node per second at the defaults: {per_node:.2}");
    println!(
        "target: traffic resumes within 2 s of the node's death (MetalLB 'a few seconds', Cilium 10-20 s, PureLB 2.2-6.7 s)"
    );
    Ok(())
}
