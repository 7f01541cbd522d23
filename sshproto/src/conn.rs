//! State shared between the connection driver and the handles the application holds,
//! the [`Connection`] handle, and the objects for the peer's requests.
//!
//! One mutex guards everything; no lock is held across an await or while calling a
//! handler. Replies we owe are "slots" with their own small lock, so answering or
//! dropping a request never needs the big one (requests may be dropped while it is held).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::channel::{Channel, ExitSignal};
use crate::error::{Error, OpenFailureReason, Result};
use crate::kex::Negotiated;
use crate::keys::PublicKey;
use crate::msg;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the connection down with a second panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes the driver; shared by everything that gives it work.
#[derive(Debug, Default)]
pub(crate) struct DriverWake {
    waker: Mutex<Option<Waker>>,
    /// Some reply slot was filled.
    pub replies_dirty: AtomicBool,
}

impl DriverWake {
    pub fn register(&self, w: &Waker) {
        let mut g = lock(&self.waker);
        match &*g {
            Some(old) if old.will_wake(w) => {}
            _ => *g = Some(w.clone()),
        }
    }

    pub fn wake(&self) {
        let w = lock(&self.waker).take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// A reply we owe the peer, filled by whoever answers the request.
#[derive(Debug, Default)]
pub(crate) struct ReplySlot {
    value: Mutex<Option<(bool, Vec<u8>)>>,
}

impl ReplySlot {
    pub fn take(&self) -> Option<(bool, Vec<u8>)> {
        lock(&self.value).take()
    }

    pub fn is_filled(&self) -> bool {
        lock(&self.value).is_some()
    }
}

/// Answers one request exactly once; failure if dropped unanswered.
struct Responder {
    slot: Option<Arc<ReplySlot>>,
    wake: Arc<DriverWake>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("pending", &self.slot.is_some())
            .finish()
    }
}

impl Responder {
    fn new(slot: Option<Arc<ReplySlot>>, wake: Arc<DriverWake>) -> Self {
        Self { slot, wake }
    }

    fn send(&mut self, ok: bool, data: Vec<u8>) {
        if let Some(slot) = self.slot.take() {
            *lock(&slot.value) = Some((ok, data));
            self.wake.replies_dirty.store(true, Ordering::Release);
            self.wake.wake();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.send(false, Vec::new());
    }
}

/// A request of ours waiting for its global reply.
#[derive(Debug)]
pub(crate) enum GlobalWaiter {
    App(oneshot::Sender<GlobalReply>),
    Keepalive,
}

/// The peer's answer to a global request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalReply {
    /// SSH_MSG_REQUEST_SUCCESS (true) or _FAILURE (false).
    pub success: bool,
    /// Payload after the message number (response data; x/crypto also puts data in failures).
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum ChanPhase {
    /// We sent CHANNEL_OPEN; the opener waits on the sender.
    Opening(Option<oneshot::Sender<std::result::Result<(), (u32, String)>>>),
    Open,
}

/// Per-channel state.
#[derive(Debug)]
pub(crate) struct ChanState {
    pub channel_type: String,
    pub phase: ChanPhase,
    pub remote_id: u32,
    /// Bytes the peer may still send us.
    pub local_window: u32,
    /// Bytes read (or discarded) but not yet granted back.
    pub consumed: u32,
    pub window_max: u32,
    pub local_max_packet: u32,
    /// Bytes we may still send.
    pub remote_window: u32,
    pub remote_max_packet: u32,
    pub data: VecDeque<u8>,
    pub ext: VecDeque<u8>,
    pub data_readers: usize,
    pub stderr_readers: usize,
    pub stderr_taken: bool,
    pub handles: usize,
    pub eof_sent: bool,
    pub eof_received: bool,
    pub close_sent: bool,
    pub close_received: bool,
    pub read_waker: Option<Waker>,
    pub ext_waker: Option<Waker>,
    pub write_wakers: Vec<Waker>,
    pub close_wakers: Vec<Waker>,
    /// Our requests waiting for replies, in order (None: no reply wanted by anyone now).
    pub pending_replies: VecDeque<Option<oneshot::Sender<bool>>>,
    /// Replies we owe, in order.
    pub reply_slots: VecDeque<Arc<ReplySlot>>,
    /// The peer's requests no handler took.
    pub requests: VecDeque<ChannelRequest>,
    pub requests_dropped: bool,
    pub requests_waker: Option<Waker>,
    pub exit_status: Option<u32>,
    pub exit_signal: Option<ExitSignal>,
}

impl ChanState {
    pub fn new(channel_type: String, phase: ChanPhase, window: u32, max_packet: u32) -> Self {
        Self {
            channel_type,
            phase,
            remote_id: 0,
            local_window: window,
            consumed: 0,
            window_max: window,
            local_max_packet: max_packet,
            remote_window: 0,
            remote_max_packet: 0,
            data: VecDeque::new(),
            ext: VecDeque::new(),
            data_readers: 0,
            stderr_readers: 0,
            stderr_taken: false,
            handles: 0,
            eof_sent: false,
            eof_received: false,
            close_sent: false,
            close_received: false,
            read_waker: None,
            ext_waker: None,
            write_wakers: Vec::new(),
            close_wakers: Vec::new(),
            pending_replies: VecDeque::new(),
            reply_slots: VecDeque::new(),
            requests: VecDeque::new(),
            requests_dropped: false,
            requests_waker: None,
            exit_status: None,
            exit_signal: None,
        }
    }

    /// Counts the first `Channel` handle in from the start.
    pub fn registered(mut self) -> Self {
        self.handles = 1;
        self.data_readers = 1;
        self
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, ChanPhase::Open)
    }

    /// Whether incoming stderr is kept for a reader: while a stderr reader exists, or
    /// before anyone asked for one as long as the channel can still be read.
    pub fn keeps_stderr(&self) -> bool {
        self.stderr_readers > 0 || (!self.stderr_taken && self.data_readers > 0)
    }

    pub fn wake_all(&mut self) {
        for w in [
            self.read_waker.take(),
            self.ext_waker.take(),
            self.requests_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            w.wake();
        }
        for w in self
            .write_wakers
            .drain(..)
            .chain(self.close_wakers.drain(..))
        {
            w.wake();
        }
    }

    pub fn wake_writers(&mut self) {
        for w in self.write_wakers.drain(..) {
            w.wake();
        }
    }

    /// Whether the table entry can go: both closes seen and nobody holds a handle.
    pub fn finished(&self) -> bool {
        self.close_sent && self.close_received && self.handles == 0
    }
}

/// Facts about an established connection.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The peer's version line.
    pub peer_version: String,
    /// The authenticated user name (the one we sent, on the client).
    pub user: String,
    /// Algorithms of the most recent key exchange.
    pub algorithms: Negotiated,
    /// Whether strict key exchange is in force.
    pub strict_kex: bool,
    /// Key exchanges completed (1 + re-keys).
    pub kex_count: u64,
    /// The session identifier (the first exchange hash).
    pub session_id: Vec<u8>,
    /// The server's host key (both roles).
    pub host_key: Option<PublicKey>,
    /// The client key that authenticated (server role, `publickey` only).
    pub client_key: Option<PublicKey>,
}

/// Everything the driver and the handles share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub closed: bool,
    pub close_reason: Option<String>,
    pub authenticated: bool,
    pub info: Option<SessionInfo>,
    pub outbound: VecDeque<Vec<u8>>,
    pub outbound_bytes: usize,
    pub outbound_waiters: Vec<Waker>,
    pub closed_waiters: Vec<Waker>,
    pub channels: HashMap<u32, ChanState>,
    pub next_id: u32,
    pub pending_opens: usize,
    pub global_pending: VecDeque<GlobalWaiter>,
    pub global_slots: VecDeque<Arc<ReplySlot>>,
    pub rekey_requested: bool,
    pub disconnect: Option<(u32, String)>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub inner: Mutex<Inner>,
    pub wake: Arc<DriverWake>,
    pub window: u32,
    pub max_packet: u32,
    pub outbound_limit: usize,
    pub max_channels: usize,
    pub max_pending: usize,
    pub request_timeout: Duration,
}

impl Shared {
    pub fn new(limits: &crate::config::Limits, request_timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                closed: false,
                close_reason: None,
                authenticated: false,
                info: None,
                outbound: VecDeque::new(),
                outbound_bytes: 0,
                outbound_waiters: Vec::new(),
                closed_waiters: Vec::new(),
                channels: HashMap::new(),
                next_id: 0,
                pending_opens: 0,
                global_pending: VecDeque::new(),
                global_slots: VecDeque::new(),
                rekey_requested: false,
                disconnect: None,
            }),
            wake: Arc::new(DriverWake::default()),
            window: limits.channel_window.max(1),
            max_packet: limits
                .channel_max_packet
                .clamp(1, limits.max_packet_len.saturating_sub(64).max(1)),
            outbound_limit: limits.outbound_buffer.max(1),
            max_channels: limits.max_channels,
            max_pending: limits.max_pending_requests.max(1),
            request_timeout,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

impl Inner {
    /// Queues a connection-layer message; the driver sends queued messages in order.
    pub fn push(&mut self, payload: Vec<u8>) {
        self.outbound_bytes = self.outbound_bytes.saturating_add(payload.len());
        self.outbound.push_back(payload);
    }

    /// A channel id not in use.
    pub fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.channels.contains_key(&id) {
                return id;
            }
        }
    }

    /// Ends the connection for every handle: waiters get errors, readers EOF.
    pub fn mark_closed(&mut self, reason: Option<String>) -> Vec<Waker> {
        let mut wakers = Vec::new();
        if self.closed {
            return wakers;
        }
        self.closed = true;
        self.close_reason = reason;
        self.global_pending.clear();
        self.global_slots.clear();
        for ch in self.channels.values_mut() {
            ch.pending_replies.clear();
            ch.reply_slots.clear();
            if let ChanPhase::Opening(tx) = &mut ch.phase {
                tx.take();
            }
            ch.wake_all();
        }
        wakers.append(&mut self.outbound_waiters);
        wakers.append(&mut self.closed_waiters);
        wakers
    }

    /// Grants the peer more window once enough has been read, so the peer is not
    /// stalled and adjustments do not go out for every small read.
    pub fn maybe_adjust(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if !ch.is_open() || ch.close_sent || ch.close_received || ch.consumed == 0 {
            return;
        }
        if ch.consumed >= ch.window_max / 2 || ch.local_window < ch.local_max_packet {
            let grant = ch.consumed;
            ch.consumed = 0;
            ch.local_window = ch.local_window.saturating_add(grant);
            let m = msg::channel_window_adjust(ch.remote_id, grant);
            self.push(m);
        }
    }
}

/// A handle on an established connection. Cheap to clone; all clones are the same
/// connection. The connection lives as long as its driver future runs.
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.shared.lock();
        f.debug_struct("Connection")
            .field("closed", &g.closed)
            .field("channels", &g.channels.len())
            .finish()
    }
}

impl Connection {
    /// Opens a channel of any type with type-specific data (e.g. `attach` + a session ID),
    /// waiting for the peer's answer.
    pub async fn open_channel(&self, channel_type: &str, data: &[u8]) -> Result<Channel> {
        let (tx, rx) = oneshot::channel();
        // The handle exists from the start: dropping this future (or timing out) drops
        // it, and the channel is closed as soon as the peer confirms it.
        let ch = {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            if g.channels.len() >= self.shared.max_channels {
                return Err(Error::Limit("too many channels"));
            }
            let id = g.alloc_id();
            let st = ChanState::new(
                channel_type.to_string(),
                ChanPhase::Opening(Some(tx)),
                self.shared.window,
                self.shared.max_packet,
            )
            .registered();
            g.channels.insert(id, st);
            let m = msg::channel_open(
                channel_type,
                id,
                self.shared.window,
                self.shared.max_packet,
                data,
            );
            g.push(m);
            Channel::adopt(self.shared.clone(), id)
        };
        self.shared.wake.wake();
        let answer = tokio::time::timeout(self.shared.request_timeout, rx).await;
        match answer {
            Err(_) => Err(Error::Timeout("channel open confirmation")),
            Ok(Err(_)) => Err(Error::ConnectionClosed),
            Ok(Ok(Err((reason, message)))) => Err(Error::ChannelOpenFailed {
                reason: OpenFailureReason(reason),
                message,
            }),
            Ok(Ok(Ok(()))) => Ok(ch),
        }
    }

    /// Opens a `session` channel.
    pub async fn open_session(&self) -> Result<Channel> {
        self.open_channel("session", &[]).await
    }

    /// Sends a global request and waits for the reply.
    pub async fn global_request(&self, name: &str, data: &[u8]) -> Result<GlobalReply> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            g.push(msg::global_request(name, true, data));
            g.global_pending.push_back(GlobalWaiter::App(tx));
        }
        self.shared.wake.wake();
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout("global request reply")),
            Ok(Err(_)) => Err(Error::ConnectionClosed),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Sends a global request without asking for a reply.
    pub fn global_request_no_reply(&self, name: &str, data: &[u8]) -> Result<()> {
        {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            g.push(msg::global_request(name, false, data));
        }
        self.shared.wake.wake();
        Ok(())
    }

    /// Probes the peer with `keepalive@openssh.com`; any reply (even failure) is success.
    pub async fn keepalive(&self) -> Result<()> {
        self.global_request("keepalive@openssh.com", &[])
            .await
            .map(|_| ())
    }

    /// Starts a key re-exchange (a no-op if one is running).
    pub fn rekey(&self) -> Result<()> {
        {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            g.rekey_requested = true;
        }
        self.shared.wake.wake();
        Ok(())
    }

    /// Sends SSH_MSG_DISCONNECT (by application) after what is queued, then ends the
    /// connection; the driver then finishes with `Ok`.
    pub fn disconnect(&self, description: &str) {
        {
            let mut g = self.shared.lock();
            if g.closed || g.disconnect.is_some() {
                return;
            }
            g.disconnect = Some((
                crate::DisconnectReason::BY_APPLICATION.0,
                description.to_string(),
            ));
        }
        self.shared.wake.wake();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.lock().close_reason.clone()
    }

    /// Waits until the connection ends.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut g = self.shared.lock();
            if g.closed {
                Poll::Ready(())
            } else {
                g.closed_waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Facts about the session (None before the handshake completes).
    pub fn info(&self) -> Option<SessionInfo> {
        self.shared.lock().info.clone()
    }

    /// Number of channels in the table (open, opening, or closing).
    pub fn channel_count(&self) -> usize {
        self.shared.lock().channels.len()
    }
}

/// A global request from the peer. Answer with [`GlobalRequest::succeed`] /
/// [`GlobalRequest::fail`]; dropping it unanswered answers failure.
#[derive(Debug)]
pub struct GlobalRequest {
    pub(crate) name: String,
    pub(crate) want_reply: bool,
    pub(crate) data: Vec<u8>,
    responder: Responder,
}

impl GlobalRequest {
    pub(crate) fn new(
        name: String,
        want_reply: bool,
        data: Vec<u8>,
        slot: Option<Arc<ReplySlot>>,
        wake: Arc<DriverWake>,
    ) -> Self {
        Self {
            name,
            want_reply,
            data,
            responder: Responder::new(slot, wake),
        }
    }

    /// The request name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw request-specific data.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether the peer waits for an answer.
    pub fn want_reply(&self) -> bool {
        self.want_reply
    }

    /// Answers success with response data (ignored if no reply was wanted).
    pub fn succeed(mut self, data: impl Into<Vec<u8>>) {
        self.responder.send(true, data.into());
    }

    /// Answers failure.
    pub fn fail(mut self) {
        self.responder.send(false, Vec::new());
    }

    /// Answers failure with data after the message number (what x/crypto does for
    /// unknown requests: `unknown global request type: <name>`).
    pub fn fail_with(mut self, data: impl Into<Vec<u8>>) {
        self.responder.send(false, data.into());
    }

    /// Answers either way.
    pub fn reply(mut self, success: bool, data: impl Into<Vec<u8>>) {
        self.responder.send(success, data.into());
    }
}

/// A channel request from the peer (`ping`, `window-change`, `exec`, ...). Answer with
/// [`ChannelRequest::succeed`] / [`ChannelRequest::fail`]; dropping it answers failure.
#[derive(Debug)]
pub struct ChannelRequest {
    pub(crate) channel: u32,
    pub(crate) name: String,
    pub(crate) want_reply: bool,
    pub(crate) data: Vec<u8>,
    responder: Responder,
}

impl ChannelRequest {
    pub(crate) fn new(
        channel: u32,
        name: String,
        want_reply: bool,
        data: Vec<u8>,
        slot: Option<Arc<ReplySlot>>,
        wake: Arc<DriverWake>,
    ) -> Self {
        Self {
            channel,
            name,
            want_reply,
            data,
            responder: Responder::new(slot, wake),
        }
    }

    /// Our id of the channel it arrived on ([`Channel::id`]).
    pub fn channel_id(&self) -> u32 {
        self.channel
    }

    /// The request name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw request-specific data.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether the peer waits for an answer.
    pub fn want_reply(&self) -> bool {
        self.want_reply
    }

    /// Answers success.
    pub fn succeed(mut self) {
        self.responder.send(true, Vec::new());
    }

    /// Answers failure.
    pub fn fail(mut self) {
        self.responder.send(false, Vec::new());
    }

    /// Answers either way.
    pub fn reply(mut self, success: bool) {
        self.responder.send(success, Vec::new());
    }
}

/// A channel the peer wants to open. [`accept`](Self::accept) or
/// [`reject`](Self::reject) it; dropping it refuses (administratively prohibited).
pub struct ChannelOpenRequest {
    shared: Arc<Shared>,
    channel_type: String,
    data: Vec<u8>,
    remote_id: u32,
    remote_window: u32,
    remote_max_packet: u32,
    decided: bool,
}

impl fmt::Debug for ChannelOpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelOpenRequest")
            .field("channel_type", &self.channel_type)
            .field("data_len", &self.data.len())
            .field("remote_id", &self.remote_id)
            .finish_non_exhaustive()
    }
}

impl ChannelOpenRequest {
    pub(crate) fn new(
        shared: Arc<Shared>,
        channel_type: String,
        data: Vec<u8>,
        remote_id: u32,
        remote_window: u32,
        remote_max_packet: u32,
    ) -> Self {
        Self {
            shared,
            channel_type,
            data,
            remote_id,
            remote_window,
            remote_max_packet,
            decided: false,
        }
    }

    /// The channel type (`session`, `attach`, ...).
    pub fn channel_type(&self) -> &str {
        &self.channel_type
    }

    /// The type-specific data after the standard fields (for `attach`: the session ID).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Accepts the channel.
    pub fn accept(mut self) -> Result<Channel> {
        self.decided = true;
        let id = {
            let mut g = self.shared.lock();
            g.pending_opens = g.pending_opens.saturating_sub(1);
            if g.closed {
                return Err(Error::ConnectionClosed);
            }
            let id = g.alloc_id();
            let mut st = ChanState::new(
                std::mem::take(&mut self.channel_type),
                ChanPhase::Open,
                self.shared.window,
                self.shared.max_packet,
            );
            st.remote_id = self.remote_id;
            st.remote_window = self.remote_window;
            st.remote_max_packet = self.remote_max_packet;
            g.channels.insert(id, st.registered());
            let m = msg::channel_open_confirmation(
                self.remote_id,
                id,
                self.shared.window,
                self.shared.max_packet,
            );
            g.push(m);
            id
        };
        self.shared.wake.wake();
        Ok(Channel::adopt(self.shared.clone(), id))
    }

    /// Refuses the channel with a reason code and message.
    pub fn reject(mut self, reason: OpenFailureReason, message: &str) {
        self.send_reject(reason, message);
    }

    fn send_reject(&mut self, reason: OpenFailureReason, message: &str) {
        if self.decided {
            return;
        }
        self.decided = true;
        {
            let mut g = self.shared.lock();
            g.pending_opens = g.pending_opens.saturating_sub(1);
            if g.closed {
                return;
            }
            g.push(msg::channel_open_failure(self.remote_id, reason.0, message));
        }
        self.shared.wake.wake();
    }
}

impl Drop for ChannelOpenRequest {
    fn drop(&mut self) {
        self.send_reject(
            OpenFailureReason::ADMINISTRATIVELY_PROHIBITED,
            "channel open refused",
        );
    }
}
