//! The image store: real images (docker-save archives, OCI image layouts, rootfs tarballs)
//! kept as cached ext4 disks that containers share copy-on-write, as VIC kept images as
//! disks on a datastore.
//!
//! ```text
//! <state>/images/lock                   flock: tag index read-modify-write, commits, removal
//!                gc.lock                flock: shared while a load/build stages; freeing
//!                                       unused layers and disks needs it exclusively
//!                repositories.json      tags: {"Repositories": {"docker.io/library/busybox":
//!                                       {"docker.io/library/busybox:latest": "sha256:<id>"}}}
//!                ids/<id hex>/config.json   the config blob byte for byte (sha256 = image ID)
//!                             image.json    when and how it came (load, import)
//!                layers/<diff id hex>/blob        the layer as it came: tar, gzip or zstd
//!                                     layer.json  diff ID, compression, sizes, blob digest
//!                disks/<key>/disk.qcow2   ext4 (label `containerfs`) of layers 0..=k; k = 0
//!                                         stands alone, above it only the clusters layer k
//!                                         changed, backed by ../<key of 0..k-1>/disk.qcow2
//!                            disk.json    chain ID, diff ID, parent key, sizes
//!                dirs/<key>.ext4 + .json  directory images: mkfs of a rootfs directory,
//!                                         keyed by its path, size and every entry's metadata
//!                tmp/<what>-<pid>-<rand>/ staging of one load, import or build
//!                builtin                  the store was given the built-in busybox image
//!                                         once ([`crate::image::ensure_builtin`])
//! /dev/shm/tether-images-<pid>-<rand>/      host copies of one layer's files while debugfs
//!                                         writes them in (on disk under tmp/ when the layer
//!                                         does not fit easily in memory)
//! ```
//!
//! A disk `<key>` is keyed by the OCI chain ID of its layers and the filesystem size, so
//! images with a common base share the disks of that base: a second image on the same
//! Debian base costs only the clusters its own layers change. Each container gets a qcow2
//! overlay of its image's top disk ([`ImageStore::container_disk`]): creating a container
//! copies nothing.
//!
//! Writes are atomic: a load stages everything (files of the archive, layers, disks, the
//! image record) under `tmp/`, verifies and builds there, and moves the results into place
//! under `lock` at the end; an error or a crash leaves nothing but a staging directory,
//! removed on the next use. Disks are built with `debugfs -w` from the layers' tar entries
//! ([`debugfs`]), without root and without mounting, so owners, device nodes and file
//! capabilities are right whoever runs the harness.

mod archive;
pub mod config;
pub mod debugfs;
pub mod digest;
mod disks;
pub mod error;
mod fsutil;
mod layer;
mod load;
pub mod progress;
mod qcow2;
pub mod reference;
mod save;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use config::{merge, ConfigError, ConfigFile, ContainerConfig, RunConfig, RunRequest};
pub use digest::{Digest, ImageId};
pub use error::StoreError;
pub use fsutil::{disk_usage, Compression};
pub use progress::{Progress, Silent, Terminal};
pub use reference::Reference;

use error::io_err;
use fsutil::{lock, write_atomic, Lock};

/// Default size of an image's filesystem (VIC's default container disk): a sparse file, so
/// only what is written costs space.
pub const DEFAULT_DISK_SIZE: u64 = 8 << 30;

/// The image store in a state directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    disk_size: u64,
}

/// An image of a load, as `docker load` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub id: ImageId,
    /// Familiar names (`busybox:latest`); empty for an untagged image.
    pub tags: Vec<String>,
    /// Tags that pointed to another image before (docker: "renaming the old one").
    pub moved: Vec<(String, ImageId)>,
}

/// A line of `docker images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub id: ImageId,
    pub repo_tags: Vec<String>,
    /// Unix seconds from the config's `created` (0 when absent).
    pub created: i64,
    /// Uncompressed bytes of all layers.
    pub size: u64,
    pub labels: BTreeMap<String, String>,
}

/// An image in full (`docker image inspect`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Image {
    pub id: ImageId,
    pub repo_tags: Vec<String>,
    /// RFC 3339, as in the config.
    pub created: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub os: Option<String>,
    pub config: ContainerConfig,
    /// Diff IDs, bottom first.
    pub layers: Vec<Digest>,
    pub size: u64,
    /// Unix seconds the image entered this store.
    pub loaded: i64,
}

/// What [`ImageStore::import`] makes of a rootfs tarball (`docker import`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// `NAME[:TAG]`; none = untagged.
    pub reference: Option<String>,
    /// `--change` Dockerfile instructions.
    pub changes: Vec<String>,
    /// `--message`: the history comment.
    pub message: Option<String>,
}

/// A container using an image, as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUse {
    pub id: String,
    pub running: bool,
}

/// One effect of [`ImageStore::remove`], in docker's order and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// A familiar name.
    Untagged(String),
    Deleted(ImageId),
}

/// Bytes the store occupies on disk, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub layers: u64,
    pub disks: u64,
    pub dirs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ImageRecord {
    loaded: i64,
    #[serde(default)]
    source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub diff_id: Digest,
    pub compression: Compression,
    /// Uncompressed bytes.
    pub size: u64,
    pub blob_digest: Digest,
    pub blob_size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, Digest>>,
}

impl Repositories {
    fn tags_of(&self, id: &ImageId) -> Vec<Reference> {
        let mut out: Vec<Reference> = self
            .repositories
            .values()
            .flat_map(|m| m.iter())
            .filter(|(_, v)| *v == id)
            .filter_map(|(k, _)| Reference::parse(k).ok())
            .collect();
        out.sort();
        out
    }

    fn get(&self, r: &Reference) -> Option<&Digest> {
        self.repositories.get(&r.name())?.get(&r.to_string())
    }

    /// Points a tag at an image; returns the image it pointed at before, if another.
    fn set(&mut self, r: &Reference, id: &ImageId) -> Option<ImageId> {
        let old = self
            .repositories
            .entry(r.name())
            .or_default()
            .insert(r.to_string(), id.clone());
        old.filter(|o| o != id)
    }

    fn unset(&mut self, r: &Reference) {
        if let Some(m) = self.repositories.get_mut(&r.name()) {
            m.remove(&r.to_string());
            if m.is_empty() {
                self.repositories.remove(&r.name());
            }
        }
    }

    fn drop_image(&mut self, id: &ImageId) {
        for m in self.repositories.values_mut() {
            m.retain(|_, v| v != id);
        }
        self.repositories.retain(|_, m| !m.is_empty());
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with nanoseconds, as docker writes `created`.
pub(crate) fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds of an RFC 3339 time (`2024-01-02T03:04:05.123Z`, `...+02:00`).
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = days_from_civil(num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let mut secs = days * 86400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[n..];
    }
    match rest.as_bytes().first() {
        Some(b'Z') | Some(b'z') => {}
        Some(&sign @ (b'+' | b'-')) => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let off = h * 3600 + m * 60;
            secs -= if sign == b'+' { off } else { -off };
        }
        _ => return None,
    }
    Some(secs)
}

impl ImageStore {
    /// The store under `<state>/images` (created on first use).
    pub fn new(state_root: &Path) -> ImageStore {
        ImageStore {
            root: state_root.join("images"),
            disk_size: DEFAULT_DISK_SIZE,
        }
    }

    /// Builds image filesystems of `bytes` (rounded up to MiB; at least 16 MiB) instead of
    /// [`DEFAULT_DISK_SIZE`]. Disks of another size are other disks: they are not shared.
    pub fn with_disk_size(mut self, bytes: u64) -> ImageStore {
        self.disk_size = bytes.div_ceil(1 << 20).max(16) << 20;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    fn ids_dir(&self) -> PathBuf {
        self.root.join("ids")
    }
    fn image_dir(&self, id: &ImageId) -> PathBuf {
        self.ids_dir().join(id.hex())
    }
    pub(crate) fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }
    pub(crate) fn disks_dir(&self) -> PathBuf {
        self.root.join("disks")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    fn repositories_path(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    fn ensure_dirs(&self) -> Result<(), StoreError> {
        for d in ["ids", "layers", "disks", "dirs", "tmp"] {
            let p = self.root.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        Ok(())
    }

    /// The store's lock for read-modify-write of its index and for commits.
    fn lock(&self) -> Result<Lock, StoreError> {
        self.ensure_dirs()?;
        lock(&self.root.join("lock"), true, true)?.ok_or_else(|| StoreError::Tool {
            tool: "flock",
            message: "lock not granted".into(),
        })
    }

    /// Held (shared) while staging: keeps [`ImageStore::gc`] from freeing disks or layers a
    /// build is reading.
    fn pin(&self) -> Result<Lock, StoreError> {
        self.ensure_dirs()?;
        fsutil::remove_stale_staging(&self.tmp_dir());
        lock(&self.root.join("gc.lock"), false, true)?.ok_or_else(|| StoreError::Tool {
            tool: "flock",
            message: "lock not granted".into(),
        })
    }

    fn read_repositories(&self) -> Result<Repositories, StoreError> {
        let p = self.repositories_path();
        Ok(crate::records::read_json(&p)
            .map_err(|e| StoreError::BadJson {
                what: p.display().to_string(),
                why: e.to_string(),
            })?
            .unwrap_or_default())
    }

    fn write_repositories(&self, r: &Repositories) -> Result<(), StoreError> {
        let p = self.repositories_path();
        let text = serde_json::to_vec_pretty(r).map_err(|e| StoreError::BadJson {
            what: p.display().to_string(),
            why: e.to_string(),
        })?;
        write_atomic(&p, &text)
    }

    fn exists(&self, id: &ImageId) -> bool {
        self.image_dir(id).join("config.json").is_file()
    }

    fn all_ids(&self) -> Vec<ImageId> {
        let mut ids: Vec<ImageId> = fs::read_dir(self.ids_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .filter(|id| self.exists(id))
            .collect();
        ids.sort();
        ids
    }

    /// The raw config blob of an image.
    pub fn config_bytes(&self, id: &ImageId) -> Result<Vec<u8>, StoreError> {
        let p = self.image_dir(id).join("config.json");
        fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NoSuchImage(id.to_string())
            } else {
                io_err("read", &p)(e)
            }
        })
    }

    /// An image's config, typed.
    pub fn config(&self, id: &ImageId) -> Result<ConfigFile, StoreError> {
        let bytes = self.config_bytes(id)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadJson {
            what: format!("config of image {}", id.short()),
            why: e.to_string(),
        })
    }

    pub(crate) fn layer_record(&self, diff_id: &Digest) -> Result<LayerRecord, StoreError> {
        let p = self.layer_dir(diff_id).join("layer.json");
        crate::records::read_json(&p)
            .map_err(|e| StoreError::BadJson {
                what: p.display().to_string(),
                why: e.to_string(),
            })?
            .ok_or_else(|| StoreError::MissingFile {
                path: p.display().to_string(),
                by: format!("the store (layer {diff_id})"),
            })
    }

    /// Finds an image by name (`busybox`, `busybox:1`, `docker.io/library/busybox:latest`),
    /// full ID (`sha256:...` or its hex) or unique ID prefix, as docker does: names first.
    pub fn resolve(&self, reference: &str) -> Result<ImageId, StoreError> {
        self.resolve_how(reference).map(|(id, _)| id)
    }

    /// Also says whether the reference was a name (and which).
    fn resolve_how(&self, reference: &str) -> Result<(ImageId, Option<Reference>), StoreError> {
        let no_such = || StoreError::NoSuchImage(reference.to_owned());
        if let Some(hex) = reference.strip_prefix("sha256:") {
            return self.by_prefix(hex, reference).map(|id| (id, None));
        }
        if digest::is_hex64(reference) {
            let id = Digest::parse(&format!("sha256:{reference}")).map_err(|_| no_such())?;
            return if self.exists(&id) {
                Ok((id, None))
            } else {
                Err(no_such())
            };
        }
        if let Ok(r) = Reference::parse(reference) {
            let r = r.with_default_tag();
            if let Some(id) = self.read_repositories()?.get(&r) {
                if self.exists(id) {
                    return Ok((id.clone(), Some(r)));
                }
            }
        }
        if !reference.is_empty() && digest::is_hex(reference) {
            return self.by_prefix(reference, reference).map(|id| (id, None));
        }
        Err(no_such())
    }

    fn by_prefix(&self, hex: &str, reference: &str) -> Result<ImageId, StoreError> {
        if hex.is_empty() || !digest::is_hex(hex) {
            return Err(StoreError::NoSuchImage(reference.to_owned()));
        }
        let mut found = self
            .all_ids()
            .into_iter()
            .filter(|id| id.hex().starts_with(hex));
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (Some(_), Some(_)) => Err(StoreError::Ambiguous(reference.to_owned())),
            _ => Err(StoreError::NoSuchImage(reference.to_owned())),
        }
    }

    fn summary_parts(&self, id: &ImageId) -> Result<(ConfigFile, u64, ImageRecord), StoreError> {
        let cfg = self.config(id)?;
        let mut size = 0;
        for d in &cfg.rootfs.diff_ids {
            size += self.layer_record(d).map(|l| l.size).unwrap_or(0);
        }
        let rec: ImageRecord = crate::records::read_json(&self.image_dir(id).join("image.json"))
            .ok()
            .flatten()
            .unwrap_or_default();
        Ok((cfg, size, rec))
    }

    /// All images, newest first (`docker images`).
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let repos = self.read_repositories()?;
        let mut out = Vec::new();
        for id in self.all_ids() {
            let (cfg, size, _) = match self.summary_parts(&id) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(image = %id, error = %e, "skipping damaged image");
                    continue;
                }
            };
            out.push(ImageSummary {
                repo_tags: repos.tags_of(&id).iter().map(Reference::familiar).collect(),
                created: cfg.created.as_deref().and_then(parse_rfc3339).unwrap_or(0),
                size,
                labels: cfg
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.clone())
                    .unwrap_or_default(),
                id,
            });
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One image in full (`docker image inspect`).
    pub fn inspect(&self, reference: &str) -> Result<Image, StoreError> {
        let id = self.resolve(reference)?;
        self.image(&id)
    }

    fn image(&self, id: &ImageId) -> Result<Image, StoreError> {
        let (cfg, size, rec) = self.summary_parts(id)?;
        let repos = self.read_repositories()?;
        Ok(Image {
            id: id.clone(),
            repo_tags: repos.tags_of(id).iter().map(Reference::familiar).collect(),
            created: cfg.created,
            author: cfg.author,
            comment: cfg.comment,
            architecture: cfg.architecture,
            variant: cfg.variant,
            os: cfg.os,
            config: cfg.config.unwrap_or_default(),
            layers: cfg.rootfs.diff_ids,
            size,
            loaded: rec.loaded,
        })
    }

    /// Gives an image another name (`docker tag SOURCE TARGET`); a tag that named another
    /// image moves.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), StoreError> {
        let id = self.resolve(source)?;
        let r = Reference::parse(target).map_err(|why| StoreError::InvalidReference {
            reference: target.to_owned(),
            why,
        })?;
        if r.digest().is_some() {
            return Err(StoreError::InvalidReference {
                reference: target.to_owned(),
                why: "refusing to create a tag with a digest reference".into(),
            });
        }
        let r = r.with_default_tag();
        let _lock = self.lock()?;
        if !self.exists(&id) {
            return Err(StoreError::NoSuchImage(source.to_owned()));
        }
        let mut repos = self.read_repositories()?;
        repos.set(&r, &id);
        self.write_repositories(&repos)
    }

    /// `docker rmi`: by name, removes that tag, and the image with its last tag; by ID,
    /// removes the image with all its tags (those of one repository, or any with `force`).
    /// While a container uses the image: untagging its last name needs `force`, deleting it
    /// by ID is refused (running container) or needs `force` (stopped one). An image a
    /// container still uses is never deleted from disk here, since its disks back that
    /// container: it stays, untagged, until removed again once no container uses it.
    /// Layers and disks only it used are freed.
    pub fn remove(
        &self,
        reference: &str,
        force: bool,
        in_use: &dyn Fn(&ImageId) -> Option<ContainerUse>,
    ) -> Result<Vec<Removed>, StoreError> {
        let _lock = self.lock()?;
        let (id, by_name) = self.resolve_how(reference)?;
        let mut repos = self.read_repositories()?;
        let tags = repos.tags_of(&id);
        let mut out = Vec::new();
        let short = id.short().to_owned();
        let user = in_use(&id);
        if let Some(r) = by_name {
            if !force && tags.len() <= 1 {
                if let Some(c) = &user {
                    return Err(StoreError::Conflict(format!(
                        "conflict: unable to remove repository reference {reference:?} (must force) - container {} is using its referenced image {short}",
                        truncate(&c.id)
                    )));
                }
            }
            repos.unset(&r);
            out.push(Removed::Untagged(r.familiar()));
            if tags.len() > 1 || user.is_some() {
                self.write_repositories(&repos)?;
                return Ok(out);
            }
        } else {
            let repo_names: BTreeSet<String> = tags.iter().map(Reference::name).collect();
            if !force && repo_names.len() > 1 {
                return Err(StoreError::Conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                )));
            }
            match &user {
                Some(c) if c.running => {
                    return Err(StoreError::Conflict(format!(
                        "conflict: unable to delete {short} (cannot be forced) - image is being used by running container {}",
                        truncate(&c.id)
                    )))
                }
                Some(c) if !force => {
                    return Err(StoreError::Conflict(format!(
                        "conflict: unable to delete {short} (must be forced) - image is being used by stopped container {}",
                        truncate(&c.id)
                    )))
                }
                _ => {}
            }
            for t in &tags {
                repos.unset(t);
                out.push(Removed::Untagged(t.familiar()));
            }
            if user.is_some() {
                self.write_repositories(&repos)?;
                return Ok(out);
            }
        }
        repos.drop_image(&id);
        self.write_repositories(&repos)?;
        let dir = self.image_dir(&id);
        fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        out.push(Removed::Deleted(id));
        self.gc_locked();
        Ok(out)
    }

    /// Frees layers and disks no image uses (and stale staging), unless a load or build
    /// is staging right now (then the next removal frees them).
    pub fn gc(&self) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        self.gc_locked();
        Ok(())
    }

    fn gc_locked(&self) {
        fsutil::remove_stale_staging(&self.tmp_dir());
        let Ok(Some(_exclusive)) = lock(&self.root.join("gc.lock"), true, false) else {
            return;
        };
        let mut layers = BTreeSet::new();
        let mut chains = BTreeSet::new();
        for id in self.all_ids() {
            let Ok(cfg) = self.config(&id) else {
                return; // an unreadable image: free nothing rather than guess what it uses
            };
            chains.extend(disks::chain_ids(&cfg.rootfs.diff_ids));
            layers.extend(cfg.rootfs.diff_ids.iter().map(|d| d.hex().to_owned()));
        }
        for e in fs::read_dir(self.root.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !layers.contains(&*e.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        // By chain, not by key: a disk built at another filesystem size (another store
        // setting) for a chain still in use may back a container.
        for e in fs::read_dir(self.disks_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            match disks::disk_chain(&e.path()) {
                Some(chain) if !chains.contains(&chain) => {
                    let _ = fs::remove_dir_all(e.path());
                }
                _ => {}
            }
        }
    }

    /// Bytes on disk of each part of the store.
    pub fn usage(&self) -> Usage {
        Usage {
            layers: disk_usage(&self.root.join("layers")),
            disks: disk_usage(&self.disks_dir()),
            dirs: disk_usage(&self.root.join("dirs")),
        }
    }
}

fn truncate(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2009-02-13T23:31:30.5Z"), Some(1_234_567_890));
        assert_eq!(
            parse_rfc3339("2009-02-14T01:31:30+02:00"),
            Some(1_234_567_890)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        let now = rfc3339_now();
        let parsed = parse_rfc3339(&now).unwrap();
        assert!((parsed - now_unix()).abs() <= 2, "{now}");
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn repositories_index() {
        let mut r = Repositories::default();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let bb = Reference::parse("busybox").unwrap().with_default_tag();
        assert_eq!(r.set(&bb, &a), None);
        assert_eq!(r.set(&bb, &a), None);
        assert_eq!(r.set(&bb, &b), Some(a.clone()));
        assert_eq!(r.get(&bb), Some(&b));
        let v1 = bb.with_tag("1");
        r.set(&v1, &b);
        assert_eq!(r.tags_of(&b).len(), 2);
        r.unset(&bb);
        assert_eq!(r.tags_of(&b), vec![v1]);
        r.drop_image(&b);
        assert!(r.repositories.is_empty());
    }
}
