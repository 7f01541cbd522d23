//! The backdoor "message" protocol (command 0x1E): open, send, receive, close
//! (guestinfo.md §2). Pure register logic over a [`Port`].

use super::port::{Port, Regs};
use crate::transport::TransportError;

/// `BDOOR_MAGIC`, in eax of every backdoor call.
pub const MAGIC: u32 = 0x564D_5868;
/// The low-bandwidth port (one register's worth per `in`).
pub const LB_PORT: u32 = 0x5658;
/// The high-bandwidth port (`rep outsb` / `rep insb`).
pub const HB_PORT: u32 = 0x5659;
/// `BDOOR_CMD_MESSAGE`, the message protocol's command.
pub const CMD_MESSAGE: u32 = 0x1E;
/// `BDOORHB_CMD_MESSAGE`.
pub const HB_CMD_MESSAGE: u32 = 0;

/// Message type: open a channel.
pub const TYPE_OPEN: u32 = 0;
/// Message type: announce the size of what we send.
pub const TYPE_SENDSIZE: u32 = 1;
/// Message type: send payload (4 bytes at a time on the low-bandwidth port).
pub const TYPE_SENDPAYLOAD: u32 = 2;
/// Message type: ask the size of the reply.
pub const TYPE_RECVSIZE: u32 = 3;
/// Message type: receive payload.
pub const TYPE_RECVPAYLOAD: u32 = 4;
/// Message type: acknowledge a received payload.
pub const TYPE_RECVSTATUS: u32 = 5;
/// Message type: close the channel.
pub const TYPE_CLOSE: u32 = 6;

/// Status bit: the call succeeded.
pub const STATUS_SUCCESS: u32 = 0x0001;
/// Status bit: a reply waits to be received.
pub const STATUS_DORECV: u32 = 0x0002;
/// Status bit: a checkpoint interrupted the transfer (retry).
pub const STATUS_CPT: u32 = 0x0010;
/// Status bit: the high-bandwidth port may be used.
pub const STATUS_HB: u32 = 0x0080;

/// Guest → VMX requests.
pub const RPCI_PROTOCOL: u32 = 0x4943_5052;
/// VMX → guest requests (toolbox).
pub const TCLO_PROTOCOL: u32 = 0x4f4c_4354;
const COOKIE_FLAG: u32 = 0x8000_0000;

/// Largest message accepted from the VMX (RPC messages are limited to 64 KiB; leave room).
pub const MAX_MESSAGE: u32 = 1 << 20;
/// A checkpoint (VM snapshot/migration) interrupted a transfer: retry, but not forever.
const MAX_RETRIES: usize = 16;

/// Backdoor protocol failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackdoorError {
    /// opening a backdoor channel for protocol {0:#x} failed
    #[error("opening a backdoor channel for protocol {0:#x} failed")]
    Open(u32),
    /// backdoor send failed ({0})
    #[error("backdoor send failed ({0})")]
    Send(&'static str),
    /// backdoor receive failed ({0})
    #[error("backdoor receive failed ({0})")]
    Receive(&'static str),
    /// closing a backdoor channel failed
    #[error("closing a backdoor channel failed")]
    Close,
    /// backdoor message of {0} bytes is too large
    #[error("backdoor message of {0} bytes is too large")]
    TooLarge(usize),
    /// backdoor transfer kept being interrupted by checkpoints
    #[error("backdoor transfer kept being interrupted by checkpoints")]
    Checkpoint,
}

impl From<BackdoorError> for TransportError {
    fn from(e: BackdoorError) -> TransportError {
        TransportError::Protocol(e.to_string())
    }
}

/// An open message channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    id: u16,
    cookie_high: u32,
    cookie_low: u32,
}

fn status(reg: u32) -> u32 {
    reg >> 16
}

impl Channel {
    /// Opens a channel for `protocol` (RPCI or TCLO), asking for cookies first and retrying
    /// without them if the VMX refuses.
    pub fn open(port: &dyn Port, protocol: u32) -> Result<Channel, BackdoorError> {
        for bx in [protocol | COOKIE_FLAG, protocol] {
            let r = port.call(Regs {
                ax: MAGIC,
                bx,
                cx: (TYPE_OPEN << 16) | CMD_MESSAGE,
                dx: LB_PORT,
                ..Regs::default()
            });
            if status(r.cx) & STATUS_SUCCESS != 0 {
                return Ok(Channel {
                    id: (r.dx >> 16) as u16,
                    cookie_high: r.si,
                    cookie_low: r.di,
                });
            }
        }
        Err(BackdoorError::Open(protocol))
    }

    fn lb(&self, kind: u32, bx: u32) -> Regs {
        Regs {
            ax: MAGIC,
            bx,
            cx: (kind << 16) | CMD_MESSAGE,
            dx: (u32::from(self.id) << 16) | LB_PORT,
            si: self.cookie_high,
            di: self.cookie_low,
            bp: 0,
        }
    }

    fn hb(&self) -> Regs {
        Regs {
            ax: MAGIC,
            bx: (STATUS_SUCCESS << 16) | HB_CMD_MESSAGE,
            cx: 0,
            dx: (u32::from(self.id) << 16) | HB_PORT,
            si: 0,
            di: 0,
            bp: 0,
        }
    }

    /// Sends one message.
    pub fn send(&self, port: &dyn Port, data: &[u8]) -> Result<(), BackdoorError> {
        let len = u32::try_from(data.len()).map_err(|_| BackdoorError::TooLarge(data.len()))?;
        'retry: for _ in 0..MAX_RETRIES {
            let r = port.call(self.lb(TYPE_SENDSIZE, len));
            let st = status(r.cx);
            if st & STATUS_SUCCESS == 0 {
                return Err(BackdoorError::Send("size"));
            }
            if data.is_empty() {
                return Ok(());
            }
            if st & STATUS_HB != 0 {
                let mut regs = self.hb();
                regs.bp = self.cookie_high;
                regs.di = self.cookie_low;
                let st = status(port.hb_out(regs, data).bx);
                if st & STATUS_SUCCESS != 0 {
                    return Ok(());
                }
                if st & STATUS_CPT != 0 {
                    continue 'retry;
                }
                return Err(BackdoorError::Send("high-bandwidth payload"));
            }
            for chunk in data.chunks(4) {
                // Little-endian packing of the tail too (the Go client gets len%4 == 3 wrong).
                let mut word = [0u8; 4];
                word.get_mut(..chunk.len())
                    .ok_or(BackdoorError::Send("payload"))?
                    .copy_from_slice(chunk);
                let st = status(
                    port.call(self.lb(TYPE_SENDPAYLOAD, u32::from_le_bytes(word)))
                        .cx,
                );
                if st & STATUS_SUCCESS == 0 {
                    if st & STATUS_CPT != 0 {
                        continue 'retry;
                    }
                    return Err(BackdoorError::Send("payload"));
                }
            }
            return Ok(());
        }
        Err(BackdoorError::Checkpoint)
    }

    /// Receives one message; `None` when none is waiting.
    pub fn receive(&self, port: &dyn Port) -> Result<Option<Vec<u8>>, BackdoorError> {
        'retry: for _ in 0..MAX_RETRIES {
            let r = port.call(self.lb(TYPE_RECVSIZE, 0));
            let st = status(r.cx);
            if st & STATUS_SUCCESS == 0 {
                return Err(BackdoorError::Receive("size"));
            }
            if st & STATUS_DORECV == 0 {
                return Ok(None);
            }
            if r.dx >> 16 != TYPE_SENDSIZE {
                return Err(BackdoorError::Receive("unexpected message type"));
            }
            if r.bx > MAX_MESSAGE {
                return Err(BackdoorError::TooLarge(r.bx as usize));
            }
            let mut buf = vec![0u8; r.bx as usize];
            if !buf.is_empty() {
                if st & STATUS_HB != 0 {
                    let mut regs = self.hb();
                    regs.si = self.cookie_high;
                    regs.bp = self.cookie_low;
                    let st = status(port.hb_in(regs, &mut buf).bx);
                    if st & STATUS_SUCCESS == 0 {
                        if st & STATUS_CPT != 0 {
                            continue 'retry;
                        }
                        return Err(BackdoorError::Receive("high-bandwidth payload"));
                    }
                } else {
                    for chunk in buf.chunks_mut(4) {
                        let r = port.call(self.lb(TYPE_RECVPAYLOAD, STATUS_SUCCESS));
                        let st = status(r.cx);
                        if st & STATUS_SUCCESS == 0 {
                            if st & STATUS_CPT != 0 {
                                continue 'retry;
                            }
                            return Err(BackdoorError::Receive("payload"));
                        }
                        if r.dx >> 16 != TYPE_SENDPAYLOAD {
                            return Err(BackdoorError::Receive("unexpected payload type"));
                        }
                        let word = r.bx.to_le_bytes();
                        let n = chunk.len();
                        chunk.copy_from_slice(word.get(..n).unwrap_or(&[]));
                    }
                }
            }
            let st = status(port.call(self.lb(TYPE_RECVSTATUS, STATUS_SUCCESS)).cx);
            if st & STATUS_SUCCESS == 0 {
                if st & STATUS_CPT != 0 {
                    continue 'retry;
                }
                return Err(BackdoorError::Receive("status"));
            }
            return Ok(Some(buf));
        }
        Err(BackdoorError::Checkpoint)
    }

    /// Closes the channel.
    pub fn close(self, port: &dyn Port) -> Result<(), BackdoorError> {
        let st = status(port.call(self.lb(TYPE_CLOSE, 0)).cx);
        if st & STATUS_SUCCESS == 0 {
            return Err(BackdoorError::Close);
        }
        Ok(())
    }
}

/// One RPCI round trip on a throw-away channel (open, send, receive, close), like the
/// original client.
pub fn rpci(port: &dyn Port, request: &[u8]) -> Result<Vec<u8>, BackdoorError> {
    let chan = Channel::open(port, RPCI_PROTOCOL)?;
    let result = chan
        .send(port, request)
        .and_then(|()| chan.receive(port))
        .and_then(|reply| reply.ok_or(BackdoorError::Receive("no reply")));
    let closed = chan.close(port);
    let reply = result?;
    closed?;
    Ok(reply)
}
