//! ARP and NDP on the wire, for local (L2) pools: the gratuitous ARP and unsolicited
//! Neighbor Advertisement a node sends when it starts answering for an address (so
//! clients and switches move to its MAC at once, not when their caches expire), the
//! probes it sends now and then (ARP probe, Neighbor Solicitation for duplicate address
//! detection: every other holder answers), and the ARP and Neighbor Advertisements it
//! hears from others claiming its addresses (a split brain on the wire).
//!
//! Frames are built here byte by byte (tested below) and sent on an `AF_PACKET` socket
//! bound to the interface and to ARP, so the same socket hears the LAN's ARP traffic; a
//! second one hears Neighbor Advertisements only (a socket filter drops all other IPv6
//! in the kernel).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike, bind, recvfrom, sendto,
    socket,
};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet address of ff02::1 (all nodes).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(90);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A gratuitous ARP (sender and target both `addr`, broadcast): a request, or a reply
/// (MetalLB and most routers' habit is to send both, as hosts differ in which they take).
pub fn gratuitous_arp(mac: [u8; 6], addr: Ipv4Addr, reply: bool) -> Vec<u8> {
    arp(mac, if reply { 2 } else { 1 }, addr, BROADCAST, addr)
}

/// An ARP probe for `addr` (sender address 0.0.0.0): every host that has `addr`
/// replies, so a second holder shows itself.
pub fn arp_probe(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    arp(mac, 1, Ipv4Addr::UNSPECIFIED, [0; 6], addr)
}

fn arp(mac: [u8; 6], op: u16, sender: Ipv4Addr, tha: [u8; 6], target: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(BROADCAST, mac, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

/// An unsolicited Neighbor Advertisement for `addr` to all nodes, with the Override
/// flag and the target link-layer address option (RFC 4861 7.2.6).
pub fn unsolicited_na(mac: [u8; 6], addr: Ipv6Addr) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend_from_slice(&addr.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let sum = checksum_v6(&addr, &dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(ALL_NODES_MAC, mac, ETH_P_IPV6);
    ipv6(&mut f, addr, dst, &icmp);
    f
}

/// A Neighbor Solicitation for `addr` as duplicate address detection sends it (source
/// `::`, to the address's solicited-node group, RFC 4862 5.4.2): every host that has
/// `addr` answers with a Neighbor Advertisement to all nodes, so a second holder shows
/// itself.
pub fn neighbor_probe(mac: [u8; 6], addr: Ipv6Addr) -> Vec<u8> {
    let o = addr.octets();
    let dst = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&o);
    let sum = checksum_v6(&Ipv6Addr::UNSPECIFIED, &dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet([0x33, 0x33, 0xff, o[13], o[14], o[15]], mac, ETH_P_IPV6);
    ipv6(&mut f, Ipv6Addr::UNSPECIFIED, dst, &icmp);
    f
}

fn ipv6(f: &mut Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) {
    let len = u16::try_from(icmp.len()).expect("short");
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(icmp);
}

fn checksum_v6(src: &Ipv6Addr, dst: &Ipv6Addr, payload: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(payload.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(payload);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP packet heard on the LAN: who says it has which address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender: Ipv4Addr,
    pub target: Ipv4Addr,
}

/// Reads an Ethernet ARP frame.
pub fn parse_arp(frame: &[u8]) -> Option<Heard> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let a = &frame[14..];
    if a[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Some(Heard {
        op: u16::from_be_bytes([a[6], a[7]]),
        sender_mac: a[8..14].try_into().ok()?,
        sender: ip(&a[14..18]),
        target: ip(&a[24..28]),
    })
}

/// Someone on the LAN saying it has an address: the sender of an ARP packet, or the
/// target of a Neighbor Advertisement, with the MAC it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub addr: IpAddr,
    pub mac: [u8; 6],
}

/// Reads an Ethernet frame holding a Neighbor Advertisement (no extension headers):
/// its target, with the target link-layer address option's MAC (or the frame's source).
pub fn parse_na(frame: &[u8]) -> Option<Claim> {
    if frame.len() < 78 || frame[12..14] != ETH_P_IPV6.to_be_bytes() || frame[20] != 58 {
        return None;
    }
    let icmp = &frame[54..];
    if icmp[0] != 136 {
        return None;
    }
    let target: [u8; 16] = icmp[8..24].try_into().ok()?;
    let mut mac: [u8; 6] = frame[6..12].try_into().ok()?;
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            break;
        }
        if opts[0] == 2 && len == 8 {
            mac = opts[2..8].try_into().ok()?;
        }
        opts = &opts[len..];
    }
    Some(Claim {
        addr: IpAddr::V6(target.into()),
        mac,
    })
}

/// Formats a MAC address the usual way.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `AF_PACKET` sockets on one interface: one sends frames and hears ARP, the other
/// hears Neighbor Advertisements.
#[derive(Debug)]
pub struct Wire {
    fd: OwnedFd,
    nd: OwnedFd,
    index: u32,
}

/// The socket filter of the Neighbor Advertisement socket (classic BPF, offsets from
/// the Ethernet header): IPv6, next header ICMPv6, type 136; everything else dropped.
const NA_FILTER: [libc::sock_filter; 8] = [
    bpf(0x28, 0, 0, 12),                // ldh [12]: ethertype
    bpf(0x15, 0, 5, ETH_P_IPV6 as u32), // jeq IPv6, else drop
    bpf(0x30, 0, 0, 20),                // ldb [20]: next header
    bpf(0x15, 0, 3, 58),                // jeq ICMPv6, else drop
    bpf(0x30, 0, 0, 54),                // ldb [54]: ICMPv6 type
    bpf(0x15, 0, 1, 136),               // jeq Neighbor Advertisement, else drop
    bpf(0x06, 0, 0, 0xffff),            // ret: accept
    bpf(0x06, 0, 0, 0),                 // ret: drop
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Attaches [`NA_FILTER`] to a socket.
fn attach_na_filter(fd: &OwnedFd) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: NA_FILTER.len() as u16,
        filter: NA_FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at a live, correctly sized filter array for the duration of
    // the call (the kernel copies it); the option length is that of `sock_fprog`. nix
    // has no safe wrapper for SO_ATTACH_FILTER.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn link_addr(index: u32, protocol: u16, dst: Option<[u8; 6]>) -> LinkAddr {
    let mut sll_addr = [0u8; 8];
    if let Some(d) = dst {
        sll_addr[..6].copy_from_slice(&d);
    }
    let raw = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: i32::try_from(index).unwrap_or(0),
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: if dst.is_some() { 6 } else { 0 },
        sll_addr,
    };
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `raw` is a valid, fully initialised sockaddr_ll of exactly `len` bytes;
    // nix offers no safe constructor for a link-layer address.
    #[allow(unsafe_code)]
    unsafe { LinkAddr::from_raw(std::ptr::from_ref(&raw).cast(), Some(len)) }
        .expect("a sockaddr_ll of the right size")
}

/// Reads what a non-blocking socket has queued (at most 10,000 frames a call), keeping
/// what `parse` understands.
fn drain<T>(fd: &OwnedFd, parse: fn(&[u8]) -> Option<T>) -> Vec<T> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1600];
    for _ in 0..10_000 {
        let Ok((n, _)) = recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) else {
            break;
        };
        out.extend(parse(&buf[..n]));
    }
    out
}

impl Wire {
    /// Opens the socket on interface `index` (non-blocking).
    pub fn open(index: u32) -> io::Result<Wire> {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        bind(fd.as_raw_fd(), &link_addr(index, ETH_P_ARP, None))?;
        // Created with protocol 0 (it hears nothing), filtered, then bound to IPv6: no
        // unfiltered frame is ever queued on it.
        let nd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        attach_na_filter(&nd)?;
        bind(nd.as_raw_fd(), &link_addr(index, ETH_P_IPV6, None))?;
        Ok(Wire { fd, nd, index })
    }

    /// Sends one Ethernet frame (its destination is its first six bytes).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let dst: [u8; 6] = frame[..6].try_into().expect("an Ethernet frame");
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        sendto(
            self.fd.as_raw_fd(),
            frame,
            &link_addr(self.index, ethertype, Some(dst)),
            MsgFlags::empty(),
        )?;
        Ok(())
    }

    /// The ARP packets heard since the last call.
    pub fn heard(&self) -> Vec<Heard> {
        drain(&self.fd, parse_arp)
    }

    /// Who claimed an address since the last call: senders of ARP packets (not probes)
    /// and targets of Neighbor Advertisements.
    pub fn claims(&self) -> Vec<Claim> {
        let mut out: Vec<Claim> = self
            .heard()
            .into_iter()
            .filter(|h| !h.sender.is_unspecified())
            .map(|h| Claim {
                addr: IpAddr::V4(h.sender),
                mac: h.sender_mac,
            })
            .collect();
        out.extend(drain(&self.nd, parse_na));
        out
    }

    /// Probes for other holders of `addr` (they answer; see [`Wire::claims`]).
    pub fn probe(&self, mac: [u8; 6], addr: IpAddr) -> io::Result<()> {
        match addr {
            IpAddr::V4(a) => self.send(&arp_probe(mac, a)),
            IpAddr::V6(a) => self.send(&neighbor_probe(mac, a)),
        }
    }

    /// Announces that this node now answers for `addr`.
    pub fn announce(&self, mac: [u8; 6], addr: IpAddr) -> io::Result<()> {
        match addr {
            IpAddr::V4(a) => {
                self.send(&gratuitous_arp(mac, a, false))?;
                self.send(&gratuitous_arp(mac, a, true))
            }
            IpAddr::V6(a) => self.send(&unsolicited_na(mac, a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0, 1];

    #[test]
    fn a_gratuitous_arp_names_the_address_twice() {
        let f = gratuitous_arp(MAC, "192.0.2.10".parse().unwrap(), false);
        assert_eq!(f.len(), 60);
        let h = parse_arp(&f).unwrap();
        assert_eq!(h.op, 1);
        assert_eq!(h.sender_mac, MAC);
        assert_eq!(h.sender, h.target);
        assert_eq!(h.sender.to_string(), "192.0.2.10");
        assert_eq!(
            parse_arp(&gratuitous_arp(MAC, h.sender, true)).unwrap().op,
            2
        );
        let p = parse_arp(&arp_probe(MAC, h.sender)).unwrap();
        assert_eq!((p.sender, p.target), (Ipv4Addr::UNSPECIFIED, h.sender));
    }

    #[test]
    fn an_unsolicited_na_checks_out() {
        let addr: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let f = unsolicited_na(MAC, addr);
        assert_eq!(&f[..6], &ALL_NODES_MAC);
        assert_eq!(f[12..14], ETH_P_IPV6.to_be_bytes());
        let ip = &f[14..54];
        assert_eq!(ip[6], 58, "ICMPv6");
        assert_eq!(ip[7], 255, "hop limit 255, or receivers drop it");
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4] & 0x20, 0x20, "override");
        assert_eq!(&icmp[8..24], &addr.octets());
        assert_eq!(&icmp[26..32], &MAC);
        // A correct checksum sums to zero over pseudo-header and message.
        let src: [u8; 16] = ip[8..24].try_into().unwrap();
        let dst: [u8; 16] = ip[24..40].try_into().unwrap();
        assert_eq!(checksum_v6(&src.into(), &dst.into(), icmp), 0);
    }

    #[test]
    fn a_neighbor_probe_is_duplicate_address_detection() {
        let addr: Ipv6Addr = "2001:db8:2::200".parse().unwrap();
        let f = neighbor_probe(MAC, addr);
        assert_eq!(&f[..6], &[0x33, 0x33, 0xff, 0, 0x02, 0]);
        let ip = &f[14..54];
        assert_eq!((ip[6], ip[7]), (58, 255));
        assert_eq!(&ip[8..24], &[0; 16], "source ::");
        let dst: [u8; 16] = ip[24..40].try_into().unwrap();
        assert_eq!(
            Ipv6Addr::from(dst).to_string(),
            "ff02::1:ff00:200",
            "solicited-node group"
        );
        let icmp = &f[54..];
        assert_eq!(icmp[0], 135);
        assert_eq!(&icmp[8..24], &addr.octets());
        assert_eq!(icmp.len(), 24, "no source link-layer option from ::");
        assert_eq!(checksum_v6(&Ipv6Addr::UNSPECIFIED, &dst.into(), icmp), 0);
        assert_eq!(parse_na(&f), None, "a solicitation is not a claim");
    }

    #[test]
    fn a_neighbor_advertisement_names_its_target_and_mac() {
        let addr: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let c = parse_na(&unsolicited_na(MAC, addr)).unwrap();
        assert_eq!((c.addr, c.mac), (IpAddr::V6(addr), MAC));
        // Without the option, the frame's source MAC; a truncated option is ignored.
        let mut f = unsolicited_na(MAC, addr);
        f.truncate(78);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert_eq!(parse_na(&f).unwrap().mac, [2, 0, 0, 0, 0, 9]);
        let mut bad = unsolicited_na(MAC, addr);
        bad[79] = 0;
        assert_eq!(
            parse_na(&bad).unwrap().mac,
            MAC,
            "zero-length option stops the walk"
        );
        assert_eq!(
            parse_na(&gratuitous_arp(MAC, "192.0.2.1".parse().unwrap(), true)),
            None
        );
    }

    #[test]
    fn other_frames_are_not_arp() {
        assert_eq!(parse_arp(&unsolicited_na(MAC, Ipv6Addr::LOCALHOST)), None);
        assert_eq!(parse_arp(&[0; 20]), None);
        assert_eq!(mac_string(&MAC), "02:00:5e:10:00:01");
    }
}
