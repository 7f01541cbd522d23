//! The [`Connection`] handle and the peer's channel opens ([`ChannelOpenRequest`]): the
//! two ways a channel comes to exist.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::oneshot;

use crate::channel::Channel;
use crate::error::{DisconnectReason, Error, OpenFailureReason, Result};
use crate::msg;
use crate::shared::{ChanPhase, ChanState, GlobalReply, GlobalWaiter, SessionInfo, Shared};

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
            g.disconnect = Some((DisconnectReason::BY_APPLICATION.0, description.to_string()));
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
