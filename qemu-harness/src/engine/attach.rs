//! Attachments: a front end's binding to a session's stdin, stdout and stderr (the tether's
//! `attach` channel, relayed by the container's keeper), with the terminal's size, the
//! session's `unblock`, and docker's detach keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel::requests::{self as req, WindowSize};
use sshproto::{ChannelReader, ChannelWriter, Connection, StderrReader};
use tokio::io::AsyncWriteExt;

use super::{lock, Engine, EngineError};

/// How long an attachment made before `start` waits for the container to run.
const ATTACH_BEFORE_START: Duration = Duration::from_secs(600);
/// How long an attachment to a running container waits for its keeper.
const ATTACH_RUNNING: Duration = Duration::from_secs(30);

/// What an attachment carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// Send the front end's input to the session.
    pub stdin: bool,
}

/// How an attachment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The session ended with this exit status.
    Exited(i64),
    /// The front end detached; the session goes on.
    Detached,
    /// The channel closed without an exit status (the container's back-channel dropped).
    Closed,
}

/// Attachments of one session known to this engine.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Made before the session ran, not bound yet: `start` holds the launch for them.
    pub(super) pending: usize,
    /// Bound ones, for resizes that arrive on another request.
    pub(super) live: Vec<(u64, AttachmentControl)>,
    /// The last size asked for, for attachments bound later.
    pub(super) size: Option<WindowSize>,
}

/// A binding to a session. Read `output` (all output of a tty session, else stdout) and
/// `errors` (stderr of a session without a tty); drive the rest through `control`.
#[derive(Debug)]
pub struct Attachment {
    /// The session: the container ID for the primary process, else the exec ID.
    pub session: String,
    pub tty: bool,
    pub output: ChannelReader,
    pub errors: StderrReader,
    pub control: AttachmentControl,
    /// Keeps the keeper's connection (and so the channel) alive.
    _conn: Connection,
    _registration: Registration,
}

/// The control side of an attachment; cheap to clone, usable from any task.
#[derive(Debug, Clone)]
pub struct AttachmentControl {
    writer: Arc<tokio::sync::Mutex<ChannelWriter>>,
    unblocked: Arc<AtomicBool>,
    stdin: bool,
    /// Where the exit status goes as soon as it is known (an exec's record).
    exit_slot: Option<Arc<Mutex<Option<i64>>>>,
}

impl AttachmentControl {
    /// Sends input to the session (nothing when the attachment carries no stdin).
    pub async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        if !self.stdin || data.is_empty() {
            return Ok(());
        }
        self.writer.lock().await.write_all(data).await
    }

    /// The front end's input ended: the session's stdin is closed once every attached input
    /// has ended (the tether's `close-stdin`).
    pub async fn close_stdin(&self) {
        if !self.stdin {
            return;
        }
        let w = self.writer.lock().await;
        let _ = w.request(req::REQ_CLOSE_STDIN, &[]).await;
        let _ = w.eof();
    }

    /// Sets the session's terminal size.
    pub async fn resize(&self, size: WindowSize) -> bool {
        self.writer
            .lock()
            .await
            .request(req::REQ_WINDOW_CHANGE, &size.payload())
            .await
            .unwrap_or(false)
    }

    /// Lets a session held by `runblock` launch (once; later calls do nothing).
    pub async fn unblock(&self) {
        if self.unblocked.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self
            .writer
            .lock()
            .await
            .request(req::REQ_UNBLOCK, req::UNBLOCK_PAYLOAD)
            .await;
    }

    /// Ends this attachment; the session goes on.
    pub async fn detach(&self) {
        self.writer.lock().await.close();
    }

    /// Waits for the channel's end after the output ended: the exit status, if the
    /// session sent one.
    pub async fn finish(&self) -> Ended {
        let w = self.writer.lock().await;
        // The exit status follows the end of the data closely, just before the close.
        let _ = tokio::time::timeout(Duration::from_secs(2), w.wait_closed()).await;
        match w.exit_status() {
            Some(s) => {
                let code = i64::from(s);
                if let Some(slot) = &self.exit_slot {
                    *lock(slot) = Some(code);
                }
                Ended::Exited(code)
            }
            None => Ended::Closed,
        }
    }
}

/// Undoes a registration when the attachment (or the attempt to make one) goes away.
#[derive(Debug)]
struct Registration {
    engine: Engine,
    session: String,
    live: u64,
    control: Option<AttachmentControl>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut all = lock(&self.engine.inner.attachments);
        if let Some(r) = all.get_mut(&self.session) {
            r.live.retain(|(m, _)| *m != self.live);
            if r.pending == 0 && r.live.is_empty() {
                all.remove(&self.session);
            }
        }
        drop(all);
        // A session held for this attachment must not wait for it forever.
        if let Some(c) = self.control.take() {
            if !c.unblocked.load(Ordering::SeqCst) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { c.unblock().await });
                }
            }
        }
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Engine {
    /// Attaches to a container's primary session, in two steps: this call registers the
    /// attachment, [`PendingAttachment::bind`] binds it. Made before `start`, it waits for
    /// the container to run, and `start` holds the launch until it is bound and unblocked
    /// (docker's attach-before-start: no output is lost); made to a running container, it
    /// binds at once.
    pub fn attach(
        &self,
        name: &str,
        opts: AttachOptions,
    ) -> Result<PendingAttachment, EngineError> {
        let view = self.inspect(name)?;
        let id = view.meta.id.clone();
        // Before the start (also of a stopped container: `docker start -a` attaches
        // first) the attachment waits for the next start.
        let before_start = !view.running();
        Ok(PendingAttachment {
            engine: self.clone(),
            slot: self.register(&id, before_start),
            starts: if before_start {
                view.meta.starts
            } else {
                // Running: the current run counts.
                view.meta.starts.saturating_sub(1)
            },
            session: id,
            tty: view.tty(),
            opts,
            limit: if before_start {
                ATTACH_BEFORE_START
            } else {
                ATTACH_RUNNING
            },
        })
    }

    /// Opens the session's channel on a keeper connection and registers it live.
    pub(super) async fn bind(
        &self,
        conn: Connection,
        session: &str,
        tty: bool,
        opts: AttachOptions,
        exit_slot: Option<Arc<Mutex<Option<i64>>>>,
        mut slot: RegistrationSlot,
    ) -> Result<Attachment, EngineError> {
        let ch = conn
            .open_channel(req::CHANNEL_ATTACH, session.as_bytes())
            .await
            .map_err(|e| EngineError::Conflict(format!("cannot attach to {session}: {e}")))?;
        let errors = ch.stderr();
        let (output, writer) = ch.split();
        let control = AttachmentControl {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            unblocked: Arc::new(AtomicBool::new(false)),
            stdin: opts.stdin,
            exit_slot,
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let size = {
            let mut all = lock(&self.inner.attachments);
            let r = all.entry(session.to_owned()).or_default();
            // Bound: no longer pending (a later restart does not wait for it).
            if std::mem::take(&mut slot.pending) {
                r.pending = r.pending.saturating_sub(1);
            }
            r.live.push((n, control.clone()));
            r.size
        };
        let registration = Registration {
            engine: self.clone(),
            session: session.to_owned(),
            live: n,
            control: Some(control.clone()),
        };
        if let Some(size) = size {
            control.resize(size).await;
        }
        Ok(Attachment {
            session: session.to_owned(),
            tty,
            output,
            errors,
            control,
            _conn: conn,
            _registration: registration,
        })
    }

    /// Counts an attachment as pending (made before the session runs) until it is bound
    /// or given up.
    pub(super) fn register(&self, session: &str, pending: bool) -> RegistrationSlot {
        if pending {
            lock(&self.inner.attachments)
                .entry(session.to_owned())
                .or_default()
                .pending += 1;
        }
        RegistrationSlot {
            engine: self.clone(),
            session: session.to_owned(),
            pending,
        }
    }

    /// Attachments waiting for a session to start.
    pub(super) fn pending_attachments(&self, session: &str) -> usize {
        lock(&self.inner.attachments)
            .get(session)
            .map(|r| r.pending)
            .unwrap_or(0)
    }

    /// Resizes a session's terminal through one of its live attachments; remembered for
    /// attachments bound later.
    pub(super) async fn resize_session(&self, session: &str, size: WindowSize) -> bool {
        let live = {
            let mut all = lock(&self.inner.attachments);
            let r = all.entry(session.to_owned()).or_default();
            r.size = Some(size);
            r.live.first().map(|(_, c)| c.clone())
        };
        match live {
            Some(c) => c.resize(size).await,
            None => false,
        }
    }

    /// Resizes a container's primary terminal (docker's `resize`).
    pub async fn resize(&self, name: &str, size: WindowSize) -> Result<(), EngineError> {
        let view = self.inspect(name)?;
        if !view.running() {
            return Err(EngineError::NotRunning(name.to_owned()));
        }
        if !self.resize_session(&view.meta.id, size).await {
            // No attachment here: a short one carries the size.
            let conn = self.connect(&view.meta).await?;
            let ch = conn
                .open_channel(req::CHANNEL_ATTACH, view.meta.id.as_bytes())
                .await
                .map_err(|e| EngineError::Conflict(format!("cannot resize {name}: {e}")))?;
            let _ = ch.request(req::REQ_WINDOW_CHANGE, &size.payload()).await;
            ch.close();
        }
        Ok(())
    }
}

/// An attachment registered and not bound yet (see [`Engine::attach`]).
#[derive(Debug)]
pub struct PendingAttachment {
    engine: Engine,
    slot: RegistrationSlot,
    /// The container's start count when the attachment was made.
    starts: u32,
    session: String,
    tty: bool,
    opts: AttachOptions,
    limit: Duration,
}

impl PendingAttachment {
    /// Waits for the container to run and binds to its primary session.
    pub async fn bind(self) -> Result<Attachment, EngineError> {
        let conn = self
            .engine
            .connect_when_up(&self.session, self.limit, self.starts)
            .await?;
        self.engine
            .bind(conn, &self.session, self.tty, self.opts, None, self.slot)
            .await
    }
}

/// A pending registration not yet bound.
#[derive(Debug)]
pub(super) struct RegistrationSlot {
    engine: Engine,
    session: String,
    pending: bool,
}

impl Drop for RegistrationSlot {
    fn drop(&mut self) {
        if self.pending {
            let mut all = lock(&self.engine.inner.attachments);
            if let Some(r) = all.get_mut(&self.session) {
                r.pending = r.pending.saturating_sub(1);
            }
        }
    }
}

/// docker's detach keys (`ctrl-p,ctrl-q` by default): a sequence in the input that ends an
/// attachment instead of reaching the session.
#[derive(Debug, Clone)]
pub struct DetachKeys {
    keys: Vec<u8>,
    /// How much of `keys` the input has matched so far (held back from the session).
    matched: usize,
}

impl Default for DetachKeys {
    fn default() -> Self {
        DetachKeys {
            keys: vec![0x10, 0x11],
            matched: 0,
        }
    }
}

impl DetachKeys {
    /// Parses docker's form: comma-separated `ctrl-<letter>` (also `ctrl-@ ctrl-[ ctrl-\
    /// ctrl-] ctrl-^ ctrl-_`) or single characters.
    pub fn parse(spec: &str) -> Result<DetachKeys, EngineError> {
        let bad = || EngineError::BadRequest(format!("Invalid detach keys ({spec}) provided"));
        let mut keys = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            match part.strip_prefix("ctrl-") {
                Some(k) if k.len() == 1 => {
                    let c = k.as_bytes()[0].to_ascii_lowercase();
                    let code = match c {
                        b'a'..=b'z' => c - b'a' + 1,
                        b'@' => 0,
                        b'[' => 27,
                        b'\\' => 28,
                        b']' => 29,
                        b'^' => 30,
                        b'_' => 31,
                        _ => return Err(bad()),
                    };
                    keys.push(code);
                }
                Some(_) => return Err(bad()),
                None if part.len() == 1 => keys.push(part.as_bytes()[0]),
                None => return Err(bad()),
            }
        }
        if keys.is_empty() {
            return Err(bad());
        }
        Ok(DetachKeys { keys, matched: 0 })
    }

    /// Scans a chunk of input: the bytes to pass on, and whether the sequence completed
    /// (then nothing after it is passed). A partial sequence at the end is held back until
    /// the next chunk shows whether it completes.
    pub fn scan(&mut self, chunk: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(chunk.len());
        for &b in chunk {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            // A broken sequence: what was held back was input after all.
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_and_scan() {
        let mut k = DetachKeys::default();
        assert_eq!(k.scan(b"ab"), (b"ab".to_vec(), false));
        // Split across chunks.
        assert_eq!(k.scan(b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(k.scan(b"\x11rest"), (Vec::new(), true));
        // A ctrl-p that is not followed by ctrl-q is passed on.
        let mut k = DetachKeys::default();
        assert_eq!(k.scan(b"\x10a"), (b"\x10a".to_vec(), false));
        assert_eq!(k.scan(b"\x10\x10\x11"), (b"\x10".to_vec(), true));
        let mut k = DetachKeys::parse("ctrl-a,x").unwrap();
        assert_eq!(k.scan(b"1\x01x2"), (b"1".to_vec(), true));
        assert!(DetachKeys::parse("ctrl-").is_err());
        assert!(DetachKeys::parse("ctrl-1").is_err());
        assert!(DetachKeys::parse("").is_err());
    }
}
