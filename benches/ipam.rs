//! IPAM benchmark: allocation, recovery and churn at 100k Services, against a naive
//! linear-scan allocator (MetalLB's approach: walk the pool from its first address for
//! every Service) measured in the same run.
//!
//! Run: `cargo bench --bench ipam`. The quadratic baseline runs at 20k and 65,536
//! Services (about 90 s); `-- --quick` runs it at 20k only, `-- --full` adds 100k (minutes).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use routelb_core::ipam::range::{Family, addr_value};
use routelb_core::ipam::{Ipam, PoolConfig, ServiceKey, ServiceRequest};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

/// Runs `f`, returning its result, wall time and peak heap growth in bytes.
fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let base = counting_alloc::reset_peak();
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    (out, took, counting_alloc::peak() - base)
}

fn request(i: usize) -> ServiceRequest {
    ServiceRequest::new("bench", &format!("svc-{i}"))
}

fn pool(entries: &[&str]) -> PoolConfig {
    PoolConfig::simple("bench", entries).expect("valid pool")
}

fn allocate_all(entries: &[&str], n: usize) -> Ipam {
    let mut ipam = Ipam::new();
    ipam.upsert_pool(pool(entries));
    for i in 0..n {
        ipam.allocate(&request(i)).expect("pool is large enough");
    }
    ipam
}

/// The baseline: for every Service, walk the pool from its first address until a free one.
fn naive_allocate_all(first: IpAddr, size: u128, n: usize) -> Vec<(ServiceKey, IpAddr)> {
    let family = Family::of(first);
    let base = addr_value(first);
    let mut used: HashSet<IpAddr> = HashSet::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = request(i).key;
        let addr = (0..size)
            .map(|off| family.addr(base + off))
            .find(|a| !used.contains(a))
            .expect("pool is large enough");
        used.insert(addr);
        out.push((key, addr));
    }
    out
}

fn row(what: &str, n: usize, took: Duration, peak: usize) {
    println!(
        "{what:<52} {n:>8} {:>10.1} ms {:>12.0}/s {:>9.1} MiB {:>6} B/svc",
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64(),
        peak as f64 / (1024.0 * 1024.0),
        peak / n.max(1)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!(
        "{:<52} {:>8} {:>13} {:>14} {:>13} {:>12}",
        "workload", "services", "time", "rate", "peak heap", "per service"
    );

    // Fill a /16 completely, then 100k Services into a /15 (a /16 holds only 65,536).
    let (_, t16, m16) = measure(|| allocate_all(&["10.0.0.0/16"], 65_536));
    row("routelb: allocate, fill a /16", 65_536, t16, m16);
    let (ipam, t100, m100) = measure(|| allocate_all(&["10.0.0.0/15"], 100_000));
    row("routelb: allocate 100k into a /15", 100_000, t100, m100);

    // Recovery: rebuild the index from 100k recorded assignments.
    let recorded = ipam.assignments();
    let (recovered, trec, mrec) = measure(|| {
        let mut fresh = Ipam::new();
        fresh.upsert_pool(pool(&["10.0.0.0/15"]));
        for (key, a) in &recorded {
            let req = ServiceRequest::new(&key.namespace, &key.name);
            fresh
                .restore(&req, &a.pool, &a.addresses)
                .expect("no conflicts");
        }
        fresh
    });
    row("routelb: recover 100k assignments", 100_000, trec, mrec);
    assert_eq!(recovered.assignments(), recorded, "recovery is exact");
    drop(recovered);

    // Churn at 100k: release one Service and allocate a new one, 100k times.
    let mut ipam = ipam;
    let (_, tchurn, mchurn) = measure(|| {
        for i in 0..100_000 {
            ipam.release(&request(i).key);
            ipam.allocate(&request(1_000_000 + i))
                .expect("space was released");
        }
    });
    row(
        "routelb: churn (release + allocate) at 100k",
        100_000,
        tchurn,
        mchurn,
    );

    // Huge pools: a /8 and a /64 are single intervals until used.
    let (_, t8, m8) = measure(|| allocate_all(&["10.0.0.0/8"], 100_000));
    row("routelb: allocate 100k into a /8", 100_000, t8, m8);
    let (_, t64, m64) = measure(|| {
        let mut ipam = Ipam::new();
        ipam.upsert_pool(pool(&["2001:db8::/64"]));
        for i in 0..100_000 {
            let mut req = request(i);
            req.families = vec![Family::V6];
            ipam.allocate(&req).expect("a /64 is large enough");
        }
    });
    row("routelb: allocate 100k into a /64", 100_000, t64, m64);

    // Baseline, same workload.
    let first: IpAddr = "10.0.0.0".parse().unwrap();
    let full = std::env::args().any(|a| a == "--full");
    let sizes: &[(usize, Duration)] = match (quick, full) {
        (true, _) => &[(20_000, Duration::ZERO)],
        (false, false) => &[(20_000, Duration::ZERO), (65_536, t16)],
        (false, true) => &[(20_000, Duration::ZERO), (65_536, t16), (100_000, t100)],
    };
    for (n, ours) in sizes {
        let (_, tn, mn) = measure(|| naive_allocate_all(first, 1 << 17, *n));
        row(
            &format!("baseline: naive linear scan, {n} Services"),
            *n,
            tn,
            mn,
        );
        let ours = if ours.is_zero() {
            measure(|| allocate_all(&["10.0.0.0/15"], *n)).1
        } else {
            *ours
        };
        println!(
            "ratio at {n}: naive scan takes {:.1}x as long as routelb",
            tn.as_secs_f64() / ours.as_secs_f64()
        );
    }
    println!(
        "targets: 100k allocations < 1 s ({}), recovery of 100k < 0.5 s ({})",
        if t100 < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        },
        if trec < Duration::from_millis(500) {
            "met"
        } else {
            "MISSED"
        },
    );
}
