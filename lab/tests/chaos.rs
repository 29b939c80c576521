//! Chaos on the lab: random crashes of allocators, agents and routing daemons, dropped
//! watches, API errors and outages while Services come and go. Checked continuously: no
//! address is ever shown on two Services. Checked at the end: every Service has one
//! address of its own, every node routes exactly the Services' addresses, the router
//! spreads each over every node.
//!
//! Repeatable: `ROUTELB_CHAOS_SEED` picks the run (printed), `ROUTELB_CHAOS_SECONDS`
//! its length (default 40).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use lab::{Kind, Lab, Options};

/// xorshift64*: enough randomness for picking actions, and repeatable by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_every_address_unique_and_every_node_announcing_what_it_should() {
    let seed = env_u64("ROUTELB_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    let seconds = env_u64("ROUTELB_CHAOS_SECONDS").unwrap_or(40);
    eprintln!("chaos: ROUTELB_CHAOS_SEED={seed} ROUTELB_CHAOS_SECONDS={seconds}");
    let mut rng = Rng(seed);
    let opts = Options::for_tests(Kind::Bird, &[Kind::Bird, Kind::Frr, Kind::Bird]);
    let mut lab = Lab::up(opts).await.expect("the lab comes up");
    lab.start_allocator_named("allocator-2", "lab-2").unwrap();

    // Every change of every Service, checked as it happens.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let api: Api<Service> = Api::all(lab.client.clone());
    let checker = tokio::spawn(async move {
        let mut shown: BTreeMap<String, Service> = BTreeMap::new();
        let mut seen = Vec::new();
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                _ = stopped.changed() => break,
            };
            let Some(Ok(event)) = event else { continue };
            let key = |s: &Service| {
                format!(
                    "{}/{}",
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default()
                )
            };
            match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    shown.insert(key(&s), s);
                }
                watcher::Event::Delete(s) => {
                    shown.remove(&key(&s));
                }
                _ => continue,
            }
            seen.extend(routelb_core::service::shown_twice(shown.values()));
        }
        seen
    });

    let mut alive: BTreeSet<String> = BTreeSet::new();
    let mut created = 0usize;
    let mut actions: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut next_chaos = Instant::now() + Duration::from_secs(2);
    while start.elapsed() < Duration::from_secs(seconds) {
        // Services come and go (around ten alive).
        if alive.len() < 6 || (alive.len() < 14 && rng.below(10) < 6) {
            let name = format!("churn-{created}");
            created += 1;
            if lab.create_service(&name, false).await.is_ok() {
                alive.insert(name);
            }
        } else {
            let victim = alive
                .iter()
                .nth(rng.below(alive.len() as u64) as usize)
                .cloned();
            if let Some(v) = victim
                && lab
                    .services()
                    .delete(&v, &DeleteParams::default())
                    .await
                    .is_ok()
            {
                alive.remove(&v);
            }
        }
        if Instant::now() >= next_chaos {
            next_chaos = Instant::now() + Duration::from_millis(1000 + rng.below(2000));
            let node = rng.below(3) as usize;
            let action = match rng.below(6) {
                0 => {
                    // Crash whichever allocator leads, and bring it back.
                    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
                        Api::namespaced(lab.client.clone(), "routelb-system");
                    let holder = leases
                        .get_opt("routelb-allocator")
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec?.holder_identity);
                    let (proc, id) = if holder.as_deref() == Some("lab-2") {
                        ("allocator-2", "lab-2")
                    } else {
                        ("allocator", "lab")
                    };
                    lab.kill(proc);
                    lab.start_allocator_named(proc, id).unwrap();
                    format!("kill -9 the leading allocator ({id})")
                }
                1 => {
                    let name = lab.nodes[node].name.clone();
                    lab.kill(&format!("agent-{name}"));
                    lab.start_agent(node).unwrap();
                    format!("kill -9 agent on {name}")
                }
                2 => {
                    let name = lab.nodes[node].name.clone();
                    lab.kill_daemon(node);
                    lab.start_daemon(node).unwrap();
                    format!("kill -9 routing daemon on {name}")
                }
                3 => {
                    lab.api.faults().close_watches();
                    "drop every watch".to_string()
                }
                4 => {
                    lab.api.faults().fail_next(30, 500);
                    "30 API errors".to_string()
                }
                _ => {
                    lab.api.faults().go_offline(Duration::from_secs(2));
                    "API server offline 2 s".to_string()
                }
            };
            actions.push(format!("{:.1}s {action}", start.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "chaos: {} actions, {created} Services created, {} alive at the end:\n  {}",
        actions.len(),
        alive.len(),
        actions.join("\n  ")
    );

    // The end state: one address of its own per Service, announced by every node.
    let services = lab.services();
    let limit = Instant::now() + Duration::from_secs(90);
    let mut last;
    let (mut unrouted, mut unassigned);
    loop {
        (unrouted, unassigned) = (None, None);
        let converged = async {
            let list = services.list(&Default::default()).await.ok()?;
            let names: BTreeSet<String> = list
                .items
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect();
            if names != alive {
                return Some(Err(format!("Services {names:?}, expected {alive:?}")));
            }
            let mut addresses: BTreeSet<IpAddr> = BTreeSet::new();
            for s in &list.items {
                let ips = routelb_core::service::ingress_ips(s);
                if ips.len() != 1 || !addresses.insert(ips[0]) {
                    unassigned = s.metadata.name.clone();
                    return Some(Err(format!("{:?} shows {ips:?}", s.metadata.name)));
                }
            }
            for i in 0..lab.nodes.len() {
                let routed: BTreeSet<IpAddr> = lab
                    .node_routes(i, 200)
                    .lines()
                    .filter(|l| l.contains("dev kube-lb0"))
                    .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                    .collect();
                if routed != addresses {
                    return Some(Err(format!(
                        "{} routes {routed:?}, the Services have {addresses:?}",
                        lab.nodes[i].name
                    )));
                }
            }
            let all = lab.node_addrs(0..lab.nodes.len());
            for a in &addresses {
                if lab.nexthops(0, *a) != all {
                    unrouted = Some(*a);
                    return Some(Err(format!(
                        "the router's route to {a}: {}",
                        lab.route(0, *a)
                    )));
                }
            }
            Some(Ok(()))
        }
        .await;
        match converged {
            Some(Ok(())) => break,
            Some(Err(why)) => last = why,
            None => last = "the API server does not answer".into(),
        }
        assert!(
            Instant::now() < limit,
            "no convergence after the chaos (seed {seed}): {last}\n{}{}",
            unrouted.map(|a| lab.explain(a)).unwrap_or_default(),
            unassigned
                .map(|name| allocator_logs(&lab, &name))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.send_replace(true);
    let seen = checker.await.unwrap();
    assert!(
        seen.is_empty(),
        "an address was on two Services during the chaos (seed {seed}): {seen:?}"
    );
}

/// What the allocators logged about a Service, their leadership and their troubles.
fn allocator_logs(lab: &Lab, service: &str) -> String {
    ["allocator", "allocator-2"]
        .iter()
        .map(|name| {
            let log = lab.allocator_log(name);
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains(service)
                        || l.contains("leader")
                        || l.contains("WARN")
                        || l.contains("ERROR")
                })
                .collect();
            format!(
                "== {name}.log (of {} lines):\n{}\n",
                log.lines().count(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        })
        .collect()
}
