//! The node's NodeRoutingStatus: one object per node in routelb's namespace (so nodes
//! never contend on one object), owned by the Node (garbage-collected with it), written
//! only by this node's agent.
//!
//! Writes are bounded: the agent offers what it knows on every pass of its loop; the
//! report is written only when it differs from the last one written (condition times
//! aside), at most once per interval, and retried with backoff when the API server
//! refuses; a quiet node rewrites it once every five minutes (its heartbeat, so that a
//! report whose agent is gone can be told apart). A restarted agent starts from the
//! object as it finds it, so it writes nothing when nothing changed.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::{Api, Client};
use routelb_core::crd::{NodeRoutingReport, NodeRoutingStatus, NodeRoutingStatusSpec};
use routelb_core::status::{NodeFacts, heartbeat_due, node_report, report_differs};
use tokio::sync::watch;

/// Where and how often the report is written.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    pub namespace: String,
    /// At most one write per this long.
    pub interval: Duration,
}

impl Default for ReportOptions {
    fn default() -> ReportOptions {
        ReportOptions {
            namespace: "routelb-system".into(),
            interval: Duration::from_secs(5),
        }
    }
}

/// What the agent offers: its facts and its Node's UID (the report's owner).
#[derive(Clone, Debug, Default)]
pub struct Offer {
    pub facts: NodeFacts,
    pub node_uid: Option<String>,
}

/// The running writer.
#[derive(Debug)]
pub struct Reporter {
    tx: watch::Sender<Option<Offer>>,
}

impl Reporter {
    pub fn start(client: Client, node: &str, opts: ReportOptions) -> Reporter {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(run(client, node.to_string(), opts, rx));
        Reporter { tx }
    }

    /// What the agent knows now; written when it changed the report.
    pub fn offer(&self, offer: Offer) {
        self.tx.send_replace(Some(offer));
    }
}

fn owned_by(o: &NodeRoutingStatus, uid: &str) -> bool {
    o.metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

fn owner(node: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.to_string(),
        uid: uid.to_string(),
        ..OwnerReference::default()
    }
}

async fn run(
    client: Client,
    node: String,
    opts: ReportOptions,
    mut rx: watch::Receiver<Option<Offer>>,
) {
    let api: Api<NodeRoutingStatus> = Api::namespaced(client, &opts.namespace);
    // The object as last read or written: its resourceVersion, owner and report.
    let mut object: Option<NodeRoutingStatus> = None;
    let mut read = false;
    let mut backoff = opts.interval;
    let mut reported_failure = false;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(offer) = rx.borrow_and_update().clone() else {
            continue;
        };
        if !read {
            match api.get_opt(&node).await {
                Ok(found) => {
                    object = found;
                    read = true;
                }
                Err(e) => {
                    failed(&node, &e, &mut reported_failure);
                    retry_later(&mut rx, &mut backoff, opts.interval).await;
                    continue;
                }
            }
        }
        let previous = object.as_ref().and_then(|o| o.status.as_ref());
        let now = k8s_openapi::jiff::Timestamp::now();
        let report = node_report(&offer.facts, previous, now);
        // Written when it changed, when its heartbeat is due, or to take the Node as its
        // owner (so that it goes with the Node).
        let unowned = offer
            .node_uid
            .as_ref()
            .is_some_and(|uid| !object.as_ref().is_some_and(|o| owned_by(o, uid)));
        if previous.is_some_and(|p| !report_differs(p, &report) && !heartbeat_due(p, now))
            && !unowned
        {
            continue;
        }
        match write(&api, &node, object.take(), &offer, report).await {
            Ok(written) => {
                object = Some(written);
                if reported_failure {
                    tracing::info!(node = %node, "NodeRoutingStatus written again");
                    reported_failure = false;
                }
                backoff = opts.interval;
                // At most one write per interval: what changes meanwhile coalesces.
                tokio::time::sleep(opts.interval).await;
            }
            Err((kept, e)) => {
                object = kept;
                if matches!(&e, kube::Error::Api(r) if r.code == 409) {
                    // Someone else wrote it (an older agent?): read it again.
                    read = false;
                }
                failed(&node, &e, &mut reported_failure);
                retry_later(&mut rx, &mut backoff, opts.interval).await;
            }
        }
    }
}

/// Marks the offer as unseen and waits before the next try (doubling up to a minute).
async fn retry_later(
    rx: &mut watch::Receiver<Option<Offer>>,
    backoff: &mut Duration,
    interval: Duration,
) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(60)).max(interval);
    rx.mark_changed();
}

fn failed(node: &str, e: &kube::Error, reported: &mut bool) {
    if !*reported {
        tracing::warn!(node = %node, error = %e, "cannot write the node's NodeRoutingStatus; retrying with backoff (is the CRD installed and the agent's Role current?)");
        *reported = true;
    } else {
        tracing::debug!(node = %node, error = %e, "writing NodeRoutingStatus failed again");
    }
}

/// Creates the object if needed (owned by the Node), then replaces its status.
async fn write(
    api: &Api<NodeRoutingStatus>,
    node: &str,
    object: Option<NodeRoutingStatus>,
    offer: &Offer,
    report: NodeRoutingReport,
) -> Result<NodeRoutingStatus, (Option<NodeRoutingStatus>, kube::Error)> {
    let owners: Vec<OwnerReference> = offer.node_uid.iter().map(|uid| owner(node, uid)).collect();
    let mut object = match object {
        Some(o) => o,
        None => {
            let new = NodeRoutingStatus {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    owner_references: (!owners.is_empty()).then(|| owners.clone()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_string(),
                            "routelb-agent".to_string(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                },
                spec: NodeRoutingStatusSpec {
                    node_name: node.to_string(),
                },
                status: None,
            };
            api.create(&PostParams::default(), &new)
                .await
                .map_err(|e| (None, e))?
        }
    };
    // A Node recreated under the same name: the report follows the new one.
    let owned = owners.iter().all(|w| owned_by(&object, &w.uid));
    if !owned {
        object.metadata.owner_references = Some(owners);
        object = match api.replace(node, &PostParams::default(), &object).await {
            Ok(o) => o,
            Err(e) => return Err((Some(object), e)),
        };
    }
    let old = object.status.replace(report);
    match api
        .replace_status(node, &PostParams::default(), &object)
        .await
    {
        Ok(o) => Ok(o),
        Err(e) => {
            object.status = old;
            // Deleted meanwhile: created again on the next try.
            let kept = Some(object).filter(|_| !matches!(&e, kube::Error::Api(r) if r.code == 404));
            Err((kept, e))
        }
    }
}
