//! Finding disks without udev, and moving the tether into the container's root filesystem.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The ext4 label of the container's root disk, as VIC's port layer creates it.
pub const CONTAINERFS_LABEL: &str = "containerfs";

/// Disk errors.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// mounting failed
    #[error("mount {source_dev} on {target}: {errno}")]
    Mount {
        source_dev: String,
        target: String,
        errno: nix::Error,
    },
    /// a filesystem operation failed while switching root
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    /// a switch-root system call failed
    #[error("{0}: {1}")]
    Sys(&'static str, nix::Error),
}

/// Identity of an ext4 filesystem read from its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Id {
    /// Volume label (at most 16 bytes).
    pub label: String,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
}

const SUPERBLOCK_OFFSET: u64 = 0x400;
const EXT4_MAGIC: u16 = 0xEF53;

/// Parses the first 256 bytes of an ext2/3/4 superblock (the bytes at offset 0x400 of the
/// device). Returns `None` if the magic does not match.
pub fn parse_superblock(sb: &[u8]) -> Option<Ext4Id> {
    let magic = u16::from_le_bytes([*sb.get(0x38)?, *sb.get(0x39)?]);
    if magic != EXT4_MAGIC {
        return None;
    }
    let uuid: [u8; 16] = sb.get(0x68..0x78)?.try_into().ok()?;
    let raw = sb.get(0x78..0x88)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let label = String::from_utf8_lossy(raw.get(..end)?).into_owned();
    Some(Ext4Id { label, uuid })
}

/// Reads the ext4 identity of a block device, if it holds one.
pub fn read_ext4_id(dev: &Path) -> io::Result<Option<Ext4Id>> {
    let mut f = File::open(dev)?;
    f.seek(SeekFrom::Start(SUPERBLOCK_OFFSET))?;
    let mut sb = [0u8; 256];
    f.read_exact(&mut sb)?;
    Ok(parse_superblock(&sb))
}

/// Block devices the kernel knows (whole disks and partitions), as `/dev` paths.
pub fn block_devices() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/class/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("sr") {
            continue;
        }
        out.push(Path::new("/dev").join(&*name));
    }
    out.sort();
    out
}

/// The block device holding an ext4 filesystem labelled `label`.
pub fn find_by_label(label: &str) -> Option<PathBuf> {
    block_devices()
        .into_iter()
        .find(|dev| matches!(read_ext4_id(dev), Ok(Some(id)) if id.label == label))
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Mounts an ext4 device.
pub fn mount_ext4(dev: &Path, target: &Path, flags: MsFlags) -> Result<(), DiskError> {
    fs::create_dir_all(target).map_err(io_err("mkdir", target))?;
    mount(Some(dev), target, Some("ext4"), flags, None::<&str>).map_err(|errno| DiskError::Mount {
        source_dev: dev.display().to_string(),
        target: target.display().to_string(),
        errno,
    })
}

/// Makes `new_root` (an already mounted filesystem) the root of the tether and everything it
/// starts, the way `switch_root` does: the kernel filesystems move along, the initramfs files
/// we shipped are deleted to give their memory back, then the new root is moved over `/`.
///
/// A tmpfs is mounted on `<new_root>/.tether` for the tether's own files, so they stay out of
/// the container's disk, as the original did.
pub fn switch_root(new_root: &Path) -> Result<(), DiskError> {
    for d in ["dev", "proc", "sys", ".tether"] {
        let p = new_root.join(d);
        fs::create_dir_all(&p).map_err(io_err("mkdir", &p))?;
    }
    let private = new_root.join(".tether");
    mount(
        Some("tmpfs"),
        &private,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=64m"),
    )
    .map_err(|errno| DiskError::Mount {
        source_dev: "tmpfs".into(),
        target: private.display().to_string(),
        errno,
    })?;
    for d in ["/dev", "/proc", "/sys"] {
        let target = new_root.join(d.trim_start_matches('/'));
        mount(
            Some(d),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|errno| DiskError::Mount {
            source_dev: d.into(),
            target: target.display().to_string(),
            errno,
        })?;
    }
    // Only the files we put in the initramfs; never a recursive delete, which could reach
    // into the new root if anything above went wrong.
    if let Ok(entries) = fs::read_dir("/lib/modules") {
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_file("/init");

    nix::unistd::chdir(new_root).map_err(|e| DiskError::Sys("chdir new root", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| DiskError::Sys("move new root over /", e))?;
    nix::unistd::chroot(".").map_err(|e| DiskError::Sys("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| DiskError::Sys("chdir /", e))?;
    Ok(())
}

/// A line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub point: String,
    /// Filesystem type (`ext4`, `nfs`, `nfs4`, `tmpfs`, ...).
    pub fstype: String,
}

impl MountEntry {
    /// A network filesystem: flushing or unmounting it can wait on a server.
    pub fn is_network(&self) -> bool {
        self.fstype.starts_with("nfs")
    }
}

/// Mounts currently in the mount table, deepest first (the order to unmount them).
pub fn mounts_deepest_first() -> Vec<MountEntry> {
    let Ok(table) = fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let mut entries: Vec<MountEntry> = table
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some(MountEntry {
                point: unescape_mount_path(point),
                fstype: fstype.to_owned(),
            })
        })
        .collect();
    entries.reverse();
    entries
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            let code = b
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(v) = code {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts the power-off path unmounts: everything but the root and the kernel's own.
fn is_kept(point: &str) -> bool {
    ["/", "/proc", "/sys", "/dev"].contains(&point)
        || point.starts_with("/dev/")
        || point.starts_with("/sys/")
        || point.starts_with("/proc/")
}

/// Flushes every local filesystem, one by one, without touching network ones: a plain
/// `sync()` would wait on an NFS server that may be gone.
pub fn sync_local() {
    for m in mounts_deepest_first() {
        if m.is_network() {
            continue;
        }
        if let Ok(f) = File::open(&m.point) {
            let _ = nix::unistd::syncfs(&f);
        }
    }
}

/// Unmounts everything but the kernel filesystems and the root, then remounts the root
/// read-only so the disk is clean at power-off. Local filesystems go first and the root is
/// read-only before any network filesystem is touched: unmounting one whose server is gone
/// can wait forever (the caller bounds that), and must not keep a local one dirty. Errors
/// are logged: at this point there is nothing better to do than to try the rest.
pub fn unmount_all() {
    let (local, network) = unmount_plan(mounts_deepest_first());
    for m in &local {
        unmount(m);
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        tracing::warn!(error = %e, "remount of / read-only failed");
    }
    for m in &network {
        unmount(m);
    }
}

/// What [`unmount_all`] unmounts, from the mount table deepest first: the local
/// filesystems, then the network ones, each in that order.
fn unmount_plan(table: Vec<MountEntry>) -> (Vec<MountEntry>, Vec<MountEntry>) {
    let (network, local) = table
        .into_iter()
        .filter(|m| !is_kept(&m.point))
        .partition(MountEntry::is_network);
    (local, network)
}

fn unmount(m: &MountEntry) {
    if let Err(e) = umount2(m.point.as_str(), MntFlags::empty()) {
        // Busy: a process we could not kill still holds it. Detach so the remount of the
        // root can at least flush it (and nothing waits on a dead server's files).
        tracing::warn!(mount = %m.point, error = %e, "unmount failed, detaching");
        let _ = umount2(m.point.as_str(), MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_filesystems_are_unmounted_before_network_ones() {
        let m = |point: &str, fstype: &str| MountEntry {
            point: point.into(),
            fstype: fstype.into(),
        };
        // Deepest first, as the table gives them: a volume's bind, an NFS volume between it
        // and its label mount, the kernel's and the root.
        let table = vec![
            m("/data", "ext4"),
            m("/mnt/shared", "nfs"),
            m("/.tether/.filesystem-by-label/abc", "ext4"),
            m("/etc/hosts", "tmpfs"),
            m("/proc/sys/fs/binfmt_misc", "binfmt_misc"),
            m("/dev/pts", "devpts"),
            m("/proc", "proc"),
            m("/", "ext4"),
        ];
        let (local, network) = unmount_plan(table);
        let points = |v: &[MountEntry]| v.iter().map(|m| m.point.clone()).collect::<Vec<_>>();
        assert_eq!(
            points(&local),
            ["/data", "/.tether/.filesystem-by-label/abc", "/etc/hosts"]
        );
        assert_eq!(points(&network), ["/mnt/shared"]);
    }

    #[test]
    fn superblock_label_and_magic() {
        let mut sb = [0u8; 256];
        sb[0x38] = 0x53;
        sb[0x39] = 0xEF;
        sb[0x68..0x78].copy_from_slice(&[7u8; 16]);
        sb[0x78..0x78 + 11].copy_from_slice(b"containerfs");
        let id = parse_superblock(&sb).unwrap();
        assert_eq!(id.label, "containerfs");
        assert_eq!(id.uuid, [7u8; 16]);
        sb[0x38] = 0;
        assert!(parse_superblock(&sb).is_none());
        assert!(parse_superblock(&[0u8; 10]).is_none());
    }

    #[test]
    fn real_ext4_image_label() {
        // mkfs.ext4 is a build prerequisite of the harness; the test proves we read what it writes.
        let dir = std::env::temp_dir().join(format!("tether-disk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "vol-label-16chr"])
            .arg(&img)
            .arg("8M")
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok);
        assert_eq!(
            read_ext4_id(&img).unwrap().unwrap().label,
            "vol-label-16chr"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mount_path_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/trail\\04"), "/trail\\04");
    }
}
