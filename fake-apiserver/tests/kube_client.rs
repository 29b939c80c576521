//! The real kube client and kube-runtime against the fake API server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn server() -> (FakeApiServer, Client) {
    let opts = Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    };
    let server = FakeApiServer::start_on("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let client = server.client().unwrap();
    (server, client)
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": {"v": "1"}
    }))
    .unwrap()
}

fn lb(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
    }))
    .unwrap()
}

/// A JSON merge patch of one object.
async fn merge<K>(api: &Api<K>, name: &str, patch: Value) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_defaults_conflicts_and_finalizers() {
    let (_server, client) = server().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = svcs
        .create(&PostParams::default(), &lb("web"))
        .await
        .unwrap();
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(spec.ip_families.unwrap(), ["IPv4"]);
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert!(spec.cluster_ip.is_some());
    assert!(spec.ports.unwrap()[0].node_port.is_some());
    assert!(created.uid().is_some() && created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));

    let err = svcs
        .create(&PostParams::default(), &lb("web"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );

    // Replace with a stale resourceVersion: 409 Conflict.
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.labels_mut().insert("a".into(), "b".into());
    let fresh = svcs
        .replace("web", &PostParams::default(), &fresh)
        .await
        .unwrap();
    stale.labels_mut().insert("a".into(), "c".into());
    let err = svcs
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );
    assert_eq!(
        fresh.metadata.generation,
        Some(1),
        "label changes do not bump generation"
    );

    // Status subresource: main writes ignore status; status writes change only status.
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}, "spec": {"type": "ClusterIP"}});
    let patched = svcs
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    let ingress = patched
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.10"));
    let mut main = svcs.get("web").await.unwrap();
    main.status = None;
    let kept = svcs
        .replace("web", &PostParams::default(), &main)
        .await
        .unwrap();
    assert!(
        kept.status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_some()
    );

    // generateName, and namespaces must exist.
    let named: Service = serde_json::from_value(
        json!({"metadata": {"generateName": "gen-"}, "spec": {"ports": [{"port": 1}]}}),
    )
    .unwrap();
    let named = svcs.create(&PostParams::default(), &named).await.unwrap();
    assert!(named.name_any().starts_with("gen-") && named.name_any().len() == 9);
    let missing: Api<Service> = Api::namespaced(client.clone(), "nope");
    let err = missing
        .create(&PostParams::default(), &lb("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err}"
    );

    // Finalizers defer deletion; removing the last one completes it.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut with_finalizer = cm("held", &[]);
    with_finalizer.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &with_finalizer)
        .await
        .unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    merge(&cms, "held", json!({"metadata": {"finalizers": null}})).await;
    assert!(cms.get_opt("held").await.unwrap().is_none());

    // Namespaces get their defaults and take their contents with them.
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(
        ns.labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("team")
    );
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let team: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    team.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    assert!(
        team.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patch_type() {
    let (_server, client) = server().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &lb("p")).await.unwrap();
    let merge = json!({"metadata": {"annotations": {"routelb.io/pool": "a"}}});
    svcs.patch("p", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    let json_patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/labels", "value": {"x": "1"}},
        {"op": "test", "path": "/metadata/annotations/routelb.io~1pool", "value": "a"}
    ]))
    .unwrap();
    svcs.patch("p", &PatchParams::default(), &Patch::<()>::Json(json_patch))
        .await
        .unwrap();
    let strategic = json!({"spec": {"ports": [{"port": 443, "protocol": "TCP"}]}});
    let s = svcs
        .patch("p", &PatchParams::default(), &Patch::Strategic(&strategic))
        .await
        .unwrap();
    let ports: Vec<i32> = s
        .spec
        .clone()
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [80, 443], "ports merge by port");
    assert_eq!(s.labels().get("x").map(String::as_str), Some("1"));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "other"}]))
            .unwrap();
    let err = svcs
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );

    // Server-side apply creates a missing object and needs a field manager.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}});
    let created = cms
        .patch(
            "applied",
            &PatchParams::apply("test"),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(created.data.unwrap()["a"], "1");
    let again = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"b": "2"}});
    let merged = cms
        .patch(
            "applied",
            &PatchParams::apply("test"),
            &Patch::Apply(&again),
        )
        .await
        .unwrap();
    assert_eq!(merged.data.unwrap().len(), 2);
    let err = cms
        .patch("applied", &PatchParams::default(), &Patch::Apply(&again))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_creates_updates_and_deletes_in_order() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut seen: Vec<String> = Vec::new();
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cms.create(&PostParams::default(), &cm("a", &[]))
                .await
                .unwrap();
            merge(&cms, "a", json!({"data": {"v": "2"}})).await;
            cms.delete("a", &DeleteParams::default()).await.unwrap();
        })
    };
    while seen.len() < 5 {
        let ev = tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let label = match ev {
            watcher::Event::Init => "init".to_string(),
            watcher::Event::InitApply(o) => format!("init:{}", o.name_any()),
            watcher::Event::InitDone => "done".to_string(),
            watcher::Event::Apply(o) => format!("apply:{}:{}", o.name_any(), o.data.unwrap()["v"]),
            watcher::Event::Delete(o) => format!("delete:{}", o.name_any()),
        };
        seen.push(label);
    }
    while seen.len() < 6 {
        if let Some(watcher::Event::Delete(o)) = tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            seen.push(format!("delete:{}", o.name_any()));
        }
    }
    writer.await.unwrap();
    assert_eq!(
        seen,
        [
            "init",
            "init:before",
            "done",
            "apply:a:1",
            "apply:a:2",
            "delete:a"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_converges_after_watch_close_and_compaction() {
    let (server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let relists = Arc::new(AtomicUsize::new(0));
    let counted = relists.clone();
    let rf = reflector(writer, watcher(cms.clone(), watcher::Config::default()))
        .default_backoff()
        .for_each(move |ev| {
            if matches!(ev, Ok(watcher::Event::Init)) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            futures::future::ready(())
        });
    tokio::spawn(rf);
    for i in 0..20 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}"), &[]))
            .await
            .unwrap();
    }
    eventually("20 objects in the store", || async {
        reader.state().len() == 20
    })
    .await;
    // A forced close: the watcher resumes from its resourceVersion, no relist.
    server.faults().close_watches();
    for i in 20..30 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}"), &[]))
            .await
            .unwrap();
    }
    eventually("30 objects after a forced close", || async {
        reader.state().len() == 30
    })
    .await;
    assert_eq!(relists.load(Ordering::SeqCst), 1);
    // Compaction while the watcher is away: its resume gets 410 and it relists.
    server.faults().delay_watches(Duration::from_millis(500));
    server.faults().close_watches();
    for i in 0..10 {
        cms.delete(&format!("c{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    server.compact();
    server.faults().delay_watches(Duration::ZERO);
    eventually("20 objects after compaction", || async {
        reader.state().len() == 20 && !reader.state().iter().any(|o| o.name_any() == "c0")
    })
    .await;
    assert!(
        relists.load(Ordering::SeqCst) >= 2,
        "410 Expired forced a relist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reconciles() {
    let (_server, client) = server().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        svcs.create(&PostParams::default(), &lb(&format!("s{i}")))
            .await
            .unwrap();
    }
    let reconciled = Arc::new(AtomicUsize::new(0));
    let ctx = Arc::new((svcs.clone(), reconciled.clone()));
    let controller = Controller::new(svcs.clone(), watcher::Config::default())
        .run(
            |svc: Arc<Service>, ctx: Arc<(Api<Service>, Arc<AtomicUsize>)>| async move {
                let patch = json!({"metadata": {"annotations": {"reconciled": "yes"}}});
                ctx.0
                    .patch(
                        &svc.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                ctx.1.fetch_add(1, Ordering::SeqCst);
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx,
        )
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(controller);
    eventually("every Service reconciled", || async {
        let list = svcs.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .all(|s| s.annotations().get("reconciled").is_some())
    })
    .await;
    assert!(reconciled.load(Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_filter_list_and_watch() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("a", &[("team", "web"), ("tier", "front")]),
    )
    .await
    .unwrap();
    cms.create(&PostParams::default(), &cm("b", &[("team", "db")]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    let names = |sel: &str, fields: &str| {
        let cms = cms.clone();
        let (sel, fields) = (sel.to_string(), fields.to_string());
        async move {
            let mut lp = ListParams::default().labels(&sel);
            if !fields.is_empty() {
                lp = lp.fields(&fields);
            }
            cms.list(&lp)
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| o.name_any())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("team=web", "").await, ["a"]);
    assert_eq!(names("team!=web", "").await, ["b", "c"]);
    assert_eq!(names("team in (web,db)", "").await, ["a", "b"]);
    assert_eq!(names("team notin (web)", "").await, ["b", "c"]);
    assert_eq!(names("team", "").await, ["a", "b"]);
    assert_eq!(names("!team", "").await, ["c"]);
    assert_eq!(names("", "metadata.name=b").await, ["b"]);
    assert_eq!(names("team", "metadata.name!=b").await, ["a"]);
    let err = cms
        .list(&ListParams::default().fields("data.v=1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("field label not supported")),
        "{err}"
    );

    // An object that starts matching is ADDED, one that stops matching is DELETED.
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().labels("team=web"), &rv)
        .await
        .unwrap()
        .boxed();
    merge(&cms, "b", json!({"metadata": {"labels": {"team": "web"}}})).await;
    merge(&cms, "a", json!({"metadata": {"labels": {"team": "ops"}}})).await;
    merge(&cms, "c", json!({"data": {"v": "9"}})).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => got.push(format!("added:{}", o.name_any())),
            WatchEvent::Deleted(o) => got.push(format!("deleted:{}", o.name_any())),
            WatchEvent::Modified(o) => got.push(format!("modified:{}", o.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(got, ["added:b", "deleted:a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_watchers_lose_and_reorder_nothing() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let start = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    const WRITERS: usize = 50;
    const PER_WRITER: usize = 20;
    let total = WRITERS * PER_WRITER * 2;
    let mut watchers = Vec::new();
    for _ in 0..10 {
        let cms = cms.clone();
        let start = start.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = cms
                .watch(&WatchParams::default(), &start)
                .await
                .unwrap()
                .boxed();
            let mut seen: Vec<(u64, String)> = Vec::new();
            while seen.len() < total {
                let ev = tokio::time::timeout(WAIT, stream.try_next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let (kind, obj) = match ev {
                    WatchEvent::Added(o) => ("A", o),
                    WatchEvent::Modified(o) => ("M", o),
                    WatchEvent::Deleted(o) => ("D", o),
                    WatchEvent::Bookmark(_) => continue,
                    WatchEvent::Error(e) => panic!("{e:?}"),
                };
                let rv: u64 = obj.resource_version().unwrap().parse().unwrap();
                seen.push((rv, format!("{kind}:{}", obj.name_any())));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let cms = cms.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let name = format!("w{w}-{i}");
                cms.create(&PostParams::default(), &cm(&name, &[]))
                    .await
                    .unwrap();
                cms.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"v": "2"}})),
                )
                .await
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut first: Option<Vec<(u64, String)>> = None;
    for w in watchers {
        let seen = w.await.unwrap();
        assert_eq!(seen.len(), total);
        assert!(
            seen.windows(2).all(|p| p[0].0 < p[1].0),
            "resourceVersion strictly increases"
        );
        match &first {
            None => first = Some(seen),
            Some(f) => assert_eq!(f, &seen, "every watcher sees the same sequence"),
        }
    }
    let seen = first.unwrap();
    for w in 0..WRITERS {
        for i in 0..PER_WRITER {
            let a = seen
                .iter()
                .position(|(_, e)| *e == format!("A:w{w}-{i}"))
                .unwrap();
            let m = seen
                .iter()
                .position(|(_, e)| *e == format!("M:w{w}-{i}"))
                .unwrap();
            assert!(a < m, "create before update for w{w}-{i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_are_consistent_while_objects_change() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        cms.create(&PostParams::default(), &cm(&format!("p{i:02}"), &[]))
            .await
            .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().unwrap();
    // Changes after the first page do not show in the rest of this list.
    cms.delete("p15", &DeleteParams::default()).await.unwrap();
    cms.create(&PostParams::default(), &cm("p99", &[]))
        .await
        .unwrap();
    let mut names: Vec<String> = first.items.iter().map(|o| o.name_any()).collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = cms
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        names.extend(page.items.iter().map(|o| o.name_any()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(names, expected);
}

fn test_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "metadata": {"name": "pools.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "pools", "singular": "pool", "kind": "Pool"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["addresses"], "properties": {
                        "addresses": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        "mode": {"type": "string", "default": "routed", "enum": ["routed", "local"]}
                    }},
                    "status": {"type": "object", "properties": {"allocated": {"type": "integer"}}}
                }}}
            }]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_of_created_crds() {
    let (_server, client) = server().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .create(&PostParams::default(), &test_crd())
        .await
        .unwrap();
    let established = crd.status.unwrap().conditions.unwrap();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    let ar = kube::core::ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Pool".into(),
        plural: "pools".into(),
    };
    let pools: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Pool",
        "metadata": {"name": "p"},
        "spec": {"addresses": ["192.0.2.0/24"], "unknown": 1},
        "status": {"allocated": 5}
    }))
    .unwrap();
    let created = pools.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(
        created.data["spec"],
        json!({"addresses": ["192.0.2.0/24"], "mode": "routed"}),
        "pruned and defaulted"
    );
    assert!(
        created.data.get("status").is_none(),
        "status is the subresource's"
    );
    let bad: kube::core::DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Pool", "metadata": {"name": "q"}, "spec": {"addresses": []}}))
            .unwrap();
    let err = pools
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("at least 1 items")),
        "{err}"
    );
    let status = json!({"status": {"allocated": 3}});
    let s = pools
        .patch_status("p", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(s.data["status"]["allocated"], json!(3));
    let err = pools
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 415),
        "{err}"
    );
    crds.delete("pools.example.com", &DeleteParams::default())
        .await
        .unwrap();
    let err = pools.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_one_store_seen_through_both_apis() {
    let (_server, client) = server().await;
    let core: Api<Event> = Api::namespaced(client.clone(), "default");
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Service", "name": "web", "namespace": "default"},
        "reason": "AddressAssigned", "message": "192.0.2.10 from pool a", "type": "Normal"
    }))
    .unwrap();
    core.create(&PostParams::default(), &ev).await.unwrap();
    let found = core
        .list(&ListParams::default().fields("involvedObject.name=web,reason=AddressAssigned"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    let new: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let e = new.get("e1").await.unwrap();
    assert_eq!(e.note.as_deref(), Some("192.0.2.10 from pool a"));
    assert_eq!(e.regarding.unwrap().name.as_deref(), Some("web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_hooks_over_http_and_offline() {
    let (server, client) = server().await;
    let http = reqwest_like(&server);
    // Injected failures answer with Status bodies.
    http("fail?count=2&code=500").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let raw = client
        .request_text(
            http::Request::get("/api/v1/nodes")
                .body(Vec::new())
                .unwrap(),
        )
        .await;
    assert!(raw.is_err(), "first injected failure");
    let _ = nodes.list(&ListParams::default()).await; // consumes the second (or retries)
    assert!(nodes.list(&ListParams::default()).await.is_ok());
    http("latency?ms=300").await;
    let t = std::time::Instant::now();
    nodes.list(&ListParams::default()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    http("latency?ms=0").await;
    // Offline: requests fail, state survives.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("survivor", &[]))
        .await
        .unwrap();
    server.faults().go_offline(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(cms.get("survivor").await.is_err());
    eventually("back online", || async {
        cms.get("survivor").await.is_ok()
    })
    .await;
}

/// POSTs to an admin endpoint with a plain TCP client (no kube involved).
fn reqwest_like(
    server: &FakeApiServer,
) -> impl Fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    let addr = server.addr();
    move |path| {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "POST /fake/{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_builtin_and_custom_resources() {
    let (_server, client) = server().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &test_crd())
        .await
        .unwrap();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for g in [
        "",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "example.com",
    ] {
        assert!(groups.iter().any(|x| x == g), "{g} missing from {groups:?}");
    }
    let v: Value = serde_json::from_str(
        &client
            .request_text(http::Request::get("/api/v1").body(Vec::new()).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "services/status")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_verb_and_resource() {
    let (server, client) = server().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &lb("a")).await.unwrap();
    svcs.create(&PostParams::default(), &lb("b")).await.unwrap();
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
    svcs.patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    svcs.list(&ListParams::default()).await.unwrap();
    let counts = server.requests();
    assert_eq!(counts.get("POST services"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("PATCH services/status"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("GET services"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("PUT services"), None, "{counts:?}");
}
