//! Early boot inside the initramfs: kernel filesystems, kernel modules, device discovery.
//! All synchronous: nothing else runs yet.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// Early boot errors.
#[derive(Debug, thiserror::Error)]
pub enum EarlyError {
    /// mounting a kernel filesystem failed
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        fstype: String,
        target: String,
        source: nix::Error,
    },
    /// loading a kernel module failed
    #[error("load kernel module {module}: {source}")]
    Module { module: String, source: io::Error },
    /// a device did not appear in time
    #[error("{0} did not appear within {1:?}")]
    Timeout(String, Duration),
}

fn mount_fs(
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), EarlyError> {
    let _ = fs::create_dir_all(target);
    match mount(Some(fstype), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already mounted (the kernel may mount devtmpfs itself with CONFIG_DEVTMPFS_MOUNT).
        Err(nix::Error::EBUSY) => Ok(()),
        Err(source) => Err(EarlyError::Mount {
            fstype: fstype.into(),
            target: target.into(),
            source,
        }),
    }
}

/// Mounts proc, sys, devtmpfs, devpts and /dev/shm, as the original's initramfs script did.
pub fn mount_kernel_filesystems() -> Result<(), EarlyError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", nosuid, None)?;
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    // gid 5 = tty in every distribution's /etc/group; ptmxmode so /dev/pts/ptmx is usable.
    let pts = "gid=5,mode=620,ptmxmode=666";
    if mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts),
    )
    .is_err()
    {
        mount_fs(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=620"),
        )?;
    }
    mount_fs(
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    // devtmpfs has /dev/ptmx as a device node; point it at the devpts instance so ptys
    // allocated by containers live in /dev/pts.
    if fs::symlink_metadata("/dev/ptmx").is_ok() {
        let _ = fs::remove_file("/dev/ptmx");
    }
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    Ok(())
}

/// Loads the kernel modules shipped in the initramfs, in the order `lib/modules/load-order`
/// lists them (dependencies first). A kernel with everything built in has no list.
/// Returns the number of modules loaded.
pub fn load_modules(dir: &Path) -> Result<usize, EarlyError> {
    let list = match fs::read_to_string(dir.join("load-order")) {
        Ok(l) => l,
        Err(_) => return Ok(0),
    };
    let params = CString::default();
    let mut n = 0;
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = File::open(&path).map_err(|source| EarlyError::Module {
            module: name.into(),
            source,
        })?;
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => n += 1,
            // Built in after all, or loaded by an earlier dependency walk.
            Err(nix::Error::EEXIST) => {}
            // A driver with no device to bind (no VMware NIC under QEMU) still loads; a
            // module refusing to load for lack of hardware is not fatal to boot.
            Err(nix::Error::ENODEV) => tracing::debug!(module = name, "no device for module"),
            Err(e) => {
                return Err(EarlyError::Module {
                    module: name.into(),
                    source: e.into(),
                })
            }
        }
    }
    Ok(n)
}

/// Polls `probe` every millisecond until it returns `Some` or `timeout` passes. (Sleeping on
/// the kernel's uevent socket instead measured ~10 ms slower to the launch under TCG: with a
/// listener the kernel formats and sends every boot-time device event.)
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, EarlyError> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(EarlyError::Timeout(what.into(), timeout));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Named virtio-serial ports seen by earlier lookups (sysfs entry, name): the tether looks
/// ports up several times during boot, and each full scan reads every port's name.
static PORTS: std::sync::Mutex<Vec<(std::ffi::OsString, String)>> =
    std::sync::Mutex::new(Vec::new());

const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The device node of the virtio-serial port named `name`, if the host gave us one.
/// Without udev the name is only in sysfs.
pub fn virtio_port(name: &str) -> Option<PathBuf> {
    let mut seen = PORTS.lock().unwrap_or_else(|p| p.into_inner());
    // A remembered port is checked again (ports can be unplugged): one read, not a scan.
    if let Some((entry, _)) = seen.iter().find(|(_, n)| n == name) {
        if port_name(entry).as_deref() == Some(name) {
            let dev = Path::new("/dev").join(entry);
            if dev.exists() {
                return Some(dev);
            }
        }
    }
    seen.clear();
    let mut found = None;
    for e in fs::read_dir(VIRTIO_PORTS).ok()?.flatten() {
        let entry = e.file_name();
        // The name arrives after the port: an unnamed one is looked at again next time.
        let Some(n) = port_name(&entry).filter(|n| !n.is_empty()) else {
            continue;
        };
        let dev = Path::new("/dev").join(&entry);
        if n == name && dev.exists() {
            found = Some(dev);
        }
        seen.push((entry, n));
    }
    found
}

fn port_name(entry: &std::ffi::OsStr) -> Option<String> {
    let n = fs::read_to_string(Path::new(VIRTIO_PORTS).join(entry).join("name")).ok()?;
    Some(n.trim().to_owned())
}

/// Makes sure `/dev/null` and friends exist even on a kernel whose devtmpfs is missing them.
pub fn ensure_dev_nodes() {
    use nix::sys::stat::{makedev, mknod, SFlag};
    for (path, minor) in [
        ("/dev/null", 3),
        ("/dev/zero", 5),
        ("/dev/full", 7),
        ("/dev/random", 8),
        ("/dev/urandom", 9),
    ] {
        if !Path::new(path).exists() {
            let _ = mknod(
                path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(1, minor),
            );
        }
    }
    if !Path::new("/dev/tty").exists() {
        let _ = mknod(
            "/dev/tty",
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(5, 0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_probes_again_and_times_out() {
        let mut calls = 0;
        let start = Instant::now();
        let got = wait_for("thing", Duration::from_secs(2), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got.unwrap(), 3);
        assert!(start.elapsed() < Duration::from_secs(1));
        let err = wait_for("thing", Duration::from_millis(30), || None::<()>).unwrap_err();
        assert_eq!(err.to_string(), "thing did not appear within 30ms");
    }
}
