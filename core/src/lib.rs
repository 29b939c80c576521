//! routelb's pure core. Nothing here sees a Kubernetes client, a netlink socket, a clock
//! or a file: the crate has no such dependency, and clippy refuses clocks and files
//! (`clippy.toml`). The shells in the `routelb` crate read the world, call in here to
//! decide, and write what was decided.
//!
//! - [`crd`]: the API types (AddressPool, BGPPeer, RouterConfig, NodeRoutingStatus).
//! - [`service`], [`selector`]: reading Services and label selectors.
//! - [`ipam`]: pools and the O(log n) allocation index.
//! - [`allocation`]: the allocator's decisions (Service status, Events, pool status).
//! - [`node`]: what one node announces, from Services, EndpointSlices, its Node, pools.
//! - [`advertise`]: which kinds of Service address (LoadBalancer, external, cluster) it announces.
//! - [`l2`]: local (L2) pools: which node answers ARP/NDP for each address.
//! - [`net`]: the kernel vocabulary, the kernel contract and the dataplane plan.
//! - [`routing`]: which RouterConfig governs a node, the template context, rendering.
//! - [`index`]: feeding watches into the components' state, relists included.
//! - [`report`]: the objects Events are about, and reporting a problem once.
//! - [`status`]: per-node routing reports, BGPPeer and RouterConfig status, `routelb status`.

pub mod advertise;
pub mod allocation;
pub mod crd;
mod fuzz;
pub mod index;
pub mod ipam;
pub mod l2;
pub mod net;
pub mod node;
pub mod report;
pub mod routing;
pub mod selector;
pub mod service;
pub mod status;
