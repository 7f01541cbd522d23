//! Container images as ext4 disks.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The label the tether looks for (VIC's `containerfs`).
pub const CONTAINERFS_LABEL: &str = "containerfs";

/// Image errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// the image name is neither a directory nor a built-in image
    #[error("image {0:?} not found: give a root filesystem directory or the built-in \"busybox\"")]
    NotFound(String),
    /// busybox-static is not installed
    #[error("the busybox image needs Debian's busybox-static (/bin/busybox): apt-get install busybox-static")]
    NoBusybox,
    /// a file operation failed
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// mkfs.ext4 failed
    #[error("mkfs.ext4 failed: {0}")]
    Mkfs(String),
    /// qemu-img failed
    #[error("qemu-img failed: {0}")]
    QemuImg(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The built-in image's name.
pub const BUSYBOX: &str = "busybox";

/// An image name as docker normalises it for comparison: `busybox`, `busybox:latest`,
/// `library/busybox` and `docker.io/library/busybox:latest` are one image. A path (a rootfs
/// directory) is left alone.
pub fn normalize(name: &str) -> String {
    if name.starts_with('/') || name.starts_with('.') {
        return name.to_owned();
    }
    let n = name.strip_prefix("docker.io/").unwrap_or(name);
    let n = n.strip_prefix("library/").unwrap_or(n);
    n.strip_suffix(":latest").unwrap_or(n).to_owned()
}

/// The built-in image as an image list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinImage {
    /// `sha256:` and the digest of its busybox binary.
    pub id: String,
    /// Unix seconds: when the cached root was built.
    pub created: i64,
    pub size: u64,
}

/// The built-in busybox image (its root built into the cache if need be).
pub fn builtin(cache: &Path) -> Result<BuiltinImage, ImageError> {
    use sha2::{Digest, Sha256};
    let root = busybox_rootfs(cache)?;
    let bin = fs::read(root.join("bin/busybox")).map_err(io_err("read", &root))?;
    let digest: String = Sha256::digest(&bin)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let created = fs::metadata(root.join(".complete"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(BuiltinImage {
        id: format!("sha256:{digest}"),
        created,
        size: bin.len() as u64,
    })
}

/// The root filesystem directory of an image: the directory itself, or the built-in busybox
/// image (built once into the cache).
pub fn rootfs(image: &str, cache: &Path) -> Result<PathBuf, ImageError> {
    if normalize(image) == BUSYBOX {
        return busybox_rootfs(cache);
    }
    let p = PathBuf::from(image);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(ImageError::NotFound(image.into()))
    }
}

const BUSYBOX_BIN: &str = "/bin/busybox";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:Unprivileged User:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ntty:x:5:\nwheel:x:10:user\nuser:x:1000:\nnogroup:x:65534:\n";

fn busybox_rootfs(cache: &Path) -> Result<PathBuf, ImageError> {
    let bin = fs::read(BUSYBOX_BIN).map_err(|_| ImageError::NoBusybox)?;
    // Keyed by the binary's size and a cheap checksum, so a busybox upgrade rebuilds it.
    let key = format!("{:x}-{:08x}", bin.len(), crc32fast::hash(&bin));
    let dir = cache.join("images").join(format!("busybox-{key}"));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let tmp = cache
        .join("images")
        .join(format!(".busybox-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "tmp",
        "root",
        "home/user",
        "proc",
        "sys",
        "dev",
        "var/log",
        "run",
    ] {
        fs::create_dir_all(tmp.join(d)).map_err(io_err("mkdir", &tmp))?;
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tmp.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(io_err("chmod", &tmp))?;
    fs::write(tmp.join("bin/busybox"), &bin).map_err(io_err("write", &tmp))?;
    fs::set_permissions(tmp.join("bin/busybox"), fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &tmp))?;
    let list = Command::new(BUSYBOX_BIN)
        .arg("--list-full")
        .output()
        .map_err(|_| ImageError::NoBusybox)?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = tmp.join(applet.trim_start_matches('/'));
        if applet.is_empty() || link.exists() {
            continue;
        }
        symlink("/bin/busybox", &link).map_err(io_err("symlink", &link))?;
    }
    fs::write(tmp.join("etc/passwd"), PASSWD).map_err(io_err("write", &tmp))?;
    fs::write(tmp.join("etc/group"), GROUP).map_err(io_err("write", &tmp))?;
    fs::write(tmp.join("etc/hosts"), "127.0.0.1 localhost\n").map_err(io_err("write", &tmp))?;
    std::os::unix::fs::chown(tmp.join("home/user"), Some(1000), Some(1000))
        .map_err(io_err("chown", &tmp))?;
    fs::write(tmp.join(".complete"), b"").map_err(io_err("write", &tmp))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(io_err("rename", &dir))?;
    Ok(dir)
}

/// A container's root disk as QEMU should open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: &'static str,
}

/// Creates the container's root disk in `dir`.
///
/// The built-in image's filesystem is built once into the cache and each container gets a
/// copy-on-write qcow2 overlay of it (as VIC gives each container a child disk of its image);
/// a rootfs directory may change between runs, so it is copied into a fresh disk every time.
pub fn container_disk(
    image: &str,
    cache: &Path,
    dir: &Path,
    size_mb: u64,
) -> Result<Disk, ImageError> {
    let root = rootfs(image, cache)?;
    if normalize(image) != BUSYBOX {
        let path = dir.join("disk.img");
        make_disk(&root, &path, size_mb)?;
        return Ok(Disk {
            path,
            format: "raw",
        });
    }
    let base = root.with_extension(format!("{size_mb}M.ext4"));
    if !base.exists() {
        let tmp = base.with_extension(format!("tmp{}", std::process::id()));
        make_disk(&root, &tmp, size_mb)?;
        fs::rename(&tmp, &base).map_err(io_err("rename", &base))?;
    }
    let path = dir.join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&path)
        .output()
        .map_err(|e| ImageError::QemuImg(format!("{e} (apt-get install qemu-utils)")))?;
    if !out.status.success() {
        return Err(ImageError::QemuImg(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(Disk {
        path,
        format: "qcow2",
    })
}

/// Creates the container's disk: an ext4 filesystem labelled `containerfs` holding a copy of
/// `rootfs`, as a sparse raw image of `size_mb` megabytes.
pub fn make_disk(rootfs: &Path, disk: &Path, size_mb: u64) -> Result<(), ImageError> {
    make_disk_with(rootfs, disk, size_mb, "")
}

/// [`make_disk`] with more `mke2fs -E` options (`extended`, comma-separated, may be empty).
pub fn make_disk_with(
    rootfs: &Path,
    disk: &Path,
    size_mb: u64,
    extended: &str,
) -> Result<(), ImageError> {
    let mut ext = String::from("root_owner=0:0");
    if !extended.is_empty() {
        ext.push(',');
        ext.push_str(extended);
    }
    let out = Command::new(sbin_tool("mkfs.ext4"))
        .args(["-q", "-F", "-L", CONTAINERFS_LABEL, "-E", &ext, "-d"])
        .arg(rootfs)
        .arg(disk)
        .arg(format!("{size_mb}M"))
        .output()
        .map_err(|e| ImageError::Mkfs(format!("{e} (apt-get install e2fsprogs)")))?;
    if !out.status.success() {
        return Err(ImageError::Mkfs(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// A system tool by name: found on `$PATH`, else in the sbin directories that an ordinary
/// user's `$PATH` lacks on Debian (mkfs.ext4, debugfs), else the bare name (so that the
/// error names it).
pub fn sbin_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
