//! Allocator benchmark against fake-apiserver: 10,000 Services created until all have
//! addresses (Services/s), where the time goes (the pure core vs API writes), restart-to-
//! ready with 10,000 existing Services, and the allocator process's peak memory.
//!
//! The allocator runs as the real `routelb allocator` process (release build), so its
//! peak RSS is its own. Run: `cargo bench --bench allocator` (`-- --services N`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Options};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use routelb_core::allocation::{Core, Settings};
use routelb_core::crd::{AddressPool, AddressPoolSpec};
use serde_json::json;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
        "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap()
}

fn start_allocator(kubeconfig: &str, health: u16, id: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_routelb"))
            .args([
                "--kubeconfig",
                kubeconfig,
                "allocator",
                "--identity",
                id,
                "--lease-duration",
                "3",
                "--health-addr",
                &format!("127.0.0.1:{health}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start routelb allocator"),
    )
}

async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.1 200") && out.contains("leader")
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn count_assigned(api: &Api<Service>) -> usize {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|s| !routelb_core::service::ingress_ips(s).is_empty())
        .count()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--services")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let server = FakeApiServer::start_on("127.0.0.1:0".parse().unwrap(), Options::default())
        .await
        .unwrap();
    let client = server.client().unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in routelb_core::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "routelb-system"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let spec = AddressPoolSpec {
        addresses: vec!["10.0.0.0/16".into()],
        ..Default::default()
    };
    Api::<AddressPool>::all(client.clone())
        .create(
            &PostParams::default(),
            &AddressPool::new("bench", spec.clone()),
        )
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("routelb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let kc = kubeconfig.to_str().unwrap().to_string();

    let health = free_port();
    let first = start_allocator(&kc, health, "bench-1");
    while !ready(health).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");

    // Baseline in the same run: how fast the API takes the creates alone.
    let start = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let svcs = svcs.clone();
            async move {
                svcs.create(&PostParams::default(), &service(i))
                    .await
                    .unwrap();
            }
        })
        .await;
    let created = start.elapsed();
    while count_assigned(&svcs).await < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let assigned = start.elapsed();
    println!(
        "{n} Services: created in {:.2} s ({:.0}/s, the API's pace, baseline)",
        created.as_secs_f64(),
        n as f64 / created.as_secs_f64()
    );
    println!(
        "                all assigned after {:.2} s: {:.0} Services/s (target >= 1000); {:.2}x the create pace",
        assigned.as_secs_f64(),
        n as f64 / assigned.as_secs_f64(),
        (n as f64 / assigned.as_secs_f64()) / (n as f64 / created.as_secs_f64())
    );

    // Where the time goes: the pure core on the same Services, no I/O.
    let objects: Vec<Arc<Service>> = svcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let fresh: Vec<Arc<Service>> = (0..n).map(|i| Arc::new(service(i))).collect();
    let pool = Arc::new(AddressPool::new("bench", spec));
    let t = Instant::now();
    let mut core = Core::new(Settings::default());
    core.restore(&[], std::slice::from_ref(&pool), &[]);
    let mut effects = 0;
    for s in &fresh {
        effects += core.service_applied(s.clone()).len();
    }
    let core_alloc = t.elapsed();
    let t = Instant::now();
    let mut restored = Core::new(Settings::default());
    restored.restore(&objects, &[pool], &[]);
    let core_restore = t.elapsed();
    println!(
        "where the time goes: core decisions {:.0} ms ({:.1}% of the total; {effects} effects), the rest is API writes: \
         {} Service writes (status + annotation) and {n} Events",
        core_alloc.as_secs_f64() * 1e3,
        100.0 * core_alloc.as_secs_f64() / assigned.as_secs_f64(),
        2 * n,
    );
    let mut first = first;
    let pid = first.0.id();
    println!(
        "allocator peak RSS after {n} Services: {:.1} MiB",
        peak_rss_mib(pid)
    );

    // A rolling restart: SIGTERM (the Lease is released), then a new process.
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    first.0.wait().unwrap();
    let health = free_port();
    let start = Instant::now();
    let mut second = start_allocator(&kc, health, "bench-2");
    while !ready(health).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restart = start.elapsed();
    println!(
        "restart to ready (graceful, {n} existing Services): {:.2} s, of which the core's restore {:.0} ms (target < 5 s)",
        restart.as_secs_f64(),
        core_restore.as_secs_f64() * 1e3
    );
    println!(
        "allocator peak RSS after restart: {:.1} MiB",
        peak_rss_mib(second.0.id())
    );

    // A crash (SIGKILL): the standby waits out the Lease (3 s here) first.
    let _ = second.0.kill();
    let _ = second.0.wait();
    let health = free_port();
    let start = Instant::now();
    let third = start_allocator(&kc, health, "bench-3");
    while !ready(health).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "takeover after a crash (lease duration 3 s): {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let assigned_after = count_assigned(&svcs).await;
    assert_eq!(assigned_after, n, "every Service kept its address");
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
    server.stop().await;
}
