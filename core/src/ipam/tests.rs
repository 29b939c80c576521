//! Unit tests of the allocation index, written as sentences over fixture builders.

use std::net::IpAddr;
use std::sync::Arc;

use super::range::Family;
use super::*;
use crate::crd::AddressPoolSpec;
use crate::selector::Selector;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A pool fixture.
struct P(PoolConfig);

fn pool(name: &str, entries: &[&str]) -> P {
    P(PoolConfig::simple(name, entries).unwrap())
}

impl P {
    fn created(mut self, t: i64) -> P {
        self.0.created = Some(t);
        self
    }
    fn priority(mut self, p: i32) -> P {
        self.0.priority = Some(p);
        self
    }
    fn avoid_buggy(mut self) -> P {
        self.0.avoid_buggy_ips = true;
        self
    }
    fn disabled(mut self) -> P {
        self.0.disabled = true;
        self
    }
    fn manual(mut self) -> P {
        self.0.auto_assign = false;
        self
    }
    fn for_services(mut self, k: &str, v: &str) -> P {
        self.0.service_selector = Selector::from_labels([(k, v)]);
        self
    }
    fn for_namespaces(mut self, k: &str, v: &str) -> P {
        self.0.namespace_selector = Selector::from_labels([(k, v)]);
        self
    }
}

/// A Service fixture.
struct S(ServiceRequest);

fn svc(name: &str) -> S {
    S(ServiceRequest::new("default", name).tap_ports(&[("TCP", 80)]))
}

trait TapPorts {
    fn tap_ports(self, ports: &[(&str, u16)]) -> Self;
}

impl TapPorts for ServiceRequest {
    fn tap_ports(mut self, ports: &[(&str, u16)]) -> Self {
        self.share.ports = ports.iter().map(|(p, n)| PortKey::new(p, *n)).collect();
        self
    }
}

impl S {
    fn in_ns(mut self, ns: &str) -> S {
        self.0.key.namespace = ns.to_string();
        self
    }
    fn pinned_to(mut self, p: &str) -> S {
        self.0.pool = Some(p.to_string());
        self
    }
    fn asking(mut self, addrs: &[&str]) -> S {
        self.0.addresses = addrs.iter().map(|a| ip(a)).collect();
        self
    }
    fn families(mut self, policy: FamilyPolicy, fams: &[Family]) -> S {
        self.0.policy = policy;
        self.0.families = fams.to_vec();
        self
    }
    fn sharing(mut self, key: &str) -> S {
        self.0.share.key = Some(Arc::from(key));
        self
    }
    fn ports(mut self, ports: &[(&str, u16)]) -> S {
        self.0 = self.0.tap_ports(ports);
        self
    }
    fn local(mut self, app: &str) -> S {
        self.0.share.traffic = TrafficPolicy::Local {
            selector: [("app".to_string(), app.to_string())].into(),
        };
        self
    }
    fn label(mut self, k: &str, v: &str) -> S {
        self.0.labels.insert(k.into(), v.into());
        self
    }
    fn ns_label(mut self, k: &str, v: &str) -> S {
        self.0.namespace_labels.insert(k.into(), v.into());
        self
    }
    fn key(&self) -> ServiceKey {
        self.0.key.clone()
    }
}

fn ipam(pools: Vec<P>) -> Ipam {
    let mut ipam = Ipam::new();
    for p in pools {
        ipam.upsert_pool(p.0);
    }
    ipam
}

fn addrs(ipam: &mut Ipam, s: &S) -> Vec<IpAddr> {
    let got = ipam
        .allocate(&s.0)
        .unwrap_or_else(|e| panic!("{}: {e}", s.0.key));
    ipam.check_invariants();
    got.assignment.addresses
}

fn err(ipam: &mut Ipam, s: &S) -> AllocError {
    let before = ipam.assignments();
    let e = ipam.allocate(&s.0).expect_err("allocation should fail");
    assert_eq!(
        ipam.assignments(),
        before,
        "a failed allocation changes nothing"
    );
    ipam.check_invariants();
    e
}

#[test]
fn hands_out_the_lowest_free_address_and_reuses_released_ones() {
    let mut m = ipam(vec![pool("a", &["192.0.2.0/30"])]);
    assert_eq!(addrs(&mut m, &svc("s1")), [ip("192.0.2.0")]);
    assert_eq!(addrs(&mut m, &svc("s2")), [ip("192.0.2.1")]);
    assert_eq!(addrs(&mut m, &svc("s3")), [ip("192.0.2.2")]);
    m.release(&svc("s2").key());
    m.check_invariants();
    assert_eq!(addrs(&mut m, &svc("s4")), [ip("192.0.2.1")]);
    assert_eq!(addrs(&mut m, &svc("s5")), [ip("192.0.2.3")]);
    let e = err(&mut m, &svc("s6"));
    assert_eq!(e.reason(), "out_of_ips");
    assert_eq!(
        e.to_string(),
        "no free IPv4 address in a: the pools are exhausted; add addresses or a pool"
    );
    // Asking again for an unchanged Service changes nothing.
    let again = m.allocate(&svc("s1").0).unwrap();
    assert!(!again.changed);
    assert_eq!(again.assignment.addresses, [ip("192.0.2.0")]);
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut m = ipam(vec![pool("a", &["192.0.2.254-192.0.3.1"]).avoid_buggy()]);
    assert_eq!(addrs(&mut m, &svc("s1")), [ip("192.0.2.254")]);
    assert_eq!(addrs(&mut m, &svc("s2")), [ip("192.0.3.1")]);
    assert_eq!(err(&mut m, &svc("s3")).reason(), "out_of_ips");
    let e = err(&mut m, &svc("s4").asking(&["192.0.2.255"]));
    assert!(matches!(e, AllocError::AddressExcluded { .. }), "{e}");
    assert_eq!(m.pool_usage("a").unwrap().ipv4.unwrap().size, 2);
}

#[test]
fn disabled_pools_keep_their_assignments_but_make_no_new_ones() {
    let mut m = ipam(vec![pool("a", &["192.0.2.0/30"])]);
    let first = addrs(&mut m, &svc("s1"));
    m.upsert_pool(pool("a", &["192.0.2.0/30"]).disabled().0);
    let again = m.allocate(&svc("s1").0).unwrap();
    assert!(!again.changed);
    assert_eq!(again.assignment.addresses, first);
    let e = err(&mut m, &svc("s2"));
    assert_eq!(
        e.to_string(),
        "no AddressPool can serve this Service: a is disabled"
    );
    let e = err(&mut m, &svc("s2").asking(&["192.0.2.3"]));
    assert_eq!(e.to_string(), "AddressPool a is disabled");
}

#[test]
fn auto_assign_false_pools_serve_only_services_that_name_them() {
    let mut m = ipam(vec![pool("special", &["192.0.2.0/30"]).manual()]);
    let e = err(&mut m, &svc("s1"));
    assert!(
        e.to_string().contains("special has autoAssign: false"),
        "{e}"
    );
    assert_eq!(
        addrs(&mut m, &svc("s1").pinned_to("special")),
        [ip("192.0.2.0")]
    );
    assert_eq!(
        addrs(&mut m, &svc("s2").asking(&["192.0.2.2"])),
        [ip("192.0.2.2")]
    );
}

#[test]
fn selectors_decide_who_may_draw_from_a_pool() {
    let mut m = ipam(vec![
        pool("web", &["192.0.2.0/30"]).for_services("team", "web"),
        pool("prod", &["198.51.100.0/30"]).for_namespaces("env", "prod"),
    ]);
    assert_eq!(
        addrs(&mut m, &svc("w").label("team", "web")),
        [ip("192.0.2.0")]
    );
    assert_eq!(
        addrs(&mut m, &svc("p").in_ns("shop").ns_label("env", "prod")),
        [ip("198.51.100.0")]
    );
    let e = err(&mut m, &svc("other").label("team", "db"));
    assert_eq!(
        e.to_string(),
        "no AddressPool can serve this Service: prod namespaceSelector \"env=prod\" does not match \
         the namespace's labels; web serviceSelector \"team=web\" does not match the Service's labels"
    );
    assert_eq!(e.reason(), "no_pool");
    // A requested address obeys the selectors too.
    let e = err(&mut m, &svc("other").asking(&["192.0.2.3"]));
    assert!(matches!(e, AllocError::PoolUnusable { .. }), "{e}");
}

#[test]
fn pools_are_used_by_priority_then_name_and_unprioritised_last() {
    let mut m = ipam(vec![
        pool("a-none", &["192.0.2.0/32"]),
        pool("b-low", &["198.51.100.0/32"]).priority(10),
        pool("c-high", &["203.0.113.0/32"]).priority(1),
        pool("d-high", &["203.0.113.9/32"]).priority(1),
    ]);
    assert_eq!(addrs(&mut m, &svc("1")), [ip("203.0.113.0")]);
    assert_eq!(addrs(&mut m, &svc("2")), [ip("203.0.113.9")]);
    assert_eq!(addrs(&mut m, &svc("3")), [ip("198.51.100.0")]);
    assert_eq!(addrs(&mut m, &svc("4")), [ip("192.0.2.0")]);
    let e = err(&mut m, &svc("5"));
    assert_eq!(
        e.to_string(),
        "no free IPv4 address in c-high, d-high, b-low, a-none: the pools are exhausted; add addresses or a pool"
    );
}

#[test]
fn requested_addresses_are_honoured_or_refused_with_the_reason() {
    let mut m = ipam(vec![
        pool("a", &["192.0.2.0/28"]),
        pool("b", &["198.51.100.0/28"]),
    ]);
    assert_eq!(
        addrs(&mut m, &svc("s1").asking(&["192.0.2.9"])),
        [ip("192.0.2.9")]
    );
    assert_eq!(m.assignment(&svc("s1").key()).unwrap().pool, "a");
    let e = err(&mut m, &svc("s2").asking(&["192.0.2.9"]));
    assert_eq!(e.reason(), "already_allocated");
    assert_eq!(
        e.to_string(),
        "requested address 192.0.2.9 is in use: default/s1 holds it without a sharing key"
    );
    let e = err(&mut m, &svc("s2").asking(&["203.0.113.1"]));
    assert_eq!(
        e.to_string(),
        "requested address 203.0.113.1 is outside every AddressPool"
    );
    let e = err(&mut m, &svc("s2").asking(&["198.51.100.1"]).pinned_to("a"));
    assert_eq!(
        e.to_string(),
        "requested address 198.51.100.1 is not in AddressPool a"
    );
    let e = err(&mut m, &svc("s2").pinned_to("nope"));
    assert_eq!(e.to_string(), "AddressPool \"nope\" does not exist");
    let e = err(&mut m, &svc("s2").asking(&["192.0.2.1", "192.0.2.2"]));
    assert!(
        e.to_string().contains("two IPv4 addresses requested"),
        "{e}"
    );
    // Automatic allocation skips the requested address.
    assert_eq!(addrs(&mut m, &svc("s3")), [ip("192.0.2.0")]);
}

#[test]
fn sharing_needs_the_same_key_disjoint_ports_and_compatible_policy() {
    let mut m = ipam(vec![pool("a", &["192.0.2.0/28"])]);
    let dns_udp = svc("dns-udp").sharing("dns").ports(&[("UDP", 53)]);
    let dns_tcp = svc("dns-tcp").sharing("dns").ports(&[("TCP", 53)]);
    let shared = addrs(&mut m, &dns_udp);
    // Automatic allocation joins the existing address of the key.
    assert_eq!(addrs(&mut m, &dns_tcp), shared);
    assert_eq!(
        m.holders(shared[0]),
        [dns_tcp.key(), dns_udp.key()].as_slice()
    );
    let addr = shared[0].to_string();
    let cases: Vec<(S, &str)> = vec![
        (
            svc("x").sharing("dns").ports(&[("TCP", 53)]),
            "already uses port 53/TCP",
        ),
        (
            svc("x").sharing("other").ports(&[("TCP", 8053)]),
            "with sharing key \"dns\", not \"other\"",
        ),
        (
            svc("x").ports(&[("TCP", 8053)]),
            "set routelb.io/allow-shared-ip: \"dns\" to share it",
        ),
        (
            svc("x").sharing("dns").ports(&[("TCP", 8053)]).local("dns"),
            "sharing needs both Cluster, or both Local with the same selector",
        ),
    ];
    for (s, wanted) in cases {
        let e = err(&mut m, &s.asking(&[addr.as_str()]));
        assert!(e.to_string().contains(wanted), "{e}");
    }
    // A conflicting Service asking automatically gets its own address instead.
    let other = addrs(
        &mut m,
        &svc("dns-tcp-2").sharing("dns").ports(&[("TCP", 53)]),
    );
    assert_ne!(other, shared);
    // Local Services share only with the same selector.
    let l1 = addrs(
        &mut m,
        &svc("l1").sharing("web").local("web").ports(&[("TCP", 80)]),
    );
    let l2 = addrs(
        &mut m,
        &svc("l2").sharing("web").local("web").ports(&[("TCP", 443)]),
    );
    assert_eq!(l1, l2);
    let l3 = addrs(
        &mut m,
        &svc("l3")
            .sharing("web")
            .local("api")
            .ports(&[("TCP", 8080)]),
    );
    assert_ne!(l1, l3);
    // The address is freed only when its last holder goes.
    m.release(&dns_udp.key());
    assert_eq!(m.holders(shared[0]), [dns_tcp.key()].as_slice());
    m.release(&dns_tcp.key());
    assert!(m.holders(shared[0]).is_empty());
    m.check_invariants();
}

#[test]
fn dual_stack_policies() {
    use FamilyPolicy::*;
    use range::Family::{V4, V6};
    let mut m = ipam(vec![
        pool("dual", &["192.0.2.0/31", "2001:db8::/127"]).priority(1),
        pool("v4only", &["198.51.100.0/30"]).priority(2),
    ]);
    assert_eq!(
        addrs(&mut m, &svc("single6").families(SingleStack, &[V6, V4])),
        [ip("2001:db8::")]
    );
    assert_eq!(
        addrs(&mut m, &svc("prefer").families(PreferDualStack, &[V4, V6])),
        [ip("192.0.2.0"), ip("2001:db8::1")]
    );
    // The dual pool has IPv4 left but no IPv6: Require fails atomically ...
    let e = err(
        &mut m,
        &svc("require").families(RequireDualStack, &[V4, V6]),
    );
    assert_eq!(e.reason(), "out_of_ips");
    // ... and Prefer settles for what one pool can give.
    assert_eq!(
        addrs(&mut m, &svc("prefer2").families(PreferDualStack, &[V4, V6])),
        [ip("192.0.2.1")]
    );
    let e = err(
        &mut m,
        &svc("require2")
            .families(RequireDualStack, &[V4, V6])
            .pinned_to("v4only"),
    );
    assert_eq!(
        e.to_string(),
        "no IPv6 addresses in the pools that may serve this Service (v4only)"
    );
    let e = err(
        &mut m,
        &svc("wrong")
            .families(SingleStack, &[V4])
            .asking(&["2001:db8::1"]),
    );
    assert_eq!(e.reason(), "invalid_request");
    let e = err(
        &mut m,
        &svc("half")
            .families(RequireDualStack, &[V4, V6])
            .asking(&["198.51.100.1"]),
    );
    assert!(
        e.to_string()
            .contains("RequireDualStack needs an IPv4 and an IPv6 address"),
        "{e}"
    );
    let e = err(
        &mut m,
        &svc("split")
            .families(RequireDualStack, &[V4, V6])
            .asking(&["198.51.100.1", "2001:db8::1"]),
    );
    assert!(
        matches!(
            e,
            AllocError::AddressInUse { .. } | AllocError::AddressesInDifferentPools { .. }
        ),
        "{e}"
    );
}

#[test]
fn prefer_dual_stack_gains_its_second_family_without_moving_the_first() {
    use FamilyPolicy::*;
    use range::Family::{V4, V6};
    let mut m = ipam(vec![pool("dual", &["192.0.2.0/30", "2001:db8::/126"])]);
    let s = svc("s").families(SingleStack, &[V4]);
    assert_eq!(addrs(&mut m, &s), [ip("192.0.2.0")]);
    let s = s.families(PreferDualStack, &[V4, V6]);
    let got = m.allocate(&s.0).unwrap();
    assert!(got.changed);
    assert_eq!(
        got.assignment.addresses,
        [ip("192.0.2.0"), ip("2001:db8::")]
    );
    // Back to single stack releases the IPv6 address and keeps IPv4.
    let got = m.allocate(&s.families(SingleStack, &[V4]).0).unwrap();
    assert_eq!(got.assignment.addresses, [ip("192.0.2.0")]);
    assert_eq!(got.released, [ip("2001:db8::")]);
    m.check_invariants();
}

#[test]
fn the_later_of_two_overlapping_pools_is_in_conflict_and_unused() {
    let mut m = ipam(vec![pool("old", &["192.0.2.0/30"]).created(100)]);
    let update = m.upsert_pool(
        pool("new", &["192.0.2.2/31", "198.51.100.0/30"])
            .created(200)
            .0,
    );
    assert_eq!(
        update.conflicts,
        [("new".to_string(), Some("old".to_string()))]
    );
    assert_eq!(
        m.pool_usage("new").unwrap().conflict.as_deref(),
        Some("old")
    );
    let e = err(&mut m, &svc("s").pinned_to("new"));
    assert_eq!(
        e.to_string(),
        "AddressPool new overlaps the older pool old and is not used until fixed"
    );
    let e = err(&mut m, &svc("s").asking(&["198.51.100.1"]));
    assert!(e.to_string().contains("overlaps the older pool old"), "{e}");
    for i in 0..4 {
        assert_eq!(
            addrs(&mut m, &svc(&format!("s{i}"))),
            [ip(&format!("192.0.2.{i}"))]
        );
    }
    // Removing the older pool lets the newer one serve; its overlap is still allocated.
    let (affected, conflicts) = m.remove_pool("old");
    assert_eq!(affected.len(), 4);
    assert_eq!(conflicts, [("new".to_string(), None)]);
    m.check_invariants();
    // The Services of the deleted pool keep addresses the new pool covers.
    for key in affected {
        let s = svc(&key.name);
        let before = m.assignment(&key).unwrap().addresses;
        let got = m.allocate(&s.0).unwrap();
        m.check_invariants();
        if before[0] >= ip("192.0.2.2") {
            assert_eq!(got.assignment.addresses, before, "{key} stays put");
            assert_eq!(got.assignment.pool, "new");
        } else {
            assert!(
                got.assignment.addresses[0] >= ip("198.51.100.0"),
                "{key} moved"
            );
        }
    }
}

#[test]
fn a_pool_edit_never_moves_assignments_it_no_longer_covers() {
    let mut m = ipam(vec![pool("a", &["192.0.2.0/29"])]);
    for i in 0..4 {
        addrs(&mut m, &svc(&format!("s{i}")));
    }
    let update = m.upsert_pool(pool("a", &["192.0.2.0/31", "192.0.2.4/30"]).0);
    assert_eq!(
        update.uncovered,
        [
            (ip("192.0.2.2"), vec![svc("s2").key()]),
            (ip("192.0.2.3"), vec![svc("s3").key()])
        ]
    );
    m.check_invariants();
    let again = m.allocate(&svc("s2").0).unwrap();
    assert!(!again.changed);
    let usage = m.pool_usage("a").unwrap();
    assert_eq!(usage.uncovered, [ip("192.0.2.2"), ip("192.0.2.3")]);
    assert_eq!(usage.ipv4.unwrap().available, 6 - 2);
    // Releasing an uncovered address does not put it into the pool.
    m.release(&svc("s2").key());
    m.check_invariants();
    assert_eq!(addrs(&mut m, &svc("new")), [ip("192.0.2.4")]);
}

#[test]
fn a_deleted_pools_services_fail_over_or_keep_their_address() {
    let mut m = ipam(vec![
        pool("a", &["192.0.2.0/31"]),
        pool("b", &["198.51.100.0/32"]),
    ]);
    let s1 = svc("s1").pinned_to("a");
    let s2 = svc("s2").pinned_to("a");
    addrs(&mut m, &s1);
    addrs(&mut m, &s2);
    let (affected, _) = m.remove_pool("a");
    assert_eq!(affected, [s1.key(), s2.key()]);
    // Pinned to the deleted pool: fails and keeps the address.
    let e = err(&mut m, &s1);
    assert_eq!(e.reason(), "pool_not_found");
    assert_eq!(
        m.assignment(&s1.key()).unwrap().addresses,
        [ip("192.0.2.0")]
    );
    // Unpinned: moves to the remaining pool.
    let got = m.allocate(&svc("s2").0).unwrap();
    assert_eq!(got.assignment.addresses, [ip("198.51.100.0")]);
    assert_eq!(got.released, [ip("192.0.2.1")]);
    m.check_invariants();
}

#[test]
fn restored_assignments_are_never_moved() {
    let mut m = ipam(vec![
        pool("a", &["192.0.2.0/29"]).for_services("team", "web"),
    ]);
    // Recorded before the pool's selector changed and before the pool was disabled.
    let old = svc("old");
    let restored = m.restore(&old.0, "a", &[ip("192.0.2.5")]).unwrap();
    assert!(restored.uncovered.is_empty());
    m.upsert_pool(
        pool("a", &["192.0.2.0/29"])
            .for_services("team", "web")
            .disabled()
            .0,
    );
    let got = m.allocate(&old.0).unwrap();
    assert!(!got.changed);
    assert_eq!(got.assignment.addresses, [ip("192.0.2.5")]);
    m.upsert_pool(pool("a", &["192.0.2.0/29"]).for_services("team", "web").0);
    // New allocations go around it.
    for (i, want) in [0, 1, 2, 3, 4, 6].iter().enumerate() {
        let s = svc(&format!("n{i}")).label("team", "web");
        assert_eq!(addrs(&mut m, &s), [ip(&format!("192.0.2.{want}"))]);
    }
    // A second claim on the same address is refused; the first keeps it.
    let e = m
        .restore(&svc("dup").0, "a", &[ip("192.0.2.5")])
        .unwrap_err();
    assert!(e.to_string().contains("default/old holds it"), "{e}");
    // An address outside every pool is kept and reported.
    let r = m
        .restore(&svc("far").0, "gone", &[ip("203.0.113.1")])
        .unwrap();
    assert_eq!(r.uncovered, [ip("203.0.113.1")]);
    m.check_invariants();
}

#[test]
fn changing_the_request_moves_the_service_and_failure_keeps_the_old_address() {
    let mut m = ipam(vec![
        pool("a", &["192.0.2.0/31"]),
        pool("b", &["198.51.100.0/31"]),
    ]);
    let s = svc("s");
    assert_eq!(addrs(&mut m, &s), [ip("192.0.2.0")]);
    let got = m.allocate(&svc("s").pinned_to("b").0).unwrap();
    assert_eq!(
        (got.assignment.addresses, got.released),
        (vec![ip("198.51.100.0")], vec![ip("192.0.2.0")])
    );
    let got = m
        .allocate(&svc("s").pinned_to("b").asking(&["198.51.100.1"]).0)
        .unwrap();
    assert_eq!(got.assignment.addresses, [ip("198.51.100.1")]);
    // Asking for an address that is taken keeps the current one.
    addrs(&mut m, &svc("t").asking(&["192.0.2.1"]));
    let e = err(&mut m, &svc("s").asking(&["192.0.2.1"]));
    assert_eq!(e.reason(), "already_allocated");
    assert_eq!(
        m.assignment(&s.key()).unwrap().addresses,
        [ip("198.51.100.1")]
    );
}

#[test]
fn huge_pools_work_without_materialising_addresses() {
    let mut m = ipam(vec![
        pool("v4", &["10.0.0.0/8"]),
        pool("v6", &["2001:db8::/64"]),
    ]);
    let usage = m.pool_usage("v4").unwrap().ipv4.unwrap();
    assert_eq!(usage.size, 1 << 24);
    for i in 0..1000 {
        addrs_fast(&mut m, &svc(&format!("s{i}")));
    }
    let s = svc("v6")
        .families(FamilyPolicy::SingleStack, &[Family::V6])
        .pinned_to("v6");
    assert_eq!(
        m.allocate(&s.0).unwrap().assignment.addresses,
        [ip("2001:db8::")]
    );
    let s = svc("v6b")
        .asking(&["2001:db8::ffff:ffff:ffff:fff0"])
        .families(FamilyPolicy::SingleStack, &[Family::V6]);
    m.allocate(&s.0).unwrap();
    let usage = m.pool_usage("v6").unwrap().ipv6.unwrap();
    assert_eq!((usage.size, usage.allocated), (1 << 64, 2));
    for i in (0..1000).step_by(2) {
        m.release(&svc(&format!("s{i}")).key());
    }
    let free = m.pools["v4"].free[0].as_ref().unwrap();
    assert!(
        free.intervals() <= 501,
        "fragmentation is bounded by allocations: {}",
        free.intervals()
    );
    assert_eq!(m.pool_usage("v4").unwrap().ipv4.unwrap().allocated, 500);
    assert_eq!(m.pools["v6"].free[1].as_ref().unwrap().intervals(), 2);
}

fn addrs_fast(ipam: &mut Ipam, s: &S) -> Vec<IpAddr> {
    ipam.allocate(&s.0).unwrap().assignment.addresses
}

#[test]
fn pool_specs_with_bad_selectors_are_rejected() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let spec = AddressPoolSpec {
        addresses: vec!["192.0.2.0/24".into()],
        service_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Equal".into(),
                values: None,
            }]),
        }),
        ..Default::default()
    };
    let e = PoolConfig::from_spec("p", None, &spec).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("spec.serviceSelector: matchExpressions[0]: unknown operator"),
        "{e}"
    );
}

#[test]
fn pool_usage_reports_per_family_counts_and_used_addresses() {
    let mut m = ipam(vec![pool("a", &["192.0.2.0/30", "2001:db8::/120"])]);
    let s = svc("s").families(FamilyPolicy::RequireDualStack, &[Family::V4, Family::V6]);
    addrs(&mut m, &s);
    let u = m.pool_usage("a").unwrap();
    let v4 = u.ipv4.unwrap();
    assert_eq!((v4.size, v4.allocated, v4.available), (4, 1, 3));
    assert_eq!((v4.first, v4.last), (ip("192.0.2.0"), ip("192.0.2.3")));
    assert_eq!(u.ipv6.unwrap().size, 256);
    let (used, truncated) = m.pool_used("a", 1);
    assert_eq!(used, [(ip("192.0.2.0"), vec![s.key()])]);
    assert!(truncated);
}
