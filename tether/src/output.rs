//! The output channel: every session's stdout and stderr as [`iolog`] records.
//!
//! Pumps read process output and hand encoded frames to one writer thread through a bounded
//! queue. When the host side reads slowly the writer blocks, the queue fills, the pumps stop
//! reading, the pipe fills and the producing process blocks in `write`: back-pressure, never
//! loss. The writer is a plain thread because a virtio-serial or UART write may block for as
//! long as the host is away, and that must not stall the runtime.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iolog::{Body, Record, Stream};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Records waiting for the writer: bounded so memory stays bounded (64 × 60 KiB at most).
const QUEUE: usize = 64;

/// The encoding on the output channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Our records ([`iolog`]): every session and exec, stream-tagged, sequenced, checked.
    Tether,
    /// The original VIC format, for a VIC VCH reading `output.log` itself: only the primary
    /// session's output, as the original wrote it.
    Vic { primary: String },
}

/// Handle for queueing output records.
#[derive(Debug, Clone)]
pub struct OutputSink {
    tx: mpsc::Sender<Record>,
}

/// Turns records into bytes for the channel.
#[derive(Debug)]
struct Encoder {
    format: Format,
    /// Last timestamp written: timestamps on the channel never go backwards, even when the
    /// wall clock is stepped or two pumps race.
    last_ns: u64,
    vic_lines: std::collections::HashMap<Stream, iolog::vic::LineSplitter>,
}

impl Encoder {
    fn encode(&mut self, mut record: Record) -> Vec<u8> {
        record.time_ns = record.time_ns.max(self.last_ns);
        self.last_ns = record.time_ns;
        match &self.format {
            Format::Tether => match iolog::encode(&record) {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::error!(error = %e, "output record could not be encoded");
                    Vec::new()
                }
            },
            Format::Vic { primary } => {
                if record.session != *primary {
                    return Vec::new();
                }
                let splitter = self.vic_lines.entry(record.stream).or_default();
                match record.body {
                    Body::Data(d) => splitter.push(record.time_ns, record.stream, &d),
                    Body::Eof => splitter.finish(record.stream),
                }
            }
        }
    }
}

/// The writer thread; join it at shutdown to flush.
#[derive(Debug)]
pub struct OutputWriter {
    done: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

/// Starts the writer thread over `dest` (the output port); `None` discards output (no
/// channel: the VM still runs, but nobody can see its output).
pub fn start(dest: Option<File>, format: Format) -> (OutputSink, OutputWriter) {
    let (tx, mut rx) = mpsc::channel::<Record>(QUEUE);
    let mut encoder = Encoder { format, last_ns: 0, vic_lines: Default::default() };
    let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let done_thread = done.clone();
    let spawned = std::thread::Builder::new().name("output".into()).spawn(move || {
        let mut dest = dest;
        while let Some(record) = rx.blocking_recv() {
            let frame = encoder.encode(record);
            if let Some(f) = dest.as_mut().filter(|_| !frame.is_empty()) {
                if let Err(e) = f.write_all(&frame) {
                    tracing::warn!(error = %e, "output channel write failed; output is discarded from now on");
                    dest = None;
                }
            }
        }
        let (m, cv) = &*done_thread;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the output writer thread");
        let (m, _) = &*done;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
    (OutputSink { tx }, OutputWriter { done })
}

impl OutputWriter {
    /// Waits (blocking, bounded) until every queued frame is written. All `OutputSink`
    /// clones must be dropped first, or this waits the whole timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.done;
        let guard = m.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cv.wait_timeout_while(guard, timeout, |done| !*done).unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Copies one stream of one session into records until EOF, then sends the EOF record.
/// Returns when the last holder of the pipe's write end has closed it.
pub async fn pump(sink: OutputSink, session: String, stream: Stream, fd: OwnedFd) {
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(session, error = %e, "cannot read session output");
            return;
        }
    };
    let mut seq = 0u64;
    let mut buf = vec![0u8; iolog::MAX_PAYLOAD];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(session, error = %e, "session output read failed");
                break;
            }
        };
        let data = buf.get(..n).unwrap_or_default().to_vec();
        if !send(&sink, Record { session: session.clone(), stream, seq, time_ns: now_ns(), body: Body::Data(data) }).await {
            // The writer is gone (shutdown): keep draining so the process never blocks.
            continue;
        }
        seq += 1;
    }
    send(&sink, Record { session, stream, seq, time_ns: now_ns(), body: Body::Eof }).await;
}

async fn send(sink: &OutputSink, record: Record) -> bool {
    sink.tx.send(record).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pump_sends_every_byte_then_eof() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (port_r, port_w) = nix::unistd::pipe().unwrap();
        let (sink, writer) = start(Some(File::from(port_w)), Format::Tether);
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let producer = std::thread::spawn(move || {
            let mut f = File::from(w);
            for i in 0..2000 {
                writeln!(f, "line {i}").unwrap();
            }
        });
        rt.block_on(pump(sink.clone(), "s1".into(), Stream::Stderr, r));
        producer.join().unwrap();
        drop(sink);
        assert!(writer.flush(Duration::from_secs(5)));
        let mut bytes = Vec::new();
        File::from(port_r).read_to_end(&mut bytes).unwrap();
        let mut dec = iolog::Decoder::new();
        dec.push(&bytes);
        let mut data = Vec::new();
        let mut last = None;
        let mut expect_seq = 0;
        while let Some(iolog::Item::Record(rec)) = dec.next_item() {
            assert_eq!((rec.session.as_str(), rec.stream, rec.seq), ("s1", Stream::Stderr, expect_seq));
            expect_seq += 1;
            match rec.body {
                Body::Data(d) => data.extend(d),
                Body::Eof => last = Some(()),
            }
        }
        let expected: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(data).unwrap(), expected);
        assert!(last.is_some(), "no EOF record");
    }
}

#[cfg(test)]
mod encoder_tests {
    use super::*;

    fn rec(session: &str, stream: Stream, t: u64, body: Body) -> Record {
        Record { session: session.into(), stream, seq: 0, time_ns: t, body }
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut e = Encoder { format: Format::Tether, last_ns: 0, vic_lines: Default::default() };
        let mut dec = iolog::Decoder::new();
        dec.push(&e.encode(rec("a", Stream::Stdout, 200, Body::Data(b"x".to_vec()))));
        dec.push(&e.encode(rec("a", Stream::Stderr, 100, Body::Data(b"y".to_vec()))));
        let mut times = Vec::new();
        while let Some(iolog::Item::Record(r)) = dec.next_item() {
            times.push(r.time_ns);
        }
        assert_eq!(times, vec![200, 200]);
    }

    #[test]
    fn vic_format_keeps_only_the_primary_and_splits_lines_per_stream() {
        let mut e = Encoder { format: Format::Vic { primary: "p".into() }, last_ns: 0, vic_lines: Default::default() };
        let mut out = Vec::new();
        out.extend(e.encode(rec("p", Stream::Stdout, 1, Body::Data(b"par".to_vec()))));
        out.extend(e.encode(rec("p", Stream::Stderr, 2, Body::Data(b"err\n".to_vec()))));
        out.extend(e.encode(rec("exec", Stream::Stdout, 3, Body::Data(b"hidden\n".to_vec()))));
        out.extend(e.encode(rec("p", Stream::Stdout, 4, Body::Data(b"tial\n".to_vec()))));
        out.extend(e.encode(rec("p", Stream::Stdout, 5, Body::Eof)));
        let (entries, skipped) = iolog::vic::decode_all(&out);
        assert_eq!(skipped, 0);
        let got: Vec<(Stream, &[u8])> = entries.iter().map(|x| (x.stream, x.payload.as_slice())).collect();
        assert_eq!(got, vec![(Stream::Stderr, &b"err\n"[..]), (Stream::Stdout, &b"partial\n"[..])]);
    }
}
