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
