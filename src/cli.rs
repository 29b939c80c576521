//! The `routelb` command line: one binary, one subcommand per component.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    Allocator,
    /// Make this node announce the Services it should: addresses on kube-lb0, routes in
    /// the routelb table, routing-daemon configuration (runs as a DaemonSet).
    Agent,
    /// Render a routing-daemon template (BIRD or FRR) from a context file, offline, to
    /// check an edited template.
    Render,
    /// Remove everything the agent put into this node's kernel: its addresses, its routes
    /// and the kube-lb0 interface.
    Cleanup,
    /// Print routelb's CustomResourceDefinitions (AddressPool, BGPPeer, RouterConfig) as YAML.
    Crds,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Allocator => "allocator",
            Command::Agent => "agent",
            Command::Render => "render",
            Command::Cleanup => "cleanup",
            Command::Crds => "crds",
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
    match run(&cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("routelb {}: error: {err:#}", cli.command.name());
            ExitCode::FAILURE
        }
    }
}

fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Crds => {
            let yaml = crate::crd::crds_yaml()?;
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Allocator | Command::Agent | Command::Render | Command::Cleanup => {
            eprintln!(
                "routelb {}: not implemented yet; this build only provides `routelb crds`",
                command.name()
            );
            Ok(ExitCode::from(2))
        }
    }
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
}
