//! Watching Kubernetes objects, for both components: each watch keeps a cache and feeds
//! its events, in order, into one channel of [`Input`]s, so a component's loop sees every
//! kind it watches in one stream and applies them to its pure state through
//! [`routelb_core::index::Feed`].
//!
//! A watch that fails (API server down, 410 Expired) is retried with a short, bounded
//! backoff (200 ms doubling to 5 s) so that after an outage the caches catch up within
//! seconds; the caches keep their last state meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use routelb_core::crd::{AddressPool, BGPPeer, NodeRoutingStatus, RouterConfig};
use routelb_core::index::WatchEvent;
use tokio::sync::mpsc;

/// An event of any kind a component watches.
#[derive(Debug)]
pub enum Input {
    Service(WatchEvent<Service>),
    Slice(WatchEvent<EndpointSlice>),
    Node(WatchEvent<Node>),
    Namespace(WatchEvent<Namespace>),
    Pool(WatchEvent<AddressPool>),
    RouterConfig(WatchEvent<RouterConfig>),
    Peer(WatchEvent<BGPPeer>),
    Secret(WatchEvent<Secret>),
    Lease(WatchEvent<Lease>),
    NodeStatus(WatchEvent<NodeRoutingStatus>),
}

/// What can be watched into a cache.
pub trait Watchable:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watchable for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Starts watches that all feed one channel.
#[derive(Clone)]
pub struct Watches {
    client: Client,
    tx: mpsc::Sender<Input>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches").finish_non_exhaustive()
    }
}

impl Watches {
    /// Watches feeding the returned receiver.
    pub fn new(client: Client) -> (Watches, mpsc::Receiver<Input>) {
        let (tx, rx) = mpsc::channel(4096);
        (Watches { client, tx }, rx)
    }

    /// Watches every object of a cluster-scoped or all namespaces' kind.
    pub fn all<K>(&self, wrap: fn(WatchEvent<K>) -> Input) -> Store<K>
    where
        K: Watchable,
    {
        self.watch(
            Api::all(self.client.clone()),
            watcher::Config::default(),
            wrap,
        )
    }

    /// Watches every object of a kind without keeping a cache: for kinds a component only
    /// feeds into its pure state (the agent's Services and EndpointSlices), so that
    /// thousands of them are not held twice.
    pub fn follow<K>(&self, wrap: fn(WatchEvent<K>) -> Input)
    where
        K: Watchable,
    {
        let stream = watcher(Api::all(self.client.clone()), watcher::Config::default())
            .modify(strip::<K>)
            .backoff(QuickBackoff::default());
        forward(stream, self.tx.clone(), move |e| wrap(shared(e)));
    }

    /// Watches one named cluster-scoped object (the agent's own Node).
    pub fn named<K>(&self, name: &str, wrap: fn(WatchEvent<K>) -> Input) -> Store<K>
    where
        K: Watchable,
    {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        self.watch(Api::all(self.client.clone()), config, wrap)
    }

    /// Watches the objects of one namespace.
    pub fn namespaced<K>(&self, namespace: &str, wrap: fn(WatchEvent<K>) -> Input) -> Store<K>
    where
        K: Watchable + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let api = Api::namespaced(self.client.clone(), namespace);
        self.watch(api, watcher::Config::default(), wrap)
    }

    /// Objects of one namespace with a label.
    pub fn labelled<K>(
        &self,
        namespace: &str,
        label: &str,
        wrap: fn(WatchEvent<K>) -> Input,
    ) -> Store<K>
    where
        K: Watchable + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let api = Api::namespaced(self.client.clone(), namespace);
        self.watch(api, watcher::Config::default().labels(label), wrap)
    }

    fn watch<K>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        wrap: fn(WatchEvent<K>) -> Input,
    ) -> Store<K>
    where
        K: Watchable,
    {
        watch_into(api, config, self.tx.clone(), move |e| wrap(shared(e)))
    }
}

fn shared<K>(e: watcher::Event<K>) -> WatchEvent<K> {
    match e {
        watcher::Event::Init => WatchEvent::Init,
        watcher::Event::InitApply(o) => WatchEvent::InitApply(Arc::new(o)),
        watcher::Event::InitDone => WatchEvent::InitDone,
        watcher::Event::Apply(o) => WatchEvent::Apply(Arc::new(o)),
        watcher::Event::Delete(o) => WatchEvent::Delete(Arc::new(o)),
    }
}

/// The annotation in which `kubectl apply` keeps a whole copy of what it applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no component reads before an object is cached: `managedFields` (on a
/// real API server often the largest part of a Service) and kubectl's copy of the
/// applied object (as large as the object again). Writes never send cached objects
/// whole (patches, or objects read afresh), so nothing is lost on the server.
fn strip<K: kube::Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Exponential backoff from 200 ms to 5 s. A watcher yields a success (`Init`) at the
/// start of every relist attempt, so resetting on any success would keep retrying at
/// 200 ms through an outage: the backoff resets only after 10 s without failures.
#[derive(Clone, Debug)]
pub struct QuickBackoff {
    next: Duration,
    last_failure: Option<std::time::Instant>,
}

const FIRST: Duration = Duration::from_millis(200);
const MAX: Duration = Duration::from_secs(5);
const CALM: Duration = Duration::from_secs(10);

impl Default for QuickBackoff {
    fn default() -> QuickBackoff {
        QuickBackoff {
            next: FIRST,
            last_failure: None,
        }
    }
}

impl Iterator for QuickBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(MAX);
        self.last_failure = Some(std::time::Instant::now());
        Some(now)
    }
}

impl Backoff for QuickBackoff {
    fn reset(&mut self) {
        if self.last_failure.is_none_or(|t| t.elapsed() >= CALM) {
            self.next = FIRST;
        }
    }
}

const RESTARTS: &str = "routelb_watch_restarts_total";
const RESTARTS_HELP: &str =
    "Watches that failed and were restarted (API server unreachable, 410 Expired, ...).";

/// Watches `api` into a cache (returned) and forwards every event, wrapped by `wrap`, to
/// `tx`, in order; the cache is updated before the event is sent.
fn watch_into<K, I, F>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<I>,
    wrap: F,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    I: Send + 'static,
    F: Fn(watcher::Event<K>) -> I + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).modify(strip::<K>))
        .backoff(QuickBackoff::default());
    forward(stream, tx, wrap);
    reader
}

/// Forwards every event of a watch stream, wrapped by `wrap`, to `tx`, in order;
/// failures are counted and retried by the stream's backoff.
fn forward<K, I, F, S>(stream: S, tx: mpsc::Sender<I>, wrap: F)
where
    K: kube::Resource + Send + 'static,
    K::DynamicType: Default,
    I: Send + 'static,
    F: Fn(watcher::Event<K>) -> I + Send + 'static,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let kind = K::kind(&Default::default()).to_string();
    crate::metrics::METRICS.declare(RESTARTS, RESTARTS_HELP, &[("resource", &kind)]);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(ev)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    crate::metrics::METRICS.inc(
                        RESTARTS,
                        RESTARTS_HELP,
                        &[("resource", &kind)],
                        1.0,
                    );
                    tracing::warn!(kind = %kind, error = %e, "watch failed; the cache keeps its last state; retrying");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_objects_keep_no_managed_fields_and_no_last_applied_copy() {
        use k8s_openapi::api::core::v1::Service;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut svc = Service::default();
        svc.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        svc.metadata.annotations = Some(
            [
                (
                    LAST_APPLIED.to_string(),
                    "{\"apiVersion\":\"v1\"}".to_string(),
                ),
                ("routelb.io/pool".to_string(), "public".to_string()),
            ]
            .into(),
        );
        strip(&mut svc);
        assert!(svc.metadata.managed_fields.is_none());
        assert_eq!(
            svc.metadata
                .annotations
                .unwrap()
                .into_keys()
                .collect::<Vec<_>>(),
            ["routelb.io/pool"]
        );
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets_only_when_calm() {
        let mut b = QuickBackoff::default();
        let seq: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(seq, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(
            b.next(),
            Some(MAX),
            "a success right after a failure does not reset"
        );
        b.last_failure = Some(std::time::Instant::now() - CALM);
        b.reset();
        assert_eq!(b.next(), Some(FIRST));
    }
}
