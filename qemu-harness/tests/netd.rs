//! A network's segment without VMs: a real `vch netd` (switch, libslirp gateway, DNS) with
//! test clients in the place of QEMU's stream netdevs, speaking its framing (4-byte length,
//! frame). Checks the switching rules, the gateway's ARP, the segment's DNS and that the
//! netd ends once nobody holds or uses the segment.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use qemu_harness::netd::{self, dns};
use qemu_harness::network::Network;

fn network() -> Network {
    let mut n = Network::bridge();
    n.name = "seg".into();
    n.subnet = "10.99.0.0/24".parse().unwrap();
    n.gateway = "10.99.0.1".parse().unwrap();
    n.created = 7;
    n
}

struct Nic {
    s: UnixStream,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

impl Nic {
    fn connect(sock: &Path, last: u8) -> Nic {
        let s = UnixStream::connect(sock).expect("connect to the switch");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Nic {
            s,
            mac: [0, 0x50, 0x56, 0, 0, last],
            ip: Ipv4Addr::new(10, 99, 0, last),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.s
            .write_all(&(frame.len() as u32).to_be_bytes())
            .unwrap();
        self.s.write_all(frame).unwrap();
    }

    /// The frames that arrive within the read timeout.
    fn frames(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if self.s.read_exact(&mut len).is_err() {
                return out;
            }
            let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
            self.s.read_exact(&mut f).unwrap();
            out.push(f);
        }
    }

    fn arp_request(&self, target: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&self.mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&self.mac);
        f.extend_from_slice(&self.ip.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    /// An Ethernet frame to `dst` with a payload no one interprets (an unused ethertype).
    fn raw(&self, dst: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&self.mac);
        f.extend_from_slice(&[0x88, 0xb5, tag]);
        f.resize(60, 0);
        f
    }
}

fn query(name: &str) -> Vec<u8> {
    let mut m = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

#[test]
fn frames_arp_dns_and_the_segments_end() {
    let state = tempfile::tempdir().unwrap();
    let net = network();
    let hold = netd::ensure(state.path(), &net, Path::new(env!("CARGO_BIN_EXE_vch")))
        .expect("the segment starts");
    let sock = hold.segment.switch_sock();
    let mut a = Nic::connect(&sock, 2);
    let mut b = Nic::connect(&sock, 3);

    // A looks for the gateway: libslirp answers A alone; the broadcast reaches B too.
    a.send(&a.arp_request(net.gateway));
    let replies = a.frames();
    let gw_mac = [0x52, 0x55, 10, 99, 0, 1];
    assert!(
        replies.iter().any(|f| f[0..6] == a.mac
            && f[6..12] == gw_mac
            && f[12..14] == [0x08, 0x06]
            && f[20..22] == [0, 2]
            && f[28..32] == [10, 99, 0, 1]),
        "no ARP reply from the gateway: {replies:?}"
    );
    let seen_by_b = b.frames();
    assert_eq!(seen_by_b.len(), 1, "the request is flooded to B once");
    assert_eq!(seen_by_b[0][0..6], [0xff; 6]);

    // B is not known yet: a frame for it is flooded (to B; A learned). Once B has spoken,
    // frames for it go to B alone, and frames for A to A alone.
    a.send(&a.raw(b.mac, 1));
    assert_eq!(b.frames().len(), 1);
    b.send(&b.raw(a.mac, 2));
    let got = a.frames();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][14], 2);
    a.send(&a.raw(b.mac, 3));
    let got = b.frames();
    assert_eq!((got.len(), got[0][14]), (1, 3));
    assert!(
        a.frames().is_empty(),
        "a unicast frame came back to its sender"
    );

    // DNS at the gateway: an unknown name without a dot is answered at once (NXDOMAIN),
    // from the gateway's address and MAC, to the asker only.
    let q = dns::Datagram {
        src_mac: a.mac,
        dst_mac: gw_mac,
        src: a.ip,
        dst: net.gateway,
        sport: 40000,
        dport: 53,
        payload: query("nosuchcontainer"),
    };
    let started = Instant::now();
    a.send(&dns::udp_frame(&q));
    let answers: Vec<dns::Datagram> = a.frames().iter().filter_map(|f| dns::udp_in(f)).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    let r = &answers[0];
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (net.gateway, 53, a.ip, 40000)
    );
    assert_eq!(r.src_mac, gw_mac);
    assert_eq!(&r.payload[..2], &[0x42, 0x42]);
    assert_eq!(r.payload[3] & 0xf, dns::RCODE_NXDOMAIN);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(b.frames().is_empty(), "B saw A's DNS exchange");

    let status = hold.segment.status().expect("status");
    assert_eq!(status.ports, 2);
    assert!(status.macs >= 3, "{status:?}");
    assert_eq!(status.dns_local, 1);

    // Held (a VM starting): the segment stays even with no NIC connected.
    drop((a, b));
    std::thread::sleep(Duration::from_secs(5));
    assert!(hold.segment.running(), "ended while held");
    let pid = status.pid;
    // Let go: it ends, and removes its sockets.
    let segment = hold.segment.clone();
    drop(hold);
    let deadline = Instant::now() + Duration::from_secs(20);
    // (`ensure` reaps the netd it started on a thread of this process.)
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "netd {pid} still runs"
    );
    assert!(!segment.running());
    assert!(!segment.switch_sock().exists());
}
