//! routelb: a Linux-native LoadBalancer for Kubernetes on bare metal.
//!
//! The library is split along the I/O boundary. Pure modules ([`ipam`], [`selector`],
//! [`crd`] types) never see a kube client or a netlink socket; the subcommands in
//! [`cli`] wire them to the outside world.

pub mod agent;
pub mod allocator;
pub mod cli;
pub mod crd;
pub mod dataplane;
pub mod events;
pub mod health;
pub mod ipam;
pub mod kubewatch;
pub mod leader;
pub mod metrics;
pub mod netlink;
pub mod routing;
pub mod selector;
pub mod service;
