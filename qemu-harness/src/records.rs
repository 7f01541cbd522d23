//! The stores' records on disk (containers' metadata, volumes, networks, images): JSON files
//! read the same way everywhere, and the random IDs they are named by. Below every store, so
//! that no store has to reach into another for them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a JSON record file could not be read. The messages are the stores' own: `read PATH:
/// …` for I/O, `PATH: …` for damaged JSON.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// the file could not be read or written
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// the file is damaged
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads a JSON record file (volume, network, image config); `Ok(None)` when it does not
/// exist, so each store can say "no such ..." in its own words.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RecordError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RecordError::Io {
                what: "read",
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| RecordError::Json {
            path: path.to_owned(),
            source,
        })
}

/// Writes a JSON record file whole or not at all (a temporary file renamed over it): a
/// reader never sees half a record, whoever else writes it at the same time.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RecordError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let text = serde_json::to_vec_pretty(value).map_err(|source| RecordError::Json {
        path: path.to_owned(),
        source,
    })?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| RecordError::Io { what, path, source }
    };
    fs::write(&tmp, text).map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io("rename", path)(e)
    })
}

/// A random 64-hex-digit container ID, like the port layer's.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
