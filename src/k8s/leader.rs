//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it.
//!
//! Expiry is judged by local observation, not by the holder's clock: a contender takes
//! over only after it has seen the Lease unchanged for a whole lease duration. A leader
//! that cannot renew within `renew_deadline` (shorter than the lease duration) steps down
//! on its own, so two replicas never both believe they lead.
//!
//! Believing is not enough for writing: a leader frozen (SIGSTOP, a stalled VM) past its
//! Lease wakes up believing it leads until its next round. Writers therefore check a
//! [`Fence`] right before each write: it holds only while the last successful renewal,
//! timed when its request was sent, is younger than the renew deadline by the boot-time
//! clock (monotonic, and counting time suspended or stopped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::clock::boottime;

/// Timing of an election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down (< lease_duration).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Proof of leadership, checked by writers before each write.
#[derive(Clone, Debug)]
pub struct Fence {
    inner: Arc<FenceState>,
}

#[derive(Debug)]
struct FenceState {
    deadline: Duration,
    /// When the request of the last successful renewal was sent (boot time).
    renewed: Mutex<Option<Duration>>,
    /// Incremented at every acquisition: writes of an earlier term never pass.
    term: AtomicU64,
}

impl Fence {
    /// A fence that holds for `deadline` after each renewal.
    pub fn new(deadline: Duration) -> Fence {
        Fence {
            inner: Arc::new(FenceState {
                deadline,
                renewed: Mutex::new(None),
                term: AtomicU64::new(0),
            }),
        }
    }

    fn renewed(&self) -> std::sync::MutexGuard<'_, Option<Duration>> {
        self.inner.renewed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current term, while the fence holds.
    pub fn term(&self) -> Option<u64> {
        let renewed = *self.renewed();
        renewed
            .filter(|t| boottime().saturating_sub(*t) < self.inner.deadline)
            .map(|_| self.inner.term.load(Ordering::SeqCst))
    }

    /// Whether a writer of `term` may write now.
    pub fn holds(&self, term: u64) -> bool {
        self.term() == Some(term)
    }

    /// A renewal sent at `sent` succeeded; `acquired` when it began a new term. A
    /// renewal after the fence ran out begins a new term too: the Lease may have been
    /// someone else's meantime, and writes queued before the gap must never pass.
    fn renewed_at(&self, sent: Duration, acquired: bool) {
        let mut renewed = self.renewed();
        let lapsed = renewed.is_none_or(|t| sent.saturating_sub(t) >= self.inner.deadline);
        if acquired || lapsed {
            self.inner.term.fetch_add(1, Ordering::SeqCst);
        }
        *renewed = Some(sent);
    }

    /// Leadership is over (lost, released, or given up).
    fn revoke(&self) {
        *self.renewed() = None;
    }
}

/// One contender for a Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The last Lease spec seen and when it was first seen in that state.
    observed: Option<(LeaseSpec, Instant)>,
    fence: Fence,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> LeaderElector {
        LeaderElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
            fence: Fence::new(timing.renew_deadline),
        }
    }

    /// The fence writers check; it holds while this contender's leadership is proven.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    fn now() -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::now())
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(Self::now)),
            renew_time: Some(Self::now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: acquire, renew or observe. Returns whether this contender leads.
    pub async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let result = self.round().await;
        if !matches!(result, Ok(true)) {
            // Not renewed this round: the fence runs out on its own, unless lost.
            if matches!(result, Ok(false)) {
                self.fence.revoke();
            }
        }
        result
    }

    async fn round(&mut self) -> kube::Result<bool> {
        let sent = boottime();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.fence.renewed_at(sent, true);
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let now = Instant::now();
        let changed = self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec);
        if changed {
            self.observed = Some((spec.clone(), now));
        }
        let seen_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map_or(self.timing.lease_duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        let expired = holder.is_none() || now.duration_since(seen_at) >= duration;
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(transitions, acquired));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observed = updated.spec.map(|s| (s, Instant::now()));
                self.fence.renewed_at(sent, !mine);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&mut self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(Self::now());
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// Runs the election until `stop` turns true, publishing whether this replica leads.
    /// On stop it releases the Lease if it holds it.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        loop {
            let leads = match self.try_acquire_or_renew().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election round failed");
                    // A leader that cannot reach the API keeps leading until its renew
                    // deadline, and steps down before its Lease can be taken over.
                    *leading.borrow() && self.fence.term().is_some()
                }
            };
            if leads != *leading.borrow() {
                tracing::info!(lease = %self.name, identity = %self.identity, leading = leads, "leadership changed");
                leading.send_replace(leads);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = stop.changed() => break,
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            self.fence.revoke();
            if let Err(e) = self.release().await {
                tracing::warn!(lease = %self.name, error = %e, "releasing the lease failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_holds_for_one_term_within_the_deadline() {
        let fence = Fence::new(Duration::from_millis(200));
        assert_eq!(fence.term(), None, "nothing proven yet");
        fence.renewed_at(boottime(), true);
        let term = fence.term().expect("just renewed");
        assert!(fence.holds(term));
        // Renewals within the term keep it; they do not start a new one.
        fence.renewed_at(boottime(), false);
        assert!(fence.holds(term));
        // Without renewal the fence runs out by the clock alone.
        std::thread::sleep(Duration::from_millis(250));
        assert!(!fence.holds(term));
        // A renewal sent before the wait proves nothing now.
        fence.renewed_at(boottime() - Duration::from_millis(240), false);
        assert_eq!(fence.term(), None);
        // A renewal after the fence ran out is a new term, even of the same holder:
        // writes of the term before the gap stay fenced off.
        fence.renewed_at(boottime(), false);
        assert!(!fence.holds(term));
        let term = fence.term().expect("renewed");
        // A new acquisition is a new term: the old term's writers stay fenced off.
        fence.renewed_at(boottime(), true);
        assert!(!fence.holds(term));
        assert!(fence.holds(term + 1));
        fence.revoke();
        assert_eq!(fence.term(), None);
    }
}
