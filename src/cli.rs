//! The `routelb` command line: one binary, one subcommand per component.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use routelb_core::net::{LinkKind, VipMode};
use routelb_core::routing::ContractFlags;

/// Linux-native LoadBalancer for Kubernetes on bare metal.
///
/// The allocator assigns Service addresses from AddressPools; the agent on every node
/// puts them on kube-lb0 and into a kernel route table, where a BIRD or FRR sidecar
/// picks them up and announces them to the routers.
#[derive(Debug, Parser)]
#[command(name = "routelb", version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ROUTELB_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, then the in-cluster
    /// service account).
    #[arg(long, global = true, env = "ROUTELB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Log output format; the level comes from `RUST_LOG` (default `info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Assign addresses from AddressPools to Services of type LoadBalancer and record them
    /// in the Services' status (runs as a Deployment with leader election).
    Allocator(AllocatorArgs),
    /// Make this node announce the Services it should: addresses on kube-lb0, routes in
    /// the routelb table, routing-daemon configuration (runs as a DaemonSet).
    Agent(Box<AgentArgs>),
    /// Render a routing-daemon template (BIRD or FRR) from a context file, offline, to
    /// check an edited template.
    Render(RenderArgs),
    /// Remove everything the agent put into this node's kernel: its addresses, its routes
    /// and the kube-lb0 interface.
    Cleanup(DataplaneArgs),
    /// Print routelb's CustomResourceDefinitions (AddressPool, BGPPeer, RouterConfig,
    /// NodeRoutingStatus) as YAML.
    Crds,
    /// Why is there no route? `routelb status` summarises pools, nodes, sessions and
    /// Services in trouble; `routelb status svc -n NAMESPACE NAME` follows one Service
    /// from its address to each router, with a verdict per step and what to fix. Uses
    /// the kubeconfig as kubectl does. Exit code 0: ok (or warnings), 2: a step fails.
    Status(StatusArgs),
}

/// Options of `routelb status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Nothing for the cluster summary, or `svc NAME` (`service NAME`) for one Service.
    #[arg(num_args = 0..=2, value_name = "svc NAME")]
    pub what: Vec<String>,
    /// The Service's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// routelb's namespace (where the nodes' NodeRoutingStatus objects are).
    #[arg(long, default_value = "routelb-system")]
    pub routelb_namespace: String,
}

/// Options of `routelb allocator`.
#[derive(Debug, Args)]
pub struct AllocatorArgs {
    /// Ignore Services that have no spec.loadBalancerClass (by default they are handled,
    /// like those of class routelb.io/routelb).
    #[arg(long)]
    pub ignore_class_less: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "routelb-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "routelb-allocator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host and PID).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal; a standby takes over after it.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Address of /healthz, /readyz and /metrics (Prometheus).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub health_addr: SocketAddr,
    /// Seconds between AddressPool status refreshes (at most one write per pool each).
    #[arg(long, default_value_t = 1.0)]
    pub status_interval: f64,
}

/// Options of `routelb render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The template (e.g. templates/bird.conf.tera).
    #[arg(long)]
    pub template: PathBuf,
    /// The template context, JSON or YAML (see docs/templates.md and templates/testdata/).
    #[arg(long)]
    pub context: PathBuf,
}

/// Options of `routelb agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name (the DaemonSet sets NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Ignore Services without spec.loadBalancerClass (must match the allocator's flag).
    #[arg(long)]
    pub ignore_class_less: bool,
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    /// Seconds between full re-reads of the kernel's owned entries (a safety net beside
    /// netlink notifications).
    #[arg(long, default_value_t = 60)]
    pub resync_interval: u64,
    /// Events per second at most.
    #[arg(long, default_value_t = 10.0)]
    pub events_per_second: f64,
    /// Address of /healthz, /readyz and /metrics (Prometheus).
    #[arg(long, default_value = "0.0.0.0:9091")]
    pub health_addr: SocketAddr,
    /// Program the kernel of this network namespace instead of the agent's own (labs and
    /// tests that run several "nodes" on one machine).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Leave the routing daemon alone (no templates, no reloads).
    #[arg(long)]
    pub no_routing: bool,
    /// Do not announce local (L2) pools (no node Lease, no LAN addresses).
    #[arg(long)]
    pub no_l2: bool,
    /// L2: how long a node's record stays valid after each renewal, in milliseconds.
    /// Failover takes at most about this long; each node writes its Lease
    /// 1000/`--l2-renew-ms` times a second while some pool is local.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(300..=60_000))]
    pub l2_lease_ms: u64,
    /// L2: how often the node renews its Lease, in milliseconds (under the lease).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(100..=20_000))]
    pub l2_renew_ms: u64,
    /// L2: how long addresses stay answered while the agent restarts, in seconds.
    #[arg(long, default_value_t = 30)]
    pub l2_restart_grace: u64,
    /// Directory of the routing templates (the templates ConfigMap).
    #[arg(long, default_value = "/etc/routelb/templates")]
    pub template_dir: PathBuf,
    /// Where the BIRD configuration is written.
    #[arg(long, default_value = "/etc/bird/bird.conf")]
    pub bird_config: PathBuf,
    /// BIRD's control socket.
    #[arg(long, default_value = "/run/bird/bird.ctl")]
    pub bird_socket: PathBuf,
    /// Where the FRR configuration is written.
    #[arg(long, default_value = "/etc/frr/frr.conf")]
    pub frr_config: PathBuf,
    /// Directory of FRR's vty sockets.
    #[arg(long, default_value = "/var/run/frr")]
    pub frr_vty_dir: PathBuf,
    /// FRR's vtysh.
    #[arg(long, default_value = "/usr/bin/vtysh")]
    pub vtysh: PathBuf,
    /// FRR's reload tool.
    #[arg(long, default_value = "/usr/lib/frr/frr-reload.py")]
    pub frr_reload: PathBuf,
    /// Namespace of the Secrets with BGP passwords (routelb's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "routelb-system")]
    pub namespace: String,
    /// The node's NodeRoutingStatus (in `--namespace`) is written at most once per this
    /// many seconds, only when it changed; 0 writes none.
    #[arg(long, default_value_t = 5)]
    pub report_interval: u64,
}

/// Where the agent's dataplane writes (shared by `agent` and `cleanup`).
///
/// The RouterConfig that selects the node sets the interface, table and protocol; these
/// flags apply only where no RouterConfig sets them (and to `cleanup`).
#[derive(Clone, Debug, Args)]
pub struct DataplaneArgs {
    /// Interface holding the Service addresses (default kube-lb0), where no RouterConfig
    /// sets spec.interface.
    #[arg(long)]
    pub interface: Option<String>,
    /// Kernel routing table for announced prefixes (default 200), where no RouterConfig
    /// sets spec.routeTable.
    #[arg(long)]
    pub route_table: Option<u32>,
    /// Route protocol number marking routelb's routes (default 249), where no RouterConfig
    /// sets spec.routeProtocol.
    #[arg(long)]
    pub route_protocol: Option<u8>,
    /// Link type of the interface: dummy, or an empty bridge where the kernel has no dummy
    /// support (auto tries dummy first).
    #[arg(long, value_enum, default_value_t = LinkKindArg::Auto)]
    pub lb_link_kind: LinkKindArg,
    /// How the node accepts Service traffic: addresses on the interface, or local routes
    /// (linear in the kernel, for nodes with thousands of addresses).
    #[arg(long, value_enum, default_value_t = VipModeArg::Address)]
    pub vip_mode: VipModeArg,
}

/// `--lb-link-kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LinkKindArg {
    /// `dummy`, falling back to an empty bridge where the kernel has no dummy support.
    Auto,
    Dummy,
    Bridge,
}

/// `--vip-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VipModeArg {
    /// The address on kube-lb0: fine for hundreds, O(n²) in the kernel for many thousands.
    Address,
    /// A `local` route per address in the local table: linear.
    LocalRoute,
}

impl DataplaneArgs {
    pub fn flags(&self) -> ContractFlags {
        ContractFlags {
            interface: self.interface.clone(),
            table: self.route_table,
            protocol: self.route_protocol,
        }
    }

    pub fn link_kind(&self) -> LinkKind {
        match self.lb_link_kind {
            LinkKindArg::Auto => LinkKind::Auto,
            LinkKindArg::Dummy => LinkKind::Dummy,
            LinkKindArg::Bridge => LinkKind::Bridge,
        }
    }

    pub fn vip_mode(&self) -> VipMode {
        match self.vip_mode {
            VipModeArg::Address => VipMode::Address,
            VipModeArg::LocalRoute => VipMode::LocalRoute,
        }
    }
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Allocator(_) => "allocator",
            Command::Agent(_) => "agent",
            Command::Render(_) => "render",
            Command::Cleanup(_) => "cleanup",
            Command::Crds => "crds",
            Command::Status(_) => "status",
        }
    }
}

/// Sets up `tracing` with `RUST_LOG` (default `info`) in the chosen format, on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("routelb {}: error: {err:#}", cli.command.name());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let command = &cli.command;
    match command {
        Command::Allocator(args) => {
            let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
            runtime.block_on(allocator(cli.kubeconfig.as_deref(), args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds => {
            let yaml = routelb_core::crd::crds_yaml()?;
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup(args) => cleanup(args),
        Command::Agent(args) => {
            let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
            runtime.block_on(agent(cli.kubeconfig.as_deref(), args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(args) => {
            let text = render_files(&args.template, &args.context)?;
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let target = match args.what.as_slice() {
                [] => crate::status::Target::Cluster,
                [kind, name] if ["svc", "service", "services"].contains(&kind.as_str()) => {
                    crate::status::Target::Service {
                        namespace: args.namespace.clone(),
                        name: name.clone(),
                    }
                }
                other => anyhow::bail!(
                    "routelb status takes nothing (the cluster) or `svc NAME` (one Service), not {:?}",
                    other.join(" ")
                ),
            };
            let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
            let verdict = runtime.block_on(async {
                let client = client(cli.kubeconfig.as_deref()).await?;
                crate::status::run(
                    client,
                    &target,
                    &args.routelb_namespace,
                    &mut std::io::stdout().lock(),
                )
                .await
            })?;
            Ok(match verdict {
                routelb_core::status::chain::Verdict::Fail => ExitCode::from(2),
                _ => ExitCode::SUCCESS,
            })
        }
    }
}

/// Renders a template file with a context file (JSON or YAML): `routelb render`.
pub fn render_files(
    template: &std::path::Path,
    context: &std::path::Path,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("read {}", template.display()))?;
    let raw =
        std::fs::read_to_string(context).with_context(|| format!("read {}", context.display()))?;
    let ctx = routelb_core::routing::parse_context(&raw)
        .map_err(|e| anyhow::anyhow!("{}: {e}", context.display()))?;
    Ok(routelb_core::routing::render(&text, &ctx)?)
}

fn cleanup(args: &DataplaneArgs) -> anyhow::Result<ExitCode> {
    let contract = args.flags().fallback();
    let report = crate::kernel::Dataplane::cleanup(&contract)?;
    for e in &report.errors {
        eprintln!("routelb cleanup: {e}");
    }
    if report.removed == 0 && report.errors.is_empty() {
        println!(
            "nothing to clean up: no {} and no routes in table {} with protocol {}",
            contract.interface, contract.table, contract.protocol
        );
    } else {
        println!(
            "removed {} entries (addresses, routes, {})",
            report.removed, contract.interface
        );
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A kube client from `--kubeconfig`, else the usual inference.
pub use crate::k8s::client;

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The L2 timing from the flags: the renewal is kept under half the lease, the kernel
/// lifetime of an address is the lease rounded up to whole seconds.
fn l2_options(args: &AgentArgs) -> crate::agent::l2::L2Options {
    let lease = Duration::from_millis(args.l2_lease_ms);
    let renew = Duration::from_millis(args.l2_renew_ms.min(args.l2_lease_ms / 2));
    crate::agent::l2::L2Options {
        timing: crate::k8s::members::Timing {
            lease,
            renew,
            restart_grace: Duration::from_secs(args.l2_restart_grace.max(1)),
        },
        lan: crate::kernel::l2::Timing {
            refresh: renew,
            valid: Duration::from_secs(args.l2_lease_ms.div_ceil(1000).max(1)),
        },
        namespace: args.namespace.clone(),
    }
}

async fn agent(kubeconfig: Option<&std::path::Path>, args: &AgentArgs) -> anyhow::Result<()> {
    let client = client(kubeconfig).await?;
    let opts = crate::agent::Options {
        node_name: args.node_name.clone(),
        handle_class_less: !args.ignore_class_less,
        flags: args.dataplane.flags(),
        link_kind: args.dataplane.link_kind(),
        vip_mode: args.dataplane.vip_mode(),
        resync: Duration::from_secs(args.resync_interval.max(1)),
        netns: args.netns.clone(),
        events_per_second: args.events_per_second.max(0.1),
        routing: (!args.no_routing).then(|| crate::agent::routing::RoutingOptions {
            template_dir: args.template_dir.clone(),
            bird_config: args.bird_config.clone(),
            bird_socket: args.bird_socket.clone(),
            frr_config: args.frr_config.clone(),
            frr_vty_dir: args.frr_vty_dir.clone(),
            vtysh: args.vtysh.clone(),
            frr_reload: args.frr_reload.clone(),
            secrets_namespace: args.namespace.clone(),
            ..Default::default()
        }),
        l2: (!args.no_l2).then(|| l2_options(args)),
        report: (args.report_interval > 0).then(|| crate::agent::report::ReportOptions {
            namespace: args.namespace.clone(),
            interval: Duration::from_secs(args.report_interval),
        }),
    };
    let health = crate::health::Health::new();
    let bound = crate::health::serve(args.health_addr, health.clone()).await?;
    tracing::info!(node = %args.node_name, health = %bound, "routelb agent starting");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut run = tokio::spawn(crate::agent::run(client, opts, health, stopped));
    tokio::select! {
        _ = shutdown_signal() => {}
        // The agent ends by itself only on a fatal error (e.g. the dataplane cannot start).
        result = &mut run => return result.context("agent task")?,
    }
    tracing::info!("shutting down; the kernel keeps its addresses and routes");
    stop.send_replace(true);
    run.await.context("agent task")??;
    Ok(())
}

async fn allocator(
    kubeconfig: Option<&std::path::Path>,
    args: &AllocatorArgs,
) -> anyhow::Result<()> {
    let client = client(kubeconfig).await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = Duration::from_secs(args.lease_duration.max(3));
    let opts = crate::allocator::Options {
        settings: routelb_core::allocation::Settings {
            handle_class_less: !args.ignore_class_less,
            ..Default::default()
        },
        lease_namespace: args.lease_namespace.clone(),
        lease_name: args.lease_name.clone(),
        identity: identity.clone(),
        timing: crate::k8s::leader::Timing {
            lease_duration: lease,
            renew_deadline: lease * 2 / 3,
            retry_period: (lease / 7).max(Duration::from_millis(200)),
        },
        status_interval: Duration::from_secs_f64(args.status_interval.max(0.05)),
        ..Default::default()
    };
    let health = crate::health::Health::new();
    let bound = crate::health::serve(args.health_addr, health.clone()).await?;
    tracing::info!(%identity, health = %bound, "routelb allocator starting");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(crate::allocator::run(client, opts, health, stopped));
    shutdown_signal().await;
    tracing::info!("shutting down");
    stop.send_replace(true);
    run.await.context("allocator task")??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_every_subcommand_has_help() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(about.len() > 20, "{} needs a help text", sub.get_name());
        }
    }

    #[test]
    fn deploy_crds_yaml_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds.yaml");
        let wanted = routelb_core::crd::crds_yaml().unwrap();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &wanted).unwrap();
        }
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            shipped == wanted,
            "deploy/crds.yaml is stale: run `cargo run -- crds > deploy/crds.yaml` (or UPDATE_GOLDEN=1 cargo test)"
        );
    }
}
