//! Synchronous rtnetlink: the few link, address, route and rule operations the tether needs.
//!
//! Messages are built and parsed by `netlink-packet-route`; this module only frames requests,
//! waits for the kernel's acknowledgement and maps refusals to [`Errno`] so callers can
//! ignore the benign ones (`EEXIST` on a second add, `EADDRNOTAVAIL`/`ESRCH` on deleting what
//! is not there). Netlink to the kernel answers at once, so blocking calls are fine at boot;
//! on the runtime they belong in `spawn_blocking`.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

/// The main routing table.
pub const TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

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

/// A connected rtnetlink socket.
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

    /// Sends one request and collects the kernel's answer: the messages of a dump, or
    /// nothing for an acknowledged change.
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, LinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(LinkError::Socket)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(LinkError::Socket)?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| LinkError::Reply {
                        op: op(),
                        detail: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                // Netlink messages are 4-byte aligned within a datagram.
                off += (len + 3) & !3;
                if reply.header.sequence_number != seq {
                    // A late answer to an earlier request: not ours to report.
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(LinkError::Kernel {
                                op: op(),
                                errno: Errno::from_raw(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump {
                            // A plain GET answers with a single message and no ACK.
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn change(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), LinkError> {
        self.request(op, msg, NLM_F_ACK | flags).map(drop)
    }

    /// Looks an interface up by name.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link, LinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(&|| format!("look up interface {name}"), m)
    }

    /// Looks an interface up by index.
    pub fn link_by_index(&mut self, index: u32) -> Result<Link, LinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(&|| format!("look up interface #{index}"), m)
    }

    fn get_link(&mut self, op: &dyn Fn() -> String, m: LinkMessage) -> Result<Link, LinkError> {
        let reply = self.request(op, RouteNetlinkMessage::GetLink(m), 0)?;
        let Some(RouteNetlinkMessage::NewLink(m)) = reply.into_iter().next() else {
            return Err(LinkError::Reply {
                op: op(),
                detail: "no link message".into(),
            });
        };
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            alias: None,
            mac: Vec::new(),
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
                LinkAttribute::Address(mac) => link.mac = mac,
                _ => {}
            }
        }
        Ok(link)
    }

    fn set_link(
        &mut self,
        op: &dyn Fn() -> String,
        index: u32,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), LinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        edit(&mut m);
        self.change(op, RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Sets an interface administratively up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), LinkError> {
        let what = if up { "up" } else { "down" };
        self.set_link(&|| format!("set interface #{index} {what}"), index, |m| {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        })
    }

    /// Renames an interface (it must be down).
    pub fn rename(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        self.set_link(
            &|| format!("rename interface #{index} to {name}"),
            index,
            |m| m.attributes.push(LinkAttribute::IfName(name.to_owned())),
        )
    }

    /// Sets an interface's alias (`ip link set … alias`).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), LinkError> {
        self.set_link(
            &|| format!("set alias {alias} on interface #{index}"),
            index,
            |m| m.attributes.push(LinkAttribute::IfAlias(alias.to_owned())),
        )
    }

    /// Brings the loopback interface up.
    pub fn loopback_up(&mut self) -> Result<(), LinkError> {
        let lo = self.link_by_name("lo")?;
        if lo.up {
            return Ok(());
        }
        self.set_up(lo.index, true)
    }

    fn address_message(index: u32, ip: Ipv4Addr, prefix: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip.into()));
        m.attributes.push(AddressAttribute::Address(ip.into()));
        if prefix < 31 {
            let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let bcast = Ipv4Addr::from(u32::from(ip) | host);
            m.attributes.push(AddressAttribute::Broadcast(bcast));
        }
        m
    }

    /// Adds `ip/prefix` to an interface; an address already there is not an error.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        let m = Self::address_message(index, ip, prefix);
        let r = self.change(
            &|| format!("add address {ip}/{prefix} to interface #{index}"),
            RouteNetlinkMessage::NewAddress(m),
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
        let m = Self::address_message(index, ip, prefix);
        let r = self.change(
            &|| format!("delete address {ip}/{prefix} from interface #{index}"),
            RouteNetlinkMessage::DelAddress(m),
            0,
        );
        ignore(r, &[Errno::EADDRNOTAVAIL])
    }

    /// The IPv4 addresses of an interface, with prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let all = self.request(
            &|| "list addresses".to_owned(),
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn route_message(r: &Route) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = u8::try_from(r.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        if r.table > u32::from(u8::MAX) {
            m.attributes.push(RouteAttribute::Table(r.table));
        }
        if let Some((dst, len)) = r.dst {
            m.header.destination_prefix_length = len;
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gw) = r.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(r.oif));
        m
    }

    /// Adds a route; an identical route already there is not an error.
    pub fn add_route(&mut self, r: &Route) -> Result<(), LinkError> {
        let mut m = Self::route_message(r);
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        // A route without a gateway reaches its destination directly on the link.
        m.header.scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        let res = self.change(
            &|| format!("add route {r}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        );
        ignore(res, &[Errno::EEXIST])
    }

    /// Deletes a route; a route not there is not an error.
    pub fn delete_route(&mut self, r: &Route) -> Result<(), LinkError> {
        let mut m = Self::route_message(r);
        // "Any scope": match the route whatever scope it was added with.
        m.header.scope = RouteScope::NoWhere;
        let res = self.change(
            &|| format!("delete route {r}"),
            RouteNetlinkMessage::DelRoute(m),
            0,
        );
        ignore(res, &[Errno::ESRCH])
    }

    /// The gateway of the main table's default route on interface `ifindex`, if any.
    pub fn default_gateway(&mut self, ifindex: u32) -> Result<Option<Ipv4Addr>, LinkError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let all = self.request(
            &|| "list routes".to_owned(),
            RouteNetlinkMessage::GetRoute(m),
            NLM_F_DUMP,
        )?;
        Ok(all.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN
                    && r.attributes.contains(&RouteAttribute::Oif(ifindex)) =>
            {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    /// Whether any IPv4 policy rule sends traffic to routing table `table`.
    pub fn rule_uses_table(&mut self, table: u32) -> Result<bool, LinkError> {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        let all = self.request(
            &|| "list routing rules".to_owned(),
            RouteNetlinkMessage::GetRule(m),
            NLM_F_DUMP,
        )?;
        Ok(all.iter().any(|m| match m {
            RouteNetlinkMessage::NewRule(r) => {
                u32::from(r.header.table) == table
                    || r.attributes.contains(&RuleAttribute::Table(table))
            }
            _ => false,
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
        let m = Netlink::address_message(2, Ipv4Addr::new(192, 0, 2, 10), 24);
        assert!(m
            .attributes
            .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(192, 0, 2, 255))));
        let m = Netlink::address_message(2, Ipv4Addr::new(192, 0, 2, 10), 32);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
    }
}
