//! Image disks: one ext4 disk per layer chain, each holding only what its layer changed
//! over the disk below (as VIC chained one disk per layer), and each container's overlay.
//!
//! Building layer k: the disk of layers 0..k is read out into a raw working image (or a new
//! empty filesystem is made for the first layer), a copy of it is kept, the layer is written
//! in with debugfs, and the clusters that differ from the copy become the qcow2 of layer k
//! (see [`super::qcow2`]). debugfs puts new files into free blocks and leaves the others
//! alone, so a layer's disk is about the size of what it adds, plus the metadata blocks
//! (bitmaps, inode tables, directories) it touches.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::debugfs::{tool, Script};
use super::digest::{Digest, Hasher, ImageId};
use super::error::{io_err, StoreError};
use super::fsutil::{self, decompressed, link_or_copy, sparse_copy, staging_dir, Cleanup};
use super::layer::{apply, ModelOnly, Tree};
use super::progress::{Counting, Progress};
use super::qcow2::{write_diff, DiffStats};
use super::ImageStore;
use crate::image::{self, Disk};

/// `mke2fs -E` options of image filesystems: inode tables written (as zeros, which the qcow2
/// leaves out) so that no guest zeroes them in the background into its overlay; the journal
/// of a fresh sparse file needs no zeroing.
const MKFS_EXTENDED: &str = "lazy_itable_init=0,lazy_journal_init=1";

#[derive(Debug, Serialize, Deserialize)]
struct DiskRecord {
    chain_id: Option<Digest>,
    diff_id: Option<Digest>,
    parent: Option<String>,
    disk_size: u64,
    data_clusters: u64,
    zero_clusters: u64,
    file_bytes: u64,
}

fn disk_key(chain: Option<&Digest>, size: u64) -> String {
    let chain = chain.map_or_else(|| "empty".to_owned(), Digest::to_string);
    Digest::of(format!("tether ext4 v1 size={size} chain={chain}").as_bytes())
        .hex()
        .to_owned()
}

/// The chain IDs of every prefix of a layer list; `[None]` (the empty filesystem) for an
/// image without layers.
pub(crate) fn chain_ids(diff_ids: &[Digest]) -> Vec<Option<Digest>> {
    if diff_ids.is_empty() {
        return vec![None];
    }
    let mut chain: Option<Digest> = None;
    diff_ids
        .iter()
        .map(|d| {
            let c = match &chain {
                None => d.clone(),
                Some(p) => p.chain(d),
            };
            chain = Some(c.clone());
            Some(c)
        })
        .collect()
}

/// The chain a stored disk holds (`Some(None)`: the empty filesystem), from its record.
pub(crate) fn disk_chain(dir: &Path) -> Option<Option<Digest>> {
    let rec: DiskRecord = crate::records::read_json(&dir.join("disk.json")).ok()??;
    Some(rec.chain_id)
}

fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<(), StoreError> {
    let out = Command::new(tool("qemu-img"))
        .args(args)
        .output()
        .map_err(|e| StoreError::Tool {
            tool: "qemu-img",
            message: format!("{e} (apt-get install qemu-utils)"),
        })?;
    if !out.status.success() {
        return Err(StoreError::Tool {
            tool: "qemu-img",
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// A layer blob of this operation: path, name for messages, uncompressed size.
pub(crate) type StagedBlob = (PathBuf, String, u64);

/// Disks made by one operation, waiting in its staging directory.
#[derive(Debug)]
pub(crate) struct Build<'a> {
    store: &'a ImageStore,
    stage: PathBuf,
    /// In build order (parents first): key and parent key.
    staged: Vec<(String, Option<String>)>,
    /// Layer blobs of this operation not yet in the store.
    pub blobs: HashMap<Digest, StagedBlob>,
}

impl<'a> Build<'a> {
    pub fn new(store: &'a ImageStore, stage: &Path) -> Build<'a> {
        Build {
            store,
            stage: stage.to_owned(),
            staged: Vec::new(),
            blobs: HashMap::new(),
        }
    }

    fn staged_dir(&self) -> PathBuf {
        self.stage.join("disks")
    }

    fn disk_path(&self, key: &str) -> Option<PathBuf> {
        let staged = self.staged_dir().join(key).join("disk.qcow2");
        if staged.is_file() {
            return Some(staged);
        }
        let stored = self.store.disks_dir().join(key).join("disk.qcow2");
        stored.is_file().then_some(stored)
    }

    fn blob(&self, diff_id: &Digest) -> Result<StagedBlob, StoreError> {
        if let Some(b) = self.blobs.get(diff_id) {
            return Ok(b.clone());
        }
        let p = self.store.layer_dir(diff_id).join("blob");
        if p.is_file() {
            let size = self.store.layer_record(diff_id)?.size;
            return Ok((p, format!("{diff_id}"), size));
        }
        Err(StoreError::MissingFile {
            path: p.display().to_string(),
            by: format!("the store (layer {diff_id})"),
        })
    }

    /// Makes sure a disk exists for every prefix of `diff_ids`, building the missing ones.
    pub fn chain(
        &mut self,
        diff_ids: &[Digest],
        progress: &dyn Progress,
    ) -> Result<(), StoreError> {
        let keys = self.store.chain_keys(diff_ids);
        let have = (0..keys.len())
            .rev()
            .find(|&i| self.disk_path(&keys[i]).is_some());
        if have == Some(keys.len() - 1) {
            return Ok(());
        }
        let disks = self.staged_dir();
        fs::create_dir_all(&disks).map_err(io_err("create", &disks))?;
        let work = self.stage.join("work.raw");
        let _work_cleanup = Cleanup(Some(work.clone()));
        let mut tree = Tree::new_fs();
        match have {
            None => {
                let empty = self.stage.join("empty");
                fs::create_dir_all(&empty).map_err(io_err("create", &empty))?;
                let _ = fs::remove_file(&work);
                image::make_disk_with(&empty, &work, self.store.disk_size() >> 20, MKFS_EXTENDED)?;
            }
            Some(j) => {
                progress.start("Reading the base layers", None);
                for d in &diff_ids[..=j] {
                    let (blob, name, _) = self.blob(d)?;
                    let f = File::open(&blob).map_err(io_err("open", &blob))?;
                    let (r, _) = decompressed(f, &format!("layer {name}"))?;
                    apply(&mut tree, r, &mut ModelOnly, &name)?;
                }
                let lower = self
                    .disk_path(&keys[j])
                    .ok_or_else(|| StoreError::MissingFile {
                        path: keys[j].clone(),
                        by: "the store's disks".into(),
                    })?;
                // Staged disks name their parent relatively: a store disk below them must be
                // reachable from the staging directory too.
                let link = disks.join(&keys[j]);
                if !link.exists() {
                    std::os::unix::fs::symlink(self.store.disks_dir().join(&keys[j]), &link)
                        .map_err(io_err("symlink", &link))?;
                }
                let _ = fs::remove_file(&work);
                qemu_img(&[
                    "convert".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    "-O".as_ref(),
                    "raw".as_ref(),
                    lower.as_os_str(),
                    work.as_os_str(),
                ])?;
                progress.finish();
            }
        }
        if diff_ids.is_empty() {
            return self.write_disk(&keys[0], None, None, None, &work, None);
        }
        let start = have.map_or(0, |j| j + 1);
        let old = self.stage.join("old.raw");
        let _old_cleanup = Cleanup(Some(old.clone()));
        let mut chain_id = None::<Digest>;
        for (i, d) in diff_ids.iter().enumerate() {
            chain_id = Some(match chain_id {
                None => d.clone(),
                Some(c) => c.chain(d),
            });
            if i < start {
                continue;
            }
            let parent = (i > 0).then(|| keys[i - 1].clone());
            if parent.is_some() {
                sparse_copy(&work, &old)?;
            }
            let (blob, name, unpacked) = self.blob(d)?;
            let total = fs::metadata(&blob).map_err(io_err("stat", &blob))?.len();
            progress.start(
                &format!(
                    "Building disk: layer {}/{} ({})",
                    i + 1,
                    diff_ids.len(),
                    d.short()
                ),
                Some(total),
            );
            let files = fsutil::scratch_dir(&self.stage, unpacked)?;
            let _files_cleanup = Cleanup(Some(files.clone()));
            let mut script = Script::start(&files, &work)?;
            let f = File::open(&blob).map_err(io_err("open", &blob))?;
            let counted = Counting {
                inner: f,
                progress,
                done: 0,
            };
            let (r, _) = decompressed(counted, &format!("layer {name}"))?;
            let t0 = std::time::Instant::now();
            apply(&mut tree, r, &mut script, &name)?;
            let commands = script.commands;
            let t1 = std::time::Instant::now();
            script.finish()?;
            let t2 = std::time::Instant::now();
            let old_ref = parent.as_ref().map(|_| old.as_path());
            self.write_disk(
                &keys[i],
                parent,
                chain_id.clone(),
                Some(d.clone()),
                &work,
                old_ref,
            )?;
            tracing::debug!(
                layer = %d,
                commands,
                unpack_ms = (t1 - t0).as_millis() as u64,
                debugfs_ms = (t2 - t1).as_millis() as u64,
                qcow2_ms = t2.elapsed().as_millis() as u64,
                "layer disk built"
            );
            if std::env::var_os("TETHER_IMAGES_TIMING").is_some() {
                eprintln!(
                    "layer {}: unpack {:?}, debugfs {:?} ({commands} commands), qcow2 {:?}",
                    d.short(),
                    t1 - t0,
                    t2 - t1,
                    t2.elapsed()
                );
            }
            progress.finish();
        }
        Ok(())
    }

    fn write_disk(
        &mut self,
        key: &str,
        parent: Option<String>,
        chain_id: Option<Digest>,
        diff_id: Option<Digest>,
        work: &Path,
        old: Option<&Path>,
    ) -> Result<(), StoreError> {
        let dir = self.staged_dir().join(key);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let backing = parent.as_ref().map(|p| format!("../{p}/disk.qcow2"));
        let stats: DiffStats = write_diff(work, old, backing.as_deref(), &dir.join("disk.qcow2"))?;
        let rec = DiskRecord {
            chain_id,
            diff_id,
            parent: parent.clone(),
            disk_size: self.store.disk_size(),
            data_clusters: stats.data_clusters,
            zero_clusters: stats.zero_clusters,
            file_bytes: stats.file_bytes,
        };
        let text = serde_json::to_vec_pretty(&rec).map_err(|e| StoreError::BadJson {
            what: "disk record".into(),
            why: e.to_string(),
        })?;
        fsutil::write_atomic(&dir.join("disk.json"), &text)?;
        self.staged.push((key.to_owned(), parent));
        Ok(())
    }

    /// Moves the staged disks into the store (the caller holds the store lock). A disk that
    /// appeared meanwhile (another process built the same chain) wins; staged disks above it
    /// were written against ours, so they are dropped too and built again when needed.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let disks = self.store.disks_dir();
        let mut dropped: HashSet<String> = HashSet::new();
        for (key, parent) in std::mem::take(&mut self.staged) {
            let dst = disks.join(&key);
            if dst.exists() || parent.as_ref().is_some_and(|p| dropped.contains(p)) {
                dropped.insert(key);
                continue;
            }
            let src = self.staged_dir().join(&key);
            fs::rename(&src, &dst).map_err(io_err("rename", &dst))?;
        }
        Ok(())
    }
}

impl ImageStore {
    /// The disk keys of every prefix of a layer list (an image without layers has the one
    /// disk of an empty filesystem).
    pub(crate) fn chain_keys(&self, diff_ids: &[Digest]) -> Vec<String> {
        chain_ids(diff_ids)
            .iter()
            .map(|c| disk_key(c.as_ref(), self.disk_size()))
            .collect()
    }

    /// The top disk of an image (qcow2, backed by the disks of its lower layers), built
    /// now if missing.
    pub fn image_disk(&self, id: &ImageId, progress: &dyn Progress) -> Result<PathBuf, StoreError> {
        let diff_ids = self.config(id)?.rootfs.diff_ids;
        let keys = self.chain_keys(&diff_ids);
        let top_key = keys.last().cloned().unwrap_or_default();
        let top = self.disks_dir().join(&top_key).join("disk.qcow2");
        // A lost race with another builder drops our upper disks; building again then finds
        // the winner's lower disks and adds to them.
        for _ in 0..3 {
            if top.is_file() {
                return fs::canonicalize(&top).map_err(io_err("resolve", &top));
            }
            let _pin = self.pin()?;
            let stage = staging_dir(&self.tmp_dir(), "build")?;
            let _cleanup = Cleanup(Some(stage.clone()));
            let mut build = Build::new(self, &stage);
            build.chain(&diff_ids, progress)?;
            let _lock = self.lock()?;
            build.commit()?;
        }
        if top.is_file() {
            return fs::canonicalize(&top).map_err(io_err("resolve", &top));
        }
        Err(StoreError::Tool {
            tool: "disk builder",
            message: format!("the disk of image {} could not be built", id.short()),
        })
    }

    /// The root disk of a new container of an image: `vm_dir/disk.qcow2`, a copy-on-write
    /// overlay of the image's disk (nothing is copied). The filesystem's size is the store's
    /// disk size (sparse).
    pub fn container_disk(
        &self,
        id: &ImageId,
        vm_dir: &Path,
        progress: &dyn Progress,
    ) -> Result<Disk, StoreError> {
        let top = self.image_disk(id, progress)?;
        overlay(&top, "qcow2", vm_dir)
    }

    /// The root disk of a new container of a rootfs directory: the directory is made into an
    /// ext4 disk once (`mkfs.ext4 -d`, owners as on the host) and cached, keyed by its path,
    /// `size_mb` and the metadata of every entry (mtimes and ctimes change with any write),
    /// so a changed directory is rebuilt and an unchanged one is not. The container gets a
    /// qcow2 overlay of it. The cached disk is hard-linked into `vm_dir`, so dropping a stale
    /// cache entry never pulls a disk from under a container.
    pub fn directory_disk(
        &self,
        dir: &Path,
        vm_dir: &Path,
        size_mb: u64,
        progress: &dyn Progress,
    ) -> Result<Disk, StoreError> {
        let src = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        let key = dir_key(&src, size_mb)?;
        let dirs = self.root().join("dirs");
        fs::create_dir_all(&dirs).map_err(io_err("create", &dirs))?;
        let disk = dirs.join(format!("{key}.ext4"));
        if !disk.is_file() {
            progress.start(&format!("Building disk of {}", src.display()), None);
            let tmp = dirs.join(format!(".{key}.{}.tmp", std::process::id()));
            let _cleanup = Cleanup(Some(tmp.clone()));
            let _ = fs::remove_file(&tmp);
            image::make_disk(&src, &tmp, size_mb)?;
            let meta = serde_json::json!({ "source": src, "size_mb": size_mb });
            fsutil::write_atomic(
                &dirs.join(format!("{key}.json")),
                meta.to_string().as_bytes(),
            )?;
            fs::rename(&tmp, &disk).map_err(io_err("rename", &disk))?;
            progress.finish();
            drop_stale_dir_disks(&dirs, &src, &key);
        }
        fs::create_dir_all(vm_dir).map_err(io_err("create", vm_dir))?;
        let local = vm_dir.join("image.ext4");
        let _ = fs::remove_file(&local);
        link_or_copy(&disk, &local)?;
        overlay(Path::new("image.ext4"), "raw", vm_dir)
    }
}

/// `vm_dir/disk.qcow2` over `backing` (absolute, or relative to `vm_dir`).
fn overlay(backing: &Path, format: &str, vm_dir: &Path) -> Result<Disk, StoreError> {
    fs::create_dir_all(vm_dir).map_err(io_err("create", vm_dir))?;
    let path = vm_dir.join("disk.qcow2");
    let _ = fs::remove_file(&path);
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        format.as_ref(),
        "-b".as_ref(),
        backing.as_os_str(),
        path.as_os_str(),
    ])?;
    Ok(Disk {
        path,
        format: "qcow2",
    })
}

/// Other cache entries of the same directory: containers made from them hold their own hard
/// links, so the cache needs only the newest.
fn drop_stale_dir_disks(dirs: &Path, src: &Path, keep: &str) {
    for e in fs::read_dir(dirs).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(stem) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if stem == keep {
            continue;
        }
        let same = fs::read(&p)
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("source").and_then(|s| s.as_str()).map(PathBuf::from))
            .is_some_and(|s| s == src);
        if same {
            let _ = fs::remove_file(dirs.join(format!("{stem}.ext4")));
            let _ = fs::remove_file(&p);
        }
    }
}

/// Hashes the directory's path, the disk size and every entry's metadata.
fn dir_key(root: &Path, size_mb: u64) -> Result<String, StoreError> {
    let mut h = Hasher::new();
    h.update(format!("tether dir v1 size={size_mb}\0").as_bytes());
    h.update(root.as_os_str().as_bytes());
    h.update(b"\0");
    let md = fs::symlink_metadata(root).map_err(io_err("stat", root))?;
    hash_meta(&mut h, b"", &md);
    walk(root, root, &mut h).map_err(io_err("read", root))?;
    let (d, _) = h.finish();
    Ok(d.hex().to_owned())
}

fn hash_meta(h: &mut Hasher, rel: &[u8], md: &fs::Metadata) {
    h.update(rel);
    h.update(b"\0");
    for v in [
        u64::from(md.mode()),
        u64::from(md.uid()),
        u64::from(md.gid()),
        md.size(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
        md.ctime() as u64,
        md.ctime_nsec() as u64,
        md.ino(),
        md.rdev(),
        md.nlink(),
    ] {
        h.update(&v.to_le_bytes());
    }
}

fn walk(root: &Path, dir: &Path, h: &mut Hasher) -> io::Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let md = fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(root).unwrap_or(&p);
        hash_meta(h, rel.as_os_str().as_bytes(), &md);
        if md.file_type().is_symlink() {
            h.update(fs::read_link(&p)?.as_os_str().as_bytes());
        } else if md.is_dir() {
            walk(root, &p, h)?;
        }
    }
    Ok(())
}
