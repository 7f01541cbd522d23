//! DHCPv4 messages on the wire (RFC 2131 §2; options RFC 2132; long options RFC 3396):
//! only the fields and options the client in [`super::dhcp`] uses.
//!
//! Hand-written because of the tether's size (issue 17): the well-kept codec, `dhcproto`,
//! depends unconditionally on `hickory-proto`, whose DNS names bring `url`, `idna` and the
//! ICU Unicode tables along — about 190 KB of a binary that must stay under 2.5 MB, for a
//! client that reads seven options and writes seven. Encoding follows `dhcproto`'s byte for
//! byte (options in code order, values over 255 bytes split into consecutive parts, `End`);
//! decoding joins split options, as RFC 3396 asks, and leaves each option's meaning to the
//! accessor that reads it, so one malformed option does not hide the others.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// `op` of a client's message.
pub const BOOT_REQUEST: u8 = 1;
/// `op` of a server's message.
pub const BOOT_REPLY: u8 = 2;
/// `htype` of Ethernet, and its `hlen`.
const HTYPE_ETHERNET: u8 = 1;
const HLEN_ETHERNET: u8 = 6;
/// The broadcast bit of `flags`.
const FLAG_BROADCAST: u16 = 0x8000;
/// Ahead of the options (RFC 2131 §3).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The fixed part: op … file, then the cookie.
const HEADER_LEN: usize = 236;
/// BOOTP's minimum message size; some servers drop shorter requests.
pub const BOOTP_MIN_LEN: usize = 300;

/// Option codes (RFC 2132) the client reads or writes.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DOMAIN_NAME_SERVER: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// Option 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(b: u8) -> Option<Self> {
        use MessageType::*;
        Some(match b {
            1 => Discover,
            2 => Offer,
            3 => Request,
            4 => Decline,
            5 => Ack,
            6 => Nak,
            7 => Release,
            8 => Inform,
            _ => return None,
        })
    }
}

/// One message. `siaddr`, `giaddr`, `sname` and `file` are not kept: the client sends them
/// as zeros and has no use for a server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    /// The broadcast bit of `flags` (the others are reserved, sent as zeros).
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// Each option's whole value, by code.
    opts: BTreeMap<u8, Vec<u8>>,
}

impl Message {
    /// A client's message from Ethernet address `mac`, without options.
    pub fn request(xid: u32, ciaddr: Ipv4Addr, mac: &[u8; 6]) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(mac);
        Message {
            op: BOOT_REQUEST,
            xid,
            broadcast: false,
            ciaddr,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            opts: BTreeMap::new(),
        }
    }

    /// Sets option `code` to `value` (replacing any earlier value).
    pub fn set(&mut self, code: u8, value: Vec<u8>) {
        self.opts.insert(code, value);
    }

    pub fn set_type(&mut self, t: MessageType) {
        self.set(opt::MESSAGE_TYPE, vec![t as u8]);
    }

    pub fn set_addr(&mut self, code: u8, a: Ipv4Addr) {
        self.set(code, a.octets().to_vec());
    }

    pub fn set_addrs(&mut self, code: u8, list: &[Ipv4Addr]) {
        self.set(code, list.iter().flat_map(|a| a.octets()).collect());
    }

    pub fn set_u32(&mut self, code: u8, v: u32) {
        self.set(code, v.to_be_bytes().to_vec());
    }

    pub fn remove(&mut self, code: u8) {
        self.opts.remove(&code);
    }

    /// Option `code`'s value, if present.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.opts.get(&code).map(Vec::as_slice)
    }

    /// Option 53, if present and known.
    pub fn msg_type(&self) -> Option<MessageType> {
        match self.get(opt::MESSAGE_TYPE)? {
            [b] => MessageType::from_u8(*b),
            _ => None,
        }
    }

    /// An option holding one address; `None` if absent or not 4 bytes long.
    pub fn addr(&self, code: u8) -> Option<Ipv4Addr> {
        let b: [u8; 4] = self.get(code)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    }

    /// An option holding a list of addresses; empty if absent or not a whole number of them.
    pub fn addrs(&self, code: u8) -> Vec<Ipv4Addr> {
        match self.get(code) {
            Some(b) if b.len() % 4 == 0 => b
                .chunks_exact(4)
                .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// An option holding a 32-bit number; `None` if absent or not 4 bytes long.
    pub fn u32(&self, code: u8) -> Option<u32> {
        Some(u32::from_be_bytes(self.get(code)?.try_into().ok()?))
    }

    /// The wire form, padded to [`BOOTP_MIN_LEN`].
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(BOOTP_MIN_LEN);
        v.extend_from_slice(&[self.op, HTYPE_ETHERNET, HLEN_ETHERNET, 0]);
        v.extend_from_slice(&self.xid.to_be_bytes());
        v.extend_from_slice(&[0, 0]); // secs
        let flags = if self.broadcast { FLAG_BROADCAST } else { 0 };
        v.extend_from_slice(&flags.to_be_bytes());
        for a in [
            self.ciaddr,
            self.yiaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
        ] {
            v.extend_from_slice(&a.octets());
        }
        v.extend_from_slice(&self.chaddr);
        v.resize(HEADER_LEN, 0); // sname, file
        v.extend_from_slice(&MAGIC_COOKIE);
        for (&code, value) in &self.opts {
            // RFC 3396: a value too long for one option goes in consecutive ones.
            let mut parts = value.chunks(usize::from(u8::MAX)).peekable();
            if parts.peek().is_none() {
                v.extend_from_slice(&[code, 0]);
            }
            for part in parts {
                v.push(code);
                v.push(u8::try_from(part.len()).unwrap_or(u8::MAX));
                v.extend_from_slice(part);
            }
        }
        v.push(opt::END);
        if v.len() < BOOTP_MIN_LEN {
            v.resize(BOOTP_MIN_LEN, 0);
        }
        v
    }

    /// Reads a message; `None` if `b` is not a DHCP message for Ethernet addresses. Options
    /// after a truncated one are lost; those before it are kept.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let (head, mut rest) = (b.get(..HEADER_LEN)?, b.get(HEADER_LEN..)?);
        if rest.get(..4)? != MAGIC_COOKIE || head[1] != HTYPE_ETHERNET {
            return None;
        }
        rest = &rest[4..];
        let addr = |at: usize| Ipv4Addr::new(head[at], head[at + 1], head[at + 2], head[at + 3]);
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&head[28..44]);
        let mut opts: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        while let Some((&code, after)) = rest.split_first() {
            match code {
                opt::PAD => rest = after,
                opt::END => break,
                _ => {
                    let Some((&len, after)) = after.split_first() else {
                        break;
                    };
                    let Some(value) = after.get(..usize::from(len)) else {
                        break;
                    };
                    opts.entry(code).or_default().extend_from_slice(value);
                    rest = &after[usize::from(len)..];
                }
            }
        }
        Some(Message {
            op: head[0],
            xid: u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
            broadcast: u16::from_be_bytes([head[10], head[11]]) & FLAG_BROADCAST != 0,
            ciaddr: addr(12),
            yiaddr: addr(16),
            chaddr,
            opts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x00, 0x50, 0x56, 0xa1, 0xb2, 0xc3];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A DISCOVER as the client sends it.
    fn discover() -> Message {
        let mut m = Message::request(0x1234_5678, Ipv4Addr::UNSPECIFIED, &MAC);
        m.broadcast = true;
        m.set_type(MessageType::Discover);
        m.set(opt::CLIENT_ID, vec![0xff, 1, 2, 3]);
        m.set(
            opt::PARAMETER_REQUEST_LIST,
            vec![opt::SUBNET_MASK, opt::ROUTER, opt::DOMAIN_NAME_SERVER],
        );
        m.set(opt::HOSTNAME, b"web.example.com".to_vec());
        m
    }

    #[test]
    fn encodes_as_dhcproto_did() {
        // The header and options `dhcproto` 0.15 wrote for the same DISCOVER and RELEASE.
        let b = discover().encode();
        assert_eq!(b.len(), BOOTP_MIN_LEN);
        assert_eq!(
            hex(&b[..44]),
            "0101060012345678000080000000000000000000000000000000000000\
             5056a1b2c300000000000000000000"
        );
        assert!(b[44..236].iter().all(|&z| z == 0), "sname/file not zero");
        assert_eq!(
            hex(&b[236..]).trim_end_matches('0'),
            "638253630c0f7765622e6578616d706c652e636f6d35010137030103063d04ff010203ff"
        );
        let mut rel = Message::request(7, ip("192.0.2.10"), &MAC);
        rel.set_type(MessageType::Release);
        rel.set(opt::CLIENT_ID, vec![0xff, 1, 2, 3]);
        rel.set_addr(opt::SERVER_ID, ip("192.0.2.1"));
        let b = rel.encode();
        assert_eq!(hex(&b[..16]), "010106000000000700000000c000020a");
        assert_eq!(
            hex(&b[236..]).trim_end_matches('0'),
            "638253633501073604c00002013d04ff010203ff"
        );
    }

    #[test]
    fn round_trip() {
        let mut m = discover();
        m.yiaddr = ip("192.0.2.10");
        m.set_addrs(opt::ROUTER, &[ip("192.0.2.1"), ip("192.0.2.254")]);
        m.set_u32(opt::LEASE_TIME, 3600);
        m.set(opt::MESSAGE, b"wrong network".to_vec());
        let d = Message::decode(&m.encode()).unwrap();
        assert_eq!(d, m);
        assert_eq!(d.msg_type(), Some(MessageType::Discover));
        assert_eq!(d.addrs(opt::ROUTER), [ip("192.0.2.1"), ip("192.0.2.254")]);
        assert_eq!(d.u32(opt::LEASE_TIME), Some(3600));
        assert_eq!(d.get(opt::HOSTNAME), Some(&b"web.example.com"[..]));
        // Every message type survives.
        for t in 1..=8 {
            let t = MessageType::from_u8(t).unwrap();
            let mut m = Message::request(1, Ipv4Addr::UNSPECIFIED, &MAC);
            m.set_type(t);
            assert_eq!(Message::decode(&m.encode()).unwrap().msg_type(), Some(t));
        }
        // An empty option, and none at all.
        let mut m = Message::request(2, Ipv4Addr::UNSPECIFIED, &MAC);
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        m.set(opt::HOSTNAME, Vec::new());
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn long_options_are_split_and_joined() {
        let mut m = Message::request(8, Ipv4Addr::UNSPECIFIED, &MAC);
        m.set(opt::HOSTNAME, vec![b'h'; 300]);
        let b = m.encode();
        // As dhcproto: 255 bytes, then the other 45.
        assert_eq!(&b[240..242], &[opt::HOSTNAME, 255]);
        assert_eq!(&b[497..499], &[opt::HOSTNAME, 45]);
        assert_eq!(b[544], opt::END);
        assert_eq!(Message::decode(&b).unwrap(), m);
    }

    #[test]
    fn decodes_what_servers_send() {
        // Pads between options, a split router list, the broadcast flag, a server's siaddr
        // and sname (ignored), options beyond `End` (ignored).
        let mut b = vec![BOOT_REPLY, 1, 6, 0];
        b.extend_from_slice(&42u32.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0x80, 0]);
        b.extend_from_slice(&[0, 0, 0, 0, 192, 0, 2, 10, 192, 0, 2, 1, 0, 0, 0, 0]);
        b.extend_from_slice(&MAC);
        b.resize(44, 0);
        b.extend_from_slice(b"dnsmasq");
        b.resize(HEADER_LEN, 0);
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&unhex(
            "350102000003 04c0000201 0304c00002fe 0104ffffff00 3304ffffffff ff 0604c0000235"
                .replace(' ', "")
                .as_str(),
        ));
        let m = Message::decode(&b).unwrap();
        assert_eq!((m.op, m.xid, m.broadcast), (BOOT_REPLY, 42, true));
        assert_eq!(m.yiaddr, ip("192.0.2.10"));
        assert_eq!(m.chaddr[..6], MAC);
        assert_eq!(m.msg_type(), Some(MessageType::Offer));
        assert_eq!(m.addrs(opt::ROUTER), [ip("192.0.2.1"), ip("192.0.2.254")]);
        assert_eq!(m.addr(opt::SUBNET_MASK), Some(ip("255.255.255.0")));
        assert_eq!(m.u32(opt::LEASE_TIME), Some(u32::MAX));
        assert_eq!(m.get(opt::DOMAIN_NAME_SERVER), None);
    }

    #[test]
    fn malformed_input() {
        let good = discover().encode();
        assert!(
            Message::decode(&good[..HEADER_LEN + 3]).is_none(),
            "no cookie"
        );
        let mut bad = good.clone();
        bad[HEADER_LEN] = 0;
        assert!(Message::decode(&bad).is_none(), "wrong cookie");
        let mut bad = good.clone();
        bad[1] = 6; // IEEE 802
        assert!(Message::decode(&bad).is_none(), "not Ethernet");
        assert!(Message::decode(b"garbage").is_none());
        // A truncated option: those before it are kept.
        let mut cut = good[..HEADER_LEN + 4].to_vec();
        cut.extend_from_slice(&[opt::MESSAGE_TYPE, 1, 2, opt::ROUTER, 8, 192, 0]);
        let m = Message::decode(&cut).unwrap();
        assert_eq!(m.msg_type(), Some(MessageType::Offer));
        assert_eq!(m.get(opt::ROUTER), None);
        // Values of the wrong size read as absent.
        let mut m = Message::request(1, Ipv4Addr::UNSPECIFIED, &MAC);
        m.set(opt::SUBNET_MASK, vec![255, 255, 255]);
        m.set(opt::ROUTER, vec![192, 0, 2, 1, 9]);
        m.set(opt::LEASE_TIME, vec![0, 0, 1]);
        m.set(opt::MESSAGE_TYPE, vec![9]);
        let m = Message::decode(&m.encode()).unwrap();
        assert_eq!(m.addr(opt::SUBNET_MASK), None);
        assert!(m.addrs(opt::ROUTER).is_empty());
        assert_eq!(m.u32(opt::LEASE_TIME), None);
        assert_eq!(m.msg_type(), None);
    }
}
