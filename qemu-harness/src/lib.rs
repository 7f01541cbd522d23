//! The host side of container VMs under QEMU: what vSphere and the VCH port layer do for a
//! container VM in production, done on a laptop.
//!
//! - [`image`] turns an image (a rootfs directory, or the built-in `busybox`) into the
//!   container's ext4 disk, labelled `containerfs` as the port layer labels it.
//! - [`config`] composes the container config with the `guestinfo` crate, as the port layer
//!   writes it into a VM's extraConfig.
//! - [`vm`] boots QEMU (TCG, q35) from the bootstrap ISO with the tether's channels as
//!   virtio-serial ports, serves the guestinfo channel from a per-VM `.vmx`-like store, and
//!   collects the output log, always under a hard timeout.
//! - [`state`] keeps VMs in a state directory so `vch inspect` and `vch ps` work across
//!   invocations.
//! - [`volume`] keeps named volumes (ext4 images, NFS exports) as the port layer's volume
//!   stores do; [`network`] defines networks and places NICs at the PCI slots the tether
//!   expects; [`netd`] runs each network's shared segment (switch, libslirp gateway, DNS)
//!   and [`ipam`] assigns the containers' addresses on it.

// docker's JSON documents (`/info`, `inspect`) are large `json!` literals.
#![recursion_limit = "256"]

pub mod accel;
pub mod api;
pub mod artifacts;
pub mod client;
pub mod config;
pub mod control;
pub mod engine;
pub mod hotplug;
pub mod image;
pub mod images;
pub mod inspect;
pub mod ipam;
pub mod keys;
pub mod logs;
pub mod netd;
pub mod network;
pub mod portlayer;
pub mod private;
pub mod records;
pub mod state;
pub mod vm;
pub mod volume;

pub use vm::{RunOptions, RunOutcome};
