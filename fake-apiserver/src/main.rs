//! `fake-apiserver --listen ADDR --kubeconfig PATH`: serve the fake API over plain HTTP
//! until SIGINT or SIGTERM, writing a kubeconfig for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fake_apiserver::{FakeApiServer, Options};

/// An in-memory Kubernetes API server for tests and the lab (no auth, plain HTTP).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig for the server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Changes kept per resource before older versions answer 410 Expired.
    #[arg(long, default_value_t = 100_000)]
    history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
    /// Serve a single-stack (IPv4) cluster instead of a dual-stack one.
    #[arg(long)]
    single_stack: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = Options {
        history_limit: args.history,
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        dual_stack: !args.single_stack,
        ..Options::default()
    };
    let server = FakeApiServer::start_on(args.listen, options).await?;
    if let Some(path) = &args.kubeconfig {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, server.kubeconfig())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    }
    println!("fake-apiserver listening on {}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.stop().await;
    Ok(())
}
