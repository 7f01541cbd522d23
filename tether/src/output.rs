//! The output channel: every session's stdout and stderr as [`iolog`] records.
//!
//! One writer thread writes the records, which reach it through a bounded queue: when the
//! host side reads slowly the writer blocks, the queue fills, the pumps stop reading, the pipe
//! fills and the producing process blocks in `write`: back-pressure, never loss. The writer is
//! a plain thread because a virtio-serial or UART write may block for as long as the host is
//! away, and that must not stall the runtime.
//!
//! The thread starts when the entrypoint's start-up is over ([`OutputSink::start_writer`]),
//! as the tether's other threads do: one started before the entrypoint's first output (its
//! first-time code under TCG, the switches to it and back) stood between the launch and that
//! output reaching the host. Until then the pumps write each record to the channel themselves,
//! without blocking; a write the channel does not take at once hands it to the thread
//! sooner.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iolog::{Body, Record, Stream};
use tokio::sync::mpsc;

use crate::stdio::{set_nonblocking, AsyncStream, Fanout};

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

/// Handle for writing output records.
#[derive(Debug, Clone)]
pub struct OutputSink {
    tx: mpsc::Sender<Msg>,
    mode: Arc<Mutex<Mode>>,
}

#[derive(Debug)]
enum Msg {
    Record(Record),
    /// Answered once everything queued before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Who writes to the channel.
#[derive(Debug)]
enum Mode {
    /// The pumps, while every write goes through at once; the writer thread's parts wait.
    Direct {
        dest: Option<File>,
        encoder: Encoder,
        rx: mpsc::Receiver<Msg>,
    },
    /// The writer thread, from the end of the start-up (or the first write that would have
    /// blocked) on.
    Thread,
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

/// Output over `dest` (the output port); `None` discards output (no channel: the VM still
/// runs, but nobody can see its output). The pumps write the records themselves until
/// [`OutputSink::start_writer`], or a write that would block, hands the channel to the writer
/// thread (see the module's comment).
pub fn start(dest: Option<File>, format: Format) -> OutputSink {
    let (tx, rx) = mpsc::channel::<Msg>(QUEUE);
    let encoder = Encoder {
        format,
        last_ns: 0,
        vic_lines: Default::default(),
    };
    let direct = dest
        .as_ref()
        .is_none_or(|f| set_nonblocking(f, true).is_ok());
    let sink = OutputSink {
        tx,
        mode: Arc::new(Mutex::new(Mode::Direct { dest, encoder, rx })),
    };
    if !direct {
        tracing::debug!("output channel: no non-blocking writes; a thread writes from the start");
        hand_off(&mut lock(&sink.mode), Vec::new());
    }
    sink
}

fn lock(m: &Mutex<Mode>) -> MutexGuard<'_, Mode> {
    // A poisoned lock only means a pump panicked mid-write; the channel is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives the channel to a new writer thread, which first writes `rest` (what is left of a
/// frame the channel took only part of), then what the queue brings. Nothing is queued
/// before this: the pumps send to the queue only once the mode is `Thread`.
fn hand_off(mode: &mut Mode, rest: Vec<u8>) {
    let Mode::Direct { dest, encoder, rx } = std::mem::replace(mode, Mode::Thread) else {
        return;
    };
    let dest = dest.filter(|f| match set_nonblocking(f, false) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "output channel cannot block; output is discarded from now on");
            false
        }
    });
    let spawned = std::thread::Builder::new()
        .name("output".into())
        .spawn(move || write_forever(dest, encoder, rx, &rest));
    if let Err(e) = spawned {
        // The queue's end went with the thread: the pumps' sends fail and they go on
        // draining the processes' output, so no process blocks on a channel nobody writes.
        tracing::error!(error = %e, "cannot start the output writer thread; output is discarded from now on");
    }
}

/// The writer thread: `rest` first, then every record and flush the queue brings.
fn write_forever(
    mut dest: Option<File>,
    mut encoder: Encoder,
    mut rx: mpsc::Receiver<Msg>,
    rest: &[u8],
) {
    let write = |dest: &mut Option<File>, bytes: &[u8]| {
        if let Some(f) = dest.as_mut().filter(|_| !bytes.is_empty()) {
            if let Err(e) = f.write_all(bytes) {
                tracing::warn!(error = %e, "output channel write failed; output is discarded from now on");
                *dest = None;
            }
        }
    };
    write(&mut dest, rest);
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Record(r) => {
                let frame = encoder.encode(r);
                write(&mut dest, &frame);
            }
            Msg::Flush(done) => {
                if let Some(f) = dest.as_mut() {
                    let _ = f.flush();
                }
                let _ = done.send(());
            }
        }
    }
}

impl OutputSink {
    /// Gives the channel to the writer thread now, if the pumps still write it: once the
    /// entrypoint has started, as the other threads are, so that a steady stream of output
    /// takes the same path whether or not the host keeps up.
    pub fn start_writer(&self) {
        hand_off(&mut lock(&self.mode), Vec::new());
    }

    /// Waits (blocking, bounded) until everything queued so far is written to the channel.
    /// Blocking on purpose: it is the last thing before power-off and must also work from
    /// outside the runtime.
    pub fn flush(&self, timeout: Duration) -> bool {
        if matches!(*lock(&self.mode), Mode::Direct { .. }) {
            // Every record was written when it was sent.
            return true;
        }
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
    match sink.write_direct(record) {
        None => true,
        Some(record) => sink.tx.send(Msg::Record(record)).await.is_ok(),
    }
}

impl OutputSink {
    /// Writes `record` if the pumps still write the channel themselves, and hands the
    /// channel to the writer thread if it took less than the whole frame. Returns the record
    /// when it is the thread's to write.
    fn write_direct(&self, record: Record) -> Option<Record> {
        let mut mode = lock(&self.mode);
        let Mode::Direct { dest, encoder, .. } = &mut *mode else {
            return Some(record);
        };
        let frame = encoder.encode(record);
        let f = dest.as_mut()?;
        let mut written = 0;
        while let Some(left) = frame.get(written..).filter(|l| !l.is_empty()) {
            match f.write(left) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "output channel write failed; output is discarded from now on");
                    *dest = None;
                    return None;
                }
            }
        }
        if written < frame.len() {
            let rest = frame.get(written..).unwrap_or_default().to_vec();
            hand_off(&mut mode, rest);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A sink whose channel is a pipe, and the pipe's reading end.
    fn sink_on_a_pipe() -> (OutputSink, File) {
        let (port_r, port_w) = nix::unistd::pipe().unwrap();
        (
            start(Some(File::from(port_w)), Format::Tether),
            File::from(port_r),
        )
    }

    /// Every record the channel carried, to its end; panics on a damaged one.
    fn records(mut port: File) -> Vec<Record> {
        let mut bytes = Vec::new();
        port.read_to_end(&mut bytes).unwrap();
        let mut dec = iolog::Decoder::new();
        dec.push(&bytes);
        let mut out = Vec::new();
        while let Some(item) = dec.next_item() {
            let iolog::Item::Record(r) = item else {
                panic!("damaged output: {item:?}");
            };
            out.push(r);
        }
        out
    }

    #[test]
    fn pump_sends_every_byte_then_eof() {
        let rt = runtime();
        let (sink, port) = sink_on_a_pipe();
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
        let mut data = Vec::new();
        let mut last = None;
        for (expect_seq, rec) in records(port).into_iter().enumerate() {
            assert_eq!(
                (rec.session.as_str(), rec.stream, rec.seq),
                ("s1", Stream::Stderr, expect_seq as u64)
            );
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

    fn rec(seq: u64, data: Vec<u8>) -> Record {
        Record {
            session: "s".into(),
            stream: Stream::Stdout,
            seq,
            time_ns: seq,
            body: Body::Data(data),
        }
    }

    #[test]
    fn pumps_write_until_the_channel_would_block_then_a_thread_writes() {
        let rt = runtime();
        let (sink, port) = sink_on_a_pipe();
        let body = |i: u64| vec![b'a' + (i % 26) as u8; if i == 0 { 5 } else { 10_000 }];
        assert!(rt.block_on(send(&sink, rec(0, body(0)))));
        assert!(
            matches!(*lock(&sink.mode), Mode::Direct { .. }),
            "a thread for one small record"
        );
        assert!(sink.flush(Duration::from_secs(1)));
        // Nobody reads for a while: the pipe (64 KiB) fills, a frame goes in part, and the
        // thread writes the rest once the reader starts.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            records(port)
        });
        rt.block_on(async {
            for i in 1..40 {
                assert!(send(&sink, rec(i, body(i))).await);
            }
        });
        assert!(matches!(*lock(&sink.mode), Mode::Thread));
        assert!(sink.flush(Duration::from_secs(5)));
        drop(sink);
        let got = reader.join().unwrap();
        for r in &got {
            assert_eq!(r.body, Body::Data(body(r.seq)));
        }
        let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn after_the_start_up_the_thread_writes_and_nothing_is_lost() {
        let rt = runtime();
        let (sink, port) = sink_on_a_pipe();
        let data = |seq: u64| format!("record {seq}").into_bytes();
        assert!(rt.block_on(send(&sink, rec(0, data(0)))));
        sink.start_writer();
        assert!(matches!(*lock(&sink.mode), Mode::Thread));
        // A second call changes nothing.
        sink.start_writer();
        assert!(rt.block_on(send(&sink, rec(1, data(1)))));
        assert!(sink.flush(Duration::from_secs(5)));
        drop(sink);
        let got: Vec<(u64, Body)> = records(port).into_iter().map(|r| (r.seq, r.body)).collect();
        assert_eq!(got, [(0, Body::Data(data(0))), (1, Body::Data(data(1)))]);
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
