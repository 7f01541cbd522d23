//! The networking module against a real kernel: each test moves its own thread into a fresh
//! network namespace, builds veth pairs there, and (for DHCP) runs dnsmasq in a second
//! namespace on the far end. Nothing leaves the machine; the addresses are TEST-NET ones.
//!
//! Needs root and `ip` (iproute2); the DHCP tests also need `dnsmasq` (Debian package
//! `dnsmasq-base`). Without them the tests say so and pass without checking anything.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "a test: a panic is its failure, and its numbers are small"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guestinfo::config::{Common, ContainerNetwork, IpNet, NetworkEndpoint};
use guestinfo::ContainerConfig;
use tether::net::{self, dhcp, link::Netlink, Paths};

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Moves this test's thread into a new network namespace. The suite runs as root with
/// `scripts/setup`'s packages (iproute2, dnsmasq-base); without them this fails loudly
/// rather than passing untested.
fn private_netns(needs: &[&str]) -> bool {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the namespace tests need root (CI runs as root)"
    );
    for n in needs {
        assert!(have(n), "{n} is missing: run scripts/setup");
    }
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!("cannot create a network namespace: {e}");
    }
    true
}

fn sh(args: &str) {
    let out = Command::new("sh").args(["-c", args]).output().unwrap();
    assert!(
        out.status.success(),
        "{args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-netns-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fake sysfs in which `slot` leads to interface `ifname`.
fn fake_nic(pci: &Path, device_dir: &str, ifname: &str) {
    std::fs::create_dir_all(pci.join(device_dir).join("net").join(ifname)).unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn endpoint(slot: &str, network: &str) -> NetworkEndpoint {
    NetworkEndpoint {
        common: Common {
            id: slot.into(),
            ..Common::default()
        },
        network: ContainerNetwork {
            common: Common {
                name: network.into(),
                ..Common::default()
            },
            network_type: "bridge".into(),
            ..ContainerNetwork::default()
        },
        ..NetworkEndpoint::default()
    }
}

/// The far end: a named namespace with dnsmasq serving DHCP on `v1`.
struct Server {
    ns: String,
    dnsmasq: Option<Child>,
    dir: PathBuf,
}

impl Server {
    fn start(tag: &str, dir: &Path) -> Server {
        let ns = format!("tether-test-{tag}-{}", std::process::id());
        // A namespace left by an interrupted run.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        sh(&format!("ip netns add {ns}"));
        let mut s = Server {
            ns: ns.clone(),
            dnsmasq: None,
            dir: dir.to_owned(),
        };
        sh(&format!("ip link add v0 type veth peer name v1 netns {ns}"));
        sh(&format!(
            "ip -n {ns} link set lo up && ip -n {ns} addr add 192.0.2.1/24 dev v1 && ip -n {ns} link set v1 up"
        ));
        s.dnsmasq = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "dnsmasq",
                    "--no-daemon",
                    "--conf-file=/dev/null",
                ])
                .args([
                    "--port=0",
                    "--interface=v1",
                    "--bind-interfaces",
                    "--log-dhcp",
                    // Offer at once: the pool is ours alone.
                    "--no-ping",
                ])
                .arg("--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m")
                .arg("--dhcp-option=option:router,192.0.2.1")
                .arg("--dhcp-option=option:dns-server,192.0.2.53,198.51.100.53")
                .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
                .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("dnsmasq.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        // The far end's queue starts only once the kernel has seen its carrier come up,
        // which it may do up to a second after our end goes up; until then an offer would be
        // dropped, costing the client a retransmission. (On a VM's NIC the carrier is
        // already up when the tether opens it.)
        sh("ip link set v0 up");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args(["-n", &ns, "link", "show", "v1"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn leases(&self) -> String {
        std::fs::read_to_string(self.dir.join("leases")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn dhcp_endpoint_end_to_end() {
    if !private_netns(&["ip", "dnsmasq"]) {
        return;
    }
    let dir = tmp("dhcp");
    let server = Server::start("dhcp", &dir);
    // The PL's first slot: behind pciBridge4, function 1.
    fake_nic(&dir.join("pci"), "0000:00:15.1/0000:0b:00.0", "v0");
    let paths = Paths {
        pci_devices: dir.join("pci"),
        dmi: dir.join("dmi"),
        private_etc: dir.join("etc"),
        etc: None,
    };
    let mut cfg = ContainerConfig {
        hostname: "web".into(),
        domainname: "example.com".into(),
        ..ContainerConfig::default()
    };
    let mut bridge = endpoint("1184", "bridge");
    bridge.network.default = true;
    // A stale address from an earlier boot is replaced.
    bridge.assigned = IpNet::new(ip("192.0.2.99"), 24);
    cfg.networks.insert("bridge".into(), bridge);
    // A second network on the same NIC shares the lease.
    cfg.networks
        .insert("other".into(), endpoint("1184", "other"));

    let start = Instant::now();
    let leases = net::apply_with(&mut cfg, "web.example.com", paths.clone()).unwrap();
    eprintln!("applied in {:?}", start.elapsed());

    let ep = &cfg.networks["bridge"];
    let addr = match ep.assigned.ip {
        Some(IpAddr::V4(a)) => a,
        other => panic!("assigned {other:?}"),
    };
    assert!((50..=60).contains(&addr.octets()[3]), "{addr}");
    assert_eq!(ep.assigned.mask, Some(ip("255.255.255.0")));
    assert_eq!(ep.network.assigned.gateway, IpNet::new(ip("192.0.2.1"), 24));
    assert_eq!(
        ep.network.assigned.nameservers,
        vec![ip("192.0.2.53"), ip("198.51.100.53")]
    );
    assert_eq!(cfg.networks["other"].assigned, ep.assigned);

    let held = leases.snapshot();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].ifname, "v0");
    assert_eq!(held[0].endpoints, ["bridge", "other"]);
    assert_eq!(held[0].lease.server, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(held[0].lease.lease_secs, 120);
    assert!(held[0].default_route);

    // The kernel's view.
    let mut nl = Netlink::open().unwrap();
    let v0 = nl.link_by_name("v0").unwrap();
    assert!(v0.up);
    assert_eq!(nl.addresses(v0.index).unwrap(), vec![(addr, 24)]);
    assert_eq!(
        nl.default_gateway(v0.index).unwrap(),
        Some(Ipv4Addr::new(192, 0, 2, 1))
    );
    assert!(nl.link_by_name("lo").unwrap().up);

    // What the server saw: our client identifier and host name.
    let lease_line = server.leases();
    eprintln!("dnsmasq lease: {lease_line}");
    assert!(
        lease_line.contains(&hex(&held[0].params.client_id)),
        "{lease_line}"
    );
    assert!(lease_line.contains(" web "), "{lease_line}");

    let resolv = std::fs::read_to_string(dir.join("etc/resolv.conf")).unwrap();
    assert_eq!(
        resolv,
        "nameserver 192.0.2.53\nnameserver 198.51.100.53\noptions timeout:15\noptions attempts:5\n"
    );
    let hosts = std::fs::read_to_string(dir.join("etc/hosts")).unwrap();
    assert!(
        hosts.contains(&format!("{addr} bridge.localhost other.localhost\n")),
        "{hosts}"
    );

    // Renewal (unicast to the server) keeps the address.
    let renewed = dhcp::renew(&held[0].params, &held[0].lease).unwrap();
    assert_eq!(renewed.addr, addr);
    assert_eq!(renewed.lease_secs, 120);

    // Release: the server forgets the lease.
    net::release_all(&leases);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.leases().contains(&addr.to_string()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !server.leases().contains(&addr.to_string()),
        "{}",
        server.leases()
    );
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dhcp_without_a_server_gives_up() {
    if !private_netns(&["ip"]) {
        return;
    }
    let dir = tmp("nooffer");
    sh("ip link add v0 type veth peer name v1 && ip link set v1 up");
    fake_nic(&dir.join("pci"), "0000:00:15.1/0000:0b:00.0", "v0");
    let paths = Paths {
        pci_devices: dir.join("pci"),
        dmi: dir.join("dmi"),
        private_etc: dir.join("etc"),
        etc: None,
    };
    let mut cfg = ContainerConfig::default();
    cfg.networks
        .insert("bridge".into(), endpoint("1184", "bridge"));
    let start = Instant::now();
    let err = net::apply_with(&mut cfg, "host", paths).unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        err.to_string(),
        "network bridge: DHCP: no offer within 10 s"
    );
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(13),
        "{took:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn static_endpoints_names_and_routes() {
    if !private_netns(&["ip"]) {
        return;
    }
    let dir = tmp("static");
    sh("ip link add eth7 type veth peer name peer7 && ip link set peer7 up");
    sh("ip link add vx type veth peer name peerx && ip link set peerx up");
    sh("ip link add vy type veth peer name peery && ip link set peery up && ip link set vy alias keep");
    let pci = dir.join("pci");
    fake_nic(&pci, "0000:00:03.0", "eth7");
    fake_nic(&pci, "0000:00:04.0", "vx");
    fake_nic(&pci, "0000:00:05.0", "vy");
    fake_nic(&pci, "0000:00:06.0", "peer7");
    let paths = Paths {
        pci_devices: pci,
        dmi: dir.join("dmi"),
        private_etc: dir.join("etc"),
        etc: None,
    };

    let mut cfg = ContainerConfig::default();
    // eth7: renamed to "public", static /24, default route, configured DNS.
    let mut public = endpoint("3", "public");
    public.common.name = "public".into();
    public.static_ip = true;
    public.ip = Some(IpNet::new(ip("203.0.113.5"), 24));
    public.network.gateway = IpNet::new(ip("203.0.113.1"), 24);
    public.network.default = true;
    public.network.nameservers = vec![ip("203.0.113.53")];
    cfg.networks.insert("public".into(), public);
    // vx: not an eth name ⇒ alias; 16-byte address; a route to a destination.
    let mut internal = endpoint("4", "backend");
    internal.internal = true;
    internal.common.name = "backend".into();
    internal.ip = Some(IpNet {
        ip: Some(ip("::ffff:198.51.100.7")),
        mask: Some(ip("255.255.255.0")),
    });
    internal.network.gateway = IpNet::new(ip("198.51.100.1"), 24);
    internal.network.destinations = vec![IpNet::new(ip("10.200.0.0"), 16)];
    cfg.networks.insert("backend".into(), internal);
    // vy: already has an alias ⇒ left alone; no gateway ⇒ no routes, no DNS.
    let mut quiet = endpoint("5", "quiet");
    quiet.common.name = "other".into();
    quiet.static_ip = true;
    quiet.ip = Some(IpNet::new(ip("192.0.2.77"), 28));
    cfg.networks.insert("quiet".into(), quiet);
    // peer7: managed externally ⇒ up, nothing else.
    let mut ext = endpoint("6", "mgmt");
    ext.static_ip = true;
    ext.ip = Some(IpNet {
        ip: Some(ip("0.0.0.0")),
        mask: None,
    });
    cfg.networks.insert("mgmt".into(), ext);

    let leases = net::apply_with(&mut cfg, "host", paths).unwrap();
    assert!(leases.is_empty());

    let mut nl = Netlink::open().unwrap();
    assert!(nl.link_by_name("eth7").is_err());
    let public = nl.link_by_name("public").unwrap();
    assert!(public.up);
    assert_eq!(
        nl.addresses(public.index).unwrap(),
        vec![(Ipv4Addr::new(203, 0, 113, 5), 24)]
    );
    assert_eq!(
        nl.default_gateway(public.index).unwrap(),
        Some(Ipv4Addr::new(203, 0, 113, 1))
    );
    let vx = nl.link_by_name("vx").unwrap();
    assert_eq!(vx.alias.as_deref(), Some("backend"));
    assert_eq!(
        nl.addresses(vx.index).unwrap(),
        vec![(Ipv4Addr::new(198, 51, 100, 7), 24)]
    );
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "10.200.0.0/16"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(routes.contains("via 198.51.100.1 dev vx"), "{routes}");
    let vy = nl.link_by_name("vy").unwrap();
    assert_eq!(vy.alias.as_deref(), Some("keep"));
    assert_eq!(
        nl.addresses(vy.index).unwrap(),
        vec![(Ipv4Addr::new(192, 0, 2, 77), 28)]
    );
    let peer7 = nl.link_by_name("peer7").unwrap();
    assert!(peer7.up);
    assert!(nl.addresses(peer7.index).unwrap().is_empty());

    let ep = &cfg.networks["backend"];
    assert_eq!(ep.assigned, IpNet::new(ip("198.51.100.7"), 24));
    assert_eq!(ep.network.assigned.gateway, ep.network.gateway);
    assert!(cfg.networks["mgmt"].assigned.is_unset());

    // Resolv: backend (internal, first) has no DNS ⇒ its gateway; public's DNS; quiet has
    // neither gateway nor DNS.
    let resolv = std::fs::read_to_string(dir.join("etc/resolv.conf")).unwrap();
    assert_eq!(
        resolv,
        "nameserver 198.51.100.1\nnameserver 203.0.113.53\noptions timeout:15\noptions attempts:5\n"
    );
    let hosts = std::fs::read_to_string(dir.join("etc/hosts")).unwrap();
    for line in [
        "203.0.113.5 public.localhost\n",
        "198.51.100.7 backend.localhost\n",
        "192.0.2.77 quiet.localhost\n",
    ] {
        assert!(hosts.contains(line), "{hosts}");
    }
    assert!(!hosts.contains("mgmt"), "{hosts}");

    // Applying again (the address is already there) is harmless. sysfs follows renames.
    std::fs::rename(
        dir.join("pci/0000:00:03.0/net/eth7"),
        dir.join("pci/0000:00:03.0/net/public"),
    )
    .unwrap();
    let mut again = cfg.clone();
    net::apply_with(
        &mut again,
        "host",
        Paths {
            pci_devices: dir.join("pci"),
            dmi: dir.join("dmi"),
            private_etc: dir.join("etc"),
            etc: None,
        },
    )
    .unwrap();
    assert_eq!(again, cfg);

    // A NIC that is not there.
    let mut missing = ContainerConfig::default();
    missing
        .networks
        .insert("bridge".into(), endpoint("1184", "bridge"));
    let err = net::apply_with(
        &mut missing,
        "host",
        Paths {
            pci_devices: dir.join("pci"),
            dmi: dir.join("dmi"),
            private_etc: dir.join("etc"),
            etc: None,
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "network bridge: no NIC at PCI slot 1184 ({}/0000:00:15.1/0000:*:00.0)",
            dir.join("pci").display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
