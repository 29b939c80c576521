//! `/healthz`, `/readyz` for the kubelet's probes and `/metrics` for Prometheus.
//!
//! `/healthz` answers 200 while the process serves; `/readyz` answers 200 once the
//! component has completed its first full sync, else 503 with what it is waiting for;
//! both bodies carry a one-line detail. `/metrics` is the text exposition format.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Readiness shared between a component and its probe server.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<(bool, String)>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            state: Mutex::new((false, "starting".into())),
        })
    }

    /// Marks the component ready or not, with a human-readable detail.
    pub fn set(&self, ready: bool, detail: impl Into<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (ready, detail.into());
    }

    pub fn ready(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body) = match path {
            "/healthz" | "/livez" => (StatusCode::OK, "ok\n".to_string()),
            "/metrics" => (StatusCode::OK, crate::metrics::METRICS.render()),
            "/readyz" => {
                let (ready, detail) = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, format!("{detail}\n"))
            }
            _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
        };
        Response::builder()
            .status(status)
            .header(
                "content-type",
                if path == "/metrics" {
                    "text/plain; version=0.0.4"
                } else {
                    "text/plain"
                },
            )
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    }
}

/// Binds `addr` and serves the probes until the task is dropped. Returns the bound address.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the health endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = health.answer(req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}
