//! Writing Service statuses and `allocated-from` annotations: the latest desired state
//! per Service, one write at a time per Service, several Services at once, and only
//! while the leadership fence holds for the term that decided it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use routelb_core::ipam::ServiceKey;
use routelb_core::service;
use serde_json::json;
use tokio::sync::Notify;

use super::{ERRORS, ERRORS_HELP};
use crate::k8s::leader::Fence;
use crate::metrics::METRICS;

/// What a Service should show.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Desired {
    addresses: Vec<IpAddr>,
    pool: Option<String>,
}

#[derive(Default)]
struct Queue {
    /// What each Service should show, and the newest resourceVersion it was decided on.
    desired: HashMap<ServiceKey, (Desired, Option<u64>)>,
    order: VecDeque<ServiceKey>,
    queued: HashSet<ServiceKey>,
    in_flight: HashSet<ServiceKey>,
    /// What was last written and the resourceVersion the write produced.
    written: HashMap<ServiceKey, (Desired, u64)>,
}

/// Writes Service statuses and annotations: latest desired state per Service, one write
/// at a time per Service, several Services at once.
pub(super) struct ServiceWriter {
    client: Client,
    cache: Store<Service>,
    queue: Mutex<Queue>,
    notify: Notify,
    fence: Fence,
    term: u64,
}

impl ServiceWriter {
    /// A writer for one term of leadership.
    pub(super) fn new(
        client: Client,
        cache: Store<Service>,
        fence: Fence,
        term: u64,
    ) -> ServiceWriter {
        ServiceWriter {
            client,
            cache,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            fence,
            term,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a Service to show `addresses` from `pool`; `observed` is the
    /// resourceVersion of the version that showed otherwise.
    pub(super) fn submit(
        &self,
        key: ServiceKey,
        addresses: Vec<IpAddr>,
        pool: Option<String>,
        observed: Option<String>,
    ) {
        let desired = Desired { addresses, pool };
        let observed = observed.and_then(|rv| rv.parse::<u64>().ok());
        let mut q = self.lock();
        // A stale observation of a state we already wrote needs no second write.
        if let (Some((written, rv)), Some(obs)) = (q.written.get(&key), observed)
            && *written == desired
            && *rv >= obs
        {
            return;
        }
        let basis = q.desired.get(&key).and_then(|(_, o)| *o).max(observed);
        q.desired.insert(key.clone(), (desired, basis));
        if !q.in_flight.contains(&key) && q.queued.insert(key.clone()) {
            q.order.push_back(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// One worker: takes Services off the queue and writes them, until aborted.
    pub(super) async fn work(self: Arc<Self>) {
        loop {
            let job = {
                let mut q = self.lock();
                let key = q.order.pop_front();
                key.map(|k| {
                    q.queued.remove(&k);
                    q.in_flight.insert(k.clone());
                    let d = q.desired.remove(&k);
                    (k, d)
                })
            };
            let Some((key, desired)) = job else {
                self.notify.notified().await;
                continue;
            };
            let mut retry = false;
            if let Some((desired, observed)) = desired {
                match self.write(&key, &desired, observed).await {
                    Ok(Some(rv)) => {
                        self.lock().written.insert(key.clone(), (desired, rv));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        METRICS.inc(
                            ERRORS,
                            ERRORS_HELP,
                            &[("component", "allocator"), ("operation", "service_status")],
                            1.0,
                        );
                        tracing::warn!(service = %key, error = %e, "writing Service status failed; retrying");
                        let mut q = self.lock();
                        q.desired.entry(key.clone()).or_insert((desired, observed));
                        retry = true;
                    }
                }
            }
            if retry {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let mut q = self.lock();
            q.in_flight.remove(&key);
            if q.desired.contains_key(&key) && q.queued.insert(key.clone()) {
                q.order.push_back(key);
                drop(q);
                self.notify.notify_one();
            }
        }
    }

    /// Brings one Service's status and annotation to `desired`, decided on the version
    /// `observed`. Returns the resulting resourceVersion, or `None` when the Service is
    /// gone, already right, or leadership is not proven.
    ///
    /// The pair is written so that an address never shows without its annotation: when
    /// assigning, the annotation first; when clearing, the status first. A crash between
    /// the two leaves at worst an annotation without an address, which nothing announces.
    async fn write(
        &self,
        key: &ServiceKey,
        desired: &Desired,
        observed: Option<u64>,
    ) -> kube::Result<Option<u64>> {
        let cached = self
            .cache
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        // The cache tells what is already right only when it is at least as new as what
        // was decided on (after a fresh list at the start of a term it may lag).
        let basis = cached.filter(|c| {
            let rv = c.resource_version().and_then(|rv| rv.parse::<u64>().ok());
            observed.is_none_or(|o| rv.is_some_and(|rv| rv >= o))
        });
        let status = basis
            .as_ref()
            .is_none_or(|c| service::ingress_ips(c) != desired.addresses);
        let annotation = basis
            .as_ref()
            .is_none_or(|c| service::allocated_from(c) != desired.pool.as_deref());
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut parts = [(annotation, Part::Annotation), (status, Part::Status)];
        if desired.addresses.is_empty() {
            parts.reverse();
        }
        let mut rv = None;
        for (needed, part) in parts {
            if !needed {
                continue;
            }
            if !self.fence.holds(self.term) {
                // Leadership is not proven any more: another replica may be deciding.
                tracing::debug!(service = %key, "not writing: the leadership fence does not hold");
                return Ok(None);
            }
            let result = match part {
                Part::Status => {
                    let ingress: Vec<serde_json::Value> = desired
                        .addresses
                        .iter()
                        .map(|a| json!({"ip": a.to_string(), "ipMode": "VIP"}))
                        .collect();
                    let value = if ingress.is_empty() {
                        serde_json::Value::Null
                    } else {
                        json!(ingress)
                    };
                    let patch = json!({"status": {"loadBalancer": {"ingress": value}}});
                    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                }
                Part::Annotation => {
                    let patch = json!({"metadata": {"annotations": {service::ALLOCATED_FROM: desired.pool}}});
                    api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                }
            };
            match result {
                Ok(s) => rv = s.resource_version(),
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(rv.and_then(|rv| rv.parse().ok()))
    }
}

/// The two halves of what a Service shows.
#[derive(Clone, Copy, Debug)]
enum Part {
    Status,
    Annotation,
}
