//! Networks that come and go while the container runs (`docker network connect` /
//! `disconnect`): on a reload the host's list of networks (`guestinfo.vice./networks`) is
//! compared with the endpoints configured so far. A new endpoint's NIC has just been
//! hot-added, so it is waited for before the endpoint is applied as at boot; a withdrawn
//! endpoint's address is deleted and the interface set down before its NIC is hot-removed.
//! `/etc/hosts` and `/etc/resolv.conf` are published again from what remains.
//!
//! The original tether configured networks once per boot and kept withdrawn ones (a reload
//! merges maps: entries the host no longer lists stay); here the host's list is what the
//! container has.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use guestinfo::ContainerConfig;

use super::apply::{self, Addressing, Leases};
use super::link::Netlink;
use super::{pci, NetError};

/// How long a hot-added NIC may take to appear (the guest's PCIe hot-plug takes about a
/// second under TCG).
pub const NIC_WAIT: Duration = Duration::from_secs(20);

/// The key listing the container's networks.
pub const NETWORKS_KEY: &str = "guestinfo.vice./networks";

/// Held while a reload's network changes are worked out and made, so that a second reload
/// sees the first one's result.
pub fn serialize() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The networks the host lists now, from the list key's value (`<nil>` or empty: none);
/// `None` if there is no such key (nothing changes then: a config that never listed
/// networks).
pub fn listed(value: Option<&str>) -> Option<Vec<String>> {
    let value = value?;
    Some(
        value
            .split('|')
            .filter(|n| !n.is_empty() && *n != "<nil>")
            .map(str::to_owned)
            .collect(),
    )
}

/// A withdrawn endpoint: its name, the slot of its NIC and the address it had.
pub type Withdrawn = (String, u32, Option<(Ipv4Addr, u8)>);

/// What a reload changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<Withdrawn>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Compares the host's list with the endpoints configured so far, and takes the withdrawn
/// ones out of `cfg` (the config the write-backs encode).
pub fn changes(cfg: &mut ContainerConfig, listed: &[String], leases: &Leases) -> Changes {
    let configured = leases.configured();
    let mut c = Changes::default();
    for name in listed {
        if !configured.contains(name) && cfg.networks.contains_key(name) {
            c.added.push(name.clone());
        }
    }
    for name in configured.iter().filter(|n| !listed.contains(n)) {
        let Some(ep) = cfg.networks.remove(name) else {
            continue;
        };
        let slot = pci::parse_slot(&ep.common.id).unwrap_or(0);
        let addr = match apply::addressing(name, &ep) {
            Ok(Addressing::External) | Err(_) => None,
            _ => apply::assigned(&ep),
        };
        c.removed.push((name.clone(), slot, addr));
    }
    c
}

/// Applies `changes` to the system: deconfigures the withdrawn endpoints, waits for the new
/// ones' NICs and configures them into `cfg`, publishes the names files. Each endpoint is
/// done on its own: one that fails is logged and left out, the others still happen.
pub fn apply_changes(
    cfg: &mut ContainerConfig,
    changes: &Changes,
    hostname: &str,
    leases: &Leases,
) -> Vec<NetError> {
    let mut errors = Vec::new();
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => return vec![NetError::Setup(e)],
    };
    let paths = leases.paths.clone();
    for (name, slot, addr) in &changes.removed {
        // The NIC may be gone already; then so are its addresses and routes.
        if let Ok(ifname) = pci::interface_name(&paths.pci_devices, *slot) {
            if let Ok(link) = nl.link_by_name(&ifname) {
                if let Some((ip, prefix)) = addr {
                    let _ = nl.delete_address(link.index, *ip, *prefix);
                }
                let _ = nl.set_up(link.index, false);
            }
        }
        leases.forget(name);
        tracing::info!(network = %name, "network withdrawn");
    }
    for name in &changes.added {
        let Some(slot) = cfg
            .networks
            .get(name)
            .and_then(|ep| pci::parse_slot(&ep.common.id).ok())
        else {
            continue;
        };
        let deadline = Instant::now() + NIC_WAIT;
        while pci::interface_name(&paths.pci_devices, slot).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        match apply::apply_one(cfg, name, hostname, leases) {
            Ok(()) => tracing::info!(network = %name, "network added"),
            Err(e) => {
                tracing::error!(network = %name, error = %e, "network not added");
                errors.push(e);
            }
        }
    }
    if let Err(e) = apply::publish_names(cfg, &paths) {
        errors.push(e);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use guestinfo::config::NetworkEndpoint;

    fn endpoint(slot: &str, ip: &str) -> NetworkEndpoint {
        let mut ep = NetworkEndpoint::default();
        ep.common.id = slot.into();
        ep.static_ip = true;
        ep.ip = Some(guestinfo::config::IpNet {
            ip: Some(ip.parse().unwrap()),
            mask: Some("255.255.0.0".parse().unwrap()),
        });
        ep.assigned = ep.ip.clone().unwrap_or_default();
        ep
    }

    #[test]
    fn the_hosts_list_decides() {
        assert_eq!(
            listed(Some("back|bridge")),
            Some(vec!["back".to_owned(), "bridge".to_owned()])
        );
        assert_eq!(listed(Some("<nil>")), Some(vec![]));
        assert_eq!(listed(Some("")), Some(vec![]));
        assert_eq!(listed(None), None);

        let mut cfg = ContainerConfig::default();
        cfg.networks
            .insert("bridge".into(), endpoint("1184", "172.16.0.2"));
        cfg.networks
            .insert("back".into(), endpoint("1216", "172.17.0.2"));
        let leases = Leases::default();
        leases.mark_configured("bridge");
        // `back` is new, `bridge` stays.
        let c = changes(&mut cfg, &["back".into(), "bridge".into()], &leases);
        assert_eq!(c.added, vec!["back"]);
        assert!(c.removed.is_empty());
        leases.mark_configured("back");
        // `bridge` is withdrawn: out of the config, with its slot and address.
        let c = changes(&mut cfg, &["back".into()], &leases);
        assert!(c.added.is_empty());
        assert_eq!(
            c.removed,
            vec![(
                "bridge".to_owned(),
                1184,
                Some(("172.16.0.2".parse().unwrap(), 16))
            )]
        );
        assert!(!cfg.networks.contains_key("bridge"));
        // A listed name without an endpoint in the config is nothing to add.
        let c = changes(&mut cfg, &["back".into(), "ghost".into()], &leases);
        assert!(c.is_empty());
    }
}
