//! Kubernetes I/O for both components: a client from the kubeconfig, watches feeding one
//! input stream ([`watch`]), Events grouped into series and bounded ([`events`]), and
//! leader election with a fence that writers check ([`leader`]), node Leases for local
//! pools ([`members`]).

pub mod events;
pub mod leader;
pub mod members;
pub mod watch;

use anyhow::Context;

/// A kube client from `kubeconfig`, else the usual inference ($KUBECONFIG,
/// ~/.kube/config, the in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("use kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("find a Kubernetes configuration (set --kubeconfig or KUBECONFIG)")?,
    };
    kube::Client::try_from(config).context("build the Kubernetes client")
}
