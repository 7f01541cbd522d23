//! The image store's errors. Each says what was being done to what, so that a front end can
//! print it as is (`Error response from daemon: <message>` or `vch: <message>`).

use std::io;
use std::path::{Path, PathBuf};

use super::digest::Digest;

/// Image store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// nothing matches the reference (docker: 404)
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// an ID prefix matches several images
    #[error("{0:?} matches more than one image: give more of the ID")]
    Ambiguous(String),
    /// a malformed name or tag
    #[error("invalid reference {reference:?}: {why}")]
    InvalidReference { reference: String, why: String },
    /// the operation conflicts with containers or tags (docker: 409); the message is docker's
    #[error("{0}")]
    Conflict(String),

    /// the archive is neither a docker-save archive nor an OCI layout
    #[error(
        "not an image archive: no manifest.json (docker save) or index.json (OCI layout) in it"
    )]
    NotAnArchive,
    /// a manifest or index names a file the archive does not hold
    #[error("the archive lacks {path:?}, which {by} names")]
    MissingFile { path: String, by: String },
    /// a JSON document of the archive or store does not parse
    #[error("{what}: {why}")]
    BadJson { what: String, why: String },
    /// an archive with a shape we do not load
    #[error("{0}")]
    Unsupported(String),
    /// a layer's content does not hash to its diff ID
    #[error("layer {layer}: its content has digest {actual}, the image config expects {expected}")]
    LayerDigest {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    /// a blob does not hash to the digest its descriptor gives
    #[error("blob {blob}: its content has digest {actual}, the manifest says {expected}")]
    BlobDigest {
        blob: String,
        expected: Digest,
        actual: Digest,
    },
    /// a blob's size differs from its descriptor's
    #[error("blob {blob}: {actual} bytes, the manifest says {expected}")]
    BlobSize {
        blob: String,
        expected: u64,
        actual: u64,
    },
    /// the config's diff IDs and the manifest's layers disagree in number
    #[error("image {config}: the config lists {diff_ids} layer(s), the manifest {layers}")]
    LayerCount {
        config: String,
        diff_ids: usize,
        layers: usize,
    },
    /// no manifest of a multi-platform index is for linux/amd64
    #[error("no linux/amd64 image in the index (it has: {0})")]
    NoPlatform(String),
    /// a layer or archive compressed in a way we do not read
    #[error(
        "{what}: {compression} compression is not supported (uncompressed, gzip and zstd are)"
    )]
    Compression {
        what: String,
        compression: &'static str,
    },
    /// a tar stream that cannot be read to its end (truncated, corrupt)
    #[error("{what}: {source}")]
    Tar { what: String, source: io::Error },
    /// a layer entry that must not be applied
    #[error("layer {layer}: entry {entry:?}: {why}")]
    BadEntry {
        layer: String,
        entry: String,
        why: String,
    },

    /// an external tool failed (mkfs.ext4, debugfs, qemu-img)
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    /// building a disk from a directory failed
    #[error(transparent)]
    Disk(#[from] crate::image::ImageError),
    /// a file operation failed
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl StoreError {
    /// Whether the error means "not found" (docker answers 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NoSuchImage(_))
    }

    /// Whether the error is a conflict (docker answers 409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }

    /// Whether the user's input is at fault (docker answers 400).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            StoreError::NoSuchImage(_)
                | StoreError::Conflict(_)
                | StoreError::Tool { .. }
                | StoreError::Disk(_)
                | StoreError::Io { .. }
        )
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn tar_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Tar { what, source }
}
