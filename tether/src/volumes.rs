//! The container's volumes: ext4 disks found by label and NFS exports, mounted at their
//! destinations in path order, with the image's content copied into empty volumes that ask
//! for it.
//!
//! Where the original was weak this differs on purpose: `ro` is enforced, waiting for a disk
//! and for an NFS server has a deadline, and copy-up happens right after each mount so that
//! nested volumes get the image content that belongs to them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use guestinfo::config::{copy_mode, MountSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{disk, early};

/// Where volume disks are mounted privately before their data is bound into the container.
const PRIVATE_ROOT: &str = "/.tether/.filesystem-by-label";
/// A non-recursive view of a volume's parent, to read the image content the volume hides.
const BIND_VIEW: &str = "/.tether/.bind";
/// The directory the VIC port layer creates in every new volume; the container sees only it,
/// so the filesystem's `lost+found` stays out of sight.
const DATA_DIR: &str = ".vic.vol.data";
/// How long a volume disk may take to appear (the original waited forever).
const DISK_WAIT: Duration = Duration::from_secs(10);
/// How long an NFS mount may take before the server counts as unreachable. The kernel's own
/// retries for a `hard` mount run for minutes.
const NFS_WAIT: Duration = Duration::from_secs(20);

/// Volume errors. Each names the volume and says what the user can check.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// the source scheme is neither `label` nor `nfs`
    #[error("volume {name}: unsupported source {scheme:?} (expected label or nfs)")]
    Scheme { name: String, scheme: String },
    /// the destination is not an absolute path
    #[error("volume {name}: destination {dest:?} is not an absolute path")]
    Dest { name: String, dest: String },
    /// no attached disk carries the label
    #[error("volume {name}: no disk labelled {label:?} appeared within {waited:?}")]
    NoDisk {
        name: String,
        label: String,
        waited: Duration,
    },
    /// a mount system call failed
    #[error("volume {name}: mount {source_desc} on {target}: {errno}")]
    Mount {
        name: String,
        source_desc: String,
        target: String,
        errno: nix::Error,
    },
    /// a file operation failed
    #[error("volume {name}: {what} {path}: {source}")]
    Io {
        name: String,
        what: &'static str,
        path: String,
        source: io::Error,
    },
    /// the NFS server's name did not resolve
    #[error("volume {name}: cannot resolve NFS server {host:?}: {reason}")]
    Resolve {
        name: String,
        host: String,
        reason: String,
    },
    /// the NFS server did not answer in time
    #[error("volume {name}: NFS server {host} did not answer within {waited:?}")]
    NfsTimeout {
        name: String,
        host: String,
        waited: Duration,
    },
    /// copying the image content into the volume failed
    #[error("volume {name}: copying the image's {dest} into the new volume: {source}")]
    CopyUp {
        name: String,
        dest: String,
        source: io::Error,
    },
}

/// Mounts every volume of the config, parents before children. Stops at the first failure;
/// what was already mounted is unmounted by the power-off path.
pub fn mount_all(mounts: &BTreeMap<String, MountSpec>) -> Result<(), VolumeError> {
    for (name, spec) in in_mount_order(mounts) {
        let target = Path::new(&spec.path);
        if !target.is_absolute() {
            return Err(VolumeError::Dest {
                name: name.clone(),
                dest: spec.path.clone(),
            });
        }
        match spec.source.scheme.as_str() {
            "label" => mount_label(name, spec, target)?,
            "nfs" => mount_nfs(name, spec, target)?,
            other => {
                return Err(VolumeError::Scheme {
                    name: name.clone(),
                    scheme: other.to_owned(),
                })
            }
        }
        if spec.copy_mode == copy_mode::NEW && is_empty_volume(target) {
            copy_up(name, target)?;
        }
        tracing::info!(volume = %name, dest = %spec.path, mode = %spec.mode, "volume mounted");
    }
    Ok(())
}

/// Destination order, as the original sorted them: a parent sorts before its children.
fn in_mount_order(mounts: &BTreeMap<String, MountSpec>) -> Vec<(&String, &MountSpec)> {
    let mut v: Vec<_> = mounts.iter().collect();
    v.sort_by(|a, b| a.1.path.cmp(&b.1.path).then(a.0.cmp(b.0)));
    v
}

fn io_err<'a>(
    name: &'a str,
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        name: name.to_owned(),
        what,
        path: path.display().to_string(),
        source,
    }
}

fn mount_err(name: &str, source_desc: &str, target: &Path, errno: nix::Error) -> VolumeError {
    VolumeError::Mount {
        name: name.to_owned(),
        source_desc: source_desc.to_owned(),
        target: target.display().to_string(),
        errno,
    }
}

/// The owner and mode of a directory the image already had at a volume's destination.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// Makes the mount point, remembering the image directory's owner if there was one.
fn prepare_target(name: &str, target: &Path) -> Result<Option<Owner>, VolumeError> {
    match fs::metadata(target) {
        Ok(m) => Ok(Some(Owner {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        })),
        Err(_) => {
            fs::create_dir_all(target).map_err(io_err(name, "mkdir", target))?;
            let _ = fs::set_permissions(target, fs::Permissions::from_mode(0o755));
            Ok(None)
        }
    }
}

fn is_read_only(spec: &MountSpec) -> bool {
    spec.mode.split(',').any(|o| o.trim() == "ro")
}

fn mount_label(name: &str, spec: &MountSpec, target: &Path) -> Result<(), VolumeError> {
    let label = spec.source.path.trim_start_matches('/');
    let read_only = is_read_only(spec);
    let owner = prepare_target(name, target)?;
    let private = Path::new(PRIVATE_ROOT).join(label);
    // An empty directory is a leftover; a mounted one (rmdir fails: EBUSY) is the same disk
    // used by an earlier volume entry and is shared.
    let already = private.exists() && fs::remove_dir(&private).is_err();
    if !already {
        fs::create_dir_all(&private).map_err(io_err(name, "mkdir", &private))?;
        let dev = early::wait_for(&format!("disk labelled {label}"), DISK_WAIT, || {
            disk::find_by_label(label)
        })
        .map_err(|_| VolumeError::NoDisk {
            name: name.to_owned(),
            label: label.to_owned(),
            waited: DISK_WAIT,
        })?;
        let mut flags = MsFlags::MS_NOATIME;
        if read_only {
            // A read-only volume's filesystem is not written at all, not even its journal.
            flags |= MsFlags::MS_RDONLY;
        }
        disk::mount_ext4(&dev, &private, flags)
            .map_err(|e| mount_err(name, &dev.display().to_string(), &private, errno_of(&e)))?;
    }
    let data = private.join(DATA_DIR);
    let source = if data.is_dir() { data } else { private };
    mount(
        Some(&source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| mount_err(name, &source.display().to_string(), target, e))?;
    if read_only {
        // A bind mount takes its own read-only flag only on a remount.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| mount_err(name, "read-only remount", target, e))?;
    } else if let Some(o) = owner {
        // The container's processes expect the image directory's owner and mode, not the
        // fresh filesystem's root-owned 0755.
        if let Err(e) = nix::unistd::chown(
            target,
            Some(nix::unistd::Uid::from_raw(o.uid)),
            Some(nix::unistd::Gid::from_raw(o.gid)),
        ) {
            tracing::warn!(volume = %name, error = %e, "cannot give the volume its image owner");
        }
        if let Err(e) = fs::set_permissions(target, fs::Permissions::from_mode(o.mode)) {
            tracing::warn!(volume = %name, error = %e, "cannot give the volume its image mode");
        }
    }
    Ok(())
}

fn errno_of(e: &disk::DiskError) -> nix::Error {
    match e {
        disk::DiskError::Mount { errno, .. } | disk::DiskError::Sys(_, errno) => *errno,
        disk::DiskError::Io { source, .. } => {
            nix::Error::from_raw(source.raw_os_error().unwrap_or(libc::EIO))
        }
    }
}

/// `host:/path` as the kernel wants the NFS source.
fn nfs_source(host: &str, path: &str) -> String {
    if path.starts_with('/') {
        format!("{host}:{path}")
    } else {
        format!("{host}:/{path}")
    }
}

/// The mount options with every `addr=<host>` pointing at `ip`, and an `addr=` added when
/// there is none: the kernel does not resolve names, mount.nfs does that in userspace.
fn nfs_options(options: &str, host: &str, ip: IpAddr) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut has_addr = false;
    for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        // Read-only travels as a mount flag, not as an NFS option.
        if opt == "ro" || opt == "rw" {
            continue;
        }
        match opt.split_once('=') {
            Some(("addr", v)) => {
                has_addr = true;
                if v == host || v.parse::<IpAddr>().is_err() {
                    out.push(format!("addr={ip}"));
                } else {
                    out.push(opt.to_owned());
                }
            }
            _ => out.push(opt.to_owned()),
        }
    }
    if !has_addr {
        out.push(format!("addr={ip}"));
    }
    out.join(",")
}

/// Splits a URL host into name and optional port (`[v6]:port`, `name:port`, `name`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

fn mount_nfs(name: &str, spec: &MountSpec, target: &Path) -> Result<(), VolumeError> {
    let host = host_name(&spec.source.host).to_owned();
    let source = nfs_source(&host, &spec.source.path);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host.as_str(), 2049)
            .to_socket_addrs()
            .map_err(|e| VolumeError::Resolve {
                name: name.to_owned(),
                host: host.clone(),
                reason: e.to_string(),
            })?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(VolumeError::Resolve {
            name: name.to_owned(),
            host,
            reason: "no addresses".into(),
        });
    }
    fs::create_dir_all(target).map_err(io_err(name, "mkdir", target))?;
    let mut last = None;
    for ip in addrs {
        let options = nfs_options(&spec.mode, &host, ip);
        tracing::debug!(volume = %name, %source, %options, "mounting NFS");
        match mount_with_deadline(&source, target, &options, is_read_only(spec), NFS_WAIT) {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => last = Some(mount_err(name, &source, target, e)),
            None => {
                last = Some(VolumeError::NfsTimeout {
                    name: name.to_owned(),
                    host: host.clone(),
                    waited: NFS_WAIT,
                })
            }
        }
    }
    Err(last.unwrap_or(VolumeError::Resolve {
        name: name.to_owned(),
        host,
        reason: "no addresses".into(),
    }))
}

/// Runs the NFS mount on its own thread so an unreachable server costs `deadline`, not the
/// kernel's minutes of retries. `None` on timeout (the thread is left to the kernel: a mount
/// that finally succeeds after we gave up is unmounted at power-off like any other).
fn mount_with_deadline(
    source: &str,
    target: &Path,
    options: &str,
    read_only: bool,
    deadline: Duration,
) -> Option<nix::Result<()>> {
    let (tx, rx) = mpsc::channel();
    let (source, target, options) = (source.to_owned(), target.to_owned(), options.to_owned());
    let spawned = std::thread::Builder::new()
        .name("nfs-mount".into())
        .spawn(move || {
            let mut flags = MsFlags::MS_NOATIME;
            if read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            let r = mount(
                Some(source.as_str()),
                &target,
                Some("nfs"),
                flags,
                Some(options.as_str()),
            );
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Some(Err(nix::Error::from_raw(
            e.raw_os_error().unwrap_or(libc::EAGAIN),
        )));
    }
    rx.recv_timeout(deadline).ok()
}

/// True when a mounted volume holds nothing but `lost+found`.
fn is_empty_volume(target: &Path) -> bool {
    match fs::read_dir(target) {
        Ok(entries) => entries
            .flatten()
            .all(|e| e.file_name() == std::ffi::OsStr::new("lost+found")),
        Err(_) => false,
    }
}

/// Copies what the image has at `target` (now hidden under the volume) into the volume,
/// keeping owners, modes, times and links, as `docker` does for a new volume.
fn copy_up(name: &str, target: &Path) -> Result<(), VolumeError> {
    let (Some(parent), Some(base)) = (target.parent(), target.file_name()) else {
        return Ok(());
    };
    let view = Path::new(BIND_VIEW);
    fs::create_dir_all(view).map_err(io_err(name, "mkdir", view))?;
    // Non-recursive: the view shows the parent's own filesystem, where the image's files
    // are, not the volume mounted over them.
    mount(
        Some(parent),
        view,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| mount_err(name, &parent.display().to_string(), view, e))?;
    let hidden = view.join(base);
    let result = if hidden.is_dir() {
        copy_tree(&hidden, target).map_err(|source| VolumeError::CopyUp {
            name: name.to_owned(),
            dest: target.display().to_string(),
            source,
        })
    } else {
        Ok(())
    };
    if let Err(e) = umount2(view, MntFlags::MNT_DETACH) {
        tracing::warn!(error = %e, "cannot unmount the copy-up view");
    }
    let _ = fs::remove_dir(view);
    if result.is_ok() {
        tracing::info!(volume = %name, dest = %target.display(), "image content copied into the new volume");
    }
    result
}

/// Copies a directory tree with tar semantics: a tar stream through a pipe from a reader
/// thread into an unpacker, so special files, symlinks and ownership come out as tar keeps
/// them.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let (reader, writer) = io::pipe()?;
    let src: PathBuf = from.to_owned();
    let packer =
        std::thread::Builder::new()
            .name("copy-up".into())
            .spawn(move || -> io::Result<()> {
                let mut b = tar::Builder::new(writer);
                b.follow_symlinks(false);
                b.mode(tar::HeaderMode::Complete);
                b.append_dir_all(".", &src)?;
                b.finish()
            })?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let unpacked = archive.unpack(to);
    // Dropping the reader ends a packer still writing (EPIPE) if unpacking stopped early.
    drop(archive);
    let packed = packer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("copy-up reader thread failed")));
    unpacked.and(packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guestinfo::config::Url;

    fn spec(scheme: &str, path: &str, dest: &str) -> MountSpec {
        MountSpec {
            source: Url {
                scheme: scheme.into(),
                path: path.into(),
                ..Default::default()
            },
            path: dest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn parents_mount_before_children() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), spec("label", "a", "/data/sub"));
        m.insert("b".to_string(), spec("label", "b", "/data"));
        m.insert("c".to_string(), spec("label", "c", "/cache"));
        let order: Vec<_> = in_mount_order(&m)
            .into_iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(order, ["c", "b", "a"]);
    }

    #[test]
    fn nfs_address_is_substituted_or_added() {
        let ip: IpAddr = "10.0.2.2".parse().unwrap();
        assert_eq!(
            nfs_options("vers=3,hard,nolock,addr=nfs.example", "nfs.example", ip),
            "vers=3,hard,nolock,addr=10.0.2.2"
        );
        assert_eq!(nfs_options("vers=4.1", "h", ip), "vers=4.1,addr=10.0.2.2");
        assert_eq!(
            nfs_options("vers=3,ro,addr=h", "h", ip),
            "vers=3,addr=10.0.2.2"
        );
        assert_eq!(nfs_options("", "h", ip), "addr=10.0.2.2");
        // An address the port layer already resolved is kept.
        assert_eq!(nfs_options("addr=192.168.1.5", "h", ip), "addr=192.168.1.5");
        assert_eq!(nfs_source("h", "export"), "h:/export");
        assert_eq!(nfs_source("h", "/export"), "h:/export");
        assert_eq!(host_name("h:2049"), "h");
        assert_eq!(host_name("[fe80::1]:2049"), "fe80::1");
        assert_eq!(host_name("fe80::1"), "fe80::1");
    }

    #[test]
    fn read_only_mode() {
        let mut s = spec("label", "x", "/x");
        s.mode = "ro".into();
        assert!(is_read_only(&s));
        s.mode = "rw".into();
        assert!(!is_read_only(&s));
        s.mode = "vers=3,ro,hard".into();
        assert!(is_read_only(&s));
    }

    #[test]
    fn copy_tree_keeps_files_links_and_modes() {
        let base = std::env::temp_dir().join(format!("tether-copyup-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        fs::create_dir_all(from.join("sub")).unwrap();
        fs::create_dir_all(&to).unwrap();
        fs::write(from.join("sub/f"), b"data").unwrap();
        fs::set_permissions(from.join("sub/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("sub/f", from.join("link")).unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(fs::read(to.join("sub/f")).unwrap(), b"data");
        assert_eq!(
            fs::metadata(to.join("sub/f")).unwrap().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_link(to.join("link")).unwrap(), Path::new("sub/f"));
        assert!(!is_empty_volume(&to));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn lost_and_found_alone_is_empty() {
        let base = std::env::temp_dir().join(format!("tether-empty-{}", std::process::id()));
        fs::create_dir_all(base.join("lost+found")).unwrap();
        assert!(is_empty_volume(&base));
        fs::write(base.join("x"), b"").unwrap();
        assert!(!is_empty_volume(&base));
        fs::remove_dir_all(&base).unwrap();
    }
}
