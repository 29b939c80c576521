//! fake-apiserver benchmark, through the real kube client over loopback HTTP:
//! 50k Services stored and listed with paging (time, heap), and watch fan-out to 10
//! watchers in events/s, with one watcher as the baseline.
//!
//! Run: `cargo bench -p fake-apiserver` (`-- --services N` to change the 50k).

use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[path = "../../benches/support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("app-{}", i % 100)}},
        "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .expect("valid Service")
}

async fn list_all(api: &Api<Service>, page: Option<u32>) -> usize {
    let mut lp = ListParams::default();
    if let Some(p) = page {
        lp = lp.limit(p);
    }
    let mut n = 0;
    loop {
        let list = api.list(&lp).await.expect("list");
        n += list.items.len();
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return n,
        }
    }
}

/// Starts `watchers` watches from `rv` and returns when each has seen `events` events.
async fn fan_out(api: &Api<ConfigMap>, rv: &str, watchers: usize, events: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let api = api.clone();
        let rv = rv.to_string();
        tasks.push(tokio::spawn(async move {
            let mut stream = api
                .watch(&WatchParams::default(), &rv)
                .await
                .expect("watch")
                .boxed();
            let mut seen = 0;
            while seen < events {
                match stream.try_next().await.expect("watch stream") {
                    Some(WatchEvent::Added(_) | WatchEvent::Modified(_)) => seen += 1,
                    Some(_) => {}
                    None => panic!("watch ended after {seen} events"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("watcher");
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let services: usize = args
        .iter()
        .position(|a| a == "--services")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let base = counting_alloc::reset_peak();
    let server = FakeApiServer::start_on(
        "127.0.0.1:0".parse().unwrap(),
        Options {
            history_limit: 200_000,
            ..Options::default()
        },
    )
    .await
    .expect("start");
    let client = server.client().expect("client");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");

    // Store N Services with 16 concurrent writers.
    let start = Instant::now();
    futures::stream::iter(0..services)
        .for_each_concurrent(16, |i| {
            let svcs = svcs.clone();
            async move {
                svcs.create(&PostParams::default(), &service(i))
                    .await
                    .expect("create");
            }
        })
        .await;
    let took = start.elapsed();
    let heap = counting_alloc::live() - base;
    println!(
        "store {services} Services: {:.2} s, {:.0} creates/s, heap {:.1} MiB ({} B/Service incl. history), peak {:.1} MiB",
        took.as_secs_f64(),
        services as f64 / took.as_secs_f64(),
        mib(heap),
        heap / services,
        mib(counting_alloc::peak() - base)
    );

    let start = Instant::now();
    let n = list_all(&svcs, Some(500)).await;
    let paged = start.elapsed();
    assert_eq!(n, services);
    let start = Instant::now();
    let n = list_all(&svcs, None).await;
    let whole = start.elapsed();
    assert_eq!(n, services);
    println!(
        "list {services} Services: paged by 500 {:.0} ms ({} requests), unpaged {:.0} ms; paged/unpaged {:.2}",
        paged.as_secs_f64() * 1e3,
        services.div_ceil(500),
        whole.as_secs_f64() * 1e3,
        paged.as_secs_f64() / whole.as_secs_f64()
    );
    let selected = svcs
        .list(&ListParams::default().labels("app=app-7"))
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(
        selected,
        services
            .div_ceil(100)
            .min(services / 100 + usize::from(services % 100 > 7))
    );

    // Fan-out: record EVENTS changes, then replay them to 1 and to 10 watchers.
    const EVENTS: usize = 20_000;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let start = Instant::now();
    futures::stream::iter(0..EVENTS)
        .for_each_concurrent(16, |i| {
            let cms = cms.clone();
            async move {
                let name = format!("cm-{}", i % 1000);
                let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}});
                cms.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&patch)).await.expect("apply");
            }
        })
        .await;
    let writes = start.elapsed();
    println!(
        "write {EVENTS} changes: {:.0} writes/s",
        EVENTS as f64 / writes.as_secs_f64()
    );
    let one = fan_out(&cms, &rv, 1, EVENTS).await;
    let ten = fan_out(&cms, &rv, 10, EVENTS).await;
    let one_rate = EVENTS as f64 / one.as_secs_f64();
    let ten_rate = (10 * EVENTS) as f64 / ten.as_secs_f64();
    println!(
        "watch fan-out, 1 watcher:   {one_rate:>10.0} events/s ({:.0} ms)",
        one.as_secs_f64() * 1e3
    );
    println!(
        "watch fan-out, 10 watchers: {ten_rate:>10.0} events/s delivered in total ({:.0} ms); {:.1}x the single watcher; target >= 20000: {}",
        ten.as_secs_f64() * 1e3,
        ten_rate / one_rate,
        if ten_rate >= 20_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    server.stop().await;
}
