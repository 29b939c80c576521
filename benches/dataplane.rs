//! Dataplane benchmark (root): program 10,000 addresses plus routes from empty, and one
//! change on top of 10,000, against `ip -batch` doing the same operations in the same
//! run, each in a fresh network namespace. Both VIP modes.
//!
//! Run: `cargo bench --bench dataplane` (`-- --count N` to change the 10,000).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use routelb::kernel::{Config, Dataplane};
use routelb_core::net::Prefix;
use routelb_core::net::{NodeState as Desired, VipMode};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("rlb-bench-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name} (needs root)");
        Ns(name)
    }

    fn ip_batch(&self, script: &str) -> Duration {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["-n", &self.0, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "ip -batch failed");
        start.elapsed()
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn addr(i: u32) -> IpAddr {
    IpAddr::V4((0xC612_0000 + i).into()) // 198.18.0.0/15, benchmarking space
}

fn desired(n: u32) -> Desired {
    let addresses: BTreeSet<IpAddr> = (0..n).map(addr).collect();
    Desired {
        prefixes: addresses.iter().map(|a| Prefix::host(*a)).collect(),
        addresses,
        blackholes: Default::default(),
    }
}

fn script(range: std::ops::Range<u32>, mode: VipMode) -> String {
    let mut s = String::new();
    for i in range {
        let a = addr(i);
        match mode {
            VipMode::Address => s.push_str(&format!("addr add {a}/32 dev kube-lb0\n")),
            VipMode::LocalRoute => s.push_str(&format!(
                "route add local {a}/32 dev kube-lb0 table local proto 249\n"
            )),
        }
        s.push_str(&format!(
            "route add {a}/32 dev kube-lb0 table 200 proto 249\n"
        ));
    }
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!(
        "{:<12} {:>10} {:>14} {:>14} {:>8}",
        "mode", "work", "routelb", "ip -batch", "ratio"
    );
    for mode in [VipMode::Address, VipMode::LocalRoute] {
        let cfg = Config {
            vip_mode: mode,
            ..Config::default()
        };
        let name = if mode == VipMode::Address {
            "address"
        } else {
            "local-route"
        };

        // routelb: bulk from empty, then one more on top.
        let ns = Ns::new(&format!("{name}-rlb"));
        let (bulk, single, resync) = ns.run(|| {
            let mut dp = Dataplane::open(cfg.clone()).unwrap();
            let want = desired(n);
            let t = Instant::now();
            let r = dp.reconcile(&want).unwrap();
            let bulk = t.elapsed();
            assert!(r.errors.is_empty() && r.added == 2 * n as usize, "{r:?}");
            let plus = desired(n + 1);
            let t = Instant::now();
            let r = dp.reconcile(&plus).unwrap();
            let single = t.elapsed();
            assert_eq!(r.added, 2);
            let t = Instant::now();
            assert!(!dp.reconcile(&plus).unwrap().changed());
            (bulk, single, t.elapsed())
        });
        drop(ns);

        // ip -batch: the same operations; kube-lb0 made beforehand, outside the timing.
        let ns = Ns::new(&format!("{name}-ip"));
        for args in [
            ["link", "add", "kube-lb0", "type", "bridge"].as_slice(),
            ["link", "set", "kube-lb0", "up"].as_slice(),
        ] {
            assert!(
                Command::new("ip")
                    .args(["-n", &ns.0])
                    .args(args)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let ip_bulk = ns.ip_batch(&script(0..n, mode));
        let ip_single = ns.ip_batch(&script(n..n + 1, mode));
        drop(ns);

        println!(
            "{name:<12} {:>10} {:>11.1} ms {:>11.1} ms {:>7.2}x",
            format!("{n} bulk"),
            ms(bulk),
            ms(ip_bulk),
            bulk.as_secs_f64() / ip_bulk.as_secs_f64()
        );
        println!(
            "{name:<12} {:>10} {:>11.2} ms {:>11.2} ms {:>7.2}x   (ip -batch includes starting ip)",
            "+1",
            ms(single),
            ms(ip_single),
            single.as_secs_f64() / ip_single.as_secs_f64()
        );
        println!("{name:<12} {:>10} {:>11.2} ms", "no-op", ms(resync));
    }
    println!("targets: bulk within 1.5x of ip -batch; one change on top of {n} under 5 ms");
}
