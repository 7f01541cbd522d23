//! `load` (image archives) and `import` (rootfs tarballs): stage, verify, build, commit.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::archive::{self, Candidate};
use super::config::{apply_changes, ConfigFile, ContainerConfig, History, RootFs};
use super::digest::{Digest, Hasher, HashingReader, ImageId};
use super::disks::Build;
use super::error::{io_err, StoreError};
use super::fsutil::{decompressed, staging_dir, write_atomic, Cleanup, Compression};
use super::progress::{Counting, Progress};
use super::reference::Reference;
use super::{
    now_unix, rfc3339_now, Image, ImageRecord, ImageStore, ImportOptions, LayerRecord, LoadedImage,
};

/// An image ready to commit.
#[derive(Debug)]
struct Staged {
    id: ImageId,
    config: Vec<u8>,
    diff_ids: Vec<Digest>,
    tags: Vec<Reference>,
    source: &'static str,
}

/// A verified layer blob of this operation.
#[derive(Debug, Clone)]
struct StagedLayer {
    blob: PathBuf,
    record: LayerRecord,
}

/// Decompresses a blob and returns its diff ID, uncompressed size and compression.
fn diff_id_of(
    blob: &Path,
    what: &str,
    progress: &dyn Progress,
) -> Result<(Digest, u64, Compression), StoreError> {
    let f = File::open(blob).map_err(io_err("open", blob))?;
    let counted = Counting {
        inner: f,
        progress,
        done: 0,
    };
    let (r, kind) = decompressed(counted, what)?;
    let mut hashing = HashingReader::new(r);
    let mut sink = io::sink();
    io::copy(&mut hashing, &mut sink).map_err(|source| StoreError::Tar {
        what: what.to_owned(),
        source,
    })?;
    let (d, n) = hashing.finish().map_err(|source| StoreError::Tar {
        what: what.to_owned(),
        source,
    })?;
    Ok((d, n, kind))
}

impl ImageStore {
    /// Loads the images of an archive (`docker load`): a `docker save` archive or an OCI
    /// image layout, as a tar stream, compressed or not. Everything is verified (blob digests
    /// against their descriptors, each layer's uncompressed digest against the config's
    /// `rootfs.diff_ids`) and each image's disks are built before anything enters the store;
    /// on any error nothing does.
    pub fn load(
        &self,
        reader: impl Read,
        progress: &dyn Progress,
    ) -> Result<Vec<LoadedImage>, StoreError> {
        let _pin = self.pin()?;
        let stage = staging_dir(&self.tmp_dir(), "load")?;
        let _cleanup = Cleanup(Some(stage.clone()));
        progress.start("Reading the archive", None);
        let spool = archive::spool(reader, &stage.join("spool"), progress)?;
        progress.finish();
        let candidates = archive::images(&spool)?;
        if candidates.is_empty() {
            return Err(StoreError::Unsupported("the archive holds no image".into()));
        }
        let mut layers: HashMap<Digest, StagedLayer> = HashMap::new();
        let mut verified: HashMap<PathBuf, (Digest, u64, Compression)> = HashMap::new();
        let mut staged: Vec<Staged> = Vec::new();
        for cand in candidates {
            let img = self.verify(cand, &mut layers, &mut verified, progress)?;
            match staged.iter_mut().find(|s| s.id == img.id) {
                Some(s) => s.tags.extend(img.tags),
                None => staged.push(img),
            }
        }
        self.build_and_commit(&stage, staged, layers, progress)
    }

    fn verify(
        &self,
        cand: Candidate,
        layers: &mut HashMap<Digest, StagedLayer>,
        verified: &mut HashMap<PathBuf, (Digest, u64, Compression)>,
        progress: &dyn Progress,
    ) -> Result<Staged, StoreError> {
        let id = Digest::of(&cand.config);
        let cfg: ConfigFile =
            serde_json::from_slice(&cand.config).map_err(|e| StoreError::BadJson {
                what: format!("config of image {}", cand.label),
                why: e.to_string(),
            })?;
        if cfg.rootfs.diff_ids.len() != cand.layers.len() {
            return Err(StoreError::LayerCount {
                config: cand.label.clone(),
                diff_ids: cfg.rootfs.diff_ids.len(),
                layers: cand.layers.len(),
            });
        }
        let n = cand.layers.len();
        for (i, (l, expected)) in cand.layers.iter().zip(&cfg.rootfs.diff_ids).enumerate() {
            let what = format!("{} (layer {} of {}, {})", l.name, i + 1, n, cand.label);
            let (actual, size, compression) = match verified.get(&l.file.path) {
                Some(v) => v.clone(),
                None => {
                    progress.start(
                        &format!("Checking layer {}/{} of {}", i + 1, n, cand.label),
                        Some(l.file.size),
                    );
                    let v = diff_id_of(&l.file.path, &what, progress)?;
                    progress.finish();
                    verified.insert(l.file.path.clone(), v.clone());
                    v
                }
            };
            if actual != *expected {
                return Err(StoreError::LayerDigest {
                    layer: what,
                    expected: expected.clone(),
                    actual,
                });
            }
            layers
                .entry(expected.clone())
                .or_insert_with(|| StagedLayer {
                    blob: l.file.path.clone(),
                    record: LayerRecord {
                        diff_id: expected.clone(),
                        compression,
                        size,
                        blob_digest: l.file.digest.clone(),
                        blob_size: l.file.size,
                    },
                });
        }
        Ok(Staged {
            id,
            config: cand.config,
            diff_ids: cfg.rootfs.diff_ids,
            tags: cand.tags,
            source: "load",
        })
    }

    /// Builds the disks of staged images, then moves layers, disks, images and tags into
    /// the store under its lock.
    fn build_and_commit(
        &self,
        stage: &Path,
        images: Vec<Staged>,
        layers: HashMap<Digest, StagedLayer>,
        progress: &dyn Progress,
    ) -> Result<Vec<LoadedImage>, StoreError> {
        let mut build = Build::new(self, stage);
        for (d, l) in &layers {
            if !self.layer_dir(d).join("blob").is_file() {
                build
                    .blobs
                    .insert(d.clone(), (l.blob.clone(), d.to_string(), l.record.size));
            }
        }
        for img in &images {
            build.chain(&img.diff_ids, progress)?;
        }

        let _lock = self.lock()?;
        for (d, l) in &layers {
            let dst = self.layer_dir(d);
            if dst.join("blob").is_file() {
                continue;
            }
            let tmp = stage.join("layers").join(d.hex());
            fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
            fs::rename(&l.blob, tmp.join("blob")).map_err(io_err("rename", &l.blob))?;
            write_record(&tmp.join("layer.json"), &l.record)?;
            let _ = fs::remove_dir_all(&dst); // an incomplete leftover
            fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
        }
        build.commit()?;
        let mut repos = self.read_repositories()?;
        let mut out = Vec::new();
        for img in images {
            let dst = self.image_dir(&img.id);
            if !self.exists(&img.id) {
                let tmp = stage.join("ids").join(img.id.hex());
                fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
                write_atomic(&tmp.join("config.json"), &img.config)?;
                let rec = ImageRecord {
                    loaded: now_unix(),
                    source: img.source.to_owned(),
                };
                write_record(&tmp.join("image.json"), &rec)?;
                let _ = fs::remove_dir_all(&dst);
                fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
            }
            let mut loaded = LoadedImage {
                id: img.id.clone(),
                tags: Vec::new(),
                moved: Vec::new(),
            };
            for t in &img.tags {
                if let Some(old) = repos.set(t, &img.id) {
                    loaded.moved.push((t.familiar(), old));
                }
                loaded.tags.push(t.familiar());
            }
            out.push(loaded);
        }
        self.write_repositories(&repos)?;
        Ok(out)
    }

    /// Makes an image of a root filesystem tarball (`docker import`): one layer, a config
    /// with `opts.changes` applied. The tarball may be compressed (gzip, zstd).
    pub fn import(
        &self,
        reader: impl Read,
        opts: &ImportOptions,
        progress: &dyn Progress,
    ) -> Result<Image, StoreError> {
        let tag = opts
            .reference
            .as_deref()
            .map(|r| {
                Reference::parse(r)
                    .map(Reference::with_default_tag)
                    .map_err(|why| StoreError::InvalidReference {
                        reference: r.to_owned(),
                        why,
                    })
            })
            .transpose()?;
        let mut container = ContainerConfig::default();
        apply_changes(&mut container, &opts.changes).map_err(|e| StoreError::InvalidReference {
            reference: "--change".into(),
            why: e.to_string(),
        })?;

        let _pin = self.pin()?;
        let stage = staging_dir(&self.tmp_dir(), "import")?;
        let _cleanup = Cleanup(Some(stage.clone()));
        let blob = stage.join("layer.blob");
        progress.start("Reading the tarball", None);
        let (blob_digest, blob_size) = {
            let mut counted = Counting {
                inner: reader,
                progress,
                done: 0,
            };
            let mut out = io::BufWriter::new(File::create(&blob).map_err(io_err("create", &blob))?);
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match counted.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(StoreError::Tar {
                            what: "reading the tarball".into(),
                            source,
                        })
                    }
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io_err("write", &blob))?;
            }
            out.flush().map_err(io_err("write", &blob))?;
            hasher.finish()
        };
        progress.finish();
        progress.start("Checking the tarball", Some(blob_size));
        let (diff_id, size, compression) = diff_id_of(&blob, "the tarball", progress)?;
        progress.finish();

        let created = rfc3339_now();
        let comment = opts
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "Imported from -".to_owned());
        let cfg = ConfigFile {
            created: Some(created.clone()),
            architecture: Some("amd64".into()),
            os: Some("linux".into()),
            comment: opts.message.clone().filter(|m| !m.is_empty()),
            config: Some(container),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![diff_id.clone()],
            },
            history: vec![History {
                created: Some(created),
                comment: Some(comment),
                ..Default::default()
            }],
            ..Default::default()
        };
        let config = serde_json::to_vec(&cfg).map_err(|e| StoreError::BadJson {
            what: "new image config".into(),
            why: e.to_string(),
        })?;
        let id = Digest::of(&config);
        let mut layers = HashMap::new();
        layers.insert(
            diff_id.clone(),
            StagedLayer {
                blob,
                record: LayerRecord {
                    diff_id: diff_id.clone(),
                    compression,
                    size,
                    blob_digest,
                    blob_size,
                },
            },
        );
        let staged = Staged {
            id: id.clone(),
            config,
            diff_ids: vec![diff_id],
            tags: tag.into_iter().collect(),
            source: "import",
        };
        self.build_and_commit(&stage, vec![staged], layers, progress)?;
        self.image(&id)
    }
}

fn write_record<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| StoreError::BadJson {
        what: path.display().to_string(),
        why: e.to_string(),
    })?;
    write_atomic(path, &text)
}
