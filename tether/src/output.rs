//! The output channel: every session's stdout and stderr as [`iolog`] records.
//!
//! Pumps read process output and hand encoded frames to one writer thread through a bounded
//! queue. When the host side reads slowly the writer blocks, the queue fills, the pumps stop
//! reading, the pipe fills and the producing process blocks in `write`: back-pressure, never
//! loss. The writer is a plain thread because a virtio-serial or UART write may block for as
//! long as the host is away, and that must not stall the runtime.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iolog::{Body, Record, Stream};
use tokio::sync::mpsc;

use crate::stdio::{AsyncStream, Fanout};

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
    tx: mpsc::Sender<Msg>,
}

#[derive(Debug)]
enum Msg {
    Record(Record),
    /// Answered once everything queued before it is written.
    Flush(std::sync::mpsc::Sender<()>),
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

/// Starts the writer thread over `dest` (the output port); `None` discards output (no
/// channel: the VM still runs, but nobody can see its output).
pub fn start(dest: Option<File>, format: Format) -> OutputSink {
    let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
    let mut encoder = Encoder {
        format,
        last_ns: 0,
        vic_lines: Default::default(),
    };
    let spawned = std::thread::Builder::new().name("output".into()).spawn(move || {
        let mut dest = dest;
        while let Some(msg) = rx.blocking_recv() {
            let record = match msg {
                Msg::Record(r) => r,
                Msg::Flush(done) => {
                    if let Some(f) = dest.as_mut() {
                        let _ = f.flush();
                    }
                    let _ = done.send(());
                    continue;
                }
            };
            let frame = encoder.encode(record);
            if let Some(f) = dest.as_mut().filter(|_| !frame.is_empty()) {
                if let Err(e) = f.write_all(&frame) {
                    tracing::warn!(error = %e, "output channel write failed; output is discarded from now on");
                    dest = None;
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the output writer thread");
    }
    OutputSink { tx }
}

impl OutputSink {
    /// Waits (blocking, bounded) until everything queued so far is written to the channel.
    /// Blocking on purpose: it is the last thing before power-off and must also work from
    /// outside the runtime.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        done_rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Copies one stream of one session into records and to the attached clients until EOF,
/// then sends the EOF record and ends the stream for the clients. Returns when the last
/// holder of the stream's write end has closed it.
pub async fn pump(
    sink: OutputSink,
    session: String,
    stream: Stream,
    src: AsyncStream,
    fanout: Arc<Fanout>,
) {
    let mut seq = 0u64;
    let mut buf = vec![0u8; iolog::MAX_PAYLOAD];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(session, error = %e, "session output read failed");
                break;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        // The boot's last stamp: the entrypoint's first output in the tether's hands (taken
        // before the start-up can end on it, so the `exec` stamp's write-back has it). Only
        // a pump's first read asks: the stamp is taken once, and this is the output path.
        if seq == 0 {
            crate::clock::stamp("output");
        }
        fanout.publish(data).await;
        let record = Record {
            session: session.clone(),
            stream,
            seq,
            time_ns: now_ns(),
            body: Body::Data(data.to_vec()),
        };
        // A closed sink (shutdown) still lets us drain, so the process never blocks on us.
        if send(&sink, record).await {
            seq += 1;
        }
    }
    fanout.close();
    send(
        &sink,
        Record {
            session,
            stream,
            seq,
            time_ns: now_ns(),
            body: Body::Eof,
        },
    )
    .await;
}

async fn send(sink: &OutputSink, record: Record) -> bool {
    sink.tx.send(Msg::Record(record)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pump_sends_every_byte_then_eof() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (port_r, port_w) = nix::unistd::pipe().unwrap();
        let sink = start(Some(File::from(port_w)), Format::Tether);
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let producer = std::thread::spawn(move || {
            let mut f = File::from(w);
            for i in 0..2000 {
                writeln!(f, "line {i}").unwrap();
            }
        });
        let fanout = Arc::new(Fanout::default());
        let mut attached = fanout.subscribe();
        let seen = rt.block_on(async {
            let client = tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(c) = attached.recv().await {
                    seen.extend(c);
                }
                seen
            });
            let src = AsyncStream::new(r).unwrap();
            pump(sink.clone(), "s1".into(), Stream::Stderr, src, fanout).await;
            client.await.unwrap()
        });
        producer.join().unwrap();
        assert!(sink.flush(Duration::from_secs(5)));
        drop(sink);
        let mut bytes = Vec::new();
        File::from(port_r).read_to_end(&mut bytes).unwrap();
        let mut dec = iolog::Decoder::new();
        dec.push(&bytes);
        let mut data = Vec::new();
        let mut last = None;
        let mut expect_seq = 0;
        while let Some(iolog::Item::Record(rec)) = dec.next_item() {
            assert_eq!(
                (rec.session.as_str(), rec.stream, rec.seq),
                ("s1", Stream::Stderr, expect_seq)
            );
            expect_seq += 1;
            match rec.body {
                Body::Data(d) => data.extend(d),
                Body::Eof => last = Some(()),
            }
        }
        let expected: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(data).unwrap(), expected);
        assert_eq!(
            String::from_utf8(seen).unwrap(),
            expected,
            "the attached client missed output"
        );
        assert!(last.is_some(), "no EOF record");
    }
}

#[cfg(test)]
mod encoder_tests {
    use super::*;

    fn rec(session: &str, stream: Stream, t: u64, body: Body) -> Record {
        Record {
            session: session.into(),
            stream,
            seq: 0,
            time_ns: t,
            body,
        }
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut e = Encoder {
            format: Format::Tether,
            last_ns: 0,
            vic_lines: Default::default(),
        };
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
        let mut e = Encoder {
            format: Format::Vic {
                primary: "p".into(),
            },
            last_ns: 0,
            vic_lines: Default::default(),
        };
        let mut out = Vec::new();
        out.extend(e.encode(rec("p", Stream::Stdout, 1, Body::Data(b"par".to_vec()))));
        out.extend(e.encode(rec("p", Stream::Stderr, 2, Body::Data(b"err\n".to_vec()))));
        out.extend(e.encode(rec(
            "exec",
            Stream::Stdout,
            3,
            Body::Data(b"hidden\n".to_vec()),
        )));
        out.extend(e.encode(rec("p", Stream::Stdout, 4, Body::Data(b"tial\n".to_vec()))));
        out.extend(e.encode(rec("p", Stream::Stdout, 5, Body::Eof)));
        let (entries, skipped) = iolog::vic::decode_all(&out);
        assert_eq!(skipped, 0);
        let got: Vec<(Stream, &[u8])> = entries
            .iter()
            .map(|x| (x.stream, x.payload.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Stream::Stderr, &b"err\n"[..]),
                (Stream::Stdout, &b"partial\n"[..])
            ]
        );
    }
}
