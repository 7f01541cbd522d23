//! `save`: images as one archive that both loaders read, as docker 25 writes it: an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/`) whose `manifest.json` is also a
//! `docker save` manifest (read by docker 20.10's loader). Layers go out uncompressed, so each
//! layer blob's digest is its diff ID.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};

use serde_json::json;

use super::digest::{Digest, Hasher, ImageId};
use super::error::{io_err, StoreError};
use super::fsutil::decompressed;
use super::reference::Reference;
use super::ImageStore;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Checks a stored layer as it streams out: its length and digest must be what the store
/// recorded, else the archive would carry a layer no loader accepts.
struct Verified<R> {
    inner: R,
    hasher: Hasher,
    expected: Digest,
    size: u64,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if self.hasher.len() > self.size || (n == 0 && !buf.is_empty()) {
            let (d, len) = std::mem::take(&mut self.hasher).finish();
            if len != self.size || d != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "stored layer {} is damaged ({len} bytes, digest {d})",
                        self.expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}

fn header(path: &str, size: u64, dir: bool) -> Result<tar::Header, StoreError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).map_err(|source| StoreError::Tar {
        what: format!("writing {path}"),
        source,
    })?;
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_mtime(0);
    h.set_cksum();
    Ok(h)
}

fn put_blob<W: Write>(
    out: &mut tar::Builder<W>,
    written: &mut BTreeSet<Digest>,
    digest: &Digest,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if written.insert(digest.clone()) {
        let name = format!("blobs/sha256/{}", digest.hex());
        out.append(&header(&name, bytes.len() as u64, false)?, bytes)
            .map_err(|source| StoreError::Tar {
                what: format!("writing {name}"),
                source,
            })?;
    }
    Ok(())
}

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl ImageStore {
    /// Writes the images named by `references` as one archive (`docker save`). A name puts
    /// that tag into the archive; an ID saves the image untagged, as docker does.
    pub fn save(&self, references: &[&str], writer: impl Write) -> Result<(), StoreError> {
        let mut images: Vec<(ImageId, Vec<Reference>)> = Vec::new();
        for r in references {
            let (id, name) = self.resolve_how(r)?;
            match images.iter_mut().find(|(i, _)| *i == id) {
                Some((_, tags)) => tags.extend(name),
                None => images.push((id, name.into_iter().collect())),
            }
        }
        let werr = |what: &str| {
            let what = what.to_owned();
            move |source| StoreError::Tar {
                what: format!("writing {what}"),
                source,
            }
        };
        let mut out = tar::Builder::new(writer);
        for dir in ["blobs/", "blobs/sha256/"] {
            out.append(&header(dir, 0, true)?, io::empty())
                .map_err(werr(dir))?;
        }
        let mut written: BTreeSet<Digest> = BTreeSet::new();
        let mut docker_manifest = Vec::new();
        let mut index = Vec::new();
        for (id, tags) in &images {
            let config = self.config_bytes(id)?;
            let cfg = self.config(id)?;
            put_blob(&mut out, &mut written, id, &config)?;
            let mut layer_descs = Vec::new();
            let mut layer_paths = Vec::new();
            for d in &cfg.rootfs.diff_ids {
                let rec = self.layer_record(d)?;
                let name = format!("blobs/sha256/{}", d.hex());
                if written.insert(d.clone()) {
                    let path = self.layer_dir(d).join("blob");
                    let f = File::open(&path).map_err(io_err("open", &path))?;
                    let (r, _) = decompressed(f, &format!("stored layer {d}"))?;
                    let verified = Verified {
                        inner: r,
                        hasher: Hasher::new(),
                        expected: d.clone(),
                        size: rec.size,
                    };
                    out.append(&header(&name, rec.size, false)?, verified)
                        .map_err(werr(&name))?;
                }
                layer_descs.push(json!({"mediaType": OCI_LAYER, "digest": d, "size": rec.size}));
                layer_paths.push(name);
            }
            let manifest = json_bytes(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": id, "size": config.len()},
                "layers": layer_descs,
            }));
            let manifest_digest = Digest::of(&manifest);
            put_blob(&mut out, &mut written, &manifest_digest, &manifest)?;
            let descriptor = |annotations: serde_json::Value| {
                json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": manifest.len(),
                    "annotations": annotations,
                })
            };
            if tags.is_empty() {
                index.push(descriptor(json!({})));
            }
            for t in tags {
                index.push(descriptor(json!({
                    "io.containerd.image.name": t.to_string(),
                    "org.opencontainers.image.ref.name": t.tag().unwrap_or("latest"),
                })));
            }
            docker_manifest.push(json!({
                "Config": format!("blobs/sha256/{}", id.hex()),
                "RepoTags": if tags.is_empty() {
                    serde_json::Value::Null
                } else {
                    json!(tags.iter().map(Reference::familiar).collect::<Vec<_>>())
                },
                "Layers": layer_paths,
            }));
        }
        let files = [
            (
                "index.json",
                json_bytes(&json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": index,
                })),
            ),
            ("manifest.json", json_bytes(&json!(docker_manifest))),
            (
                "oci-layout",
                json_bytes(&json!({"imageLayoutVersion": "1.0.0"})),
            ),
        ];
        for (name, bytes) in files {
            out.append(&header(name, bytes.len() as u64, false)?, &bytes[..])
                .map_err(werr(name))?;
        }
        out.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(werr("the archive"))
    }
}
