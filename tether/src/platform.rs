//! Which hypervisor we run under and where its channels are.
//!
//! On vSphere the channels are the VM's serial ports (ttyS0 back-channel, ttyS1 debug log,
//! ttyS2 output log) and the config comes over the VMware backdoor. Under QEMU the harness
//! gives us named virtio-serial ports for the same purposes and serves the config over one of
//! them with the same request strings.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use crate::early;

/// Port names the QEMU harness uses (`-device virtserialport,name=...`).
pub use backchannel::ports as port;

/// The hypervisor flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platform {
    /// VMware: backdoor guestinfo, serial ports.
    Vmware,
    /// QEMU with the tether harness: virtio-serial ports.
    Qemu { guestinfo: PathBuf },
}

/// How long to wait for the harness's virtio ports to show up after loading virtio_console
/// (the host announces ports asynchronously over the control queue).
const PORT_WAIT: Duration = Duration::from_secs(3);

/// Detects the platform: the CPUID hypervisor signature first, then the QEMU ports.
pub fn detect() -> Result<Platform, early::EarlyError> {
    if guestinfo::transport::backdoor::is_vmware() {
        return Ok(Platform::Vmware);
    }
    let guestinfo = early::wait_for(
        &format!("virtio-serial port {}", port::GUESTINFO),
        PORT_WAIT,
        || early::virtio_port(port::GUESTINFO),
    )?;
    Ok(Platform::Qemu { guestinfo })
}

/// For the log: `vmware`, or `qemu` and the guestinfo port.
impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Platform::Vmware => f.write_str("vmware"),
            Platform::Qemu { guestinfo } => write!(f, "qemu ({})", guestinfo.display()),
        }
    }
}

impl Platform {
    fn channel(&self, virtio: &str, serial: &str) -> Option<PathBuf> {
        match self {
            Platform::Vmware => Some(PathBuf::from(serial)),
            Platform::Qemu { .. } => early::virtio_port(virtio),
        }
    }

    /// Opens the debug log channel.
    pub fn debug_channel(&self) -> Option<File> {
        let path = self.channel(port::DEBUG, "/dev/ttyS1")?;
        File::options().write(true).open(path).ok()
    }

    /// The back-channel device: the virtio port under QEMU when the harness gave one, the
    /// first UART otherwise (vSphere, or QEMU's emulated 16550).
    pub fn attach_channel(&self) -> PathBuf {
        match self {
            Platform::Vmware => PathBuf::from("/dev/ttyS0"),
            Platform::Qemu { .. } => {
                early::virtio_port(port::ATTACH).unwrap_or_else(|| PathBuf::from("/dev/ttyS0"))
            }
        }
    }

    /// Opens the output channel.
    pub fn output_channel(&self) -> Option<File> {
        let path = self.channel(port::OUTPUT, "/dev/ttyS2")?;
        File::options().read(true).write(true).open(path).ok()
    }
}
