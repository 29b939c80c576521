//! Probes and metrics of the real binaries, moving with what they do.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const NS: &str = "default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_probes_and_metrics_follow_what_it_does() {
    let c = Cluster::new().await;
    c.pool("tiny", json!({"addresses": ["192.0.2.10"]})).await;
    let port = free_port();
    let kc = c.kubeconfig();
    // Started while the API server is down: alive, not ready.
    c.server.faults().go_offline(Duration::from_secs(3));
    let _alloc = Proc::routelb(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "allocator",
        "--identity",
        "obs",
        "--lease-duration",
        "3",
        "--health-addr",
        &format!("127.0.0.1:{port}"),
        "--status-interval",
        "0.1",
    ]);
    let (code, _) = eventually("healthz", || async {
        Some(http_get(port, "/healthz").await).filter(|(c, _)| *c != 0)
    })
    .await;
    assert_eq!(code, 200);
    let (code, detail) = http_get(port, "/readyz").await;
    assert_eq!(code, 503, "not ready before its caches synced: {detail}");
    assert!(detail.contains("waiting for"), "{detail}");
    eventually("ready once the API server is back", || async {
        (http_get(port, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    let scrape = || async move { http_get(port, "/metrics").await.1 };
    let text = scrape().await;
    assert_eq!(
        metric(
            &text,
            "routelb_allocation_failures_total",
            &[("reason", "out_of_ips")]
        ),
        Some(0.0),
        "{text}"
    );
    c.service(NS, "first", json!({})).await;
    c.wait_ips(NS, "first", 1).await;
    eventually("an allocation counted", || async {
        let t = scrape().await;
        (metric(&t, "routelb_allocations_total", &[("pool", "tiny")]) == Some(1.0)
            && metric(
                &t,
                "routelb_pool_addresses",
                &[("pool", "tiny"), ("family", "ipv4"), ("state", "available")],
            ) == Some(0.0))
        .then_some(())
    })
    .await;
    c.service(NS, "second", json!({})).await;
    eventually("the exhausted pool counted", || async {
        let t = scrape().await;
        (metric(
            &t,
            "routelb_allocation_failures_total",
            &[("reason", "out_of_ips")],
        ) == Some(1.0)
            && metric(&t, "routelb_services_pending", &[]) == Some(1.0))
        .then_some(())
    })
    .await;
    let t = scrape().await;
    assert_eq!(metric(&t, "routelb_leader", &[]), Some(1.0));
    // A watch that comes back from a compacted version fails (410) and is restarted.
    c.server.faults().delay_watches(Duration::from_millis(500));
    c.server.faults().close_watches();
    c.service(NS, "third", json!({})).await;
    c.server.compact();
    c.server.faults().delay_watches(Duration::ZERO);
    eventually("a watch restart counted", || async {
        metric(
            &scrape().await,
            "routelb_watch_restarts_total",
            &[("resource", "Service")],
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_become_a_series_and_changed_notes_new_events() {
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, ListParams};
    use routelb::k8s::events::{Note, Publisher};
    use routelb_core::ipam::ServiceKey;
    use routelb_core::report::Regarding;

    let c = Cluster::new().await;
    let publisher = Publisher::start(c.client.clone(), "routelb.io/test", "t-1", None);
    let note = |text: &str| Note {
        regarding: Regarding::service_key(&ServiceKey::new(NS, "web")),
        warning: true,
        reason: "AllocationFailed".into(),
        action: "Allocate".into(),
        note: text.into(),
    };
    let api: Api<Event> = Api::namespaced(c.client.clone(), NS);
    let list = || async {
        let mut l = api
            .list(&ListParams::default().fields("regarding.name=web"))
            .await
            .unwrap()
            .items;
        l.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        l
    };
    for _ in 0..3 {
        publisher.publish(note("AddressPool tiny has no free address"));
        // One at a time: the queue publishes concurrently.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = eventually("one Event counted three times", || async {
        let l = list().await;
        (l.len() == 1 && l[0].series.as_ref().is_some_and(|s| s.count == 3)).then_some(l)
    })
    .await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    // Another note about the same object and reason is news, not a repetition.
    publisher.publish(note("AddressPool tiny is disabled"));
    let events = eventually("a second Event", || async {
        Some(list().await).filter(|l| l.len() == 2)
    })
    .await;
    assert_eq!(
        events[1].note.as_deref(),
        Some("AddressPool tiny is disabled")
    );
    assert!(events[1].series.is_none());
}
