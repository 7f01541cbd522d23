//! The DHCPv4 client (lifecycle §6.2): our state handling on [`super::dhcp_msg`] messages.
//!
//! DISCOVER and REQUEST go out before the interface has an address, so they travel as
//! complete IPv4/UDP packets (built by `etherparse`) on a link-layer socket, broadcast; the
//! answers are read from the same socket whatever their IP destination. Renewal and release
//! happen once the address is configured and use a plain UDP socket to the server.
//!
//! Every exchange gives up after [`EXCHANGE_TIMEOUT`], retransmitting after 1, 2 and 4 s.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use siphasher::sip::SipHasher24;

use super::dhcp_msg::{opt, Message, MessageType, BOOT_REPLY};
use super::packet::{PacketSocket, BROADCAST_MAC, ETH_P_IP};

/// How long one exchange (DISCOVER→OFFER, REQUEST→ACK) may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The exchange timeout and the first retransmission (later ones double: 1, 2, 4 s).
const TIMING: (Duration, Duration) = (EXCHANGE_TIMEOUT, Duration::from_secs(1));

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

/// The original's SipHash key for the client identifier.
const ID_KEY: [u8; 16] = [
    0xc4, 0xeb, 0x38, 0x9e, 0x4e, 0xd9, 0x48, 0x12, 0x93, 0xa6, 0xb7, 0x0b, 0x9b, 0x07, 0xcc, 0x2b,
];
/// VMware's IANA private enterprise number, in the DUID-EN.
const VMWARE_PEN: u32 = 6876;

/// Errors of a DHCP exchange.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// no usable offer arrived in time
    #[error("no offer within {} s{}", .waited.as_secs(), rejected_note(.rejected))]
    NoOffer {
        waited: Duration,
        /// Why the last offer that did arrive was refused.
        rejected: Option<String>,
    },
    /// the server did not answer the request in time
    #[error("no answer from {server} within {} s", .waited.as_secs())]
    NoAnswer { server: Ipv4Addr, waited: Duration },
    /// the server refused the request
    #[error("server {server} refused the request (NAK){}", nak_note(.message))]
    Nak {
        server: Ipv4Addr,
        message: Option<String>,
    },
    /// the server's acknowledgement lacks what the client needs
    #[error("bad ACK from {server}: {reason}")]
    BadAck { server: Ipv4Addr, reason: String },
    /// a message could not be built
    #[error("cannot build the {what} message: {detail}")]
    Build { what: &'static str, detail: String },
    /// the network socket failed
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn rejected_note(r: &Option<String>) -> String {
    r.as_ref()
        .map(|r| format!(" (refused an offer: {r})"))
        .unwrap_or_default()
}

fn nak_note(m: &Option<String>) -> String {
    m.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> DhcpError {
    move |source| DhcpError::Io { what, source }
}

/// What the client asks for and says about itself on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Option 61, see [`client_id`].
    pub client_id: Vec<u8>,
    /// Option 12, if any.
    pub hostname: Option<String>,
    /// Ask for (and require) a router: no gateway was configured.
    pub want_router: bool,
    /// Ask for (and require) name servers: none were configured.
    pub want_dns: bool,
}

/// An acquired lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub mask: Ipv4Addr,
    /// The first router of option 3.
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 54: where renewals and the release go.
    pub server: Ipv4Addr,
    /// Lease time in seconds (`u32::MAX` = infinite).
    pub lease_secs: u32,
}

impl Lease {
    pub fn prefix_len(&self) -> u8 {
        u32::from(self.mask).leading_ones() as u8
    }

    pub fn duration(&self) -> Option<Duration> {
        (self.lease_secs != u32::MAX).then(|| Duration::from_secs(u64::from(self.lease_secs)))
    }
}

// ---------------------------------------------------------------------------------------
// Client identifier

/// Where the DUID's machine identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineIdSource {
    /// `product_serial` as vSphere writes it (`VMware-xx xx …`): the original's source.
    VmwareSerial,
    /// `product_uuid`, the SMBIOS system UUID (QEMU's `-uuid`, other hypervisors).
    ProductUuid,
    /// No machine identity could be read: the interface's MAC stands in.
    Mac,
}

/// The bytes hashed into the DUID, and their source.
///
/// vSphere: the 16 bytes of the machine UUID in `<dmi>/product_serial` (`VMware-` prefix,
/// spaces, dash and newline removed), exactly as the original. Elsewhere that file is absent
/// or holds something else, so `<dmi>/product_uuid` (the same UUID in its usual text form)
/// is tried next, ignoring the all-zero and all-one values that stand for "not set"; when
/// neither gives an identity, the MAC is used, which keeps the identifier stable per NIC.
pub fn machine_id(dmi: &Path, mac: &[u8]) -> (Vec<u8>, MachineIdSource) {
    let read = |f: &str| std::fs::read_to_string(dmi.join(f)).ok();
    if let Some(id) = read("product_serial").and_then(|s| parse_vmware_serial(&s)) {
        return (id.to_vec(), MachineIdSource::VmwareSerial);
    }
    if let Some(id) = read("product_uuid").and_then(|s| parse_uuid(&s)) {
        return (id.to_vec(), MachineIdSource::ProductUuid);
    }
    (mac.to_vec(), MachineIdSource::Mac)
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '\n' | '\r' | '\t'))
        .map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok()))
        .collect::<Option<_>>()?;
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = pair[0] << 4 | pair[1];
    }
    (out != [0; 16] && out != [0xff; 16]).then_some(out)
}

/// `VMware-42 1c … 3b-5a … 09` ⇒ the 16 UUID bytes.
pub fn parse_vmware_serial(s: &str) -> Option<[u8; 16]> {
    hex16(s.trim().strip_prefix("VMware-")?)
}

/// `4c4c4544-0042-…` ⇒ the 16 UUID bytes.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    hex16(s.trim())
}

/// Option 61 (lifecycle §6.2): `0xFF` ‖ IAID ‖ DUID-EN, all big endian. The IAID is
/// SipHash-2-4 of the MAC folded to 32 bits; the DUID-EN is type 2, VMware's enterprise
/// number and SipHash-2-4 of the machine identity.
pub fn client_id(mac: &[u8], machine_id: &[u8]) -> Vec<u8> {
    let h = SipHasher24::new_with_key(&ID_KEY);
    let m = h.hash(mac);
    let iaid = (m as u32) ^ ((m >> 32) as u32);
    let mut id = Vec::with_capacity(19);
    id.push(0xff);
    id.extend_from_slice(&iaid.to_be_bytes());
    id.extend_from_slice(&2u16.to_be_bytes());
    id.extend_from_slice(&VMWARE_PEN.to_be_bytes());
    id.extend_from_slice(&h.hash(machine_id).to_be_bytes());
    id
}

// ---------------------------------------------------------------------------------------
// Messages

fn new_xid() -> u32 {
    getrandom::u32().unwrap_or_else(|_| {
        // Only uniqueness among our own exchanges matters; the clock provides that.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0x7e7e_7e7e)
    })
}

fn base(p: &Params, xid: u32, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
    let mut m = Message::request(xid, ciaddr, &p.mac);
    m.set_type(kind);
    m.set(opt::CLIENT_ID, p.client_id.clone());
    m
}

fn with_wishes(mut m: Message, p: &Params) -> Message {
    let mut prl = vec![opt::SUBNET_MASK];
    if p.want_router {
        prl.push(opt::ROUTER);
    }
    if p.want_dns {
        prl.push(opt::DOMAIN_NAME_SERVER);
    }
    m.set(opt::PARAMETER_REQUEST_LIST, prl);
    if let Some(h) = p.hostname.as_ref().filter(|h| !h.is_empty()) {
        m.set(opt::HOSTNAME, h.as_bytes().to_vec());
    }
    m
}

/// DHCPDISCOVER, asking for broadcast answers (we have no address to receive unicast on).
pub fn discover(p: &Params, xid: u32) -> Message {
    let mut m = with_wishes(
        base(p, xid, MessageType::Discover, Ipv4Addr::UNSPECIFIED),
        p,
    );
    m.broadcast = true;
    m
}

/// DHCPREQUEST in SELECTING state: take `offer` from `server`.
pub fn request_offer(p: &Params, xid: u32, offer: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = with_wishes(base(p, xid, MessageType::Request, Ipv4Addr::UNSPECIFIED), p);
    m.broadcast = true;
    m.set_addr(opt::REQUESTED_IP, offer);
    m.set_addr(opt::SERVER_ID, server);
    m
}

/// DHCPREQUEST in RENEWING state: unicast from the leased address, no server id.
pub fn request_renew(p: &Params, xid: u32, lease: &Lease) -> Message {
    with_wishes(base(p, xid, MessageType::Request, lease.addr), p)
}

/// DHCPRELEASE of `lease`.
pub fn release_message(p: &Params, xid: u32, lease: &Lease) -> Message {
    let mut m = base(p, xid, MessageType::Release, lease.addr);
    m.set_addr(opt::SERVER_ID, lease.server);
    m
}

/// A reply addressed to this client's exchange `xid`, if `m` is one.
fn is_reply_to(m: &Message, p: &Params, xid: u32) -> bool {
    m.op == BOOT_REPLY && m.xid == xid && m.chaddr[..6] == p.mac
}

fn server_of(m: &Message) -> Option<Ipv4Addr> {
    m.addr(opt::SERVER_ID).filter(|s| !s.is_unspecified())
}

fn mask_of(m: &Message) -> Option<Ipv4Addr> {
    m.addr(opt::SUBNET_MASK).filter(|s| !s.is_unspecified())
}

fn routers_of(m: &Message) -> Vec<Ipv4Addr> {
    m.addrs(opt::ROUTER)
}

fn dns_of(m: &Message) -> Vec<Ipv4Addr> {
    m.addrs(opt::DOMAIN_NAME_SERVER)
}

fn lease_time_of(m: &Message) -> Option<u32> {
    m.u32(opt::LEASE_TIME)
}

fn nak_text(m: &Message) -> Option<String> {
    m.get(opt::MESSAGE)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// An offer worth requesting: the offered address and the offering server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub addr: Ipv4Addr,
    pub server: Ipv4Addr,
}

/// The original's acceptance rules: an address, a server, every requested option (a
/// non-zero mask, a router, at least one name server) and a non-zero lease.
pub fn check_offer(m: &Message, p: &Params) -> Result<Offer, String> {
    let addr = m.yiaddr;
    if addr.is_unspecified() {
        return Err("no address offered".into());
    }
    let Some(server) = server_of(m) else {
        return Err(format!("offer of {addr} names no server"));
    };
    let mut missing = Vec::new();
    if mask_of(m).is_none() {
        missing.push("subnet mask");
    }
    if p.want_router && routers_of(m).is_empty() {
        missing.push("router");
    }
    if p.want_dns && dns_of(m).is_empty() {
        missing.push("name server");
    }
    if lease_time_of(m).unwrap_or(0) == 0 {
        missing.push("lease time");
    }
    if !missing.is_empty() {
        return Err(format!(
            "offer of {addr} from {server} lacks {}",
            missing.join(", ")
        ));
    }
    Ok(Offer { addr, server })
}

/// The lease an ACK grants. `server` is whom we asked, used when the ACK omits option 54;
/// values an ACK omits but the offer carried come from `offer`.
pub fn parse_ack(m: &Message, server: Ipv4Addr, offer: Option<&Message>) -> Result<Lease, String> {
    let addr = m.yiaddr;
    if addr.is_unspecified() {
        return Err("no address".into());
    }
    let mask = mask_of(m)
        .or_else(|| offer.and_then(mask_of))
        .ok_or("no subnet mask")?;
    let pick = |v: Vec<Ipv4Addr>, f: fn(&Message) -> Vec<Ipv4Addr>| {
        if v.is_empty() {
            offer.map(f).unwrap_or_default()
        } else {
            v
        }
    };
    let routers = pick(routers_of(m), routers_of);
    Ok(Lease {
        addr,
        mask,
        gateway: routers.first().copied(),
        dns: pick(dns_of(m), dns_of),
        server: server_of(m).unwrap_or(server),
        lease_secs: lease_time_of(m)
            .or_else(|| offer.and_then(lease_time_of))
            .unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------
// Exchanges

/// Sends with retransmission after `first`, then twice as long each time, and feeds every
/// answer to `handle` until it returns a result or `timeout` passes (`Ok(None)`).
fn exchange<T>(
    timing: (Duration, Duration),
    send: impl FnMut() -> Result<(), DhcpError>,
    recv: impl FnMut(Instant) -> Result<Option<Vec<u8>>, DhcpError>,
    handle: impl FnMut(&Message) -> Option<Result<T, DhcpError>>,
) -> Result<Option<T>, DhcpError> {
    exchange_on(Instant::now, timing, send, recv, handle)
}

/// [`exchange`] reading the time from `now`, so tests can check the schedule on a clock
/// that only moves when they move it.
fn exchange_on<T>(
    now: impl Fn() -> Instant,
    (timeout, first): (Duration, Duration),
    mut send: impl FnMut() -> Result<(), DhcpError>,
    mut recv: impl FnMut(Instant) -> Result<Option<Vec<u8>>, DhcpError>,
    mut handle: impl FnMut(&Message) -> Option<Result<T, DhcpError>>,
) -> Result<Option<T>, DhcpError> {
    let end = now() + timeout;
    let mut wait = first;
    loop {
        send()?;
        let resend = (now() + wait).min(end);
        wait *= 2;
        while let Some(data) = recv(resend)? {
            let Some(m) = Message::decode(&data) else {
                continue;
            };
            if let Some(r) = handle(&m) {
                return r.map(Some);
            }
        }
        if now() >= end {
            return Ok(None);
        }
    }
}

/// The DHCP payload of a UDP datagram to the client port, from a raw IPv4 packet.
fn dhcp_payload(ip_packet: &[u8]) -> Option<&[u8]> {
    let p = etherparse::SlicedPacket::from_ip(ip_packet).ok()?;
    match p.transport? {
        etherparse::TransportSlice::Udp(u) if u.destination_port() == CLIENT_PORT => {
            Some(u.payload())
        }
        _ => None,
    }
}

fn broadcast_packet(dhcp: &[u8]) -> Result<Vec<u8>, DhcpError> {
    let b = etherparse::PacketBuilder::ipv4([0; 4], [255; 4], 64).udp(CLIENT_PORT, SERVER_PORT);
    let mut out = Vec::with_capacity(b.size(dhcp.len()));
    b.write(&mut out, dhcp).map_err(|e| DhcpError::Build {
        what: "IP/UDP",
        detail: e.to_string(),
    })?;
    Ok(out)
}

/// Acquires a lease on an unconfigured interface: DISCOVER, OFFER, REQUEST, ACK.
pub fn acquire(p: &Params) -> Result<Lease, DhcpError> {
    let sock = PacketSocket::open(p.ifindex, ETH_P_IP).map_err(io_err("open packet socket"))?;
    let mut buf = vec![0u8; 2048];
    let mut recv = |deadline: Instant| -> Result<Option<Vec<u8>>, DhcpError> {
        loop {
            let Some(n) = sock
                .recv_until(&mut buf, deadline)
                .map_err(io_err("receive"))?
            else {
                return Ok(None);
            };
            if let Some(d) = buf.get(..n).and_then(dhcp_payload) {
                return Ok(Some(d.to_vec()));
            }
        }
    };

    let xid = new_xid();
    let pkt = broadcast_packet(&discover(p, xid).encode())?;
    let mut rejected = None;
    let offer = exchange(
        TIMING,
        || {
            tracing::debug!(ifindex = p.ifindex, xid, "DHCP DISCOVER");
            sock.send_to(&pkt, &BROADCAST_MAC)
                .map_err(io_err("send DISCOVER"))
        },
        &mut recv,
        |m| {
            if !is_reply_to(m, p, xid) || m.msg_type() != Some(MessageType::Offer) {
                return None;
            }
            match check_offer(m, p) {
                Ok(o) => Some(Ok((o, m.clone()))),
                Err(why) => {
                    tracing::warn!(ifindex = p.ifindex, "DHCP: ignoring offer: {why}");
                    rejected = Some(why);
                    None
                }
            }
        },
    )?;
    let Some((offer, offer_msg)) = offer else {
        return Err(DhcpError::NoOffer {
            waited: EXCHANGE_TIMEOUT,
            rejected,
        });
    };
    tracing::debug!(addr = %offer.addr, server = %offer.server, "DHCP OFFER");

    let xid = new_xid();
    let pkt = broadcast_packet(&request_offer(p, xid, offer.addr, offer.server).encode())?;
    let lease = exchange(
        TIMING,
        || {
            tracing::debug!(ifindex = p.ifindex, xid, "DHCP REQUEST");
            sock.send_to(&pkt, &BROADCAST_MAC)
                .map_err(io_err("send REQUEST"))
        },
        &mut recv,
        |m| answer(m, p, xid, offer.server, Some(&offer_msg)),
    )?;
    lease.ok_or(DhcpError::NoAnswer {
        server: offer.server,
        waited: EXCHANGE_TIMEOUT,
    })
}

/// Interprets a reply to a REQUEST: the lease of an ACK, the error of a NAK, else nothing.
fn answer(
    m: &Message,
    p: &Params,
    xid: u32,
    server: Ipv4Addr,
    offer: Option<&Message>,
) -> Option<Result<Lease, DhcpError>> {
    if !is_reply_to(m, p, xid) {
        return None;
    }
    match m.msg_type() {
        Some(MessageType::Ack) => {
            Some(
                parse_ack(m, server, offer).map_err(|reason| DhcpError::BadAck {
                    server: server_of(m).unwrap_or(server),
                    reason,
                }),
            )
        }
        Some(MessageType::Nak) => Some(Err(DhcpError::Nak {
            server: server_of(m).unwrap_or(server),
            message: nak_text(m),
        })),
        _ => None,
    }
}

fn unicast_socket(from: Ipv4Addr) -> Result<UdpSocket, DhcpError> {
    UdpSocket::bind(SocketAddrV4::new(from, CLIENT_PORT)).map_err(io_err("bind UDP port 68"))
}

/// Renews `lease` with its server (RENEWING: unicast from the leased address).
pub fn renew(p: &Params, lease: &Lease) -> Result<Lease, DhcpError> {
    let sock = unicast_socket(lease.addr)?;
    let to = SocketAddrV4::new(lease.server, SERVER_PORT);
    let xid = new_xid();
    let msg = request_renew(p, xid, lease).encode();
    let mut buf = vec![0u8; 2048];
    let got = exchange(
        TIMING,
        || {
            tracing::debug!(server = %lease.server, xid, "DHCP renew REQUEST");
            sock.send_to(&msg, to)
                .map(drop)
                .map_err(io_err("send REQUEST"))
        },
        |deadline| loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            sock.set_read_timeout(Some(left))
                .map_err(io_err("set timeout"))?;
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => return Ok(buf.get(..n).map(<[u8]>::to_vec)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io_err("receive")(e)),
            }
        },
        |m| answer(m, p, xid, lease.server, None),
    )?;
    got.ok_or(DhcpError::NoAnswer {
        server: lease.server,
        waited: EXCHANGE_TIMEOUT,
    })
}

/// Gives `lease` back to its server. The server does not answer a release.
pub fn release(p: &Params, lease: &Lease) -> Result<(), DhcpError> {
    let sock = unicast_socket(lease.addr)?;
    let msg = release_message(p, new_xid(), lease).encode();
    sock.send_to(&msg, SocketAddrV4::new(lease.server, SERVER_PORT))
        .map(drop)
        .map_err(io_err("send RELEASE"))
}

#[cfg(test)]
mod tests {
    use super::super::dhcp_msg::{BOOTP_MIN_LEN, BOOT_REQUEST};
    use super::*;

    const MAC: [u8; 6] = [0x00, 0x50, 0x56, 0xa1, 0xb2, 0xc3];

    fn params() -> Params {
        Params {
            ifindex: 2,
            mac: MAC,
            client_id: vec![0xff, 1, 2, 3],
            hostname: Some("web.example.com".into()),
            want_router: true,
            want_dns: true,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn client_id_known_answer() {
        // Computed independently with a reference SipHash-2-4 (checked against the
        // SipHash paper's vectors) following the spec's definition.
        let uuid = parse_vmware_serial("VMware-42 1c 0e 8b 5d 3a 7f 11-9c 2e 44 55 66 77 88 99\n")
            .unwrap();
        assert_eq!(
            uuid,
            [
                0x42, 0x1c, 0x0e, 0x8b, 0x5d, 0x3a, 0x7f, 0x11, 0x9c, 0x2e, 0x44, 0x55, 0x66, 0x77,
                0x88, 0x99
            ]
        );
        let id = client_id(&MAC, &uuid);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ff1e519475000200001adcb1a8653bdcb508b4");
        assert_eq!(id.len(), 19);
    }

    #[test]
    fn siphash_reference_vector() {
        // SipHash paper, key 00..0f, empty message.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            SipHasher24::new_with_key(&key).hash(&[]),
            0x726f_db47_dd0e_0e31
        );
    }

    #[test]
    fn machine_identity_sources() {
        let d = std::env::temp_dir().join(format!("tether-dmi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(machine_id(&d, &MAC), (MAC.to_vec(), MachineIdSource::Mac));
        std::fs::write(
            d.join("product_uuid"),
            "00000000-0000-0000-0000-000000000000\n",
        )
        .unwrap();
        assert_eq!(machine_id(&d, &MAC).1, MachineIdSource::Mac);
        std::fs::write(
            d.join("product_uuid"),
            "4c4c4544-0042-3510-8052-b3c04f4e3232\n",
        )
        .unwrap();
        // QEMU's default serial is not a VMware one.
        std::fs::write(d.join("product_serial"), "Not Specified\n").unwrap();
        let (id, src) = machine_id(&d, &MAC);
        assert_eq!(src, MachineIdSource::ProductUuid);
        assert_eq!(id[..4], [0x4c, 0x4c, 0x45, 0x44]);
        std::fs::write(
            d.join("product_serial"),
            "VMware-56 4d 2e 41 60 3f 9e 2c-a5 ff 21 b1 17 3f 2b 09\n",
        )
        .unwrap();
        let (id, src) = machine_id(&d, &MAC);
        assert_eq!(src, MachineIdSource::VmwareSerial);
        assert_eq!(id[..3], [0x56, 0x4d, 0x2e]);
        assert_eq!(id[15], 0x09);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(parse_vmware_serial("VMware-42 1c"), None);
        assert_eq!(parse_uuid("xyz"), None);
    }

    fn offer(p: &Params, xid: u32) -> Message {
        let mut m = Message::request(xid, Ipv4Addr::UNSPECIFIED, &p.mac);
        m.op = BOOT_REPLY;
        m.yiaddr = ip("192.0.2.10");
        m.set_type(MessageType::Offer);
        m.set_addr(opt::SERVER_ID, ip("192.0.2.1"));
        m.set_addr(opt::SUBNET_MASK, ip("255.255.255.0"));
        m.set_addrs(opt::ROUTER, &[ip("192.0.2.1"), ip("192.0.2.254")]);
        m.set_addrs(
            opt::DOMAIN_NAME_SERVER,
            &[ip("192.0.2.53"), ip("198.51.100.53")],
        );
        m.set_u32(opt::LEASE_TIME, 3600);
        m
    }

    #[test]
    fn offer_acceptance_rules() {
        let p = params();
        let good = offer(&p, 7);
        assert_eq!(
            check_offer(&good, &p),
            Ok(Offer {
                addr: ip("192.0.2.10"),
                server: ip("192.0.2.1")
            })
        );
        let without = |code: u8| {
            let mut m = good.clone();
            m.remove(code);
            m
        };
        for (code, what) in [
            (opt::SUBNET_MASK, "subnet mask"),
            (opt::ROUTER, "router"),
            (opt::DOMAIN_NAME_SERVER, "name server"),
            (opt::LEASE_TIME, "lease time"),
        ] {
            let err = check_offer(&without(code), &p).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
        assert!(check_offer(&without(opt::SERVER_ID), &p)
            .unwrap_err()
            .contains("no server"));
        let mut zero_mask = good.clone();
        zero_mask.set_addr(opt::SUBNET_MASK, Ipv4Addr::UNSPECIFIED);
        assert!(check_offer(&zero_mask, &p).is_err());
        let mut zero_lease = good.clone();
        zero_lease.set_u32(opt::LEASE_TIME, 0);
        assert!(check_offer(&zero_lease, &p).is_err());
        let mut no_addr = good.clone();
        no_addr.yiaddr = Ipv4Addr::UNSPECIFIED;
        assert!(check_offer(&no_addr, &p).is_err());
        // Router and DNS are required only when asked for.
        let modest = Params {
            want_router: false,
            want_dns: false,
            ..p
        };
        let bare = {
            let mut m = without(opt::ROUTER);
            m.remove(opt::DOMAIN_NAME_SERVER);
            m
        };
        assert!(check_offer(&bare, &modest).is_ok());
    }

    #[test]
    fn ack_and_nak() {
        let p = params();
        let mut ack = offer(&p, 9);
        ack.set_type(MessageType::Ack);
        let lease = answer(&ack, &p, 9, ip("192.0.2.1"), None).unwrap().unwrap();
        assert_eq!(
            lease,
            Lease {
                addr: ip("192.0.2.10"),
                mask: ip("255.255.255.0"),
                gateway: Some(ip("192.0.2.1")),
                dns: vec![ip("192.0.2.53"), ip("198.51.100.53")],
                server: ip("192.0.2.1"),
                lease_secs: 3600,
            }
        );
        assert_eq!(lease.prefix_len(), 24);
        // Someone else's exchange.
        assert!(answer(&ack, &p, 10, ip("192.0.2.1"), None).is_none());
        let mut other_mac = ack.clone();
        other_mac.chaddr[..6].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        assert!(answer(&other_mac, &p, 9, ip("192.0.2.1"), None).is_none());

        // An ACK without a mask is refused unless the offer had one.
        let mut bare = ack.clone();
        bare.remove(opt::SUBNET_MASK);
        let err = answer(&bare, &p, 9, ip("192.0.2.1"), None)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.to_string(), "bad ACK from 192.0.2.1: no subnet mask");
        let from_offer = offer(&p, 9);
        assert!(answer(&bare, &p, 9, ip("192.0.2.1"), Some(&from_offer))
            .unwrap()
            .is_ok());

        let mut nak = Message::request(9, Ipv4Addr::UNSPECIFIED, &MAC);
        nak.op = BOOT_REPLY;
        nak.set_type(MessageType::Nak);
        nak.set(opt::MESSAGE, b"wrong network".to_vec());
        let err = answer(&nak, &p, 9, ip("192.0.2.1"), None)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "server 192.0.2.1 refused the request (NAK): wrong network"
        );
    }

    fn roundtrip(m: &Message) -> Message {
        let bytes = m.encode();
        assert!(bytes.len() >= BOOTP_MIN_LEN);
        Message::decode(&bytes).unwrap()
    }

    #[test]
    fn requests_round_trip() {
        let p = params();
        let d = roundtrip(&discover(&p, 0x1234_5678));
        assert_eq!(d.xid, 0x1234_5678);
        assert_eq!(d.op, BOOT_REQUEST);
        assert!(d.broadcast);
        assert_eq!(d.chaddr[..6], MAC);
        assert_eq!(d.msg_type(), Some(MessageType::Discover));
        assert_eq!(d.get(opt::CLIENT_ID), Some(&[0xff, 1, 2, 3][..]));
        assert_eq!(
            d.get(opt::PARAMETER_REQUEST_LIST),
            Some(&[opt::SUBNET_MASK, opt::ROUTER, opt::DOMAIN_NAME_SERVER][..])
        );
        assert_eq!(d.get(opt::HOSTNAME), Some(&b"web.example.com"[..]));

        let modest = Params {
            hostname: None,
            want_router: false,
            want_dns: false,
            ..params()
        };
        let r = roundtrip(&request_offer(
            &modest,
            5,
            ip("192.0.2.10"),
            ip("192.0.2.1"),
        ));
        assert_eq!(r.msg_type(), Some(MessageType::Request));
        assert!(r.broadcast);
        assert_eq!(
            r.get(opt::PARAMETER_REQUEST_LIST),
            Some(&[opt::SUBNET_MASK][..])
        );
        assert!(r.get(opt::HOSTNAME).is_none());
        assert_eq!(r.addr(opt::REQUESTED_IP), Some(ip("192.0.2.10")));
        assert_eq!(r.addr(opt::SERVER_ID), Some(ip("192.0.2.1")));

        let lease = Lease {
            addr: ip("192.0.2.10"),
            mask: ip("255.255.255.0"),
            gateway: None,
            dns: vec![],
            server: ip("192.0.2.1"),
            lease_secs: 60,
        };
        let r = roundtrip(&request_renew(&p, 6, &lease));
        assert_eq!(r.ciaddr, ip("192.0.2.10"));
        assert!(!r.broadcast);
        assert!(r.get(opt::REQUESTED_IP).is_none());
        assert!(r.get(opt::SERVER_ID).is_none());
        let r = roundtrip(&release_message(&p, 7, &lease));
        assert_eq!(r.msg_type(), Some(MessageType::Release));
        assert_eq!(r.ciaddr, ip("192.0.2.10"));
        assert_eq!(r.addr(opt::SERVER_ID), Some(ip("192.0.2.1")));
    }

    #[test]
    fn broadcast_packets_carry_udp_to_the_server_port() {
        let dhcp = discover(&params(), 1).encode();
        let pkt = broadcast_packet(&dhcp).unwrap();
        let s = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = s.transport else {
            panic!("not UDP");
        };
        assert_eq!((u.source_port(), u.destination_port()), (68, 67));
        assert_eq!(u.payload(), &dhcp[..]);
        // Our own filter only takes datagrams to the client port.
        assert!(dhcp_payload(&pkt).is_none());
        let reply = etherparse::PacketBuilder::ipv4([192, 0, 2, 1], [255; 4], 64).udp(67, 68);
        let mut v = Vec::new();
        reply.write(&mut v, b"xyz").unwrap();
        assert_eq!(dhcp_payload(&v), Some(&b"xyz"[..]));
    }

    #[test]
    fn nothing_answers_within_the_timeout() {
        // A clock that moves only when the receiver "waits" until its deadline: the schedule
        // is checked exactly, however slowly the machine runs the test.
        let t0 = Instant::now();
        let clock = std::cell::Cell::new(t0);
        let mut sent = Vec::new();
        let r: Result<Option<()>, DhcpError> = exchange_on(
            || clock.get(),
            (Duration::from_millis(400), Duration::from_millis(50)),
            || {
                sent.push(clock.get() - t0);
                Ok(())
            },
            |deadline| {
                clock.set(deadline);
                Ok(None)
            },
            |_| None,
        );
        assert!(matches!(r, Ok(None)));
        assert_eq!(
            clock.get() - t0,
            Duration::from_millis(400),
            "gave up early"
        );
        // Sent at 0, 50, 150 and 350 ms: the waits double, the last one cut at the timeout.
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(sent, [ms(0), ms(50), ms(150), ms(350)]);
    }

    #[test]
    fn an_answer_ends_the_exchange() {
        let p = params();
        let mut ack = offer(&p, 3);
        ack.set_type(MessageType::Ack);
        let bytes = ack.encode();
        // Popped from the back: garbage first, then the ACK.
        let mut queue = vec![bytes, b"garbage".to_vec()];
        let r = exchange(
            TIMING,
            || Ok(()),
            |_| Ok(queue.pop()),
            |m| answer(m, &p, 3, ip("192.0.2.1"), None),
        );
        assert_eq!(r.unwrap().unwrap().addr, ip("192.0.2.10"));
    }
}
