//! File helpers of the store: atomic writes, locks, sparse files, compressed streams.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::error::{io_err, StoreError};

/// Writes a file so that readers see the old or the new content, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

/// An advisory lock held until dropped.
#[derive(Debug)]
pub(crate) struct Lock {
    _flock: Flock<File>,
}

/// Takes `flock` on `path` (created if missing). `Ok(None)` when `wait` is false and someone
/// else holds a conflicting lock.
pub(crate) fn lock(path: &Path, exclusive: bool, wait: bool) -> Result<Option<Lock>, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let arg = match (exclusive, wait) {
        (true, true) => FlockArg::LockExclusive,
        (true, false) => FlockArg::LockExclusiveNonblock,
        (false, true) => FlockArg::LockShared,
        (false, false) => FlockArg::LockSharedNonblock,
    };
    match Flock::lock(file, arg) {
        Ok(f) => Ok(Some(Lock { _flock: f })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(io_err("lock", path)(io::Error::from(e))),
    }
}

/// The data extents of a file (`SEEK_DATA`/`SEEK_HOLE`), as `(offset, length)`. A file
/// system without hole reporting yields one extent: the whole file.
pub(crate) fn data_extents(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let size = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a valid descriptor owned by `file`; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(size));
        if hole > data {
            out.push((data, hole - data));
        }
        pos = hole;
    }
    Ok(out)
}

const CHUNK: usize = 64 << 10;

/// Copies a sparse file, leaving holes where the source has holes or zero chunks: copying an
/// 8 GiB disk image costs only its data.
pub(crate) fn sparse_copy(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let from = File::open(src).map_err(io_err("open", src))?;
    let to = File::create(dst).map_err(io_err("create", dst))?;
    let size = from.metadata().map_err(io_err("stat", src))?.len();
    to.set_len(size).map_err(io_err("truncate", dst))?;
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    for (start, len) in data_extents(&from).map_err(io_err("read", src))? {
        let mut off = start;
        while off < start + len {
            let n = ((start + len - off) as usize).min(CHUNK);
            from.read_exact_at(&mut buf[..n], off)
                .map_err(io_err("read", src))?;
            if buf[..n] != zeros[..n] {
                to.write_all_at(&buf[..n], off)
                    .map_err(io_err("write", dst))?;
            }
            off += n as u64;
        }
    }
    Ok(())
}

/// Bytes the files of a tree really occupy (allocated blocks; directories themselves are
/// not counted), for measurements.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !md.is_dir() {
        return md.blocks() * 512;
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_usage(&e.path()))
        .sum()
}

/// How a stream is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detects gzip and zstd by magic bytes; names the formats we refuse.
    pub fn detect(head: &[u8], what: &str) -> Result<Compression, StoreError> {
        let refuse = |compression| StoreError::Compression {
            what: what.to_owned(),
            compression,
        };
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Err(refuse("xz"))
        } else if head.starts_with(b"BZh") {
            Err(refuse("bzip2"))
        } else {
            Ok(Compression::None)
        }
    }
}

/// A stream with its compression removed (detected from its first bytes).
pub(crate) fn decompressed<'a, R: Read + 'a>(
    mut reader: R,
    what: &str,
) -> Result<(Box<dyn Read + 'a>, Compression), StoreError> {
    // A pipe may deliver fewer bytes than the magic per read.
    let mut head = Vec::with_capacity(6);
    while head.len() < 6 {
        let mut b = [0u8; 6];
        let n = match reader.read(&mut b[..6 - head.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(tar_read(what)(e)),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    let kind = Compression::detect(&head, what)?;
    let whole = BufReader::with_capacity(CHUNK, io::Cursor::new(head).chain(reader));
    Ok((wrap(whole, kind)?, kind))
}

fn wrap<'a, R: BufRead + 'a>(r: R, kind: Compression) -> Result<Box<dyn Read + 'a>, StoreError> {
    // A tar reader asks for 512-byte headers and small files: a buffer in front of the
    // decoder keeps those from becoming one decoder call each.
    Ok(match kind {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            CHUNK,
            flate2::bufread::MultiGzDecoder::new(r),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            CHUNK,
            zstd::stream::read::Decoder::with_buffer(r).map_err(|e| StoreError::Tool {
                tool: "zstd",
                message: e.to_string(),
            })?,
        )),
    })
}

fn tar_read(what: &str) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.to_owned();
    move |source| StoreError::Tar { what, source }
}

/// A reader that remembers whether it reached the end of its input: a tar parser stops at
/// the end-of-archive blocks, or quietly at EOF when they are missing (a truncated archive).
#[derive(Debug)]
pub(crate) struct EofAware<R> {
    pub inner: R,
    pub hit_eof: bool,
}

impl<R: Read> Read for EofAware<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// A fresh private staging directory under `tmp/`, named after this process so that stale
/// ones (their process gone) can be recognised and removed.
pub(crate) fn staging_dir(tmp_root: &Path, what: &str) -> Result<PathBuf, StoreError> {
    fs::create_dir_all(tmp_root).map_err(io_err("create", tmp_root))?;
    let mut rnd = [0u8; 6];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut rnd);
    }
    let dir = tmp_root.join(format!(
        "{what}-{}-{}",
        std::process::id(),
        super::digest::hex(&rnd)
    ));
    fs::create_dir(&dir).map_err(io_err("create", &dir))?;
    Ok(dir)
}

const SHM: &str = "/dev/shm";
const SCRATCH_PREFIX: &str = "tether-images";

/// A private directory for the host copies of a layer's files while debugfs writes them in:
/// in memory (`/dev/shm`) when `need` bytes fit easily there, else under `stage` on disk.
/// Creating thousands of small files is what costs: unpacking Debian's minbase (7000
/// files, 170 MB) took 7.8 s on the disk's ext4 here and 0.8 s in tmpfs.
pub(crate) fn scratch_dir(stage: &Path, need: u64) -> Result<PathBuf, StoreError> {
    let shm = Path::new(SHM);
    let roomy = nix::sys::statvfs::statvfs(shm)
        .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
        .is_ok_and(|free| need <= (1 << 30) && need.saturating_mul(4) <= free);
    if roomy {
        if let Ok(dir) = staging_dir(shm, SCRATCH_PREFIX) {
            use std::os::unix::fs::PermissionsExt;
            if fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).is_ok() {
                return Ok(dir);
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }
    staging_dir(stage, "files")
}

/// Removes staging directories whose process is gone (also its scratch in `/dev/shm`).
pub(crate) fn remove_stale_staging(tmp_root: &Path) {
    let shm: Vec<_> = fs::read_dir(SHM)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX))
        .collect();
    let ours: Vec<_> = fs::read_dir(tmp_root)
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    for e in ours.into_iter().chain(shm) {
        let name = e.file_name().to_string_lossy().into_owned();
        let name = name.strip_prefix("tether-").unwrap_or(&name);
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !crate::state::pid_alive(pid) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Removes a directory tree when dropped, unless disarmed.
#[derive(Debug)]
pub(crate) struct Cleanup(pub Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// Hard-links `src` to `dst`, copying (sparsely) when a link is impossible (another file
/// system).
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> Result<(), StoreError> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(_) => sparse_copy(src, dst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_content() {
        let raw = b"hello world, plain";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(raw).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&raw[..], 1).unwrap();
        for (input, kind) in [
            (raw.to_vec(), Compression::None),
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
            (b"hi".to_vec(), Compression::None),
            (Vec::new(), Compression::None),
        ] {
            // One byte per read, as a slow pipe would deliver them.
            struct Trickle(io::Cursor<Vec<u8>>);
            impl Read for Trickle {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    let n = buf.len().min(1);
                    self.0.read(&mut buf[..n])
                }
            }
            let expect: Vec<u8> = if input.len() <= 2 {
                input.clone()
            } else {
                raw.to_vec()
            };
            for trickle in [false, true] {
                let r: Box<dyn Read> = if trickle {
                    Box::new(Trickle(io::Cursor::new(input.clone())))
                } else {
                    Box::new(io::Cursor::new(input.clone()))
                };
                let (mut r, k) = decompressed(r, "test").unwrap();
                assert_eq!(k, kind);
                let mut out = Vec::new();
                r.read_to_end(&mut out).unwrap();
                assert_eq!(out, expect);
            }
        }
        let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2];
        assert!(matches!(
            decompressed(&xz[..], "x"),
            Err(StoreError::Compression { .. })
        ));
    }

    #[test]
    fn sparse_copy_keeps_holes() {
        let dir = std::env::temp_dir().join(format!("tether-sparse-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"data", 10 << 20).unwrap();
        f.write_all_at(&[0u8; 1 << 20], 20 << 20).unwrap(); // zeros written: no data in copy
        drop(f);
        let dst = dir.join("dst");
        sparse_copy(&src, &dst).unwrap();
        let a = fs::read(&src).unwrap();
        let b = fs::read(&dst).unwrap();
        assert!(a == b);
        assert!(disk_usage(&dst) <= 1 << 20, "{}", disk_usage(&dst));
        let ext = data_extents(&File::open(&dst).unwrap()).unwrap();
        assert!(ext
            .iter()
            .all(|(o, l)| *o <= 10 << 20 && o + l >= (10 << 20) + 4));
        fs::remove_dir_all(&dir).unwrap();
    }
}
