//! Asynchronous I/O on the tether's side of a process's standard streams (pipe ends and pty
//! masters), fan-out of output to attached clients, and fan-in of their input.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Turns `O_NONBLOCK` on or off for the file description behind `fd`.
pub fn set_nonblocking(fd: impl std::os::fd::AsFd, on: bool) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(&fd, FcntlArg::F_SETFL(flags)).map(|_| ())
}

/// A nonblocking descriptor driven by the runtime. Clones share one registration, so a pty
/// master can be read by the output pump and written by the stdin writer (the reactor
/// refuses a second registration of the same descriptor).
#[derive(Debug, Clone)]
pub struct AsyncStream {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl AsyncStream {
    /// Wraps a descriptor (made nonblocking here).
    pub fn new(fd: OwnedFd) -> std::io::Result<AsyncStream> {
        set_nonblocking(&fd, true)?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor is valid, stays open and
        // refers to the same file description until the AsyncFd is dropped.
        let registered = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(AsyncStream {
            fd: Arc::new(registered),
        })
    }

    /// The descriptor, for ioctls.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Reads into `buf`; 0 at end of stream. A pty master reports EIO once the last slave
    /// descriptor is closed: that is its end of stream.
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

impl tokio::io::AsyncRead for AsyncStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), unfilled).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for AsyncStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Bytes of output an attached client may fall behind before the stream waits for it. A
/// client that is merely slower than the process (the back-channel's cipher under TCG, a
/// slow terminal) then holds the stream up, as a slow attached client does with docker: the
/// process blocks on its full pipe and nothing is lost, for that client or the log.
const SUBSCRIBER_BUDGET: usize = 4 << 20;

/// How long a client over its budget may drain nothing before it is detached: one that
/// stopped reading must not hold up the process, its log or the other clients for longer
/// (what it missed is in the log).
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a stream held up by a client over its budget looks at its progress.
const HELD_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// One attached client's end: output chunks, counted out of its budget.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

impl Subscription {
    /// The next chunk; `None` once the stream ended (or the client was detached).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let chunk = self.rx.recv().await?;
        self.queued.fetch_sub(chunk.len(), Ordering::AcqRel);
        Some(chunk)
    }
}

#[derive(Debug)]
struct Subscriber {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// One stream's output, copied to every attached client.
#[derive(Debug, Default)]
pub struct Fanout {
    inner: Mutex<FanoutInner>,
}

#[derive(Debug, Default)]
struct FanoutInner {
    subscribers: Vec<Subscriber>,
    closed: bool,
}

impl Fanout {
    fn lock(&self) -> std::sync::MutexGuard<'_, FanoutInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a client. The receiver yields output chunks and ends (`None`) when the stream
    /// ends; a stream that already ended gives a receiver that ends at once.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut g = self.lock();
        if !g.closed {
            g.subscribers.push(Subscriber {
                tx,
                queued: queued.clone(),
            });
        }
        Subscription { rx, queued }
    }

    /// Copies a chunk to every client. While a client is more than [`SUBSCRIBER_BUDGET`]
    /// bytes behind, this waits for it to drain below; one that drains nothing for
    /// [`STUCK_AFTER`] is detached (its stream ends), as are clients that went away.
    pub async fn publish(&self, chunk: &[u8]) {
        // Each held-up client's queue when it last drained some, and since when.
        let mut held: Vec<(Arc<AtomicUsize>, usize, tokio::time::Instant)> = Vec::new();
        loop {
            {
                let mut g = self.lock();
                let now = tokio::time::Instant::now();
                let mut waiting = false;
                g.subscribers.retain(|s| {
                    if s.tx.is_closed() {
                        return false;
                    }
                    let queued = s.queued.load(Ordering::Acquire);
                    if queued + chunk.len() <= SUBSCRIBER_BUDGET {
                        return true;
                    }
                    match held.iter_mut().find(|(q, ..)| Arc::ptr_eq(q, &s.queued)) {
                        None => held.push((s.queued.clone(), queued, now)),
                        Some((_, last, since)) if queued < *last => {
                            *last = queued;
                            *since = now;
                        }
                        Some((_, _, since)) if now.duration_since(*since) >= STUCK_AFTER => {
                            tracing::warn!(
                                "an attached client read nothing for {} s; detaching it",
                                STUCK_AFTER.as_secs()
                            );
                            return false;
                        }
                        Some(_) => {}
                    }
                    waiting = true;
                    true
                });
                if !waiting {
                    g.subscribers.retain(|s| {
                        s.queued.fetch_add(chunk.len(), Ordering::AcqRel);
                        s.tx.send(chunk.to_vec()).is_ok()
                    });
                    return;
                }
            }
            tokio::time::sleep(HELD_POLL).await;
        }
    }

    /// Ends the stream for every client (their receivers return `None` after the last chunk).
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.subscribers.clear();
    }
}

/// Messages to a process's stdin writer.
#[derive(Debug)]
pub enum StdinMsg {
    /// Bytes from an attached client.
    Data(Vec<u8>),
    /// A client that will send input attached.
    SourceAdded,
    /// A client's input ended (SSH EOF or detach).
    SourceEnded,
    /// `close-stdin`: end the process's stdin once no client is sending any more.
    CloseWhenDone,
}

/// How the end of input is delivered to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinEnd {
    /// Close the pipe.
    ClosePipe,
    /// Write EOT (ctrl-D) to the pty, which the line discipline turns into end of file.
    Eot,
}

/// Runs the stdin writer of one process until its input is closed or the process is gone.
pub async fn stdin_writer(dest: AsyncStream, end: StdinEnd, mut rx: mpsc::Receiver<StdinMsg>) {
    let mut sources = 0usize;
    let mut armed = false;
    while let Some(msg) = rx.recv().await {
        match msg {
            StdinMsg::Data(d) => {
                if dest.write_all(&d).await.is_err() {
                    // The process closed its stdin or exited: later input has nowhere to go.
                    return;
                }
            }
            StdinMsg::SourceAdded => sources += 1,
            StdinMsg::SourceEnded => sources = sources.saturating_sub(1),
            StdinMsg::CloseWhenDone => armed = true,
        }
        if armed && sources == 0 {
            if end == StdinEnd::Eot {
                let _ = dest.write_all(&[0x04]).await;
                // A pty stays open for further input after EOT; the next close-stdin sends
                // another one.
                armed = false;
                continue;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client that stops reading holds the stream up for at most `STUCK_AFTER` once it is
    /// a budget behind, then it is detached; the live client gets everything.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_client_holds_up_nobody() {
        let f = Fanout::default();
        let _stuck = f.subscribe();
        let mut live = f.subscribe();
        let chunk = vec![7u8; 64 * 1024];
        let n = SUBSCRIBER_BUDGET / chunk.len() + 10;
        let publisher = async {
            for _ in 0..n {
                f.publish(&chunk).await;
                // As a pump waits for the pipe between chunks.
                tokio::task::yield_now().await;
            }
            f.close();
        };
        let reader = async {
            let mut got = Vec::new();
            while let Some(c) = live.recv().await {
                got.extend(c);
            }
            got
        };
        let started = tokio::time::Instant::now();
        let ((), got) = tokio::time::timeout(STUCK_AFTER + Duration::from_secs(5), async {
            tokio::join!(publisher, reader)
        })
        .await
        .expect("nobody waits for the stuck client for long");
        assert!(
            started.elapsed() >= STUCK_AFTER,
            "detached before it was stuck"
        );
        assert_eq!(got.len(), n * chunk.len());
        assert_eq!(f.lock().subscribers.len(), 0);
    }

    /// A client slower than the process but still reading is waited for: it gets every
    /// byte, however far the process is ahead (the exec's own output under TCG).
    #[tokio::test(start_paused = true)]
    async fn a_slow_client_loses_nothing() {
        let f = Fanout::default();
        let mut slow = f.subscribe();
        let chunk = vec![3u8; 64 * 1024];
        let n = 3 * SUBSCRIBER_BUDGET / chunk.len();
        let publisher = async {
            for _ in 0..n {
                f.publish(&chunk).await;
            }
            f.close();
        };
        let reader = async {
            let mut got = 0usize;
            while let Some(c) = slow.recv().await {
                got += c.len();
                // Far slower than the publisher, but never STUCK_AFTER without progress.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            got
        };
        let ((), got) = tokio::join!(publisher, reader);
        assert_eq!(got, n * chunk.len());
    }

    #[tokio::test]
    async fn fanout_copies_to_all_and_ends() {
        let f = Fanout::default();
        let mut a = f.subscribe();
        let mut b = f.subscribe();
        f.publish(b"x").await;
        drop(b.recv().await);
        drop(b);
        f.publish(b"y").await;
        f.close();
        assert_eq!(a.recv().await, Some(b"x".to_vec()));
        assert_eq!(a.recv().await, Some(b"y".to_vec()));
        assert_eq!(a.recv().await, None);
        assert_eq!(
            f.subscribe().recv().await,
            None,
            "a late subscriber sees the end at once"
        );
    }

    #[tokio::test]
    async fn stdin_closes_after_close_stdin_and_last_source() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let dest = AsyncStream::new(w).unwrap();
        let src = AsyncStream::new(r).unwrap();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(stdin_writer(dest, StdinEnd::ClosePipe, rx));
        tx.send(StdinMsg::SourceAdded).await.unwrap();
        tx.send(StdinMsg::Data(b"data".to_vec())).await.unwrap();
        tx.send(StdinMsg::CloseWhenDone).await.unwrap();
        tx.send(StdinMsg::SourceEnded).await.unwrap();
        task.await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(src.read(&mut buf).await.unwrap(), 4);
        assert_eq!(src.read(&mut buf).await.unwrap(), 0, "pipe closed");
    }
}
