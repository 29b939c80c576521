//! The node's kernel: what routelb needs of it ([`Kernel`]), the real one over netlink
//! ([`netlink`]), an in-memory one for unit tests ([`fake`]), the dataplane that makes
//! it match a [`NodeState`](routelb_core::net::NodeState) under one or more kernel
//! contracts ([`dataplane`]), and the thread that keeps it so ([`runner`]); for local
//! (L2) pools, the LAN side ([`l2`]) and ARP/NDP on the wire ([`arp`]).
//!
//! The decisions (what to add, replace, remove) are `routelb_core::net::plan`'s; this
//! module only reads the kernel and carries them out.

pub mod arp;
pub mod dataplane;
pub mod fake;
pub mod l2;
pub mod netlink;
pub mod runner;

use std::fmt;
use std::io;
use std::path::Path;

use anyhow::Context;

use routelb_core::net::{KernelContract, Link, LinkKind, Op, Prefix, Route, VipMode};

pub use dataplane::{Dataplane, Report};
pub use runner::{Running, Status};

/// Moves the calling thread into the network namespace at `path` (labs and tests: an
/// agent on the host programming a node namespace). Threads it starts live there too.
pub fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let fd = std::fs::File::open(path)
        .with_context(|| format!("open network namespace {}", path.display()))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter network namespace {}", path.display()))
}

/// The kernel operations the dataplane uses, in kernel words. Changes are batched
/// ([`Kernel::apply`]) and idempotent: adding what exists and removing what is gone
/// succeed; every other failure names the change and keeps its errno.
pub trait Kernel {
    fn link_get(&mut self, name: &str) -> io::Result<Option<Link>>;
    fn link_add(&mut self, name: &str, kind: &str) -> io::Result<()>;
    fn link_set_up(&mut self, index: u32) -> io::Result<()>;
    fn link_del(&mut self, index: u32) -> io::Result<()>;
    /// Addresses on a link.
    fn addr_dump(&mut self, index: u32) -> io::Result<Vec<Prefix>>;
    /// Routes of one table and protocol, both families.
    fn route_dump(&mut self, table: u32, protocol: u8) -> io::Result<Vec<Route>>;
    /// Applies changes; one result per change.
    fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), OpError>>;
}

/// A change the kernel refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    pub op: Op,
    pub errno: i32,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.op,
            io::Error::from_raw_os_error(self.errno)
        )?;
        if self.errno == libc::EEXIST {
            write!(f, " (an entry routelb does not own is in the way)")?;
        }
        Ok(())
    }
}

impl std::error::Error for OpError {}

/// Whether an errno means "already as wanted" for an operation. A route add that meets
/// EEXIST is not benign: another route (not ours: ours were dumped) holds the slot.
pub(crate) fn benign(op: &Op, errno: i32) -> bool {
    match op {
        Op::AddrAdd { .. } => errno == libc::EEXIST,
        Op::RouteAdd(_) | Op::RouteReplace(_) => false,
        Op::AddrDel { .. } | Op::RouteDel(_) => {
            matches!(
                errno,
                libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL | libc::ENODEV
            )
        }
    }
}

/// How the dataplane of a node is set up; the contract is where it starts (the agent
/// then follows the RouterConfig).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub contract: KernelContract,
    pub link_kind: LinkKind,
    pub vip_mode: VipMode,
}
