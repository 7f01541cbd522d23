//! The connection protocol (RFC 4254): the peer's global requests and replies, channel
//! opens, data, EOF, close and channel requests, handed to the shared state and the
//! handlers; and our queued messages and replies, sealed in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, trace};

use super::{Driver, WBUF_SOFT};
use crate::channel::EXTENDED_DATA_STDERR;
use crate::conn::ChannelOpenRequest;
use crate::error::{Error, OpenFailureReason, Result};
use crate::msg::{self, Message};
use crate::reply::ReplySlot;
use crate::requests::{ChannelRequest, ExitSignal, GlobalRequest};
use crate::shared::{ChanPhase, GlobalReply, GlobalWaiter};

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(super) fn on_connection_message(&mut self, m: Message<'_>) -> Result<()> {
        let shared = self.shared.clone();
        let max_pending = shared.max_pending;
        match m {
            Message::GlobalRequest {
                name,
                want_reply,
                data,
            } => {
                let slot = if want_reply {
                    let s = Arc::new(ReplySlot::default());
                    let mut g = shared.lock();
                    if g.global_slots.len() >= max_pending {
                        return Err(Error::Limit("unanswered global requests"));
                    }
                    g.global_slots.push_back(s.clone());
                    Some(s)
                } else {
                    None
                };
                trace!(name, want_reply, "global request");
                let req = GlobalRequest::new(
                    name.to_string(),
                    want_reply,
                    data.to_vec(),
                    slot,
                    shared.wake.clone(),
                );
                let h = self
                    .handlers
                    .global
                    .get(name)
                    .or(self.handlers.global_fallback.as_ref())
                    .cloned();
                match h {
                    Some(h) => h(req),
                    None => drop(req),
                }
                shared.wake.replies_dirty.store(true, Ordering::Release);
            }
            Message::RequestSuccess { data } | Message::RequestFailure { data } => {
                let success = matches!(m, Message::RequestSuccess { .. });
                let waiter = shared.lock().global_pending.pop_front();
                match waiter {
                    Some(GlobalWaiter::App(tx)) => {
                        let _ = tx.send(GlobalReply {
                            success,
                            data: data.to_vec(),
                        });
                    }
                    Some(GlobalWaiter::Keepalive) => self.keepalive_missed = 0,
                    None => return Err(Error::Protocol("global reply without a request".into())),
                }
            }
            Message::ChannelOpen {
                channel_type,
                sender,
                window,
                max_packet,
                data,
            } => {
                {
                    let mut g = shared.lock();
                    if g.channels.len() + g.pending_opens >= shared.max_channels {
                        g.push(msg::channel_open_failure(
                            sender,
                            OpenFailureReason::RESOURCE_SHORTAGE.0,
                            "too many channels",
                        ));
                        return Ok(());
                    }
                    g.pending_opens += 1;
                }
                debug!(channel_type, data_len = data.len(), "channel open");
                let req = ChannelOpenRequest::new(
                    shared.clone(),
                    channel_type.to_string(),
                    data.to_vec(),
                    sender,
                    window,
                    max_packet,
                );
                match self.handlers.channel_open.clone() {
                    Some(h) => h(req),
                    None => req.reject(
                        OpenFailureReason::UNKNOWN_CHANNEL_TYPE,
                        &format!("unknown channel type {channel_type}"),
                    ),
                }
            }
            Message::ChannelOpenConfirmation {
                recipient,
                sender,
                window,
                max_packet,
            } => {
                let mut g = shared.lock();
                let Some(ch) = g.channels.get_mut(&recipient) else {
                    return Err(Error::Protocol(format!(
                        "confirmation for unknown channel {recipient}"
                    )));
                };
                let ChanPhase::Opening(tx) = &mut ch.phase else {
                    return Err(Error::Protocol(format!(
                        "channel {recipient} confirmed twice"
                    )));
                };
                let tx = tx.take();
                ch.phase = ChanPhase::Open;
                ch.remote_id = sender;
                ch.remote_window = window;
                ch.remote_max_packet = max_packet;
                let delivered = tx.is_some_and(|tx| tx.send(Ok(())).is_ok());
                if !delivered {
                    // The opener gave up waiting: close what nobody will use.
                    ch.close_sent = true;
                    let m = msg::channel_simple(msg::CHANNEL_CLOSE, sender);
                    g.push(m);
                }
            }
            Message::ChannelOpenFailure {
                recipient,
                reason,
                description,
            } => {
                let mut g = shared.lock();
                match g
                    .channels
                    .get(&recipient)
                    .map(|c| matches!(c.phase, ChanPhase::Opening(_)))
                {
                    Some(true) => {
                        if let Some(mut ch) = g.channels.remove(&recipient) {
                            if let ChanPhase::Opening(Some(tx)) =
                                std::mem::replace(&mut ch.phase, ChanPhase::Open)
                            {
                                let _ = tx.send(Err((reason, description)));
                            }
                        }
                    }
                    _ => {
                        return Err(Error::Protocol(format!(
                            "open failure for channel {recipient}"
                        )))
                    }
                }
            }
            Message::ChannelWindowAdjust { recipient, bytes } => {
                let mut g = shared.lock();
                if let Some(ch) = g.channels.get_mut(&recipient) {
                    ch.remote_window = ch.remote_window.saturating_add(bytes);
                    ch.wake_writers();
                }
            }
            Message::ChannelData { recipient, data } => {
                self.on_channel_data(recipient, None, data)?
            }
            Message::ChannelExtendedData {
                recipient,
                code,
                data,
            } => self.on_channel_data(recipient, Some(code), data)?,
            Message::ChannelEof { recipient } => {
                let mut g = shared.lock();
                if let Some(ch) = g.channels.get_mut(&recipient) {
                    ch.eof_received = true;
                    ch.wake_all();
                }
            }
            Message::ChannelClose { recipient } => {
                let mut g = shared.lock();
                let Some(ch) = g.channels.get_mut(&recipient) else {
                    debug!(recipient, "close for unknown channel");
                    return Ok(());
                };
                if !ch.is_open() {
                    return Err(Error::Protocol(format!(
                        "close for unconfirmed channel {recipient}"
                    )));
                }
                ch.close_received = true;
                let mut reply = None;
                if !ch.close_sent {
                    ch.close_sent = true;
                    reply = Some(msg::channel_simple(msg::CHANNEL_CLOSE, ch.remote_id));
                }
                ch.pending_replies.clear();
                ch.reply_slots.clear();
                ch.wake_all();
                let remove = ch.finished();
                if let Some(m) = reply {
                    g.push(m);
                }
                if remove {
                    g.channels.remove(&recipient);
                }
            }
            Message::ChannelRequest {
                recipient,
                name,
                want_reply,
                data,
            } => self.on_channel_request(recipient, name, want_reply, data)?,
            Message::ChannelSuccess { recipient } | Message::ChannelFailure { recipient } => {
                let ok = matches!(m, Message::ChannelSuccess { .. });
                let mut g = shared.lock();
                if let Some(ch) = g.channels.get_mut(&recipient) {
                    match ch.pending_replies.pop_front() {
                        Some(Some(tx)) => {
                            let _ = tx.send(ok);
                        }
                        Some(None) => {}
                        None => {
                            return Err(Error::Protocol("channel reply without a request".into()))
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn on_channel_data(&mut self, id: u32, ext: Option<u32>, data: &[u8]) -> Result<()> {
        let shared = self.shared.clone();
        let mut g = shared.lock();
        let Some(ch) = g.channels.get_mut(&id) else {
            debug!(id, "data for unknown channel");
            return Ok(());
        };
        if !ch.is_open() {
            return Err(Error::Protocol(format!("data on unconfirmed channel {id}")));
        }
        let len = u32::try_from(data.len()).map_err(|_| Error::Limit("channel data"))?;
        if len > ch.local_window {
            return Err(Error::Protocol(format!("channel {id} window exceeded")));
        }
        if len > ch.local_max_packet {
            // Tolerated, as OpenSSH does: the window alone bounds what is buffered.
            debug!(
                id,
                len, "channel data larger than the agreed maximum packet"
            );
        }
        ch.local_window -= len;
        let keep = match ext {
            None => ch.data_readers > 0,
            Some(EXTENDED_DATA_STDERR) => ch.keeps_stderr(),
            Some(_) => false,
        } && !ch.close_sent;
        if keep {
            if ext.is_some() {
                ch.ext.extend(data);
                if let Some(w) = ch.ext_waker.take() {
                    w.wake();
                }
            } else {
                ch.data.extend(data);
                if let Some(w) = ch.read_waker.take() {
                    w.wake();
                }
            }
        } else {
            ch.consumed = ch.consumed.saturating_add(len);
            g.maybe_adjust(id);
        }
        Ok(())
    }

    pub(super) fn on_channel_request(
        &mut self,
        id: u32,
        name: &str,
        want_reply: bool,
        data: &[u8],
    ) -> Result<()> {
        let shared = self.shared.clone();
        let handler = self.handlers.channel.get(name).cloned();
        let req = {
            let mut g = shared.lock();
            let Some(ch) = g.channels.get_mut(&id) else {
                debug!(id, name, "request for unknown channel");
                return Ok(());
            };
            if !ch.is_open() {
                return Err(Error::Protocol(format!(
                    "request on unconfirmed channel {id}"
                )));
            }
            if ch.close_sent {
                // Nothing may follow our CLOSE, not even a reply.
                return Ok(());
            }
            let slot = if want_reply {
                if ch.reply_slots.len() >= shared.max_pending {
                    return Err(Error::Limit("unanswered channel requests"));
                }
                let s = Arc::new(ReplySlot::default());
                ch.reply_slots.push_back(s.clone());
                Some(s)
            } else {
                None
            };
            trace!(id, name, want_reply, "channel request");
            let req = ChannelRequest::new(
                id,
                name.to_string(),
                want_reply,
                data.to_vec(),
                slot,
                shared.wake.clone(),
            );
            match name {
                "exit-status" if handler.is_none() => {
                    ch.exit_status = req.exit_status().ok();
                    ch.wake_all();
                    Some(req)
                }
                "exit-signal" if handler.is_none() => {
                    ch.exit_signal = ExitSignal::decode(data).ok();
                    ch.wake_all();
                    Some(req)
                }
                _ if handler.is_some() => Some(req),
                _ if ch.handles > 0
                    && !ch.requests_dropped
                    && ch.requests.len() < shared.max_pending =>
                {
                    ch.requests.push_back(req);
                    if let Some(w) = ch.requests_waker.take() {
                        w.wake();
                    }
                    None
                }
                _ => Some(req),
            }
        };
        if let Some(req) = req {
            match (handler, req.name()) {
                (Some(h), _) => h(req),
                (None, "exit-status" | "exit-signal") => req.succeed(),
                (None, _) => drop(req),
            }
        }
        shared.wake.replies_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Moves answered replies, in order, into the outbound queue.
    pub(super) fn flush_replies(&mut self) {
        if !self.shared.wake.replies_dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut g = self.shared.lock();
        while g.global_slots.front().is_some_and(|s| s.is_filled()) {
            if let Some((ok, data)) = g.global_slots.pop_front().and_then(|s| s.take()) {
                g.push(msg::request_reply(ok, &data));
            }
        }
        let mut replies = Vec::new();
        for ch in g.channels.values_mut() {
            while ch.reply_slots.front().is_some_and(|s| s.is_filled()) {
                if let Some((ok, _)) = ch.reply_slots.pop_front().and_then(|s| s.take()) {
                    if !ch.close_sent {
                        let n = if ok {
                            msg::CHANNEL_SUCCESS
                        } else {
                            msg::CHANNEL_FAILURE
                        };
                        replies.push(msg::channel_simple(n, ch.remote_id));
                    }
                }
            }
        }
        for r in replies {
            g.push(r);
        }
    }

    /// Seals queued connection-layer messages into the write buffer.
    pub(super) fn drain_outbound(&mut self, all: bool) -> bool {
        if self.kex.holds_outbound() || !self.authenticated {
            return false;
        }
        let rekey_bytes = self.common().rekey_bytes;
        let mut moved = false;
        let mut batch = Vec::new();
        {
            let mut g = self.shared.lock();
            let mut budget = WBUF_SOFT.saturating_sub(self.pending_write());
            while let Some(m) = g.outbound.front() {
                if !all && (budget == 0 || m.len() > budget && moved) {
                    break;
                }
                budget = budget.saturating_sub(m.len() + 64);
                if let Some(m) = g.outbound.pop_front() {
                    g.outbound_bytes = g.outbound_bytes.saturating_sub(m.len());
                    batch.push(m);
                    moved = true;
                }
                if !all && batch.len() >= 256 {
                    break;
                }
            }
            if moved && g.outbound_bytes < self.shared.outbound_limit {
                for w in g.outbound_waiters.drain(..) {
                    w.wake();
                }
            }
        }
        for m in batch {
            self.send(&m);
        }
        if self.tx_bytes > rekey_bytes {
            self.shared.lock().rekey_requested = true;
        }
        moved
    }
}
