//! Reading a VM's output log (`output.log`: the output channel as received) the way
//! `docker logs` shows it: lines, per stream, optionally with timestamps, filtered, followed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use iolog::{Body, Item, Stream};

/// One line of output (the last line of a stream may lack its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    /// When the line's first byte was read from the process (UTC ns).
    pub time_ns: u64,
    pub bytes: Vec<u8>,
}

/// Incremental reader of an output log file.
#[derive(Debug)]
pub struct LogReader {
    file: File,
    decoder: iolog::Decoder,
    /// Set for a VM writing the original VIC format (`--log-format vic`).
    vic: Option<iolog::vic::Decoder>,
    vic_seq: HashMap<Stream, u64>,
    session: String,
    partial: HashMap<Stream, (u64, Vec<u8>)>,
    next_seq: HashMap<(String, Stream), u64>,
    /// Damaged stretches skipped.
    pub damaged: u64,
    /// Records known lost (gaps in sequence numbers, of any session).
    pub lost: u64,
    /// Streams of the session that reached EOF.
    pub ended: Vec<Stream>,
    /// Records' data as it came (chunks), not split into lines.
    raw: bool,
}

impl LogReader {
    /// Opens the log of a VM, keeping the lines of `session` (the container's primary session
    /// is the container ID).
    pub fn open(path: &Path, session: &str) -> io::Result<LogReader> {
        Ok(LogReader {
            file: File::open(path)?,
            decoder: iolog::Decoder::new(),
            vic: None,
            vic_seq: HashMap::new(),
            session: session.to_owned(),
            partial: HashMap::new(),
            next_seq: HashMap::new(),
            damaged: 0,
            lost: 0,
            ended: Vec::new(),
            raw: false,
        })
    }

    /// Returns each record's data as it came (an attached client's stream), not lines.
    pub fn raw(mut self) -> LogReader {
        self.raw = true;
        self
    }

    /// Starts reading at byte `offset` (what came before is skipped).
    pub fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(offset)).map(|_| ())
    }

    /// Reads the original VIC format instead (it carries only the primary's output).
    pub fn vic(mut self) -> LogReader {
        self.vic = Some(iolog::vic::Decoder::default());
        self
    }

    /// Reads what was appended since the last call; returns the lines it completes.
    pub fn poll(&mut self) -> io::Result<Vec<LogLine>> {
        self.poll_upto(u64::MAX)
    }

    /// [`poll`](Self::poll), reading no further than byte `limit` of the file: what the log
    /// held at some earlier moment.
    pub fn poll_upto(&mut self, limit: u64) -> io::Result<Vec<LogLine>> {
        use std::io::Seek;
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = self.file.stream_position()?;
        loop {
            let room = usize::try_from(limit.saturating_sub(at)).unwrap_or(usize::MAX);
            let want = buf.len().min(room);
            if want == 0 {
                break;
            }
            let n = self.file.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            at += n as u64;
            if let Some(vic) = self.vic.as_mut() {
                let skipped_before = vic.skipped;
                let entries = vic.push(&buf[..n]);
                if vic.skipped > skipped_before {
                    self.damaged += 1;
                }
                for e in entries {
                    let seq = self.vic_seq.entry(e.stream).or_insert(0);
                    let record = iolog::Record {
                        session: self.session.clone(),
                        stream: e.stream,
                        seq: *seq,
                        time_ns: e.time_ns,
                        body: Body::Data(e.payload),
                    };
                    *seq += 1;
                    self.take(Item::Record(record), &mut lines);
                }
                continue;
            }
            self.decoder.push(&buf[..n]);
            while let Some(item) = self.decoder.next_item() {
                self.take(item, &mut lines);
            }
        }
        Ok(lines)
    }

    /// Ends reading: partial lines are returned, a truncated last record counts as damage.
    pub fn finish(&mut self) -> Vec<LogLine> {
        if self.decoder.finish().is_some() {
            self.damaged += 1;
        }
        let mut rest: Vec<LogLine> = self
            .partial
            .drain()
            .filter(|(_, (_, bytes))| !bytes.is_empty())
            .map(|(stream, (time_ns, bytes))| LogLine {
                stream,
                time_ns,
                bytes,
            })
            .collect();
        rest.sort_by_key(|l| l.time_ns);
        rest
    }

    fn take(&mut self, item: Item, lines: &mut Vec<LogLine>) {
        let record = match item {
            Item::Damage(_) => {
                self.damaged += 1;
                return;
            }
            Item::Record(r) => r,
        };
        let expected = self
            .next_seq
            .entry((record.session.clone(), record.stream))
            .or_insert(0);
        if record.seq > *expected {
            self.lost += record.seq - *expected;
        }
        *expected = record.seq + 1;
        if record.session != self.session {
            return;
        }
        match record.body {
            Body::Eof => {
                if let Some((time_ns, bytes)) = self
                    .partial
                    .remove(&record.stream)
                    .filter(|(_, b)| !b.is_empty())
                {
                    lines.push(LogLine {
                        stream: record.stream,
                        time_ns,
                        bytes,
                    });
                }
                self.ended.push(record.stream);
            }
            Body::Data(data) if self.raw => lines.push(LogLine {
                stream: record.stream,
                time_ns: record.time_ns,
                bytes: data,
            }),
            Body::Data(data) => {
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let entry = self
                        .partial
                        .entry(record.stream)
                        .or_insert_with(|| (record.time_ns, Vec::new()));
                    if entry.1.is_empty() {
                        entry.0 = record.time_ns;
                    }
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(nl) => {
                            entry.1.extend_from_slice(&rest[..=nl]);
                            rest = &rest[nl + 1..];
                            let (time_ns, bytes) = std::mem::take(entry);
                            lines.push(LogLine {
                                stream: record.stream,
                                time_ns,
                                bytes,
                            });
                        }
                        None => {
                            entry.1.extend_from_slice(rest);
                            rest = &[];
                        }
                    }
                }
            }
        }
    }
}

/// What [`receive`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Received {
    /// Damaged stretches on the channel.
    pub damaged: u64,
    /// When the first byte arrived.
    pub first: Option<tokio::time::Instant>,
}

/// How often [`follow`] looks for more output when it has read everything.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// The keeper's view of the output channel: QEMU appends what the VM sends to
/// `output.log` itself; this follows the file from byte `start` and passes the primary
/// session's records to `items` as they arrive (decoded from our format or the
/// original's), until `done` says QEMU is gone and the rest has been read.
pub async fn follow(
    log_path: &Path,
    start: u64,
    mut done: tokio::sync::watch::Receiver<bool>,
    primary: &str,
    vic_format: bool,
    items: Option<&tokio::sync::mpsc::UnboundedSender<Item>>,
) -> Received {
    use std::io::Seek;
    let mut got = Received::default();
    let mut vic = iolog::vic::Decoder::default();
    let mut dec = iolog::Decoder::new();
    let mut file: Option<File> = None;
    let mut buf = vec![0u8; 256 * 1024];
    let send = |item: Item| {
        if let Some(tx) = items {
            let _ = tx.send(item);
        }
    };
    let mut closed = false;
    loop {
        // Read after looking at `done`: what QEMU wrote before it ended is all there.
        let finished = closed || *done.borrow();
        if file.is_none() {
            // QEMU creates the file when it starts.
            file = File::open(log_path)
                .and_then(|mut f| f.seek(io::SeekFrom::Start(start)).map(|_| f))
                .ok();
        }
        let mut progressed = false;
        while let Some(f) = file.as_mut() {
            let n = match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            progressed = true;
            let chunk = &buf[..n];
            got.first.get_or_insert_with(tokio::time::Instant::now);
            if vic_format {
                // The original's format carries only the primary's output.
                for e in vic.push(chunk) {
                    send(Item::Record(iolog::Record {
                        session: primary.to_owned(),
                        stream: e.stream,
                        seq: 0,
                        time_ns: e.time_ns,
                        body: Body::Data(e.payload),
                    }));
                }
                continue;
            }
            dec.push(chunk);
            while let Some(item) = dec.next_item() {
                match &item {
                    Item::Damage(_) => got.damaged += 1,
                    Item::Record(r) if r.session != primary => continue,
                    Item::Record(_) => {}
                }
                send(item);
            }
        }
        if finished {
            break;
        }
        if !progressed {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                changed = done.changed() => {
                    // Nobody left to say QEMU ended: one last read, then stop.
                    closed = changed.is_err();
                }
            }
        }
    }
    if dec.finish().is_some() {
        got.damaged += 1;
    }
    got
}

/// Parses `--since`: an RFC 3339 time, Unix seconds (fractions allowed), or a duration ago
/// (`10s`, `5m`, `2h`).
pub fn parse_since(s: &str, now_ns: u64) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1e9) as u64);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ns.saturating_sub(d.as_nanos() as u64));
    }
    // With a zone offset (`+01:00`) or `Z`.
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        // Before 1970 is 0; past what u64 ns hold (year 2554) is "never".
        let ns = t.unix_timestamp_nanos().max(0);
        return Ok(u64::try_from(ns).unwrap_or(u64::MAX));
    }
    // Without one (taken as UTC), or a date alone.
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0));
    }
    Err(format!(
        "{s:?}: give an RFC 3339 time (with or without an offset), Unix seconds or a duration like 10m"
    ))
}

/// Formats a timestamp like docker's `-t`.
pub fn format_time(time_ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(time_ns);
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iolog::Record;
    use std::io::Write;

    fn frame(session: &str, stream: Stream, seq: u64, t: u64, body: Body) -> Vec<u8> {
        iolog::encode(&Record {
            session: session.into(),
            stream,
            seq,
            time_ns: t,
            body,
        })
        .unwrap()
    }

    /// A reader stops where asked, even in the middle of a record, and the next poll takes
    /// up from there: `logs -f` reads the past up to where the log ended at the request.
    #[test]
    fn poll_upto_stops_at_the_limit_and_poll_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let past = frame("c", Stream::Stdout, 0, 1, Body::Data(b"past\n".to_vec()));
        let new = frame("c", Stream::Stdout, 1, 2, Body::Data(b"new\n".to_vec()));
        let mut all = past.clone();
        all.extend(&new);
        std::fs::write(&path, &all).unwrap();
        let mut r = LogReader::open(&path, "c").unwrap();
        // Up to the middle of the second record: only the first one's line.
        let first = r.poll_upto(past.len() as u64 + 3).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].bytes, b"past\n");
        let rest = r.poll().unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].bytes, b"new\n");
        assert_eq!(r.damaged, 0);
        assert!(r.poll_upto(0).unwrap().is_empty());
    }

    /// The keeper follows output.log as QEMU appends to it: records split across writes,
    /// from the offset where this boot began, to the end once QEMU is gone.
    #[tokio::test]
    async fn follow_reads_what_qemu_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let earlier = frame(
            "c",
            Stream::Stdout,
            0,
            1,
            Body::Data(b"old boot\n".to_vec()),
        );
        std::fs::write(&path, &earlier).unwrap();
        let start = earlier.len() as u64;
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let p = path.clone();
        let follower =
            tokio::spawn(async move { follow(&p, start, done, "c", false, Some(&tx)).await });
        let mut bytes = Vec::new();
        for i in 0..50u64 {
            bytes.extend(frame(
                "c",
                Stream::Stdout,
                i,
                10 + i,
                Body::Data(format!("{i}\n").into_bytes()),
            ));
            bytes.extend(frame(
                "other",
                Stream::Stdout,
                i,
                10 + i,
                Body::Data(b"x".to_vec()),
            ));
        }
        let mut f = File::options().append(true).open(&path).unwrap();
        for piece in bytes.chunks(37) {
            f.write_all(piece).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        done_tx.send(true).unwrap();
        let got = follower.await.unwrap();
        assert_eq!(got.damaged, 0);
        let mut seen = Vec::new();
        while let Ok(Item::Record(r)) = rx.try_recv() {
            assert_eq!(r.session, "c");
            if let Body::Data(d) = r.body {
                seen.push(String::from_utf8(d).unwrap());
            }
        }
        let want: Vec<String> = (0..50).map(|i| format!("{i}\n")).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn lines_streams_eof_gaps_and_damage() {
        let dir = std::env::temp_dir().join(format!("vch-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("output.log");
        let mut f = File::create(&path).unwrap();
        f.write_all(&frame(
            "c",
            Stream::Stdout,
            0,
            10,
            Body::Data(b"one\ntw".to_vec()),
        ))
        .unwrap();
        f.write_all(&frame(
            "c",
            Stream::Stderr,
            0,
            11,
            Body::Data(b"err\n".to_vec()),
        ))
        .unwrap();
        f.write_all(&frame(
            "x",
            Stream::Stdout,
            0,
            12,
            Body::Data(b"other session\n".to_vec()),
        ))
        .unwrap();
        let mut r = LogReader::open(&path, "c").unwrap();
        let got = r.poll().unwrap();
        assert_eq!(
            got.iter().map(|l| l.bytes.as_slice()).collect::<Vec<_>>(),
            vec![&b"one\n"[..], b"err\n"]
        );
        // Followed appends: the rest of the partial line, a damaged record, a gap, EOF.
        f.write_all(&frame(
            "c",
            Stream::Stdout,
            1,
            13,
            Body::Data(b"o\n".to_vec()),
        ))
        .unwrap();
        let mut bad = frame("c", Stream::Stdout, 2, 14, Body::Data(b"lost\n".to_vec()));
        bad[14] ^= 0xff;
        f.write_all(&bad).unwrap();
        f.write_all(&frame(
            "c",
            Stream::Stdout,
            3,
            15,
            Body::Data(b"tail".to_vec()),
        ))
        .unwrap();
        f.write_all(&frame("c", Stream::Stdout, 4, 16, Body::Eof))
            .unwrap();
        let got = r.poll().unwrap();
        assert_eq!(
            got,
            vec![
                LogLine {
                    stream: Stream::Stdout,
                    time_ns: 10,
                    bytes: b"two\n".to_vec()
                },
                LogLine {
                    stream: Stream::Stdout,
                    time_ns: 15,
                    bytes: b"tail".to_vec()
                },
            ]
        );
        assert_eq!((r.damaged, r.lost), (1, 1));
        assert_eq!(r.ended, vec![Stream::Stdout]);
        assert!(r.finish().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn since_forms() {
        assert_eq!(
            parse_since("1700000000.5", 0).unwrap(),
            1_700_000_000_500_000_000
        );
        assert_eq!(parse_since("10s", 20_000_000_000).unwrap(), 10_000_000_000);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", 0).unwrap(),
            1_700_000_000_000_000_000
        );
        assert!(parse_since("yesterday-ish", 0).is_err());
        // Offsets move the instant: 23:13:20+01:00 is 22:13:20Z.
        assert_eq!(
            parse_since("2023-11-14T23:13:20+01:00", 0).unwrap(),
            1_700_000_000_000_000_000
        );
        assert_eq!(
            parse_since("2023-11-14T22:13:20.5Z", 0).unwrap(),
            1_700_000_000_500_000_000
        );
        assert_eq!(parse_since("2999-01-01T00:00:00Z", 0).unwrap(), u64::MAX);
        assert_eq!(
            format_time(1_700_000_000_000_000_001),
            "2023-11-14T22:13:20.000000001Z"
        );
    }
}
