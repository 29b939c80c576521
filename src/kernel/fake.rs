//! An in-memory [`Kernel`] for unit tests: links, addresses and routes with the real
//! kernel's rules that matter to routelb (one route per destination and table, EEXIST on
//! adding into an occupied slot, deletes that match protocol and device, no `dummy`
//! link type when asked to behave like the CI kernel). It records the notifications a
//! real kernel would send, so drift and adoption can be tested without a namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use routelb_core::net::{Link, Notification, Op, Prefix, Route};

use super::{Kernel, OpError, benign};

/// A kernel in memory.
#[derive(Debug, Default)]
pub struct FakeKernel {
    links: BTreeMap<u32, Link>,
    addrs: BTreeSet<(u32, Prefix)>,
    routes: BTreeMap<(Prefix, u32), Route>,
    /// Refuse to create `dummy` links (like a kernel built without them).
    pub no_dummy: bool,
    /// The changes routelb made (that changed something), in order.
    pub applied: Vec<Op>,
    notes: Vec<Notification>,
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl FakeKernel {
    pub fn new() -> FakeKernel {
        FakeKernel::default()
    }

    /// A link someone else created (as before an agent restart).
    pub fn with_link(mut self, name: &str, kind: &str) -> FakeKernel {
        self.create(name, kind, true);
        self
    }

    fn create(&mut self, name: &str, kind: &str, up: bool) -> u32 {
        let index = self.links.keys().last().map_or(10, |i| i + 1);
        let link = Link {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            up,
        };
        self.links.insert(index, link.clone());
        self.notes.push(Notification::NewLink(link));
        index
    }

    /// A change made by someone else (an operator, another program): applied and
    /// notified, but not recorded in [`FakeKernel::applied`].
    pub fn external(&mut self, op: &Op) -> Result<(), OpError> {
        self.change(op)
    }

    /// Someone deletes a link, and everything on it.
    pub fn external_link_del(&mut self, name: &str) {
        if let Some(index) = self
            .links
            .values()
            .find(|l| l.name == name)
            .map(|l| l.index)
        {
            let link = self.links.remove(&index).expect("found");
            self.addrs.retain(|(i, _)| *i != index);
            self.routes.retain(|_, r| r.oif != Some(index));
            self.notes.push(Notification::DelLink(link));
        }
    }

    /// The notifications sent since the last call.
    pub fn take_notes(&mut self) -> Vec<Notification> {
        std::mem::take(&mut self.notes)
    }

    /// Addresses on a link, by name.
    pub fn addresses_on(&self, name: &str) -> Vec<String> {
        let Some(index) = self
            .links
            .values()
            .find(|l| l.name == name)
            .map(|l| l.index)
        else {
            return Vec::new();
        };
        self.addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, p)| p.to_string())
            .collect()
    }

    /// Routes of a table as `dst proto P dev NAME`.
    pub fn routes_in(&self, table: u32) -> Vec<String> {
        self.routes
            .values()
            .filter(|r| r.table == table)
            .map(|r| {
                let dev = r
                    .oif
                    .and_then(|i| self.links.get(&i))
                    .map_or("?", |l| l.name.as_str());
                format!("{} proto {} dev {dev}", r.dst, r.protocol)
            })
            .collect()
    }

    fn change(&mut self, op: &Op) -> Result<(), OpError> {
        let result = match op {
            Op::AddrAdd { index, prefix, .. } => {
                if !self.links.contains_key(index) {
                    Err(libc::ENODEV)
                } else if self.addrs.insert((*index, *prefix)) {
                    Ok(())
                } else {
                    Err(libc::EEXIST)
                }
            }
            Op::AddrDel { index, prefix, .. } => {
                if self.addrs.remove(&(*index, *prefix)) {
                    // Linux: the last IPv4 address of a device going takes every IPv4
                    // route through it along, without a word (no RTM_DELROUTE).
                    let v4_left = self
                        .addrs
                        .iter()
                        .any(|(i, p)| i == index && p.addr.is_ipv4());
                    if prefix.addr.is_ipv4() && !v4_left {
                        self.routes
                            .retain(|_, r| !(r.dst.addr.is_ipv4() && r.oif == Some(*index)));
                    }
                    Ok(())
                } else {
                    Err(libc::EADDRNOTAVAIL)
                }
            }
            Op::RouteAdd(r) => {
                if r.oif.is_some_and(|i| !self.links.contains_key(&i)) {
                    Err(libc::ENODEV)
                } else {
                    match self.routes.entry(r.slot()) {
                        std::collections::btree_map::Entry::Occupied(_) => Err(libc::EEXIST),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(*r);
                            Ok(())
                        }
                    }
                }
            }
            Op::RouteReplace(r) => {
                self.routes.insert(r.slot(), *r);
                Ok(())
            }
            Op::RouteDel(r) => match self.routes.get(&r.slot()) {
                Some(have)
                    if have.protocol == r.protocol && (r.oif.is_none() || have.oif == r.oif) =>
                {
                    self.routes.remove(&r.slot());
                    Ok(())
                }
                _ => Err(libc::ESRCH),
            },
        };
        match result {
            Ok(()) => {
                self.notes.push(Notification::of(op));
                Ok(())
            }
            Err(errno) if benign(op, errno) => Ok(()),
            Err(errno) => Err(OpError {
                op: op.clone(),
                errno,
            }),
        }
    }
}

impl Kernel for FakeKernel {
    fn link_get(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links.values().find(|l| l.name == name).cloned())
    }

    fn link_add(&mut self, name: &str, kind: &str) -> io::Result<()> {
        if self.links.values().any(|l| l.name == name) {
            return Err(err(libc::EEXIST));
        }
        if kind == "dummy" && self.no_dummy {
            return Err(err(libc::EOPNOTSUPP));
        }
        self.create(name, kind, false);
        Ok(())
    }

    fn link_set_up(&mut self, index: u32) -> io::Result<()> {
        let link = self
            .links
            .get_mut(&index)
            .ok_or_else(|| err(libc::ENODEV))?;
        link.up = true;
        let link = link.clone();
        self.notes.push(Notification::NewLink(link));
        Ok(())
    }

    fn link_del(&mut self, index: u32) -> io::Result<()> {
        let name = self
            .links
            .get(&index)
            .map(|l| l.name.clone())
            .ok_or_else(|| err(libc::ENODEV))?;
        self.external_link_del(&name);
        Ok(())
    }

    fn addr_dump(&mut self, index: u32) -> io::Result<Vec<Prefix>> {
        Ok(self
            .addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, p)| *p)
            .collect())
    }

    fn route_dump(&mut self, table: u32, protocol: u8) -> io::Result<Vec<Route>> {
        Ok(self
            .routes
            .values()
            .filter(|r| r.table == table && r.protocol == protocol)
            .copied()
            .collect())
    }

    fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), OpError>> {
        ops.iter()
            .map(|op| {
                let before = self.notes.len();
                let r = self.change(op);
                if self.notes.len() > before {
                    self.applied.push(op.clone());
                }
                r
            })
            .collect()
    }
}
