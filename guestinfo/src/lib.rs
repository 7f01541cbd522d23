//! # guestinfo
//!
//! Everything that crosses the hypervisor boundary of a container VM: the VIC-compatible
//! extraConfig codec (typed config ⇔ flat `guestinfo.vice.…` map), the container config
//! schema, and the transports the tether (guest) and the harness (host) use to move keys.
//!
//! * [`config`]: the schema ([`ContainerConfig`] and friends), including our extension keys.
//! * [`encode`] / [`decode`] / [`decode_into`] / [`session_writeback`] / [`guest_writeback`]:
//!   the codec.
//! * [`transport`]: the [`transport::Transport`] trait, the QEMU stand-in (virtio-serial) and
//!   the VMware backdoor.
//! * [`store`]: host-side key stores (in memory, VMX-like file).
//!
//! The codec's maps hold *plain* values; `<nil>` (the wire spelling of the empty string) is
//! applied and removed at the transport and store boundary.

#![warn(missing_docs)]

mod codec;
pub mod config;
mod de;
pub mod error;
pub mod keys;
#[doc(hidden)]
pub mod malformed;
mod ser;
pub mod store;
pub mod tags;
pub mod transport;
pub mod value;

pub use codec::{
    decode, decode_into, discover_keys, encode, encode_pairs, guest_writeback, session_writeback,
    DiscoverError,
};
pub use config::*;
pub use error::{DecodeError, EncodeError};
pub use transport::{reload_config, write_pairs, HostCommand, Transport, TransportError};

/// A flat extraConfig map with plain values (no `<nil>`).
pub type Map = std::collections::BTreeMap<String, String>;

#[cfg(test)]
mod container_tests;
#[cfg(test)]
mod tests;
