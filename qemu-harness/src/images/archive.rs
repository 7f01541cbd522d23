//! Reading image archives: `docker save` archives (`manifest.json`, with or without
//! `repositories`; also docker 25's, which are OCI layouts too) and OCI image layouts
//! (`oci-layout`, `index.json`, `blobs/`), given as one tar stream.
//!
//! A tar stream cannot be read out of order and archives put their manifest anywhere (docker
//! writes it last), so every file of the archive is first copied ("spooled") into the load's
//! staging directory, hashed on the way. The manifests are read afterwards; layers are read
//! from their spooled copies, which also become the store's layer blobs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::{is_hex64, Digest, Hasher};
use super::error::{io_err, tar_err, StoreError};
use super::fsutil::{decompressed, EofAware};
use super::layer::clean;
use super::progress::{Counting, Progress};
use super::reference::Reference;

/// A file of the archive, copied into staging.
#[derive(Debug, Clone)]
pub(crate) struct Spooled {
    pub path: PathBuf,
    pub size: u64,
    pub digest: Digest,
}

/// The files of an archive by their (cleaned) names.
#[derive(Debug, Default)]
pub(crate) struct Spool {
    files: HashMap<String, Spooled>,
    /// Symlinks and hard links between archive members (old `docker save` linked a layer
    /// shared by two images instead of storing it twice).
    links: HashMap<String, String>,
}

const MAX_JSON: u64 = 64 << 20;

/// Copies every regular file of the (possibly compressed) tar stream into `dir`.
pub(crate) fn spool(
    reader: impl Read,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<Spool, StoreError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let counted = Counting {
        inner: reader,
        progress,
        done: 0,
    };
    let (stream, _) = decompressed(counted, "the archive")?;
    let mut input = EofAware {
        inner: stream,
        hit_eof: false,
    };
    let mut archive = tar::Archive::new(&mut input);
    let mut spool = Spool::default();
    let mut n = 0u64;
    for entry in archive.entries().map_err(tar_err("reading the archive"))? {
        let mut entry = entry.map_err(tar_err("reading the archive"))?;
        let raw = entry.path_bytes().into_owned();
        let name = clean_name(&raw)?;
        let etype = entry.header().entry_type();
        if etype.is_file() || etype == tar::EntryType::Continuous {
            n += 1;
            let path = dir.join(n.to_string());
            let size = entry.size();
            let mut hasher = Hasher::new();
            let mut out = io::BufWriter::new(File::create(&path).map_err(io_err("create", &path))?);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let k = entry
                    .read(&mut buf)
                    .map_err(tar_err(format!("reading {name} from the archive")))?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                out.write_all(&buf[..k]).map_err(io_err("write", &path))?;
            }
            out.flush().map_err(io_err("write", &path))?;
            let (digest, got) = hasher.finish();
            if got != size {
                return Err(StoreError::Tar {
                    what: format!("reading {name} from the archive"),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("truncated: {got} of {size} bytes"),
                    ),
                });
            }
            spool.links.remove(&name);
            spool.files.insert(name, Spooled { path, size, digest });
        } else if etype.is_symlink() || etype.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let target = if etype.is_symlink() && !target.starts_with(b"/") {
                // Relative to the link's directory.
                let mut full = match name.rfind('/') {
                    Some(i) => name.as_bytes()[..=i].to_vec(),
                    None => Vec::new(),
                };
                full.extend_from_slice(&target);
                full
            } else {
                target
            };
            let target = clean_name(&target)?;
            spool.files.remove(&name);
            spool.links.insert(name, target);
        }
    }
    let _ = archive.into_inner();
    if input.hit_eof {
        return Err(StoreError::Tar {
            what: "reading the archive".into(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated: the tar stream ends without its end-of-archive blocks",
            ),
        });
    }
    Ok(spool)
}

fn clean_name(raw: &[u8]) -> Result<String, StoreError> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let c = clean(raw).ok_or_else(|| {
        StoreError::Unsupported(format!("archive entry {shown:?} escapes the archive"))
    })?;
    String::from_utf8(c).map_err(|_| {
        StoreError::Unsupported(format!("archive entry {shown:?} is not a UTF-8 name"))
    })
}

impl Spool {
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A file by name, following links between archive members.
    pub fn get(&self, name: &str) -> Option<&Spooled> {
        let mut name = clean(name.as_bytes()).and_then(|c| String::from_utf8(c).ok())?;
        for _ in 0..16 {
            if let Some(f) = self.files.get(&name) {
                return Some(f);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }

    fn need(&self, name: &str, by: &str) -> Result<&Spooled, StoreError> {
        self.get(name).ok_or_else(|| StoreError::MissingFile {
            path: name.to_owned(),
            by: by.to_owned(),
        })
    }

    fn read(&self, name: &str, by: &str) -> Result<Vec<u8>, StoreError> {
        let f = self.need(name, by)?;
        if f.size > MAX_JSON {
            return Err(StoreError::Unsupported(format!(
                "{name}: {} bytes is too large for a JSON document",
                f.size
            )));
        }
        fs::read(&f.path).map_err(io_err("read", &f.path))
    }

    /// A blob of an OCI layout, checked against its descriptor.
    fn blob(&self, d: &Descriptor, by: &str) -> Result<(&Spooled, String), StoreError> {
        let name = format!("blobs/sha256/{}", d.digest.hex());
        let f = self.need(&name, by)?;
        check_blob(f, &name, &d.digest, Some(d.size))?;
        Ok((f, name))
    }
}

fn check_blob(
    f: &Spooled,
    name: &str,
    expected: &Digest,
    size: Option<u64>,
) -> Result<(), StoreError> {
    if f.digest != *expected {
        return Err(StoreError::BlobDigest {
            blob: name.to_owned(),
            expected: expected.clone(),
            actual: f.digest.clone(),
        });
    }
    if let Some(size) = size {
        if f.size != size {
            return Err(StoreError::BlobSize {
                blob: name.to_owned(),
                expected: size,
                actual: f.size,
            });
        }
    }
    Ok(())
}

/// The digest a content-addressed member name promises (`blobs/sha256/<hex>`,
/// `<hex>.json`, `<hex>/layer.tar` are not: only the first two name their content).
fn named_digest(name: &str) -> Option<Digest> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json").filter(|h| !h.contains('/')))?;
    if is_hex64(hex) {
        Digest::parse(&format!("sha256:{hex}")).ok()
    } else {
        None
    }
}

/// One image of an archive, before verification.
#[derive(Debug)]
pub(crate) struct Candidate {
    /// For messages: the image's tag or config name.
    pub label: String,
    pub config: Vec<u8>,
    pub layers: Vec<LayerRef>,
    pub tags: Vec<Reference>,
}

#[derive(Debug, Clone)]
pub(crate) struct LayerRef {
    /// The member's name, for messages.
    pub name: String,
    pub file: Spooled,
}

fn bad_json(what: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::BadJson {
        what: what.to_owned(),
        why: e.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestItem {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
    #[serde(default)]
    layer_sources: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: Digest,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn show(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// The images an archive holds.
pub(crate) fn images(spool: &Spool) -> Result<Vec<Candidate>, StoreError> {
    if spool.has("manifest.json") {
        docker_images(spool)
    } else if spool.has("index.json") {
        oci_images(spool)
    } else {
        Err(StoreError::NotAnArchive)
    }
}

fn parse_tag(t: &str) -> Result<Reference, StoreError> {
    Reference::parse(t)
        .map(Reference::with_default_tag)
        .map_err(|why| StoreError::InvalidReference {
            reference: t.to_owned(),
            why,
        })
}

fn docker_images(spool: &Spool) -> Result<Vec<Candidate>, StoreError> {
    let text = spool.read("manifest.json", "the archive")?;
    let items: Vec<DockerManifestItem> =
        serde_json::from_slice(&text).map_err(bad_json("manifest.json"))?;
    let mut out = Vec::new();
    for item in items {
        let config_file = spool.need(&item.config, "manifest.json")?;
        if let Some(d) = named_digest(&item.config) {
            check_blob(config_file, &item.config, &d, None)?;
        }
        let config = fs::read(&config_file.path).map_err(io_err("read", &config_file.path))?;
        let tags = item
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| parse_tag(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut layers = Vec::new();
        for name in &item.layers {
            let Some(file) = spool.get(name) else {
                if item.layer_sources.as_ref().is_some_and(|s| !s.is_empty()) {
                    return Err(StoreError::Unsupported(format!(
                        "layer {name} is a foreign layer (to be downloaded from its source): not supported"
                    )));
                }
                return Err(StoreError::MissingFile {
                    path: name.clone(),
                    by: "manifest.json".into(),
                });
            };
            if let Some(d) = named_digest(name) {
                check_blob(file, name, &d, None)?;
            }
            layers.push(LayerRef {
                name: name.clone(),
                file: file.clone(),
            });
        }
        out.push(Candidate {
            label: tags
                .first()
                .map(Reference::familiar)
                .unwrap_or_else(|| item.config.clone()),
            config,
            layers,
            tags,
        });
    }
    Ok(out)
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Attestations (buildkit's provenance and SBOM manifests) are listed in indexes beside the
/// images but are not images.
fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
        || d.platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// The name an index entry gives its image: containerd's full name, else an OCI ref name
/// that is a reference rather than a bare tag.
fn descriptor_name(d: &Descriptor) -> Option<String> {
    if let Some(n) = d.annotations.get("io.containerd.image.name") {
        return Some(n.clone());
    }
    d.annotations
        .get("org.opencontainers.image.ref.name")
        .filter(|n| n.contains(':') || n.contains('/'))
        .cloned()
}

fn oci_images(spool: &Spool) -> Result<Vec<Candidate>, StoreError> {
    let text = spool.read("index.json", "the archive")?;
    let index: Index = serde_json::from_slice(&text).map_err(bad_json("index.json"))?;
    // Entries with the same name (or none) that carry platforms are one image's variants.
    let mut groups: BTreeMap<Option<String>, Vec<Descriptor>> = BTreeMap::new();
    for d in index.manifests.into_iter().filter(|d| !is_attestation(d)) {
        groups.entry(descriptor_name(&d)).or_default().push(d);
    }
    let mut out: Vec<Candidate> = Vec::new();
    for (name, descs) in groups {
        let chosen = if descs.len() > 1 && descs.iter().any(|d| d.platform.is_some()) {
            vec![pick_platform(&descs)?]
        } else {
            descs
        };
        let tags = match &name {
            Some(n) => vec![parse_tag(n)?],
            None => Vec::new(),
        };
        for d in chosen {
            let (manifest, mname) = resolve(spool, &d, "index.json", 0)?;
            let (config_file, _) = spool.blob(&manifest.config, &mname)?;
            let config = fs::read(&config_file.path).map_err(io_err("read", &config_file.path))?;
            let mut layers = Vec::new();
            for l in &manifest.layers {
                if !l.urls.is_empty() && !spool.has(&format!("blobs/sha256/{}", l.digest.hex())) {
                    return Err(StoreError::Unsupported(format!(
                        "layer {} is a foreign layer (to be downloaded from its source): not supported",
                        l.digest
                    )));
                }
                let (file, lname) = spool.blob(l, &mname)?;
                layers.push(LayerRef {
                    name: lname,
                    file: file.clone(),
                });
            }
            // Several tags of one image (docker 25 lists one entry per tag).
            let id = Digest::of(&config);
            if let Some(c) = out.iter_mut().find(|c| Digest::of(&c.config) == id) {
                for t in &tags {
                    if !c.tags.contains(t) {
                        c.tags.push(t.clone());
                    }
                }
                continue;
            }
            out.push(Candidate {
                label: tags
                    .first()
                    .map(Reference::familiar)
                    .unwrap_or_else(|| manifest.config.digest.to_string()),
                config,
                layers,
                tags: tags.clone(),
            });
        }
    }
    Ok(out)
}

/// Follows a descriptor through nested indexes to an image manifest.
fn resolve(
    spool: &Spool,
    d: &Descriptor,
    by: &str,
    depth: u32,
) -> Result<(Manifest, String), StoreError> {
    if depth > 8 {
        return Err(StoreError::Unsupported("indexes nested too deeply".into()));
    }
    let (f, name) = spool.blob(d, by)?;
    let bytes = fs::read(&f.path).map_err(io_err("read", &f.path))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(bad_json(&name))?;
    let media = d.media_type.clone().or_else(|| {
        value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    let is_index = match media.as_deref() {
        Some(m) if INDEX_TYPES.contains(&m) => true,
        Some(m) if MANIFEST_TYPES.contains(&m) => false,
        Some(m) => {
            return Err(StoreError::Unsupported(format!(
                "{name}: media type {m} is neither an image index nor an image manifest"
            )))
        }
        None => value.get("manifests").is_some(),
    };
    if is_index {
        let index: Index = serde_json::from_value(value).map_err(bad_json(&name))?;
        let children: Vec<Descriptor> = index
            .manifests
            .into_iter()
            .filter(|c| !is_attestation(c))
            .collect();
        let child = match children.as_slice() {
            [one] => one.clone(),
            _ => pick_platform(&children)?,
        };
        return resolve(spool, &child, &name, depth + 1);
    }
    let m: Manifest = serde_json::from_value(value).map_err(bad_json(&name))?;
    Ok((m, name))
}

/// linux/amd64 out of a multi-platform list (any variant).
fn pick_platform(descs: &[Descriptor]) -> Result<Descriptor, StoreError> {
    descs
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = descs
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or_else(|| "unspecified".to_owned(), Platform::show)
                })
                .collect();
            StoreError::NoPlatform(have.join(", "))
        })
}
