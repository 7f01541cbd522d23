//! Guest services: files in and out of a container (`cp`, docker's `/archive`), its process
//! list (`top`) and resource samples (`stats`). The tether answers them on channels of our
//! own (`backchannel::services`), relayed by the container's keeper like `attach`.
//!
//! `cp` follows docker's client rules (which side of a path is the container's, a
//! destination that does not exist, `SRC/.`, `-L`, `-a`) here, once, for `vch cp`; the
//! Docker API serves the raw `GET`/`HEAD`/`PUT` and the docker client applies the same
//! rules on its side.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel::chunks::{ChunkReader, ChunkWriter, CHUNK};
use backchannel::services::{
    self as svc, ArchiveOpen, Clock, ErrorKind as SvcKind, PathStat, Process, Sample,
};
use sshproto::{ChannelReader, ChannelWriter, Connection, StderrReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::containers::qemu_alive;
use super::{Engine, EngineError};
use crate::state::Meta;

/// How long a service waits for the end of a channel after its data ended.
const END_WAIT: Duration = Duration::from_secs(5);

/// An archive coming out of a container: the stat of its path and the tar stream.
#[derive(Debug)]
pub struct ArchiveOut {
    pub stat: PathStat,
    /// The tar stream; read to its end, then call [`ArchiveOut::finish`].
    pub data: ChannelReader,
    errors: StderrReader,
    writer: ChannelWriter,
    session: GuestSession,
}

impl ArchiveOut {
    /// How the stream ended: an error when the tether could not send everything.
    pub async fn finish(mut self) -> Result<(), EngineError> {
        let r = conclude(&self.writer, &mut self.errors).await;
        self.session.end().await;
        r
    }
}

/// Where a service's channels open: a running container's keeper, or the tether of a
/// stopped container's VM booted for maintenance (ended with [`GuestSession::end`], or when
/// dropped).
#[derive(Debug)]
pub(super) struct GuestSession {
    meta: Meta,
    conn: Connection,
    maintenance: Option<std::sync::Arc<super::maintenance::Maintenance>>,
}

impl GuestSession {
    async fn open(&self, ty: &str, data: &[u8]) -> Result<sshproto::Channel, EngineError> {
        match self.conn.open_channel(ty, data).await {
            Ok(ch) => Ok(ch),
            Err(e) => {
                let (kind, text) = SvcKind::parse(&e.to_string());
                Err(match kind {
                    SvcKind::NotFound => EngineError::PathNotFound(text),
                    SvcKind::BadRequest => EngineError::BadRequest(text),
                    SvcKind::Failed if text.contains("unknown channel type") => {
                        EngineError::Conflict(format!(
                            "container {}'s tether does not offer this service ({ty})",
                            self.meta.name
                        ))
                    }
                    SvcKind::Failed => EngineError::Backchannel(text),
                })
            }
        }
    }

    /// Powers a maintenance VM off (nothing for a running container).
    async fn end(&mut self) {
        if let Some(m) = self.maintenance.take() {
            m.end().await;
        }
    }
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        if let Some(m) = self.maintenance.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { m.end().await });
            }
        }
    }
}

/// The channel's exit status, with the tether's reason when it is not 0.
async fn conclude(writer: &ChannelWriter, errors: &mut StderrReader) -> Result<(), EngineError> {
    let mut text = String::new();
    let _ = tokio::time::timeout(END_WAIT, errors.read_to_string(&mut text)).await;
    let _ = tokio::time::timeout(END_WAIT, writer.wait_closed()).await;
    match writer.exit_status() {
        Some(0) => Ok(()),
        Some(_) => Err(EngineError::BadRequest(text.trim().to_owned())),
        None if text.trim().is_empty() => Err(EngineError::Backchannel(
            "the container's back-channel closed before the copy ended".into(),
        )),
        None => Err(EngineError::BadRequest(text.trim().to_owned())),
    }
}

/// A process list in docker's shape: column titles and one row per process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopView {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// `docker top`'s two process listings `ps` gives most often: `-ef` (docker's default) and
/// `aux`. Other `ps` options are refused: there is no `ps` on the host that sees the guest's
/// processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PsFormat {
    Full,
    User,
}

fn ps_format(args: &str) -> Result<PsFormat, EngineError> {
    match args.split_whitespace().collect::<Vec<_>>().as_slice() {
        [] | ["-ef"] | ["-e", "-f"] | ["-f"] | ["-fe"] => Ok(PsFormat::Full),
        ["aux"] | ["-aux"] | ["auxw"] | ["auxww"] => Ok(PsFormat::User),
        _ => Err(EngineError::BadRequest(format!(
            "ps options {args:?} are not supported: a container VM's processes are listed as `ps -ef` (default) or `ps aux`"
        ))),
    }
}

/// `[[hh:]mm:]ss`-style durations as `ps` prints TIME: `HH:MM:SS`.
fn hms(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `ps`'s STIME for a start time: `HH:MM` (UTC) today, else `MonDD`.
fn stime(start_unix: u64, now_unix: u64) -> String {
    let day = |t: u64| t / 86_400;
    if day(start_unix) == day(now_unix) {
        format!("{:02}:{:02}", start_unix / 3600 % 24, start_unix / 60 % 60)
    } else {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(start_unix);
        let text = humantime::format_rfc3339_seconds(t).to_string();
        // YYYY-MM-DD...: month and day.
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month: usize = text.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
        format!(
            "{}{}",
            MONTHS.get(month.saturating_sub(1)).unwrap_or(&"Jan"),
            text.get(8..10).unwrap_or("01")
        )
    }
}

/// Turns the tether's list into `ps`'s columns.
fn top_view(clock: &Clock, procs: &[Process], format: PsFormat) -> TopView {
    let tck = clock.ticks_per_sec.max(1);
    let now = clock.boot_time + clock.uptime_ms / 1000;
    let uptime_ticks = clock.uptime_ms * tck / 1000;
    let cpu_pct = |p: &Process| {
        let alive = uptime_ticks.saturating_sub(p.start_ticks).max(1);
        p.cpu_ticks as f64 * 100.0 / alive as f64
    };
    let start = |p: &Process| clock.boot_time + p.start_ticks / tck;
    match format {
        PsFormat::Full => TopView {
            titles: ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
                .map(String::from)
                .to_vec(),
            processes: procs
                .iter()
                .map(|p| {
                    vec![
                        p.user.clone(),
                        p.pid.to_string(),
                        p.ppid.to_string(),
                        format!("{}", cpu_pct(p) as u64),
                        stime(start(p), now),
                        p.tty.clone(),
                        hms(p.cpu_ticks / tck),
                        p.command.clone(),
                    ]
                })
                .collect(),
        },
        PsFormat::User => TopView {
            titles: [
                "USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME",
                "COMMAND",
            ]
            .map(String::from)
            .to_vec(),
            processes: procs
                .iter()
                .map(|p| {
                    let mem = if clock.mem_total > 0 {
                        p.rss_bytes as f64 * 100.0 / clock.mem_total as f64
                    } else {
                        0.0
                    };
                    let cpu = p.cpu_ticks / tck;
                    vec![
                        p.user.clone(),
                        p.pid.to_string(),
                        format!("{:.1}", cpu_pct(p)),
                        format!("{mem:.1}"),
                        (p.vsize_bytes / 1024).to_string(),
                        (p.rss_bytes / 1024).to_string(),
                        p.tty.clone(),
                        p.state.clone(),
                        stime(start(p), now),
                        format!("{}:{:02}", cpu / 60, cpu % 60),
                        p.command.clone(),
                    ]
                })
                .collect(),
        },
    }
}

/// Where `vch cp` copies from or to on this side.
#[derive(Debug)]
pub enum LocalEnd {
    /// A path on this machine.
    Path(PathBuf),
    /// A tar stream (`-`): stdin as the source, stdout as the destination.
    Stream,
}

impl Engine {
    /// A session with a container's tether: through its keeper when it runs; else, when
    /// `stopped_too`, its VM booted for maintenance.
    async fn guest(&self, name: &str, stopped_too: bool) -> Result<GuestSession, EngineError> {
        let meta = self.resolve(name)?;
        if qemu_alive(&meta) {
            let conn = self.connect(&meta).await?;
            return Ok(GuestSession {
                meta,
                conn,
                maintenance: None,
            });
        }
        if !stopped_too || super::containers::keeper_alive(&meta) {
            return Err(EngineError::NotRunning(meta.id));
        }
        let m = self.maintenance(&meta).await?;
        Ok(GuestSession {
            meta,
            conn: m.conn.clone(),
            maintenance: Some(std::sync::Arc::new(m)),
        })
    }

    /// The stat of a path in a container (docker's `HEAD /archive`).
    pub async fn archive_stat(&self, name: &str, path: &str) -> Result<PathStat, EngineError> {
        let mut g = self.guest(name, true).await?;
        let r = stat_in(&g, path).await;
        g.end().await;
        r
    }

    /// A path of a container as a tar stream (docker's `GET /archive`): the entries are
    /// rooted at the path's last element (`.` for `DIR/.`), symlinks are not followed.
    pub async fn archive_get(&self, name: &str, path: &str) -> Result<ArchiveOut, EngineError> {
        let g = self.guest(name, true).await?;
        archive_open(g, path, 0).await
    }

    /// Unpacks a tar stream into a directory of a container (docker's `PUT /archive`);
    /// `flags` are `backchannel::services::ARCHIVE_*`.
    pub async fn archive_put(
        &self,
        name: &str,
        path: &str,
        flags: u32,
        body: impl AsyncRead + Unpin,
    ) -> Result<(), EngineError> {
        let mut g = self.guest(name, true).await?;
        let r = put_in(&g, path, flags, body).await;
        g.end().await;
        r
    }

    /// A container's processes (docker's `top`), with `ps`'s `-ef` (default) or `aux`
    /// columns.
    pub async fn top(&self, name: &str, ps_args: &str) -> Result<TopView, EngineError> {
        let format = ps_format(ps_args)?;
        let g = self.guest(name, false).await?;
        let ch = g.open(svc::CHANNEL_TOP, &[]).await?;
        let mut errors = ch.stderr();
        let (mut reader, writer) = ch.split();
        let mut text = String::new();
        reader
            .read_to_string(&mut text)
            .await
            .map_err(|e| EngineError::Backchannel(format!("top: {e}")))?;
        conclude(&writer, &mut errors).await?;
        let mut lines = text.lines();
        let clock = lines
            .next()
            .and_then(Clock::parse)
            .ok_or_else(|| EngineError::Backchannel("top: malformed reply".into()))?;
        let procs: Vec<Process> = lines.filter_map(Process::parse).collect();
        Ok(top_view(&clock, &procs, format))
    }

    /// Resource samples of a running container in docker's `stats` JSON, one per second
    /// (`count` of them, or until the receiver is dropped or the container stops). The
    /// first one has empty `precpu_stats`, as docker's.
    pub async fn stats(
        &self,
        name: &str,
        count: Option<usize>,
    ) -> Result<mpsc::Receiver<serde_json::Value>, EngineError> {
        let g = self.guest(name, false).await?;
        let interval = if count == Some(1) { 0 } else { 1000 };
        let ch = g
            .open(svc::CHANNEL_STATS, &svc::stats_open_payload(interval))
            .await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let meta = g.meta.clone();
            let _g = g;
            let (mut reader, writer) = ch.split();
            let mut pending = String::new();
            let mut buf = vec![0u8; 16 * 1024];
            let mut previous: Option<(Sample, String)> = None;
            let mut sent = 0usize;
            'read: loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                while let Some(end) = pending.find("\n\n") {
                    let block: String = pending.drain(..end + 2).collect();
                    let Some(sample) = Sample::parse(&block) else {
                        continue;
                    };
                    let read =
                        humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
                    let value = stats_json(&meta, &sample, previous.as_ref(), &read);
                    previous = Some((sample, read));
                    if tx.send(value).await.is_err() {
                        break 'read;
                    }
                    sent += 1;
                    if count.is_some_and(|c| sent >= c) {
                        break 'read;
                    }
                }
            }
            writer.close();
        });
        Ok(rx)
    }
}

/// The stat of a path through a session.
async fn stat_in(g: &GuestSession, path: &str) -> Result<PathStat, EngineError> {
    let open = ArchiveOpen {
        path: path.to_owned(),
        flags: svc::ARCHIVE_STAT_ONLY,
    };
    let ch = g.open(svc::CHANNEL_ARCHIVE_GET, &open.payload()).await?;
    let mut errors = ch.stderr();
    let (mut data, writer) = ch.split();
    let stat = read_stat(&mut data).await?;
    conclude(&writer, &mut errors).await?;
    Ok(stat)
}

async fn read_stat(data: &mut ChannelReader) -> Result<PathStat, EngineError> {
    let mut len = [0u8; 4];
    let bad = |e: io::Error| EngineError::Backchannel(format!("archive stat: {e}"));
    data.read_exact(&mut len).await.map_err(bad)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > 1 << 20 {
        return Err(EngineError::Backchannel("archive stat: too long".into()));
    }
    let mut body = vec![0u8; n];
    data.read_exact(&mut body).await.map_err(bad)?;
    PathStat::parse(&body).ok_or_else(|| EngineError::Backchannel("archive stat: malformed".into()))
}

/// A path's tar stream through a session (which the stream then holds).
async fn archive_open(g: GuestSession, path: &str, flags: u32) -> Result<ArchiveOut, EngineError> {
    let open = ArchiveOpen {
        path: path.to_owned(),
        flags,
    };
    let ch = g.open(svc::CHANNEL_ARCHIVE_GET, &open.payload()).await?;
    let errors = ch.stderr();
    let (mut data, writer) = ch.split();
    let stat = read_stat(&mut data).await?;
    Ok(ArchiveOut {
        stat,
        data,
        errors,
        writer,
        session: g,
    })
}

/// Unpacks a tar stream into a directory through a session.
async fn put_in(
    g: &GuestSession,
    path: &str,
    flags: u32,
    mut body: impl AsyncRead + Unpin,
) -> Result<(), EngineError> {
    let open = ArchiveOpen {
        path: path.to_owned(),
        flags,
    };
    let ch = g.open(svc::CHANNEL_ARCHIVE_PUT, &open.payload()).await?;
    let mut errors = ch.stderr();
    let (_reader, mut writer) = ch.split();
    let mut buf = vec![0u8; CHUNK];
    let mut body_error = None;
    loop {
        match body.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                // The tether stopped reading: its reason follows.
                if writer.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                body_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = body_error {
        writer.close();
        return Err(EngineError::BadRequest(format!("reading the archive: {e}")));
    }
    let _ = writer.eof();
    conclude(&writer, &mut errors).await
}

/// docker's stats JSON for a sample (and the one before it, for the CPU deltas).
fn stats_json(
    meta: &Meta,
    s: &Sample,
    previous: Option<&(Sample, String)>,
    read: &str,
) -> serde_json::Value {
    use serde_json::json;
    let cpu = |s: &Sample| {
        json!({
            "cpu_usage": {
                "total_usage": s.cpu_busy_ns,
                "percpu_usage": s.percpu_ns,
                "usage_in_kernelmode": s.cpu_kernel_ns,
                "usage_in_usermode": s.cpu_user_ns,
            },
            "system_cpu_usage": s.cpu_all_ns,
            "online_cpus": s.percpu_ns.len().max(1),
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        })
    };
    let precpu = match previous {
        Some((p, _)) => cpu(p),
        None => json!({
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }),
    };
    // The VM is the container: its memory in use is what the guest does not have free;
    // the limit is the VM's memory.
    let limit = if meta.memory_mb > 0 {
        u64::from(meta.memory_mb) << 20
    } else {
        s.mem_total
    };
    let usage = s.mem_total.saturating_sub(s.mem_free);
    let networks: serde_json::Map<String, serde_json::Value> = s
        .nets
        .iter()
        .map(|n| {
            let v = n.values;
            (
                n.name.clone(),
                json!({
                    "rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                    "tx_bytes": v[4], "tx_packets": v[5], "tx_errors": v[6], "tx_dropped": v[7],
                }),
            )
        })
        .collect();
    let mut io_bytes = Vec::new();
    let mut io_ops = Vec::new();
    for d in &s.disks {
        for (op, bytes, ops) in [
            ("read", d.read_bytes, d.reads),
            ("write", d.write_bytes, d.writes),
        ] {
            io_bytes.push(json!({"major": d.major, "minor": d.minor, "op": op, "value": bytes}));
            io_ops.push(json!({"major": d.major, "minor": d.minor, "op": op, "value": ops}));
        }
    }
    let mut v = json!({
        "read": read,
        "preread": previous.map(|(_, r)| r.clone()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        "pids_stats": {"current": s.pids},
        "blkio_stats": {
            "io_service_bytes_recursive": io_bytes,
            "io_serviced_recursive": io_ops,
            "io_queue_recursive": null, "io_service_time_recursive": null,
            "io_wait_time_recursive": null, "io_merged_recursive": null,
            "io_time_recursive": null, "sectors_recursive": null,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(s),
        "precpu_stats": precpu,
        "memory_stats": {
            "usage": usage,
            "limit": limit,
            "stats": {
                "active_file": s.mem_active_file,
                "inactive_file": s.mem_inactive_file,
                "file": s.mem_cached,
                "anon": s.mem_anon,
                "available": s.mem_available,
            },
        },
        "name": format!("/{}", meta.name),
        "id": meta.id,
    });
    if !networks.is_empty() {
        v["networks"] = serde_json::Value::Object(networks);
    }
    v
}

// ------------------------------------------------------------------ docker cp, client side

/// An async reader over a channel of chunks (what a blocking tar writer produces, or a
/// request body).
#[derive(Debug)]
pub struct ChunkStream {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
}

impl AsyncRead for ChunkStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let me = &mut *self;
        while me.at >= me.cur.len() {
            match me.rx.poll_recv(cx) {
                Poll::Ready(Some(c)) => {
                    me.cur = c;
                    me.at = 0;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = out.remaining().min(me.cur.len() - me.at);
        out.put_slice(&me.cur[me.at..me.at + n]);
        me.at += n;
        Poll::Ready(Ok(()))
    }
}

/// An async reader over the chunks `rx` receives, ending when the sender is dropped.
pub fn chunk_stream(rx: mpsc::Receiver<Vec<u8>>) -> ChunkStream {
    ChunkStream {
        rx,
        cur: Vec::new(),
        at: 0,
    }
}

/// docker's `SplitPathDirEntry`: the directory and the last element (`.` for `DIR/.`).
fn split_dir_entry(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    if trimmed.ends_with("/.") || trimmed == "." {
        let dir = trimmed.trim_end_matches('.').trim_end_matches('/');
        return (
            if dir.is_empty() {
                "/".into()
            } else {
                dir.into()
            },
            ".".into(),
        );
    }
    match trimmed.rsplit_once('/') {
        Some(("", base)) => ("/".into(), base.into()),
        Some((dir, base)) => (dir.into(), base.into()),
        None if trimmed.is_empty() => ("/".into(), ".".into()),
        None => (".".into(), trimmed.into()),
    }
}

/// Renames the entries rooted at `old` to `new` (docker's `RebaseArchiveEntries`).
fn rebase(input: impl Read, output: impl Write, old: &str, new: &str) -> io::Result<()> {
    let map = |p: &Path| -> PathBuf {
        let s = p.to_string_lossy();
        let s = s.trim_start_matches("./");
        let old = old.trim_start_matches("./");
        if old == "." || old.is_empty() {
            if s == "." || s.is_empty() {
                return PathBuf::from(new);
            }
            return Path::new(new).join(s);
        }
        match s.strip_prefix(old) {
            Some("") | Some("/") => PathBuf::from(new),
            Some(rest) if rest.starts_with('/') => {
                Path::new(new).join(rest.trim_start_matches('/'))
            }
            _ => PathBuf::from(s),
        }
    };
    let mut archive = tar::Archive::new(input);
    let mut b = tar::Builder::new(output);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = map(&entry.path()?);
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let target = if kind.is_hard_link() {
                map(&target)
            } else {
                target
            };
            b.append_link(&mut header, &path, &target)?;
        } else {
            b.append_data(&mut header, &path, &mut entry)?;
        }
    }
    b.into_inner()?.flush()
}

/// Unpacks a tar stream into `dir` on this machine (modes and times kept; owners when
/// this process may set them).
fn unpack_local(input: impl Read, dir: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.unpack(dir)
}

/// Packs a local path as docker's client does: rooted at its last element (`.` for
/// `DIR/.`), symlinks kept as links.
fn pack_local(path: &Path, base: &str, output: impl Write) -> io::Result<()> {
    let mut b = tar::Builder::new(output);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let md = std::fs::symlink_metadata(path)?;
    if md.is_dir() {
        b.append_dir_all(base, path)?;
    } else {
        b.append_path_with_name(path, base)?;
    }
    b.into_inner()?.flush()
}

impl Engine {
    /// `vch cp CONTAINER:SRC DST` (docker's client rules): `DST` = `-` writes the tar stream
    /// to `out`.
    pub async fn copy_from_container(
        &self,
        name: &str,
        src: &str,
        follow_link: bool,
        dst: LocalEnd,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<(), EngineError> {
        let g = self.guest(name, true).await?;
        let maintenance = g.maintenance.clone();
        let r = self.copy_from_in(g, src, follow_link, dst, out).await;
        // Also after a failure: the maintenance VM powers off before the command ends.
        if let Some(m) = maintenance {
            m.end().await;
        }
        r
    }

    async fn copy_from_in(
        &self,
        g: GuestSession,
        src: &str,
        follow_link: bool,
        dst: LocalEnd,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<(), EngineError> {
        let mut src = src.to_owned();
        let mut rebase_to: Option<String> = None;
        if follow_link {
            let st = stat_in(&g, &src).await?;
            if st.is_symlink() {
                let (parent, base) = split_dir_entry(&src);
                let target = if st.link_target.starts_with('/') {
                    st.link_target.clone()
                } else {
                    format!("{}/{}", parent.trim_end_matches('/'), st.link_target)
                };
                rebase_to = Some(base);
                src = target;
            }
        }
        let archive = archive_open(g, &src, 0).await?;
        let is_dir = archive.stat.is_dir();
        let (_, src_base) = split_dir_entry(&src);
        let (src_base, rebase_first) = match rebase_to {
            Some(r) => (r.clone(), Some((src_base, r))),
            None => (src_base, None),
        };
        let dst_path = match dst {
            LocalEnd::Stream => {
                let mut data = archive.data;
                let (errors, writer, mut session) =
                    (archive.errors, archive.writer, archive.session);
                let copied = match rebase_first {
                    None => tokio::io::copy(&mut data, out).await.map(|_| ()),
                    Some((old, new)) => {
                        let stream = self.transform(data, move |r, w| rebase(r, w, &old, &new));
                        let mut stream = stream;
                        tokio::io::copy(&mut stream, out).await.map(|_| ())
                    }
                };
                copied.map_err(|e| EngineError::Io {
                    what: "write the archive".into(),
                    source: e,
                })?;
                let _ = out.flush().await;
                let mut errors = errors;
                let r = conclude(&writer, &mut errors).await;
                session.end().await;
                return r;
            }
            LocalEnd::Path(p) => p,
        };
        // Where the stream goes on this side, and how its entries are renamed.
        let dst_text = dst_path.to_string_lossy().into_owned();
        let dst_md = std::fs::metadata(&dst_path);
        let (dir, rename): (PathBuf, Option<String>) = match dst_md {
            Ok(md) if md.is_dir() => (dst_path.clone(), None),
            Ok(_) if is_dir => {
                return Err(EngineError::BadRequest(format!(
                    "cannot copy a directory to a file: {dst_text}"
                )))
            }
            Ok(_) => {
                let (d, b) = split_dir_entry(&dst_text);
                (PathBuf::from(d), Some(b))
            }
            Err(_) if dst_text.ends_with('/') && !is_dir => {
                return Err(EngineError::BadRequest(format!(
                    "destination directory {dst_text} does not exist"
                )))
            }
            Err(_) => {
                let (d, b) = split_dir_entry(&dst_text);
                let d = PathBuf::from(d);
                if !d.is_dir() {
                    return Err(EngineError::BadRequest(format!(
                        "destination directory {} does not exist",
                        d.display()
                    )));
                }
                (d, Some(b))
            }
        };
        let renames: Vec<(String, String)> = rebase_first
            .into_iter()
            .chain(rename.map(|r| (src_base.clone(), r)))
            .collect();
        let ArchiveOut {
            data,
            mut errors,
            writer,
            mut session,
            ..
        } = archive;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let unpacker = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut input: Box<dyn Read + Send> = Box::new(ChunkReader::new(rx));
            for (old, new) in renames {
                let (rtx, rrx) = mpsc::channel::<Vec<u8>>(8);
                let src = input;
                let t = std::thread::spawn(move || {
                    rebase(
                        src,
                        ChunkWriter::new(rtx, "the copy was abandoned"),
                        &old,
                        &new,
                    )
                });
                input = Box::new(JoinedReader {
                    inner: ChunkReader::new(rrx),
                    thread: Some(t),
                });
            }
            unpack_local(input, &dir)
        });
        let mut data = data;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match data.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
        let unpacked = unpacker.await.map_err(|e| EngineError::Io {
            what: "unpack".into(),
            source: io::Error::other(e),
        })?;
        let ended = conclude(&writer, &mut errors).await;
        session.end().await;
        unpacked.map_err(|e| EngineError::Io {
            what: format!("unpack into {}", dst_text),
            source: e,
        })?;
        ended
    }

    /// Runs a blocking tar transformation over an async stream.
    fn transform<F>(&self, mut input: ChannelReader, f: F) -> ChunkStream
    where
        F: FnOnce(ChunkReader, ChunkWriter) -> io::Result<()> + Send + 'static,
    {
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(8);
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(8);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if in_tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        tokio::task::spawn_blocking(move || {
            let r = ChunkReader::new(in_rx);
            let w = ChunkWriter::new(out_tx, "the copy was abandoned");
            if let Err(e) = f(r, w) {
                tracing::warn!(error = %e, "archive transformation");
            }
        });
        ChunkStream {
            rx: out_rx,
            cur: Vec::new(),
            at: 0,
        }
    }

    /// `vch cp SRC CONTAINER:DST` (docker's client rules): `SRC` = `-` reads a tar stream
    /// from `input`, unpacked into the directory `DST`.
    pub async fn copy_to_container(
        &self,
        name: &str,
        src: LocalEnd,
        dst: &str,
        copy_owners: bool,
        follow_link: bool,
        input: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), EngineError> {
        let g = self.guest(name, true).await?;
        let maintenance = g.maintenance.clone();
        let r = self
            .copy_to_in(g, src, dst, copy_owners, follow_link, input)
            .await;
        if let Some(m) = maintenance {
            m.end().await;
        }
        r
    }

    async fn copy_to_in(
        &self,
        mut g: GuestSession,
        src: LocalEnd,
        dst: &str,
        copy_owners: bool,
        follow_link: bool,
        input: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), EngineError> {
        let mut flags = svc::ARCHIVE_NO_OVERWRITE_DIR_NON_DIR;
        if copy_owners {
            flags |= svc::ARCHIVE_COPY_OWNERS;
        }
        let src = match src {
            LocalEnd::Stream => {
                let r = put_in(&g, dst, flags, input).await;
                g.end().await;
                return r;
            }
            LocalEnd::Path(p) => p,
        };
        let src_text = src.to_string_lossy().into_owned();
        let (_, src_base) = split_dir_entry(&src_text);
        let mut local = src.clone();
        if follow_link {
            if let Ok(target) = std::fs::canonicalize(&src) {
                local = target;
            }
        }
        let md = std::fs::symlink_metadata(&local).map_err(|e| EngineError::Io {
            what: format!("lstat {src_text}"),
            source: e,
        })?;
        let src_is_dir = md.is_dir();
        // Where it goes in the container, and under which name.
        let (dir, base) = match stat_in(&g, dst).await {
            Ok(st) if st.is_dir() => (dst.to_owned(), src_base.clone()),
            Ok(_) if src_is_dir => {
                return Err(EngineError::BadRequest(format!(
                    "cannot copy a directory to a file: {dst}"
                )))
            }
            Ok(_) => split_dir_entry(dst),
            Err(EngineError::PathNotFound(_)) => {
                if dst.ends_with('/') && !src_is_dir {
                    return Err(EngineError::BadRequest(format!(
                        "destination directory {dst} does not exist"
                    )));
                }
                split_dir_entry(dst)
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let packer = tokio::task::spawn_blocking(move || {
            // Rooted at the name it gets there (`.` puts a `DIR/.`'s contents into an
            // existing directory).
            pack_local(
                &local,
                &base,
                ChunkWriter::new(tx, "the copy was abandoned"),
            )
        });
        let stream = ChunkStream {
            rx,
            cur: Vec::new(),
            at: 0,
        };
        let put = put_in(&g, &dir, flags, stream).await;
        g.end().await;
        let packed = packer.await.map_err(|e| EngineError::Io {
            what: "pack".into(),
            source: io::Error::other(e),
        })?;
        put?;
        packed.map_err(|e| EngineError::Io {
            what: format!("pack {src_text}"),
            source: e,
        })
    }
}

/// A reader whose producer thread's error is reported at the end of the stream.
struct JoinedReader {
    inner: ChunkReader,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Read for JoinedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        if n == 0 {
            if let Some(t) = self.thread.take() {
                t.join()
                    .unwrap_or_else(|_| Err(io::Error::other("rebase thread failed")))?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_as_dockers() {
        assert_eq!(split_dir_entry("/a/b"), ("/a".into(), "b".into()));
        assert_eq!(split_dir_entry("/a/b/"), ("/a".into(), "b".into()));
        assert_eq!(split_dir_entry("/a/b/."), ("/a/b".into(), ".".into()));
        assert_eq!(split_dir_entry("/b"), ("/".into(), "b".into()));
        assert_eq!(split_dir_entry("b"), (".".into(), "b".into()));
    }

    #[test]
    fn rebase_renames_the_root_only() {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in [("d/x", "1"), ("dx", "2"), ("d", "")] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, data.as_bytes()).unwrap();
        }
        let input = b.into_inner().unwrap();
        let mut out = Vec::new();
        rebase(&input[..], &mut out, "d", "e").unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["e/x", "dx", "e"]);
        let mut out2 = Vec::new();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "./a", &b"1"[..]).unwrap();
        rebase(&b.into_inner().unwrap()[..], &mut out2, ".", "new").unwrap();
        let mut a = tar::Archive::new(&out2[..]);
        let e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap(), Path::new("new/a"));
    }

    #[test]
    fn top_columns_follow_ps() {
        let clock = Clock {
            ticks_per_sec: 100,
            boot_time: 86_400 * 10,
            uptime_ms: 60_000,
            mem_total: 1 << 30,
        };
        let p = Process {
            pid: 5,
            ppid: 1,
            uid: 0,
            user: "root".into(),
            state: "S".into(),
            cpu_ticks: 300,
            start_ticks: 0,
            rss_bytes: 1 << 20,
            vsize_bytes: 2 << 20,
            tty: "?".into(),
            command: "sleep 100".into(),
        };
        let v = top_view(&clock, std::slice::from_ref(&p), ps_format("").unwrap());
        assert_eq!(v.titles[7], "CMD");
        assert_eq!(
            v.processes[0],
            ["root", "5", "1", "5", "00:00", "?", "00:00:03", "sleep 100"]
        );
        let v = top_view(&clock, &[p], ps_format("aux").unwrap());
        assert_eq!(v.processes[0][4], "2048");
        assert!(ps_format("-o pid").is_err());
    }
}
