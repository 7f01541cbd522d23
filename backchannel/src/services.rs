//! Our extensions of the back-channel: guest services the original protocol has no request
//! for (copying files in and out, the process list, resource samples). Each is a channel
//! type of its own, so a port layer that does not know them never opens one, and an
//! original tether refuses them as an unknown channel type (`UNKNOWN_CHANNEL_TYPE`): the VIC
//! protocol is unchanged.
//!
//! | channel type | open data | tether → host | host → tether |
//! |---|---|---|---|
//! | `archive-get@tether` | [`ArchiveOpen`] | [`PathStat`] frame, then a tar stream, EOF, `exit-status` | nothing |
//! | `archive-put@tether` | [`ArchiveOpen`] | EOF, `exit-status` (0, or 1 with the reason as stderr) | a tar stream, EOF |
//! | `top@tether` | empty | [`Process`] lines, EOF, `exit-status` | nothing |
//! | `stats@tether` | `uint32` interval in ms | one [`Sample`] block per interval until the host closes | nothing |
//!
//! A request the tether refuses (no such path, a path outside the container) is a refused
//! channel open whose message starts with an [`ErrorKind`] tag.

/// Channel type: a tar stream of a path in the guest (docker's `GET /archive`; `HEAD`
/// with [`ArchiveOpen::stat_only`]).
pub const CHANNEL_ARCHIVE_GET: &str = "archive-get@tether";
/// Channel type: a tar stream unpacked into a directory in the guest (docker's `PUT
/// /archive`).
pub const CHANNEL_ARCHIVE_PUT: &str = "archive-put@tether";
/// Channel type: the guest's process list.
pub const CHANNEL_TOP: &str = "top@tether";
/// Channel type: resource samples.
pub const CHANNEL_STATS: &str = "stats@tether";

/// What kind of refusal a channel open carries, as the first word of its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The path does not exist.
    NotFound,
    /// The request is wrong (a path outside the container, not a directory, ...).
    BadRequest,
    /// Anything else.
    Failed,
}

impl ErrorKind {
    fn tag(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found:",
            ErrorKind::BadRequest => "bad-request:",
            ErrorKind::Failed => "failed:",
        }
    }

    /// The refusal message for `text`.
    pub fn message(self, text: &str) -> String {
        format!("{} {text}", self.tag())
    }

    /// Finds the kind and the text in a refusal message (also when a relay wrapped it in
    /// words of its own).
    pub fn parse(message: &str) -> (ErrorKind, String) {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::BadRequest,
            ErrorKind::Failed,
        ] {
            if let Some(at) = message.find(kind.tag()) {
                let text = message[at + kind.tag().len()..].trim().to_owned();
                return (kind, text);
            }
        }
        (ErrorKind::Failed, message.to_owned())
    }
}

/// Flag of [`ArchiveOpen`]: only the path's stat is sent (`HEAD`).
pub const ARCHIVE_STAT_ONLY: u32 = 1;
/// Flag of [`ArchiveOpen`] (put): keep the archive's owners (`docker cp -a`); otherwise
/// everything unpacked belongs to root.
pub const ARCHIVE_COPY_OWNERS: u32 = 2;
/// Flag of [`ArchiveOpen`] (put): refuse to replace a directory by a non-directory or the
/// other way round (docker's `noOverwriteDirNonDir`).
pub const ARCHIVE_NO_OVERWRITE_DIR_NON_DIR: u32 = 4;

/// The open data of the archive channels: a path in the guest and flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchiveOpen {
    pub path: String,
    pub flags: u32,
}

impl ArchiveOpen {
    /// Whether only the stat is asked for.
    pub fn stat_only(&self) -> bool {
        self.flags & ARCHIVE_STAT_ONLY != 0
    }

    /// The open data: `string` path, `uint32` flags.
    pub fn payload(&self) -> Vec<u8> {
        let mut out = ssh_string(self.path.as_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out
    }

    /// Parses the open data.
    pub fn parse(p: &[u8]) -> Option<ArchiveOpen> {
        let mut r = Reader(p);
        let path = String::from_utf8(r.string()?.to_vec()).ok()?;
        let flags = r.u32()?;
        Some(ArchiveOpen { path, flags })
    }
}

/// The stat of a path (docker's `X-Docker-Container-Path-Stat`), with the raw `st_mode`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathStat {
    pub name: String,
    pub size: u64,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nsecs: u32,
    /// The target of a symlink, else empty.
    pub link_target: String,
}

impl PathStat {
    /// The frame sent first on an `archive-get` channel: `uint32` length, then `string`
    /// name, `uint64` size, `uint32` mode, `uint64` mtime seconds (two's complement),
    /// `uint32` nanoseconds, `string` link target.
    pub fn frame(&self) -> Vec<u8> {
        let mut body = ssh_string(self.name.as_bytes());
        body.extend_from_slice(&self.size.to_be_bytes());
        body.extend_from_slice(&self.mode.to_be_bytes());
        body.extend_from_slice(&self.mtime_secs.to_be_bytes());
        body.extend_from_slice(&self.mtime_nsecs.to_be_bytes());
        body.extend_from_slice(&ssh_string(self.link_target.as_bytes()));
        ssh_string(&body)
    }

    /// Parses a frame's body (without its length).
    pub fn parse(body: &[u8]) -> Option<PathStat> {
        let mut r = Reader(body);
        let name = String::from_utf8_lossy(r.string()?).into_owned();
        let size = r.u64()?;
        let mode = r.u32()?;
        let mtime_secs = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let mtime_nsecs = r.u32()?;
        let link_target = String::from_utf8_lossy(r.string()?).into_owned();
        Some(PathStat {
            name,
            size,
            mode,
            mtime_secs,
            mtime_nsecs,
            link_target,
        })
    }

    /// Go's `os.FileMode` of this stat (what docker's stat header carries).
    pub fn go_file_mode(&self) -> u32 {
        const DIR: u32 = 1 << 31;
        const SYMLINK: u32 = 1 << 27;
        const DEVICE: u32 = 1 << 26;
        const NAMED_PIPE: u32 = 1 << 25;
        const SOCKET: u32 = 1 << 24;
        const SETUID: u32 = 1 << 23;
        const SETGID: u32 = 1 << 22;
        const CHAR_DEVICE: u32 = 1 << 21;
        const STICKY: u32 = 1 << 20;
        let mut m = self.mode & 0o777;
        m |= match self.mode & 0o170_000 {
            0o040_000 => DIR,
            0o120_000 => SYMLINK,
            0o060_000 => DEVICE,
            0o020_000 => DEVICE | CHAR_DEVICE,
            0o010_000 => NAMED_PIPE,
            0o140_000 => SOCKET,
            _ => 0,
        };
        if self.mode & 0o4000 != 0 {
            m |= SETUID;
        }
        if self.mode & 0o2000 != 0 {
            m |= SETGID;
        }
        if self.mode & 0o1000 != 0 {
            m |= STICKY;
        }
        m
    }

    /// Whether the path is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170_000 == 0o040_000
    }

    /// Whether the path is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170_000 == 0o120_000
    }
}

/// One process of the `top@tether` list, one line each: tab-separated fields, the command
/// line last (tabs and newlines in it are sent as spaces).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The user's name in the guest's `/etc/passwd`, else the number.
    pub user: String,
    /// `/proc/PID/stat`'s state letter.
    pub state: String,
    /// User + system time in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot in clock ticks.
    pub start_ticks: u64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    /// The controlling terminal's name (`pts/0`), or `?`.
    pub tty: String,
    /// The command line (argv joined by spaces), or `[comm]` when it has none.
    pub command: String,
}

/// The first line of a `top@tether` reply: what turns ticks into times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    /// Clock ticks per second.
    pub ticks_per_sec: u64,
    /// Boot time, Unix seconds (`/proc/stat`'s `btime`).
    pub boot_time: u64,
    /// Seconds since boot, in milliseconds.
    pub uptime_ms: u64,
    /// The guest's memory, bytes.
    pub mem_total: u64,
}

impl Clock {
    /// The header line.
    pub fn line(&self) -> String {
        format!(
            "clock\t{}\t{}\t{}\t{}\n",
            self.ticks_per_sec, self.boot_time, self.uptime_ms, self.mem_total
        )
    }

    /// Parses the header line.
    pub fn parse(line: &str) -> Option<Clock> {
        let mut f = line.trim_end_matches('\n').split('\t');
        if f.next()? != "clock" {
            return None;
        }
        Some(Clock {
            ticks_per_sec: f.next()?.parse().ok()?,
            boot_time: f.next()?.parse().ok()?,
            uptime_ms: f.next()?.parse().ok()?,
            mem_total: f.next()?.parse().ok()?,
        })
    }
}

fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

impl Process {
    /// The process's line.
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.pid,
            self.ppid,
            self.uid,
            clean(&self.user),
            clean(&self.state),
            self.cpu_ticks,
            self.start_ticks,
            self.rss_bytes,
            self.vsize_bytes,
            clean(&self.tty),
            clean(&self.command)
        )
    }

    /// Parses a line.
    pub fn parse(line: &str) -> Option<Process> {
        let mut f = line.trim_end_matches('\n').splitn(11, '\t');
        Some(Process {
            pid: f.next()?.parse().ok()?,
            ppid: f.next()?.parse().ok()?,
            uid: f.next()?.parse().ok()?,
            user: f.next()?.to_owned(),
            state: f.next()?.to_owned(),
            cpu_ticks: f.next()?.parse().ok()?,
            start_ticks: f.next()?.parse().ok()?,
            rss_bytes: f.next()?.parse().ok()?,
            vsize_bytes: f.next()?.parse().ok()?,
            tty: f.next()?.to_owned(),
            command: f.next()?.to_owned(),
        })
    }
}

/// A network interface's counters (`/proc/net/dev`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetCounters {
    pub name: String,
    /// rx bytes, packets, errors, dropped, then the same for tx.
    pub values: [u64; 8],
}

/// A disk's counters (`/sys/block/NAME/stat`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockCounters {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// One resource sample of the guest, sent as `key values…` lines ending with an empty line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sample {
    /// Busy CPU time of all CPUs (everything but idle and iowait), ns.
    pub cpu_busy_ns: u64,
    /// Of which in user mode, ns.
    pub cpu_user_ns: u64,
    /// Of which in kernel mode, ns.
    pub cpu_kernel_ns: u64,
    /// All CPU time of all CPUs (idle included), ns.
    pub cpu_all_ns: u64,
    /// Busy time per CPU, ns.
    pub percpu_ns: Vec<u64>,
    /// `/proc/meminfo`: MemTotal, MemFree, MemAvailable, Cached, Inactive(file),
    /// Active(file), AnonPages, in bytes.
    pub mem_total: u64,
    pub mem_free: u64,
    pub mem_available: u64,
    pub mem_cached: u64,
    pub mem_inactive_file: u64,
    pub mem_active_file: u64,
    pub mem_anon: u64,
    /// Processes (kernel threads not counted).
    pub pids: u64,
    pub nets: Vec<NetCounters>,
    pub disks: Vec<BlockCounters>,
}

impl Sample {
    /// The sample's text block.
    pub fn block(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: u64| s.push_str(&format!("{k} {v}\n"));
        kv("cpu_busy_ns", self.cpu_busy_ns);
        kv("cpu_user_ns", self.cpu_user_ns);
        kv("cpu_kernel_ns", self.cpu_kernel_ns);
        kv("cpu_all_ns", self.cpu_all_ns);
        kv("mem_total", self.mem_total);
        kv("mem_free", self.mem_free);
        kv("mem_available", self.mem_available);
        kv("mem_cached", self.mem_cached);
        kv("mem_inactive_file", self.mem_inactive_file);
        kv("mem_active_file", self.mem_active_file);
        kv("mem_anon", self.mem_anon);
        kv("pids", self.pids);
        let percpu: Vec<String> = self.percpu_ns.iter().map(u64::to_string).collect();
        s.push_str(&format!("percpu_ns {}\n", percpu.join(" ")));
        for n in &self.nets {
            let v: Vec<String> = n.values.iter().map(u64::to_string).collect();
            s.push_str(&format!(
                "net {} {}\n",
                clean(&n.name).replace(' ', "_"),
                v.join(" ")
            ));
        }
        for d in &self.disks {
            s.push_str(&format!(
                "blk {} {} {} {} {} {} {}\n",
                clean(&d.name).replace(' ', "_"),
                d.major,
                d.minor,
                d.read_bytes,
                d.write_bytes,
                d.reads,
                d.writes
            ));
        }
        s.push('\n');
        s
    }

    /// Parses a block (without its final empty line). Unknown keys are skipped, so a
    /// newer tether can add some.
    pub fn parse(block: &str) -> Option<Sample> {
        let mut s = Sample::default();
        let mut any = false;
        for line in block.lines().filter(|l| !l.is_empty()) {
            let mut f = line.split(' ');
            let key = f.next()?;
            let rest: Vec<&str> = f.collect();
            let num = |i: usize| -> Option<u64> { rest.get(i)?.parse().ok() };
            any = true;
            match key {
                "cpu_busy_ns" => s.cpu_busy_ns = num(0)?,
                "cpu_user_ns" => s.cpu_user_ns = num(0)?,
                "cpu_kernel_ns" => s.cpu_kernel_ns = num(0)?,
                "cpu_all_ns" => s.cpu_all_ns = num(0)?,
                "mem_total" => s.mem_total = num(0)?,
                "mem_free" => s.mem_free = num(0)?,
                "mem_available" => s.mem_available = num(0)?,
                "mem_cached" => s.mem_cached = num(0)?,
                "mem_inactive_file" => s.mem_inactive_file = num(0)?,
                "mem_active_file" => s.mem_active_file = num(0)?,
                "mem_anon" => s.mem_anon = num(0)?,
                "pids" => s.pids = num(0)?,
                "percpu_ns" => {
                    s.percpu_ns = rest
                        .iter()
                        .filter(|v| !v.is_empty())
                        .map(|v| v.parse().ok())
                        .collect::<Option<Vec<u64>>>()?
                }
                "net" => {
                    let mut values = [0u64; 8];
                    for (i, v) in values.iter_mut().enumerate() {
                        *v = num(i + 1)?;
                    }
                    s.nets.push(NetCounters {
                        name: (*rest.first()?).to_owned(),
                        values,
                    });
                }
                "blk" => s.disks.push(BlockCounters {
                    name: (*rest.first()?).to_owned(),
                    major: u32::try_from(num(1)?).ok()?,
                    minor: u32::try_from(num(2)?).ok()?,
                    read_bytes: num(3)?,
                    write_bytes: num(4)?,
                    reads: num(5)?,
                    writes: num(6)?,
                }),
                _ => {}
            }
        }
        any.then_some(s)
    }
}

/// The open data of `stats@tether`: the interval between samples in ms (0: one sample).
pub fn stats_open_payload(interval_ms: u32) -> Vec<u8> {
    interval_ms.to_be_bytes().to_vec()
}

/// Parses the open data of `stats@tether`.
pub fn parse_stats_open(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_open_and_stat_round_trip() {
        let open = ArchiveOpen {
            path: "/tmp/a b".into(),
            flags: ARCHIVE_COPY_OWNERS,
        };
        let p = open.payload();
        assert_eq!(&p[..4], &[0, 0, 0, 8]);
        assert_eq!(&p[p.len() - 4..], &[0, 0, 0, 2]);
        assert_eq!(ArchiveOpen::parse(&p), Some(open));
        assert_eq!(ArchiveOpen::parse(&[0, 0, 0, 9, b'x']), None);

        let st = PathStat {
            name: "link".into(),
            size: 4,
            mode: 0o120_777,
            mtime_secs: -1,
            mtime_nsecs: 5,
            link_target: "/etc".into(),
        };
        let frame = st.frame();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(PathStat::parse(&frame[4..]), Some(st.clone()));
        assert!(st.is_symlink());
        assert_eq!(st.go_file_mode(), (1 << 27) | 0o777);
        let dir = PathStat {
            mode: 0o041_755,
            ..PathStat::default()
        };
        assert_eq!(dir.go_file_mode(), (1 << 31) | (1 << 20) | 0o755);
    }

    #[test]
    fn refusals_carry_their_kind_through_a_relay() {
        let m = ErrorKind::NotFound.message("no such file: /x");
        assert_eq!(
            ErrorKind::parse(&format!("channel open failed (1): {m}")),
            (ErrorKind::NotFound, "no such file: /x".into())
        );
        assert_eq!(
            ErrorKind::parse("something else"),
            (ErrorKind::Failed, "something else".into())
        );
    }

    #[test]
    fn process_lines_and_samples_round_trip() {
        let p = Process {
            pid: 7,
            ppid: 1,
            uid: 1000,
            user: "user".into(),
            state: "S".into(),
            cpu_ticks: 12,
            start_ticks: 300,
            rss_bytes: 4096,
            vsize_bytes: 8192,
            tty: "?".into(),
            command: "sh -c\tsleep 1".into(),
        };
        let back = Process::parse(&p.line()).unwrap();
        assert_eq!(back.command, "sh -c sleep 1");
        assert_eq!(back.pid, 7);
        let c = Clock {
            ticks_per_sec: 100,
            boot_time: 1_700_000_000,
            uptime_ms: 1234,
            mem_total: 1 << 30,
        };
        assert_eq!(Clock::parse(&c.line()), Some(c));
        assert_eq!(Clock::parse(&p.line()), None);

        let s = Sample {
            cpu_busy_ns: 1,
            cpu_all_ns: 2,
            percpu_ns: vec![1, 0],
            mem_total: 100,
            pids: 3,
            nets: vec![NetCounters {
                name: "eth0".into(),
                values: [1, 2, 3, 4, 5, 6, 7, 8],
            }],
            disks: vec![BlockCounters {
                name: "vda".into(),
                major: 254,
                minor: 0,
                read_bytes: 512,
                write_bytes: 1024,
                reads: 1,
                writes: 2,
            }],
            ..Sample::default()
        };
        let block = s.block();
        assert!(block.ends_with("\n\n"));
        assert_eq!(Sample::parse(&block), Some(s));
        assert_eq!(Sample::parse(""), None);
        assert_eq!(parse_stats_open(&stats_open_payload(1000)), Some(1000));
    }
}
