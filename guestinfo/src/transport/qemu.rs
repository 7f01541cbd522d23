//! The QEMU stand-in: guestinfo over a virtio-serial port, in [`frame`](super::frame)s.
//!
//! Requests are the RPCI strings (`info-get KEY`, `info-set KEY VALUE`) plus `info-get-all`;
//! replies are `1 …` / `0 …`; the host pushes `reload`, `kill SIG`, `group-kill SIG`, `halt`.
//! [`QemuClient`] is the guest end, [`HostServer`] the host end (it plays the VMX).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::frame::{encode_frame, FrameError, FrameEvent, FrameReader, Message, MAX_PAYLOAD};
use super::{
    check_key, check_set_reply, check_writable, from_wire, parse_get_reply, qualify, HostCommand,
    Transport, TransportError,
};
use crate::store::Store;
use crate::Map;

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a request is re-sent after its frame was reported damaged.
const MAX_ATTEMPTS: u32 = 3;
const READ_CHUNK: usize = 64 * 1024;

/// A poisoned lock only means another thread panicked while holding it; the data (a writer,
/// a table of waiters) is still usable, and PID 1 must keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write_message(w: &mut dyn Write, msg: &Message) -> io::Result<()> {
    let frame = encode_frame(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&frame)?;
    w.flush()
}

enum Outcome {
    Reply(String, Vec<(String, String)>),
    Error(String),
    /// The reply (or request) may have been lost to a damaged frame: try again.
    Retry,
    Closed,
}

type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

/// A reply: its text and its key/value entries (`info-get-all`).
type Answer = (String, Vec<(String, String)>);

#[derive(Default)]
struct Waiters {
    pending: HashMap<u64, SyncSender<Outcome>>,
    closed: bool,
}

struct ClientShared {
    writer: Writer,
    waiters: Mutex<Waiters>,
    next_id: AtomicU64,
}

impl ClientShared {
    fn notify_all(&self, outcome: impl Fn() -> Outcome, close: bool) {
        let mut w = lock(&self.waiters);
        if close {
            w.closed = true;
        }
        for (_, tx) in w.pending.drain() {
            let _ = tx.try_send(outcome());
        }
    }
}

/// The reading end of the channel and what a read needs: the reader thread's, or, while no
/// thread runs (see [`QemuClient::from_file`]), the requests', each reading until its answer
/// comes.
struct ReadEnd<R> {
    reader: R,
    frames: FrameReader,
    buf: Vec<u8>,
    commands: Sender<HostCommand>,
}

/// What one read of the channel found.
enum ReadStep {
    /// Bytes (their frames handed on), or nothing yet.
    Read,
    /// End of file: the host side is not connected (see [`QemuClient::open`]).
    HostAway,
    /// An error that ends reading.
    Failed,
}

impl<R: Read> ReadEnd<R> {
    fn new(reader: R, commands: Sender<HostCommand>) -> ReadEnd<R> {
        ReadEnd {
            reader,
            frames: FrameReader::new(),
            buf: vec![0u8; READ_CHUNK],
            commands,
        }
    }

    /// Reads once and hands on the frames completed.
    fn read_once(&mut self, shared: &ClientShared) -> ReadStep {
        match self.reader.read(&mut self.buf) {
            Ok(0) => ReadStep::HostAway,
            Ok(n) => {
                self.frames.push(self.buf.get(..n).unwrap_or_default());
                while let Some(event) = self.frames.next_event() {
                    client_event(event, shared, &self.commands);
                }
                ReadStep::Read
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadStep::Read,
            Err(e) => {
                tracing::warn!("guestinfo channel read failed: {e}");
                ReadStep::Failed
            }
        }
    }

    /// The host side is gone: nothing in flight can be answered any more, and a
    /// half-received frame will never complete.
    fn host_away(&mut self, shared: &ClientShared) {
        let _ = self.frames.finish();
        shared.notify_all(|| Outcome::Closed, false);
    }

    /// The reader thread: reads until the stream ends (for good unless `survive_eof`) or
    /// fails, then fails whatever is pending.
    fn run(mut self, shared: &ClientShared, survive_eof: bool) {
        loop {
            match self.read_once(shared) {
                ReadStep::Read => {}
                ReadStep::HostAway if survive_eof => {
                    self.host_away(shared);
                    thread::sleep(RECONNECT_POLL);
                }
                ReadStep::HostAway | ReadStep::Failed => break,
            }
        }
        if let Some(FrameEvent::Corrupt(why)) = self.frames.finish() {
            tracing::warn!("guestinfo channel: {why}");
        }
        shared.notify_all(|| Outcome::Closed, true);
    }
}

impl ReadEnd<File> {
    /// For a request while no thread reads: waits at most `wait` for the channel to be
    /// readable, then reads once, as the thread would.
    fn read_some(&mut self, shared: &ClientShared, wait: Duration) {
        let timeout = PollTimeout::try_from(wait.min(RECONNECT_POLL)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.reader.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::Error::EINTR) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("guestinfo channel poll failed: {e}");
                shared.notify_all(|| Outcome::Closed, true);
                return;
            }
        }
        match self.read_once(shared) {
            ReadStep::Read => {}
            ReadStep::HostAway => {
                self.host_away(shared);
                thread::sleep(wait.min(RECONNECT_POLL));
            }
            ReadStep::Failed => shared.notify_all(|| Outcome::Closed, true),
        }
    }
}

/// Guest end of the QEMU stand-in.
pub struct QemuClient {
    shared: Arc<ClientShared>,
    timeout: Duration,
    commands: Mutex<Option<Receiver<HostCommand>>>,
    /// The reading end until a thread takes it; `None` once one has.
    inline: Arc<Mutex<Option<ReadEnd<File>>>>,
}

impl std::fmt::Debug for QemuClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuClient")
            .field("timeout", &self.timeout)
            .field("closed", &lock(&self.shared.waiters).closed)
            .finish_non_exhaustive()
    }
}

impl QemuClient {
    /// Opens the virtio-serial character device (e.g. `/dev/virtio-ports/org.tether.guestinfo`)
    /// read+write; see [`from_file`](Self::from_file).
    ///
    /// A virtio-serial port reads as end-of-file while nothing is connected on the host side
    /// (harness not up yet, or restarting), so here end-of-file is not final: pending requests
    /// fail with [`TransportError::Closed`] and the reader keeps polling until the host is
    /// back.
    pub fn open(dev_path: &Path) -> io::Result<QemuClient> {
        let file = OpenOptions::new().read(true).write(true).open(dev_path)?;
        QemuClient::from_file(file)
    }

    /// A client over an open channel (the device, or a socket in tests). No thread reads it
    /// at first: each request reads the channel itself until its answer comes, host commands
    /// included (they wait in the queue [`Transport::commands`] returns). Asking for that
    /// queue starts the reader thread, since host commands may then come at any time. The
    /// tether's boot fetches its config before that: a thread started for it (its first-time
    /// code under TCG, the switches to it and back) stood between PID 1 and the entrypoint.
    pub fn from_file(file: File) -> io::Result<QemuClient> {
        let writer = file.try_clone()?;
        let (tx, rx) = mpsc::channel();
        Ok(QemuClient {
            shared: Arc::new(ClientShared {
                writer: Arc::new(Mutex::new(Box::new(writer))),
                waiters: Mutex::new(Waiters::default()),
                next_id: AtomicU64::new(1),
            }),
            timeout: DEFAULT_TIMEOUT,
            commands: Mutex::new(Some(rx)),
            inline: Arc::new(Mutex::new(Some(ReadEnd::new(file, tx)))),
        })
    }

    /// Starts the reader thread over the inline reading end, unless one runs already. The
    /// thread takes the end once no request is reading it; if it cannot start, requests go
    /// on reading inline.
    fn start_reader(&self) {
        if lock(&self.inline).is_none() {
            return;
        }
        let slot = Arc::clone(&self.inline);
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name("guestinfo-qemu-rx".to_owned())
            .spawn(move || {
                // Taken out of the slot: once this returns, the end is the thread's.
                let end = lock(&slot).take();
                if let Some(end) = end {
                    end.run(&shared, true);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the guestinfo reader thread (requests read the channel themselves; host commands wait for them): {e}");
        }
    }

    /// A client over any byte stream pair (tests, sockets). Spawns the reader thread, which
    /// ends when `reader` reaches end of stream or fails. Dropping the client does not close
    /// the stream (the reader thread owns its half); shut a socket down to end it.
    pub fn from_io<R, W>(reader: R, writer: W) -> QemuClient
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        QemuClient::spawn(reader, writer, false)
    }

    fn spawn<R, W>(reader: R, writer: W, survive_eof: bool) -> QemuClient
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let shared = Arc::new(ClientShared {
            writer: Arc::new(Mutex::new(Box::new(writer))),
            waiters: Mutex::new(Waiters::default()),
            next_id: AtomicU64::new(1),
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("guestinfo-qemu-rx".to_owned())
            .spawn(move || ReadEnd::new(reader, tx).run(&thread_shared, survive_eof));
        if let Err(e) = spawned {
            tracing::error!("cannot start the guestinfo reader thread: {e}");
            lock(&shared.waiters).closed = true;
        }
        QemuClient {
            shared,
            timeout: DEFAULT_TIMEOUT,
            commands: Mutex::new(Some(rx)),
            inline: Arc::new(Mutex::new(None)),
        }
    }

    /// Waits for the answer `rx` will carry, at most until `deadline`, reading the channel
    /// while no thread does.
    fn wait(
        &self,
        rx: &mpsc::Receiver<Outcome>,
        deadline: Instant,
    ) -> Result<Outcome, mpsc::RecvTimeoutError> {
        loop {
            match rx.try_recv() {
                Ok(outcome) => return Ok(outcome),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(mpsc::RecvTimeoutError::Disconnected)
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut inline = lock(&self.inline);
            let Some(reader) = inline.as_mut() else {
                drop(inline);
                return rx.recv_timeout(left);
            };
            // Another request may have read this one's answer while it waited for the lock.
            if let Ok(outcome) = rx.try_recv() {
                return Ok(outcome);
            }
            if left.is_zero() {
                return Err(mpsc::RecvTimeoutError::Timeout);
            }
            reader.read_some(&self.shared, left);
        }
    }

    /// Sets the per-request timeout (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> QemuClient {
        self.timeout = timeout;
        self
    }

    /// Sends `commands` without waiting between them, then waits for every answer (each
    /// under the usual timeout). A request that must be tried again (a damaged frame) or
    /// whose sending failed is made again on its own, in order, after the others.
    fn request_many(&self, commands: &[String]) -> Vec<Result<Answer, TransportError>> {
        let mut sent: Vec<Option<(u64, mpsc::Receiver<Outcome>)>> = Vec::new();
        // All the frames in one write: one transfer through the virtio port, so the host
        // reads them together and stores them with one write of its store.
        let mut out = Vec::new();
        for command in commands {
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let msg = Message::Request {
                id,
                command: command.to_owned(),
            };
            let Ok(frame) = encode_frame(&msg) else {
                sent.push(None);
                continue;
            };
            let (tx, rx) = mpsc::sync_channel(1);
            {
                let mut w = lock(&self.shared.waiters);
                if w.closed {
                    sent.push(None);
                    continue;
                }
                w.pending.insert(id, tx);
            }
            out.extend_from_slice(&frame);
            sent.push(Some((id, rx)));
        }
        if !out.is_empty() {
            let mut w = lock(&self.shared.writer);
            if w.write_all(&out).and_then(|()| w.flush()).is_err() {
                drop(w);
                let mut waiters = lock(&self.shared.waiters);
                for s in &mut sent {
                    if let Some((id, _)) = s.take() {
                        waiters.pending.remove(&id);
                    }
                }
            }
        }
        let deadline = Instant::now() + self.timeout;
        sent.into_iter()
            .zip(commands)
            .map(|(s, command)| {
                let Some((id, rx)) = s else {
                    return self.request(command);
                };
                match self.wait(&rx, deadline) {
                    Ok(Outcome::Reply(reply, entries)) => Ok((reply, entries)),
                    Ok(Outcome::Error(message)) => Err(TransportError::Protocol(message)),
                    Ok(Outcome::Retry) => self.request(command),
                    Ok(Outcome::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        Err(TransportError::Closed)
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        lock(&self.shared.waiters).pending.remove(&id);
                        Err(TransportError::Timeout(self.timeout))
                    }
                }
            })
            .collect()
    }

    fn request(&self, command: &str) -> Result<Answer, TransportError> {
        let deadline = Instant::now() + self.timeout;
        for _ in 0..MAX_ATTEMPTS {
            // A fresh id per attempt: a late reply to an earlier attempt is discarded.
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::sync_channel(1);
            {
                let mut w = lock(&self.shared.waiters);
                if w.closed {
                    return Err(TransportError::Closed);
                }
                w.pending.insert(id, tx);
            }
            let msg = Message::Request {
                id,
                command: command.to_owned(),
            };
            if let Err(e) = write_message(&mut **lock(&self.shared.writer), &msg) {
                lock(&self.shared.waiters).pending.remove(&id);
                return Err(match e.kind() {
                    io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::NotConnected => TransportError::Closed,
                    _ => TransportError::Io(e),
                });
            }
            match self.wait(&rx, deadline) {
                Ok(Outcome::Reply(reply, entries)) => return Ok((reply, entries)),
                Ok(Outcome::Error(message)) => return Err(TransportError::Protocol(message)),
                Ok(Outcome::Retry) => continue,
                Ok(Outcome::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(TransportError::Closed)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    lock(&self.shared.waiters).pending.remove(&id);
                    return Err(TransportError::Timeout(self.timeout));
                }
            }
        }
        Err(TransportError::Corrupt)
    }
}

/// How long the device reader waits before polling a disconnected host again.
const RECONNECT_POLL: Duration = Duration::from_millis(100);

fn client_event(event: FrameEvent, shared: &ClientShared, commands: &Sender<HostCommand>) {
    match event {
        FrameEvent::Message(Message::Reply { id, reply, entries }) => {
            match lock(&shared.waiters).pending.remove(&id) {
                Some(tx) => {
                    let _ = tx.try_send(Outcome::Reply(reply, entries));
                }
                None => tracing::debug!("discarding late reply to request {id}"),
            }
        }
        FrameEvent::Message(Message::Error {
            id: Some(id),
            message,
        }) => {
            if let Some(tx) = lock(&shared.waiters).pending.remove(&id) {
                let _ = tx.try_send(Outcome::Error(message));
            }
        }
        FrameEvent::Message(Message::Error { id: None, message }) => {
            // The host got a damaged frame: one of our requests may be lost.
            tracing::warn!("host reported a damaged frame: {message}");
            shared.notify_all(|| Outcome::Retry, false);
        }
        FrameEvent::Message(Message::Push { command }) => match HostCommand::parse(&command) {
            Some(cmd) => {
                let _ = commands.send(cmd);
            }
            None => tracing::warn!("ignoring unknown host command {command:?}"),
        },
        FrameEvent::Message(Message::Request { id, .. }) => {
            let msg = Message::Error {
                id: Some(id),
                message: "the guest serves no requests".to_owned(),
            };
            let _ = write_message(&mut **lock(&shared.writer), &msg);
        }
        FrameEvent::Corrupt(why) => {
            tracing::warn!("damaged frame from host: {why}");
            let msg = Message::Error {
                id: None,
                message: why,
            };
            let _ = write_message(&mut **lock(&shared.writer), &msg);
            shared.notify_all(|| Outcome::Retry, false);
        }
    }
}

impl Transport for QemuClient {
    fn get(&self, key: &str) -> Result<Option<String>, TransportError> {
        check_key(key)?;
        let key = qualify(key);
        let (reply, _) = self.request(&format!("info-get {key}"))?;
        parse_get_reply(&reply)
    }

    fn set(&self, key: &str, value: &str) -> Result<(), TransportError> {
        check_writable(key)?;
        let key = qualify(key);
        let (reply, _) = self.request(&format!("info-set {key} {}", super::to_wire(value)))?;
        check_set_reply(&key, &reply)
    }

    fn set_many(&self, pairs: &[(String, String)]) -> Vec<(String, TransportError)> {
        let mut failed = Vec::new();
        let mut keys = Vec::new();
        let mut commands = Vec::new();
        for (key, value) in pairs {
            if let Err(e) = check_writable(key) {
                failed.push((key.clone(), e));
                continue;
            }
            let key = qualify(key).into_owned();
            commands.push(format!("info-set {key} {}", super::to_wire(value)));
            keys.push(key);
        }
        for (key, r) in keys.into_iter().zip(self.request_many(&commands)) {
            if let Err(e) = r.and_then(|(reply, _)| check_set_reply(&key, &reply)) {
                failed.push((key, e));
            }
        }
        failed
    }

    fn get_all(&self) -> Result<Map, TransportError> {
        let (reply, entries) = self.request("info-get-all")?;
        if !reply.starts_with('1') {
            return Err(TransportError::Protocol(format!(
                "info-get-all refused: {reply}"
            )));
        }
        Ok(entries
            .into_iter()
            .filter_map(|(k, v)| from_wire(&v).map(|v| (k, v)))
            .collect())
    }

    fn commands(&self) -> Option<Receiver<HostCommand>> {
        self.start_reader();
        lock(&self.commands).take()
    }
}

struct ServerShared {
    store: Arc<dyn Store>,
    /// The connected guest's writer, tagged with its connection number.
    conn: Mutex<Option<(u64, Writer)>>,
    queued: Mutex<Vec<HostCommand>>,
    listeners: Mutex<Vec<Sender<(String, String)>>>,
    generation: AtomicU64,
    damaged: AtomicU64,
    /// Keys computed at each request (see [`HostServer::set_dynamic`]).
    dynamic: Mutex<Option<DynamicKeys>>,
}

/// Computes keys that are answered but never stored (see [`HostServer::set_dynamic`]).
pub type DynamicKeys = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// Host end of the QEMU stand-in: serves a guest's requests against a [`Store`] like the VMX
/// would. Cheap to clone; clones share the store, listeners and connection.
#[derive(Clone)]
pub struct HostServer {
    shared: Arc<ServerShared>,
}

impl std::fmt::Debug for HostServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServer")
            .field("store", &self.shared.store)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl HostServer {
    /// A server over `store` (typically a [`crate::store::FileStore`], the VM's `.vmx`).
    pub fn new(store: Arc<dyn Store>) -> HostServer {
        HostServer {
            shared: Arc::new(ServerShared {
                store,
                conn: Mutex::new(None),
                queued: Mutex::new(Vec::new()),
                listeners: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
                damaged: AtomicU64::new(0),
                dynamic: Mutex::new(None),
            }),
        }
    }

    /// Keys computed afresh for each request and never stored: added to every
    /// `info-get-all` reply and answered by `info-get` (values in wire form). The harness
    /// gives the guest its clock and an entropy seed this way, so that neither is ever in
    /// the VM's `.vmx`.
    pub fn set_dynamic(&self, keys: DynamicKeys) {
        *lock(&self.shared.dynamic) = Some(keys);
    }

    fn dynamic(&self) -> Vec<(String, String)> {
        let f = lock(&self.shared.dynamic).clone();
        f.map(|f| f()).unwrap_or_default()
    }

    /// The store the guest reads and writes.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Every successful guest `info-set` is sent here as `(key, plain value)` (`<nil>` ⇒
    /// `""`), in the order the guest wrote them. Dropped receivers are forgotten.
    pub fn subscribe(&self) -> Receiver<(String, String)> {
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.listeners).push(tx);
        rx
    }

    /// Pushes a command to the connected guest, or queues it until a guest connects.
    pub fn push(&self, cmd: HostCommand) -> io::Result<()> {
        let conn = lock(&self.shared.conn).clone();
        match conn {
            Some((_, writer)) => write_message(
                &mut **lock(&writer),
                &Message::Push {
                    command: cmd.to_string(),
                },
            ),
            None => {
                lock(&self.shared.queued).push(cmd);
                Ok(())
            }
        }
    }

    /// Whether a guest stream is being served.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.conn).is_some()
    }

    /// Number of damaged frames received from guests so far.
    pub fn damaged_frames(&self) -> u64 {
        self.shared.damaged.load(Ordering::Relaxed)
    }

    /// Serves a connected socket (e.g. accepted from QEMU's chardev socket) until the guest
    /// side closes it.
    pub fn serve_stream(&self, stream: UnixStream) -> io::Result<()> {
        let reader = stream.try_clone()?;
        self.serve(reader, stream)
    }

    /// Serves one guest connection until end of stream. Call again with a new stream when
    /// the guest reconnects; the store, listeners and queued commands carry over.
    pub fn serve<R, W>(&self, mut reader: R, writer: W) -> io::Result<()>
    where
        R: Read,
        W: Write + Send + 'static,
    {
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let writer: Writer = Arc::new(Mutex::new(Box::new(writer)));
        *lock(&self.shared.conn) = Some((generation, Arc::clone(&writer)));
        let queued: Vec<HostCommand> = lock(&self.shared.queued).drain(..).collect();
        for cmd in queued {
            write_message(
                &mut **lock(&writer),
                &Message::Push {
                    command: cmd.to_string(),
                },
            )?;
        }
        let result = self.serve_loop(&mut reader, &writer);
        let mut conn = lock(&self.shared.conn);
        if conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            *conn = None;
        }
        result
    }

    fn serve_loop(&self, reader: &mut dyn Read, writer: &Writer) -> io::Result<()> {
        let mut frames = FrameReader::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            };
            frames.push(buf.get(..n).unwrap_or_default());
            // The `info-set`s that arrived together (a guest's pipelined write-back) are
            // stored with one write of the store (one fsync of the `.vmx` instead of one per
            // key), then answered together; anything else is answered in turn.
            let mut sets = Vec::new();
            let mut replies = Vec::new();
            while let Some(event) = frames.next_event() {
                if let FrameEvent::Message(Message::Request { id, command }) = &event {
                    if let Some(set) = parse_set(command) {
                        sets.push((*id, set.map(|(k, v)| (k.to_owned(), v.to_owned()))));
                        continue;
                    }
                }
                replies.extend(self.handle_sets(std::mem::take(&mut sets)));
                replies.extend(self.handle_event(event));
            }
            replies.extend(self.handle_sets(sets));
            if !replies.is_empty() {
                let mut out = Vec::new();
                for reply in &replies {
                    out.extend(fitted_frame(reply)?);
                }
                let mut w = lock(writer);
                w.write_all(&out)?;
                w.flush()?;
            }
        }
        if let Some(FrameEvent::Corrupt(why)) = frames.finish() {
            self.shared.damaged.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("guest stream: {why}");
        }
        Ok(())
    }

    fn handle_event(&self, event: FrameEvent) -> Option<Message> {
        match event {
            FrameEvent::Message(Message::Request { id, command }) => {
                Some(self.handle(id, &command))
            }
            FrameEvent::Message(Message::Error { message, .. }) => {
                tracing::warn!("guest reported a damaged frame: {message}");
                None
            }
            FrameEvent::Message(other) => Some(Message::Error {
                id: None,
                message: format!("unexpected message from guest: {other:?}"),
            }),
            FrameEvent::Corrupt(why) => {
                self.shared.damaged.fetch_add(1, Ordering::Relaxed);
                Some(Message::Error {
                    id: None,
                    message: why,
                })
            }
        }
    }

    fn reply(id: u64, reply: impl Into<String>) -> Message {
        Message::Reply {
            id,
            reply: reply.into(),
            entries: Vec::new(),
        }
    }

    /// Plays the VMX for one request.
    fn handle(&self, id: u64, command: &str) -> Message {
        let store = &self.shared.store;
        if command == "info-get-all" {
            return match store.all() {
                Ok(all) => Message::Reply {
                    id,
                    reply: "1 ".to_owned(),
                    entries: all
                        .into_iter()
                        .filter(|(k, _)| is_guestinfo(k))
                        .chain(self.dynamic())
                        .collect(),
                },
                Err(e) => Self::reply(id, format!("0 {e}")),
            };
        }
        if let Some(key) = command.strip_prefix("info-get ") {
            let key = qualify(key);
            if let Some((_, v)) = self.dynamic().into_iter().find(|(k, _)| k.as_str() == key) {
                return Self::reply(id, format!("1 {v}"));
            }
            return match store.get(&key) {
                Ok(Some(v)) => Self::reply(id, format!("1 {v}")),
                Ok(None) => Self::reply(id, "0 No value found"),
                Err(e) => Self::reply(id, format!("0 {e}")),
            };
        }
        if let Some(set) = parse_set(command) {
            let set = set.map(|(k, v)| (k.to_owned(), v.to_owned()));
            return self
                .handle_sets(vec![(id, set)])
                .pop()
                .unwrap_or_else(|| Self::reply(id, "0 "));
        }
        Self::reply(id, "0 Unknown command")
    }

    /// Answers `info-set` requests in order, storing the acceptable ones with one
    /// [`Store::set_all`] (all or none of them are stored).
    fn handle_sets(&self, sets: Vec<(u64, SetRequest)>) -> Vec<Message> {
        let entries: Vec<(String, String)> = sets
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok().cloned())
            .collect();
        let stored = if entries.is_empty() {
            Ok(())
        } else {
            self.shared
                .store
                .set_all(&entries)
                .map_err(|e| e.to_string())
        };
        sets.into_iter()
            .map(|(id, s)| match (s, &stored) {
                (Err(why), _) => Self::reply(id, why),
                (Ok((key, value)), Ok(())) => {
                    self.notify(&key, &value);
                    Self::reply(id, "1 ")
                }
                (Ok(_), Err(e)) => Self::reply(id, format!("0 {e}")),
            })
            .collect()
    }

    fn notify(&self, key: &str, wire_value: &str) {
        let plain = from_wire(wire_value).unwrap_or_default();
        lock(&self.shared.listeners).retain(|tx| tx.send((key.to_owned(), plain.clone())).is_ok());
    }
}

/// The frame of a reply, or of a refusal when the reply is too large to carry (an
/// `info-get-all` of a config over [`MAX_PAYLOAD`]): failing to write it would end the
/// connection and leave the guest waiting for an answer it can act on.
fn fitted_frame(msg: &Message) -> io::Result<Vec<u8>> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    match encode_frame(msg) {
        Err(FrameError::TooLarge(n)) => {
            let why = format!("reply of {n} bytes exceeds the frame limit of {MAX_PAYLOAD} bytes");
            tracing::warn!("guestinfo: {why}");
            let refusal = match msg {
                Message::Reply { id, .. } => HostServer::reply(*id, format!("0 {why}")),
                _ => Message::Error {
                    id: None,
                    message: why,
                },
            };
            encode_frame(&refusal).map_err(invalid)
        }
        other => other.map_err(invalid),
    }
}

/// An `info-set`'s key and wire value, or the VMX's refusal.
type SetRequest = Result<(String, String), &'static str>;

/// An `info-set KEY VALUE` request's key and wire value, or the VMX's refusal; `None` for
/// other requests.
fn parse_set(command: &str) -> Option<Result<(&str, &str), &'static str>> {
    let rest = command.strip_prefix("info-set ")?;
    let Some((key, value)) = rest.split_once(' ') else {
        return Some(Err("0 Two and exactly two arguments expected"));
    };
    Some(if !is_guestinfo(key) {
        Err("0 Only guestinfo keys can be set")
    } else if key.contains('/') {
        Err("0 Read-only key")
    } else {
        Ok((key, value))
    })
}

fn is_guestinfo(key: &str) -> bool {
    key.get(..10)
        .is_some_and(|p| p.eq_ignore_ascii_case("guestinfo."))
}

#[cfg(test)]
mod tests;
