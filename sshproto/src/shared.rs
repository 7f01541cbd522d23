//! State shared between the connection driver and the handles the application holds
//! ([`crate::Connection`], channels, request objects).
//!
//! One mutex guards everything; no lock is held across an await or while calling a
//! handler. Replies we owe are "slots" with their own small lock (see [`crate::reply`]), so
//! answering or dropping a request never needs the big one (requests may be dropped while
//! it is held).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::kex::Negotiated;
use crate::keys::PublicKey;
use crate::limits::Limits;
use crate::msg;
use crate::reply::{lock, DriverWake, ReplySlot};
use crate::requests::{ChannelRequest, ExitSignal};

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
    pub fn new(limits: &Limits, request_timeout: Duration) -> Self {
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
