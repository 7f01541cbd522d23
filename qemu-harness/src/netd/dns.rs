//! The segment's name server at the gateway address: the containers of the network by name,
//! short and full ID and `--network-alias`, reverse lookups of their addresses; every other
//! query is forwarded to this machine's name servers.
//!
//! The queries are taken off the segment before libslirp sees them (UDP to port 53 of the
//! gateway or of the network's DNS address) and the answers are put back as frames from
//! the address that was asked. Only what a container's stub resolver sends is handled: one
//! question, class IN, over UDP; answers fit one datagram (a name has few addresses).

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The TTL of answers about containers: short, because a container that is started again
/// may come back with another address.
const TTL: u32 = 5;

pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
const CLASS_IN: u16 = 1;

pub const RCODE_OK: u8 = 0;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;

/// A query's question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The RD flag, echoed.
    pub recursion_desired: bool,
    /// Lower case, without the final dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as sent (echoed in the answer).
    pub question: Vec<u8>,
}

/// Parses a standard query with one question; `None` for anything else.
pub fn parse_query(msg: &[u8]) -> Option<Query> {
    let header = msg.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let qr = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if qr || opcode != 0 || qdcount != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // No compression in a question (it would point backwards into nothing).
        if len > 63 {
            return None;
        }
        let label = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(pos + 2)?, *msg.get(pos + 3)?]);
    pos += 4;
    Some(Query {
        id: u16::from_be_bytes([header[0], header[1]]),
        recursion_desired: flags & 0x0100 != 0,
        name: labels.join("."),
        qtype,
        qclass,
        question: msg.get(12..pos)?.to_vec(),
    })
}

/// An answer record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    Ptr(String),
}

/// Encodes a domain name (`a.b` → `1a1b0`); labels longer than 63 bytes are cut.
fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

/// The response to `q`: `rcode` and the records (all about the question's name).
pub fn response(q: &Query, rcode: u8, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + q.question.len());
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, authoritative, RD echoed, RA.
    let flags: u16 = 0x8000
        | 0x0400
        | if q.recursion_desired { 0x0100 } else { 0 }
        | 0x0080
        | u16::from(rcode & 0xf);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q.question);
    for r in records {
        // The name: a pointer to the question's (offset 12).
        out.extend_from_slice(&[0xc0, 0x0c]);
        let (rtype, data) = match r {
            Record::A(ip) => (TYPE_A, ip.octets().to_vec()),
            Record::Ptr(name) => {
                let mut d = Vec::new();
                encode_name(name, &mut d);
                (TYPE_PTR, d)
            }
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// Replaces a message's ID (forwarding keeps queries of different containers apart).
pub fn with_id(msg: &[u8], id: u16) -> Vec<u8> {
    let mut m = msg.to_vec();
    if let Some(h) = m.get_mut(..2) {
        h.copy_from_slice(&id.to_be_bytes());
    }
    m
}

/// The ID of a message.
pub fn id_of(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// The names the segment answers for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    by_name: HashMap<String, Vec<Ipv4Addr>>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl Names {
    /// Adds a container: its address and names (the first is its name, which reverse
    /// lookups give).
    pub fn add(&mut self, addr: Ipv4Addr, names: &[String]) {
        for n in names {
            let key = n.trim_end_matches('.').to_ascii_lowercase();
            if key.is_empty() {
                continue;
            }
            let list = self.by_name.entry(key).or_default();
            if !list.contains(&addr) {
                list.push(addr);
            }
        }
        if let Some(first) = names.first() {
            self.by_addr.entry(addr).or_insert_with(|| first.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The local answer to a query, if the name is the segment's: `(rcode, records)`.
    /// A known name asked for another type (AAAA) gets an empty answer at once, so that a
    /// resolver asking for both does not wait for the forwarder.
    pub fn answer(&self, q: &Query) -> Option<(u8, Vec<Record>)> {
        if q.qclass != CLASS_IN {
            return None;
        }
        if let Some(addrs) = self.by_name.get(&q.name) {
            let records = match q.qtype {
                TYPE_A => addrs.iter().map(|a| Record::A(*a)).collect(),
                _ => Vec::new(),
            };
            return Some((RCODE_OK, records));
        }
        if q.qtype == TYPE_PTR {
            let addr = reverse_name(&q.name)?;
            let name = self.by_addr.get(&addr)?;
            return Some((RCODE_OK, vec![Record::Ptr(name.clone())]));
        }
        None
    }
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4.
fn reverse_name(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    for (i, p) in parts.iter().rev().enumerate() {
        octets[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

/// A UDP datagram carried in an Ethernet frame (IPv4, unfragmented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// The UDP datagram in a frame, if it is one.
pub fn udp_in(frame: &[u8]) -> Option<Datagram> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let version = ip.first()? >> 4;
    let ihl = usize::from(ip.first()? & 0xf) * 4;
    if version != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    // More fragments, or an offset: not a whole datagram.
    if frag & 0x3fff != 0 || total < ihl + 8 {
        return None;
    }
    let ip = ip.get(..total)?;
    let udp = ip.get(ihl..)?;
    let ulen = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if ulen < 8 || ulen > udp.len() {
        return None;
    }
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    Some(Datagram {
        dst_mac: super::switch::mac(frame)?,
        src_mac: super::switch::mac(frame.get(6..)?)?,
        src: addr(12)?,
        dst: addr(16)?,
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp.get(8..ulen)?.to_vec(),
    })
}

fn checksum_add(sum: &mut u32, bytes: &[u8]) {
    for chunk in bytes.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        *sum += u32::from(word);
    }
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame carrying a datagram (IPv4 with DF, TTL 64; UDP with its checksum).
pub fn udp_frame(d: &Datagram) -> Vec<u8> {
    let udp_len = 8 + d.payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&d.dst_mac);
    f.extend_from_slice(&d.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&d.src.octets());
    ip[16..20].copy_from_slice(&d.dst.octets());
    let mut sum = 0;
    checksum_add(&mut sum, &ip);
    ip[10..12].copy_from_slice(&checksum_fold(sum).to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&d.sport.to_be_bytes());
    udp.extend_from_slice(&d.dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&d.payload);
    let mut sum = 0;
    checksum_add(&mut sum, &d.src.octets());
    checksum_add(&mut sum, &d.dst.octets());
    checksum_add(&mut sum, &[0, 17]);
    checksum_add(&mut sum, &(udp_len as u16).to_be_bytes());
    checksum_add(&mut sum, &udp);
    let c = match checksum_fold(sum) {
        // 0 means "no checksum" in UDP over IPv4; all ones is the same sum.
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

/// The reply datagram to `query` with `payload` (addresses and ports swapped).
pub fn reply_to(query: &Datagram, payload: Vec<u8>) -> Datagram {
    Datagram {
        src_mac: query.dst_mac,
        dst_mac: query.src_mac,
        src: query.dst,
        dst: query.src,
        sport: query.dport,
        dport: query.sport,
        payload,
    }
}

/// This machine's name servers (`/etc/resolv.conf`), where other queries go.
pub fn host_nameservers(resolv_conf: &str) -> Vec<std::net::SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse::<std::net::IpAddr>().ok(),
                _ => None,
            }
        })
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as a stub resolver sends it (with an EDNS OPT record after the question).
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        encode_name(name, &mut m);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        m
    }

    fn names() -> Names {
        let mut n = Names::default();
        n.add(
            "10.1.0.2".parse().unwrap(),
            &["web".into(), "0123456789ab".into(), "www".into()],
        );
        n.add("10.1.0.3".parse().unwrap(), &["db".into(), "www".into()]);
        n
    }

    #[test]
    fn answers_names_of_the_segment() {
        let q = parse_query(&query("WEB.", TYPE_A)).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype), (0x1234, "web", TYPE_A));
        let (rcode, recs) = names().answer(&q).unwrap();
        assert_eq!(rcode, RCODE_OK);
        assert_eq!(recs, vec![Record::A("10.1.0.2".parse().unwrap())]);
        let r = response(&q, rcode, &recs);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0xf, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 1, 0, 2]);
        // An alias two containers share has both.
        let q = parse_query(&query("www", TYPE_A)).unwrap();
        assert_eq!(names().answer(&q).unwrap().1.len(), 2);
        // AAAA of a known name: no records, at once.
        let q = parse_query(&query("db", 28)).unwrap();
        assert_eq!(names().answer(&q), Some((RCODE_OK, vec![])));
        // Reverse.
        let q = parse_query(&query("2.0.1.10.in-addr.arpa", TYPE_PTR)).unwrap();
        let (_, recs) = names().answer(&q).unwrap();
        assert_eq!(recs, vec![Record::Ptr("web".into())]);
        let r = response(&q, RCODE_OK, &recs);
        assert!(r.ends_with(&[3, b'w', b'e', b'b', 0]));
        // Someone else's.
        let q = parse_query(&query("example.org", TYPE_A)).unwrap();
        assert_eq!(names().answer(&q), None);
        let q = parse_query(&query("9.0.1.10.in-addr.arpa", TYPE_PTR)).unwrap();
        assert_eq!(names().answer(&q), None);
    }

    #[test]
    fn odd_messages_are_not_queries() {
        let good = query("web", TYPE_A);
        assert!(parse_query(&good[..good.len() - 20]).is_none(), "cut");
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert!(parse_query(&resp).is_none(), "a response");
        let mut two = good.clone();
        two[5] = 2;
        assert!(parse_query(&two).is_none(), "two questions");
        let mut ptr = good.clone();
        ptr[12] = 0xc0;
        assert!(parse_query(&ptr).is_none(), "compression in a question");
        assert!(parse_query(&[]).is_none());
        assert_eq!(with_id(&good, 7)[..2], [0, 7]);
        assert_eq!(id_of(&good), Some(0x1234));
    }

    #[test]
    fn datagrams_round_trip_through_frames() {
        let d = Datagram {
            src_mac: [0, 0x50, 0x56, 1, 2, 3],
            dst_mac: [0x52, 0x55, 10, 1, 0, 1],
            src: "10.1.0.2".parse().unwrap(),
            dst: "10.1.0.1".parse().unwrap(),
            sport: 40000,
            dport: 53,
            payload: query("web", TYPE_A),
        };
        let f = udp_frame(&d);
        assert_eq!(udp_in(&f), Some(d.clone()));
        // The IPv4 header checksum verifies.
        let mut sum = 0;
        checksum_add(&mut sum, &f[14..34]);
        assert_eq!(checksum_fold(sum), 0);
        let r = reply_to(&d, vec![1, 2, 3]);
        assert_eq!((r.src, r.dport, r.dst_mac), (d.dst, d.sport, d.src_mac));
        // Not UDP, a fragment, too short.
        let mut tcp = f.clone();
        tcp[23] = 6;
        assert!(udp_in(&tcp).is_none());
        let mut frag = f.clone();
        frag[20] = 0x20;
        assert!(udp_in(&frag).is_none());
        assert!(udp_in(&f[..30]).is_none());
    }

    #[test]
    fn host_nameservers_from_resolv_conf() {
        let text = "# x\nnameserver 127.0.0.53\nsearch lan\nnameserver ::1\nnameserver bad\n";
        let got = host_nameservers(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].to_string(), "127.0.0.53:53");
    }
}
