//! Guest services on the back-channel, our extensions (see `backchannel::services`): files
//! copied in and out as tar streams (`docker cp`), the process list (`docker top`) and
//! resource samples (`docker stats`), all read from the guest's own `/`, `/proc` and `/sys`.
//!
//! The file work is blocking: it runs on blocking threads, with chunks handed to and from the
//! runtime thread, which moves them over the channel.
//!
//! `/proc` is read by hand (a few lines of parsing) rather than with a crate: the tether's
//! size and start-up time count, and what is read here is a handful of fields.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use backchannel::chunks::{ChunkReader, ChunkWriter, CHUNK};
use backchannel::services::{
    self as svc, ArchiveOpen, BlockCounters, Clock, ErrorKind, NetCounters, PathStat, Process,
    Sample,
};
use sshproto::{Channel, ChannelOpenRequest, OpenFailureReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The tether's own files, which are no part of the container.
const PRIVATE: &str = "/.tether";
/// Chunks in flight between a blocking thread and the channel.
const CHUNKS: usize = 8;

/// Whether `ty` is one of the service channel types.
pub fn handles(ty: &str) -> bool {
    matches!(
        ty,
        svc::CHANNEL_ARCHIVE_GET | svc::CHANNEL_ARCHIVE_PUT | svc::CHANNEL_TOP | svc::CHANNEL_STATS
    )
}

/// Serves a service channel (its type is one [`handles`] takes).
pub fn open(open: ChannelOpenRequest) {
    let ty = open.channel_type().to_owned();
    match ty.as_str() {
        svc::CHANNEL_ARCHIVE_GET => archive_get(open),
        svc::CHANNEL_ARCHIVE_PUT => archive_put(open),
        svc::CHANNEL_TOP => accept_then(open, top),
        _ => {
            let interval = svc::parse_stats_open(open.data()).unwrap_or(0);
            accept_then(open, move |ch| stats(ch, interval));
        }
    }
}

fn refuse(open: ChannelOpenRequest, kind: ErrorKind, text: &str) {
    open.reject(
        OpenFailureReason::ADMINISTRATIVELY_PROHIBITED,
        &kind.message(text),
    );
}

fn accept_then<F, Fut>(open: ChannelOpenRequest, f: F)
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match open.accept() {
        Ok(ch) => {
            tokio::spawn(f(ch));
        }
        Err(e) => tracing::warn!(error = %e, "accepting a service channel"),
    }
}

/// A path in the container as docker resolves it: the parent's symlinks followed (they
/// cannot lead out of `/`, the container's root), the last element not.
#[derive(Debug)]
struct Resolved {
    /// The path on the guest's filesystem (the last element unresolved).
    path: PathBuf,
    /// The name the archive's entries are rooted at: the last element, or `.` for a path
    /// ending in `/.` (copy the contents).
    base: String,
}

fn resolve(given: &str) -> Result<Resolved, (ErrorKind, String)> {
    let bad = |why: &str| (ErrorKind::BadRequest, format!("{given}: {why}"));
    if given.is_empty() {
        return Err(bad("empty path"));
    }
    let contents = given.ends_with("/.") || given == ".";
    // Lexical clean-up; `..` above the root is refused rather than clamped.
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(given).components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(bad("the path leads out of the container's filesystem"));
                }
            }
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
        }
    }
    let last = parts.pop();
    let parent: PathBuf = std::iter::once("/".to_owned())
        .chain(parts.iter().cloned())
        .collect();
    let parent = fs::canonicalize(&parent).map_err(|e| not_found_or(given, &e))?;
    let path = match &last {
        Some(l) => parent.join(l),
        None => parent,
    };
    if path.starts_with(PRIVATE) {
        return Err(bad("the path leads out of the container's filesystem"));
    }
    let base = if contents {
        ".".to_owned()
    } else {
        last.unwrap_or_else(|| ".".to_owned())
    };
    Ok(Resolved { path, base })
}

fn not_found_or(given: &str, e: &io::Error) -> (ErrorKind, String) {
    if e.kind() == io::ErrorKind::NotFound {
        (
            ErrorKind::NotFound,
            format!("Could not find the file {given} in container"),
        )
    } else {
        (ErrorKind::Failed, format!("{given}: {e}"))
    }
}

fn stat_of(r: &Resolved, given: &str) -> Result<PathStat, (ErrorKind, String)> {
    let md = fs::symlink_metadata(&r.path).map_err(|e| not_found_or(given, &e))?;
    let link_target = if md.file_type().is_symlink() {
        fs::read_link(&r.path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let name = r
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_owned());
    Ok(PathStat {
        name,
        size: md.size(),
        mode: md.mode(),
        mtime_secs: md.mtime(),
        mtime_nsecs: u32::try_from(md.mtime_nsec()).unwrap_or(0),
        link_target,
    })
}

/// Tells the client how the channel's work ended: exit status 0, or 1 with the reason on
/// stderr; then closes.
async fn conclude(writer: &mut sshproto::ChannelWriter, result: Result<(), String>) {
    let code = u32::from(result.is_err());
    if let Err(e) = &result {
        tracing::info!(error = %e, "guest service failed");
        let mut w = writer.stderr_writer();
        let _ = w.write_all(e.as_bytes()).await;
    }
    let _ = writer.eof();
    let _ = writer.send_exit_status(code);
    writer.close();
}

fn archive_get(open: ChannelOpenRequest) {
    let Some(req) = ArchiveOpen::parse(open.data()) else {
        return refuse(open, ErrorKind::BadRequest, "malformed archive request");
    };
    let found = resolve(&req.path).and_then(|r| stat_of(&r, &req.path).map(|s| (r, s)));
    let (resolved, stat) = match found {
        Ok(x) => x,
        Err((kind, text)) => return refuse(open, kind, &text),
    };
    let ch = match open.accept() {
        Ok(ch) => ch,
        Err(e) => return tracing::warn!(error = %e, "accepting an archive channel"),
    };
    tokio::spawn(async move {
        let (reader, mut writer) = ch.split();
        drop(reader);
        if writer.write_all(&stat.frame()).await.is_err() {
            return;
        }
        if req.stat_only() {
            let _ = writer.eof();
            let _ = writer.send_exit_status(0);
            writer.close();
            return;
        }
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHUNKS);
        let packer = match crate::blocking::spawn("archive-out", move || pack(&resolved, tx)) {
            Ok(job) => job,
            Err(e) => {
                return conclude(&mut writer, Err(format!("archive {}: {e}", req.path))).await
            }
        };
        let mut sent = true;
        while let Some(chunk) = rx.recv().await {
            if writer.write_all(&chunk).await.is_err() {
                sent = false;
                break;
            }
        }
        drop(rx);
        let result = match packer.join().await {
            Ok(Ok(())) if sent => Ok(()),
            Ok(Ok(())) => Err("the client went away".to_owned()),
            Ok(Err(e)) => Err(format!("archive {}: {e}", req.path)),
            Err(e) => Err(format!("archive {}: {e}", req.path)),
        };
        conclude(&mut writer, result).await;
    });
}

/// Writes the tar stream of `r` (owners, modes, times kept; symlinks not followed).
fn pack(r: &Resolved, tx: mpsc::Sender<Vec<u8>>) -> io::Result<()> {
    let mut b = tar::Builder::new(ChunkWriter::new(tx, "the client went away"));
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let md = fs::symlink_metadata(&r.path)?;
    if md.is_dir() {
        b.append_dir_all(&r.base, &r.path)?;
    } else {
        b.append_path_with_name(&r.path, &r.base)?;
    }
    let mut w = b.into_inner()?;
    w.flush()
}

fn archive_put(open: ChannelOpenRequest) {
    let Some(req) = ArchiveOpen::parse(open.data()) else {
        return refuse(open, ErrorKind::BadRequest, "malformed archive request");
    };
    let dest = match resolve(&req.path) {
        Ok(r) => r.path,
        Err((kind, text)) => return refuse(open, kind, &text),
    };
    match fs::metadata(&dest) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return refuse(
                open,
                ErrorKind::BadRequest,
                &format!("extraction point is not a directory: {}", req.path),
            )
        }
        Err(e) => {
            let (kind, text) = not_found_or(&req.path, &e);
            return refuse(open, kind, &text);
        }
    }
    let ch = match open.accept() {
        Ok(ch) => ch,
        Err(e) => return tracing::warn!(error = %e, "accepting an archive channel"),
    };
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(CHUNKS);
        let flags = req.flags;
        let unpacker = crate::blocking::spawn("archive-in", move || {
            unpack(ChunkReader::new(rx), &dest, flags)
        });
        let (mut reader, writer) = ch.split();
        let unpacker = match unpacker {
            Ok(job) => job,
            Err(e) => {
                let mut writer = writer;
                return conclude(&mut writer, Err(e.to_string())).await;
            }
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
        let result = match unpacker.join().await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut writer = writer;
        conclude(&mut writer, result).await;
    });
}

/// The entry's path below the destination, or why it is refused: an absolute name is taken
/// as relative (as docker's unpacker does), one that climbs out is refused.
fn entry_path(name: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for c in name.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(format!(
                        "refusing to unpack {}: it leads out of the destination",
                        name.display()
                    ));
                }
                depth -= 1;
                out.pop();
            }
            Component::Normal(n) => {
                depth += 1;
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Unpacks a tar stream into `dest`: modes and times kept, owners only with
/// [`svc::ARCHIVE_COPY_OWNERS`] (else everything belongs to root, docker's default).
fn unpack(reader: impl Read, dest: &Path, flags: u32) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let copy_owners = flags & svc::ARCHIVE_COPY_OWNERS != 0;
    archive.set_preserve_ownerships(copy_owners);
    let no_replace = flags & svc::ARCHIVE_NO_OVERWRITE_DIR_NON_DIR != 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let rel = entry_path(&name).map_err(io::Error::other)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        // A hard link's target must stay inside too.
        if let Ok(Some(target)) = entry.link_name() {
            if entry.header().entry_type().is_hard_link() {
                entry_path(&target).map_err(io::Error::other)?;
            }
        }
        let target = dest.join(&rel);
        // The tether's own files are no part of the container, also through a symlink.
        let private = target.starts_with(PRIVATE)
            || target
                .parent()
                .and_then(|p| fs::canonicalize(p).ok())
                .is_some_and(|p| p.starts_with(PRIVATE));
        if private {
            return Err(io::Error::other(format!(
                "refusing to unpack {}: it leads out of the container's filesystem",
                name.display()
            )));
        }
        if no_replace {
            if let Ok(md) = fs::symlink_metadata(&target) {
                let incoming_dir = entry.header().entry_type().is_dir();
                if md.is_dir() != incoming_dir {
                    return Err(io::Error::other(format!(
                        "cannot overwrite {} {} with a {}",
                        if md.is_dir() {
                            "directory"
                        } else {
                            "non-directory"
                        },
                        rel.display(),
                        if incoming_dir {
                            "directory"
                        } else {
                            "non-directory"
                        }
                    )));
                }
            }
        }
        // `unpack_in` checks that the parent, symlinks resolved, is still inside `dest`.
        if !entry.unpack_in(dest)? {
            return Err(io::Error::other(format!(
                "refusing to unpack {}: it leads out of the destination",
                name.display()
            )));
        }
        if !copy_owners && !entry.header().entry_type().is_symlink() {
            let _ = std::os::unix::fs::lchown(&target, Some(0), Some(0));
        }
    }
    Ok(())
}

/// Reads a small file of `/proc` or `/sys`; empty when it cannot be read (a process that
/// ended meanwhile).
fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(4096)
}

/// The kernel's flag for its own threads (`PF_KTHREAD`).
const PF_KTHREAD: u64 = 0x0020_0000;

/// `/proc/PID/stat` after the command name: field 3 (state) is index 0.
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let text = read(format!("/proc/{pid}/stat"));
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest = text.get(close + 1..)?;
    Some((comm, rest.split_whitespace().map(str::to_owned).collect()))
}

fn pids() -> Vec<u32> {
    let mut out: Vec<u32> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

fn tty_name(nr: u64) -> String {
    let major = (nr >> 8) & 0xfff;
    let minor = (nr & 0xff) | ((nr >> 12) & 0xfff00);
    match major {
        0 => "?".to_owned(),
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        5 if minor == 1 => "console".to_owned(),
        _ => format!("{major}:{minor}"),
    }
}

fn user_names() -> Vec<(u32, String)> {
    read("/etc/passwd")
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_owned();
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name))
        })
        .collect()
}

/// The container's processes: every process but the kernel's threads and the tether.
fn processes() -> Vec<Process> {
    let names = user_names();
    let page = page_size();
    let mut out = Vec::new();
    for pid in pids() {
        if pid == 1 {
            continue;
        }
        let Some((comm, f)) = stat_fields(pid) else {
            continue;
        };
        let num = |i: usize| -> u64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
        if num(6) & PF_KTHREAD != 0 {
            continue;
        }
        let uid = read(format!("/proc/{pid}/status"))
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let user = names
            .iter()
            .find(|(u, _)| *u == uid)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| uid.to_string());
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let command = if args.is_empty() {
            format!("[{comm}]")
        } else {
            args.join(" ")
        };
        out.push(Process {
            pid,
            ppid: u32::try_from(num(1)).unwrap_or(0),
            uid,
            user,
            state: f.first().cloned().unwrap_or_default(),
            cpu_ticks: num(11) + num(12),
            start_ticks: num(19),
            rss_bytes: num(21) * page,
            vsize_bytes: num(20),
            tty: tty_name(num(4)),
            command,
        });
    }
    out
}

fn meminfo() -> Vec<(String, u64)> {
    read("/proc/meminfo")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_owned(), kb * 1024))
        })
        .collect()
}

fn clock() -> Clock {
    let btime = read("/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // "SECONDS.CENTISECONDS IDLE"
    let uptime_ms = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| {
            let (secs, frac) = v.split_once('.').unwrap_or((v, "0"));
            let centis: u64 = frac.get(..2).unwrap_or(frac).parse().ok()?;
            Some(secs.parse::<u64>().ok()? * 1000 + centis * 10)
        })
        .unwrap_or(0);
    let mem_total = meminfo()
        .into_iter()
        .find(|(k, _)| k == "MemTotal")
        .map(|(_, v)| v)
        .unwrap_or(0);
    Clock {
        ticks_per_sec: ticks_per_sec(),
        boot_time: btime,
        uptime_ms,
        mem_total,
    }
}

async fn top(ch: Channel) {
    let listing = crate::blocking::run("top", || {
        let mut text = clock().line();
        for p in processes() {
            text.push_str(&p.line());
        }
        text
    })
    .await;
    let (reader, mut writer) = ch.split();
    drop(reader);
    let result = match listing {
        Ok(text) => writer
            .write_all(text.as_bytes())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    conclude(&mut writer, result).await;
}

/// One sample of the whole guest (the container is the VM).
fn sample() -> Sample {
    let tck = ticks_per_sec();
    let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000) / tck;
    let mut s = Sample::default();
    for line in read("/proc/stat").lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        if !name.starts_with("cpu") {
            continue;
        }
        // user nice system idle iowait irq softirq steal
        let v: Vec<u64> = f.take(8).map(|x| x.parse().unwrap_or(0)).collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        if name == "cpu" {
            s.cpu_busy_ns = ns(busy);
            s.cpu_user_ns = ns(at(0) + at(1));
            s.cpu_kernel_ns = ns(at(2) + at(5) + at(6));
            s.cpu_all_ns = ns(busy + at(3) + at(4));
        } else {
            s.percpu_ns.push(ns(busy));
        }
    }
    for (k, v) in meminfo() {
        match k.as_str() {
            "MemTotal" => s.mem_total = v,
            "MemFree" => s.mem_free = v,
            "MemAvailable" => s.mem_available = v,
            "Cached" => s.mem_cached = v,
            "Inactive(file)" => s.mem_inactive_file = v,
            "Active(file)" => s.mem_active_file = v,
            "AnonPages" => s.mem_anon = v,
            _ => {}
        }
    }
    s.pids = pids()
        .into_iter()
        .filter(|p| *p != 1)
        .filter(|p| {
            stat_fields(*p)
                .and_then(|(_, f)| f.get(6)?.parse::<u64>().ok())
                .is_some_and(|flags| flags & PF_KTHREAD == 0)
        })
        .count()
        .try_into()
        .unwrap_or(u64::MAX);
    for line in read("/proc/net/dev").lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        s.nets.push(NetCounters {
            name: name.to_owned(),
            // rx: bytes packets errs drop (0-3); tx: bytes packets errs drop (8-11)
            values: [at(0), at(1), at(2), at(3), at(8), at(9), at(10), at(11)],
        });
    }
    if let Ok(dir) = fs::read_dir("/sys/block") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "sr", "zram"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                continue;
            }
            let stat = read(e.path().join("stat"));
            let v: Vec<u64> = stat
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            let dev = read(e.path().join("dev"));
            let (major, minor) = dev
                .trim()
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .unwrap_or((0, 0));
            s.disks.push(BlockCounters {
                name,
                major,
                minor,
                read_bytes: at(2) * 512,
                write_bytes: at(6) * 512,
                reads: at(0),
                writes: at(4),
            });
        }
    }
    s
}

async fn stats(ch: Channel, interval_ms: u32) {
    let (mut reader, mut writer) = ch.split();
    // The client closes the channel (or sends EOF) when it has had enough.
    let mut closed = Box::pin(async move {
        let mut sink = [0u8; 256];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    loop {
        let block = match crate::blocking::run("stats", sample).await {
            Ok(s) => s.block(),
            Err(_) => break,
        };
        if writer.write_all(block.as_bytes()).await.is_err() {
            return;
        }
        if interval_ms == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(u64::from(interval_ms))) => {}
            _ = &mut closed => break,
        }
    }
    let _ = writer.eof();
    let _ = writer.send_exit_status(0);
    writer.close();
}

/// The kernel's count of OOM kills since boot (`/proc/vmstat` `oom_kill`; kernels without
/// VM event counters, such as the container kernel, have none).
fn oom_kills() -> Option<u64> {
    read("/proc/vmstat")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// Notices the kernel's OOM kills while a session runs: its log (`/dev/kmsg`, read from
/// where it stood at the start; each kill is logged as `Out of memory: Killed process PID
/// (NAME)`), or else the `oom_kill` count of `/proc/vmstat`.
#[derive(Debug)]
pub struct OomWatch {
    kmsg: Option<fs::File>,
    count_at_start: Option<u64>,
}

impl OomWatch {
    /// Starts watching (two system calls: the log is not read until [`OomWatch::victims`]).
    pub fn start() -> OomWatch {
        use std::os::unix::fs::OpenOptionsExt;
        let kmsg = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()
            .filter(|f| nix::unistd::lseek(f, 0, nix::unistd::Whence::SeekEnd).is_ok());
        let count_at_start = if kmsg.is_some() { None } else { oom_kills() };
        OomWatch {
            kmsg,
            count_at_start,
        }
    }

    /// The processes the OOM killer killed since the start (`PID (NAME)`), or one unnamed
    /// entry when only the count says so.
    pub fn victims(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(f) = &mut self.kmsg {
            let mut buf = vec![0u8; 8192];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let rec = String::from_utf8_lossy(&buf[..n]);
                        if let Some(at) = rec.find("Killed process ") {
                            let victim = rec[at + 15..]
                                .split(',')
                                .next()
                                .unwrap_or_default()
                                .trim()
                                .to_owned();
                            out.push(victim);
                        }
                    }
                    // Records overwritten before we read them: go on with the next.
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            return out;
        }
        if let (Some(a), Some(b)) = (self.count_at_start, oom_kills()) {
            if b > a {
                out.push(format!("{} process(es)", b - a));
            }
        }
        out
    }
}

/// Makes the tether the last process the OOM killer would ever pick: it is PID 1, its end
/// is the VM's.
pub fn protect_from_oom_killer() {
    if let Err(e) = fs::write("/proc/self/oom_score_adj", b"-1000") {
        tracing::warn!(error = %e, "cannot protect the tether from the OOM killer");
    }
}

/// Gives a process the tether started the ordinary OOM score (it inherited the tether's).
pub fn unprotect(pid: i32) {
    if let Err(e) = fs::write(format!("/proc/{pid}/oom_score_adj"), b"0") {
        tracing::debug!(pid, error = %e, "cannot reset the OOM score");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_may_not_climb_out() {
        assert_eq!(entry_path(Path::new("a/b")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            entry_path(Path::new("/etc/x")).unwrap(),
            PathBuf::from("etc/x")
        );
        assert_eq!(entry_path(Path::new("a/../b")).unwrap(), PathBuf::from("b"));
        assert!(entry_path(Path::new("../x")).is_err());
        assert!(entry_path(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn paths_resolve_with_dockers_names() {
        let r = resolve("/tmp/.").unwrap();
        assert_eq!(r.base, ".");
        let r = resolve("/tmp/../tmp/x").unwrap();
        assert_eq!(r.base, "x");
        assert!(r.path.ends_with("x"));
        assert!(resolve("/../x").is_err());
        assert!(resolve("").is_err());
        let missing = resolve("/no/such/dir/x").unwrap_err();
        assert_eq!(missing.0, ErrorKind::NotFound);
    }

    #[test]
    fn ttys_are_named() {
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(136 << 8), "pts/0");
        assert_eq!(tty_name((4 << 8) | 65), "ttyS1");
    }

    #[test]
    fn a_sample_of_this_machine_parses() {
        let s = sample();
        assert!(s.mem_total > 0);
        assert_eq!(
            Sample::parse(&s.block()).map(|p| p.mem_total),
            Some(s.mem_total)
        );
        assert!(!processes().is_empty());
    }

    #[test]
    fn packing_and_unpacking_keep_the_tree() {
        let src = tempdir("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/e/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("e/f", src.join("d/l")).unwrap();
        let r = resolve(&format!("{}/d", src.display())).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let packer = std::thread::spawn(move || pack(&r, tx));
        let mut bytes = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            bytes.extend(c);
        }
        packer.join().unwrap().unwrap();
        let dst = tempdir("dst");
        // Not root in a unit test: keep the owners (ours).
        unpack(&bytes[..], &dst, svc::ARCHIVE_COPY_OWNERS).unwrap();
        assert_eq!(fs::read(dst.join("d/e/f")).unwrap(), b"hello");
        assert_eq!(
            fs::read_link(dst.join("d/l")).unwrap(),
            PathBuf::from("e/f")
        );

        let mut evil = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // `set_path` refuses `..`; write the name bytes directly.
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        evil.append(&h, &b"x"[..]).unwrap();
        let evil = evil.into_inner().unwrap();
        let err = unpack(&evil[..], &dst.join("d"), 0).unwrap_err();
        assert!(err.to_string().contains("leads out"), "{err}");
        assert!(!dst.join("escape").exists());
    }

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "tether-services-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }
}
