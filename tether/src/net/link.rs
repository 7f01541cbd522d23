//! Synchronous rtnetlink: the few link, address, route and rule operations the tether needs.
//!
//! Messages are built and parsed by `netlink-packet-route`; this module only frames requests,
//! waits for the kernel's acknowledgement and maps refusals to [`Errno`] so callers can
//! ignore the benign ones (`EEXIST` on a second add, `EADDRNOTAVAIL`/`ESRCH` on deleting what
//! is not there). Netlink to the kernel answers at once, so blocking calls are fine at boot;
//! on the runtime they belong in `crate::blocking`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    parse_string, parse_u32, DefaultNla, Emitable, ErrorBuffer, NetlinkBuffer, NetlinkHeader,
    NlasIterator, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressHeader;
use netlink_packet_route::link::{LinkFlags, LinkHeader};
use netlink_packet_route::route::{RouteHeader, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::RuleHeader;
use netlink_packet_route::AddressFamily;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

/// The main routing table.
pub const TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

// Attribute numbers (linux/if_link.h, if_addr.h, rtnetlink.h, fib_rules.h).
const IFLA_ADDRESS: u16 = libc::IFLA_ADDRESS;
const IFLA_IFNAME: u16 = libc::IFLA_IFNAME;
const IFLA_IFALIAS: u16 = libc::IFLA_IFALIAS;
const IFA_ADDRESS: u16 = libc::IFA_ADDRESS;
const IFA_LOCAL: u16 = libc::IFA_LOCAL;
const IFA_BROADCAST: u16 = libc::IFA_BROADCAST;
const RTA_DST: u16 = libc::RTA_DST;
const RTA_GATEWAY: u16 = libc::RTA_GATEWAY;
const RTA_OIF: u16 = libc::RTA_OIF;
const RTA_TABLE: u16 = libc::RTA_TABLE;
/// `FRA_TABLE` of linux/fib_rules.h (not in `libc`).
const FRA_TABLE: u16 = 15;

/// Brings the loopback interface up. Every container has it, networks or not, so it is on
/// the boot path of every VM: two interface ioctls, so a VM without networks never opens
/// netlink. (The kernel's own work for `lo`, ~10 ms under TCG, is the same either way.)
pub fn loopback_up() -> Result<(), LinkError> {
    let kernel = |errno| LinkError::Kernel {
        op: "bring lo up".into(),
        errno,
    };
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(kernel)?;
    // SAFETY: ifreq is plain data for which all zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name from and writes the flags into the
    // valid `req`; the socket stays open for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(kernel(Errno::last()));
    }
    // SAFETY: after SIOCGIFFLAGS the flags member is the active member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags from the valid `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(kernel(Errno::last()));
    }
    Ok(())
}

/// Errors talking to the kernel over rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// the netlink socket failed
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// the kernel refused a request
    #[error("{op}: {errno}")]
    Kernel { op: String, errno: Errno },
    /// the kernel's answer could not be understood
    #[error("{op}: unexpected netlink reply: {detail}")]
    Reply { op: String, detail: String },
}

impl LinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            LinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// What the tether needs to know about a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_IFALIAS`, if set and non-empty.
    pub alias: Option<String>,
    /// The hardware address (6 bytes on Ethernet; empty on loopback).
    pub mac: Vec<u8>,
    pub up: bool,
}

/// An IPv4 route on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination network and prefix length; `None` is the default route.
    pub dst: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    pub table: u32,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dst {
            Some((ip, len)) => write!(f, "{ip}/{len}")?,
            None => f.write_str("default")?,
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev #{}", self.oif)?;
        if self.table != TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

fn nla(kind: u16, value: impl Into<Vec<u8>>) -> DefaultNla {
    DefaultNla::new(kind, value.into())
}

/// A reply message: its fixed header bytes and attributes, as the kernel sent them.
#[derive(Debug)]
struct Reply {
    payload: Vec<u8>,
}

impl Reply {
    /// `(kind, value)` of each attribute after a fixed header of `header_len` bytes.
    fn attributes(&self, header_len: usize) -> impl Iterator<Item = (u16, &[u8])> {
        let rest = self.payload.get(header_len..).unwrap_or(&[]);
        NlasIterator::new(rest).map_while(Result::ok).map(|b| {
            let (kind, len) = (b.kind(), b.value_length());
            // The value follows the 4-byte attribute header.
            let value = b.into_inner().get(4..4 + len).unwrap_or(&[]);
            (kind, value)
        })
    }
}

fn ipv4(value: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(value).ok().map(Ipv4Addr::from)
}

/// A connected rtnetlink socket.
///
/// Requests are a `netlink-packet-route` fixed header plus generic attributes, and replies
/// are read through the crates' buffer types, picking out the few attributes used. The
/// crate's full typed messages would work too, but their parsers cover every link kind,
/// traffic-control object and statistic the kernel knows, which would add ~0.9 MB to a
/// tether that has no use for them.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink, LinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(LinkError::Socket)?;
        socket.bind_auto().map_err(LinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(LinkError::Socket)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the kernel's answer: the messages of a dump or of a
    /// plain GET, nothing for an acknowledged change.
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        message_type: u16,
        header: &dyn Emitable,
        attributes: &[DefaultNla],
        flags: u16,
    ) -> Result<Vec<Reply>, LinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut nh = NetlinkHeader::default();
        let body = header.buffer_len() + attributes.buffer_len();
        let len = nh.buffer_len() + body;
        nh.length = u32::try_from(len).map_err(|_| LinkError::Reply {
            op: op(),
            detail: "request too large".into(),
        })?;
        nh.message_type = message_type;
        nh.flags = NLM_F_REQUEST | flags;
        nh.sequence_number = seq;
        let mut buf = vec![0u8; len];
        let (h, rest) = buf.split_at_mut(nh.buffer_len());
        nh.emit(h);
        let (fixed, attrs) = rest.split_at_mut(header.buffer_len());
        header.emit(fixed);
        attributes.emit(attrs);
        self.socket.send(&buf, 0).map_err(LinkError::Socket)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let ack = flags & NLM_F_ACK == NLM_F_ACK;
        let bad = |detail: String| LinkError::Reply { op: op(), detail };
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(LinkError::Socket)?;
            let mut off = 0;
            while off < data.len() {
                let msg =
                    NetlinkBuffer::new_checked(&data[off..]).map_err(|e| bad(e.to_string()))?;
                let len = msg.length() as usize;
                // Netlink messages are 4-byte aligned within a datagram.
                off += (len + 3) & !3;
                if msg.sequence_number() != seq {
                    // A late answer to an earlier request: not ours to report.
                    continue;
                }
                match msg.message_type() {
                    t if t == libc::NLMSG_ERROR as u16 => {
                        let e = ErrorBuffer::new_checked(msg.payload())
                            .map_err(|e| bad(e.to_string()))?;
                        return match e.code() {
                            None => Ok(out),
                            Some(code) => Err(LinkError::Kernel {
                                op: op(),
                                errno: Errno::from_raw(-code.get()),
                            }),
                        };
                    }
                    t if t == libc::NLMSG_DONE as u16 => return Ok(out),
                    t if t == libc::NLMSG_NOOP as u16 => {}
                    _ => {
                        out.push(Reply {
                            payload: msg.payload().to_vec(),
                        });
                        if !dump && !ack {
                            // A plain GET answers with a single message and no ACK.
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    fn change(
        &mut self,
        op: &dyn Fn() -> String,
        message_type: u16,
        header: &dyn Emitable,
        attributes: &[DefaultNla],
        flags: u16,
    ) -> Result<(), LinkError> {
        self.request(op, message_type, header, attributes, NLM_F_ACK | flags)
            .map(drop)
    }

    /// Looks an interface up by name.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link, LinkError> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        self.get_link(
            &|| format!("look up interface {name}"),
            0,
            &[nla(IFLA_IFNAME, n)],
        )
    }

    /// Looks an interface up by index.
    pub fn link_by_index(&mut self, index: u32) -> Result<Link, LinkError> {
        self.get_link(&|| format!("look up interface #{index}"), index, &[])
    }

    fn get_link(
        &mut self,
        op: &dyn Fn() -> String,
        index: u32,
        attributes: &[DefaultNla],
    ) -> Result<Link, LinkError> {
        let h = LinkHeader {
            index,
            ..LinkHeader::default()
        };
        let reply = self.request(op, libc::RTM_GETLINK, &h, attributes, 0)?;
        let no_link = || LinkError::Reply {
            op: op(),
            detail: "no link message".into(),
        };
        let r = reply.into_iter().next().ok_or_else(no_link)?;
        let header = LinkHeader::parse(&r.payload).map_err(|_| no_link())?;
        let mut link = Link {
            index: header.index,
            name: String::new(),
            alias: None,
            mac: Vec::new(),
            up: header.flags.contains(LinkFlags::Up),
        };
        for (kind, value) in r.attributes(header.buffer_len()) {
            match kind {
                IFLA_IFNAME => link.name = parse_string(value).unwrap_or_default(),
                IFLA_IFALIAS => {
                    link.alias = parse_string(value).ok().filter(|a| !a.is_empty());
                }
                IFLA_ADDRESS => link.mac = value.to_vec(),
                _ => {}
            }
        }
        Ok(link)
    }

    fn set_link(
        &mut self,
        op: &dyn Fn() -> String,
        index: u32,
        edit: impl FnOnce(&mut LinkHeader),
        attributes: &[DefaultNla],
    ) -> Result<(), LinkError> {
        let mut h = LinkHeader {
            index,
            ..LinkHeader::default()
        };
        edit(&mut h);
        self.change(op, libc::RTM_SETLINK, &h, attributes, 0)
    }

    /// Sets an interface administratively up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), LinkError> {
        let what = if up { "up" } else { "down" };
        self.set_link(
            &|| format!("set interface #{index} {what}"),
            index,
            |h| {
                h.change_mask = LinkFlags::Up;
                if up {
                    h.flags = LinkFlags::Up;
                }
            },
            &[],
        )
    }

    /// Renames an interface (it must be down).
    pub fn rename(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        self.set_link(
            &|| format!("rename interface #{index} to {name}"),
            index,
            |_| {},
            &[nla(IFLA_IFNAME, n)],
        )
    }

    /// Sets an interface's alias (`ip link set … alias`).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), LinkError> {
        self.set_link(
            &|| format!("set alias {alias} on interface #{index}"),
            index,
            |_| {},
            &[nla(IFLA_IFALIAS, alias.as_bytes())],
        )
    }

    fn address_message(index: u32, ip: Ipv4Addr, prefix: u8) -> (AddressHeader, Vec<DefaultNla>) {
        let h = AddressHeader {
            family: AddressFamily::Inet,
            prefix_len: prefix,
            index,
            ..AddressHeader::default()
        };
        let mut attrs = vec![nla(IFA_LOCAL, ip.octets()), nla(IFA_ADDRESS, ip.octets())];
        if prefix < 31 {
            let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let bcast = Ipv4Addr::from(u32::from(ip) | host);
            attrs.push(nla(IFA_BROADCAST, bcast.octets()));
        }
        (h, attrs)
    }

    /// Adds `ip/prefix` to an interface; an address already there is not an error.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        let (h, attrs) = Self::address_message(index, ip, prefix);
        let r = self.change(
            &|| format!("add address {ip}/{prefix} to interface #{index}"),
            libc::RTM_NEWADDR,
            &h,
            &attrs,
            NLM_F_CREATE | NLM_F_EXCL,
        );
        ignore(r, &[Errno::EEXIST])
    }

    /// Removes `ip/prefix` from an interface; an address not there is not an error.
    pub fn delete_address(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        let (h, attrs) = Self::address_message(index, ip, prefix);
        let r = self.change(
            &|| format!("delete address {ip}/{prefix} from interface #{index}"),
            libc::RTM_DELADDR,
            &h,
            &attrs,
            0,
        );
        ignore(r, &[Errno::EADDRNOTAVAIL])
    }

    /// The IPv4 addresses of an interface, with prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
        let h = AddressHeader {
            family: AddressFamily::Inet,
            ..AddressHeader::default()
        };
        let all = self.request(
            &|| "list addresses".to_owned(),
            libc::RTM_GETADDR,
            &h,
            &[],
            NLM_F_DUMP,
        )?;
        Ok(all
            .iter()
            .filter_map(|r| {
                let h = AddressHeader::parse(&r.payload).ok()?;
                if h.index != index {
                    return None;
                }
                let ip = r
                    .attributes(h.buffer_len())
                    .find_map(|(k, v)| (k == IFA_LOCAL).then(|| ipv4(v)).flatten())?;
                Some((ip, h.prefix_len))
            })
            .collect())
    }

    fn route_message(r: &Route) -> (RouteHeader, Vec<DefaultNla>) {
        // Tables above 255 only fit the attribute.
        let mut h = RouteHeader {
            address_family: AddressFamily::Inet,
            table: u8::try_from(r.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC),
            ..RouteHeader::default()
        };
        let mut attrs = Vec::new();
        if r.table > u32::from(u8::MAX) {
            attrs.push(nla(RTA_TABLE, r.table.to_ne_bytes()));
        }
        if let Some((dst, len)) = r.dst {
            h.destination_prefix_length = len;
            attrs.push(nla(RTA_DST, dst.octets()));
        }
        if let Some(gw) = r.gateway {
            attrs.push(nla(RTA_GATEWAY, gw.octets()));
        }
        attrs.push(nla(RTA_OIF, r.oif.to_ne_bytes()));
        (h, attrs)
    }

    /// Adds a route; an identical route already there is not an error.
    pub fn add_route(&mut self, r: &Route) -> Result<(), LinkError> {
        let (mut h, attrs) = Self::route_message(r);
        h.protocol = RouteProtocol::Boot;
        h.kind = RouteType::Unicast;
        // A route without a gateway reaches its destination directly on the link.
        h.scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        let res = self.change(
            &|| format!("add route {r}"),
            libc::RTM_NEWROUTE,
            &h,
            &attrs,
            NLM_F_CREATE | NLM_F_EXCL,
        );
        ignore(res, &[Errno::EEXIST])
    }

    /// Deletes a route; a route not there is not an error.
    pub fn delete_route(&mut self, r: &Route) -> Result<(), LinkError> {
        let (mut h, attrs) = Self::route_message(r);
        // "Any scope": match the route whatever scope it was added with.
        h.scope = RouteScope::NoWhere;
        let res = self.change(
            &|| format!("delete route {r}"),
            libc::RTM_DELROUTE,
            &h,
            &attrs,
            0,
        );
        ignore(res, &[Errno::ESRCH])
    }

    /// The gateway of the main table's default route on interface `ifindex`, if any.
    pub fn default_gateway(&mut self, ifindex: u32) -> Result<Option<Ipv4Addr>, LinkError> {
        let h = RouteHeader {
            address_family: AddressFamily::Inet,
            ..RouteHeader::default()
        };
        let all = self.request(
            &|| "list routes".to_owned(),
            libc::RTM_GETROUTE,
            &h,
            &[],
            NLM_F_DUMP,
        )?;
        Ok(all.iter().find_map(|r| {
            let h = RouteHeader::parse(&r.payload).ok()?;
            if h.destination_prefix_length != 0 {
                return None;
            }
            let (mut table, mut oif, mut gw) = (u32::from(h.table), None, None);
            for (k, v) in r.attributes(h.buffer_len()) {
                match k {
                    RTA_TABLE => table = parse_u32(v).unwrap_or(table),
                    RTA_OIF => oif = parse_u32(v).ok(),
                    RTA_GATEWAY => gw = ipv4(v),
                    _ => {}
                }
            }
            (table == TABLE_MAIN && oif == Some(ifindex))
                .then_some(gw)
                .flatten()
        }))
    }

    /// Whether any IPv4 policy rule sends traffic to routing table `table`.
    pub fn rule_uses_table(&mut self, table: u32) -> Result<bool, LinkError> {
        let h = RuleHeader {
            family: AddressFamily::Inet,
            ..RuleHeader::default()
        };
        let all = self.request(
            &|| "list routing rules".to_owned(),
            libc::RTM_GETRULE,
            &h,
            &[],
            NLM_F_DUMP,
        )?;
        Ok(all.iter().any(|r| {
            let Ok(h) = RuleHeader::parse(&r.payload) else {
                return false;
            };
            u32::from(h.table) == table
                || r.attributes(h.buffer_len())
                    .any(|(k, v)| k == FRA_TABLE && parse_u32(v).ok() == Some(table))
        }))
    }
}

fn ignore(r: Result<(), LinkError>, benign: &[Errno]) -> Result<(), LinkError> {
    match r {
        Err(e) if e.errno().is_some_and(|n| benign.contains(&n)) => {
            tracing::debug!(error = %e, "ignored");
            Ok(())
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_display() {
        let r = Route {
            dst: None,
            gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
            oif: 2,
            table: TABLE_MAIN,
        };
        assert_eq!(r.to_string(), "default via 192.0.2.1 dev #2");
        let r = Route {
            dst: Some((Ipv4Addr::new(198, 51, 100, 0), 24)),
            gateway: None,
            oif: 3,
            table: 201,
        };
        assert_eq!(r.to_string(), "198.51.100.0/24 dev #3 table 201");
    }

    #[test]
    fn address_message_has_broadcast_for_subnets() {
        let (h, attrs) = Netlink::address_message(2, Ipv4Addr::new(192, 0, 2, 10), 24);
        assert_eq!((h.index, h.prefix_len), (2, 24));
        assert!(attrs.contains(&nla(IFA_BROADCAST, [192, 0, 2, 255])));
        let (_, attrs) = Netlink::address_message(2, Ipv4Addr::new(192, 0, 2, 10), 32);
        assert_eq!(
            attrs,
            [
                nla(IFA_LOCAL, [192, 0, 2, 10]),
                nla(IFA_ADDRESS, [192, 0, 2, 10])
            ]
        );
    }

    #[test]
    fn reply_attributes() {
        // A link header followed by IFLA_IFNAME "eth0" and IFLA_ADDRESS.
        let h = LinkHeader {
            index: 7,
            ..LinkHeader::default()
        };
        let attrs = [
            nla(IFLA_IFNAME, &b"eth0\0"[..]),
            nla(IFLA_ADDRESS, [2, 0, 0, 0, 0, 1]),
        ];
        let mut payload = vec![0u8; h.buffer_len() + attrs.as_slice().buffer_len()];
        h.emit(&mut payload);
        attrs.as_slice().emit(&mut payload[h.buffer_len()..]);
        let r = Reply { payload };
        assert_eq!(LinkHeader::parse(&r.payload).unwrap().index, 7);
        let got: Vec<(u16, Vec<u8>)> = r
            .attributes(h.buffer_len())
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (IFLA_IFNAME, b"eth0\0".to_vec()),
                (IFLA_ADDRESS, vec![2, 0, 0, 0, 0, 1])
            ]
        );
        assert_eq!(parse_string(&got[0].1).unwrap(), "eth0");
    }
}
