//! `routelb status`: lists what the chain needs with the user's kubeconfig, as kubectl
//! does, and prints the verdicts of [`routelb_core::status::chain`].

use anyhow::Context;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use routelb_core::crd::{AddressPool, NodeRoutingStatus, RouterConfig};
use routelb_core::node::SERVICE_NAME_LABEL;
use routelb_core::status::chain::{self, Verdict, World};

/// What to look at.
#[derive(Clone, Debug)]
pub enum Target {
    Cluster,
    Service { namespace: String, name: String },
}

async fn all<K>(api: Api<K>, what: &str, params: &ListParams) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    Ok(api
        .list(params)
        .await
        .with_context(|| format!("list {what}"))?
        .items)
}

/// Prints the chain for `target`; returns the worst verdict.
pub async fn run(
    client: Client,
    target: &Target,
    routelb_namespace: &str,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Verdict> {
    let lp = ListParams::default();
    let mut world = World {
        pools: all(Api::<AddressPool>::all(client.clone()), "AddressPools", &lp).await?,
        configs: all(
            Api::<RouterConfig>::all(client.clone()),
            "RouterConfigs",
            &lp,
        )
        .await?,
        reports: all(
            Api::<NodeRoutingStatus>::namespaced(client.clone(), routelb_namespace),
            "NodeRoutingStatuses",
            &lp,
        )
        .await?,
        nodes: all(Api::<Node>::all(client.clone()), "Nodes", &lp).await?,
        now: k8s_openapi::jiff::Timestamp::now(),
        ..World::default()
    };
    let steps = match target {
        Target::Cluster => {
            world.services = all(Api::<Service>::all(client.clone()), "Services", &lp).await?;
            world.slices = all(
                Api::<EndpointSlice>::all(client.clone()),
                "EndpointSlices",
                &lp,
            )
            .await?;
            chain::cluster_summary(&world)
        }
        Target::Service { namespace, name } => {
            let svc = Api::<Service>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .with_context(|| format!("get service {namespace}/{name}"))?
                .with_context(|| format!("service {namespace}/{name} not found"))?;
            let by_service = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"));
            world.slices = all(
                Api::<EndpointSlice>::namespaced(client.clone(), namespace),
                "EndpointSlices",
                &by_service,
            )
            .await?;
            let about = ListParams::default().fields(&format!(
                "involvedObject.kind=Service,involvedObject.name={name}"
            ));
            world.events = all(
                Api::<Event>::namespaced(client.clone(), namespace),
                "Events",
                &about,
            )
            .await?;
            chain::service_chain(&svc, &world)
        }
    };
    out.write_all(chain::render(&steps).as_bytes())?;
    Ok(steps.iter().map(|s| s.verdict).max().unwrap_or(Verdict::Ok))
}
