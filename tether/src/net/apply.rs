//! Applying the config's network endpoints to the VM's NICs (lifecycle §6.1–§6.6).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use guestinfo::config::{IpNet, NetworkEndpoint};
use guestinfo::ContainerConfig;

use super::dhcp::{self, Lease, Params};
use super::link::{Link, LinkError, Netlink, Route, TABLE_MAIN};
use super::{packet, pci, NetError};
use crate::etc::{self, ResolvConf};

/// The policy-routing table of the VCH's own bridge set-up ("bridge.out").
pub const BRIDGE_OUT_TABLE: u32 = 201;

/// Where the networking code finds and puts things; [`Paths::default`] is the real system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// sysfs PCI devices (`/sys/bus/pci/devices`).
    pub pci_devices: PathBuf,
    /// DMI identity files (`/sys/class/dmi/id`).
    pub dmi: PathBuf,
    /// The tether's working copies of `/etc` files (`/.tether/etc`).
    pub private_etc: PathBuf,
    /// The container's `/etc`, where the working copies are bind-mounted; `None` keeps them
    /// private (tests).
    pub etc: Option<PathBuf>,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            pci_devices: pci::SYSFS_PCI_DEVICES.into(),
            dmi: "/sys/class/dmi/id".into(),
            private_etc: "/.tether/etc".into(),
            etc: Some("/etc".into()),
        }
    }
}

/// A DHCP lease held on one NIC, shared by every dynamic endpoint on that NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicLease {
    pub ifname: String,
    /// What the client said and asked for; renewals say the same.
    pub params: Params,
    pub lease: Lease,
    /// When `lease` was granted.
    pub granted: Instant,
    /// Names (`networks|<name>`) of the endpoints using this lease.
    pub endpoints: Vec<String>,
    /// Routes through the DHCP router that renewals must keep pointing at the router in
    /// use: a default route (some endpoint is the default network) and destinations.
    pub default_route: bool,
    pub destinations: Vec<(Ipv4Addr, u8)>,
}

impl NicLease {
    /// Notes the routes of an endpoint that uses this lease's router.
    fn add_routes_of(&mut self, name: &str, ep: &NetworkEndpoint) {
        if specified_v4(ep.network.gateway.ip).is_some() {
            return;
        }
        if ep.network.default {
            self.default_route = true;
            return;
        }
        for d in destinations(name, ep) {
            if !self.destinations.contains(&d) {
                self.destinations.push(d);
            }
        }
    }
}

/// The DHCP leases the tether holds, and the endpoints it configured; cheap to clone (a
/// shared handle).
#[derive(Debug, Clone, Default)]
pub struct Leases {
    inner: Arc<Mutex<Vec<NicLease>>>,
    pub(crate) paths: Arc<Paths>,
    /// Names of the endpoints configured since boot (see [`super::reload`]).
    configured: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl Leases {
    pub(crate) fn from_parts(leases: Vec<NicLease>, paths: Paths) -> Leases {
        Leases {
            inner: Arc::new(Mutex::new(leases)),
            paths: Arc::new(paths),
            configured: Arc::default(),
        }
    }

    fn configured_set(&self) -> MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.configured.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoints configured so far.
    pub fn configured(&self) -> std::collections::BTreeSet<String> {
        self.configured_set().clone()
    }

    pub(crate) fn mark_configured(&self, name: &str) {
        self.configured_set().insert(name.to_owned());
    }

    /// Forgets a withdrawn endpoint: no longer configured, and no lease renewed for it.
    pub(crate) fn forget(&self, name: &str) {
        self.configured_set().remove(name);
        let mut leases = self.lock();
        for l in leases.iter_mut() {
            l.endpoints.retain(|e| e != name);
        }
        leases.retain(|l| !l.endpoints.is_empty());
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<NicLease>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leases as they are now.
    pub fn snapshot(&self) -> Vec<NicLease> {
        self.lock().clone()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Configures every network endpoint of `cfg` on the real system (IPv6 off everywhere
/// first); see [`apply_with`].
pub fn apply(cfg: &mut ContainerConfig, hostname: &str) -> Result<Leases, NetError> {
    ipv6_off_everywhere();
    apply_with(cfg, hostname, Paths::default())
}

/// Configures every network endpoint of `cfg`: loopback up, then each endpoint (internal
/// networks first, each group by name) matched to its NIC, named, brought up, addressed,
/// announced and routed; then `/etc/hosts` and `/etc/resolv.conf`. Fills in the endpoints'
/// RW fields for the write-back. `hostname` is the full hostname (DHCP option 12).
pub fn apply_with(
    cfg: &mut ContainerConfig,
    hostname: &str,
    paths: Paths,
) -> Result<Leases, NetError> {
    super::link::loopback_up().map_err(NetError::Setup)?;
    let order = endpoint_order(cfg);
    if order.is_empty() {
        return Ok(Leases::from_parts(Vec::new(), paths));
    }
    let nl = Netlink::open().map_err(NetError::Setup)?;
    // Option 12 only when the config names the host; the original sent nothing otherwise.
    let dhcp_hostname = (!cfg.hostname.is_empty()).then(|| hostname.to_owned());
    let mut ctx = Ctx {
        nl,
        paths: &paths,
        dhcp_hostname,
        leases: Vec::new(),
        by_slot: BTreeMap::new(),
        bridge_out: None,
    };
    for name in &order {
        let Some(ep) = cfg.networks.get_mut(name) else {
            continue;
        };
        ctx.apply_endpoint(name, ep)?;
    }
    publish_names(cfg, &paths)?;
    let leases = Leases::from_parts(ctx.leases, paths);
    for name in &order {
        leases.mark_configured(name);
    }
    Ok(leases)
}

/// The networks are IPv4, and docker runs a container whose networks have no IPv6 with
/// `disable_ipv6` at 1 for `all`, `default` and every interface. The kernel's command line
/// (`ipv6.disable_ipv6=1`, see `bootstrap-iso`) starts `default` and so every interface there
/// without the work of `::1` and its routes when `lo` comes up; `all` is not covered by it
/// and is set here, before anything runs that could read it. A kernel without IPv6 has no
/// such file: nothing to do.
fn ipv6_off_everywhere() {
    const ALL: &str = "/proc/sys/net/ipv6/conf/all/disable_ipv6";
    if let Err(e) = std::fs::write(ALL, b"1") {
        tracing::debug!(error = %e, "{ALL}");
    }
}

/// Configures one more endpoint of `cfg` (a network connected while the container runs)
/// as [`apply_with`] configures each at boot; its lease, if DHCP gives it one, joins
/// `leases` (renewals are planned at boot: a hot-added DHCP endpoint keeps its first
/// lease). `/etc/hosts` and `/etc/resolv.conf` are the caller's to publish.
pub fn apply_one(
    cfg: &mut ContainerConfig,
    name: &str,
    hostname: &str,
    leases: &Leases,
) -> Result<(), NetError> {
    let nl = Netlink::open().map_err(NetError::Setup)?;
    let paths = leases.paths.clone();
    let mut ctx = Ctx {
        nl,
        paths: &paths,
        dhcp_hostname: (!cfg.hostname.is_empty()).then(|| hostname.to_owned()),
        leases: Vec::new(),
        by_slot: BTreeMap::new(),
        bridge_out: None,
    };
    let Some(ep) = cfg.networks.get_mut(name) else {
        return Ok(());
    };
    ctx.apply_endpoint(name, ep)?;
    leases.lock().extend(ctx.leases);
    leases.mark_configured(name);
    Ok(())
}

/// The address an endpoint was given, if any.
pub(crate) fn assigned(ep: &NetworkEndpoint) -> Option<(Ipv4Addr, u8)> {
    specified_v4(ep.assigned.ip).zip(v4_prefix(&ep.assigned))
}

/// Internal networks first, then the others; by name within each group.
pub fn endpoint_order(cfg: &ContainerConfig) -> Vec<String> {
    let (mut first, rest): (Vec<_>, Vec<_>) = cfg.networks.iter().partition(|(_, ep)| ep.internal);
    first.extend(rest);
    first.into_iter().map(|(name, _)| name.clone()).collect()
}

fn v4(ip: Option<IpAddr>) -> Option<Ipv4Addr> {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => Some(v4),
        _ => None,
    }
}

/// A set (non-nil, non-zero) IPv4 address.
fn specified_v4(ip: Option<IpAddr>) -> Option<Ipv4Addr> {
    v4(ip).filter(|ip| !ip.is_unspecified())
}

/// The IPv4 prefix length of a Go `IPNet`, whose mask may be 4 bytes or (for a 16-byte
/// address) 16 bytes with 96 leading ones.
pub fn v4_prefix(net: &IpNet) -> Option<u8> {
    let len = net.prefix_len()?;
    match net.mask? {
        IpAddr::V4(_) => Some(len),
        IpAddr::V6(_) => len.checked_sub(96),
    }
}

fn mask_of(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// How an endpoint gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Dhcp,
    Static(Ipv4Addr, u8),
    /// Static `0.0.0.0`: someone else configures this NIC; the tether touches nothing.
    External,
}

/// Lifecycle §6.2: dynamic iff not static and no (or an unspecified) IP.
pub fn addressing(network: &str, ep: &NetworkEndpoint) -> Result<Addressing, NetError> {
    let ip = ep.ip.as_ref().and_then(|n| n.ip);
    let unspecified = ip.is_none_or(|ip| ip.to_canonical().is_unspecified());
    if !ep.static_ip && unspecified {
        return Ok(Addressing::Dhcp);
    }
    let bad = |reason: String| NetError::Config {
        network: network.to_owned(),
        reason,
    };
    let Some(ip) = ip else {
        return Err(bad("static address configured without an IP".into()));
    };
    if ip.to_canonical().is_unspecified() {
        return Ok(Addressing::External);
    }
    let Some(addr) = v4(Some(ip)) else {
        return Err(bad(format!("IPv6 address {ip} is not supported")));
    };
    let prefix = ep.ip.as_ref().and_then(v4_prefix).ok_or_else(|| {
        // Name the mask at fault, in the form it was meant (an IPv4-mapped mask as IPv4).
        bad(match ep.ip.as_ref().and_then(|n| n.mask) {
            Some(mask) => format!(
                "static address {addr} has an invalid netmask {}",
                mask.to_canonical()
            ),
            None => format!("static address {addr} has no netmask"),
        })
    })?;
    Ok(Addressing::Static(addr, prefix))
}

struct Ctx<'a> {
    nl: Netlink,
    paths: &'a Paths,
    dhcp_hostname: Option<String>,
    leases: Vec<NicLease>,
    /// PCI slot ⇒ index into `leases`.
    by_slot: BTreeMap<u32, usize>,
    /// Whether a policy rule uses table 201, once asked.
    bridge_out: Option<bool>,
}

impl Ctx<'_> {
    fn apply_endpoint(&mut self, name: &str, ep: &mut NetworkEndpoint) -> Result<(), NetError> {
        let slot = pci::parse_slot(&ep.common.id).map_err(|source| NetError::Nic {
            network: name.to_owned(),
            source,
        })?;
        let ifname =
            pci::interface_name(&self.paths.pci_devices, slot).map_err(|source| NetError::Nic {
                network: name.to_owned(),
                source,
            })?;
        let link_err = |ifname: &str| {
            let (network, ifname) = (name.to_owned(), ifname.to_owned());
            move |source| NetError::Link {
                network,
                ifname,
                source,
            }
        };
        let link = self
            .name_link(&ifname, &ep.common.name)
            .map_err(link_err(&ifname))?;
        self.nl
            .set_up(link.index, true)
            .map_err(link_err(&link.name))?;
        tracing::debug!(network = name, ifname = %link.name, slot, "NIC up");

        let (addr, prefix, lease) = match addressing(name, ep)? {
            Addressing::External => {
                tracing::info!(network = name, ifname = %link.name, "address managed externally");
                return Ok(());
            }
            Addressing::Static(addr, prefix) => (addr, prefix, None),
            Addressing::Dhcp => {
                let lease = self.lease_for(name, ep, slot, &link)?;
                (lease.addr, lease.prefix_len(), Some(lease))
            }
        };

        // Address change: drop what this endpoint had before if it differs.
        let old = specified_v4(ep.assigned.ip).zip(v4_prefix(&ep.assigned));
        if let Some((old_ip, old_prefix)) = old.filter(|o| *o != (addr, prefix)) {
            self.nl
                .delete_address(link.index, old_ip, old_prefix)
                .map_err(link_err(&link.name))?;
        }
        self.nl
            .add_address(link.index, addr, prefix)
            .map_err(link_err(&link.name))?;
        tracing::info!(network = name, ifname = %link.name, address = %format!("{addr}/{prefix}"),
            dhcp = lease.is_some(), "address configured");

        publish_endpoint(ep, addr, prefix, lease.as_ref());
        announce(&link, addr);

        let gateway = specified_v4(ep.network.assigned.gateway.ip);
        if let Some(gw) = gateway {
            let table201 = *self.bridge_out.get_or_insert_with(|| {
                self.nl
                    .rule_uses_table(BRIDGE_OUT_TABLE)
                    .unwrap_or_else(|e| {
                        // A kernel without policy routing (ours) has no rules to honour.
                        tracing::debug!(error = %e, "cannot list routing rules");
                        false
                    })
            });
            let plan = RoutePlan {
                ifindex: link.index,
                gateway: gw,
                prefix,
                default: ep.network.default,
                // The default network needs no others (lifecycle §6.4).
                destinations: if ep.network.default {
                    Vec::new()
                } else {
                    destinations(name, ep)
                },
                table201,
            };
            plan.apply(&mut self.nl, None)
                .map_err(link_err(&link.name))?;
        }
        Ok(())
    }

    /// Lifecycle §6.1 renaming: keep a name that already matches; rename kernel `eth*`
    /// names; else give the link an alias if it has none.
    fn name_link(&mut self, ifname: &str, want: &str) -> Result<Link, LinkError> {
        let link = self.nl.link_by_name(ifname)?;
        if want.is_empty() || link.name == want || link.alias.as_deref() == Some(want) {
            return Ok(link);
        }
        if link.name.starts_with("eth") {
            self.nl.set_up(link.index, false)?;
            self.nl.rename(link.index, want)?;
            tracing::info!(from = %link.name, to = want, "interface renamed");
            return self.nl.link_by_index(link.index);
        }
        if link.alias.is_none() {
            self.nl.set_alias(link.index, want)?;
            return self.nl.link_by_index(link.index);
        }
        Ok(link)
    }

    /// The DHCP lease of the NIC in `slot`: an earlier endpoint's, or a new one.
    fn lease_for(
        &mut self,
        name: &str,
        ep: &NetworkEndpoint,
        slot: u32,
        link: &Link,
    ) -> Result<Lease, NetError> {
        if let Some(l) = self
            .by_slot
            .get(&slot)
            .and_then(|i| self.leases.get_mut(*i))
        {
            l.endpoints.push(name.to_owned());
            return Ok(l.lease.clone());
        }
        let mac: [u8; 6] = link
            .mac
            .as_slice()
            .try_into()
            .map_err(|_| NetError::Config {
                network: name.to_owned(),
                reason: format!("interface {} has no Ethernet address", link.name),
            })?;
        let (machine, source) = dhcp::machine_id(&self.paths.dmi, &mac);
        tracing::debug!(?source, "DHCP client identity");
        let params = Params {
            ifindex: link.index,
            mac,
            client_id: dhcp::client_id(&mac, &machine),
            hostname: self.dhcp_hostname.clone().filter(|_| !ep.internal),
            want_router: specified_v4(ep.network.gateway.ip).is_none(),
            want_dns: ep.network.nameservers.is_empty(),
        };
        let lease = dhcp::acquire(&params).map_err(|source| NetError::Dhcp {
            network: name.to_owned(),
            source,
        })?;
        tracing::info!(network = name, ifname = %link.name, address = %lease.addr,
            server = %lease.server, lease_s = lease.lease_secs, "DHCP lease acquired");
        let mut nic = NicLease {
            ifname: link.name.clone(),
            params,
            lease: lease.clone(),
            granted: Instant::now(),
            endpoints: vec![name.to_owned()],
            default_route: false,
            destinations: Vec::new(),
        };
        nic.add_routes_of(name, ep);
        self.by_slot.insert(slot, self.leases.len());
        self.leases.push(nic);
        Ok(lease)
    }
}

/// Sends the gratuitous ARP for a new address; failure only costs neighbours a stale cache.
pub(crate) fn announce(link: &Link, addr: Ipv4Addr) {
    let Ok(mac) = <[u8; 6]>::try_from(link.mac.as_slice()) else {
        return;
    };
    if let Err(e) = packet::announce(link.index, mac, addr) {
        tracing::warn!(ifname = %link.name, error = %e, "gratuitous ARP failed");
    }
}

/// The endpoint's non-default routes, IPv4 and well-formed only.
fn destinations(name: &str, ep: &NetworkEndpoint) -> Vec<(Ipv4Addr, u8)> {
    ep.network
        .destinations
        .iter()
        .filter_map(|d| match (v4(d.ip), v4_prefix(d)) {
            (Some(ip), Some(len)) => Some((mask_apply(ip, len), len)),
            _ => {
                tracing::warn!(network = name, destination = ?d, "route destination skipped");
                None
            }
        })
        .collect()
}

fn mask_apply(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & u32::from(mask_of(prefix)))
}

/// Writes the RW fields the original published for an addressed endpoint (lifecycle §6.2):
/// `assigned`; the gateway and name servers in use (configured ones win, DHCP fills gaps).
pub(crate) fn publish_endpoint(
    ep: &mut NetworkEndpoint,
    addr: Ipv4Addr,
    prefix: u8,
    lease: Option<&Lease>,
) {
    ep.assigned = IpNet {
        ip: Some(addr.into()),
        mask: Some(mask_of(prefix).into()),
    };
    let configured_gw = specified_v4(ep.network.gateway.ip).is_some();
    match lease {
        None => {
            ep.network.assigned.gateway = ep.network.gateway.clone();
            ep.network.assigned.nameservers = ep.network.nameservers.clone();
        }
        Some(l) => {
            ep.network.assigned.gateway = if configured_gw {
                ep.network.gateway.clone()
            } else {
                IpNet {
                    ip: l.gateway.map(IpAddr::from),
                    mask: l.gateway.map(|_| IpAddr::from(l.mask)),
                }
            };
            if !ep.network.nameservers.is_empty() {
                ep.network.assigned.nameservers = ep.network.nameservers.clone();
            } else if !l.dns.is_empty() {
                ep.network.assigned.nameservers = l.dns.iter().map(|&ip| ip.into()).collect();
            }
        }
    }
}

/// Lifecycle §6.4 for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutePlan {
    pub ifindex: u32,
    pub gateway: Ipv4Addr,
    /// The endpoint's address prefix length (masks the gateway for table 201).
    pub prefix: u8,
    pub default: bool,
    pub destinations: Vec<(Ipv4Addr, u8)>,
    pub table201: bool,
}

impl RoutePlan {
    /// Installs the routes: the default route, then routes to the destinations (empty for
    /// a default network's own plan; a NIC shared by several networks may need both).
    /// `old_gateway`: routes via a previous gateway to remove first
    /// (after a DHCP renewal changed it).
    pub fn apply(&self, nl: &mut Netlink, old_gateway: Option<Ipv4Addr>) -> Result<(), LinkError> {
        let route = |dst, gateway, table| Route {
            dst,
            gateway,
            oif: self.ifindex,
            table,
        };
        if self.default {
            nl.delete_route(&route(None, None, TABLE_MAIN))?;
            if self.table201 {
                nl.delete_route(&route(None, None, BRIDGE_OUT_TABLE))?;
            }
            nl.add_route(&route(None, Some(self.gateway), TABLE_MAIN))?;
            if self.table201 {
                let net = (mask_apply(self.gateway, self.prefix), self.prefix);
                for r in [
                    route(Some(net), None, BRIDGE_OUT_TABLE),
                    route(None, Some(self.gateway), BRIDGE_OUT_TABLE),
                ] {
                    if let Err(e) = nl.add_route(&r) {
                        tracing::error!(route = %r, error = %e, "bridge.out route not added");
                    }
                }
            }
        }
        for &dst in &self.destinations {
            if let Some(old) = old_gateway.filter(|g| *g != self.gateway) {
                let _ = nl.delete_route(&route(Some(dst), Some(old), TABLE_MAIN));
            }
            let r = route(Some(dst), Some(self.gateway), TABLE_MAIN);
            if let Err(e) = nl.add_route(&r) {
                tracing::error!(route = %r, error = %e, "route not added");
            }
        }
        Ok(())
    }
}

/// Publishes `/etc/hosts` (`<network name>.localhost` per addressed endpoint) and
/// `/etc/resolv.conf` (lifecycle §6.5, §6.6) from the config as it now is. Deriving both
/// from the whole config, rather than adding to them, drops stale name servers, which the
/// original never did.
pub fn publish_names(cfg: &ContainerConfig, paths: &Paths) -> Result<(), NetError> {
    let mut resolv = ResolvConf::default();
    let mut names = Vec::new();
    for name in endpoint_order(cfg) {
        let Some(ep) = cfg.networks.get(&name) else {
            continue;
        };
        if matches!(addressing(&name, ep), Ok(Addressing::External) | Err(_)) {
            continue;
        }
        let Some(addr) = specified_v4(ep.assigned.ip) else {
            continue;
        };
        if !ep.network.common.name.is_empty() {
            names.push((addr, format!("{}.localhost", ep.network.common.name)));
        }
        let servers = if ep.network.nameservers.is_empty() {
            &ep.network.assigned.nameservers
        } else {
            &ep.network.nameservers
        };
        let before = resolv.nameservers().len();
        let mut any = false;
        for ip in servers.iter().filter_map(|ip| specified_v4(Some(*ip))) {
            resolv.add(ip.into());
            any = true;
        }
        if !any {
            if let Some(gw) = specified_v4(ep.network.assigned.gateway.ip) {
                resolv.add(gw.into());
            }
        }
        tracing::debug!(
            network = %name,
            added = resolv.nameservers().len() - before,
            "name servers"
        );
    }
    let etc = paths.etc.as_deref();
    etc::update_hosts(&paths.private_etc, etc, |h| {
        for (addr, n) in &names {
            h.set((*addr).into(), n);
        }
    })?;
    etc::publish_resolv(&paths.private_etc, etc, &resolv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use guestinfo::config::{Common, ContainerNetwork};

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
                ..ContainerNetwork::default()
            },
            ..NetworkEndpoint::default()
        }
    }

    #[test]
    fn order_is_internal_first_then_by_name() {
        let mut cfg = ContainerConfig::default();
        for (n, internal) in [
            ("zeta", true),
            ("bridge", false),
            ("alpha", false),
            ("int", true),
        ] {
            let mut ep = endpoint("1184", n);
            ep.internal = internal;
            cfg.networks.insert(n.into(), ep);
        }
        assert_eq!(endpoint_order(&cfg), ["int", "zeta", "alpha", "bridge"]);
    }

    #[test]
    fn addressing_rules() {
        let mut ep = endpoint("1184", "bridge");
        assert_eq!(addressing("b", &ep).unwrap(), Addressing::Dhcp);
        ep.ip = Some(IpNet {
            ip: Some(ip("0.0.0.0")),
            mask: None,
        });
        assert_eq!(addressing("b", &ep).unwrap(), Addressing::Dhcp);
        ep.static_ip = true;
        assert_eq!(addressing("b", &ep).unwrap(), Addressing::External);
        // A 16-byte address with a 4-byte mask, as the PL may write it.
        ep.ip = Some(IpNet {
            ip: Some(ip("::ffff:172.16.0.5")),
            mask: Some(ip("255.255.0.0")),
        });
        assert_eq!(
            addressing("b", &ep).unwrap(),
            Addressing::Static("172.16.0.5".parse().unwrap(), 16)
        );
        // A 16-byte mask for it.
        ep.ip = Some(IpNet {
            ip: Some(ip("::ffff:172.16.0.5")),
            mask: Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00")),
        });
        assert_eq!(
            addressing("b", &ep).unwrap(),
            Addressing::Static("172.16.0.5".parse().unwrap(), 24)
        );
        // Not static but with an address: static all the same.
        ep.static_ip = false;
        assert!(matches!(
            addressing("b", &ep).unwrap(),
            Addressing::Static(..)
        ));
        ep.ip = Some(IpNet {
            ip: Some(ip("172.16.0.5")),
            mask: Some(ip("255.0.255.0")),
        });
        let err = addressing("bridge", &ep).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network bridge: static address 172.16.0.5 has an invalid netmask 255.0.255.0"
        );
        // The same mask in its 16-byte form is named as IPv4; a missing one is said missing.
        ep.ip = Some(IpNet {
            ip: Some(ip("172.16.0.5")),
            mask: Some(ip("::ffff:255.0.255.0")),
        });
        assert!(addressing("b", &ep)
            .unwrap_err()
            .to_string()
            .ends_with("has an invalid netmask 255.0.255.0"));
        ep.ip = Some(IpNet {
            ip: Some(ip("172.16.0.5")),
            mask: None,
        });
        assert_eq!(
            addressing("b", &ep).unwrap_err().to_string(),
            "network b: static address 172.16.0.5 has no netmask"
        );
        ep.ip = Some(IpNet::new(ip("2001:db8::5"), 64));
        assert!(addressing("b", &ep)
            .unwrap_err()
            .to_string()
            .contains("IPv6"));
        ep.static_ip = true;
        ep.ip = None;
        assert!(addressing("b", &ep).is_err());
    }

    fn lease() -> Lease {
        Lease {
            addr: "192.0.2.10".parse().unwrap(),
            mask: "255.255.255.0".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            dns: vec!["192.0.2.53".parse().unwrap()],
            server: "192.0.2.1".parse().unwrap(),
            lease_secs: 3600,
        }
    }

    #[test]
    fn published_fields() {
        // DHCP fills what is not configured, in 4-byte form.
        let mut ep = endpoint("1184", "bridge");
        let l = lease();
        publish_endpoint(&mut ep, l.addr, 24, Some(&l));
        assert_eq!(ep.assigned, IpNet::new(ip("192.0.2.10"), 24));
        assert_eq!(ep.network.assigned.gateway, IpNet::new(ip("192.0.2.1"), 24));
        assert_eq!(ep.network.assigned.nameservers, vec![ip("192.0.2.53")]);
        let wire = guestinfo::encode(&ContainerConfig {
            networks: [("bridge".to_owned(), ep.clone())].into(),
            ..ContainerConfig::default()
        })
        .unwrap();
        assert_eq!(
            wire.get("guestinfo.vice..networks|bridge.assigned.IP")
                .map(String::as_str),
            Some("wAACCg==")
        );

        // Configured gateway and DNS win over DHCP's.
        let mut ep = endpoint("1184", "bridge");
        ep.network.gateway = IpNet::new(ip("::ffff:192.0.2.254"), 24);
        ep.network.nameservers = vec![ip("198.51.100.1")];
        publish_endpoint(&mut ep, l.addr, 24, Some(&l));
        assert_eq!(ep.network.assigned.gateway, ep.network.gateway);
        assert_eq!(ep.network.assigned.nameservers, vec![ip("198.51.100.1")]);

        // Static: the configured values, even when empty.
        let mut ep = endpoint("1184", "bridge");
        ep.network.assigned.nameservers = vec![ip("203.0.113.9")];
        publish_endpoint(&mut ep, "192.0.2.7".parse().unwrap(), 24, None);
        assert!(ep.network.assigned.nameservers.is_empty());
        assert!(ep.network.assigned.gateway.is_unset());

        // DHCP without DNS keeps what was published.
        let mut ep = endpoint("1184", "bridge");
        ep.network.assigned.nameservers = vec![ip("203.0.113.9")];
        let l2 = Lease {
            dns: vec![],
            gateway: None,
            ..lease()
        };
        publish_endpoint(&mut ep, l2.addr, 24, Some(&l2));
        assert_eq!(ep.network.assigned.nameservers, vec![ip("203.0.113.9")]);
        assert!(ep.network.assigned.gateway.is_unset());
    }

    #[test]
    fn hosts_and_resolv_from_the_config() {
        let d = std::env::temp_dir().join(format!("tether-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let paths = Paths {
            pci_devices: d.join("pci"),
            dmi: d.join("dmi"),
            private_etc: d.join("private"),
            etc: None,
        };
        let mut cfg = ContainerConfig::default();
        // bridge: DHCP DNS; ext: configured DNS (duplicate + new); int: no DNS ⇒ gateway;
        // mgmt: managed externally ⇒ nothing.
        let mut bridge = endpoint("1184", "bridge");
        publish_endpoint(
            &mut bridge,
            "172.16.0.2".parse().unwrap(),
            16,
            Some(&Lease {
                dns: vec!["172.16.0.1".parse().unwrap()],
                ..lease()
            }),
        );
        let mut ext = endpoint("1216", "public");
        ext.network.nameservers = vec![ip("8.8.8.8"), ip("172.16.0.1")];
        ext.network.gateway = IpNet::new(ip("203.0.113.1"), 24);
        publish_endpoint(&mut ext, "203.0.113.5".parse().unwrap(), 24, None);
        let mut int = endpoint("1248", "");
        int.internal = true;
        int.network.gateway = IpNet::new(ip("10.9.0.1"), 24);
        publish_endpoint(&mut int, "10.9.0.5".parse().unwrap(), 24, None);
        let mut mgmt = endpoint("1280", "mgmt");
        mgmt.static_ip = true;
        mgmt.ip = Some(IpNet {
            ip: Some(ip("0.0.0.0")),
            mask: None,
        });
        mgmt.assigned = IpNet::new(ip("198.51.100.7"), 24);
        cfg.networks.insert("bridge".into(), bridge);
        cfg.networks.insert("ext".into(), ext);
        cfg.networks.insert("int".into(), int);
        cfg.networks.insert("mgmt".into(), mgmt);
        publish_names(&cfg, &paths).unwrap();
        let resolv = std::fs::read_to_string(d.join("private/resolv.conf")).unwrap();
        assert_eq!(
            resolv,
            "nameserver 10.9.0.1\nnameserver 172.16.0.1\nnameserver 8.8.8.8\noptions timeout:15\noptions attempts:5\n"
        );
        let hosts = std::fs::read_to_string(d.join("private/hosts")).unwrap();
        assert!(hosts.contains("\n172.16.0.2 bridge.localhost\n"), "{hosts}");
        assert!(
            hosts.contains("\n203.0.113.5 public.localhost\n"),
            "{hosts}"
        );
        assert!(!hosts.contains("mgmt"), "{hosts}");
        assert!(!hosts.contains("10.9.0.5"), "{hosts}");

        // A renewal moving the bridge address moves its name.
        if let Some(ep) = cfg.networks.get_mut("bridge") {
            ep.assigned = IpNet::new(ip("172.16.0.3"), 16);
        }
        publish_names(&cfg, &paths).unwrap();
        let hosts = std::fs::read_to_string(d.join("private/hosts")).unwrap();
        assert!(hosts.contains("\n172.16.0.3 bridge.localhost\n"), "{hosts}");
        assert!(!hosts.contains("172.16.0.2"), "{hosts}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
