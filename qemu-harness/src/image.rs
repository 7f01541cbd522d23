//! Container images as the VMs use them: what a `run` names (an image of the store, or a
//! root filesystem directory), the built-in busybox image, and each container's root disk.
//!
//! Every image goes through the store ([`crate::images`]): a name, ID or ID prefix is an image
//! there, and a directory is made into a cached disk by it
//! ([`ImageStore::directory_disk`]). The built-in `busybox` is an ordinary image of the store,
//! loaded from Debian's busybox-static the first time a state directory's store is used (and
//! again whenever `busybox` is asked for and missing, as docker pulls on `run`).

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::images::{self, ContainerConfig, ImageId, ImageStore, Progress, Reference, StoreError};

/// The label the tether looks for (VIC's `containerfs`).
pub const CONTAINERFS_LABEL: &str = "containerfs";

/// Image errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// the name is neither an image of the store nor a directory
    #[error("image {0:?} not found: give an image of the store (vch images lists them; vch load and vch import add them) or a root filesystem directory")]
    NotFound(String),
    /// busybox-static is not installed
    #[error("the busybox image needs Debian's busybox-static (/bin/busybox): apt-get install busybox-static")]
    NoBusybox,
    /// a directory image's `DIR.image.json` does not parse
    #[error("image config {path}: {why}")]
    BadConfig { path: PathBuf, why: String },
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
    /// the image store failed
    #[error(transparent)]
    Store(Box<StoreError>),
}

impl From<StoreError> for ImageError {
    fn from(e: StoreError) -> ImageError {
        match e {
            StoreError::NoSuchImage(name) => ImageError::NotFound(name),
            other => ImageError::Store(Box::new(other)),
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Docker's default PATH for containers (an image's, when it names none).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `DIR.image.json` for a directory image; `None` for the built-in images.
pub fn image_config_path(image: &str) -> Option<PathBuf> {
    if image == "busybox" {
        return None;
    }
    let trimmed = image.trim_end_matches('/');
    if trimmed.is_empty() {
        return None;
    }
    Some(PathBuf::from(format!("{trimmed}.image.json")))
}

/// The built-in image's name.
pub const BUSYBOX: &str = "busybox";

/// What an image reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An image of the store.
    Stored(ImageId),
    /// A root filesystem directory (absolute).
    Directory(PathBuf),
}

/// An image as a container is made from it: where its root comes from and its config.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub source: Source,
    /// What the image says about its containers: the store image's config, or a directory's
    /// `DIR.image.json`; `None` when there is none.
    pub config: Option<ContainerConfig>,
}

impl Resolved {
    /// The image ID (`sha256:...`) of a store image; empty for a directory.
    pub fn id(&self) -> String {
        match &self.source {
            Source::Stored(id) => id.to_string(),
            Source::Directory(_) => String::new(),
        }
    }
}

/// Whether a reference is written as a path (then it is a directory, never a name).
pub fn looks_like_path(reference: &str) -> bool {
    reference.starts_with('/')
        || reference.starts_with("./")
        || reference.starts_with("../")
        || reference == "."
        || reference == ".."
}

/// Whether a reference names the built-in image (`busybox`, `busybox:latest`,
/// `docker.io/library/busybox:latest`).
pub fn is_builtin_name(reference: &str) -> bool {
    match (
        Reference::parse(reference),
        Reference::parse(BUSYBOX).map(Reference::with_default_tag),
    ) {
        (Ok(r), Ok(b)) => r.with_default_tag() == b,
        _ => false,
    }
}

/// Finds the image a `run` names: a path is a directory; otherwise a name, full ID or
/// unique ID prefix of the store (the built-in busybox is loaded if it is asked for and
/// missing); otherwise an existing directory given by a relative path.
pub fn resolve(store: &ImageStore, reference: &str) -> Result<Resolved, ImageError> {
    if looks_like_path(reference) {
        return directory(reference);
    }
    match store.resolve(reference) {
        Ok(id) => return stored(store, id),
        Err(StoreError::NoSuchImage(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if is_builtin_name(reference) {
        let id = load_builtin(store)?;
        return stored(store, id);
    }
    if Path::new(reference).is_dir() {
        return directory(reference);
    }
    Err(ImageError::NotFound(reference.to_owned()))
}

/// A store image by ID, with its config.
pub fn stored(store: &ImageStore, id: ImageId) -> Result<Resolved, ImageError> {
    let config = store.config(&id)?.config;
    Ok(Resolved {
        source: Source::Stored(id),
        config,
    })
}

fn directory(path: &str) -> Result<Resolved, ImageError> {
    let p = Path::new(path);
    if !p.is_dir() {
        return Err(ImageError::NotFound(path.to_owned()));
    }
    let abs = fs::canonicalize(p).map_err(io_err("resolve", p))?;
    let config = match image_config_path(path) {
        Some(cfg) => crate::records::read_json::<ContainerConfig>(&cfg).map_err(|e| {
            ImageError::BadConfig {
                path: cfg.clone(),
                why: e.to_string(),
            }
        })?,
        None => None,
    };
    Ok(Resolved {
        source: Source::Directory(abs),
        config,
    })
}

/// A container's root disk as QEMU should open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: &'static str,
}

/// Creates the container's root disk in `vm_dir`: a copy-on-write qcow2 overlay of the
/// image's cached disk (a store image's layer disks, or the cached disk of a directory of
/// `size_mb`), so creating a container copies nothing.
pub fn container_disk(
    store: &ImageStore,
    image: &Resolved,
    vm_dir: &Path,
    size_mb: u64,
    progress: &dyn Progress,
) -> Result<Disk, ImageError> {
    Ok(match &image.source {
        Source::Stored(id) => store.container_disk(id, vm_dir, progress)?,
        Source::Directory(dir) => store.directory_disk(dir, vm_dir, size_mb, progress)?,
    })
}

/// Where the store remembers that it was given the built-in image once.
fn builtin_marker(store: &ImageStore) -> PathBuf {
    store.root().join("builtin")
}

/// Gives a store the built-in busybox image the first time it is used (not again after an
/// `rmi busybox`: a `run busybox` brings it back). Without busybox-static there is nothing to
/// give; that is said when busybox is asked for.
pub fn ensure_builtin(store: &ImageStore) {
    if builtin_marker(store).exists() {
        return;
    }
    if let Err(e) = load_builtin(store) {
        tracing::debug!(error = %e, "built-in busybox image not loaded");
    }
}

/// Loads the built-in busybox image into a store (a no-op when it is there) and returns its
/// ID. The archive is made the same way every time from the same busybox binary, so the image
/// ID is the same in every store.
pub fn load_builtin(store: &ImageStore) -> Result<ImageId, ImageError> {
    let archive = builtin_archive()?;
    let loaded = store.load(io::Cursor::new(archive), &images::Silent)?;
    let id = loaded
        .into_iter()
        .next()
        .map(|l| l.id)
        .ok_or_else(|| ImageError::NotFound(BUSYBOX.to_owned()))?;
    let marker = builtin_marker(store);
    fs::write(&marker, id.as_str()).map_err(io_err("write", &marker))?;
    Ok(id)
}

const BUSYBOX_BIN: &str = "/bin/busybox";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:Unprivileged User:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ntty:x:5:\nwheel:x:10:user\nuser:x:1000:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1 localhost\n";
/// Directories of the busybox root besides those its applets live in.
const BUSYBOX_DIRS: &[&str] = &[
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
];

/// The applets' paths (`bin/sh`, `usr/bin/awk`, ...) as busybox lists them.
fn busybox_applets() -> Result<Vec<String>, ImageError> {
    let list = Command::new(BUSYBOX_BIN)
        .arg("--list-full")
        .output()
        .map_err(|_| ImageError::NoBusybox)?;
    Ok(String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect())
}

/// The built-in image as a `docker save` archive: one layer (the busybox binary, a link per
/// applet, passwd and group with `root` and `user` (1000), `/home/user` owned by `user`),
/// `Cmd ["sh"]` as docker's busybox image has, every time given the binary's mtime, so
/// the same binary always gives the same image ID.
pub fn builtin_archive() -> Result<Vec<u8>, ImageError> {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    let bin = fs::read(BUSYBOX_BIN).map_err(|_| ImageError::NoBusybox)?;
    let mtime = fs::metadata(BUSYBOX_BIN)
        .map(|m| m.mtime().max(0) as u64)
        .map_err(|_| ImageError::NoBusybox)?;

    // path → (kind, mode, uid, data or link target)
    enum Entry {
        Dir(u32, u64),
        File(u32, Vec<u8>),
        Link(String),
    }
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let add_dirs = |entries: &mut BTreeMap<String, Entry>, path: &str| {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let (mode, uid) = match prefix.as_str() {
                "tmp" => (0o1777, 0),
                "home/user" => (0o755, 1000),
                _ => (0o755, 0),
            };
            entries
                .entry(prefix.clone())
                .or_insert(Entry::Dir(mode, uid));
        }
    };
    for d in BUSYBOX_DIRS {
        add_dirs(&mut entries, d);
    }
    for applet in busybox_applets()? {
        if let Some((parent, _)) = applet.rsplit_once('/') {
            add_dirs(&mut entries, parent);
        }
        entries
            .entry(applet)
            .or_insert_with(|| Entry::Link("/bin/busybox".into()));
    }
    entries.insert("bin/busybox".into(), Entry::File(0o755, bin));
    entries.insert("etc/passwd".into(), Entry::File(0o644, PASSWD.into()));
    entries.insert("etc/group".into(), Entry::File(0o644, GROUP.into()));
    entries.insert("etc/hosts".into(), Entry::File(0o644, HOSTS.into()));

    let tar_err = |e: io::Error| ImageError::Io {
        what: "build",
        path: PathBuf::from("the busybox image"),
        source: e,
    };
    let mut layer = tar::Builder::new(Vec::new());
    for (path, e) in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        match e {
            Entry::Dir(mode, uid) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*uid);
                layer
                    .append_data(&mut h, format!("{path}/"), io::empty())
                    .map_err(tar_err)?;
            }
            Entry::File(mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                layer
                    .append_data(&mut h, path, &data[..])
                    .map_err(tar_err)?;
            }
            Entry::Link(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                layer.append_link(&mut h, path, target).map_err(tar_err)?;
            }
        }
    }
    let layer = layer.into_inner().map_err(tar_err)?;
    let diff_id = images::Digest::of(&layer);
    let created = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime),
    )
    .to_string();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": [format!("PATH={}", DEFAULT_PATH)],
            "Cmd": ["sh"],
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        "history": [{
            "created": created,
            "created_by": "tether: the built-in image, from Debian's busybox-static",
        }],
    });
    let config = serde_json::to_vec(&config).map_err(|e| ImageError::BadConfig {
        path: PathBuf::from("the busybox image"),
        why: e.to_string(),
    })?;
    let config_name = format!("{}.json", images::Digest::of(&config).hex());
    let layer_name = format!("{}/layer.tar", diff_id.hex());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [format!("{BUSYBOX}:latest")],
        "Layers": [layer_name],
    }]))
    .map_err(|e| ImageError::BadConfig {
        path: PathBuf::from("the busybox image"),
        why: e.to_string(),
    })?;
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [
        (config_name.as_str(), &config[..]),
        (layer_name.as_str(), &layer[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        archive.append_data(&mut h, name, data).map_err(tar_err)?;
    }
    archive.into_inner().map_err(tar_err)
}

/// The root filesystem directory of the built-in busybox image (built once into the cache),
/// or the directory itself: for directory images made from busybox (tests, benchmarks).
pub fn rootfs(image: &str, cache: &Path) -> Result<PathBuf, ImageError> {
    if image == BUSYBOX {
        return busybox_rootfs(cache);
    }
    let p = PathBuf::from(image);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(ImageError::NotFound(image.into()))
    }
}

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
    for d in BUSYBOX_DIRS {
        fs::create_dir_all(tmp.join(d)).map_err(io_err("mkdir", &tmp))?;
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tmp.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(io_err("chmod", &tmp))?;
    fs::write(tmp.join("bin/busybox"), &bin).map_err(io_err("write", &tmp))?;
    fs::set_permissions(tmp.join("bin/busybox"), fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &tmp))?;
    for applet in busybox_applets()? {
        let link = tmp.join(&applet);
        if link.exists() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io_err("mkdir", parent))?;
        }
        symlink("/bin/busybox", &link).map_err(io_err("symlink", &link))?;
    }
    fs::write(tmp.join("etc/passwd"), PASSWD).map_err(io_err("write", &tmp))?;
    fs::write(tmp.join("etc/group"), GROUP).map_err(io_err("write", &tmp))?;
    fs::write(tmp.join("etc/hosts"), HOSTS).map_err(io_err("write", &tmp))?;
    // Only root can give the directory away; an unprivileged user's directory image has
    // the user's own home instead (the store image has the right owner either way).
    if let Err(e) = std::os::unix::fs::chown(tmp.join("home/user"), Some(1000), Some(1000)) {
        tracing::debug!(error = %e, "busybox rootfs: /home/user stays the caller's");
    }
    fs::write(tmp.join(".complete"), b"").map_err(io_err("write", &tmp))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(io_err("rename", &dir))?;
    Ok(dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names() {
        for n in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/library/busybox:latest",
        ] {
            assert!(is_builtin_name(n), "{n}");
        }
        for n in ["busybox:1", "other", "/busybox", "quay.io/busybox"] {
            assert!(!is_builtin_name(n), "{n}");
        }
    }

    #[test]
    fn paths_are_never_names() {
        assert!(looks_like_path("/srv/root"));
        assert!(looks_like_path("./root"));
        assert!(looks_like_path(".."));
        assert!(!looks_like_path("busybox"));
        assert!(!looks_like_path("library/busybox"));
    }

    #[test]
    fn the_builtin_archive_is_the_same_every_time() {
        if !Path::new(BUSYBOX_BIN).is_file() {
            panic!("/bin/busybox is missing: scripts/setup installs busybox-static");
        }
        let a = builtin_archive().unwrap();
        let b = builtin_archive().unwrap();
        assert_eq!(images::Digest::of(&a), images::Digest::of(&b));
    }
}
