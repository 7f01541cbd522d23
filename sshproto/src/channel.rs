//! Channels as async streams: readers and writers of the data and of stderr, the control
//! operations, and the queue of the peer's requests on a channel.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::msg;
use crate::requests::{ChannelRequest, ExitSignal, PtyRequest, WindowChange};
use crate::shared::{Inner, Shared};
use crate::wire;

/// Extended data type code of stderr.
pub const EXTENDED_DATA_STDERR: u32 = 1;

/// One reference to a channel; the last one dropped closes the channel.
struct Handle {
    shared: Arc<Shared>,
    id: u32,
}

impl Handle {
    /// Takes over a handle count already registered in the channel state.
    fn adopt(shared: Arc<Shared>, id: u32) -> Self {
        Self { shared, id }
    }

    fn clone_handle(&self) -> Self {
        let mut g = self.shared.lock();
        if let Some(ch) = g.channels.get_mut(&self.id) {
            ch.handles += 1;
        }
        Self {
            shared: self.shared.clone(),
            id: self.id,
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let wake = {
            let mut g = self.shared.lock();
            let closed = g.closed;
            let Some(ch) = g.channels.get_mut(&self.id) else {
                return;
            };
            ch.handles = ch.handles.saturating_sub(1);
            if ch.handles > 0 {
                return;
            }
            // Nobody can use the channel any more: close it.
            let mut close_msg = None;
            if !ch.close_sent && !closed && ch.is_open() {
                ch.close_sent = true;
                close_msg = Some(msg::channel_simple(msg::CHANNEL_CLOSE, ch.remote_id));
            }
            let remove = ch.finished() || closed;
            let wake = close_msg.is_some();
            if let Some(m) = close_msg {
                g.push(m);
            }
            if remove {
                g.channels.remove(&self.id);
            }
            wake
        };
        if wake {
            self.shared.wake.wake();
        }
    }
}

/// A handle that also counts as a reader of one stream, so data nobody can read any
/// more is discarded instead of holding the window.
struct ReaderGuard {
    h: Handle,
    ext: bool,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        release_reader(&self.h, self.ext);
    }
}

fn read_from(
    shared: &Shared,
    id: u32,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    ext: bool,
) -> Poll<io::Result<()>> {
    let wake = {
        let mut g = shared.lock();
        let closed = g.closed;
        let Some(ch) = g.channels.get_mut(&id) else {
            return Poll::Ready(Ok(()));
        };
        let q = if ext { &mut ch.ext } else { &mut ch.data };
        if q.is_empty() {
            if ch.eof_received || ch.close_received || closed {
                return Poll::Ready(Ok(()));
            }
            let slot = if ext {
                &mut ch.ext_waker
            } else {
                &mut ch.read_waker
            };
            *slot = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = q.len().min(buf.remaining());
        let (a, b) = q.as_slices();
        let from_a = n.min(a.len());
        buf.put_slice(a.get(..from_a).unwrap_or(&[]));
        if n > from_a {
            buf.put_slice(b.get(..n - from_a).unwrap_or(&[]));
        }
        q.drain(..n);
        ch.consumed = ch
            .consumed
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        let before = g.outbound.len();
        g.maybe_adjust(id);
        g.outbound.len() != before
    };
    if wake {
        shared.wake.wake();
    }
    Poll::Ready(Ok(()))
}

fn write_to(
    shared: &Shared,
    id: u32,
    cx: &mut Context<'_>,
    buf: &[u8],
    ext: Option<u32>,
) -> Poll<io::Result<usize>> {
    {
        let mut g = shared.lock();
        let closed = g.closed;
        let budget_full = g.outbound_bytes >= shared.outbound_limit;
        let Some(ch) = g.channels.get_mut(&id) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "channel closed",
            )));
        };
        if closed || ch.close_sent || ch.close_received || ch.eof_sent || !ch.is_open() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "channel closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if ch.remote_window == 0 {
            ch.write_wakers.push(cx.waker().clone());
            return Poll::Pending;
        }
        if budget_full {
            g.outbound_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        let max_chunk = usize::try_from(ch.remote_max_packet.max(1)).unwrap_or(usize::MAX);
        let window = usize::try_from(ch.remote_window).unwrap_or(usize::MAX);
        let n = buf
            .len()
            .min(window)
            .min(max_chunk)
            .min(shared.max_packet as usize * 2);
        ch.remote_window = ch
            .remote_window
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        let m = msg::channel_data(ch.remote_id, ext, buf.get(..n).unwrap_or(&[]));
        g.push(m);
        drop(g);
        shared.wake.wake();
        Poll::Ready(Ok(n))
    }
}

fn send_eof(g: &mut Inner, id: u32) -> Result<bool> {
    let Some(ch) = g.channels.get_mut(&id) else {
        return Err(Error::ChannelClosed);
    };
    if ch.eof_sent || ch.close_sent {
        return Ok(false);
    }
    if !ch.is_open() || ch.close_received {
        return Err(Error::ChannelClosed);
    }
    ch.eof_sent = true;
    let m = msg::channel_simple(msg::CHANNEL_EOF, ch.remote_id);
    g.push(m);
    Ok(true)
}

/// Control operations any channel handle offers.
#[derive(Clone, Copy)]
struct Ops<'a> {
    shared: &'a Arc<Shared>,
    id: u32,
}

impl Ops<'_> {
    fn channel_type(&self) -> String {
        self.shared
            .lock()
            .channels
            .get(&self.id)
            .map(|c| c.channel_type.clone())
            .unwrap_or_default()
    }

    async fn request(&self, name: &str, data: &[u8]) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            let ch = g.channels.get_mut(&self.id).ok_or(Error::ChannelClosed)?;
            if ch.close_sent || ch.close_received || !ch.is_open() {
                return Err(Error::ChannelClosed);
            }
            ch.pending_replies.push_back(Some(tx));
            let m = msg::channel_request(ch.remote_id, name, true, data);
            g.push(m);
        }
        self.shared.wake.wake();
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout("channel request reply")),
            Ok(Err(_)) => Err(Error::ChannelClosed),
            Ok(Ok(ok)) => Ok(ok),
        }
    }

    fn request_no_reply(&self, name: &str, data: &[u8]) -> Result<()> {
        {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            let ch = g.channels.get_mut(&self.id).ok_or(Error::ChannelClosed)?;
            if ch.close_sent || ch.close_received || !ch.is_open() {
                return Err(Error::ChannelClosed);
            }
            let m = msg::channel_request(ch.remote_id, name, false, data);
            g.push(m);
        }
        self.shared.wake.wake();
        Ok(())
    }

    fn eof(&self) -> Result<()> {
        let sent = {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            send_eof(&mut g, self.id)?
        };
        if sent {
            self.shared.wake.wake();
        }
        Ok(())
    }

    fn close(&self) {
        let sent = {
            let mut g = self.shared.lock();
            let closed = g.closed;
            match g.channels.get_mut(&self.id) {
                Some(ch) if !ch.close_sent && !closed && ch.is_open() => {
                    ch.close_sent = true;
                    let m = msg::channel_simple(msg::CHANNEL_CLOSE, ch.remote_id);
                    g.push(m);
                    true
                }
                _ => false,
            }
        };
        if sent {
            self.shared.wake.wake();
        }
    }

    fn exit_status(&self) -> Option<u32> {
        self.shared
            .lock()
            .channels
            .get(&self.id)
            .and_then(|c| c.exit_status)
    }

    fn exit_signal(&self) -> Option<ExitSignal> {
        self.shared
            .lock()
            .channels
            .get(&self.id)
            .and_then(|c| c.exit_signal.clone())
    }

    async fn wait_closed(&self) {
        poll_fn(|cx| {
            let mut g = self.shared.lock();
            let closed = g.closed;
            match g.channels.get_mut(&self.id) {
                Some(ch) if !ch.close_received && !closed => {
                    ch.close_wakers.push(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
        .await
    }
}

macro_rules! control_methods {
    () => {
        /// Our id for this channel.
        pub fn id(&self) -> u32 {
            self.handle().id
        }

        /// The channel type.
        pub fn channel_type(&self) -> String {
            self.ops().channel_type()
        }

        /// Sends a channel request of any name with raw data and waits for the reply
        /// (`true` = success), bounded by the request timeout.
        pub async fn request(&self, name: &str, data: &[u8]) -> Result<bool> {
            self.ops().request(name, data).await
        }

        /// Sends a channel request without asking for a reply.
        pub fn request_no_reply(&self, name: &str, data: &[u8]) -> Result<()> {
            self.ops().request_no_reply(name, data)
        }

        /// `exec` with a command (waits for the reply).
        pub async fn exec(&self, command: &str) -> Result<bool> {
            let mut d = Vec::new();
            wire::put_string(&mut d, command.as_bytes());
            self.request("exec", &d).await
        }

        /// `shell` (waits for the reply).
        pub async fn shell(&self) -> Result<bool> {
            self.request("shell", &[]).await
        }

        /// `pty-req` (waits for the reply).
        pub async fn pty_req(&self, pty: &PtyRequest) -> Result<bool> {
            self.request("pty-req", &pty.encode()).await
        }

        /// `window-change`, asking for a reply as the original port layer does (the
        /// tether answers failure when the session has no pty).
        pub async fn window_change(&self, size: WindowChange) -> Result<bool> {
            self.request("window-change", &size.encode()).await
        }

        /// `signal` with a signal name without `SIG` (e.g. `TERM`), asking for a reply.
        pub async fn signal(&self, name: &str) -> Result<bool> {
            let mut d = Vec::new();
            wire::put_string(&mut d, name.as_bytes());
            self.request("signal", &d).await
        }

        /// Sends `exit-status` (no reply).
        pub fn send_exit_status(&self, status: u32) -> Result<()> {
            self.request_no_reply("exit-status", &status.to_be_bytes())
        }

        /// Sends `exit-signal` (no reply).
        pub fn send_exit_signal(&self, signal: &ExitSignal) -> Result<()> {
            self.request_no_reply("exit-signal", &signal.encode())
        }

        /// Sends EOF: no more data from us (stdout and stderr). Idempotent.
        pub fn eof(&self) -> Result<()> {
            self.ops().eof()
        }

        /// Sends CLOSE. Buffered incoming data stays readable.
        pub fn close(&self) {
            self.ops().close()
        }

        /// The peer's `exit-status`, once received.
        pub fn exit_status(&self) -> Option<u32> {
            self.ops().exit_status()
        }

        /// The peer's `exit-signal`, once received.
        pub fn exit_signal(&self) -> Option<ExitSignal> {
            self.ops().exit_signal()
        }

        /// Waits until the peer closes the channel (or the connection ends).
        pub async fn wait_closed(&self) {
            self.ops().wait_closed().await
        }

        /// A writer for extended data type 1 (stderr).
        pub fn stderr_writer(&self) -> StderrWriter {
            StderrWriter {
                h: self.handle().clone_handle(),
            }
        }

        /// The requests the peer sends on this channel that no connection-level handler
        /// took (`ping`, `unblock`, `window-change`, ...), in arrival order.
        pub fn requests(&self) -> ChannelRequests {
            ChannelRequests {
                shared: self.handle().shared.clone(),
                id: self.handle().id,
            }
        }

        fn ops(&self) -> Ops<'_> {
            Ops {
                shared: &self.handle().shared,
                id: self.handle().id,
            }
        }
    };
}

/// An open channel: an async reader of the peer's data, an async writer of ours, and
/// the channel's control operations. Use [`Channel::stderr`] for the peer's extended
/// data 1 and [`Channel::stderr_writer`] to send ours; [`Channel::split`] for separate
/// read and write halves. Dropping every handle of a channel closes it.
///
/// Incoming stderr is buffered until [`Channel::stderr`] is taken (and discarded once
/// every stderr reader is dropped); unread data holds the channel's window, so read both
/// streams or drop the one you do not want.
pub struct Channel {
    r: ReaderGuard,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.handle().id)
            .finish()
    }
}

impl Channel {
    /// Wraps a channel whose state was created with one handle and one data reader
    /// registered (see `ChanState::registered`), so no data can arrive unclaimed between
    /// the state's creation and this handle's.
    pub(crate) fn adopt(shared: Arc<Shared>, id: u32) -> Self {
        Self {
            r: ReaderGuard {
                h: Handle::adopt(shared, id),
                ext: false,
            },
        }
    }

    fn handle(&self) -> &Handle {
        &self.r.h
    }

    control_methods!();

    /// A reader for the peer's extended data type 1 (stderr).
    pub fn stderr(&self) -> StderrReader {
        new_stderr_reader(self.handle())
    }

    /// Splits into an owned reader and an owned writer (with the control operations).
    pub fn split(self) -> (ChannelReader, ChannelWriter) {
        let w = ChannelWriter {
            h: self.handle().clone_handle(),
        };
        // The reader inherits this handle's data-reader registration.
        let Channel { r } = self;
        (ChannelReader { r }, w)
    }
}

fn new_stderr_reader(h: &Handle) -> StderrReader {
    let h = h.clone_handle();
    {
        let mut g = h.shared.lock();
        if let Some(ch) = g.channels.get_mut(&h.id) {
            ch.stderr_readers += 1;
            ch.stderr_taken = true;
        }
    }
    StderrReader {
        r: ReaderGuard { h, ext: true },
    }
}

fn release_reader(h: &Handle, ext: bool) {
    let wake = {
        let mut g = h.shared.lock();
        let Some(ch) = g.channels.get_mut(&h.id) else {
            return;
        };
        if ext {
            ch.stderr_readers = ch.stderr_readers.saturating_sub(1);
        } else {
            ch.data_readers = ch.data_readers.saturating_sub(1);
        }
        // Data nobody will read is given back to the peer's window at once.
        let mut dropped = 0usize;
        if ch.data_readers == 0 {
            dropped += ch.data.len();
            ch.data.clear();
        }
        if !ch.keeps_stderr() {
            dropped += ch.ext.len();
            ch.ext.clear();
        }
        if dropped == 0 {
            false
        } else {
            ch.consumed = ch
                .consumed
                .saturating_add(u32::try_from(dropped).unwrap_or(u32::MAX));
            let before = g.outbound.len();
            g.maybe_adjust(h.id);
            g.outbound.len() != before
        }
    };
    if wake {
        h.shared.wake.wake();
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_from(&self.handle().shared, self.handle().id, cx, buf, false)
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        write_to(&self.handle().shared, self.handle().id, cx, buf, None)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends EOF.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            self.ops()
                .eof()
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e)),
        )
    }
}

/// The reading half of a split [`Channel`] (the peer's data, not stderr).
pub struct ChannelReader {
    r: ReaderGuard,
}

impl fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReader")
            .field("id", &self.handle().id)
            .finish()
    }
}

impl ChannelReader {
    fn handle(&self) -> &Handle {
        &self.r.h
    }

    /// A reader for the peer's stderr.
    pub fn stderr(&self) -> StderrReader {
        new_stderr_reader(self.handle())
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_from(&self.handle().shared, self.handle().id, cx, buf, false)
    }
}

/// The writing half of a split [`Channel`], with the control operations.
pub struct ChannelWriter {
    h: Handle,
}

impl fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelWriter")
            .field("id", &self.handle().id)
            .finish()
    }
}

impl ChannelWriter {
    fn handle(&self) -> &Handle {
        &self.h
    }

    control_methods!();
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        write_to(&self.handle().shared, self.handle().id, cx, buf, None)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends EOF.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            self.ops()
                .eof()
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e)),
        )
    }
}

/// Reads the peer's extended data type 1 (stderr).
pub struct StderrReader {
    r: ReaderGuard,
}

impl fmt::Debug for StderrReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StderrReader")
            .field("id", &self.handle().id)
            .finish()
    }
}

impl StderrReader {
    fn handle(&self) -> &Handle {
        &self.r.h
    }
}

impl AsyncRead for StderrReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_from(&self.handle().shared, self.handle().id, cx, buf, true)
    }
}

/// Writes extended data type 1 (stderr). Shutting it down does nothing: EOF is for the
/// whole channel ([`Channel::eof`]).
pub struct StderrWriter {
    h: Handle,
}

impl fmt::Debug for StderrWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StderrWriter")
            .field("id", &self.handle().id)
            .finish()
    }
}

impl StderrWriter {
    fn handle(&self) -> &Handle {
        &self.h
    }
}

impl AsyncWrite for StderrWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        write_to(
            &self.handle().shared,
            self.handle().id,
            cx,
            buf,
            Some(EXTENDED_DATA_STDERR),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The peer's requests on one channel, in arrival order. Not a channel handle: it does
/// not keep the channel open. Dropping it answers failure to everything queued and later.
pub struct ChannelRequests {
    shared: Arc<Shared>,
    id: u32,
}

impl fmt::Debug for ChannelRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelRequests")
            .field("id", &self.id)
            .finish()
    }
}

impl ChannelRequests {
    /// The next request; `None` once the channel is closed and the queue is empty.
    pub async fn next(&mut self) -> Option<ChannelRequest> {
        poll_fn(|cx| {
            let mut g = self.shared.lock();
            let closed = g.closed;
            let Some(ch) = g.channels.get_mut(&self.id) else {
                return Poll::Ready(None);
            };
            if let Some(r) = ch.requests.pop_front() {
                return Poll::Ready(Some(r));
            }
            if ch.close_received || closed {
                return Poll::Ready(None);
            }
            ch.requests_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for ChannelRequests {
    fn drop(&mut self) {
        let queued = {
            let mut g = self.shared.lock();
            match g.channels.get_mut(&self.id) {
                Some(ch) => {
                    ch.requests_dropped = true;
                    std::mem::take(&mut ch.requests)
                }
                None => return,
            }
        };
        drop(queued);
    }
}
