//! The segment's Ethernet switch: learns which port each source MAC address is behind and
//! sends a frame to that port only; broadcast, multicast and unknown destinations go to
//! every other port. The gateway (libslirp) is port [`GATEWAY`]; it gets only what is meant
//! for it (see [`for_gateway`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A switch port: [`GATEWAY`] or a QEMU connection.
pub type Port = usize;

/// The gateway's port.
pub const GATEWAY: Port = 0;

/// How long a learned address is trusted without being seen again (a bridge's default
/// ageing time).
const AGEING: Duration = Duration::from_secs(300);

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// To this port.
    One(Port),
    /// To every port but the one it came in on.
    Flood,
    /// Nowhere (malformed, or for a host behind the port it came from).
    Drop,
}

/// The MAC address table.
#[derive(Debug, Default)]
pub struct Switch {
    table: HashMap<[u8; 6], (Port, Instant)>,
}

pub fn mac(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.get(..6)?.try_into().ok()
}

/// Whether an address is a group (broadcast or multicast) address.
pub fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 1
}

impl Switch {
    pub fn new() -> Switch {
        Switch::default()
    }

    /// Learns the source of a frame that came in on `port` and says where it goes.
    pub fn switch(&mut self, port: Port, frame: &[u8], now: Instant) -> Out {
        let (Some(dst), Some(src)) = (mac(frame), frame.get(6..).and_then(mac)) else {
            return Out::Drop;
        };
        if frame.len() < 14 {
            return Out::Drop;
        }
        if !is_group(&src) {
            self.table.insert(src, (port, now));
        }
        if is_group(&dst) {
            return Out::Flood;
        }
        match self.table.get(&dst) {
            Some((p, seen)) if now.saturating_duration_since(*seen) < AGEING => {
                if *p == port {
                    Out::Drop
                } else {
                    Out::One(*p)
                }
            }
            _ => Out::Flood,
        }
    }

    /// Forgets the addresses behind a port that went away.
    pub fn forget(&mut self, port: Port) {
        self.table.retain(|_, (p, _)| *p != port);
    }

    /// Addresses learned.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// libslirp's own MAC address for one of its addresses (`52:55:` + the IPv4 address, as its
/// `if_encap` and ARP replies write it).
pub fn slirp_mac(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x52, 0x55, o[0], o[1], o[2], o[3]]
}

/// Whether a flooded frame concerns the gateway: an ARP frame (the containers look for the
/// gateway's address, and libslirp learns theirs). Other flooded frames are not for it:
/// libslirp routes every IP packet it is given, so a frame for a container whose address
/// the switch has not learned yet would come out of this machine as a second connection.
pub fn for_gateway(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x06])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0; 46]);
        f
    }

    const A: [u8; 6] = [0, 0x50, 0x56, 0, 0, 1];
    const B: [u8; 6] = [0, 0x50, 0x56, 0, 0, 2];
    const BCAST: [u8; 6] = [0xff; 6];

    #[test]
    fn learns_and_floods() {
        let mut s = Switch::new();
        let t = Instant::now();
        // B is unknown: flooded; A is learned on port 1.
        assert_eq!(s.switch(1, &frame(B, A), t), Out::Flood);
        // B answers from port 2: goes to A only.
        assert_eq!(s.switch(2, &frame(A, B), t), Out::One(1));
        assert_eq!(s.switch(1, &frame(B, A), t), Out::One(2));
        assert_eq!(s.switch(1, &frame(BCAST, A), t), Out::Flood);
        // A moves to port 3.
        assert_eq!(s.switch(3, &frame(B, A), t), Out::One(2));
        assert_eq!(s.switch(2, &frame(A, B), t), Out::One(3));
        // Hairpin: nothing goes back out of the port it came in on.
        assert_eq!(s.switch(3, &frame(A, A), t), Out::Drop);
        assert_eq!(s.len(), 2);
        s.forget(2);
        assert_eq!(s.switch(3, &frame(B, A), t), Out::Flood);
        // Aged out.
        assert_eq!(s.switch(3, &frame(A, B), t + AGEING), Out::Flood);
        assert_eq!(s.switch(1, &[1, 2, 3], t), Out::Drop);
        // A group source address is never learned.
        let mut s = Switch::new();
        s.switch(1, &frame(A, BCAST), t);
        assert!(s.is_empty());
    }

    #[test]
    fn the_gateway_gets_arp_only_when_flooded() {
        let mut arp = frame(BCAST, A);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(for_gateway(&arp));
        assert!(!for_gateway(&frame(BCAST, A)));
        assert_eq!(
            slirp_mac("172.16.0.1".parse().unwrap()),
            [0x52, 0x55, 172, 16, 0, 1]
        );
    }
}
