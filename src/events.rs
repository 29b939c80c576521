//! Publishing Kubernetes Events (`events.k8s.io/v1`), best effort and bounded.
//!
//! Events explain decisions in `kubectl describe`; losing one must never block or fail
//! the component, so they go through a bounded queue and are dropped (and counted) when
//! the API server cannot keep up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;

/// One Event to publish.
#[derive(Clone, Debug)]
pub struct Note {
    pub regarding: ObjectReference,
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub note: String,
}

/// A handle to queue Events.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Note>,
    dropped: Arc<AtomicU64>,
}

impl Publisher {
    /// Starts the publishing task: `controller` and `instance` identify the reporter.
    pub fn start(client: Client, controller: &str, instance: &str) -> Publisher {
        let (tx, rx) = mpsc::channel::<Note>(16_384);
        let controller = controller.to_string();
        let instance = instance.to_string();
        tokio::spawn(async move {
            tokio_stream(rx)
                .for_each_concurrent(8, |n| {
                    let client = client.clone();
                    let (controller, instance) = (controller.clone(), instance.clone());
                    async move {
                        if let Err(e) = create(client, &controller, &instance, &n).await {
                            tracing::warn!(reason = %n.reason, object = ?n.regarding.name, error = %e, "publishing an Event failed");
                        }
                    }
                })
                .await;
        });
        Publisher {
            tx,
            dropped: Arc::default(),
        }
    }

    /// Queues an Event; drops it when the queue is full.
    pub fn publish(&self, note: Note) {
        if self.tx.try_send(note).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "Event queue full; dropping Events");
            }
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn tokio_stream(mut rx: mpsc::Receiver<Note>) -> impl futures::Stream<Item = Note> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

async fn create(client: Client, controller: &str, instance: &str, n: &Note) -> kube::Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let namespace = n
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = format!(
        "{}.{:x}",
        n.regarding.name.as_deref().unwrap_or(controller),
        now.as_nanosecond()
    );
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(n.action.clone()),
        reason: Some(truncate(&n.reason, 128)),
        note: Some(truncate(&n.note, 1024)),
        regarding: Some(n.regarding.clone()),
        reporting_controller: Some(controller.to_string()),
        reporting_instance: Some(truncate(instance, 128)),
        type_: Some(if n.warning { "Warning" } else { "Normal" }.to_string()),
        ..Event::default()
    };
    Api::<Event>::namespaced(client, &namespace)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}
