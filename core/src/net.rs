//! The kernel vocabulary, pure: prefixes, routes, links, the changes routelb makes, the
//! kernel contract (where routelb's entries live and the routing daemon reads them), the
//! state a node should announce, and [`plan`], which turns what the kernel has into what
//! it should have. Nothing here opens a socket: `routelb::kernel` carries the plan out.
//!
//! routelb owns, and only touches: the addresses on its interface (`kube-lb0`), routes in
//! its table (default 200) with its protocol (default 249), and, in `local-route` VIP
//! mode, `local` routes with its protocol in the kernel's local table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The kernel's `local` routing table.
pub const TABLE_LOCAL: u32 = 255;
/// The default interface holding Service addresses.
pub const DEFAULT_INTERFACE: &str = "kube-lb0";
/// The default routing table of announced prefixes.
pub const DEFAULT_TABLE: u32 = 200;
/// The default route protocol number marking routelb's routes.
pub const DEFAULT_PROTOCOL: u8 = 249;

/// A prefix: an address and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    /// A host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The covering network of `addr` at length `len` (host bits cleared).
    pub fn network(addr: IpAddr, len: u8) -> Prefix {
        let addr = match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Prefix { addr, len }
    }

    /// Whether `addr` lies in the prefix (same family, same leading `len` bits).
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && Prefix::network(addr, self.len).addr == self.addr
    }

    /// Parses a CIDR (`198.51.100.0/24`, `2001:db8::/64`); a bare address is a host prefix.
    /// Host bits must be clear, so that what is written is what is matched.
    pub fn parse_cidr(s: &str) -> Result<Prefix, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                format!("{s:?} is not a CIDR: prefix length {l:?} is not 0 to {max}")
            })?,
        };
        let prefix = Prefix::network(addr, len);
        if prefix.addr != addr {
            return Err(format!("{s:?} has host bits set: write {prefix}"));
        }
        Ok(prefix)
    }

    /// An IPv6 link-local prefix (fe80::/10): the kernel's own, never routelb's.
    pub fn is_link_local(&self) -> bool {
        match self.addr {
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
            IpAddr::V4(_) => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A route as routelb writes and reads it: a destination through one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Prefix,
    pub table: u32,
    pub protocol: u8,
    /// `local` (accept for this host) rather than unicast.
    pub local: bool,
    /// `blackhole` (no device): an aggregate announced as a whole, such as a service
    /// CIDR. Not tied to an interface, so the kernel never drops it with one's addresses.
    pub blackhole: bool,
    pub oif: Option<u32>,
}

impl Route {
    /// The kernel holds one route per destination and table (routelb never writes
    /// metrics or multipath routes): two routes with the same slot replace each other.
    pub fn slot(&self) -> (Prefix, u32) {
        (self.dst, self.table)
    }
}

/// A link's identity and state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
}

/// One change to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddrAdd {
        index: u32,
        ifname: String,
        prefix: Prefix,
    },
    AddrDel {
        index: u32,
        ifname: String,
        prefix: Prefix,
    },
    RouteAdd(Route),
    /// Puts this route in its slot in place of another of routelb's (another device or
    /// protocol), atomically: the destination is never without a route.
    RouteReplace(Route),
    RouteDel(Route),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = |f: &mut fmt::Formatter<'_>, verb: &str, r: &Route| {
            let kind = match (r.local, r.blackhole) {
                (true, _) => "local ",
                (_, true) => "blackhole ",
                _ => "",
            };
            write!(
                f,
                "{verb} {kind}route {} table {} proto {}",
                r.dst, r.table, r.protocol
            )
        };
        match self {
            Op::AddrAdd { ifname, prefix, .. } => write!(f, "add {prefix} to {ifname}"),
            Op::AddrDel { ifname, prefix, .. } => write!(f, "remove {prefix} from {ifname}"),
            Op::RouteAdd(r) => route(f, "add", r),
            Op::RouteReplace(r) => route(f, "replace", r),
            Op::RouteDel(r) => route(f, "remove", r),
        }
    }
}

/// A change the kernel announced (or made at routelb's request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    NewAddr { index: u32, prefix: Prefix },
    DelAddr { index: u32, prefix: Prefix },
    NewRoute(Route),
    DelRoute(Route),
    NewLink(Link),
    DelLink(Link),
}

impl Notification {
    /// What the kernel looks like after `op` succeeded, as the notification it sends.
    pub fn of(op: &Op) -> Notification {
        match op {
            Op::AddrAdd { index, prefix, .. } => Notification::NewAddr {
                index: *index,
                prefix: *prefix,
            },
            Op::AddrDel { index, prefix, .. } => Notification::DelAddr {
                index: *index,
                prefix: *prefix,
            },
            Op::RouteAdd(r) | Op::RouteReplace(r) => Notification::NewRoute(*r),
            Op::RouteDel(r) => Notification::DelRoute(*r),
        }
    }
}

/// Where routelb's entries live on a node, and so where its routing daemon reads them:
/// the interface, the routing table and the route protocol. The RouterConfig that
/// selects a node sets it (see [`crate::routing::contract`]); the agent's flags are the
/// fallback.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KernelContract {
    pub interface: String,
    pub table: u32,
    pub protocol: u8,
}

impl Default for KernelContract {
    fn default() -> KernelContract {
        KernelContract {
            interface: DEFAULT_INTERFACE.into(),
            table: DEFAULT_TABLE,
            protocol: DEFAULT_PROTOCOL,
        }
    }
}

impl fmt::Display for KernelContract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interface {}, table {}, protocol {}",
            self.interface, self.table, self.protocol
        )
    }
}

impl KernelContract {
    /// Whether a route is one of this contract's (its table and protocol, unicast).
    pub fn owns_route(&self, r: &Route) -> bool {
        r.protocol == self.protocol && !r.local && r.table == self.table
    }

    /// Whether a route is one of this contract's `local` routes.
    pub fn owns_local_route(&self, r: &Route) -> bool {
        r.protocol == self.protocol && r.local && r.table == TABLE_LOCAL
    }
}

/// How `kube-lb0` is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkKind {
    /// `dummy`, falling back to an empty bridge where the kernel has no dummy support.
    #[default]
    Auto,
    Dummy,
    Bridge,
}

/// How the node accepts traffic for an address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VipMode {
    /// The address on kube-lb0 (`ip addr show kube-lb0` lists it). Adding n addresses to
    /// one interface costs O(n²) in the kernel: fine for hundreds, slow for many thousands.
    #[default]
    Address,
    /// A `local` route per address in the local table (`ip route show table local proto
    /// 249`): linear, for nodes with thousands of addresses.
    LocalRoute,
}

/// What a node should announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Addresses the node accepts traffic for.
    pub addresses: BTreeSet<IpAddr>,
    /// Prefixes routed to kube-lb0 in the routelb table, for the routing daemon.
    pub prefixes: BTreeSet<Prefix>,
    /// Prefixes announced as a whole without addresses of their own (cluster IPs as
    /// their service CIDR): `blackhole` routes in the routelb table. The service proxy
    /// takes the packets for the cluster IPs in use before routing; the rest are dropped.
    pub blackholes: BTreeSet<Prefix>,
}

/// What the kernel has that routelb owns under one contract.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Addresses on the contract's interface.
    pub addresses: BTreeSet<Prefix>,
    /// Routes in the contract's table with its protocol.
    pub routes: BTreeSet<Route>,
    /// `local` routes with the contract's protocol.
    pub local_routes: BTreeSet<Route>,
}

impl Observed {
    /// Folds a kernel notification in: `contract` and `index` (its interface) say what is
    /// owned. A new route takes its slot, so a route routelb had there is gone. Returns
    /// whether what is known changed (the echo of routelb's own change does not).
    pub fn note(
        &mut self,
        contract: &KernelContract,
        index: Option<u32>,
        n: &Notification,
    ) -> bool {
        match n {
            Notification::NewAddr { index: i, prefix }
                if Some(*i) == index && !prefix.is_link_local() =>
            {
                self.addresses.insert(*prefix)
            }
            Notification::DelAddr { index: i, prefix } if Some(*i) == index => {
                self.addresses.remove(prefix)
            }
            Notification::NewRoute(r) => {
                let set = if r.local {
                    &mut self.local_routes
                } else {
                    &mut self.routes
                };
                let owned = contract.owns_route(r) || contract.owns_local_route(r);
                // The routes of one slot are neighbours in the set's order.
                let taken: Vec<Route> = set
                    .range(slot_range(r))
                    .filter(|o| !(owned && *o == r))
                    .copied()
                    .collect();
                for o in &taken {
                    set.remove(o);
                }
                let added = owned && set.insert(*r);
                added || !taken.is_empty()
            }
            Notification::DelRoute(r) => {
                let a = self.routes.remove(r);
                let b = self.local_routes.remove(r);
                a || b
            }
            _ => false,
        }
    }
}

/// Every route that could be in `r`'s slot, in [`Route`]'s order (destination and table
/// come first).
fn slot_range(r: &Route) -> std::ops::RangeInclusive<Route> {
    let lo = Route {
        dst: r.dst,
        table: r.table,
        protocol: 0,
        local: false,
        blackhole: false,
        oif: None,
    };
    let hi = Route {
        protocol: u8::MAX,
        local: true,
        blackhole: true,
        oif: Some(u32::MAX),
        ..lo
    };
    lo..=hi
}

/// One contract's view for [`plan`]: its interface (absent for a contract being
/// dropped whose interface is gone) and what the kernel has of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub contract: &'a KernelContract,
    pub link: Option<&'a Link>,
    pub observed: &'a Observed,
}

/// The changes that turn what the kernel has into what it should have.
///
/// `keep` are the contracts to program with `state`, in priority order (while the
/// routing daemon still reads an older contract, both are kept: the one it reads first).
/// A route slot (destination and table) belongs to the first contract that wants it;
/// another of routelb's routes in that slot is replaced, never removed and re-added.
/// Addresses live on one interface only, the first kept contract's: FRR 8's zebra loses
/// track of an address that is on two interfaces at once, so an address moves (removed,
/// then added elsewhere, in one batch) rather than being doubled.
/// `drop` are contracts no longer used: their entries go, unless a kept contract wants
/// the same entry. Additions come first, then replacements, then removals (make before
/// break), except that an address moving between interfaces leaves the old one first.
pub fn plan(vip_mode: VipMode, keep: &[Target], drop: &[Target], state: &NodeState) -> Vec<Op> {
    let mut want_addrs: BTreeSet<(u32, Prefix)> = BTreeSet::new();
    let mut want_routes: BTreeMap<(Prefix, u32), Route> = BTreeMap::new();
    let mut want_local: BTreeMap<(Prefix, u32), Route> = BTreeMap::new();
    let mut ifnames: BTreeMap<u32, String> = BTreeMap::new();
    let addr_link = keep.iter().find_map(|t| t.link).map(|l| l.index);
    for t in keep {
        let Some(link) = t.link else { continue };
        ifnames.insert(link.index, link.name.clone());
        let oif = Some(link.index);
        match vip_mode {
            VipMode::Address if Some(link.index) == addr_link => want_addrs.extend(
                state
                    .addresses
                    .iter()
                    .map(|a| (link.index, Prefix::host(*a))),
            ),
            VipMode::Address => {}
            VipMode::LocalRoute => {
                for a in &state.addresses {
                    let r = Route {
                        dst: Prefix::host(*a),
                        table: TABLE_LOCAL,
                        protocol: t.contract.protocol,
                        local: true,
                        blackhole: false,
                        oif,
                    };
                    want_local.entry(r.slot()).or_insert(r);
                }
            }
        }
        for p in &state.prefixes {
            let r = Route {
                dst: Prefix::network(p.addr, p.len),
                table: t.contract.table,
                protocol: t.contract.protocol,
                local: false,
                blackhole: false,
                oif,
            };
            want_routes.entry(r.slot()).or_insert(r);
        }
        for p in &state.blackholes {
            let r = Route {
                dst: Prefix::network(p.addr, p.len),
                table: t.contract.table,
                protocol: t.contract.protocol,
                local: false,
                blackhole: true,
                oif: None,
            };
            want_routes.entry(r.slot()).or_insert(r);
        }
    }
    let mut have_addrs: BTreeSet<(u32, Prefix)> = BTreeSet::new();
    let mut have_routes: BTreeSet<Route> = BTreeSet::new();
    let mut have_local: BTreeSet<Route> = BTreeSet::new();
    for t in keep.iter().chain(drop) {
        if let Some(link) = t.link {
            ifnames
                .entry(link.index)
                .or_insert_with(|| link.name.clone());
            have_addrs.extend(t.observed.addresses.iter().map(|p| (link.index, *p)));
        }
        have_routes.extend(t.observed.routes.iter().copied());
        have_local.extend(t.observed.local_routes.iter().copied());
    }
    let addr_op = |add: bool, (index, prefix): (u32, Prefix)| {
        let ifname = ifnames.get(&index).cloned().unwrap_or_default();
        if add {
            Op::AddrAdd {
                index,
                ifname,
                prefix,
            }
        } else {
            Op::AddrDel {
                index,
                ifname,
                prefix,
            }
        }
    };
    let mut adds = Vec::new();
    let mut replaces = Vec::new();
    let mut removes = Vec::new();
    let added: BTreeSet<Prefix> = want_addrs
        .difference(&have_addrs)
        .map(|(_, p)| *p)
        .collect();
    // Addresses moving to another interface leave the old one first.
    adds.extend(
        have_addrs
            .difference(&want_addrs)
            .filter(|(_, p)| added.contains(p))
            .map(|a| addr_op(false, *a)),
    );
    adds.extend(
        want_addrs
            .difference(&have_addrs)
            .map(|a| addr_op(true, *a)),
    );
    for (want, have) in [(&want_local, &have_local), (&want_routes, &have_routes)] {
        let occupied: BTreeSet<(Prefix, u32)> = have.iter().map(Route::slot).collect();
        for r in want.values().filter(|r| !have.contains(r)) {
            if occupied.contains(&r.slot()) {
                replaces.push(Op::RouteReplace(*r));
            } else {
                adds.push(Op::RouteAdd(*r));
            }
        }
    }
    for (want, have) in [(&want_routes, &have_routes), (&want_local, &have_local)] {
        removes.extend(
            have.iter()
                .filter(|r| !want.contains_key(&r.slot()))
                .map(|r| Op::RouteDel(*r)),
        );
    }
    removes.extend(
        have_addrs
            .difference(&want_addrs)
            .filter(|(_, p)| !added.contains(p))
            .map(|a| addr_op(false, *a)),
    );
    // Linux drops every IPv4 route through a device when its last IPv4 address goes,
    // and says nothing (no RTM_DELROUTE): the routing daemon would lose an aggregate
    // or keep announcing it (FRR's zebra then misses its later removal). Routes still
    // wanted through such a device are put back once its addresses are gone.
    let v4_left = |index: u32| {
        want_addrs
            .iter()
            .any(|(i, p)| *i == index && p.addr.is_ipv4())
    };
    let emptied: BTreeSet<u32> = have_addrs
        .difference(&want_addrs)
        .filter(|(i, p)| p.addr.is_ipv4() && !v4_left(*i))
        .map(|(i, _)| *i)
        .collect();
    removes.extend(
        want_routes
            .values()
            .chain(want_local.values())
            .filter(|r| r.dst.addr.is_ipv4() && r.oif.is_some_and(|o| emptied.contains(&o)))
            .map(|r| Op::RouteReplace(*r)),
    );
    adds.extend(replaces);
    adds.extend(removes);
    adds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_strictly_and_contain_their_addresses() {
        let p = Prefix::parse_cidr("198.51.100.0/24").unwrap();
        assert!(p.contains(ip("198.51.100.255")));
        assert!(!p.contains(ip("198.51.101.0")));
        assert!(!p.contains(ip("::ffff:198.51.100.1")), "families never mix");
        let v6 = Prefix::parse_cidr(" 2001:db8:1::/48 ").unwrap();
        assert!(v6.contains(ip("2001:db8:1:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:2::1")));
        assert_eq!(
            Prefix::parse_cidr("192.0.2.7").unwrap(),
            Prefix::host(ip("192.0.2.7"))
        );
        assert!(
            Prefix::parse_cidr("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.1"))
        );
        let err = |s| Prefix::parse_cidr(s).unwrap_err();
        assert!(err("198.51.100.1/24").contains("write 198.51.100.0/24"));
        assert!(err("198.51.100.0/33").contains("0 to 32"));
        assert!(err("example/24").contains("not an IP address"));
    }

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some("dummy".into()),
            up: true,
        }
    }

    fn route(dst: &str, len: u8, table: u32, protocol: u8, oif: u32) -> Route {
        Route {
            dst: Prefix::new(ip(dst), len),
            table,
            protocol,
            local: table == TABLE_LOCAL,
            blackhole: false,
            oif: Some(oif),
        }
    }

    fn target<'a>(
        contract: &'a KernelContract,
        link: &'a Link,
        observed: &'a Observed,
    ) -> Target<'a> {
        Target {
            contract,
            link: Some(link),
            observed,
        }
    }

    fn ops(v: Vec<Op>) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn prefixes_clear_host_bits_and_print_like_ip() {
        let p = Prefix::network(ip("203.0.113.77"), 24);
        assert_eq!(p.to_string(), "203.0.113.0/24");
        let p6 = Prefix::network(ip("2001:db8::1:2"), 64);
        assert_eq!(p6.to_string(), "2001:db8::/64");
        assert_eq!(Prefix::host(ip("2001:db8::1")).len, 128);
        assert_eq!(Prefix::network(ip("192.0.2.1"), 0).to_string(), "0.0.0.0/0");
        assert!(Prefix::host(ip("fe80::1")).is_link_local());
    }

    #[test]
    fn operations_name_what_they_attempt() {
        let op = Op::AddrAdd {
            index: 3,
            ifname: "kube-lb0".into(),
            prefix: Prefix::host(ip("203.0.113.10")),
        };
        assert_eq!(op.to_string(), "add 203.0.113.10/32 to kube-lb0");
        let r = route("203.0.113.0", 24, 200, 249, 3);
        assert_eq!(
            Op::RouteDel(r).to_string(),
            "remove route 203.0.113.0/24 table 200 proto 249"
        );
        assert_eq!(
            Op::RouteReplace(r).to_string(),
            "replace route 203.0.113.0/24 table 200 proto 249"
        );
    }

    #[test]
    fn plans_only_the_difference_adding_before_removing() {
        let contract = KernelContract::default();
        let l = link(7, "kube-lb0");
        let state = NodeState {
            addresses: [ip("203.0.113.10"), ip("2001:db8::10")].into(),
            prefixes: [
                Prefix::new(ip("203.0.113.10"), 24),
                Prefix::host(ip("2001:db8::10")),
            ]
            .into(),
            blackholes: Default::default(),
        };
        let observed = Observed {
            addresses: [
                Prefix::host(ip("203.0.113.10")),
                Prefix::host(ip("203.0.113.99")),
            ]
            .into(),
            routes: [
                route("203.0.113.0", 24, 200, 249, 7),
                route("203.0.113.99", 32, 200, 249, 7),
            ]
            .into(),
            local_routes: BTreeSet::new(),
        };
        let keep = [target(&contract, &l, &observed)];
        assert_eq!(
            ops(plan(VipMode::Address, &keep, &[], &state)),
            [
                "add 2001:db8::10/128 to kube-lb0",
                "add route 2001:db8::10/128 table 200 proto 249",
                "remove route 203.0.113.99/32 table 200 proto 249",
                "remove 203.0.113.99/32 from kube-lb0",
            ]
        );
        // Nothing to do when the kernel already matches.
        let matching = Observed {
            addresses: state.addresses.iter().map(|a| Prefix::host(*a)).collect(),
            routes: [
                route("203.0.113.0", 24, 200, 249, 7),
                route("2001:db8::10", 128, 200, 249, 7),
            ]
            .into(),
            local_routes: BTreeSet::new(),
        };
        let keep = [target(&contract, &l, &matching)];
        assert!(plan(VipMode::Address, &keep, &[], &state).is_empty());
    }

    #[test]
    fn routes_are_put_back_when_the_last_ipv4_address_leaves_their_device() {
        let contract = KernelContract::default();
        let l = link(7, "kube-lb0");
        // An aggregate without an address of its own (cluster IPs as the service CIDR)
        // stays while the last address on the device goes.
        let state = NodeState {
            addresses: [ip("2001:db8::10")].into(),
            prefixes: [
                Prefix::new(ip("198.51.100.0"), 24),
                Prefix::host(ip("2001:db8::10")),
            ]
            .into(),
            blackholes: Default::default(),
        };
        let observed = Observed {
            addresses: [
                Prefix::host(ip("198.51.100.7")),
                Prefix::host(ip("2001:db8::10")),
            ]
            .into(),
            routes: [
                route("198.51.100.0", 24, 200, 249, 7),
                route("198.51.100.7", 32, 200, 249, 7),
                route("2001:db8::10", 128, 200, 249, 7),
            ]
            .into(),
            local_routes: BTreeSet::new(),
        };
        let keep = [target(&contract, &l, &observed)];
        assert_eq!(
            ops(plan(VipMode::Address, &keep, &[], &state)),
            [
                "remove route 198.51.100.7/32 table 200 proto 249",
                "remove 198.51.100.7/32 from kube-lb0",
                "replace route 198.51.100.0/24 table 200 proto 249",
            ]
        );
        // Another IPv4 address stays: the kernel keeps the routes, nothing is put back.
        let mut two = observed.clone();
        two.addresses.insert(Prefix::host(ip("198.51.100.8")));
        let state = NodeState {
            addresses: [ip("198.51.100.8"), ip("2001:db8::10")].into(),
            ..state
        };
        let keep = [target(&contract, &l, &two)];
        assert!(
            !ops(plan(VipMode::Address, &keep, &[], &state))
                .iter()
                .any(|o| o.starts_with("replace"))
        );
    }

    #[test]
    fn local_route_mode_uses_local_routes_instead_of_addresses() {
        let contract = KernelContract::default();
        let l = link(7, "kube-lb0");
        let state = NodeState {
            addresses: [ip("203.0.113.10")].into(),
            prefixes: BTreeSet::new(),
            blackholes: Default::default(),
        };
        let observed = Observed {
            addresses: [Prefix::host(ip("203.0.113.10"))].into(),
            ..Observed::default()
        };
        let keep = [target(&contract, &l, &observed)];
        assert_eq!(
            ops(plan(VipMode::LocalRoute, &keep, &[], &state)),
            [
                "add local route 203.0.113.10/32 table 255 proto 249",
                "remove 203.0.113.10/32 from kube-lb0",
                // The kernel took the local route along with kube-lb0's last address.
                "replace local route 203.0.113.10/32 table 255 proto 249",
            ]
        );
    }

    #[test]
    fn a_new_table_is_filled_while_the_read_one_stays_then_the_old_one_goes() {
        let old = KernelContract::default();
        let new = KernelContract {
            table: 201,
            ..KernelContract::default()
        };
        let l = link(7, "kube-lb0");
        let state = NodeState {
            addresses: [ip("203.0.113.10")].into(),
            prefixes: [Prefix::host(ip("203.0.113.10"))].into(),
            blackholes: Default::default(),
        };
        let in_old = Observed {
            addresses: [Prefix::host(ip("203.0.113.10"))].into(),
            routes: [route("203.0.113.10", 32, 200, 249, 7)].into(),
            local_routes: BTreeSet::new(),
        };
        let in_new = Observed {
            addresses: in_old.addresses.clone(),
            ..Observed::default()
        };
        // The daemon still reads table 200: both are kept, 201 is filled.
        let keep = [target(&old, &l, &in_old), target(&new, &l, &in_new)];
        assert_eq!(
            ops(plan(VipMode::Address, &keep, &[], &state)),
            ["add route 203.0.113.10/32 table 201 proto 249"]
        );
        // The daemon reads 201 now: 200 is dropped, and only its route goes.
        let filled = Observed {
            routes: [route("203.0.113.10", 32, 201, 249, 7)].into(),
            ..in_new.clone()
        };
        let keep = [target(&new, &l, &filled)];
        let drop = [target(&old, &l, &in_old)];
        assert_eq!(
            ops(plan(VipMode::Address, &keep, &drop, &state)),
            ["remove route 203.0.113.10/32 table 200 proto 249"]
        );
    }

    #[test]
    fn a_slot_shared_by_two_contracts_is_replaced_not_removed_and_re_added() {
        // Same table, another protocol and another interface.
        let old = KernelContract::default();
        let new = KernelContract {
            interface: "kube-lb1".into(),
            table: 200,
            protocol: 250,
        };
        let (l0, l1) = (link(7, "kube-lb0"), link(8, "kube-lb1"));
        let empty = Observed::default();
        let state = NodeState {
            addresses: [ip("203.0.113.10")].into(),
            prefixes: [Prefix::host(ip("203.0.113.10"))].into(),
            blackholes: Default::default(),
        };
        let in_old = Observed {
            addresses: [Prefix::host(ip("203.0.113.10"))].into(),
            routes: [route("203.0.113.10", 32, 200, 249, 7)].into(),
            local_routes: BTreeSet::new(),
        };
        // While the daemon reads the old contract, its route keeps the slot and its
        // interface the address.
        let keep = [target(&old, &l0, &in_old), target(&new, &l1, &empty)];
        assert!(plan(VipMode::Address, &keep, &[], &state).is_empty());
        // Once it reads the new one, the address moves and the route is replaced in
        // place.
        let keep = [target(&new, &l1, &empty)];
        let drop = [target(&old, &l0, &in_old)];
        assert_eq!(
            ops(plan(VipMode::Address, &keep, &drop, &state)),
            [
                "remove 203.0.113.10/32 from kube-lb0",
                "add 203.0.113.10/32 to kube-lb1",
                "replace route 203.0.113.10/32 table 200 proto 250",
            ]
        );
    }

    #[test]
    fn notifications_keep_one_route_per_slot() {
        let c = KernelContract::default();
        let mut o = Observed::default();
        o.note(
            &c,
            Some(7),
            &Notification::NewRoute(route("203.0.113.10", 32, 200, 249, 7)),
        );
        assert_eq!(o.routes.len(), 1);
        // Someone else's route takes the slot: ours is gone.
        o.note(
            &c,
            Some(7),
            &Notification::NewRoute(route("203.0.113.10", 32, 200, 4, 9)),
        );
        assert!(o.routes.is_empty());
        o.note(
            &c,
            Some(7),
            &Notification::NewAddr {
                index: 7,
                prefix: Prefix::host(ip("fe80::1")),
            },
        );
        assert!(o.addresses.is_empty(), "link-local addresses are not ours");
    }

    #[test]
    fn an_echo_of_what_is_known_changes_nothing_news_does() {
        let c = KernelContract::default();
        let mut o = Observed::default();
        let ours = Notification::NewRoute(route("203.0.113.10", 32, 200, 249, 7));
        assert!(o.note(&c, Some(7), &ours), "a new route is news");
        assert!(!o.note(&c, Some(7), &ours), "its echo is not");
        // Another destination's route is a neighbour in the set, not in the slot.
        let next = Notification::NewRoute(route("203.0.113.11", 32, 200, 249, 7));
        assert!(o.note(&c, Some(7), &next));
        assert_eq!(o.routes.len(), 2);
        // Our route on another interface replaces the one we knew in its slot.
        let moved = Notification::NewRoute(route("203.0.113.10", 32, 200, 249, 8));
        assert!(o.note(&c, Some(7), &moved));
        assert_eq!(o.routes.len(), 2);
        assert!(o.routes.contains(&route("203.0.113.10", 32, 200, 249, 8)));
        // Another table's route to the same destination is another slot.
        let other_table = Notification::NewRoute(route("203.0.113.10", 32, 201, 249, 7));
        assert!(
            !o.note(&c, Some(7), &other_table),
            "not owned, nothing displaced"
        );
        assert_eq!(o.routes.len(), 2);
        let del = Notification::DelRoute(route("203.0.113.11", 32, 200, 249, 7));
        assert!(o.note(&c, Some(7), &del));
        assert!(
            !o.note(&c, Some(7), &del),
            "deleting what is gone is no news"
        );
        let addr = Notification::NewAddr {
            index: 7,
            prefix: Prefix::host(ip("203.0.113.10")),
        };
        assert!(o.note(&c, Some(7), &addr));
        assert!(!o.note(&c, Some(7), &addr));
    }
}
