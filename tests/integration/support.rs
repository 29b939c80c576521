//! Fixtures shared by the integration tests: a fake cluster with routelb's CRDs, object
//! builders, waiting helpers, and processes that are killed when a test ends.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Options};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use routelb_core::crd::{AddressPool, AddressPoolSpec};
use serde_json::{Value, json};
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(20);

/// A fake API server with routelb's CRDs and namespace installed.
pub struct Cluster {
    pub server: FakeApiServer,
    pub client: Client,
    pub dir: PathBuf,
}

impl Cluster {
    pub async fn new() -> Cluster {
        let opts = Options {
            bookmark_interval: Duration::from_millis(500),
            ..Options::default()
        };
        let server = FakeApiServer::start_on("127.0.0.1:0".parse().unwrap(), opts)
            .await
            .unwrap();
        let client = server.client().unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in routelb_core::crd::crds() {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        let dir = std::env::temp_dir().join(format!(
            "routelb-test-{}-{}",
            std::process::id(),
            server.addr().port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Cluster {
            server,
            client,
            dir,
        };
        c.namespace("routelb-system", &[]).await;
        c
    }

    /// Writes a kubeconfig for the real binaries.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.join("kubeconfig");
        std::fs::write(&path, self.server.kubeconfig()).unwrap();
        path
    }

    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": to_map(labels)}}))
                .unwrap();
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&ns),
        )
        .await
        .unwrap();
    }

    pub fn pools(&self) -> Api<AddressPool> {
        Api::all(self.client.clone())
    }

    pub fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn pool(&self, name: &str, spec: Value) -> AddressPool {
        let spec: AddressPoolSpec = serde_json::from_value(spec).unwrap();
        self.pools()
            .create(&PostParams::default(), &AddressPool::new(name, spec))
            .await
            .unwrap()
    }

    pub async fn edit_pool(&self, name: &str, spec: Value) {
        self.pools()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    pub async fn delete_pool(&self, name: &str) {
        self.pools()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Creates a LoadBalancer Service; `extra` is merged into it.
    pub async fn service(&self, ns: &str, name: &str, extra: Value) -> Service {
        let mut v = json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80, "protocol": "TCP"}]}
        });
        json_patch::merge(&mut v, &extra);
        let svc: Service = serde_json::from_value(v).unwrap();
        self.services(ns)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap()
    }

    pub async fn get(&self, ns: &str, name: &str) -> Service {
        self.services(ns).get(name).await.unwrap()
    }

    /// Waits until the Service shows `n` ingress addresses; returns them.
    pub async fn wait_ips(&self, ns: &str, name: &str, n: usize) -> Vec<IpAddr> {
        let svcs = self.services(ns);
        eventually(&format!("{ns}/{name} to get {n} addresses"), || async {
            let svc = svcs.get(name).await.ok()?;
            let ips = routelb_core::service::ingress_ips(&svc);
            (ips.len() == n && routelb_core::service::allocated_from(&svc).is_some()).then_some(ips)
        })
        .await
    }

    /// The Service's ingress addresses now.
    pub async fn ips(&self, ns: &str, name: &str) -> Vec<IpAddr> {
        routelb_core::service::ingress_ips(&self.get(ns, name).await)
    }

    /// Events about an object: (reason, note).
    pub async fn events(&self, ns: &str, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let mut evs = api
            .list(&ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .unwrap()
            .items;
        evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        evs.into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Waits for an Event with `reason` whose note contains `text`.
    pub async fn wait_event(&self, ns: &str, name: &str, reason: &str, text: &str) -> String {
        eventually(
            &format!("a {reason} event on {name} saying {text:?}"),
            || async {
                self.events(ns, name)
                    .await
                    .into_iter()
                    .find(|(r, n)| r == reason && n.contains(text))
                    .map(|(_, n)| n)
            },
        )
        .await
    }

    /// Waits until a pool's status satisfies `check`.
    pub async fn wait_pool(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&AddressPool) -> bool,
    ) -> AddressPool {
        eventually(what, || async {
            self.pools().get(name).await.ok().filter(|p| check(p))
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn to_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Polls `check` until it returns `Some`, or fails the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A condition of a pool's status.
pub fn condition(pool: &AddressPool, type_: &str) -> Option<(String, String, String)> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// An allocator running in this process; stopped (gracefully) on `stop` or drop.
pub struct InProcess {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub health: Arc<routelb::health::Health>,
}

impl InProcess {
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    pub async fn wait_ready(&self) {
        eventually("the allocator to be ready", || async {
            self.health.ready().then_some(())
        })
        .await;
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Test timing: short leases and frequent pool status writes.
pub fn allocator_options(identity: &str) -> routelb::allocator::Options {
    routelb::allocator::Options {
        identity: identity.into(),
        timing: routelb::k8s::leader::Timing {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(200),
        },
        status_interval: Duration::from_millis(100),
        ..Default::default()
    }
}

pub fn start_allocator(cluster: &Cluster, opts: routelb::allocator::Options) -> InProcess {
    let (stop, stopped) = watch::channel(false);
    let health = routelb::health::Health::new();
    let task = tokio::spawn(routelb::allocator::run(
        cluster.client.clone(),
        opts,
        health.clone(),
        stopped,
    ));
    InProcess {
        stop,
        task: Some(task),
        health,
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so no test leaks one.
pub struct Proc(pub Child);

impl Proc {
    /// Starts the routelb binary; its log goes to stderr when ROUTELB_TEST_LOGS is set.
    pub fn routelb(args: &[&str]) -> Proc {
        let log = if std::env::var_os("ROUTELB_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Proc(
            Command::new(env!("CARGO_BIN_EXE_routelb"))
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// An allocator replica with test timing (3 s Lease).
    pub fn allocator(kubeconfig: &str, identity: &str, status_interval: &str) -> Proc {
        Proc::routelb(&[
            "--kubeconfig",
            kubeconfig,
            "allocator",
            "--identity",
            identity,
            "--lease-duration",
            "3",
            "--health-addr",
            "127.0.0.1:0",
            "--status-interval",
            status_interval,
        ])
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn service_names(svcs: &[Service]) -> Vec<String> {
    svcs.iter().map(|s| s.name_any()).collect()
}

impl Cluster {
    /// Creates a Node, or replaces its labels with exactly these.
    pub async fn node(&self, name: &str, labels: &[(&str, &str)]) {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        match api.get_opt(name).await.unwrap() {
            Some(mut node) => {
                node.metadata.labels = Some(to_map(labels));
                api.replace(name, &PostParams::default(), &node)
                    .await
                    .unwrap();
            }
            None => {
                let node = serde_json::from_value(
                    json!({"metadata": {"name": name, "labels": to_map(labels)}}),
                )
                .unwrap();
                api.create(&PostParams::default(), &node).await.unwrap();
            }
        }
    }

    pub async fn delete_node(&self, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }

    /// Does what the allocator does: status addresses and the allocated-from annotation.
    pub async fn assign(&self, ns: &str, name: &str, ips: &[&str], pool: &str) {
        let svcs = self.services(ns);
        let ingress: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        svcs.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
        )
        .await
        .unwrap();
        svcs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"routelb.io/allocated-from": pool}}}),
            ),
        )
        .await
        .unwrap();
    }

    /// Creates or replaces an EndpointSlice of a Service with one endpoint per (node, ready).
    pub async fn endpoints(&self, ns: &str, svc: &str, slice: &str, endpoints: &[(&str, bool)]) {
        let eps: Vec<Value> = endpoints
            .iter()
            .enumerate()
            .map(|(i, (node, ready))| json!({"addresses": [format!("10.244.0.{}", i + 1)], "nodeName": node, "conditions": {"ready": ready, "serving": ready, "terminating": false}}))
            .collect();
        let obj: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": slice, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(self.client.clone(), ns);
        api.patch(
            slice,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    }
}

/// A free TCP port on loopback (for health endpoints of spawned processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a spawned component's /readyz answers 200.
pub async fn is_ready(port: u16) -> bool {
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
    out.starts_with("HTTP/1.1 200")
}

/// GETs a path from a spawned component's health/metrics port: (status code, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of one series in a Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        let count = if rest.is_empty() {
            0
        } else {
            rest.matches("=\"").count()
        };
        (all && count == labels.len())
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// Watches every Service while a test runs and records each moment an address shows on
/// two Services that do not share it on purpose (same `routelb.io/allow-shared-ip` key):
/// checked at every change, not only at the end.
pub struct DuplicateWatch {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl DuplicateWatch {
    pub fn start(client: &Client) -> DuplicateWatch {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let api: Api<Service> = Api::all(client.clone());
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut shown: BTreeMap<String, Service> = BTreeMap::new();
            let mut violations = Vec::new();
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = stopped.changed() => break,
                };
                let Some(Ok(event)) = event else { continue };
                match event {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        let key = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
                        shown.insert(key, s);
                    }
                    watcher::Event::Delete(s) => {
                        let key = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
                        shown.remove(&key);
                    }
                    _ => continue,
                }
                violations.extend(routelb_core::service::shown_twice(shown.values()));
            }
            violations
        });
        DuplicateWatch { stop, task }
    }

    /// Stops watching; the violations seen.
    pub async fn stop(self) -> Vec<String> {
        self.stop.send_replace(true);
        self.task.await.unwrap()
    }
}

/// The holder of the allocators' Lease.
pub async fn lease_holder(c: &Cluster) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), "routelb-system");
    leases
        .get_opt("routelb-allocator")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}
