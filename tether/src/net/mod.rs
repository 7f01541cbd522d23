//! The container's networking (lifecycle §6): NICs found by PCI slot, static or DHCP
//! addresses, gratuitous ARP, routes, `/etc/hosts` and `/etc/resolv.conf`, and DHCP lease
//! maintenance.
//!
//! Boot calls [`apply`] once, synchronously, after the hostname and before the first
//! write-back: it fills in the config's RW network fields (`assigned`,
//! `network.assigned.gateway`, `network.assigned.dns`) and returns the DHCP [`Leases`]
//! held. The runtime then runs [`maintain`] as a task and calls [`release_all`] on the
//! way out.
//!
//! Where the original left things to chance we pick a stable behaviour: endpoints are
//! applied internal networks first, then the others, each group sorted by name.

pub mod apply;
pub mod dhcp;
pub mod dhcp_msg;
pub mod lease;
pub mod link;
pub mod packet;
pub mod pci;
pub mod reload;

pub use apply::{apply, apply_with, Leases, NicLease, Paths};
pub use lease::{maintain, record_renewal, release_all, Renewal};

use crate::etc::EtcError;

/// Why the network could not be configured. The message is meant for the user: the tether
/// reports it as the container's start error.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// rtnetlink or the loopback interface failed before any network was looked at
    #[error("network setup: {0}")]
    Setup(#[source] link::LinkError),
    /// the endpoint's NIC could not be found
    #[error("network {network}: {source}")]
    Nic {
        network: String,
        #[source]
        source: pci::PciError,
    },
    /// configuring the NIC failed
    #[error("network {network} ({ifname}): {source}")]
    Link {
        network: String,
        ifname: String,
        #[source]
        source: link::LinkError,
    },
    /// DHCP failed
    #[error("network {network}: DHCP: {source}")]
    Dhcp {
        network: String,
        #[source]
        source: dhcp::DhcpError,
    },
    /// the endpoint's configuration cannot be applied
    #[error("network {network}: {reason}")]
    Config { network: String, reason: String },
    /// `/etc/hosts` or `/etc/resolv.conf` could not be published
    #[error("network: {0}")]
    Etc(#[from] EtcError),
}
