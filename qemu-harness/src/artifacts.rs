//! Locating the boot media the VMs boot from.

use std::path::{Path, PathBuf};

/// The workspace root (the harness is built inside it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The bootstrap ISO: `$TETHER_ISO`, else `target/bootstrap/bootstrap.iso` in the workspace,
/// where `scripts/build-iso` puts it.
pub fn iso() -> PathBuf {
    match std::env::var_os("TETHER_ISO") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/bootstrap/bootstrap.iso"),
    }
}

/// Cache directory for built images and kernels (outside the repository).
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("TETHER_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tether")
}
