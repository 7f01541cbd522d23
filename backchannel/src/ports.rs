//! Names of the virtio-serial ports a container VM gets under QEMU, one per channel the
//! original had on a serial port. The tether looks them up by name in sysfs; the harness
//! creates them (`-device virtserialport,name=...`). One definition so the two cannot drift.

/// The guestinfo stand-in (VMware: the backdoor).
pub const GUESTINFO: &str = "org.tether.guestinfo";
/// The tether's debug log (VMware: ttyS1).
pub const DEBUG: &str = "org.tether.debug";
/// Session output records (VMware: ttyS2).
pub const OUTPUT: &str = "org.tether.output";
/// The attach back-channel (VMware: ttyS0).
pub const ATTACH: &str = "org.tether.attach";
