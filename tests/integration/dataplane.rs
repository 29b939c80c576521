//! The dataplane against a real kernel, each test in its own network namespace.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use routelb::kernel::netlink::Monitor;
use routelb::kernel::{Config, Dataplane, Running};
use routelb_core::net::{LinkKind, NodeState as Desired, VipMode};
use routelb_core::net::{Notification, Prefix};

use crate::netns::NetNs;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn desired(addrs: &[&str], len4: u8, len6: u8) -> Desired {
    let addresses: BTreeSet<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
    let prefixes = addresses
        .iter()
        .map(|a| Prefix::network(*a, if a.is_ipv4() { len4 } else { len6 }))
        .collect();
    Desired {
        addresses,
        prefixes,
        blackholes: Default::default(),
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Addresses on kube-lb0 as `ip` shows them (global scope only).
fn addrs(ns: &NetNs) -> Vec<String> {
    let out = ns.ip(&["-o", "addr", "show", "dev", "kube-lb0", "scope", "global"]);
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    v.sort();
    v
}

fn table(ns: &NetNs, args: &[&str]) -> Vec<String> {
    let mut v = lines(&ns.ip(args));
    v.sort();
    v
}

#[test]
fn from_empty_both_families_with_aggregation() {
    let ns = NetNs::new("dp-empty");
    let report = ns.run(|| {
        let mut dp = Dataplane::open(Config::default()).unwrap();
        assert_eq!(
            dp.fallback(),
            Some("bridge"),
            "this kernel has no dummy link type"
        );
        dp.reconcile(&desired(
            &["203.0.113.10", "203.0.113.11", "2001:db8::10"],
            24,
            64,
        ))
        .unwrap()
    });
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        addrs(&ns),
        ["2001:db8::10/128", "203.0.113.10/32", "203.0.113.11/32"]
    );
    assert_eq!(
        table(&ns, &["route", "show", "table", "200"]),
        ["203.0.113.0/24 dev kube-lb0 proto 249 scope link"]
    );
    assert_eq!(
        table(&ns, &["-6", "route", "show", "table", "200"]),
        ["2001:db8::/64 dev kube-lb0 proto 249 metric 1024 pref medium"]
    );
    assert!(ns.ip(&["link", "show", "kube-lb0"]).contains(",UP"));
    // Reconciling again changes nothing.
    let again = ns.run(|| {
        let mut dp = Dataplane::open(Config::default()).unwrap();
        dp.reconcile(&desired(
            &["203.0.113.10", "203.0.113.11", "2001:db8::10"],
            24,
            64,
        ))
        .unwrap()
    });
    assert!(!again.changed() && again.errors.is_empty(), "{again:?}");
}

#[test]
fn adopting_existing_state_removes_and_re_adds_nothing_wanted() {
    let ns = NetNs::new("dp-adopt");
    ns.ip(&["link", "add", "kube-lb0", "type", "bridge"]);
    ns.ip(&["link", "set", "kube-lb0", "up"]);
    for a in ["203.0.113.10/32", "203.0.113.11/32", "203.0.113.99/32"] {
        ns.ip(&["addr", "add", a, "dev", "kube-lb0"]);
    }
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::10/128",
        "dev",
        "kube-lb0",
        "nodad",
    ]);
    for r in ["203.0.113.10/32", "203.0.113.11/32", "203.0.113.99/32"] {
        ns.ip(&[
            "route", "add", r, "dev", "kube-lb0", "table", "200", "proto", "249",
        ]);
    }
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8::10/128",
        "dev",
        "kube-lb0",
        "table",
        "200",
        "proto",
        "249",
    ]);
    let (report, notes) = ns.run(|| {
        let mut monitor = Monitor::new().unwrap();
        let mut dp = Dataplane::open(Config::default()).unwrap();
        let report = dp
            .reconcile(&desired(
                &["203.0.113.10", "203.0.113.11", "2001:db8::10"],
                32,
                128,
            ))
            .unwrap();
        let mut notes = Vec::new();
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            notes.extend(monitor.next(Duration::from_millis(50)).unwrap());
        }
        (report, notes)
    });
    assert_eq!(
        (report.added, report.removed),
        (0, 2),
        "only the stale address and route go: {report:?}"
    );
    let wanted = [ip("203.0.113.10"), ip("203.0.113.11"), ip("2001:db8::10")];
    for n in &notes {
        let touched = match n {
            Notification::NewAddr { prefix, .. } | Notification::DelAddr { prefix, .. } => {
                Some(prefix.addr)
            }
            Notification::NewRoute(r) | Notification::DelRoute(r) if r.table == 200 => {
                Some(r.dst.addr)
            }
            _ => None,
        };
        assert!(
            !touched.is_some_and(|a| wanted.contains(&a)),
            "a wanted entry was touched: {n:?}"
        );
    }
    assert!(notes.iter().any(|n| matches!(n, Notification::DelAddr { prefix, .. } if prefix.addr == ip("203.0.113.99"))), "{notes:?}");
    assert_eq!(
        addrs(&ns),
        ["2001:db8::10/128", "203.0.113.10/32", "203.0.113.11/32"]
    );
}

#[test]
fn removals_and_foreign_entries_survive() {
    let ns = NetNs::new("dp-foreign");
    ns.ip(&["link", "add", "other0", "type", "bridge"]);
    ns.ip(&["link", "set", "other0", "up"]);
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "other0"]);
    ns.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "dev",
        "other0",
        "table",
        "200",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "192.0.2.128/25",
        "dev",
        "other0",
        "table",
        "201",
        "proto",
        "249",
    ]);
    ns.ip(&["route", "add", "203.0.113.0/24", "dev", "other0"]);
    let foreign_main = table(&ns, &["route", "show"]);
    ns.run(|| {
        let mut dp = Dataplane::open(Config::default()).unwrap();
        let r = dp
            .reconcile(&desired(&["203.0.113.10", "203.0.113.11"], 32, 128))
            .unwrap();
        assert_eq!((r.added, r.removed), (4, 0));
        let r = dp.reconcile(&desired(&["203.0.113.11"], 32, 128)).unwrap();
        assert_eq!((r.added, r.removed), (0, 2));
    });
    assert_eq!(addrs(&ns), ["203.0.113.11/32"]);
    assert_eq!(
        table(&ns, &["route", "show", "table", "200"]),
        [
            "192.0.2.0/24 dev other0 proto static scope link",
            "203.0.113.11 dev kube-lb0 proto 249 scope link"
        ]
    );
    assert_eq!(
        table(&ns, &["route", "show", "table", "201"]),
        ["192.0.2.128/25 dev other0 proto 249 scope link"]
    );
    assert!(
        ns.ip(&["addr", "show", "other0"])
            .contains("198.51.100.1/24")
    );
    assert_eq!(table(&ns, &["route", "show"]), foreign_main);
}

#[test]
fn one_failing_entry_is_named_and_blocks_nothing_else() {
    let ns = NetNs::new("dp-fail");
    ns.ip(&["link", "add", "other0", "type", "bridge"]);
    ns.ip(&["link", "set", "other0", "up"]);
    // A foreign route occupies the slot routelb wants for .20.
    ns.ip(&[
        "route",
        "add",
        "203.0.113.20/32",
        "dev",
        "other0",
        "table",
        "200",
        "proto",
        "static",
    ]);
    let report = ns.run(|| {
        let mut dp = Dataplane::open(Config::default()).unwrap();
        dp.reconcile(&desired(&["203.0.113.20", "203.0.113.21"], 32, 128))
            .unwrap()
    });
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(
        report.errors[0]
            .to_string()
            .starts_with("add route 203.0.113.20/32 table 200 proto 249: File exists"),
        "{:?}",
        report.errors
    );
    assert_eq!(addrs(&ns), ["203.0.113.20/32", "203.0.113.21/32"]);
    assert!(
        ns.ip(&["route", "show", "table", "200"])
            .contains("203.0.113.21 dev kube-lb0 proto 249")
    );
    assert!(
        ns.ip(&["route", "show", "table", "200"])
            .contains("203.0.113.20 dev other0 proto static")
    );
}

#[test]
fn local_route_mode_and_switching_modes() {
    let ns = NetNs::new("dp-local");
    let want = desired(&["203.0.113.10", "2001:db8::10"], 32, 128);
    ns.run(|| {
        let cfg = Config {
            vip_mode: VipMode::LocalRoute,
            ..Config::default()
        };
        let mut dp = Dataplane::open(cfg).unwrap();
        assert!(dp.reconcile(&want).unwrap().errors.is_empty());
    });
    assert!(addrs(&ns).is_empty());
    assert_eq!(
        table(&ns, &["route", "show", "table", "local", "proto", "249"]),
        ["local 203.0.113.10 dev kube-lb0 scope host"]
    );
    assert_eq!(
        table(
            &ns,
            &["-6", "route", "show", "table", "local", "proto", "249"]
        ),
        ["local 2001:db8::10 dev kube-lb0 metric 1024 pref medium"]
    );
    // The node accepts traffic for the address: the kernel routes it locally.
    assert!(
        ns.ip(&["route", "get", "203.0.113.10"])
            .starts_with("local 203.0.113.10")
    );
    ns.run(|| {
        let mut dp = Dataplane::open(Config::default()).unwrap();
        assert!(dp.reconcile(&want).unwrap().errors.is_empty());
    });
    assert_eq!(addrs(&ns), ["2001:db8::10/128", "203.0.113.10/32"]);
    assert!(table(&ns, &["route", "show", "table", "local", "proto", "249"]).is_empty());
}

#[test]
fn the_last_ipv4_address_leaving_takes_no_route_along() {
    // Cluster IPs as their service CIDR: a route without an address of its own, beside
    // a Local Service's address and host route, on a running dataplane.
    let ns = NetNs::new("dp-last4");
    let path = std::path::PathBuf::from(format!("/run/netns/{}", ns.name));
    let dp = Running::start_in(Some(&path), Config::default(), Duration::from_secs(3600)).unwrap();
    let aggregate = Prefix::new(ip("198.51.100.0"), 24);
    let mut both = desired(&["198.51.100.7", "2001:db8::7"], 32, 128);
    both.prefixes.insert(aggregate);
    // A service CIDR as a blackhole route: tied to no device at all.
    let cidr = Prefix::new(ip("203.0.113.0"), 24);
    both.blackholes.insert(cidr);
    dp.set(both);
    // The table exists only once the first route is in.
    let routes = || {
        let out = ns.exec(&["ip", "route", "show", "table", "200"]);
        let mut v = lines(&String::from_utf8_lossy(&out.stdout));
        v.sort();
        v
    };
    let until = |what: &str, check: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: {:?}",
                routes()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until("programmed", &|| routes().len() == 3);
    // The Local Service's endpoint goes: its address, the last IPv4 one, leaves.
    let mut aggregate_only = desired(&["2001:db8::7"], 32, 128);
    aggregate_only.prefixes.insert(aggregate);
    aggregate_only.blackholes.insert(cidr);
    dp.set(aggregate_only.clone());
    until("address removed", &|| addrs(&ns) == ["2001:db8::7/128"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        routes(),
        [
            "198.51.100.0/24 dev kube-lb0 proto 249 scope link",
            "blackhole 203.0.113.0/24 proto 249"
        ],
        "the aggregate survives its device's last IPv4 address"
    );
    dp.stop();
    // A restarted dataplane adopts the blackhole as its own: nothing to change.
    let report = ns.run(move || {
        let mut dp = Dataplane::open(Config::default()).unwrap();
        dp.reconcile(&aggregate_only).unwrap()
    });
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.added, report.removed), (0, 0), "{report:?}");
}

#[test]
fn the_dummy_kind_is_refused_clearly_where_the_kernel_lacks_it() {
    let ns = NetNs::new("dp-kind");
    let err = ns.run(|| {
        Dataplane::open(Config {
            link_kind: LinkKind::Dummy,
            ..Config::default()
        })
        .map(|_| ())
        .unwrap_err()
    });
    let msg = format!("{err:#}");
    assert!(
        msg.contains("create kube-lb0 (type dummy)") && msg.contains("--lb-link-kind"),
        "{msg}"
    );
    ns.run(|| {
        let dp = Dataplane::open(Config {
            link_kind: LinkKind::Bridge,
            ..Config::default()
        })
        .unwrap();
        assert_eq!(dp.link().unwrap().kind.as_deref(), Some("bridge"));
        assert_eq!(dp.fallback(), None);
    });
}

#[test]
fn drift_is_repaired_from_notifications() {
    let ns = NetNs::new("dp-drift");
    let running = ns.run(|| Running::start(Config::default(), Duration::from_secs(3600)).unwrap());
    running.set(desired(&["203.0.113.10", "203.0.113.11"], 32, 128));
    let wait = |what: &str, check: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    };
    // The runner's thread creates kube-lb0: it may not be there yet.
    wait("initial state", &|| {
        ns.ip_ok(&["link", "show", "kube-lb0"]) && addrs(&ns).len() == 2
    });
    ns.ip(&["addr", "del", "203.0.113.10/32", "dev", "kube-lb0"]);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.99/32",
        "dev",
        "kube-lb0",
        "table",
        "200",
        "proto",
        "249",
    ]);
    ns.ip(&["route", "del", "203.0.113.11/32", "table", "200"]);
    let took = wait("repair", &|| {
        addrs(&ns).len() == 2
            && table(&ns, &["route", "show", "table", "200"])
                == [
                    "203.0.113.10 dev kube-lb0 proto 249 scope link",
                    "203.0.113.11 dev kube-lb0 proto 249 scope link",
                ]
    });
    assert!(
        took < Duration::from_secs(2),
        "repair took {took:?} (the resync is an hour away)"
    );
    assert!(running.status().repairs >= 1);
    // Someone deletes kube-lb0 altogether: it comes back with its addresses.
    ns.ip(&["link", "del", "kube-lb0"]);
    wait("kube-lb0 recreated", &|| {
        ns.ip_ok(&["link", "show", "kube-lb0"]) && addrs(&ns).len() == 2
    });
    running.stop();
}

#[test]
fn cleanup_removes_everything_owned_and_is_idempotent() {
    let ns = NetNs::new("dp-clean");
    ns.ip(&["link", "add", "other0", "type", "bridge"]);
    ns.ip(&["link", "set", "other0", "up"]);
    ns.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "dev",
        "other0",
        "table",
        "200",
        "proto",
        "static",
    ]);
    ns.run(|| {
        let mut dp = Dataplane::open(Config::default()).unwrap();
        dp.reconcile(&desired(&["203.0.113.10", "2001:db8::10"], 24, 64))
            .unwrap();
        let mut local = Dataplane::open(Config {
            vip_mode: VipMode::LocalRoute,
            ..Config::default()
        })
        .unwrap();
        local
            .reconcile(&desired(&["203.0.113.10", "2001:db8::10"], 24, 64))
            .unwrap();
    });
    let run = || {
        ns.command(env!("CARGO_BIN_EXE_routelb"))
            .arg("cleanup")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("removed"));
    assert!(!ns.ip_ok(&["link", "show", "kube-lb0"]));
    assert_eq!(
        table(&ns, &["route", "show", "table", "200"]),
        ["192.0.2.0/24 dev other0 proto static scope link"]
    );
    assert!(table(&ns, &["route", "show", "table", "local", "proto", "249"]).is_empty());
    let second = run();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).starts_with("nothing to clean up"));
}

#[test]
fn ten_thousand_addresses_in_both_modes() {
    for mode in [VipMode::Address, VipMode::LocalRoute] {
        let ns = NetNs::new("dp-10k");
        let addresses: BTreeSet<IpAddr> = (0..10_000u32)
            .map(|i| IpAddr::V4((0xC612_0000 + i).into()))
            .collect();
        let want = Desired {
            prefixes: addresses.iter().map(|a| Prefix::host(*a)).collect(),
            addresses,
            blackholes: Default::default(),
        };
        let (first, second) = ns.run(|| {
            let mut dp = Dataplane::open(Config {
                vip_mode: mode,
                ..Config::default()
            })
            .unwrap();
            (dp.reconcile(&want).unwrap(), dp.reconcile(&want).unwrap())
        });
        assert_eq!((first.added, first.errors.len()), (20_000, 0), "{mode:?}");
        assert!(!second.changed());
        let routes = ns.ip(&["route", "show", "table", "200"]).lines().count();
        assert_eq!(routes, 10_000);
        match mode {
            VipMode::Address => assert_eq!(addrs(&ns).len(), 10_000),
            VipMode::LocalRoute => {
                assert_eq!(
                    ns.ip(&["route", "show", "table", "local", "proto", "249"])
                        .lines()
                        .count(),
                    10_000
                )
            }
        }
    }
}
