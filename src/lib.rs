//! routelb: a Linux-native LoadBalancer for Kubernetes on bare metal.
//!
//! The decisions live in the pure [`routelb_core`] crate; this crate is the I/O around
//! them, one room per kind of I/O:
//!
//! - [`k8s`]: watches feeding one input stream, Events, leader election and its fence.
//! - [`kernel`]: netlink behind a small trait, the dataplane and its thread.
//! - [`daemon`]: the routing daemons (BIRD, FRR) behind one trait.
//! - [`allocator`], [`agent`]: the two components' shells: read, decide (core), write.
//! - [`cli`], [`health`], [`metrics`]: the binary, probes and `/metrics`.
//! - [`status`]: `routelb status`, the routing chain as seen from the cluster.

pub mod agent;
pub mod allocator;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod health;
pub mod k8s;
pub mod kernel;
pub mod metrics;
pub mod status;
