//! The kernel's routing netlink, in kernel words: `link_*`, `addr_*`, `route_*`: the
//! real [`Kernel`].
//!
//! Synchronous and batched: a change of many entries is written as many netlink messages
//! per `send` (one round trip per batch, not per entry), and each message gets its own
//! acknowledgement, so one failing entry does not block the others. Idempotent by named
//! errno: adding what exists (EEXIST) and deleting what is gone (ESRCH, ENOENT,
//! EADDRNOTAVAIL, ENODEV) succeed. Dumps are filtered in the kernel (strict checking) to
//! the interface or table asked for, so a node with a full BGP table is not dumped whole.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use routelb_core::net::{Link, Notification, Op, Prefix, Route};

use super::{Kernel, OpError, benign};

/// Messages per batch: keeps the acknowledgements within the socket's receive buffer.
const BATCH: usize = 512;

/// A request socket.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn nlerr(code: i32) -> io::Error {
    io::Error::from_raw_os_error(-code)
}

fn addr_message(index: u32, prefix: Prefix) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(prefix.addr);
    m.header.prefix_len = prefix.len;
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    if prefix.addr.is_ipv6() {
        // A VIP must answer at once: no duplicate-address detection, never "tentative".
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m.attributes.push(AddressAttribute::Local(prefix.addr));
    m.attributes.push(AddressAttribute::Address(prefix.addr));
    m
}

/// The header's 8-bit table field; tables above 255 live only in the Table attribute.
fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(0)
}

fn route_message(r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(r.dst.addr);
    m.header.destination_prefix_length = r.dst.len;
    m.header.table = header_table(r.table);
    m.header.protocol = RouteProtocol::from(r.protocol);
    (m.header.scope, m.header.kind) = match (r.local, r.blackhole) {
        (true, _) => (RouteScope::Host, RouteType::Local),
        (_, true) => (RouteScope::Universe, RouteType::BlackHole),
        _ => (RouteScope::Link, RouteType::Unicast),
    };
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(r.dst.addr)));
    m.attributes.push(RouteAttribute::Table(r.table));
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    m
}

fn parse_route(m: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut table = u32::from(m.header.table);
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => dst = Some(IpAddr::V4(*v)),
            RouteAttribute::Destination(RouteAddress::Inet6(v)) => dst = Some(IpAddr::V6(*v)),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = match (dst, m.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(0.into()),
        (None, AddressFamily::Inet6) => IpAddr::V6(0.into()),
        _ => return None,
    };
    Some(Route {
        dst: Prefix::new(dst, m.header.destination_prefix_length),
        table,
        protocol: u8::from(m.header.protocol),
        local: m.header.kind == RouteType::Local,
        blackhole: m.header.kind == RouteType::BlackHole,
        oif,
    })
}

fn parse_addr(m: &AddressMessage) -> Option<(u32, Prefix)> {
    let addr = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(a) => Some(*a),
        _ => None,
    });
    let addr = addr.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(a) => Some(*a),
            _ => None,
        })
    })?;
    Some((m.header.index, Prefix::new(addr, m.header.prefix_len)))
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut kind = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Link {
        index: m.header.index,
        name,
        kind,
        up: m.header.flags.contains(LinkFlags::Up),
    }
}

impl Netlink {
    /// Opens a request socket in the caller's network namespace.
    pub fn new() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.set_ext_ack(true)?;
        // Acknowledgements without the request echoed back: smaller batches of ACKs.
        sock.set_cap_ack(true)?;
        sock.set_netlink_get_strict_chk(true)?;
        let _ = sock.set_rx_buf_sz(4 << 20);
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0; 1 << 20],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn frame(&mut self, payload: RouteNetlinkMessage, flags: u16) -> (u32, Vec<u8>) {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        (seq, bytes)
    }

    /// Reads one datagram and parses the messages in it.
    fn recv(&mut self) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
        let mut out = Vec::new();
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("netlink decode: {e}"))
                })?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
            out.push(msg);
        }
        Ok(out)
    }

    /// Sends requests in batches; returns each one's result, in order.
    pub fn batch(&mut self, requests: Vec<(RouteNetlinkMessage, u16)>) -> Vec<io::Result<()>> {
        let total = requests.len();
        let mut results: Vec<Option<io::Result<()>>> = (0..total).map(|_| None).collect();
        let mut requests = requests.into_iter().enumerate().peekable();
        while requests.peek().is_some() {
            let mut datagram = Vec::new();
            let mut pending: BTreeMap<u32, usize> = BTreeMap::new();
            for (i, (payload, flags)) in requests.by_ref().take(BATCH) {
                let (seq, bytes) = self.frame(payload, flags | NLM_F_REQUEST | NLM_F_ACK);
                datagram.extend_from_slice(&bytes);
                pending.insert(seq, i);
            }
            if let Err(e) = self.sock.send(&datagram, 0) {
                for i in pending.into_values() {
                    results[i] = Some(Err(io::Error::new(e.kind(), e.to_string())));
                }
                continue;
            }
            while !pending.is_empty() {
                let msgs = match self.recv() {
                    Ok(m) => m,
                    Err(e) => {
                        for i in std::mem::take(&mut pending).into_values() {
                            results[i] = Some(Err(io::Error::new(e.kind(), e.to_string())));
                        }
                        break;
                    }
                };
                for msg in msgs {
                    if let NetlinkPayload::Error(err) = &msg.payload
                        && let Some(i) = pending.remove(&msg.header.sequence_number)
                    {
                        results[i] = Some(match err.code {
                            None => Ok(()),
                            Some(code) => Err(nlerr(code.get())),
                        });
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("no acknowledgement"))))
            .collect()
    }

    /// Runs a dump request; returns the messages.
    fn dump(&mut self, payload: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let (seq, bytes) = self.frame(payload, NLM_F_REQUEST | NLM_F_DUMP);
        self.sock.send(&bytes, 0)?;
        let mut out = Vec::new();
        loop {
            for msg in self.recv()? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => return Err(nlerr(code.get())),
                        None => return Ok(out),
                    },
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A single request that must be acknowledged.
    fn request(&mut self, payload: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.batch(vec![(payload, flags)])
            .pop()
            .expect("one result")
    }

    // ----- links --------------------------------------------------------------------

    /// Looks a link up by name.
    pub fn link_get(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let (seq, bytes) = self.frame(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST);
        self.sock.send(&bytes, 0)?;
        loop {
            for msg in self.recv()? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                return match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        Ok(Some(parse_link(&l)))
                    }
                    NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                        Some(libc::ENODEV) | None => Ok(None),
                        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                    },
                    _ => Ok(None),
                };
            }
        }
    }

    /// Creates a link of `kind` (`dummy`, `bridge`).
    pub fn link_add(&mut self, name: &str, kind: &str) -> io::Result<()> {
        let info = match kind {
            "dummy" => InfoKind::Dummy,
            "bridge" => InfoKind::Bridge,
            other => InfoKind::Other(other.to_string()),
        };
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(info)]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Sets a link up.
    pub fn link_set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Deletes a link.
    pub fn link_del(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    // ----- addresses and routes -------------------------------------------------------

    /// Addresses on one interface.
    pub fn addr_dump(&mut self, index: u32) -> io::Result<Vec<Prefix>> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        let msgs = self.dump(RouteNetlinkMessage::GetAddress(m))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(a),
                _ => None,
            })
            .filter(|(i, _)| *i == index)
            .map(|(_, p)| p)
            .collect())
    }

    /// Routes of one table (both families), of one protocol when given, with the
    /// messages they were parsed from.
    fn table_dump(
        &mut self,
        table: u32,
        protocol: Option<u8>,
    ) -> io::Result<Vec<(Route, RouteMessage)>> {
        let mut all = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            m.header.table = header_table(table);
            if let Some(p) = protocol {
                m.header.protocol = RouteProtocol::from(p);
            }
            m.attributes.push(RouteAttribute::Table(table));
            for msg in self.dump(RouteNetlinkMessage::GetRoute(m))? {
                if let RouteNetlinkMessage::NewRoute(r) = msg
                    && let Some(route) = parse_route(&r)
                    && route.table == table
                    && protocol.is_none_or(|p| route.protocol == p)
                {
                    all.push((route, r));
                }
            }
        }
        Ok(all)
    }

    /// Routes of one table and protocol (both families).
    pub fn route_dump(&mut self, table: u32, protocol: u8) -> io::Result<Vec<Route>> {
        Ok(self
            .table_dump(table, Some(protocol))?
            .into_iter()
            .map(|(route, _)| route)
            .collect())
    }

    /// Every route of a table with its gateways (all next hops of a multipath route):
    /// what a router has learned, for the lab and its measurements.
    pub fn routes_with_gateways(&mut self, table: u32) -> io::Result<Vec<(Prefix, Vec<IpAddr>)>> {
        let gateway = |attrs: &[RouteAttribute]| {
            attrs.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(v)) => Some(IpAddr::V4(*v)),
                RouteAttribute::Gateway(RouteAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
                _ => None,
            })
        };
        Ok(self
            .table_dump(table, None)?
            .into_iter()
            .map(|(route, r)| {
                let mut gws: Vec<IpAddr> = gateway(&r.attributes).into_iter().collect();
                for a in &r.attributes {
                    if let RouteAttribute::MultiPath(hops) = a {
                        gws.extend(hops.iter().filter_map(|h| gateway(&h.attributes)));
                    }
                }
                (route.dst, gws)
            })
            .collect())
    }

    /// Applies changes in batches; one result per change, naming it on failure.
    pub fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), OpError>> {
        let requests = ops
            .iter()
            .map(|op| match op {
                Op::AddrAdd { index, prefix, .. } => (
                    RouteNetlinkMessage::NewAddress(addr_message(*index, *prefix)),
                    NLM_F_CREATE | NLM_F_EXCL,
                ),
                Op::AddrDel { index, prefix, .. } => (
                    RouteNetlinkMessage::DelAddress(addr_message(*index, *prefix)),
                    0,
                ),
                Op::RouteAdd(r) => (
                    RouteNetlinkMessage::NewRoute(route_message(r)),
                    NLM_F_CREATE | NLM_F_EXCL,
                ),
                Op::RouteReplace(r) => (
                    RouteNetlinkMessage::NewRoute(route_message(r)),
                    NLM_F_CREATE | NLM_F_REPLACE,
                ),
                Op::RouteDel(r) => (RouteNetlinkMessage::DelRoute(route_message(r)), 0),
            })
            .collect();
        self.batch(requests)
            .into_iter()
            .zip(ops)
            .map(|(r, op)| match r {
                Ok(()) => Ok(()),
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(0);
                    if benign(op, errno) {
                        Ok(())
                    } else {
                        Err(OpError {
                            op: op.clone(),
                            errno,
                        })
                    }
                }
            })
            .collect()
    }
}

// ----- the LAN side of local (L2) pools ----------------------------------------------

/// A link as a LAN candidate sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanLink {
    pub index: u32,
    pub name: String,
    /// Up and with carrier.
    pub running: bool,
    /// ARP/NDP works on it (not `NOARP`, an Ethernet address).
    pub mac: Option<[u8; 6]>,
}

/// An address as the LAN side sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LanAddress {
    pub index: u32,
    pub prefix: Prefix,
    /// `IFA_PROTO`: who put it there (routelb marks its own).
    pub protocol: u8,
    /// Seconds of validity left (`None`: forever).
    pub valid_secs: Option<u32>,
}

fn vip_message(index: u32, addr: IpAddr, protocol: u8, valid: Option<Duration>) -> AddressMessage {
    let mut m = addr_message(index, Prefix::host(addr));
    // Never a source for the node's own traffic (deprecated), no route of its own, and
    // gone by itself when the agent stops refreshing it (a dead agent answers nothing).
    let mut flags = AddressFlags::Noprefixroute;
    if addr.is_ipv6() {
        flags |= AddressFlags::Nodad;
    }
    m.attributes
        .retain(|a| !matches!(a, AddressAttribute::Flags(_)));
    m.attributes.push(AddressAttribute::Flags(flags));
    m.attributes
        .push(AddressAttribute::Protocol(protocol.into()));
    if let Some(valid) = valid {
        let mut ci = netlink_packet_route::address::CacheInfo::default();
        ci.ifa_valid = u32::try_from(valid.as_secs().max(1)).unwrap_or(u32::MAX - 1);
        ci.ifa_preferred = 0;
        m.attributes.push(AddressAttribute::CacheInfo(ci));
    }
    m
}

impl Netlink {
    /// Every link, with what the LAN side needs of it.
    pub fn lan_links(&mut self) -> io::Result<Vec<LanLink>> {
        let msgs = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .map(|l| {
                let link = parse_link(l);
                let mac = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(b) if b.len() == 6 => {
                        <[u8; 6]>::try_from(b.as_slice()).ok()
                    }
                    _ => None,
                });
                let flags = l.header.flags;
                LanLink {
                    index: link.index,
                    name: link.name,
                    running: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
                    mac: mac.filter(|_| !flags.contains(LinkFlags::Noarp)),
                }
            })
            .collect())
    }

    /// Every address of every link, both families.
    pub fn lan_addresses(&mut self) -> io::Result<Vec<LanAddress>> {
        let msgs = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let (index, prefix) = parse_addr(a)?;
                    let protocol = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Protocol(p) => Some(u8::from(*p)),
                        _ => None,
                    });
                    let valid_secs = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::CacheInfo(c) => Some(c.ifa_valid),
                        _ => None,
                    });
                    Some(LanAddress {
                        index,
                        prefix,
                        protocol: protocol.unwrap_or(0),
                        valid_secs: valid_secs.filter(|v| *v != u32::MAX),
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Puts (or refreshes) a local pool's address on a LAN interface, valid for `valid`
    /// from now, marked with `protocol`; removes others. One result per change.
    pub fn vip_apply(
        &mut self,
        set: &[(u32, IpAddr)],
        remove: &[(u32, IpAddr)],
        protocol: u8,
        valid: Duration,
    ) -> Vec<io::Result<()>> {
        let mut requests: Vec<(RouteNetlinkMessage, u16)> = set
            .iter()
            .map(|(i, a)| {
                (
                    RouteNetlinkMessage::NewAddress(vip_message(*i, *a, protocol, Some(valid))),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            })
            .collect();
        requests.extend(remove.iter().map(|(i, a)| {
            (
                RouteNetlinkMessage::DelAddress(vip_message(*i, *a, protocol, None)),
                0,
            )
        }));
        let n_set = set.len();
        self.batch(requests)
            .into_iter()
            .enumerate()
            .map(|(k, r)| match r {
                Err(e)
                    if k >= n_set
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EADDRNOTAVAIL | libc::ENODEV | libc::ENOENT)
                        ) =>
                {
                    Ok(())
                }
                other => other,
            })
            .collect()
    }
}

impl Kernel for Netlink {
    fn link_get(&mut self, name: &str) -> io::Result<Option<Link>> {
        Netlink::link_get(self, name)
    }
    fn link_add(&mut self, name: &str, kind: &str) -> io::Result<()> {
        Netlink::link_add(self, name, kind)
    }
    fn link_set_up(&mut self, index: u32) -> io::Result<()> {
        Netlink::link_set_up(self, index)
    }
    fn link_del(&mut self, index: u32) -> io::Result<()> {
        Netlink::link_del(self, index)
    }
    fn addr_dump(&mut self, index: u32) -> io::Result<Vec<Prefix>> {
        Netlink::addr_dump(self, index)
    }
    fn route_dump(&mut self, table: u32, protocol: u8) -> io::Result<Vec<Route>> {
        Netlink::route_dump(self, table, protocol)
    }
    fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), OpError>> {
        Netlink::apply(self, ops)
    }
}

// ----- notifications ----------------------------------------------------------------------

/// A socket subscribed to link, address and route notifications, in the namespace it was
/// opened in.
#[derive(Debug)]
pub struct Monitor {
    sock: Socket,
    buf: Vec<u8>,
}

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

impl Monitor {
    pub fn new() -> io::Result<Monitor> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        for g in [
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV6_ROUTE,
        ] {
            sock.add_membership(g)?;
        }
        let _ = sock.set_rx_buf_sz(16 << 20);
        Ok(Monitor {
            sock,
            buf: vec![0; 1 << 20],
        })
    }

    /// Waits up to `timeout` for notifications; returns those of one datagram (empty on
    /// timeout). `ENOBUFS` (notifications lost) is returned as an error: resync then.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Vec<Notification>> {
        let fd = std::os::fd::AsFd::as_fd(&self.sock);
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let ms = nix::poll::PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        if nix::poll::poll(&mut fds, ms).map_err(io::Error::from)? == 0 {
            return Ok(Vec::new());
        }
        let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
        let mut out = Vec::new();
        let mut off = 0;
        while off < n {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
            else {
                break;
            };
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                let note = match &m {
                    RouteNetlinkMessage::NewAddress(a) => {
                        parse_addr(a).map(|(index, prefix)| Notification::NewAddr { index, prefix })
                    }
                    RouteNetlinkMessage::DelAddress(a) => {
                        parse_addr(a).map(|(index, prefix)| Notification::DelAddr { index, prefix })
                    }
                    RouteNetlinkMessage::NewRoute(r) => parse_route(r).map(Notification::NewRoute),
                    RouteNetlinkMessage::DelRoute(r) => parse_route(r).map(Notification::DelRoute),
                    RouteNetlinkMessage::NewLink(l) => Some(Notification::NewLink(parse_link(l))),
                    RouteNetlinkMessage::DelLink(l) => Some(Notification::DelLink(parse_link(l))),
                    _ => None,
                };
                out.extend(note);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_already_done_errnos_are_benign() {
        let op = Op::AddrAdd {
            index: 3,
            ifname: "kube-lb0".into(),
            prefix: Prefix::host("203.0.113.10".parse().unwrap()),
        };
        assert!(benign(&op, libc::EEXIST));
        let r = Route {
            dst: Prefix::new("203.0.113.0".parse().unwrap(), 24),
            table: 200,
            protocol: 249,
            local: false,
            blackhole: false,
            oif: Some(3),
        };
        assert!(!benign(&Op::RouteAdd(r), libc::EEXIST));
        assert!(!benign(&Op::RouteReplace(r), libc::EEXIST));
        assert!(benign(&Op::RouteDel(r), libc::ESRCH));
    }

    #[test]
    fn route_messages_round_trip() {
        let r = Route {
            dst: Prefix::new("2001:db8::".parse().unwrap(), 64),
            table: 1000,
            protocol: 249,
            local: true,
            blackhole: false,
            oif: Some(7),
        };
        assert_eq!(parse_route(&route_message(&r)), Some(r));
        let aggregate = Route {
            dst: Prefix::new("198.51.100.0".parse().unwrap(), 24),
            table: 200,
            local: false,
            blackhole: true,
            oif: None,
            ..r
        };
        assert_eq!(parse_route(&route_message(&aggregate)), Some(aggregate));
    }
}
