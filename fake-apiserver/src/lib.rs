//! A faithful in-memory Kubernetes API server for routelb's tests and lab.
//!
//! It speaks the real API over plain HTTP, so the real `kube` client, kube-runtime's
//! watcher, reflector and Controller, `kubectl` and `curl` use it unchanged. See the
//! crate's README for the exact semantics and what is simplified.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let server = fake_apiserver::FakeApiServer::start().await?;
//! let client = server.client()?;
//! server.compact(); // the next watch from an older version gets 410 Expired
//! # Ok(()) }
//! ```

mod api;
mod error;
mod http;
mod jsonpath;
mod objects;
mod openapi;
mod patch;
mod protobuf;
mod registry;
mod selector;
mod store;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;

/// Server settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept per resource for watches and consistent lists; older versions get
    /// 410 Expired.
    pub history_limit: usize,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Watch duration when the client sets no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Whether the cluster is dual-stack (IPv4 primary): PreferDualStack Services get both
    /// families.
    pub dual_stack: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            history_limit: 100_000,
            bookmark_interval: Duration::from_secs(5),
            default_watch_timeout: Duration::from_secs(1800),
            dual_stack: true,
        }
    }
}

/// Fault injection, shared by the Rust handle and the `/fake/...` admin endpoints.
#[derive(Debug)]
pub struct Faults {
    fail_remaining: AtomicU32,
    fail_code: AtomicU32,
    latency_ms: AtomicU64,
    watch_delay_ms: AtomicU64,
    watch_epoch: watch::Sender<u64>,
    offline: watch::Sender<Option<Duration>>,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            fail_remaining: AtomicU32::new(0),
            fail_code: AtomicU32::new(500),
            latency_ms: AtomicU64::new(0),
            watch_delay_ms: AtomicU64::new(0),
            watch_epoch: watch::channel(0).0,
            offline: watch::channel(None).0,
        }
    }

    /// Ends every open watch stream; clients re-watch.
    pub fn close_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Fails the next `count` API requests with `code` (500 or 429).
    pub fn fail_next(&self, count: u32, code: u16) {
        self.fail_code.store(u32::from(code), Ordering::SeqCst);
        self.fail_remaining.store(count, Ordering::SeqCst);
    }

    /// Delays every API request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Holds every new watch request for `delay` before it starts (a slow watch path):
    /// with [`Faults::close_watches`] and [`FakeApiServer::compact`] it makes clients
    /// re-watch from a compacted version and get 410.
    pub fn delay_watches(&self, delay: Duration) {
        self.watch_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn watch_delay(&self) -> Duration {
        Duration::from_millis(self.watch_delay_ms.load(Ordering::SeqCst))
    }

    /// Closes the listener and every connection for `duration`, keeping all state, as an
    /// API server that is down and comes back.
    pub fn go_offline(&self, duration: Duration) {
        self.offline.send_replace(Some(duration));
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::SeqCst))
    }

    fn take_failure(&self) -> Option<u16> {
        self.fail_remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| self.fail_code.load(Ordering::SeqCst) as u16)
    }

    fn watch_epoch(&self) -> watch::Receiver<u64> {
        self.watch_epoch.subscribe()
    }
}

/// State shared by all connections.
#[derive(Debug)]
struct Shared {
    api: api::Api,
    faults: Faults,
    options: Options,
    /// Requests served, by verb and resource (`POST services`, `PATCH services/status`,
    /// `WATCH endpointslices`): what benchmarks report as API writes.
    requests: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// A running server.
#[derive(Debug)]
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts on `127.0.0.1` on a free port with default options.
    pub async fn start() -> anyhow::Result<FakeApiServer> {
        FakeApiServer::start_on("127.0.0.1:0".parse()?, Options::default()).await
    }

    /// Starts on `addr` (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr, options: Options) -> anyhow::Result<FakeApiServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            api: api::Api::new(options.history_limit, options.dual_stack),
            faults: Faults::new(),
            options,
            requests: Default::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, addr, shared.clone(), stopped));
        Ok(FakeApiServer {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client configuration for this server.
    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("a valid URL"));
        config.connect_timeout = Some(Duration::from_secs(2));
        config
    }

    /// A kube client for this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config())?)
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// Requests served so far, by verb and resource: `POST services`,
    /// `PATCH services/status`, `WATCH endpointslices`, `GET leases` (one object or a list).
    pub fn requests(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Drops all change history, so watches and lists from older versions get 410.
    pub fn compact(&self) {
        self.shared.api.lock().compact();
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.api.lock().rv
    }

    /// Stops serving and closes every connection.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// A kubeconfig for a server at `url`, without credentials (the fake has no auth).
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    )
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut offline = shared.faults.offline.subscribe();
    // Bumped to drop every open connection (offline, stop).
    let (kill, _) = watch::channel(0u64);
    let mut listener = Some(listener);
    while let Some(l) = listener.as_ref() {
        tokio::select! {
            accepted = l.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let mut killed = kill.subscribe();
                tokio::spawn(async move {
                    let service = service_fn(move |req| http::handle(shared.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.changed() => {}
                    }
                });
            }
            _ = offline.changed() => {
                let Some(duration) = *offline.borrow_and_update() else { continue };
                drop(listener.take());
                kill.send_modify(|k| *k += 1);
                shared.faults.close_watches();
                tracing::info!(?duration, "fake-apiserver offline");
                tokio::time::sleep(duration).await;
                loop {
                    match TcpListener::bind(addr).await {
                        Ok(l) => { listener = Some(l); break; }
                        Err(e) => {
                            tracing::warn!(%e, "rebinding after offline");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                tracing::info!("fake-apiserver back online");
            }
            _ = stop.changed() => break,
        }
    }
    kill.send_modify(|k| *k += 1);
    shared.faults.close_watches();
}
