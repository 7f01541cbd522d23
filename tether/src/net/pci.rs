//! Finding a container NIC from the vSphere PCI slot number the port layer writes into
//! `networks|<name>/Common/id` (lifecycle §6.1, VMware KB 2047927).
//!
//! The slot number packs `dev` (bits 0–4), `bus` (bits 5–9) and `fn` (bits 10–12). Bus 0
//! devices sit directly on the root bus; a device on bus N > 0 sits behind the PCI bridge in
//! slot `0x11 + N - 1` (`pciBridge0` is slot 17), at function `fn` of that bridge. Behind the
//! bridge the bus number the kernel assigned is not predictable, hence the `*` in
//! `0000:*:<dev>.0`.

use std::fmt;
use std::path::{Path, PathBuf};

/// The sysfs directory of PCI devices on a running system.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Slot of `pciBridge0`, the bridge in front of bus 1.
const FIRST_BRIDGE_SLOT: u32 = 0x11;

/// Errors locating a NIC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// the slot is not a decimal number
    #[error("PCI slot {0:?} is not a decimal number")]
    BadSlot(String),
    /// the slot names a bus whose bridge cannot exist
    #[error("PCI slot {slot}: no PCI bridge can front bus {bus}")]
    NoBridge { slot: u32, bus: u32 },
    /// nothing matched
    #[error("no NIC at PCI slot {slot} ({pattern})")]
    NoNic { slot: u32, pattern: String },
    /// more than one interface matched, so the slot does not identify a NIC
    #[error("PCI slot {slot} matches several interfaces ({names}) at {pattern}")]
    Ambiguous {
        slot: u32,
        pattern: String,
        names: String,
    },
}

/// A decoded vSphere PCI slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub dev: u32,
    pub bus: u32,
    pub func: u32,
}

impl Slot {
    pub fn decode(slot: u32) -> Slot {
        Slot {
            dev: slot & 0x1f,
            bus: (slot >> 5) & 0x1f,
            func: (slot >> 10) & 0x7,
        }
    }
}

/// Parses `Common/id` of a network endpoint.
pub fn parse_slot(id: &str) -> Result<u32, PciError> {
    id.trim()
        .parse::<u32>()
        .map_err(|_| PciError::BadSlot(id.to_owned()))
}

/// The sysfs location of a slot's device: a directory, or a one-`*` pattern for devices
/// behind a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePath {
    /// A device on bus 0.
    Exact(PathBuf),
    /// A device behind a bridge: any `0000:*:<dev>.0` directory under `bridge`.
    BehindBridge { bridge: PathBuf, dev: u32 },
}

impl DevicePath {
    /// The directories that currently match.
    fn matches(&self) -> Vec<PathBuf> {
        match self {
            DevicePath::Exact(p) => vec![p.clone()],
            DevicePath::BehindBridge { bridge, dev } => {
                let suffix = format!(":{dev:02x}.0");
                let Ok(rd) = std::fs::read_dir(bridge) else {
                    return Vec::new();
                };
                let mut found: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        // `0000:*:<dev>.0` with a non-empty `*`.
                        n.len() > "0000:".len() + suffix.len()
                            && n.starts_with("0000:")
                            && n.ends_with(&suffix)
                    })
                    .map(|e| e.path())
                    .collect();
                found.sort();
                found
            }
        }
    }
}

impl fmt::Display for DevicePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevicePath::Exact(p) => write!(f, "{}", p.display()),
            DevicePath::BehindBridge { bridge, dev } => {
                write!(f, "{}/0000:*:{dev:02x}.0", bridge.display())
            }
        }
    }
}

/// Where the device of `slot` appears under `devices` (normally [`SYSFS_PCI_DEVICES`]).
pub fn device_path(devices: &Path, slot: u32) -> Result<DevicePath, PciError> {
    let s = Slot::decode(slot);
    if s.bus == 0 {
        return Ok(DevicePath::Exact(
            devices.join(format!("0000:00:{:02x}.{}", s.dev, s.func)),
        ));
    }
    // The bridge is itself a bus-0 device; with only 5 bits for the device number, buses
    // beyond 15 would need a bridge in a slot that cannot exist (vSphere has 8 bridges).
    let bridge = FIRST_BRIDGE_SLOT + s.bus - 1;
    if bridge > 0x1f {
        return Err(PciError::NoBridge { slot, bus: s.bus });
    }
    Ok(DevicePath::BehindBridge {
        bridge: devices.join(format!("0000:00:{bridge:02x}.{}", s.func)),
        dev: s.dev,
    })
}

/// The directories under a PCI device that may hold its interfaces: `<device>/net` (vmxnet3
/// and other plain PCI NICs) and `<device>/virtioN/net` (virtio-net: the PCI device is the
/// transport, the interface belongs to the virtio device below it).
fn net_dirs(device: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![device.join("net")];
    if let Ok(rd) = std::fs::read_dir(device) {
        dirs.extend(
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.strip_prefix("virtio")
                        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|e| e.path().join("net")),
        );
    }
    dirs
}

/// The kernel name of the single network interface of the device in `slot`.
pub fn interface_name(devices: &Path, slot: u32) -> Result<String, PciError> {
    let dev = device_path(devices, slot)?;
    let mut names = Vec::new();
    for d in dev.matches() {
        for net in net_dirs(&d) {
            if let Ok(rd) = std::fs::read_dir(net) {
                names.extend(
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
    }
    names.sort();
    match names.len() {
        1 => Ok(names.swap_remove(0)),
        0 => Err(PciError::NoNic {
            slot,
            pattern: dev.to_string(),
        }),
        _ => Err(PciError::Ambiguous {
            slot,
            pattern: format!("{dev}/[virtioN/]net/*"),
            names: names.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-pci-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn decodes_slots() {
        assert_eq!(
            Slot::decode(0x4A0),
            Slot {
                dev: 0,
                bus: 5,
                func: 1
            }
        );
        assert_eq!(
            Slot::decode(160),
            Slot {
                dev: 0,
                bus: 5,
                func: 0
            }
        );
        assert_eq!(parse_slot("1184"), Ok(1184));
        assert_eq!(parse_slot(" 7\n"), Ok(7));
        assert!(matches!(parse_slot("0x4a0"), Err(PciError::BadSlot(_))));
        assert!(matches!(parse_slot(""), Err(PciError::BadSlot(_))));
    }

    #[test]
    fn spec_example_path() {
        let p = device_path(Path::new(SYSFS_PCI_DEVICES), 0x4A0).unwrap();
        assert_eq!(
            p.to_string(),
            "/sys/bus/pci/devices/0000:00:15.1/0000:*:00.0"
        );
        let p = device_path(Path::new(SYSFS_PCI_DEVICES), 3).unwrap();
        assert_eq!(p.to_string(), "/sys/bus/pci/devices/0000:00:03.0");
        // Bus 1 is behind pciBridge0 (slot 17); dev 2, function 0.
        let p = device_path(Path::new(SYSFS_PCI_DEVICES), 2 | 1 << 5).unwrap();
        assert_eq!(
            p.to_string(),
            "/sys/bus/pci/devices/0000:00:11.0/0000:*:02.0"
        );
        assert_eq!(
            device_path(Path::new(SYSFS_PCI_DEVICES), 20 << 5),
            Err(PciError::NoBridge { slot: 640, bus: 20 })
        );
    }

    #[test]
    fn finds_interfaces_in_a_fake_tree() {
        let root = tmp("tree");
        // Bus 0 device 3 with eth0; a NIC behind pciBridge4 function 1 (slot 0x4A0).
        std::fs::create_dir_all(root.join("0000:00:03.0/net/eth0")).unwrap();
        std::fs::create_dir_all(root.join("0000:00:15.1/0000:0b:00.0/net/eth1")).unwrap();
        // A device with another number behind the same bridge must not match.
        std::fs::create_dir_all(root.join("0000:00:15.1/0000:0b:01.0/net/eth9")).unwrap();
        assert_eq!(interface_name(&root, 3).unwrap(), "eth0");
        assert_eq!(interface_name(&root, 0x4A0).unwrap(), "eth1");

        let err = interface_name(&root, 0x4C0).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no NIC at PCI slot 1216 ({}/0000:00:16.1/0000:*:00.0)",
                root.display()
            )
        );
        // A device without a net directory is no NIC.
        std::fs::create_dir_all(root.join("0000:00:04.0")).unwrap();
        assert!(matches!(
            interface_name(&root, 4),
            Err(PciError::NoNic { .. })
        ));
        // Two interfaces for one slot: refuse to guess.
        std::fs::create_dir_all(root.join("0000:00:15.1/0000:0c:00.0/net/eth2")).unwrap();
        let err = interface_name(&root, 0x4A0).unwrap_err();
        assert!(matches!(err, PciError::Ambiguous { .. }), "{err}");
        assert!(err.to_string().contains("eth1, eth2"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// virtio-net-pci puts its interface one level deeper than vmxnet3: the PCI device's
    /// child is the virtio device (`virtioN`), whose `net/` holds the interface.
    #[test]
    fn finds_a_virtio_interface_one_level_deeper() {
        let root = tmp("virtio");
        std::fs::create_dir_all(root.join("0000:00:15.1/0000:0b:00.0/virtio3/net/eth0")).unwrap();
        // The virtio device's other attributes are no interfaces.
        std::fs::create_dir_all(root.join("0000:00:15.1/0000:0b:00.0/virtio3/driver")).unwrap();
        assert_eq!(interface_name(&root, 0x4A0).unwrap(), "eth0");
        // A bus-0 virtio NIC too.
        std::fs::create_dir_all(root.join("0000:00:03.0/virtio0/net/eth1")).unwrap();
        assert_eq!(interface_name(&root, 3).unwrap(), "eth1");
        // A directory that only looks like a virtio device is not one.
        std::fs::create_dir_all(root.join("0000:00:04.0/virtual/net/eth5")).unwrap();
        assert!(matches!(
            interface_name(&root, 4),
            Err(PciError::NoNic { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
