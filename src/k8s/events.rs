//! Publishing Kubernetes Events (`events.k8s.io/v1`), best effort, bounded and grouped.
//!
//! Events explain decisions in `kubectl describe`; losing one must never block or fail
//! the component, so they go through a bounded queue, optionally rate-limited, and are
//! dropped (and counted) when the API server cannot keep up. An Event repeated within
//! six minutes (same object, type, reason, action and note) becomes a series: the first
//! Event's `series.count` goes up (`kubectl describe` shows "(x3 over 2m)") instead of a
//! new object, as client-go's events/v1 recorder does.
//!
//! kube-runtime's `Recorder` groups series too, but keys them without the note (kube
//! 5.0), so a changed note ("Assigned 192.0.2.1", later "Assigned 192.0.2.7") would be
//! shown as a repetition of the first: routelb's notes carry the decision, so the key
//! here includes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use routelb_core::report::Regarding;
use serde_json::json;
use tokio::sync::mpsc;

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Note {
    pub regarding: Regarding,
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub note: String,
}

/// The Kubernetes reference of what an Event is about.
pub fn object_reference(r: &Regarding) -> ObjectReference {
    ObjectReference {
        api_version: Some(r.api_version.to_string()),
        kind: Some(r.kind.to_string()),
        name: Some(r.name.clone()),
        namespace: r.namespace.clone(),
        uid: r.uid.clone(),
        ..ObjectReference::default()
    }
}

/// A token bucket: `rate` per second, bursts of ten times that.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        let burst = (rate * 10.0).max(1.0);
        Bucket {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A handle to queue Events.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Note>,
    bucket: Option<Arc<Mutex<Bucket>>>,
    dropped: Arc<AtomicU64>,
}

/// How long a published Event can still grow into a series.
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// An Event already published: its name and namespace, how often, when last.
#[derive(Clone, Debug)]
struct Published {
    name: String,
    namespace: String,
    count: i32,
    at: Instant,
}

/// The Events that may still grow into a series. Expired ones are swept at most once a
/// minute, not on every Event: thousands of Services assigned at once would otherwise
/// cost a scan of every recent Event each.
#[derive(Debug)]
struct Recent {
    published: HashMap<Note, Published>,
    swept: Instant,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent {
            published: HashMap::new(),
            swept: Instant::now(),
        }
    }
}

impl Recent {
    /// The earlier Event a note repeats, if it is recent enough.
    fn earlier(&mut self, n: &Note) -> Option<Published> {
        if self.swept.elapsed() >= SWEEP_EVERY {
            self.published.retain(|_, p| p.at.elapsed() < SERIES_TTL);
            self.swept = Instant::now();
        }
        self.published
            .get(n)
            .filter(|p| p.at.elapsed() < SERIES_TTL)
            .cloned()
    }
}

const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Publisher {
    /// Starts the publishing task: `controller` and `instance` identify the reporter;
    /// `per_second` limits the rate (`None`: no limit, only the queue's bound).
    pub fn start(
        client: Client,
        controller: &str,
        instance: &str,
        per_second: Option<f64>,
    ) -> Publisher {
        let (tx, rx) = mpsc::channel::<Note>(16_384);
        let reporter = Arc::new((controller.to_string(), instance.to_string()));
        let recent: Arc<tokio::sync::Mutex<Recent>> = Arc::default();
        tokio::spawn(async move {
            futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|n| (n, rx)) })
                .for_each_concurrent(8, |n| {
                    let (client, reporter, recent) =
                        (client.clone(), reporter.clone(), recent.clone());
                    async move {
                        if let Err(e) = publish(client, &reporter, &recent, &n).await {
                            tracing::warn!(reason = %n.reason, object = %n.regarding.name, error = %e, "publishing an Event failed");
                        }
                    }
                })
                .await;
        });
        Publisher {
            tx,
            bucket: per_second.map(|r| Arc::new(Mutex::new(Bucket::new(r)))),
            dropped: Arc::default(),
        }
    }

    /// Queues an Event; drops it when over the rate or the queue is full.
    pub fn publish(&self, note: Note) {
        let allowed = self
            .bucket
            .as_ref()
            .is_none_or(|b| b.lock().unwrap_or_else(|e| e.into_inner()).take());
        if !allowed || self.tx.try_send(note).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "Event rate or queue exceeded; dropping Events");
            }
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
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

async fn publish(
    client: Client,
    reporter: &(String, String),
    recent: &tokio::sync::Mutex<Recent>,
    n: &Note,
) -> kube::Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let earlier = recent.lock().await.earlier(n);
    if let Some(p) = earlier {
        let count = p.count + 1;
        let series = EventSeries {
            count,
            last_observed_time: MicroTime(now),
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &p.namespace);
        match api
            .patch(
                &p.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "series": series })),
            )
            .await
        {
            Ok(_) => {
                recent.lock().await.published.insert(
                    n.clone(),
                    Published {
                        count,
                        at: Instant::now(),
                        ..p
                    },
                );
                return Ok(());
            }
            // Gone (expired, deleted), or patching not allowed: start a new one.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {}
            Err(e) => return Err(e),
        }
    }
    let (controller, instance) = reporter;
    let namespace = n
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = format!("{}.{:x}", n.regarding.name, now.as_nanosecond());
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(truncate(&n.action, 128)),
        reason: Some(truncate(&n.reason, 128)),
        note: Some(truncate(&n.note, 1024)),
        regarding: Some(object_reference(&n.regarding)),
        reporting_controller: Some(controller.clone()),
        reporting_instance: Some(truncate(instance, 128)),
        type_: Some(if n.warning { "Warning" } else { "Normal" }.to_string()),
        ..Event::default()
    };
    Api::<Event>::namespaced(client, &namespace)
        .create(&PostParams::default(), &event)
        .await?;
    recent.lock().await.published.insert(
        n.clone(),
        Published {
            name,
            namespace,
            count: 1,
            at: Instant::now(),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(text: &str) -> Note {
        Note {
            regarding: Regarding::node("n1"),
            warning: false,
            reason: "R".into(),
            action: "A".into(),
            note: text.into(),
        }
    }

    fn published(age: Duration) -> Published {
        Published {
            name: "e".into(),
            namespace: "default".into(),
            count: 1,
            at: Instant::now()
                .checked_sub(age)
                .expect("uptime above the age"),
        }
    }

    #[test]
    fn a_repeat_within_the_ttl_continues_the_series_an_older_one_does_not() {
        let mut r = Recent::default();
        r.published
            .insert(note("fresh"), published(Duration::from_secs(10)));
        r.published
            .insert(note("old"), published(SERIES_TTL + Duration::from_secs(1)));
        assert!(r.earlier(&note("fresh")).is_some());
        assert!(r.earlier(&note("old")).is_none(), "expired before a sweep");
        assert_eq!(r.published.len(), 2, "not swept on every Event");
        r.swept = Instant::now()
            .checked_sub(SWEEP_EVERY)
            .expect("uptime above a minute");
        assert!(r.earlier(&note("other")).is_none());
        assert_eq!(r.published.len(), 1, "swept once a minute");
    }
}
