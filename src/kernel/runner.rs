//! The dataplane on its own threads: one reconciles when the node state or the contracts
//! change, when netlink notifications show a change to owned entries (drift), and every
//! `resync` as a safety net; another listens to the kernel's notifications.
//!
//! Nothing is reconciled until the first node state arrives, so an agent that has not
//! synced yet withdraws nothing. Stopping leaves the kernel as it is (hitless restarts).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use routelb_core::net::{KernelContract, NodeState, Notification};
use tokio::sync::watch;

use super::Config;
use super::dataplane::{Dataplane, Interest};
use super::netlink::{Monitor, Netlink};

/// What the running dataplane last did.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub reconciles: u64,
    /// Changes made since start (added + removed).
    pub changes: u64,
    /// Failed changes since start.
    pub errors: u64,
    /// Drift repairs: reconciles triggered by someone else's change that fixed something.
    pub repairs: u64,
    /// The interfaces of the contracts kept programmed.
    pub interfaces: Vec<String>,
    pub fallback: Option<&'static str>,
    pub last_error: Option<String>,
}

enum Cmd {
    /// A new node state is in the slot.
    Desired,
    Contracts(Vec<KernelContract>),
    /// Notifications about owned entries (possibly our own changes echoing back).
    Notes(Vec<Notification>),
    /// Notifications were lost: look at the kernel again.
    Resync,
    Present(
        KernelContract,
        tokio::sync::oneshot::Sender<anyhow::Result<BTreeSet<IpAddr>>>,
    ),
    Stop,
}

/// A dataplane running on its own threads.
#[derive(Debug)]
pub struct Running {
    tx: mpsc::Sender<Cmd>,
    /// The latest node state not yet taken by the worker: a state replaced before the
    /// worker got to it is dropped, so a slow reconcile (thousands of addresses) never
    /// queues up copies of the whole state.
    slot: Arc<Mutex<Option<NodeState>>>,
    status: Arc<Mutex<Status>>,
    programmed: watch::Receiver<Vec<KernelContract>>,
    stopped: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts in the caller's network namespace, programming `cfg.contract` until other
    /// contracts are set.
    pub fn start(cfg: Config, resync: Duration) -> anyhow::Result<Running> {
        let nl = Netlink::new().context("open a netlink socket")?;
        let monitor = Monitor::new().context("subscribe to netlink notifications")?;
        let dp = Dataplane::new(nl, cfg.link_kind, cfg.vip_mode);
        let interest = Arc::new(Mutex::new(Interest::default()));
        let status = Arc::new(Mutex::new(Status::default()));
        let (programmed_tx, programmed) = watch::channel(Vec::new());
        let (tx, rx) = mpsc::channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(Mutex::new(None));
        let listener = {
            let (tx, interest, stopped) = (tx.clone(), interest.clone(), stopped.clone());
            std::thread::Builder::new()
                .name("dataplane-monitor".into())
                .spawn(move || listen(monitor, &interest, &tx, &stopped))?
        };
        let worker = {
            let status = status.clone();
            let worker = Worker {
                dp,
                contracts: vec![cfg.contract],
                contracts_set: false,
                desired: None,
                slot: slot.clone(),
                interest,
                status,
                programmed: programmed_tx,
            };
            std::thread::Builder::new()
                .name("dataplane".into())
                .spawn(move || worker.run(&rx, resync))?
        };
        Ok(Running {
            tx,
            slot,
            status,
            programmed,
            stopped,
            threads: vec![worker, listener],
        })
    }

    /// Starts inside the network namespace at `netns` (labs and tests: an agent on the
    /// host programming a node namespace), or in the caller's when `None`.
    pub fn start_in(
        netns: Option<&Path>,
        cfg: Config,
        resync: Duration,
    ) -> anyhow::Result<Running> {
        let Some(path) = netns else {
            return Running::start(cfg, resync);
        };
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            super::enter_netns(&path)?;
            Running::start(cfg, resync)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the dataplane start thread panicked"))?
    }

    /// Sets the node state (the latest one wins).
    pub fn set(&self, state: NodeState) {
        let waiting = self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(state)
            .is_some();
        // The worker takes the slot when woken; a state already waiting has a wake-up.
        if !waiting {
            let _ = self.tx.send(Cmd::Desired);
        }
    }

    /// Sets the contracts to keep programmed, in priority order (the one the routing
    /// daemon reads first); those left out are cleaned up.
    pub fn set_contracts(&self, contracts: Vec<KernelContract>) {
        let _ = self.tx.send(Cmd::Contracts(contracts));
    }

    /// The addresses the node accepts traffic for under `contract` now, as a previous
    /// run left them.
    pub async fn present(&self, contract: &KernelContract) -> anyhow::Result<BTreeSet<IpAddr>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || anyhow::anyhow!("the dataplane thread has stopped");
        self.tx
            .send(Cmd::Present(contract.clone(), tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The contracts the kernel holds the node state under, as of the last reconcile.
    pub fn programmed(&self) -> watch::Receiver<Vec<KernelContract>> {
        self.programmed.clone()
    }

    /// Stops the threads. The kernel keeps everything (hitless restarts).
    pub fn stop(mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn listen(
    mut monitor: Monitor,
    interest: &Mutex<Interest>,
    tx: &mpsc::Sender<Cmd>,
    stopped: &AtomicBool,
) {
    while !stopped.load(Ordering::Relaxed) {
        let cmd = match monitor.next(Duration::from_millis(500)) {
            Ok(notes) => {
                let interest = interest.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let ours: Vec<Notification> =
                    notes.into_iter().filter(|n| interest.concerns(n)).collect();
                if ours.is_empty() {
                    continue;
                }
                Cmd::Notes(ours)
            }
            Err(_) => Cmd::Resync,
        };
        if tx.send(cmd).is_err() {
            return;
        }
    }
}

struct Worker {
    dp: Dataplane<Netlink>,
    contracts: Vec<KernelContract>,
    /// Whether `contracts` still has to be given to the dataplane.
    contracts_set: bool,
    desired: Option<NodeState>,
    slot: Arc<Mutex<Option<NodeState>>>,
    interest: Arc<Mutex<Interest>>,
    status: Arc<Mutex<Status>>,
    programmed: watch::Sender<Vec<KernelContract>>,
}

impl Worker {
    fn run(mut self, rx: &mpsc::Receiver<Cmd>, resync: Duration) {
        let mut next_resync = Instant::now() + resync;
        loop {
            let wait = next_resync.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(cmd) => Some(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let (mut dirty, mut drift) = (false, false);
            if first.is_none() {
                // The periodic resync: a full look at the kernel.
                self.dp.invalidate();
                next_resync = Instant::now() + resync;
                dirty = true;
            }
            // Take everything already queued: a burst becomes one reconcile.
            for cmd in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match cmd {
                    Cmd::Stop => return,
                    Cmd::Desired => {
                        let taken = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                        if let Some(d) = taken {
                            dirty |= self.desired.as_ref() != Some(&d);
                            self.desired = Some(d);
                        }
                    }
                    Cmd::Contracts(c) => {
                        dirty |= self.contracts != c || !self.contracts_set;
                        self.contracts = c;
                        self.contracts_set = false;
                    }
                    Cmd::Notes(notes) => {
                        // Only news is drift: the echo of the dataplane's own changes,
                        // already folded in when they were made, needs no reconcile.
                        for n in &notes {
                            drift |= self.dp.note(n);
                        }
                    }
                    Cmd::Resync => {
                        self.dp.invalidate();
                        drift = true;
                    }
                    Cmd::Present(contract, reply) => {
                        let _ = reply.send(self.dp.present(&contract));
                    }
                }
            }
            if self.desired.is_some() && (dirty || drift) && !self.reconcile(drift && !dirty) {
                // Retry soon rather than at the next resync.
                next_resync = Instant::now() + resync.min(Duration::from_secs(1));
            }
        }
    }

    /// One reconcile; false when it failed as a whole.
    fn reconcile(&mut self, drift_only: bool) -> bool {
        let result = self.apply();
        *self.interest.lock().unwrap_or_else(|e| e.into_inner()) = self.dp.interest();
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.reconciles += 1;
        s.fallback = self.dp.fallback();
        s.interfaces = self.contracts.iter().map(|c| c.interface.clone()).collect();
        match result {
            Ok(report) => {
                s.changes += (report.added + report.removed) as u64;
                s.errors += report.errors.len() as u64;
                if drift_only && report.changed() {
                    s.repairs += 1;
                    tracing::info!(
                        added = report.added,
                        removed = report.removed,
                        "repaired drift in owned addresses and routes"
                    );
                }
                for e in &report.errors {
                    tracing::warn!(error = %e, errno = e.errno, "dataplane change failed");
                }
                s.last_error = report.errors.first().map(ToString::to_string);
                self.programmed.send_if_modified(|p| {
                    let changed = *p != self.contracts;
                    if changed {
                        p.clone_from(&self.contracts);
                    }
                    changed
                });
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reconcile failed; retrying");
                s.errors += 1;
                s.last_error = Some(format!("{e:#}"));
                self.dp.invalidate();
                false
            }
        }
    }

    fn apply(&mut self) -> anyhow::Result<super::Report> {
        if !self.contracts_set {
            self.dp.set_contracts(&self.contracts)?;
            self.contracts_set = true;
        }
        let desired = self.desired.as_ref().expect("checked by the caller");
        self.dp.reconcile(desired)
    }
}
