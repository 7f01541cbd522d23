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

/// Frames waiting for the writer: bounded so memory stays bounded (64 × 60 KiB at most).
const QUEUE: usize = 64;

/// Handle for queueing output records.
#[derive(Debug, Clone)]
pub struct OutputSink {
    tx: mpsc::Sender<Vec<u8>>,
}

/// The writer thread; join it at shutdown to flush.
#[derive(Debug)]
pub struct OutputWriter {
    done: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

/// Starts the writer thread over `dest` (the output port); `None` discards output (no
/// channel: the VM still runs, but nobody can see its output).
pub fn start(dest: Option<File>) -> (OutputSink, OutputWriter) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let done_thread = done.clone();
    let spawned = std::thread::Builder::new().name("output".into()).spawn(move || {
        let mut dest = dest;
        while let Some(frame) = rx.blocking_recv() {
            if let Some(f) = dest.as_mut() {
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
    match iolog::encode(&record) {
        Ok(frame) => sink.tx.send(frame).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "output record could not be encoded");
            false
        }
    }
}
