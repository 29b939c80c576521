//! The allocator against the fake API server: every decision visible in Service status,
//! annotations, Events and pool status.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::support::*;

const NS: &str = "default";

async fn cluster_with_allocator() -> (Cluster, InProcess) {
    let c = Cluster::new().await;
    let a = start_allocator(&c, allocator_options("test-allocator"));
    (c, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gets_the_first_address_with_annotation_event_and_pool_status() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("public", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    c.service(NS, "web", json!({})).await;
    assert_eq!(c.wait_ips(NS, "web", 1).await, [ip("192.0.2.0")]);
    let svc = c.get(NS, "web").await;
    assert_eq!(routelb_core::service::allocated_from(&svc), Some("public"));
    c.wait_event(
        NS,
        "web",
        "AddressAssigned",
        "Assigned 192.0.2.0 from AddressPool public",
    )
    .await;
    let pool = c
        .wait_pool("public", "pool usage 1/4", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.ipv4.as_ref())
                .is_some_and(|u| u.allocated == 1 && u.available == 3)
        })
        .await;
    let status = pool.status.unwrap();
    assert_eq!(
        status.used.get("192.0.2.0").map(String::as_str),
        Some("default/web")
    );
    assert_eq!(
        condition(&pool_named(&c, "public").await, "Ready")
            .unwrap()
            .0,
        "True"
    );
    assert_eq!(status.ipv4.unwrap().first_ip, "192.0.2.0");
}

async fn pool_named(c: &Cluster, name: &str) -> routelb_core::crd::AddressPool {
    c.pools().get(name).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_addresses_pool_annotation_and_deprecated_load_balancer_ip() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/28"]})).await;
    c.pool(
        "b",
        json!({"addresses": ["198.51.100.0/28"], "autoAssign": false}),
    )
    .await;
    c.service(
        NS,
        "asked",
        json!({"metadata": {"annotations": {"routelb.io/addresses": "192.0.2.9"}}}),
    )
    .await;
    c.service(
        NS,
        "pinned",
        json!({"metadata": {"annotations": {"routelb.io/pool": "b"}}}),
    )
    .await;
    c.service(
        NS,
        "legacy",
        json!({"spec": {"loadBalancerIP": "192.0.2.7"}}),
    )
    .await;
    c.service(NS, "metallb", json!({"metadata": {"annotations": {"metallb.universe.tf/loadBalancerIPs": "198.51.100.5"}}})).await;
    assert_eq!(c.wait_ips(NS, "asked", 1).await, [ip("192.0.2.9")]);
    assert_eq!(c.wait_ips(NS, "pinned", 1).await, [ip("198.51.100.0")]);
    assert_eq!(c.wait_ips(NS, "legacy", 1).await, [ip("192.0.2.7")]);
    assert_eq!(c.wait_ips(NS, "metallb", 1).await, [ip("198.51.100.5")]);
    c.wait_event(
        NS,
        "legacy",
        "LoadBalancerIPDeprecated",
        "routelb.io/addresses",
    )
    .await;
    // A taken address is refused with the holder's name; the owner keeps it.
    c.service(
        NS,
        "thief",
        json!({"metadata": {"annotations": {"routelb.io/addresses": "192.0.2.9"}}}),
    )
    .await;
    c.wait_event(
        NS,
        "thief",
        "AllocationFailed",
        "192.0.2.9 is in use: default/asked holds it",
    )
    .await;
    assert!(c.ips(NS, "thief").await.is_empty());
    // Outside every pool.
    c.service(
        NS,
        "far",
        json!({"metadata": {"annotations": {"routelb.io/addresses": "203.0.113.1"}}}),
    )
    .await;
    c.wait_event(NS, "far", "AllocationFailed", "outside every AddressPool")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_is_accepted_and_each_rejection_is_explained() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/28"]})).await;
    let shared = |name: &str, key: &str, proto: &str, port: u16, policy: &str| {
        json!({
            "metadata": {"annotations": {"routelb.io/allow-shared-ip": key, "routelb.io/addresses": "192.0.2.5"}, "name": name},
            "spec": {"ports": [{"port": port, "protocol": proto}], "externalTrafficPolicy": policy, "selector": {"app": "dns"}}
        })
    };
    c.service(
        NS,
        "dns-udp",
        shared("dns-udp", "dns", "UDP", 53, "Cluster"),
    )
    .await;
    c.service(
        NS,
        "dns-tcp",
        shared("dns-tcp", "dns", "TCP", 53, "Cluster"),
    )
    .await;
    assert_eq!(c.wait_ips(NS, "dns-udp", 1).await, [ip("192.0.2.5")]);
    assert_eq!(c.wait_ips(NS, "dns-tcp", 1).await, [ip("192.0.2.5")]);
    for (name, spec, reason) in [
        (
            "port-clash",
            shared("port-clash", "dns", "UDP", 53, "Cluster"),
            "already uses port 53/UDP",
        ),
        (
            "other-key",
            shared("other-key", "web", "TCP", 8053, "Cluster"),
            "with sharing key \"dns\", not \"web\"",
        ),
        (
            "local",
            shared("local", "dns", "TCP", 853, "Local"),
            "sharing needs both Cluster",
        ),
    ] {
        c.service(NS, name, spec).await;
        c.wait_event(NS, name, "AllocationFailed", reason).await;
    }
    c.service(
        NS,
        "no-key",
        json!({"metadata": {"annotations": {"routelb.io/addresses": "192.0.2.5"}}}),
    )
    .await;
    c.wait_event(
        NS,
        "no-key",
        "AllocationFailed",
        "set routelb.io/allow-shared-ip: \"dns\"",
    )
    .await;
    // Automatic allocation with a key joins the key's address.
    c.service(NS, "dns-dot", json!({"metadata": {"annotations": {"routelb.io/allow-shared-ip": "dns"}}, "spec": {"ports": [{"port": 853}]}})).await;
    assert_eq!(c.wait_ips(NS, "dns-dot", 1).await, [ip("192.0.2.5")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_follows_ip_family_policy() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool(
        "dual",
        json!({"addresses": ["192.0.2.0/30", "2001:db8::/126"]}),
    )
    .await;
    c.service(NS, "single", json!({})).await;
    c.service(NS, "single6", json!({"spec": {"ipFamilies": ["IPv6"]}}))
        .await;
    c.service(
        NS,
        "prefer",
        json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
    )
    .await;
    c.service(
        NS,
        "require",
        json!({"spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}}),
    )
    .await;
    assert!(c.wait_ips(NS, "single", 1).await[0].is_ipv4());
    assert!(c.wait_ips(NS, "single6", 1).await[0].is_ipv6());
    let prefer = c.wait_ips(NS, "prefer", 2).await;
    assert!(prefer[0].is_ipv4() && prefer[1].is_ipv6());
    assert_eq!(c.wait_ips(NS, "require", 2).await.len(), 2);
    // A v4-only pool cannot serve RequireDualStack, but serves PreferDualStack.
    c.pool("v4", json!({"addresses": ["198.51.100.0/30"]}))
        .await;
    c.service(NS, "require-v4", json!({"metadata": {"annotations": {"routelb.io/pool": "v4"}}, "spec": {"ipFamilyPolicy": "RequireDualStack"}})).await;
    c.wait_event(
        NS,
        "require-v4",
        "AllocationFailed",
        "no IPv6 addresses in the pools that may serve this Service (v4)",
    )
    .await;
    c.service(NS, "prefer-v4", json!({"metadata": {"annotations": {"routelb.io/pool": "v4"}}, "spec": {"ipFamilyPolicy": "PreferDualStack"}})).await;
    assert_eq!(c.wait_ips(NS, "prefer-v4", 1).await, [ip("198.51.100.0")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_classes_are_ignored_and_leaving_routelb_releases() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/31"]})).await;
    c.service(
        NS,
        "theirs",
        json!({"spec": {"loadBalancerClass": "metallb.io/metallb"}}),
    )
    .await;
    c.service(
        NS,
        "ours",
        json!({"spec": {"loadBalancerClass": "routelb.io/routelb"}}),
    )
    .await;
    assert_eq!(c.wait_ips(NS, "ours", 1).await, [ip("192.0.2.0")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.ips(NS, "theirs").await.is_empty());
    assert!(
        c.events(NS, "theirs").await.is_empty(),
        "no Events on foreign Services"
    );
    // Switching to ClusterIP releases the address and clears the status.
    c.services(NS)
        .patch(
            "ours",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    c.wait_event(
        NS,
        "ours",
        "AddressReleased",
        "no longer of type LoadBalancer",
    )
    .await;
    eventually("status cleared", || async {
        let s = c.get(NS, "ours").await;
        (routelb_core::service::ingress_ips(&s).is_empty()
            && routelb_core::service::allocated_from(&s).is_none())
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_makes_services_wait_and_a_release_serves_the_oldest() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("tiny", json!({"addresses": ["192.0.2.10-192.0.2.11"]}))
        .await;
    c.service(NS, "s1", json!({})).await;
    c.service(NS, "s2", json!({})).await;
    c.wait_ips(NS, "s1", 1).await;
    c.wait_ips(NS, "s2", 1).await;
    c.service(NS, "waiting", json!({})).await;
    c.wait_event(
        NS,
        "waiting",
        "AllocationFailed",
        "no free IPv4 address in tiny",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.service(NS, "later", json!({})).await;
    c.wait_event(NS, "later", "AllocationFailed", "exhausted")
        .await;
    let freed = c.ips(NS, "s1").await;
    c.services(NS)
        .delete("s1", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        c.wait_ips(NS, "waiting", 1).await,
        freed,
        "the oldest waiting Service gets it"
    );
    assert!(c.ips(NS, "later").await.is_empty());
    // A new pool serves the rest.
    c.pool("more", json!({"addresses": ["198.51.100.1"]})).await;
    assert_eq!(c.wait_ips(NS, "later", 1).await, [ip("198.51.100.1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_and_touches_nothing_else() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/29"]})).await;
    c.service(NS, "good", json!({})).await;
    let good = c.wait_ips(NS, "good", 1).await;
    let good_rv = c.get(NS, "good").await.resource_version();
    for (name, extra, reason, text) in [
        (
            "bad-ip",
            json!({"metadata": {"annotations": {"routelb.io/addresses": "192.0.2.300"}}}),
            "InvalidAnnotation",
            "is not a list of IP addresses",
        ),
        (
            "no-pool",
            json!({"metadata": {"annotations": {"routelb.io/pool": "missing"}}}),
            "AllocationFailed",
            "AddressPool \"missing\" does not exist",
        ),
        (
            "wrong-family",
            json!({"metadata": {"annotations": {"routelb.io/addresses": "2001:db8::1"}}}),
            "AllocationFailed",
            "is IPv6 but the Service's ipFamilyPolicy is SingleStack",
        ),
        (
            "both",
            json!({"metadata": {"annotations": {"routelb.io/addresses": "192.0.2.3"}}, "spec": {"loadBalancerIP": "192.0.2.4"}}),
            "InvalidAnnotation",
            "keep only the annotation",
        ),
        (
            "disagree",
            json!({"metadata": {"annotations": {"metallb.io/address-pool": "a", "purelb.io/service-group": "b"}}}),
            "InvalidAnnotation",
            "disagree",
        ),
    ] {
        c.service(NS, name, extra).await;
        c.wait_event(NS, name, reason, text).await;
        assert!(c.ips(NS, name).await.is_empty());
    }
    // An invalid pool is reported on the pool and does not stop the others.
    c.pool("broken", json!({"addresses": ["192.0.2.0/33"]}))
        .await;
    c.wait_pool("broken", "broken pool flagged", |p| {
        condition(p, "Ready").is_some_and(|c| c.0 == "False" && c.1 == "InvalidSpec")
    })
    .await;
    c.service(NS, "after", json!({})).await;
    c.wait_ips(NS, "after", 1).await;
    assert_eq!(c.ips(NS, "good").await, good);
    assert_eq!(
        c.get(NS, "good").await.resource_version(),
        good_rv,
        "other Services untouched"
    );
    // Fixing the annotation lets the Service through.
    c.services(NS)
        .patch(
            "bad-ip",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"routelb.io/addresses": "192.0.2.6"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(c.wait_ips(NS, "bad-ip", 1).await, [ip("192.0.2.6")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_conflict_shrink_disable_and_vanish_without_moving_addresses_needlessly() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("old", json!({"addresses": ["192.0.2.0/29"]})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation times are in seconds
    c.pool(
        "new",
        json!({"addresses": ["192.0.2.4/30", "198.51.100.0/30"]}),
    )
    .await;
    let new = c
        .wait_pool("new", "the newer overlapping pool in conflict", |p| {
            condition(p, "Conflict").is_some_and(|c| c.0 == "True")
        })
        .await;
    assert!(
        condition(&new, "Conflict")
            .unwrap()
            .2
            .contains("overlaps the older AddressPool old")
    );
    assert_eq!(condition(&new, "Ready").unwrap().0, "False");
    for i in 0..3 {
        c.service(NS, &format!("s{i}"), json!({})).await;
        assert_eq!(
            c.wait_ips(NS, &format!("s{i}"), 1).await,
            [ip(&format!("192.0.2.{i}"))]
        );
    }
    // Shrinking the pool keeps s2's address and flags it; it also ends the overlap.
    c.edit_pool("old", json!({"addresses": ["192.0.2.0/31"]}))
        .await;
    c.wait_event(
        NS,
        "s2",
        "AddressOutsidePool",
        "no longer contains 192.0.2.2",
    )
    .await;
    c.wait_pool("old", "uncovered flagged", |p| {
        condition(p, "Uncovered").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(c.ips(NS, "s2").await, [ip("192.0.2.2")]);
    c.wait_pool("new", "the conflict resolved", |p| {
        condition(p, "Conflict").is_some_and(|c| c.0 == "False")
    })
    .await;
    // Disabling stops new allocations only.
    c.edit_pool("old", json!({"disabled": true})).await;
    c.service(
        NS,
        "s3",
        json!({"metadata": {"annotations": {"routelb.io/pool": "old"}}}),
    )
    .await;
    c.wait_event(NS, "s3", "AllocationFailed", "AddressPool old is disabled")
        .await;
    assert_eq!(c.ips(NS, "s0").await, [ip("192.0.2.0")]);
    // Deleting the pool re-allocates its Services from the others, with an explanation.
    c.delete_pool("old").await;
    for i in 0..3 {
        c.wait_event(
            NS,
            &format!("s{i}"),
            "AddressAssigned",
            "AddressPool old was deleted",
        )
        .await;
    }
    let moved = c.wait_ips(NS, "s0", 1).await;
    assert!(moved[0] >= ip("192.0.2.4"), "{moved:?}");
    c.wait_event(
        NS,
        "s3",
        "AllocationFailed",
        "AddressPool \"old\" does not exist",
    )
    .await;
    let mut all = BTreeSet::new();
    for i in 0..3 {
        all.insert(c.ips(NS, &format!("s{i}")).await[0]);
    }
    assert_eq!(all.len(), 3, "no address handed out twice: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_service_selectors_decide_the_pool() {
    let (c, _a) = cluster_with_allocator().await;
    c.namespace("prod", &[("env", "prod")]).await;
    c.namespace("dev", &[]).await;
    c.pool("prod-only", json!({"addresses": ["192.0.2.0/30"], "namespaceSelector": {"matchLabels": {"env": "prod"}}})).await;
    c.service("prod", "web", json!({})).await;
    c.service("dev", "web", json!({})).await;
    assert_eq!(c.wait_ips("prod", "web", 1).await, [ip("192.0.2.0")]);
    c.wait_event(
        "dev",
        "web",
        "AllocationFailed",
        "namespaceSelector \"env=prod\" does not match",
    )
    .await;
    // Labelling the namespace lets the waiting Service through.
    c.namespace("dev", &[("env", "prod")]).await;
    assert_eq!(c.wait_ips("dev", "web", 1).await, [ip("192.0.2.1")]);
}

async fn snapshot(c: &Cluster) -> BTreeMap<String, (Vec<std::net::IpAddr>, Option<String>)> {
    c.services(NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| {
            (
                s.name_any(),
                (routelb_core::service::ingress_ips(s), s.resource_version()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_1000_services_changes_nothing() {
    let c = Cluster::new().await;
    c.pool("big", json!({"addresses": ["10.0.0.0/20"]})).await;
    let a = start_allocator(&c, allocator_options("first"));
    futures::stream::iter(0..1000)
        .for_each_concurrent(16, |i| {
            let c = &c;
            async move {
                c.service(NS, &format!("svc-{i}"), json!({})).await;
            }
        })
        .await;
    eventually("1000 Services assigned", || async {
        let snap = snapshot(&c).await;
        (snap.values().filter(|(ips, _)| !ips.is_empty()).count() == 1000).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = snapshot(&c).await;
    let unique: BTreeSet<_> = before.values().map(|(ips, _)| ips.clone()).collect();
    assert_eq!(unique.len(), 1000, "no duplicates");
    a.stop().await;
    let b = start_allocator(&c, allocator_options("second"));
    b.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        snapshot(&c).await,
        before,
        "no Service was written: same addresses, same resourceVersions"
    );
    // New work still flows after the restart.
    c.service(NS, "after-restart", json!({})).await;
    c.wait_ips(NS, "after-restart", 1).await;
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_failover_without_duplicates() {
    let c = Cluster::new().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/28"]})).await;
    let kubeconfig = c.kubeconfig();
    let kc = kubeconfig.to_str().unwrap();
    let replica = |id: &str| Proc::allocator(kc, id, "0.2");
    let mut replicas = BTreeMap::from([
        ("r1".to_string(), replica("r1")),
        ("r2".to_string(), replica("r2")),
    ]);
    for i in 0..4 {
        c.service(NS, &format!("s{i}"), json!({})).await;
    }
    let mut before = Vec::new();
    for i in 0..4 {
        before.push(c.wait_ips(NS, &format!("s{i}"), 1).await);
    }
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "routelb-system");
    let holder = leases
        .get("routelb-allocator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    // Only the leader writes: every Event comes from it.
    let reporters: BTreeSet<String> = {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), NS);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reporting_instance)
            .collect()
    };
    assert_eq!(reporters, BTreeSet::from([holder.clone()]));
    replicas.get_mut(&holder).unwrap().kill();
    let started = std::time::Instant::now();
    c.service(NS, "after-failover", json!({})).await;
    let got = c.wait_ips(NS, "after-failover", 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "takeover took {:?}",
        started.elapsed()
    );
    let new_holder = leases
        .get("routelb-allocator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder);
    for (i, ips) in before.iter().enumerate() {
        assert_eq!(
            &c.ips(NS, &format!("s{i}")).await,
            ips,
            "s{i} kept its address"
        );
    }
    assert!(!before.iter().any(|b| b == &got), "no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_forced_watch_close_and_compaction() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/28"]})).await;
    c.service(NS, "s0", json!({})).await;
    c.wait_ips(NS, "s0", 1).await;
    c.server.faults().close_watches();
    c.service(NS, "s1", json!({})).await;
    c.wait_ips(NS, "s1", 1).await;
    // The allocator's watches come back from a compacted version: 410, relist.
    c.server.faults().delay_watches(Duration::from_millis(800));
    c.server.faults().close_watches();
    c.service(NS, "s2", json!({})).await;
    c.services(NS)
        .delete("s0", &DeleteParams::default())
        .await
        .unwrap();
    c.server.compact();
    c.server.faults().delay_watches(Duration::ZERO);
    c.wait_ips(NS, "s2", 1).await;
    // s0's deletion, missed by the watch, was noticed on the relist: its address is free.
    c.service(
        NS,
        "s3",
        json!({"metadata": {"annotations": {"routelb.io/addresses": "192.0.2.0"}}}),
    )
    .await;
    assert_eq!(c.wait_ips(NS, "s3", 1).await, [ip("192.0.2.0")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_existing_addresses_on_start_instead_of_reshuffling() {
    let c = Cluster::new().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/28"]})).await;
    // A Service that MetalLB (or an interrupted routelb write) left with an address.
    c.service(NS, "migrated", json!({})).await;
    c.services(NS)
        .patch_status(
            "migrated",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}})),
        )
        .await
        .unwrap();
    c.service(NS, "fresh", json!({})).await;
    let _a = start_allocator(&c, allocator_options("adopter"));
    assert_eq!(c.wait_ips(NS, "migrated", 1).await, [ip("192.0.2.9")]);
    assert_eq!(c.wait_ips(NS, "fresh", 1).await, [ip("192.0.2.0")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_service_keeps_its_address_until_a_pool_adopts_it() {
    // A Service another load balancer served: an address in its status, no annotation.
    let c = Cluster::new().await;
    c.pool("public", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    c.service(NS, "old", json!({})).await;
    c.services(NS)
        .patch_status(
            "old",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}),
            ),
        )
        .await
        .unwrap();
    let a = start_allocator(&c, allocator_options("migration"));
    c.wait_event(NS, "old", "AddressNotInPool", "198.51.100.7")
        .await;
    // A Service created meanwhile is served; the migrated one is left as it is.
    c.service(NS, "new", json!({})).await;
    assert_eq!(c.wait_ips(NS, "new", 1).await, [ip("192.0.2.0")]);
    let old = c.get(NS, "old").await;
    assert_eq!(c.ips(NS, "old").await, [ip("198.51.100.7")]);
    assert!(!old.annotations().contains_key("routelb.io/allocated-from"));
    // The pool for the old range adopts it, address unchanged.
    c.pool("migrated", json!({"addresses": ["198.51.100.0/24"]}))
        .await;
    c.wait_event(NS, "old", "AddressAssigned", "Adopted 198.51.100.7")
        .await;
    let old = eventually("the allocated-from annotation", || async {
        let s = c.get(NS, "old").await;
        s.annotations()
            .contains_key("routelb.io/allocated-from")
            .then_some(s)
    })
    .await;
    assert_eq!(old.annotations()["routelb.io/allocated-from"], "migrated");
    assert_eq!(c.ips(NS, "old").await, [ip("198.51.100.7")]);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_showing_another_services_address_is_cleared_running_or_restarted() {
    let c = Cluster::new().await;
    c.pool("one", json!({"addresses": ["192.0.2.1"]})).await;
    let alloc = start_allocator(&c, allocator_options("a1"));
    c.service(NS, "sa", json!({})).await;
    assert_eq!(c.wait_ips(NS, "sa", 1).await, [ip("192.0.2.1")]);
    c.service(NS, "sb", json!({})).await;
    c.wait_event(NS, "sb", "AllocationFailed", "").await;
    let forge = |annotated: bool| {
        let c = &c;
        async move {
            let api = c.services(NS);
            if annotated {
                let patch =
                    json!({"metadata": {"annotations": {"routelb.io/allocated-from": "one"}}});
                api.patch("sb", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .unwrap();
            }
            let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
            api.patch_status("sb", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    // The running leader sees the edit.
    forge(false).await;
    c.wait_event(NS, "sb", "AddressConflict", "default/sa")
        .await;
    eventually("sb's status cleared", || async {
        c.ips(NS, "sb").await.is_empty().then_some(())
    })
    .await;
    // Again, annotation included, while no allocator runs: the next one clears it.
    alloc.stop().await;
    forge(true).await;
    let alloc = start_allocator(&c, allocator_options("a2"));
    eventually(
        "sb's status and annotation cleared by the new leader",
        || async {
            let sb = c.get(NS, "sb").await;
            (routelb_core::service::ingress_ips(&sb).is_empty()
                && routelb_core::service::allocated_from(&sb).is_none())
            .then_some(())
        },
    )
    .await;
    let conflicts = c
        .events(NS, "sb")
        .await
        .into_iter()
        .filter(|(r, _)| r == "AddressConflict")
        .count();
    assert!(conflicts >= 2, "each clearing is said");
    assert_eq!(
        c.ips(NS, "sa").await,
        [ip("192.0.2.1")],
        "sa keeps its address"
    );
    alloc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_key_is_its_namespaces_own_unless_both_opt_in() {
    let (c, _a) = cluster_with_allocator().await;
    c.pool("a", json!({"addresses": ["192.0.2.0/28"]})).await;
    c.namespace("tenant-a", &[]).await;
    c.namespace("tenant-b", &[]).await;
    let keyed = |port: u16, across: bool| {
        let mut annotations =
            json!({"routelb.io/allow-shared-ip": "shared", "routelb.io/addresses": "192.0.2.5"});
        if across {
            annotations["routelb.io/share-across-namespaces"] = json!("true");
        }
        json!({"metadata": {"annotations": annotations}, "spec": {"ports": [{"port": port}]}})
    };
    c.service("tenant-a", "victim", keyed(80, false)).await;
    assert_eq!(c.wait_ips("tenant-a", "victim", 1).await, [ip("192.0.2.5")]);
    // Copying the key from another namespace gets nothing.
    c.service("tenant-b", "copycat", keyed(81, false)).await;
    c.wait_event(
        "tenant-b",
        "copycat",
        "AllocationFailed",
        "its namespace's own",
    )
    .await;
    assert!(c.ips("tenant-b", "copycat").await.is_empty());
    // Services that both opt in share across namespaces.
    let mut a = keyed(82, true);
    a["metadata"]["annotations"]["routelb.io/addresses"] = json!("192.0.2.9");
    c.service("tenant-a", "open-a", a).await;
    let shared = c.wait_ips("tenant-a", "open-a", 1).await;
    let mut b = keyed(83, true);
    b["metadata"]["annotations"]["routelb.io/addresses"] = json!(shared[0].to_string());
    c.service("tenant-b", "open-b", b).await;
    assert_eq!(c.wait_ips("tenant-b", "open-b", 1).await, shared);
}
