//! Watching Kubernetes objects into a cache and an event channel, for both components.
//!
//! A watch that fails (API server down, 410 Expired) is retried with a short, bounded
//! backoff (200 ms doubling to 5 s) so that after an outage the caches catch up within
//! seconds; the caches keep their last state meanwhile.

use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

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

/// Watches `api` into a cache (returned) and forwards every event, wrapped by `wrap`, to
/// `tx`, in order; the cache is updated before the event is sent.
pub fn watch_into<K, I, F>(
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
    let stream =
        reflector::reflector(writer, watcher(api, config)).backoff(QuickBackoff::default());
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
                    let kind = K::kind(&Default::default()).to_string();
                    crate::metrics::METRICS.inc(
                        "routelb_watch_restarts_total",
                        "Watches that failed and were restarted (API server unreachable, 410 Expired, ...).",
                        &[("resource", &kind)],
                        1.0,
                    );
                    tracing::warn!(kind = %kind, error = %e, "watch failed; the cache keeps its last state; retrying");
                }
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

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
