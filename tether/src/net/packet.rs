//! Link-layer datagram sockets (`AF_PACKET`, `SOCK_DGRAM`): the kernel adds and strips the
//! Ethernet header, we send and receive the payload. Used where no IP address exists yet
//! (DHCP DISCOVER/REQUEST) or where the packet is not IP at all (gratuitous ARP).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use etherparse::{ArpEthIpv4Packet, ArpOperation};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

pub const ETH_P_IP: u16 = libc::ETH_P_IP as u16;
pub const ETH_P_ARP: u16 = libc::ETH_P_ARP as u16;
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// An `AF_PACKET` datagram socket bound to one interface and one EtherType.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    proto: u16,
}

fn sockaddr_ll(ifindex: u32, proto: u16, mac: &[u8; 6]) -> io::Result<libc::sockaddr_ll> {
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    let mut addr = [0u8; 8];
    addr[..6].copy_from_slice(mac);
    Ok(libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: proto.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr,
    })
}

const SOCKADDR_LL_LEN: libc::socklen_t =
    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;

impl PacketSocket {
    /// Opens a socket that sends and receives `proto` frames on interface `ifindex` only.
    pub fn open(ifindex: u32, proto: u16) -> io::Result<PacketSocket> {
        // nix's SockProtocol has no ARP member, so the socket starts unfiltered (protocol 0
        // receives nothing) and `bind` below selects the EtherType and the interface.
        let fd = socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let sa = sockaddr_ll(ifindex, proto, &[0; 6])?;
        // SAFETY: `fd` is an open socket owned by this function; `sa` is a fully initialised
        // `sockaddr_ll` that lives across the call, and the length passed is its exact size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                SOCKADDR_LL_LEN,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex, proto })
    }

    /// Sends one payload to `dst` (the kernel prepends the Ethernet header).
    pub fn send_to(&self, payload: &[u8], dst: &[u8; 6]) -> io::Result<()> {
        let sa = sockaddr_ll(self.ifindex, self.proto, dst)?;
        // SAFETY: the fd is open for the life of `self`; `payload` is a valid slice for the
        // length given; `sa` is a fully initialised `sockaddr_ll` of the length given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                SOCKADDR_LL_LEN,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one payload into `buf`, or `None` once `deadline` passes.
    pub fn recv_until(&self, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = u16::try_from(left.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&self.fd),
                PollFlags::POLLIN,
            )];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            match nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => return Ok(Some(n)),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The 28-byte ARP request announcing `ip` at `mac` (sender and target IP both `ip`).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: ip.octets(),
        target_mac: BROADCAST_MAC,
        target_ipv4: ip.octets(),
    }
    .to_bytes()
}

/// Broadcasts a gratuitous ARP request for `ip` on the interface, so neighbours (and a
/// switch that saw this MAC elsewhere) learn the address at once.
pub fn announce(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let s = PacketSocket::open(ifindex, ETH_P_ARP)?;
    s.send_to(&gratuitous_arp(mac, ip), &BROADCAST_MAC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_layout() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let p = gratuitous_arp(mac, Ipv4Addr::new(192, 0, 2, 10));
        let want: [u8; 28] = [
            0, 1, // Ethernet
            8, 0, // IPv4
            6, 4, // address sizes
            0, 1, // request
            2, 0, 0, 0, 0, 1, // sender MAC
            192, 0, 2, 10, // sender IP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // target MAC
            192, 0, 2, 10, // target IP
        ];
        assert_eq!(p, want);
    }
}
