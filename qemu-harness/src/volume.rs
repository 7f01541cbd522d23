//! Named volumes: what the VIC port layer's volume stores do, on the harness's disk.
//!
//! A disk volume is a raw ext4 image file in the state directory, made without mounting
//! anything on the host:
//!
//! ```text
//! <state>/volumes/<name>/volume.json   name, driver, label or NFS target, size, created
//!                        disk.img      sparse raw ext4 image (disk volumes only)
//! ```
//!
//! As the port layer does (`lib/portlayer/storage/volume/vsphere/store.go`), a new disk
//! volume's filesystem carries the volume's label and an empty `.vic.vol.data` directory (mode
//! 0755) at its root. The tether bind-mounts that directory, not the filesystem root, onto the
//! mount point, so the volume's `lost+found` never shows inside the container
//! (tether-lifecycle.md §8). The label is the port layer's: the first 16 hex digits of the MD5
//! of the volume ID (e2label's 16-byte limit), which is what makes it unique per volume.
//!
//! An NFS volume has no disk: it names an export, and the container VM mounts it itself with
//! the option string the port layer's NFS store writes.
//!
//! The volume ID the port layer keys the container's `mounts|<id>` entries with is the docker
//! volume name; anonymous volumes get a random 64-hex-digit name, as docker gives them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// The directory inside a new volume that the tether mounts (VIC's `disk.VolumeDataDir`).
pub const DATA_DIR: &str = ".vic.vol.data";

/// Size of a volume when none is given, and of anonymous volumes (VIC's default capacity).
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// Smallest disk volume: ext4 with a journal needs a few MiB to be of any use.
pub const MIN_SIZE: u64 = 8 << 20;

/// Largest disk volume (a sparse file: only written blocks take space).
pub const MAX_SIZE: u64 = 16 << 40;

/// The NFS mount options the VIC port layer writes into `mounts|<id>/mode`, followed by
/// `,addr=<host>` (`lib/portlayer/storage/volume/nfs/join.go`).
pub const NFS_OPTIONS: &str =
    "vers=3,rsize=131072,wsize=131072,hard,proto=tcp,timeo=600,sec=sys,mountvers=3,mountproto=tcp,nolock";

/// The label of the container's root disk: never usable for a volume.
const ROOT_LABEL: &str = crate::image::CONTAINERFS_LABEL;

/// Volume errors.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// the name is not a docker volume name
    #[error("invalid volume name {0:?}: use 2 or more of [a-zA-Z0-9_.-], starting with a letter or digit")]
    InvalidName(String),
    /// a volume of that name exists
    #[error("volume {0:?} already exists")]
    Exists(String),
    /// no volume of that name
    #[error("no such volume: {0}")]
    NoSuch(String),
    /// a label that the tether could not find or that clashes
    #[error("invalid volume label {0:?}: {1}")]
    InvalidLabel(String, &'static str),
    /// two volumes would carry the same label
    #[error("label {label:?} is already used by volume {other:?}")]
    LabelInUse { label: String, other: String },
    /// a size that does not parse or is out of range
    #[error("invalid size {0:?}: {1}")]
    BadSize(String, String),
    /// a bad `-v` specification
    #[error("invalid volume specification {spec:?}: {why}")]
    BadSpec { spec: String, why: String },
    /// a bad NFS target
    #[error("invalid NFS target {0:?}: want HOST:/EXPORT")]
    BadNfs(String),
    /// containers still use the volume
    #[error("volume {name} is in use by container(s) {containers}")]
    InUse { name: String, containers: String },
    /// mkfs.ext4 failed
    #[error("mkfs.ext4 failed for volume {0}: {1}")]
    Mkfs(String, String),
    /// a metadata file could not be read
    #[error(transparent)]
    Record(#[from] crate::records::RecordError),
    /// a file operation failed
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What backs a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase")]
pub enum Backing {
    /// An ext4 image (`disk.img`) carrying `label`.
    Disk { label: String, size: u64 },
    /// An NFS export. `options` is the mount option string; empty means the port layer's
    /// ([`NFS_OPTIONS`] plus `addr=<host>`).
    Nfs {
        host: String,
        path: String,
        #[serde(default)]
        options: String,
    },
}

/// A volume as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    #[serde(flatten)]
    pub backing: Backing,
    /// Made for one container (`-v /path` or an image's declared volume); removed with it.
    #[serde(default)]
    pub anonymous: bool,
    /// Unix seconds.
    #[serde(default)]
    pub created: i64,
}

impl Volume {
    /// `vsphere` for disks (the driver name VIC reports), `nfs` for exports.
    pub fn driver(&self) -> &'static str {
        match self.backing {
            Backing::Disk { .. } => "vsphere",
            Backing::Nfs { .. } => "nfs",
        }
    }

    /// The ext4 label of a disk volume.
    pub fn label(&self) -> Option<&str> {
        match &self.backing {
            Backing::Disk { label, .. } => Some(label),
            Backing::Nfs { .. } => None,
        }
    }
}

/// What `vch volume create` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateVolume {
    /// Empty for an anonymous volume (a random name is chosen).
    pub name: String,
    /// Bytes; `None` = [`DEFAULT_SIZE`].
    pub size: Option<u64>,
    /// Overrides the port layer's derived label.
    pub label: Option<String>,
    /// `HOST:/EXPORT` for an NFS volume.
    pub nfs: Option<String>,
    /// NFS mount options replacing the port layer's.
    pub nfs_options: Option<String>,
    pub anonymous: bool,
}

/// The port layer's label for a volume ID: the first 16 hex digits of its MD5 (VIC's
/// `volume.Label`).
pub fn vic_label(id: &str) -> String {
    let digest = Md5::digest(id.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Docker's rule for volume names (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`). It also keeps the name
/// safe in an extraConfig key (`mounts|<name>/…`) and as a directory name.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A label the tether can look up: it becomes a path component
/// (`/dev/disk/by-label/<label>`, `/.tether/.filesystem-by-label/<label>`).
pub fn check_label(label: &str) -> Result<(), VolumeError> {
    let bad = |why| Err(VolumeError::InvalidLabel(label.into(), why));
    if label.is_empty() || label.len() > 16 {
        return bad("an ext4 label has 1 to 16 characters");
    }
    if label == ROOT_LABEL {
        return bad("containerfs is the container's root disk");
    }
    if label == "." || label == ".." {
        return bad("not a file name");
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return bad("use only [a-zA-Z0-9_.-]");
    }
    Ok(())
}

/// Parses a size: a number with an optional binary unit `K`, `M`, `G` or `T` (case does not
/// matter; a trailing `B` or `iB` is allowed: `512M`, `1GiB`, `10gb`). A bare number is MiB,
/// as VIC reads a volume's `Capacity` option.
pub fn parse_size(text: &str) -> Result<u64, VolumeError> {
    let bad = |why: &str| VolumeError::BadSize(text.into(), why.into());
    let t = text.trim();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(bad("expected a number with an optional unit (K, M, G, T)"));
    }
    let number: u64 = t[..digits].parse().map_err(|_| bad("number too large"))?;
    let unit = t[digits..].trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" | "m" => 20,
        "k" => 10,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad("unknown unit (K, M, G, T)")),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("too large"))?;
    if bytes < MIN_SIZE {
        return Err(bad("a volume needs at least 8 MiB"));
    }
    if bytes > MAX_SIZE {
        return Err(bad("at most 16 TiB"));
    }
    Ok(bytes)
}

/// Formats a byte count the way [`parse_size`] reads it (largest exact unit).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes & ((1 << shift) - 1) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Splits `HOST:/EXPORT` (an IPv6 host goes in brackets: `[::1]:/export`).
pub fn parse_nfs_target(target: &str) -> Result<(String, String), VolumeError> {
    let bad = || VolumeError::BadNfs(target.into());
    let (host, path) = match target.strip_prefix('[') {
        Some(rest) => {
            let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
            (h, p)
        }
        None => target.split_once(':').ok_or_else(bad)?,
    };
    if host.is_empty()
        || !path.starts_with('/')
        || host.contains(|c: char| c.is_whitespace() || c == ',' || c == '/')
        || path.contains(',')
    {
        return Err(bad());
    }
    Ok((host.to_owned(), path.to_owned()))
}

/// Whether an NFS host means the machine running the harness (the guest reaches it as
/// QEMU user networking's host address).
pub fn is_local_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.starts_with("127.")
}

/// The volume store in a state directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

impl VolumeStore {
    /// The store under `<state>/volumes` (created when the first volume is).
    pub fn new(state_root: &Path) -> VolumeStore {
        VolumeStore {
            root: state_root.join("volumes"),
        }
    }

    /// A volume's folder.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A disk volume's image file.
    pub fn disk_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("disk.img")
    }

    /// Reads one volume.
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::NoSuch(name.into()));
        }
        let path = self.dir(name).join("volume.json");
        crate::records::read_json(&path)?.ok_or_else(|| VolumeError::NoSuch(name.into()))
    }

    /// All volumes, by name. Damaged entries are skipped (and logged).
    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                match self.get(&name) {
                    Ok(v) => Some(v),
                    Err(err) => {
                        tracing::warn!(volume = %name, error = %err, "skipping volume");
                        None
                    }
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Creates a volume: checks everything first, then makes the filesystem.
    pub fn create(&self, req: &CreateVolume) -> Result<Volume, VolumeError> {
        let name = if req.name.is_empty() {
            crate::records::new_id()
        } else {
            req.name.clone()
        };
        if !valid_name(&name) {
            return Err(VolumeError::InvalidName(name));
        }
        if self.dir(&name).join("volume.json").exists() {
            return Err(VolumeError::Exists(name));
        }
        let backing = match &req.nfs {
            Some(target) => {
                if req.label.is_some() || req.size.is_some() {
                    return Err(VolumeError::BadNfs(format!(
                        "{target} (an NFS volume has no --size or --label)"
                    )));
                }
                let (host, path) = parse_nfs_target(target)?;
                let options = req.nfs_options.clone().unwrap_or_default();
                if options.contains(char::is_whitespace) {
                    return Err(VolumeError::BadNfs(format!(
                        "{target} (mount options contain white space)"
                    )));
                }
                Backing::Nfs {
                    host,
                    path,
                    options,
                }
            }
            None => {
                if req.nfs_options.is_some() {
                    return Err(VolumeError::BadNfs("--nfs-opts without --nfs".to_owned()));
                }
                let label = req.label.clone().unwrap_or_else(|| vic_label(&name));
                check_label(&label)?;
                if let Some(other) = self
                    .list()
                    .into_iter()
                    .find(|v| v.label() == Some(label.as_str()))
                {
                    return Err(VolumeError::LabelInUse {
                        label,
                        other: other.name,
                    });
                }
                let size = req.size.unwrap_or(DEFAULT_SIZE);
                if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
                    return Err(VolumeError::BadSize(
                        size.to_string(),
                        "between 8 MiB and 16 TiB".into(),
                    ));
                }
                Backing::Disk { label, size }
            }
        };
        let volume = Volume {
            name: name.clone(),
            backing,
            anonymous: req.anonymous,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        let dir = self.dir(&name);
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        // Making the folder claims the name: of two concurrent creates, one wins.
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(VolumeError::Exists(name));
            }
            Err(source) => {
                return Err(VolumeError::Io {
                    what: "create",
                    path: dir,
                    source,
                })
            }
        }
        let made = (|| {
            if let Backing::Disk { label, size } = &volume.backing {
                make_volume_disk(&dir, &self.disk_path(&name), label, *size)
                    .map_err(|why| VolumeError::Mkfs(name.clone(), why))?;
            }
            // volume.json last: a volume exists once its metadata does.
            Ok(crate::records::write_json(
                &dir.join("volume.json"),
                &volume,
            )?)
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::info!(volume = %name, driver = volume.driver(), "volume created");
        Ok(volume)
    }

    /// Removes a volume and its disk. Callers check that no container uses it.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        self.get(name)?;
        let dir = self.dir(name);
        fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))
    }
}

/// Makes a volume's ext4 image: the label, and `.vic.vol.data` at the root, put there by
/// `mkfs.ext4 -d` from a prepared directory so that nothing is mounted on the host.
fn make_volume_disk(dir: &Path, disk: &Path, label: &str, size: u64) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let seed = dir.join(".seed");
    let _ = fs::remove_dir_all(&seed);
    let data = seed.join(DATA_DIR);
    fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
    // The port layer makes it 0755; the umask must not change that.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", data.display()))?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d"])
        .arg(&seed)
        .arg(disk)
        .arg(format!("{}K", size.div_ceil(1024)))
        .output();
    let _ = fs::remove_dir_all(&seed);
    let out = out.map_err(|e| format!("{e} (apt-get install e2fsprogs)"))?;
    if !out.status.success() {
        let _ = fs::remove_file(disk);
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(())
}

/// Where a `-v` volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A named volume (created on first use).
    Named(String),
    /// A fresh volume for this container only.
    Anonymous,
}

/// A parsed `-v` option (docker's `[NAME:]DEST[:OPTIONS]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub source: VolumeSource,
    /// Absolute mount point in the container.
    pub dest: String,
    /// `ro`: written as the mount's mode (the original tether does not enforce it).
    pub read_only: bool,
    /// `nocopy`: the image's content at `dest` is not copied into a new volume (copy mode
    /// `CopyNever` instead of `CopyNew`).
    pub no_copy: bool,
}

impl VolumeSpec {
    /// The mount's copy mode as the port layer writes it: VIC's volume stores give every
    /// volume `CopyNew` (copy the image's content into it while it is empty); `nocopy`
    /// asks for `CopyNever`.
    pub fn copy_mode(&self) -> i64 {
        if self.no_copy {
            guestinfo::copy_mode::NEVER
        } else {
            guestinfo::copy_mode::NEW
        }
    }
}

/// Parses `-v` as docker does: `DEST`, `DEST:OPTS`, `NAME:DEST` or `NAME:DEST:OPTS`, where
/// OPTS is a comma-separated list of `ro`, `rw` and `nocopy`. Host directories (a source
/// starting with `/`, `.` or `~`) cannot be mounted into a VM, as on VIC.
pub fn parse_volume_spec(spec: &str) -> Result<VolumeSpec, VolumeError> {
    let bad = |why: &str| VolumeError::BadSpec {
        spec: spec.into(),
        why: why.into(),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, dest, opts) = match parts.as_slice() {
        [dest] => (None, *dest, ""),
        [a, b] if !b.starts_with('/') && !a.is_empty() && a.starts_with('/') => (None, *a, *b),
        [a, b] => (Some(*a), *b, ""),
        [a, b, c] => (Some(*a), *b, *c),
        _ => return Err(bad("too many ':'")),
    };
    let source = match source {
        None => VolumeSource::Anonymous,
        Some(s) if s.starts_with(['/', '.', '~']) => {
            return Err(bad(
                "host directories cannot be mounted into a container VM; use a named volume",
            ))
        }
        Some(s) if valid_name(s) => VolumeSource::Named(s.to_owned()),
        Some(s) => return Err(VolumeError::InvalidName(s.into())),
    };
    let dest = clean_dest(dest)
        .ok_or_else(|| bad("the mount point must be an absolute path other than /"))?;
    let mut spec_out = VolumeSpec {
        source,
        dest,
        read_only: false,
        no_copy: false,
    };
    let (mut seen_mode, mut seen_copy) = (false, false);
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" | "rw" if !seen_mode => {
                seen_mode = true;
                spec_out.read_only = opt == "ro";
            }
            "nocopy" if !seen_copy => {
                seen_copy = true;
                spec_out.no_copy = true;
            }
            "ro" | "rw" | "nocopy" => return Err(bad("option given twice")),
            other => return Err(bad(&format!("unknown option {other:?} (ro, rw, nocopy)"))),
        }
    }
    Ok(spec_out)
}

/// An absolute, normalised mount point (`//a/./b/` ⇒ `/a/b`); `None` for relative paths,
/// `..`, and `/` itself.
pub fn clean_dest(dest: &str) -> Option<String> {
    if !dest.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for p in dest.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// The volumes an image declares, as docker's image config `Volumes` does: a directory image
/// `DIR` may come with a file `DIR.image.json` beside it holding `{"Volumes": {"/data": {}}}`
/// (the docker image config's own shape, so a `config` section of `docker inspect` output
/// can be pasted in). Each declared path gets an anonymous volume unless a `-v` covers it.
/// The file lives beside the directory, not in it, so that it does not end up in the
/// container's root filesystem.
pub fn image_volumes(image: &str) -> Result<Vec<String>, VolumeError> {
    let Some(path) = crate::image::image_config_path(image) else {
        return Ok(Vec::new());
    };
    #[derive(Deserialize)]
    struct ImageConfig {
        #[serde(rename = "Volumes", default)]
        volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    }
    let Some(cfg): Option<ImageConfig> = crate::records::read_json(&path)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for dest in cfg.volumes.unwrap_or_default().into_keys() {
        let clean = clean_dest(&dest).ok_or_else(|| VolumeError::BadSpec {
            spec: dest.clone(),
            why: format!(
                "declared in {}: not an absolute path other than /",
                path.display()
            ),
        })?;
        if !out.contains(&clean) {
            out.push(clean);
        }
    }
    Ok(out)
}

/// A volume attached to a container, as its metadata keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedVolume {
    /// The volume when the container was created.
    pub volume: Volume,
    pub dest: String,
    #[serde(default)]
    pub read_only: bool,
    /// `mounts|<id>/copymode`.
    pub copy_mode: i64,
    /// The image QEMU attaches (disk volumes).
    #[serde(default)]
    pub disk: Option<PathBuf>,
}

/// Where a planned mount's volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Planned {
    Existing(Volume),
    /// A named volume that does not exist yet: made on `run`, as docker does.
    CreateNamed(String),
    Anonymous,
}

/// A container's mounts, checked and waiting to be realised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    mounts: Vec<(Planned, VolumeSpec)>,
}

impl MountPlan {
    /// An NFS volume exported by the harness's own machine, which the container can reach
    /// only over a network (through slirp's host address).
    pub fn local_nfs(&self) -> Option<&str> {
        self.mounts.iter().find_map(|(p, _)| match p {
            Planned::Existing(Volume {
                name,
                backing: Backing::Nfs { host, .. },
                ..
            }) if is_local_host(host) => Some(name.as_str()),
            _ => None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }
}

/// Checks a run's volumes without changing anything: the `-v` specs plus the volumes the
/// image declares (each gets an anonymous volume unless a `-v` mounts something there).
/// `in_use` names the running container that has a disk volume attached, if any: a disk
/// can be attached to one running VM only, as on vSphere.
pub fn plan(
    store: &VolumeStore,
    specs: &[VolumeSpec],
    image_volumes: &[String],
    in_use: &dyn Fn(&str) -> Option<String>,
) -> Result<MountPlan, VolumeError> {
    let mut mounts: Vec<(Planned, VolumeSpec)> = Vec::new();
    for spec in specs {
        let dup_dest = mounts.iter().any(|(_, s)| s.dest == spec.dest);
        if dup_dest {
            return Err(VolumeError::BadSpec {
                spec: spec.dest.clone(),
                why: "duplicate mount point".into(),
            });
        }
        let planned = match &spec.source {
            VolumeSource::Anonymous => Planned::Anonymous,
            VolumeSource::Named(name) => {
                let twice = mounts.iter().any(|(p, _)| match p {
                    Planned::Existing(v) => &v.name == name,
                    Planned::CreateNamed(n) => n == name,
                    Planned::Anonymous => false,
                });
                if twice {
                    return Err(VolumeError::BadSpec {
                        spec: name.clone(),
                        why: "the volume is mounted twice".into(),
                    });
                }
                match store.get(name) {
                    Ok(v) => {
                        if matches!(v.backing, Backing::Disk { .. }) {
                            if let Some(c) = in_use(name) {
                                return Err(VolumeError::InUse {
                                    name: name.clone(),
                                    containers: format!(
                                        "{c} (a disk volume is attached to one running container at a time)"
                                    ),
                                });
                            }
                        }
                        Planned::Existing(v)
                    }
                    Err(VolumeError::NoSuch(_)) => Planned::CreateNamed(name.clone()),
                    Err(e) => return Err(e),
                }
            }
        };
        mounts.push((planned, spec.clone()));
    }
    for dest in image_volumes {
        if !mounts.iter().any(|(_, s)| &s.dest == dest) {
            mounts.push((
                Planned::Anonymous,
                VolumeSpec {
                    source: VolumeSource::Anonymous,
                    dest: dest.clone(),
                    read_only: false,
                    no_copy: false,
                },
            ));
        }
    }
    Ok(MountPlan { mounts })
}

/// Creates the volumes a plan needs and returns the attachments. If a volume cannot be made,
/// the anonymous ones made so far are removed again.
pub fn realize(store: &VolumeStore, plan: &MountPlan) -> Result<Vec<AttachedVolume>, VolumeError> {
    let mut out: Vec<AttachedVolume> = Vec::new();
    for (planned, spec) in &plan.mounts {
        let made = match planned {
            Planned::Existing(v) => Ok(v.clone()),
            Planned::CreateNamed(name) => match store.create(&CreateVolume {
                name: name.clone(),
                ..Default::default()
            }) {
                // Another run made it meanwhile: use it, as docker does.
                Err(VolumeError::Exists(_)) => store.get(name),
                other => other,
            },
            Planned::Anonymous => store.create(&CreateVolume {
                anonymous: true,
                ..Default::default()
            }),
        };
        let volume = match made {
            Ok(v) => v,
            Err(e) => {
                release(store, &out);
                return Err(e);
            }
        };
        let disk = match volume.backing {
            Backing::Disk { .. } => Some(store.disk_path(&volume.name)),
            Backing::Nfs { .. } => None,
        };
        out.push(AttachedVolume {
            volume,
            dest: spec.dest.clone(),
            read_only: spec.read_only,
            copy_mode: spec.copy_mode(),
            disk,
        });
    }
    Ok(out)
}

/// Removes a container's anonymous volumes (when it is removed, or was never made).
pub fn release(store: &VolumeStore, attached: &[AttachedVolume]) {
    for a in attached.iter().filter(|a| a.volume.anonymous) {
        if let Err(e) = store.remove(&a.volume.name) {
            tracing::warn!(volume = %a.volume.name, error = %e, "could not remove anonymous volume");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_the_port_layers() {
        // The first 16 hex digits of the MD5 (RFC 1321 test vectors below).
        let l = vic_label("vol1");
        assert_eq!(l.len(), 16);
        assert!(l.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(vic_label(""), "d41d8cd98f00b204");
        assert_eq!(vic_label("abc"), "900150983cd24fb0");
        assert!(check_label(&l).is_ok());
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_label("containerfs").is_err());
        assert!(check_label("").is_err());
        assert!(check_label("seventeen-chars-x").is_err());
        assert!(check_label("a/b").is_err());
        assert!(check_label("..").is_err());
        assert!(check_label("data-1.x_y").is_ok());
        assert!(check_label("sixteen-chars-xx").is_ok());
    }

    #[test]
    fn names_follow_docker() {
        for ok in ["vol1", "my.vol_2-x", "AB", &"a".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a", "-a", ".a", "a/b", "a|b", "a:b", "a b", "é1"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2gb").unwrap(), 2 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(
            parse_size("512").unwrap(),
            512 << 20,
            "bare numbers are MiB, as VIC"
        );
        assert_eq!(parse_size("16384K").unwrap(), 16 << 20);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size(" 64 M ").unwrap(), 64 << 20);
        for bad in [
            "",
            "G",
            "1X",
            "-1G",
            "1.5G",
            "4M",
            "17T",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn volume_specs() {
        let v = parse_volume_spec("data:/var/lib/data").unwrap();
        assert_eq!(v.source, VolumeSource::Named("data".into()));
        assert_eq!(v.dest, "/var/lib/data");
        assert!(!v.read_only && !v.no_copy);
        assert_eq!(v.copy_mode(), guestinfo::copy_mode::NEW);

        let v = parse_volume_spec("data:/d:ro").unwrap();
        assert!(v.read_only);
        let v = parse_volume_spec("data:/d:ro,nocopy").unwrap();
        assert!(v.read_only && v.no_copy);
        assert_eq!(v.copy_mode(), guestinfo::copy_mode::NEVER);
        let v = parse_volume_spec("data:/d:rw").unwrap();
        assert!(!v.read_only);

        let v = parse_volume_spec("/scratch").unwrap();
        assert_eq!(v.source, VolumeSource::Anonymous);
        assert_eq!(v.dest, "/scratch");
        let v = parse_volume_spec("/scratch:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Anonymous);
        assert!(v.read_only);
        let v = parse_volume_spec("//a/./b/").unwrap();
        assert_eq!(v.dest, "/a/b");

        for bad in [
            "",
            "/",
            "data:/",
            "data:rel/path",
            "/host/dir:/d",
            "./dir:/d",
            "~/dir:/d",
            "data:/d:rx",
            "data:/d:ro,ro",
            "data:/d:ro,rw",
            "a:/d:ro:x",
            "-bad:/d",
            "data:/a/../b",
            "relative",
        ] {
            assert!(parse_volume_spec(bad).is_err(), "{bad:?}");
        }
        let e = parse_volume_spec("/etc:/etc").unwrap_err().to_string();
        assert!(e.contains("host directories"), "{e}");
    }

    #[test]
    fn nfs_targets() {
        assert_eq!(
            parse_nfs_target("10.0.0.5:/exports/vol").unwrap(),
            ("10.0.0.5".into(), "/exports/vol".into())
        );
        assert_eq!(
            parse_nfs_target("nfs.example.com:/x").unwrap(),
            ("nfs.example.com".into(), "/x".into())
        );
        assert_eq!(
            parse_nfs_target("[::1]:/x").unwrap(),
            ("::1".into(), "/x".into())
        );
        for bad in ["host", "host:", "host:rel", ":/x", "a,b:/x", "h:/x,y"] {
            assert!(parse_nfs_target(bad).is_err(), "{bad}");
        }
        assert!(is_local_host("localhost") && is_local_host("127.0.0.1"));
        assert!(!is_local_host("10.0.0.1"));
    }

    fn temp_store() -> (PathBuf, VolumeStore) {
        let dir = std::env::temp_dir().join(format!(
            "vch-vol-{}-{}",
            std::process::id(),
            crate::records::new_id().get(..8).unwrap_or("x")
        ));
        let store = VolumeStore::new(&dir);
        (dir, store)
    }

    #[test]
    fn store_creates_lists_and_removes() {
        let (dir, store) = temp_store();
        let v = store
            .create(&CreateVolume {
                name: "data".into(),
                size: Some(16 << 20),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(v.label(), Some(vic_label("data").as_str()));
        let img = store.disk_path("data");
        assert!(img.is_file());
        // The superblock carries the label (16 NUL-padded bytes at 0x478) and the root
        // holds .vic.vol.data (checked with debugfs, which reads the image directly).
        let bytes = fs::read(&img).unwrap();
        assert_eq!(&bytes[0x438..0x43a], &[0x53, 0xef]);
        assert_eq!(
            &bytes[0x478..0x478 + 16],
            vic_label("data").as_bytes(),
            "label"
        );
        // debugfs comes with e2fsprogs, which makes the volumes: missing, it is a failure.
        let out = Command::new("debugfs")
            .args(["-R", "stat /.vic.vol.data"])
            .arg(&img)
            .output()
            .expect("debugfs (e2fsprogs) must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Type: directory"), "{text}");
        assert!(text.contains("Mode:  0755"), "{text}");

        assert!(matches!(
            store.create(&CreateVolume {
                name: "data".into(),
                ..Default::default()
            }),
            Err(VolumeError::Exists(_))
        ));
        assert!(matches!(
            store.create(&CreateVolume {
                name: "other".into(),
                label: Some(vic_label("data")),
                size: Some(16 << 20),
                ..Default::default()
            }),
            Err(VolumeError::LabelInUse { .. })
        ));
        let nfs = store
            .create(&CreateVolume {
                name: "shared".into(),
                nfs: Some("localhost:/srv/nfs".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(nfs.driver(), "nfs");
        assert!(!store.disk_path("shared").exists());
        let anon = store
            .create(&CreateVolume {
                anonymous: true,
                size: Some(16 << 20),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(anon.name.len(), 64);
        assert!(anon.anonymous);

        let names: Vec<String> = store.list().into_iter().map(|v| v.name).collect();
        assert_eq!(names.len(), 3);
        assert!(names.contains(&"data".to_string()));
        store.remove("data").unwrap();
        assert!(matches!(store.get("data"), Err(VolumeError::NoSuch(_))));
        assert!(matches!(store.remove("data"), Err(VolumeError::NoSuch(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn image_declared_volumes() {
        let (dir, _) = temp_store();
        let img = dir.join("img");
        fs::create_dir_all(&img).unwrap();
        assert!(image_volumes(img.to_str().unwrap()).unwrap().is_empty());
        fs::write(
            dir.join("img.image.json"),
            r#"{"Volumes": {"/data": {}, "/var/log/": {}}, "Cmd": ["sh"]}"#,
        )
        .unwrap();
        let with_slash = format!("{}/", img.display());
        assert_eq!(
            image_volumes(&with_slash).unwrap(),
            vec!["/data".to_string(), "/var/log".to_string()]
        );
        fs::write(dir.join("img.image.json"), r#"{"Volumes": {"rel": {}}}"#).unwrap();
        assert!(image_volumes(img.to_str().unwrap()).is_err());
        fs::write(dir.join("img.image.json"), "not json").unwrap();
        assert!(image_volumes(img.to_str().unwrap()).is_err());
        assert!(image_volumes("busybox").unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
