//! Lease-based leader election between contenders, against the fake API server.

use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use routelb::k8s::leader::{LeaderElector, Timing};
use tokio::sync::watch;

const TIMING: Timing = Timing {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(200),
};

struct Contender {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn contender(api: &Api<Lease>, identity: &str) -> Contender {
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let elector = LeaderElector::new(api.clone(), "routelb-allocator", identity, TIMING);
    let task = tokio::spawn(elector.run(leading_tx, stop_rx));
    Contender {
        leading,
        stop,
        task,
    }
}

/// Samples both contenders until `until` holds, asserting they never both lead.
async fn watch_pair(
    a: &watch::Receiver<bool>,
    b: &watch::Receiver<bool>,
    until: impl Fn(bool, bool) -> bool,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (la, lb) = (*a.borrow(), *b.borrow());
        assert!(!(la && lb), "two leaders at once");
        if until(la, lb) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no outcome within {limit:?} (a={la}, b={lb})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_and_failover_when_the_holder_stops_renewing() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(server.client().unwrap(), "kube-system");
    let a = contender(&api, "replica-a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = contender(&api, "replica-b");
    watch_pair(&a.leading, &b.leading, |la, _| la, Duration::from_secs(5)).await;
    // Stay stable for a while: b never leads while a renews.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        assert!(*a.leading.borrow() && !*b.leading.borrow());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a crashes: no release, no more renewals, and no more belief in anything.
    a.task.abort();
    let crashed = watch::channel(false).1;
    let took = watch_pair(&crashed, &b.leading, |_, lb| lb, Duration::from_secs(10)).await;
    assert!(
        took <= TIMING.lease_duration + Duration::from_secs(1),
        "failover took {took:?}"
    );
    let lease = api.get("routelb-allocator").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    // A graceful stop hands over at once.
    let c = contender(&api, "replica-c");
    b.stop.send_replace(true);
    b.task.await.unwrap();
    let took = watch_pair(&b.leading, &c.leading, |_, lc| lc, Duration::from_secs(5)).await;
    assert!(
        took < TIMING.lease_duration,
        "graceful handover took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_steps_down() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(server.client().unwrap(), "kube-system");
    let a = contender(&api, "replica-a");
    let b = contender(&api, "replica-b");
    let (la, _) = {
        watch_pair(
            &a.leading,
            &b.leading,
            |la, lb| la || lb,
            Duration::from_secs(5),
        )
        .await;
        (*a.leading.borrow(), *b.leading.borrow())
    };
    let (leader, _follower) = if la { (&a, &b) } else { (&b, &a) };
    // Every request fails: nobody can renew; the leader steps down by its deadline.
    server.faults().fail_next(u32::MAX, 500);
    let start = Instant::now();
    while *leader.leading.borrow() {
        assert!(
            start.elapsed() < TIMING.renew_deadline + Duration::from_secs(2),
            "leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.faults().fail_next(0, 500);
    watch_pair(
        &a.leading,
        &b.leading,
        |la, lb| la || lb,
        Duration::from_secs(10),
    )
    .await;
}

/// A leader frozen past its Lease (SIGSTOP) with work queued, resumed after the other
/// replica took over and changed things: it must write nothing, Events included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_writes_nothing_when_it_resumes() {
    use crate::support::*;
    use serde_json::json;

    let c = Cluster::new().await;
    c.pool(
        "two",
        json!({"addresses": ["192.0.2.1-192.0.2.2"], "autoAssign": false}),
    )
    .await;
    let kc = c.kubeconfig();
    let kc = kc.to_str().unwrap();
    let replica = |id: &str| Proc::allocator(kc, id, "0.1");
    let replicas = [
        ("alloc-a", replica("alloc-a")),
        ("alloc-b", replica("alloc-b")),
    ];
    let pinned = json!({"metadata": {"annotations": {"routelb.io/pool": "two"}}});
    let signal = |sig: &str, pid: u32| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
    };
    for round in 0..3 {
        let name = |n: &str| format!("{n}-{round}");
        c.service("default", &name("h1"), pinned.clone()).await;
        c.service("default", &name("h2"), pinned.clone()).await;
        c.wait_ips("default", &name("h1"), 1).await;
        c.wait_ips("default", &name("h2"), 1).await;
        // z and a wait, created within the same second: the replicas may order them
        // differently.
        c.service("default", &name("z"), pinned.clone()).await;
        c.service("default", &name("a"), pinned.clone()).await;
        for w in ["z", "a"] {
            c.wait_event("default", &name(w), "AllocationFailed", "")
                .await;
        }
        let leader = eventually("a leader", || lease_holder(&c)).await;
        let (_, frozen) = replicas.iter().find(|(id, _)| *id == leader).unwrap();
        signal("-STOP", frozen.pid());
        eventually("the other replica to take over", || async {
            lease_holder(&c).await.filter(|h| *h != leader)
        })
        .await;
        let freed = c.ips("default", &name("h1")).await[0];
        let dupes = DuplicateWatch::start(&c.client);
        c.services("default")
            .delete(&name("h1"), &Default::default())
            .await
            .unwrap();
        let winner = eventually("the freed address to go to a waiting Service", || async {
            for w in ["z", "a"] {
                if c.ips("default", &name(w)).await == [freed] {
                    return Some(name(w));
                }
            }
            None
        })
        .await;
        let loser = if winner == name("z") {
            name("a")
        } else {
            name("z")
        };
        signal("-CONT", frozen.pid());
        // The resumed replica works through its backlog, then learns it lost.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let seen = dupes.stop().await;
        assert!(
            seen.is_empty(),
            "round {round}: an address on two Services: {seen:?}"
        );
        assert!(
            c.ips("default", &loser).await.is_empty(),
            "round {round}: {loser} got an address"
        );
        let assigned: Vec<(String, String)> = c
            .events("default", &loser)
            .await
            .into_iter()
            .filter(|(r, _)| r == "AddressAssigned")
            .collect();
        assert!(
            assigned.is_empty(),
            "round {round}: the frozen leader said it assigned: {assigned:?}"
        );
        for n in ["h2", "z", "a"] {
            let _ = c
                .services("default")
                .delete(&name(n), &Default::default())
                .await;
        }
    }
}
