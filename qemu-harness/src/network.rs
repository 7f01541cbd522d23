//! Container networks: their definitions (the VCH's port groups), the NICs containers have on
//! them, and where those NICs go so that the tether finds them.
//!
//! # Networks
//!
//! Each network is one shared segment, run by a `vch netd` process ([`crate::netd`]): every
//! NIC of every container on the network is a QEMU stream netdev to the segment's switch,
//! and the gateway on it is libslirp (NAT out, published ports, this machine's loopback at
//! the gateway address), with the segment's own DNS at the gateway. Addresses are the port
//! layer's ([`crate::ipam`]): each NIC gets the network's lowest free address (or `--ip`),
//! written into its endpoint, so the tether configures it without DHCP.
//!
//! | network | subnet | gateway | first container | libslirp's DNS address |
//! |---|---|---|---|---|
//! | `bridge` (built in) | 172.16.0.0/16 (VIC's first bridge subnet) | 172.16.0.1 | 172.16.0.2 | 172.16.255.254 |
//! | `vch network create NAME` | next free /16 of 172.16.0.0/12 (172.17.0.0/16, …) | .0.1 | .0.2 | last usable |
//!
//! libslirp insists that its DNS address differs from the gateway, so it sits at the
//! subnet's last usable address unless a `--dns` address inside the subnet is given; the
//! segment answers DNS at both, and no container gets either address.
//!
//! # Where a NIC goes: slot number → QEMU devices → guest sysfs
//!
//! The port layer identifies a NIC by its vSphere PCI slot number (`Common/id`), allocated from
//! [`FIRST_NIC_SLOT`] (0x4A0) in steps of [`NIC_SLOT_STEP`] (32). The tether decodes it
//! (tether-lifecycle.md §6.1): `dev = slot & 0x1f`, `bus = (slot >> 5) & 0x1f`,
//! `fn = (slot >> 10) & 7`; a device on bus `b > 0` sits at `dev` behind the PCI bridge in
//! root-bus slot `0x11 + (b - 1)`, function `fn`. On q35 such a bridge is a `pcie-root-port`
//! at that root-bus address, with the NIC at address 0 on its secondary bus:
//!
//! | NIC | slot | dev/bus/fn | QEMU devices (root bus `pcie.0`) | guest path |
//! |---|---|---|---|---|
//! | 0 | 0x4A0 (1184) | 0/5/1 | root port at 15.1 (+ empty root port at 15.0), NIC at 00.0 on it | `/sys/bus/pci/devices/0000:00:15.1/0000:*:00.0` |
//! | 1 | 0x4C0 (1216) | 0/6/1 | root port at 16.1 (+ 16.0) | `…/0000:00:16.1/0000:*:00.0` |
//! | i | 0x4A0 + 32·i | 0/5+i/1 | root port at (15+i).1 (+ (15+i).0) | `…/0000:00:(15+i).1/0000:*:00.0` |
//! | 10 | 0x5E0 (1504) | 0/15/1 | root port at 1f.1 (1f.0 is the ICH9 LPC bridge) | `…/0000:00:1f.1/0000:*:00.0` |
//!
//! Linux scans a slot's other functions only when function 0 exists and says it is
//! multi-function, so each slot also gets an empty root port at function 0 with
//! `multifunction=on` (slot 0x1f already has the chipset's multi-function LPC bridge there).
//! Bridge slots past 0x1f do not exist (a PCI device number has 5 bits), so a container has
//! at most [`MAX_NICS`] NICs. The root ports have hot-plug off and reserve no I/O space:
//! nothing is hot-plugged, and the 64 KiB of x86 I/O ports would not cover a 4 KiB window per
//! port; the NICs carry no option ROM (SeaBIOS would spend boot time on iPXE). The NIC
//! devices are put on QEMU's command line first, so the devices QEMU places itself (disks,
//! serial ports) never take these slots.
//!
//! The tether takes the NIC's interface from `<device>/net/*`, where `vmxnet3` (the default,
//! vSphere's NIC) puts it, or from `<device>/virtioN/net/*`: `virtio-net-pci` puts it one
//! level deeper, under the virtio device.

use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The default network's name.
pub const BRIDGE: &str = "bridge";
/// `--network none`: no NIC.
pub const NONE: &str = "none";

/// The port layer's first NIC slot (VIC `constants.PCISlotNumberBegin`).
pub const FIRST_NIC_SLOT: u32 = 0x4A0;
/// Step between the port layer's NIC slots (`PCISlotNumberInc`, one bus).
pub const NIC_SLOT_STEP: u32 = 1 << 5;
/// The port layer allocates slots below this (`PCISlotNumberEnd`).
pub const NIC_SLOT_END: u32 = 1 << 11;
/// PCI bridge slot of bus 1 (vSphere's pciBridge0 is slot 17).
const FIRST_BRIDGE_DEV: u32 = 0x11;
/// The q35 chipset's multi-function slot (ICH9 LPC at function 0).
const ICH9_DEV: u32 = 0x1f;
/// NICs that fit: bridge slots 0x15..=0x1f.
pub const MAX_NICS: usize = 11;

/// VIC's default bridge range (`constants.DefaultBridgeRange`), split into /16 networks.
const BRIDGE_POOL: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(172, 16, 0, 0),
    prefix: 12,
};

/// Network errors.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// unknown network
    #[error("network {0} not found")]
    NoSuch(String),
    /// the name is taken
    #[error("network with name {0} already exists")]
    Exists(String),
    /// a bad network name
    #[error("invalid network name {0:?}: use [a-zA-Z0-9_-], starting with a letter or digit (not \"none\")")]
    InvalidName(String),
    /// a bad address, subnet or option
    #[error("{0}")]
    Invalid(String),
    /// a bad `-p` specification
    #[error("invalid port specification {spec:?}: {why}")]
    BadPort { spec: String, why: String },
    /// the built-in network cannot be changed
    #[error("{0} is a pre-defined network and cannot be removed")]
    Builtin(String),
    /// running containers use the network
    #[error("network {name} has active endpoints (containers {containers})")]
    InUse { name: String, containers: String },
    /// more NICs than slots
    #[error("a container can join at most {MAX_NICS} networks")]
    TooMany,
    /// a metadata file could not be read
    #[error(transparent)]
    Record(#[from] crate::records::RecordError),
    /// an address could not be had
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    /// a file operation failed
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn invalid(msg: impl Into<String>) -> NetworkError {
    NetworkError::Invalid(msg.into())
}

/// An IPv4 network: address and prefix length (the address may have host bits set, as a
/// gateway's does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// The netmask as an address (`255.255.0.0`).
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & mask_bits(self.prefix))
    }

    /// The all-ones address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !mask_bits(self.prefix))
    }

    /// This network with host bits cleared.
    pub fn normalized(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network())
    }

    /// A usable host address of this network (not the network or broadcast address).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The `i`-th address of the network (`network + i`).
    fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()).wrapping_add(i))
    }

    /// As a guestinfo `IPNet` (address and mask).
    pub fn ipnet(&self) -> guestinfo::IpNet {
        guestinfo::IpNet {
            ip: Some(self.addr.into()),
            mask: Some(self.mask().into()),
        }
    }
}

fn mask_bits(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || invalid(format!("invalid CIDR {s:?} (want A.B.C.D/N)"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 || p.starts_with('+') {
            return Err(bad());
        }
        Ok(Ipv4Net { addr, prefix })
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

/// A network's type as the tether sees it (`network/type`): it selects the firewall rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetType {
    /// Docker bridge networks: the VCH NATs published ports.
    #[default]
    Bridge,
    /// VIC container networks: the container sits directly on a port group; its own
    /// firewall (trust level) applies.
    External,
}

impl NetType {
    pub fn as_str(self) -> &'static str {
        match self {
            NetType::Bridge => "bridge",
            NetType::External => "external",
        }
    }
}

impl FromStr for NetType {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(NetType::Bridge),
            "external" => Ok(NetType::External),
            _ => Err(invalid(format!(
                "unknown network type {s:?} (bridge, external)"
            ))),
        }
    }
}

/// Parses a trust level name or number (`executor.TrustLevel`).
pub fn parse_trust(s: &str) -> Result<i64, NetworkError> {
    use guestinfo::trust_level::*;
    Ok(match s {
        "unspecified" | "0" => UNSPECIFIED,
        "published" | "1" => PUBLISHED,
        "open" | "2" => OPEN,
        "closed" | "3" => CLOSED,
        "outbound" | "4" => OUTBOUND,
        "peers" | "5" => PEERS,
        _ => {
            return Err(invalid(format!(
                "unknown trust level {s:?} (published, open, closed, outbound, peers)"
            )))
        }
    })
}

/// A network definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: NetType,
    /// Normalised (host bits clear).
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Nameservers the port layer writes into the endpoint (`network/dns`); empty = the
    /// container uses the gateway, where the segment answers.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Routes via the gateway when this is not the container's default network.
    #[serde(default)]
    pub routes: Vec<Ipv4Net>,
    /// `network/TrustLevel` (see [`guestinfo::trust_level`]).
    #[serde(default)]
    pub trust: i64,
    /// Unix seconds; 0 for the built-in network.
    #[serde(default)]
    pub created: i64,
}

impl Network {
    /// The built-in `bridge` network, laid out like VIC's default bridge network.
    pub fn bridge() -> Network {
        Network {
            name: BRIDGE.into(),
            kind: NetType::Bridge,
            subnet: Ipv4Net {
                addr: Ipv4Addr::new(172, 16, 0, 0),
                prefix: 16,
            },
            gateway: Ipv4Addr::new(172, 16, 0, 1),
            dns: Vec::new(),
            routes: Vec::new(),
            trust: 0,
            created: 0,
        }
    }

    pub fn is_builtin(&self) -> bool {
        self.name == BRIDGE
    }

    /// The gateway as the endpoint's `network/gateway` carries it (the subnet's mask).
    pub fn gateway_net(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.gateway,
            prefix: self.subnet.prefix,
        }
    }

    /// Where slirp's DNS forwarder listens: the first configured nameserver inside the
    /// subnet, else the subnet's last usable address (skipping the gateway).
    pub fn slirp_dns(&self) -> Ipv4Addr {
        if let Some(d) = self
            .dns
            .iter()
            .find(|d| self.subnet.is_host(**d) && **d != self.gateway)
        {
            return *d;
        }
        let last = Ipv4Addr::from(u32::from(self.subnet.broadcast()).wrapping_sub(1));
        if last == self.gateway {
            Ipv4Addr::from(u32::from(last).wrapping_sub(1))
        } else {
            last
        }
    }

    /// The lowest host address that is neither the gateway nor the DNS address: the first
    /// container's (and the address of a NIC from before addresses were assigned).
    pub fn dhcp_start(&self) -> Ipv4Addr {
        let dns = self.slirp_dns();
        (1..)
            .map(|i| self.subnet.nth(i))
            .find(|a| *a != self.gateway && *a != dns)
            .unwrap_or(self.gateway)
    }

    /// The addresses containers may be given, as the IPAM claims them.
    pub fn ipam_pool(&self) -> crate::ipam::Pool {
        crate::ipam::Pool {
            network: self.name.clone(),
            first: Ipv4Addr::from(u32::from(self.subnet.network()).saturating_add(1)),
            last: Ipv4Addr::from(u32::from(self.subnet.broadcast()).saturating_sub(1)),
            reserved: vec![self.gateway, self.slirp_dns()],
            describe: format!(
                "{}, gateway {}, DNS {}",
                self.subnet,
                self.gateway,
                self.slirp_dns()
            ),
        }
    }

    /// The peer range as the port layer writes it (`network/pools`): a network without
    /// explicit pools gets its whole subnet.
    pub fn pool(&self) -> guestinfo::IpRange {
        guestinfo::IpRange {
            first: Some(self.subnet.network().into()),
            last: Some(self.subnet.broadcast().into()),
        }
    }

    /// Checks a definition (for `create`, and for stored files).
    pub fn validate(&self) -> Result<(), NetworkError> {
        if !valid_name(&self.name) {
            return Err(NetworkError::InvalidName(self.name.clone()));
        }
        // Room for a gateway, the DNS forwarder and the container.
        if !(8..=29).contains(&self.subnet.prefix) {
            return Err(invalid(format!(
                "subnet {} must have a prefix length between /8 and /29",
                self.subnet
            )));
        }
        if !self.subnet.is_host(self.gateway) {
            return Err(invalid(format!(
                "gateway {} is not a host address of subnet {}",
                self.gateway, self.subnet
            )));
        }
        if let Some(d) = self
            .dns
            .iter()
            .find(|d| d.is_unspecified() || d.is_broadcast())
        {
            return Err(invalid(format!("invalid DNS server {d}")));
        }
        Ok(())
    }
}

/// Network names: letters, digits, `_` and `-` (no `.`: the name is a component of the
/// write-back keys `guestinfo.vice..networks|<name>.assigned…`, which are `.`-separated).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && name != NONE
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// What `vch network create` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateNetwork {
    pub name: String,
    pub kind: NetType,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub routes: Vec<Ipv4Net>,
    pub trust: Option<i64>,
}

/// The networks of a state directory: `<state>/networks/<name>.json`, plus the built-in
/// `bridge`.
#[derive(Debug, Clone)]
pub struct NetworkStore {
    root: PathBuf,
}

impl NetworkStore {
    pub fn new(state_root: &Path) -> NetworkStore {
        NetworkStore {
            root: state_root.join("networks"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.json"))
    }

    /// The state directory the store belongs to.
    pub fn state_root(&self) -> &Path {
        self.root.parent().unwrap_or(&self.root)
    }

    /// A network by name.
    pub fn get(&self, name: &str) -> Result<Network, NetworkError> {
        if name == BRIDGE {
            return Ok(Network::bridge());
        }
        if !valid_name(name) {
            return Err(NetworkError::NoSuch(name.into()));
        }
        let path = self.path(name);
        crate::records::read_json(&path)?.ok_or_else(|| NetworkError::NoSuch(name.into()))
    }

    /// `bridge` first, then the others by name.
    pub fn list(&self) -> Vec<Network> {
        let mut out: Vec<Network> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                let name = file.strip_suffix(".json")?;
                match self.get(name) {
                    Ok(n) => Some(n),
                    Err(err) => {
                        tracing::warn!(network = %name, error = %err, "skipping network");
                        None
                    }
                }
            })
            .filter(|n| !n.is_builtin())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.insert(0, Network::bridge());
        out
    }

    /// Creates a network. Without `--subnet` it takes the next /16 of VIC's bridge pool
    /// (172.16.0.0/12) that no network uses; without `--gateway` the subnet's first address.
    /// Subnets may not overlap (as the port layer's IPAM refuses).
    pub fn create(&self, req: &CreateNetwork) -> Result<Network, NetworkError> {
        if req.name == BRIDGE {
            return Err(NetworkError::Exists(req.name.clone()));
        }
        if !valid_name(&req.name) {
            return Err(NetworkError::InvalidName(req.name.clone()));
        }
        if self.path(&req.name).exists() {
            return Err(NetworkError::Exists(req.name.clone()));
        }
        let existing = self.list();
        let subnet = match req.subnet {
            Some(s) => {
                if s.addr != s.network() {
                    return Err(invalid(format!(
                        "subnet {s} has host bits set (did you mean {}?)",
                        s.normalized()
                    )));
                }
                if let Some(o) = existing.iter().find(|n| n.subnet.overlaps(&s)) {
                    return Err(invalid(format!(
                        "subnet {s} overlaps with network {} ({})",
                        o.name, o.subnet
                    )));
                }
                s
            }
            None => (0..16u32)
                .map(|i| Ipv4Net {
                    addr: Ipv4Addr::from(u32::from(BRIDGE_POOL.addr) + (i << 16)),
                    prefix: 16,
                })
                .find(|c| !existing.iter().any(|n| n.subnet.overlaps(c)))
                .ok_or_else(|| invalid("no free /16 left in 172.16.0.0/12: give --subnet"))?,
        };
        let gateway = req.gateway.unwrap_or_else(|| subnet.nth(1));
        let trust = match (req.kind, req.trust) {
            (_, Some(t)) => t,
            // VIC's container networks default to `published`.
            (NetType::External, None) => guestinfo::trust_level::PUBLISHED,
            (NetType::Bridge, None) => guestinfo::trust_level::UNSPECIFIED,
        };
        let net = Network {
            name: req.name.clone(),
            kind: req.kind,
            subnet,
            gateway,
            dns: req.dns.clone(),
            routes: req.routes.clone(),
            trust,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        net.validate()?;
        // The container's address must remain a host address once the gateway and the DNS
        // forwarder have theirs.
        if !net.subnet.is_host(net.dhcp_start()) {
            return Err(invalid(format!("subnet {subnet} is too small")));
        }
        fs::create_dir_all(&self.root).map_err(|source| NetworkError::Io {
            what: "create",
            path: self.root.clone(),
            source,
        })?;
        crate::records::write_json(&self.path(&net.name), &net)?;
        tracing::info!(network = %net.name, subnet = %net.subnet, "network created");
        Ok(net)
    }

    /// Removes a network definition. Callers check for running containers; stopped ones keep
    /// a copy of the definition in their metadata.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        if name == BRIDGE {
            return Err(NetworkError::Builtin(name.into()));
        }
        self.get(name)?;
        let path = self.path(name);
        fs::remove_file(&path).map_err(|source| NetworkError::Io {
            what: "remove",
            path,
            source,
        })
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Most ports one `-p` may publish (each is a listening socket in QEMU).
const MAX_PORT_RANGE: u16 = 100;

/// A published port range: `host_ip:host_first..` → container `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    /// Ports in the range (1 for a single port).
    pub count: u16,
    pub proto: Proto,
}

impl PortSpec {
    /// The endpoint's `ports` entries as the port layer writes them
    /// (`[hostport:]port[-range]/proto`): `8080:80/tcp`; a range mapped onto itself as
    /// `8000-8010/tcp`; a range mapped elsewhere one entry per port (the tether takes no range
    /// with a mapping).
    pub fn vic(&self) -> Vec<String> {
        let proto = self.proto.as_str();
        if self.count == 1 {
            return vec![format!(
                "{}:{}/{proto}",
                self.host_port, self.container_port
            )];
        }
        if self.host_port == self.container_port {
            return vec![format!(
                "{}-{}/{proto}",
                self.container_port,
                self.container_port + (self.count - 1)
            )];
        }
        (0..self.count)
            .map(|i| format!("{}:{}/{proto}", self.host_port + i, self.container_port + i))
            .collect()
    }

    /// QEMU `hostfwd` rules (`tcp:127.0.0.1:8080-172.16.0.2:80`), one per port.
    pub fn hostfwds(&self, guest: Ipv4Addr) -> Vec<String> {
        (0..self.count)
            .map(|i| {
                format!(
                    "{}:{}:{}-{guest}:{}",
                    self.proto.as_str(),
                    self.host_ip,
                    self.host_port + i,
                    self.container_port + i
                )
            })
            .collect()
    }

    /// Whether two specs publish a common host port.
    pub fn clashes(&self, other: &PortSpec) -> bool {
        let (a0, a1) = (self.host_port, self.host_port + (self.count - 1));
        let (b0, b1) = (other.host_port, other.host_port + (other.count - 1));
        self.proto == other.proto
            && (self.host_ip == other.host_ip
                || self.host_ip.is_unspecified()
                || other.host_ip.is_unspecified())
            && a0 <= b1
            && b0 <= a1
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |first: u16| {
            if self.count == 1 {
                first.to_string()
            } else {
                format!("{first}-{}", first + (self.count - 1))
            }
        };
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip,
            range(self.host_port),
            range(self.container_port),
            self.proto.as_str()
        )
    }
}

/// Parses `-p [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`; either port may be a range
/// `FIRST-LAST` (both of the same length). The host side binds 127.0.0.1 unless an address
/// is given. A container port alone (docker's random host port) is refused: QEMU does not
/// report the port it would pick.
pub fn parse_port_spec(spec: &str) -> Result<PortSpec, NetworkError> {
    let bad = |why: &str| NetworkError::BadPort {
        spec: spec.into(),
        why: why.into(),
    };
    let (body, proto) = match spec.rsplit_once('/') {
        Some((b, "tcp")) => (b, Proto::Tcp),
        Some((b, "udp")) => (b, Proto::Udp),
        Some((_, p)) => return Err(bad(&format!("unknown protocol {p:?} (tcp, udp)"))),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = body.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [_] => {
            return Err(bad(
                "give HOSTPORT:CONTAINERPORT (random host ports are not supported)",
            ))
        }
        [h, c] => (None, *h, *c),
        [ip, h, c] => (Some(*ip), *h, *c),
        _ => return Err(bad("want [IP:]HOSTPORT:CONTAINERPORT[/PROTO]")),
    };
    let host_ip = match ip {
        None | Some("") => Ipv4Addr::LOCALHOST,
        Some(a) => a
            .parse()
            .map_err(|_| bad(&format!("{a:?} is not an IPv4 address")))?,
    };
    let range = |s: &str| -> Result<(u16, u16), NetworkError> {
        let port = |p: &str| -> Result<u16, NetworkError> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('+') => Ok(n),
                _ => Err(bad(&format!("{p:?} is not a port number (1-65535)"))),
            }
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if b < a {
                    return Err(bad("a range ends below its start"));
                }
                Ok((a, b))
            }
            None => {
                let p = port(s)?;
                Ok((p, p))
            }
        }
    };
    let (h0, h1) = range(host)?;
    let (c0, c1) = range(container)?;
    if h1 - h0 != c1 - c0 {
        return Err(bad("the host and container ranges differ in length"));
    }
    if c1 - c0 >= MAX_PORT_RANGE {
        return Err(bad(&format!("at most {MAX_PORT_RANGE} ports per range")));
    }
    Ok(PortSpec {
        host_ip,
        host_port: h0,
        container_port: c0,
        count: c1 - c0 + 1,
        proto,
    })
}

/// The NIC emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// `vmxnet3`, the NIC vSphere gives container VMs. The default: its interface sits
    /// directly under the PCI device (`<device>/net/ethN`), where the tether looks.
    #[default]
    Vmxnet3,
    /// `virtio-net-pci`. Its interface hangs one level deeper, under the virtio device
    /// (`<device>/virtioN/net/ethN`), which the original tether's lookup does not search.
    Virtio,
}

impl NicModel {
    /// The QEMU device name.
    pub fn device(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::Vmxnet3 => "vmxnet3",
        }
    }
}

impl FromStr for NicModel {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "virtio" | "virtio-net" | "virtio-net-pci" => Ok(NicModel::Virtio),
            "vmxnet3" => Ok(NicModel::Vmxnet3),
            _ => Err(invalid(format!(
                "unknown NIC model {s:?} (virtio, vmxnet3)"
            ))),
        }
    }
}

/// The port layer's slot for the container's `index`-th NIC, if one fits.
pub fn nic_slot(index: usize) -> Option<u32> {
    let slot =
        FIRST_NIC_SLOT.checked_add(NIC_SLOT_STEP.checked_mul(u32::try_from(index).ok()?)?)?;
    (slot < NIC_SLOT_END && index < MAX_NICS).then_some(slot)
}

/// A slot number decoded the tether's way (VMware KB 2047927).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddress {
    pub dev: u32,
    pub bus: u32,
    pub func: u32,
}

pub fn decode_slot(slot: u32) -> SlotAddress {
    SlotAddress {
        dev: slot & 0x1f,
        bus: (slot >> 5) & 0x1f,
        func: (slot >> 10) & 0x7,
    }
}

/// Where a NIC with a given slot goes on q35.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicPlacement {
    pub slot: u32,
    /// Root-bus slot of the root port standing in for the vSphere PCI bridge.
    pub bridge_dev: u32,
    /// Its function.
    pub func: u32,
    /// The NIC's device number behind the bridge.
    pub dev: u32,
}

impl NicPlacement {
    /// Places a slot: only bridged slots whose bridge lands on an existing root-bus slot
    /// (bus 1..=15, i.e. bridge slots 0x11..=0x1f) can be built under QEMU.
    pub fn for_slot(slot: u32) -> Result<NicPlacement, NetworkError> {
        let a = decode_slot(slot);
        let bridge_dev = (FIRST_BRIDGE_DEV + a.bus).saturating_sub(1);
        if a.bus == 0 || bridge_dev > ICH9_DEV {
            return Err(invalid(format!(
                "PCI slot {slot:#x} (bus {}) has no bridge slot on q35",
                a.bus
            )));
        }
        Ok(NicPlacement {
            slot,
            bridge_dev,
            func: a.func,
            dev: a.dev,
        })
    }

    /// The root port's `addr=` (`0x15.1`).
    pub fn root_port_addr(&self) -> String {
        format!("{:#04x}.{}", self.bridge_dev, self.func)
    }

    /// Whether the slot needs an empty function-0 device so that Linux scans `func`.
    pub fn needs_function0(&self) -> bool {
        self.func != 0 && self.bridge_dev != ICH9_DEV
    }

    /// The sysfs path (a glob: the secondary bus number is the firmware's choice) where the
    /// tether finds the NIC; its interface is the one entry of `<path>/net/`.
    pub fn guest_path(&self) -> String {
        format!(
            "/sys/bus/pci/devices/0000:00:{:02x}.{}/0000:*:{:02x}.0",
            self.bridge_dev, self.func, self.dev
        )
    }
}

/// One NIC as QEMU is to build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicDevice {
    pub placement: NicPlacement,
    pub model: NicModel,
    pub mac: String,
    /// The `-netdev` argument (its `id=` must be `netdev_id`).
    pub netdev: String,
    pub netdev_id: String,
}

/// Empty hot-plug root ports a VM gets beyond its NICs: each costs boot time under TCG (the
/// firmware and the kernel set up every port; all ten free ones cost about 0.3 s before
/// PID 1, measured on this project's machines), and a running container rarely joins more
/// than a network or two.
pub const SPARE_SLOTS: usize = 3;

/// The slots a VM gets empty root ports for, so that NICs can be hot-added (`network
/// connect` on a running container): the first [`SPARE_SLOTS`] its NICs leave free. A
/// container without networks (`--network none`) gets none: docker does not connect such
/// a container either.
pub fn spare_slots(nics: &[AttachedNic]) -> Vec<NicPlacement> {
    if nics.is_empty() {
        return Vec::new();
    }
    (0..MAX_NICS)
        .filter_map(nic_slot)
        .filter(|s| !nics.iter().any(|n| n.slot == *s))
        .filter_map(|s| NicPlacement::for_slot(s).ok())
        .take(SPARE_SLOTS)
        .collect()
}

/// The root port a NIC slot's device sits on (its QEMU `id`, the bus of a hot-added NIC).
pub fn root_port_id(p: &NicPlacement) -> String {
    format!("nicport{:02x}{}", p.bridge_dev, p.func)
}

/// QEMU arguments for a VM's NICs: the root ports (function-0 placeholders first), then each
/// NIC with its netdev; `spare` slots get their root port only, for NICs hot-added later
/// (`network connect`). Put them before other devices (see the module docs).
pub fn qemu_nic_args(nics: &[NicDevice], spare: &[NicPlacement]) -> Vec<String> {
    let mut args = Vec::new();
    if !spare.is_empty() {
        // Hot-plug the PCIe way (the root ports' own slot control, which the guest kernel's
        // pciehp drives), not through ACPI, which q35 uses by default since QEMU 6.1 and
        // the container kernel leaves out.
        args.push("-global".into());
        args.push("ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into());
    }
    let ports: Vec<&NicPlacement> = nics.iter().map(|n| &n.placement).chain(spare).collect();
    let mut placeholders = Vec::new();
    for p in &ports {
        if p.needs_function0() && !placeholders.contains(&p.bridge_dev) {
            placeholders.push(p.bridge_dev);
            // An empty port: no hot-plug, no windows reserved for devices that never come.
            args.push("-device".into());
            args.push(format!(
                "pcie-root-port,id=nicslot{dev:02x},bus=pcie.0,addr={dev:#04x}.0,multifunction=on,\
                 chassis=1,slot={},hotplug=off,io-reserve=0,mem-reserve=0,pref64-reserve=0",
                p.bridge_dev * 8,
                dev = p.bridge_dev
            ));
        }
    }
    let hotplug = if spare.is_empty() { "off" } else { "on" };
    for p in &ports {
        // Hot-plug on when NICs may come and go, so that the one at boot may go too. No I/O
        // window: neither NIC model has I/O BARs, and the 64 KiB of x86 I/O ports would not
        // cover a 4 KiB window per port.
        args.push("-device".into());
        args.push(format!(
            "pcie-root-port,id={},bus=pcie.0,addr={},chassis=1,slot={},hotplug={hotplug},io-reserve=0",
            root_port_id(p),
            p.root_port_addr(),
            p.bridge_dev * 8 + p.func
        ));
    }
    for n in nics {
        args.push("-netdev".into());
        args.push(n.netdev.clone());
        args.push("-device".into());
        args.push(n.device_arg());
    }
    args
}

impl NicDevice {
    /// The `-device` argument (or `device_add` properties) of the NIC.
    pub fn device_arg(&self) -> String {
        format!(
            "{},id=nic{:02x},netdev={},bus={},addr={:#04x}.0,mac={},romfile=",
            self.model.device(),
            self.placement.bridge_dev,
            self.netdev_id,
            root_port_id(&self.placement),
            self.placement.dev,
            self.mac
        )
    }
}

/// A MAC address for a container's NIC: VMware's OUI (00:50:56, as vSphere gives container
/// VMs), then bytes of the container ID and the NIC index, so it is stable across restarts.
pub fn mac_for(id: &str, index: usize) -> String {
    let byte = |i: usize| {
        id.get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    // The third byte keeps VMware's rule for manual addresses (00:50:56:00-3f:…).
    format!(
        "00:50:56:{:02x}:{:02x}:{:02x}",
        byte(0) & 0x3f,
        byte(1),
        (index as u8).wrapping_add(byte(2) & 0xf0)
    )
}

/// A NIC attached to a container, as its metadata keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedNic {
    /// The network's definition when the container was created.
    pub network: Network,
    pub slot: u32,
    #[serde(default)]
    pub model: NicModel,
    pub mac: String,
    /// A static address (`--ip`).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The address the port layer assigned from the network's pool (see [`crate::ipam`]);
    /// equal to `ip` when the user gave one.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Names other containers on the network resolve to this one besides its name and
    /// short ID (`--network-alias`; user-defined networks only, as docker).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

impl AttachedNic {
    /// The container's address on this network: the one the port layer assigned (`--ip`
    /// or the next free one), else, for a container made before addresses were assigned,
    /// the network's first host address.
    pub fn guest_address(&self) -> Ipv4Addr {
        self.address().unwrap_or_else(|| self.network.dhcp_start())
    }

    /// The address the port layer assigned, if any.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.ip.or(self.address)
    }

    /// What QEMU builds for it: a NIC whose frames go over a stream socket to the
    /// network's segment (`sock`, see [`crate::netd`]).
    pub fn device(&self, sock: &Path) -> Result<NicDevice, NetworkError> {
        let placement = NicPlacement::for_slot(self.slot)?;
        // Named after the slot: a NIC hot-added later must not take a boot NIC's name.
        let netdev_id = format!("net{:02x}", placement.bridge_dev);
        Ok(NicDevice {
            placement,
            model: self.model,
            mac: self.mac.clone(),
            netdev: stream_netdev(&netdev_id, sock),
            netdev_id,
        })
    }
}

/// The `-netdev` argument of a NIC on a segment: QEMU connects to the segment's switch
/// over a Unix stream socket and exchanges length-prefixed frames with it (a `,` in the
/// path is doubled, QEMU's escape).
pub fn stream_netdev(id: &str, sock: &Path) -> String {
    format!(
        "stream,id={id},server=off,addr.type=unix,addr.path={}",
        sock.display().to_string().replace(',', ",,")
    )
}

/// What `run` asks for on the network side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    /// Networks to join, in order (the first is the default route); empty = no NIC.
    pub networks: Vec<String>,
    /// A static address on the first network.
    pub ip: Option<Ipv4Addr>,
    /// Ports published on the first network.
    pub ports: Vec<PortSpec>,
    pub model: NicModel,
    /// Nameservers for the container (`--dns`): replace every network's own.
    pub dns: Vec<Ipv4Addr>,
    /// `--network-alias` names, per network.
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

/// Resolves a run's networks into NICs: unknown networks, duplicates, a static address
/// outside the first network, clashing ports and bad aliases are errors. Each NIC's address
/// is claimed from its network's pool (see [`crate::ipam`]); on an error nothing stays
/// claimed.
pub fn attach(
    store: &NetworkStore,
    req: &NetworkRequest,
    id: &str,
    holder: crate::ipam::Holder<'_>,
) -> Result<Vec<AttachedNic>, NetworkError> {
    let nics = plan(store, req, id)?;
    let mut claimed: Vec<AttachedNic> = Vec::new();
    for mut nic in nics {
        // The network as defined, not with the container's `--dns` in it: the address
        // rules are the network's.
        let base = store.get(&nic.network.name)?;
        match crate::ipam::claim(store.state_root(), &base.ipam_pool(), id, nic.ip, holder) {
            Ok(ip) => {
                nic.address = Some(ip);
                claimed.push(nic);
            }
            Err(e) => {
                release(store, &claimed, id);
                return Err(e.into());
            }
        }
    }
    Ok(claimed)
}

/// Gives back the addresses of a container's NICs.
pub fn release(store: &NetworkStore, nics: &[AttachedNic], id: &str) {
    for n in nics {
        if let Some(ip) = n.address {
            crate::ipam::release(store.state_root(), &n.network.name, ip, id);
        }
    }
}

/// Checks a network alias (a DNS label sequence, as docker's resolver can answer it).
pub fn valid_alias(alias: &str) -> bool {
    !alias.is_empty()
        && alias.len() <= 253
        && alias.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// [`attach`] without the addresses: the NICs a request asks for.
fn plan(
    store: &NetworkStore,
    req: &NetworkRequest,
    id: &str,
) -> Result<Vec<AttachedNic>, NetworkError> {
    if req.networks.is_empty() {
        if req.ip.is_some() || !req.ports.is_empty() || !req.aliases.is_empty() {
            return Err(invalid(
                "--ip, -p and --network-alias need a network (the container has --network none)",
            ));
        }
        return Ok(Vec::new());
    }
    if req.networks.len() > MAX_NICS {
        return Err(NetworkError::TooMany);
    }
    for (i, p) in req.ports.iter().enumerate() {
        if let Some(q) = req.ports[..i].iter().find(|q| q.clashes(p)) {
            return Err(NetworkError::BadPort {
                spec: p.to_string(),
                why: format!("host port already published by {q}"),
            });
        }
    }
    if let Some(n) = req.aliases.keys().find(|n| !req.networks.contains(n)) {
        return Err(invalid(format!(
            "--network-alias for network {n}, which the container does not join"
        )));
    }
    let mut nics = Vec::new();
    for (i, name) in req.networks.iter().enumerate() {
        if name == NONE {
            return Err(invalid(
                "--network none cannot be combined with other networks",
            ));
        }
        if req.networks[..i].contains(name) {
            return Err(invalid(format!("network {name} given twice")));
        }
        let mut network = store.get(name)?;
        if !req.dns.is_empty() {
            network.dns = req.dns.clone();
        }
        let slot = nic_slot(i).ok_or(NetworkError::TooMany)?;
        let (ip, ports) = if i == 0 {
            (req.ip, req.ports.clone())
        } else {
            (None, Vec::new())
        };
        let aliases = req.aliases.get(name).cloned().unwrap_or_default();
        check_aliases(&network, &aliases)?;
        nics.push(AttachedNic {
            network,
            slot,
            model: req.model,
            mac: mac_for(id, i),
            ip,
            address: None,
            aliases,
            ports,
        });
    }
    Ok(nics)
}

/// Aliases are names on user-defined networks only (docker's rule: its default bridge
/// resolves no container names).
pub fn check_aliases(network: &Network, aliases: &[String]) -> Result<(), NetworkError> {
    if aliases.is_empty() {
        return Ok(());
    }
    if network.is_builtin() {
        return Err(invalid(
            "network-scoped aliases are supported only for containers in user-defined networks",
        ));
    }
    if let Some(a) = aliases.iter().find(|a| !valid_alias(a)) {
        return Err(invalid(format!("invalid network alias {a:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No container metadata (only the claims' ages count for the IPAM).
    fn no_containers(_: &str, _: &str, _: Ipv4Addr) -> Option<bool> {
        None
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_map_to_root_ports_as_the_tether_decodes_them() {
        // The port layer's first slot: dev 0, bus 5, fn 1 ⇒ behind 00:15.1.
        assert_eq!(nic_slot(0), Some(0x4A0));
        assert_eq!(
            decode_slot(0x4A0),
            SlotAddress {
                dev: 0,
                bus: 5,
                func: 1
            }
        );
        let p = NicPlacement::for_slot(0x4A0).unwrap();
        assert_eq!((p.bridge_dev, p.func, p.dev), (0x15, 1, 0));
        assert_eq!(p.root_port_addr(), "0x15.1");
        assert!(p.needs_function0());
        assert_eq!(
            p.guest_path(),
            "/sys/bus/pci/devices/0000:00:15.1/0000:*:00.0"
        );

        assert_eq!(nic_slot(1), Some(0x4C0));
        let p = NicPlacement::for_slot(0x4C0).unwrap();
        assert_eq!(p.root_port_addr(), "0x16.1");

        // Every slot the harness hands out lands on its own root-bus slot 0x15..=0x1f.
        let mut seen = Vec::new();
        for i in 0..MAX_NICS {
            let slot = nic_slot(i).unwrap();
            assert_eq!(slot, 0x4A0 + 32 * i as u32);
            let p = NicPlacement::for_slot(slot).unwrap();
            assert_eq!(p.bridge_dev, 0x15 + i as u32);
            assert_eq!(p.func, 1);
            assert!(!seen.contains(&p.bridge_dev));
            seen.push(p.bridge_dev);
        }
        // The 11th NIC shares slot 0x1f with the chipset's LPC bridge (function 0).
        let last = NicPlacement::for_slot(nic_slot(10).unwrap()).unwrap();
        assert_eq!(last.root_port_addr(), "0x1f.1");
        assert!(!last.needs_function0());
        assert_eq!(nic_slot(MAX_NICS), None);

        // Slots the port layer could use but q35 has no bridge slot for.
        assert!(NicPlacement::for_slot(0x4A0 + 32 * 11).is_err());
        assert!(NicPlacement::for_slot(0x4A0 + 32 * 26).is_err());
        assert!(NicPlacement::for_slot(5).is_err(), "on the root bus");
        // The old port layer's first slot (0xc0: bus 6, fn 0) needs no placeholder.
        let old = NicPlacement::for_slot(0xc0).unwrap();
        assert_eq!(old.root_port_addr(), "0x16.0");
        assert!(!old.needs_function0());
    }

    #[test]
    fn qemu_devices_for_nics() {
        let nic = |i: usize| NicDevice {
            placement: NicPlacement::for_slot(nic_slot(i).unwrap()).unwrap(),
            model: if i == 0 {
                NicModel::Virtio
            } else {
                NicModel::Vmxnet3
            },
            mac: mac_for("0123456789ab", i),
            netdev: format!("user,id=net{i}"),
            netdev_id: format!("net{i}"),
        };
        let pair = |args: Vec<String>| -> Vec<(String, String)> {
            args.chunks(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect()
        };
        // Without spare slots: root ports without hot-plug.
        let args = pair(qemu_nic_args(&[nic(0), nic(1)], &[]));
        let devices: Vec<&str> = args
            .iter()
            .map(|(flag, v)| {
                assert!(flag == "-device" || flag == "-netdev", "{flag}");
                v.as_str()
            })
            .collect();
        assert_eq!(devices.len(), 2 + 2 + 2 * 2);
        assert!(devices[0]
            .starts_with("pcie-root-port,id=nicslot15,bus=pcie.0,addr=0x15.0,multifunction=on,"));
        assert!(devices[1].starts_with("pcie-root-port,id=nicslot16,bus=pcie.0,addr=0x16.0,"));
        assert!(devices[2].starts_with("pcie-root-port,id=nicport151,bus=pcie.0,addr=0x15.1,"));
        assert!(devices[2].contains("hotplug=off"));
        assert!(devices[3].starts_with("pcie-root-port,id=nicport161,bus=pcie.0,addr=0x16.1,"));
        assert_eq!(devices[4], "user,id=net0");
        assert!(devices[5].starts_with(
            "virtio-net-pci,id=nic15,netdev=net0,bus=nicport151,addr=0x00.0,mac=00:50:56:"
        ));
        assert!(devices[5].ends_with("romfile="));
        assert!(devices[7].starts_with("vmxnet3,id=nic16,netdev=net1,bus=nicport161,"));

        // With a spare slot: hot-plug on every NIC port (so the boot NICs can go too),
        // native PCIe hot-plug, and a root port with nothing on it.
        let spare = NicPlacement::for_slot(nic_slot(2).unwrap()).unwrap();
        let args = pair(qemu_nic_args(&[nic(0)], &[spare]));
        assert_eq!(
            args[0],
            (
                "-global".to_owned(),
                "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".to_owned()
            )
        );
        let ports: Vec<&str> = args
            .iter()
            .map(|(_, v)| v.as_str())
            .filter(|v| v.starts_with("pcie-root-port,id=nicport"))
            .collect();
        assert_eq!(ports.len(), 2);
        assert!(ports[1].starts_with("pcie-root-port,id=nicport171,bus=pcie.0,addr=0x17.1,"));
        assert!(ports.iter().all(|p| p.contains("hotplug=on")));
        assert!(args
            .iter()
            .any(|(_, v)| v.starts_with("pcie-root-port,id=nicslot17,")));
        assert_eq!(args.iter().filter(|(f, _)| f == "-netdev").count(), 1);

        // chassis/slot pairs are unique.
        let slots: Vec<&str> = devices
            .iter()
            .filter(|d| d.starts_with("pcie-root-port"))
            .filter_map(|d| d.split(',').find(|p| p.starts_with("slot=")))
            .collect();
        let mut dedup = slots.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(slots.len(), dedup.len());
    }

    #[test]
    fn spare_slots_follow_the_nics() {
        let nic = |i: usize| AttachedNic {
            network: Network::bridge(),
            slot: nic_slot(i).unwrap(),
            model: Default::default(),
            mac: mac_for("ab", i),
            ip: None,
            address: None,
            aliases: vec![],
            ports: vec![],
        };
        assert!(spare_slots(&[]).is_empty(), "--network none");
        let s: Vec<u32> = spare_slots(&[nic(0)]).iter().map(|p| p.slot).collect();
        assert_eq!(s, vec![0x4C0, 0x4E0, 0x500]);
        // A gap left by a disconnected network is filled first.
        let s: Vec<u32> = spare_slots(&[nic(1)]).iter().map(|p| p.slot).collect();
        assert_eq!(s, vec![0x4A0, 0x4E0, 0x500]);
        let all: Vec<AttachedNic> = (0..MAX_NICS).map(nic).collect();
        assert!(spare_slots(&all).is_empty());
    }

    #[test]
    fn bridge_network_layout() {
        let b = Network::bridge();
        b.validate().unwrap();
        assert_eq!(b.gateway, ip("172.16.0.1"));
        assert_eq!(b.dhcp_start(), ip("172.16.0.2"));
        assert_eq!(b.slirp_dns(), ip("172.16.255.254"));
        assert_eq!(
            stream_netdev("net0", Path::new("/s/netd/ab,c/sw.sock")),
            "stream,id=net0,server=off,addr.type=unix,addr.path=/s/netd/ab,,c/sw.sock"
        );
        let pool = b.pool();
        assert_eq!(pool.first, Some(ip("172.16.0.0").into()));
        assert_eq!(pool.last, Some(ip("172.16.255.255").into()));
    }

    #[test]
    fn slirp_addresses_avoid_each_other() {
        let mut n = Network::bridge();
        n.subnet = "10.0.0.0/29".parse().unwrap();
        n.gateway = ip("10.0.0.6");
        // Last usable is the gateway: the DNS forwarder moves below it.
        assert_eq!(n.slirp_dns(), ip("10.0.0.5"));
        assert_eq!(n.dhcp_start(), ip("10.0.0.1"));
        n.dns = vec![ip("8.8.8.8"), ip("10.0.0.2")];
        assert_eq!(n.slirp_dns(), ip("10.0.0.2"));
        assert_eq!(n.dhcp_start(), ip("10.0.0.1"));
        n.gateway = ip("10.0.0.1");
        assert_eq!(n.dhcp_start(), ip("10.0.0.3"));
    }

    #[test]
    fn cidr_parsing() {
        let n: Ipv4Net = "10.1.2.3/16".parse().unwrap();
        assert_eq!(n.network(), ip("10.1.0.0"));
        assert_eq!(n.broadcast(), ip("10.1.255.255"));
        assert_eq!(n.mask(), ip("255.255.0.0"));
        assert!(n.contains(ip("10.1.200.1")) && !n.contains(ip("10.2.0.1")));
        assert!(n.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!n.overlaps(&"10.2.0.0/16".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/+8"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            "\"10.1.2.3/16\"",
            "stored as text"
        );
    }

    #[test]
    fn port_specs() {
        let p = parse_port_spec("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.count, p.proto),
            (Ipv4Addr::LOCALHOST, 8080, 80, 1, Proto::Tcp)
        );
        assert_eq!(p.vic(), vec!["8080:80/tcp"]);
        assert_eq!(
            p.hostfwds(ip("172.16.0.2")),
            vec!["tcp:127.0.0.1:8080-172.16.0.2:80"]
        );
        let p = parse_port_spec("0.0.0.0:53:53/udp").unwrap();
        assert_eq!(p.host_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.vic(), vec!["53:53/udp"]);
        let p = parse_port_spec("8000-8002:8000-8002/tcp").unwrap();
        assert_eq!(p.count, 3);
        assert_eq!(p.vic(), vec!["8000-8002/tcp"]);
        assert_eq!(p.hostfwds(ip("10.0.0.2")).len(), 3);
        let p = parse_port_spec("9000-9001:80-81").unwrap();
        assert_eq!(p.vic(), vec!["9000:80/tcp", "9001:81/tcp"]);
        assert_eq!(p.to_string(), "127.0.0.1:9000-9001->80-81/tcp");
        for bad in [
            "80",
            "",
            "a:80",
            "0:80",
            "8080:70000",
            "8080:80/sctp",
            "1.2.3:8080:80",
            "8000-8001:80",
            "9-8:9-8",
            "1:2:3:4",
            "1-200:1-200",
        ] {
            assert!(parse_port_spec(bad).is_err(), "{bad:?}");
        }
        let a = parse_port_spec("8000-8010:80-90").unwrap();
        assert!(a.clashes(&parse_port_spec("8010:1").unwrap()));
        assert!(!a.clashes(&parse_port_spec("8011:1").unwrap()));
        assert!(!a.clashes(&parse_port_spec("8005:1/udp").unwrap()));
        assert!(a.clashes(&parse_port_spec("0.0.0.0:8005:1").unwrap()));
        assert!(!a.clashes(&parse_port_spec("127.0.0.2:8005:1").unwrap()));
    }

    #[test]
    fn store_and_attach() {
        let dir = std::env::temp_dir().join(format!(
            "vch-net-{}-{}",
            std::process::id(),
            crate::records::new_id().get(..8).unwrap_or("x")
        ));
        let store = NetworkStore::new(&dir);
        assert_eq!(store.list().len(), 1, "bridge is built in");
        assert!(store.remove(BRIDGE).is_err());
        let a = store
            .create(&CreateNetwork {
                name: "back".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.subnet.to_string(), "172.17.0.0/16");
        assert_eq!(a.gateway, ip("172.17.0.1"));
        let b = store
            .create(&CreateNetwork {
                name: "ext".into(),
                kind: NetType::External,
                subnet: Some("10.20.0.0/24".parse().unwrap()),
                gateway: Some(ip("10.20.0.254")),
                dns: vec![ip("10.20.0.53")],
                routes: vec!["10.30.0.0/16".parse().unwrap()],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(b.trust, guestinfo::trust_level::PUBLISHED);
        assert_eq!(b.slirp_dns(), ip("10.20.0.53"));
        assert_eq!(b.dhcp_start(), ip("10.20.0.1"));
        for bad in [
            CreateNetwork {
                name: "back".into(),
                ..Default::default()
            },
            CreateNetwork {
                name: "bridge".into(),
                ..Default::default()
            },
            CreateNetwork {
                name: "none".into(),
                ..Default::default()
            },
            CreateNetwork {
                name: "a.b".into(),
                ..Default::default()
            },
            CreateNetwork {
                name: "over".into(),
                subnet: Some("172.17.5.0/24".parse().unwrap()),
                ..Default::default()
            },
            CreateNetwork {
                name: "hostbits".into(),
                subnet: Some("10.9.0.1/24".parse().unwrap()),
                ..Default::default()
            },
            CreateNetwork {
                name: "gw".into(),
                subnet: Some("10.9.0.0/24".parse().unwrap()),
                gateway: Some(ip("10.8.0.1")),
                ..Default::default()
            },
            CreateNetwork {
                name: "tiny".into(),
                subnet: Some("10.9.0.0/30".parse().unwrap()),
                ..Default::default()
            },
        ] {
            assert!(store.create(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(store.list().len(), 3);

        let req = NetworkRequest {
            networks: vec!["bridge".into(), "ext".into()],
            ip: Some(ip("172.16.0.10")),
            ports: vec![parse_port_spec("8080:80").unwrap()],
            model: NicModel::Virtio,
            dns: Vec::new(),
            aliases: [("ext".to_owned(), vec!["api".to_owned()])].into(),
        };
        let nics = attach(&store, &req, "abcdef", &no_containers).unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].slot, 0x4A0);
        assert_eq!(nics[1].slot, 0x4C0);
        assert_eq!(nics[0].guest_address(), ip("172.16.0.10"));
        // The port layer's next free address (the gateway is .254, the DNS address .53).
        assert_eq!(nics[1].guest_address(), ip("10.20.0.1"));
        assert_eq!(nics[1].aliases, vec!["api"]);
        assert!(nics[1].ports.is_empty() && nics[1].ip.is_none());
        assert_ne!(nics[0].mac, nics[1].mac);
        let dev = nics[0].device(Path::new("/s/sw.sock")).unwrap();
        assert!(dev.netdev.ends_with("addr.path=/s/sw.sock"));
        // A second container gets the next addresses; the same --ip is refused.
        let again = NetworkRequest {
            networks: vec!["ext".into()],
            ..Default::default()
        };
        assert_eq!(
            attach(&store, &again, "fedcba", &no_containers).unwrap()[0].address,
            Some(ip("10.20.0.2"))
        );
        let taken = NetworkRequest {
            networks: vec!["bridge".into()],
            ip: Some(ip("172.16.0.10")),
            ..Default::default()
        };
        assert!(attach(&store, &taken, "other", &no_containers).is_err());

        let bad_reqs = [
            NetworkRequest {
                networks: vec!["nope".into()],
                ..Default::default()
            },
            NetworkRequest {
                networks: vec!["bridge".into(), "bridge".into()],
                ..Default::default()
            },
            NetworkRequest {
                networks: vec!["bridge".into(), "none".into()],
                ..Default::default()
            },
            NetworkRequest {
                networks: vec!["bridge".into()],
                ip: Some(ip("10.0.0.1")),
                ..Default::default()
            },
            NetworkRequest {
                networks: vec!["bridge".into()],
                ip: Some(ip("172.16.0.1")),
                ..Default::default()
            },
            NetworkRequest {
                networks: vec![],
                ports: vec![parse_port_spec("1:1").unwrap()],
                ..Default::default()
            },
            NetworkRequest {
                networks: vec!["bridge".into()],
                ports: vec![
                    parse_port_spec("1:1").unwrap(),
                    parse_port_spec("1:2").unwrap(),
                ],
                ..Default::default()
            },
            // Aliases: not on the default bridge, not for a network not joined, not bad.
            NetworkRequest {
                networks: vec!["bridge".into()],
                aliases: [("bridge".to_owned(), vec!["web".to_owned()])].into(),
                ..Default::default()
            },
            NetworkRequest {
                networks: vec!["ext".into()],
                aliases: [("back".to_owned(), vec!["web".to_owned()])].into(),
                ..Default::default()
            },
            NetworkRequest {
                networks: vec!["ext".into()],
                aliases: [("ext".to_owned(), vec!["a b".to_owned()])].into(),
                ..Default::default()
            },
        ];
        for r in bad_reqs {
            assert!(attach(&store, &r, "x", &no_containers).is_err(), "{r:?}");
        }
        store.remove("back").unwrap();
        assert!(matches!(store.get("back"), Err(NetworkError::NoSuch(_))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
