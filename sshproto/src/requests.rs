//! The peer's requests (global and per channel), answered through a [`Responder`], and
//! typed helpers for the standard channel request payloads of RFC 4254.

use std::sync::Arc;

use crate::error::Result;
use crate::reply::{DriverWake, ReplySlot, Responder};
use crate::wire::{self, Reader};

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

    /// Our id of the channel it arrived on ([`crate::Channel::id`]).
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

/// `window-change` / `pty-req` dimensions (RFC 4254 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowChange {
    /// Terminal width, columns.
    pub cols: u32,
    /// Terminal height, rows.
    pub rows: u32,
    /// Width in pixels.
    pub width_px: u32,
    /// Height in pixels.
    pub height_px: u32,
}

impl WindowChange {
    /// The request payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        for x in [self.cols, self.rows, self.width_px, self.height_px] {
            wire::put_u32(&mut v, x);
        }
        v
    }

    /// Parses a request payload.
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data);
        Ok(Self {
            cols: r.u32()?,
            rows: r.u32()?,
            width_px: r.u32()?,
            height_px: r.u32()?,
        })
    }
}

/// `pty-req` payload (RFC 4254 §6.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PtyRequest {
    /// TERM value.
    pub term: String,
    /// Dimensions.
    pub size: WindowChange,
    /// Encoded terminal modes (RFC 4254 §8); empty is fine.
    pub modes: Vec<u8>,
}

impl PtyRequest {
    /// The request payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        wire::put_string(&mut v, self.term.as_bytes());
        v.extend_from_slice(&self.size.encode());
        wire::put_string(&mut v, &self.modes);
        v
    }

    /// Parses a request payload.
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data);
        let term = r.text()?;
        let size = WindowChange {
            cols: r.u32()?,
            rows: r.u32()?,
            width_px: r.u32()?,
            height_px: r.u32()?,
        };
        let modes = r.string()?.to_vec();
        Ok(Self { term, size, modes })
    }
}

/// `exit-signal` payload (RFC 4254 §6.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitSignal {
    /// Signal name without `SIG`.
    pub signal: String,
    /// Whether a core was dumped.
    pub core_dumped: bool,
    /// Error message.
    pub message: String,
}

impl ExitSignal {
    /// The request payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        wire::put_string(&mut v, self.signal.as_bytes());
        wire::put_bool(&mut v, self.core_dumped);
        wire::put_string(&mut v, self.message.as_bytes());
        wire::put_string(&mut v, b"");
        v
    }

    /// Parses a request payload.
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data);
        Ok(Self {
            signal: r.text()?,
            core_dumped: r.bool()?,
            message: r.opt_text()?,
        })
    }
}

impl ChannelRequest {
    /// The `window-change` payload.
    pub fn window_change(&self) -> Result<WindowChange> {
        WindowChange::decode(self.data())
    }

    /// The `pty-req` payload.
    pub fn pty_req(&self) -> Result<PtyRequest> {
        PtyRequest::decode(self.data())
    }

    /// The `signal` name (without `SIG`).
    pub fn signal(&self) -> Result<String> {
        Reader::new(self.data()).text()
    }

    /// The `exec` command.
    pub fn exec_command(&self) -> Result<Vec<u8>> {
        Ok(Reader::new(self.data()).string()?.to_vec())
    }

    /// The `exit-status` value.
    pub fn exit_status(&self) -> Result<u32> {
        Reader::new(self.data()).u32()
    }
}
