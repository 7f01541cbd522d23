//! Reading and writing the byte stream: the version exchange, decoding packets out of the
//! read buffer, writing out the sealed ones, the timers, and the poll loop that drives it
//! all.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use super::{
    Driver, KexState, MAX_PRE_VERSION, MAX_VERSION_LINE, PACKETS_PER_ROUND, ROUNDS_PER_POLL,
    WBUF_HARD, WBUF_SOFT,
};
use crate::error::{Error, Result};
use crate::msg;
use crate::shared::GlobalWaiter;

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Parses the peer's version line out of the input; `false` if more input is needed.
    pub(super) fn read_version(&mut self) -> Result<bool> {
        loop {
            let avail = self.rbuf.get(self.rstart..self.rend).unwrap_or(&[]);
            let Some(i) = avail.iter().position(|&b| b == b'\n') else {
                if avail.len() >= MAX_VERSION_LINE {
                    return Err(Error::Version("line too long".into()));
                }
                return Ok(false);
            };
            let mut line = avail.get(..i).unwrap_or(&[]);
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            let line = line.to_vec();
            self.rstart += i + 1;
            if line.starts_with(b"SSH-") {
                if !(line.starts_with(b"SSH-2.0-") || line.starts_with(b"SSH-1.99-")) {
                    return Err(Error::Version(String::from_utf8_lossy(&line).into_owned()));
                }
                debug!(version = %String::from_utf8_lossy(&line), "peer version");
                self.peer_version = Some(line);
                return Ok(true);
            }
            self.pre_version += i + 1;
            if self.pre_version > MAX_PRE_VERSION {
                return Err(Error::Version("no version line".into()));
            }
        }
    }

    /// Decodes and handles buffered packets; returns how many.
    pub(super) fn process_input(&mut self) -> Result<usize> {
        let mut count = 0;
        if self.peer_version.is_none() {
            if !self.read_version()? {
                return Ok(0);
            }
            count += 1;
        }
        let max = self.common().limits.max_packet_len;
        while count < PACKETS_PER_ROUND && !self.closing {
            let seq = self.rx_seq;
            let Some(buf) = self.rbuf.get_mut(self.rstart..self.rend) else {
                break;
            };
            let Some(opened) = self.rx.open(seq, buf, &mut self.open_state, max)? else {
                break;
            };
            let range = (self.rstart + opened.payload.start)..(self.rstart + opened.payload.end);
            self.rstart += opened.consumed;
            self.rx_seq = seq.wrapping_add(1);
            self.rx_bytes = self.rx_bytes.saturating_add(opened.consumed as u64);
            // Borrow the buffer out of self so the handlers can take `&mut self`.
            let rbuf = std::mem::take(&mut self.rbuf);
            let res = match rbuf.get(range) {
                Some(payload) => self.handle_packet(seq, payload),
                None => Err(Error::Malformed("payload range")),
            };
            self.rbuf = rbuf;
            res?;
            count += 1;
        }
        if self.rx_bytes > self.common().rekey_bytes {
            self.shared.lock().rekey_requested = true;
        }
        Ok(count)
    }

    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize>> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() || self.rstart > self.rbuf.len() / 2 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let Some(space) = self.rbuf.get_mut(self.rend..) else {
            return Poll::Ready(Ok(0));
        };
        if space.is_empty() {
            // Cannot happen: packet lengths are checked against a limit below the buffer
            // size. Treated as a protocol error rather than a hang.
            return Poll::Ready(Err(Error::Limit("input buffer")));
        }
        let mut rb = ReadBuf::new(space);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.rend += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    pub(super) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Result<bool> {
        let mut progress = false;
        while self.wpos < self.wbuf.len() {
            let chunk = self.wbuf.get(self.wpos..).unwrap_or(&[]);
            match Pin::new(&mut self.io).poll_write(cx, chunk) {
                Poll::Ready(Ok(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    self.need_flush = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => break,
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > 4 * WBUF_SOFT {
                self.wbuf.shrink_to(WBUF_SOFT);
            }
            if self.need_flush {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.need_flush = false,
                    Poll::Ready(Err(e)) => return Err(e.into()),
                    Poll::Pending => {}
                }
            }
        } else if self.wpos > WBUF_SOFT {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(progress)
    }

    pub(super) fn poll_timers(&mut self, cx: &mut Context<'_>) -> Result<()> {
        if let Some(t) = self.kex_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Err(Error::Timeout("the key exchange"));
            }
        }
        if let Some(t) = self.rekey_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                self.rekey_timer = None;
                self.shared.lock().rekey_requested = true;
            }
        }
        if let (Some(k), Some(t)) = (self.common().keepalive, self.keepalive_timer.as_mut()) {
            if t.as_mut().poll(cx).is_ready() {
                if self.keepalive_missed >= k.max_missed {
                    return Err(Error::KeepaliveTimeout);
                }
                self.keepalive_missed += 1;
                t.as_mut().reset(Instant::now() + k.interval);
                // Poll once more so the new deadline is registered with the timer.
                let _ = t.as_mut().poll(cx);
                let mut g = self.shared.lock();
                g.push(msg::global_request("keepalive@openssh.com", true, &[]));
                g.global_pending.push_back(GlobalWaiter::Keepalive);
            }
        }
        Ok(())
    }

    pub(super) fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.wake.register(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            let mut progress = false;
            if !self.closing {
                self.poll_timers(cx)?;
                let (rekey, disconnect) = {
                    let mut g = self.shared.lock();
                    (std::mem::take(&mut g.rekey_requested), g.disconnect.take())
                };
                if rekey && matches!(self.kex, KexState::Idle) && self.initial_kex_done {
                    self.start_kex()?;
                }
                self.flush_replies();
                if let Some((reason, description)) = disconnect {
                    // Send what is queued first, unless a key exchange holds it.
                    self.drain_outbound(true);
                    self.send(&msg::disconnect(reason, &description));
                    self.closing = true;
                } else {
                    progress |= self.drain_outbound(false);
                }
            }
            progress |= self.poll_write_out(cx)?;
            if self.closing {
                if self.pending_write() > 0 {
                    return Poll::Pending;
                }
                if !self.shutdown_done {
                    match Pin::new(&mut self.io).poll_shutdown(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(_) => self.shutdown_done = true,
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if !self.peer_eof && self.pending_write() < WBUF_HARD {
                match self.poll_fill(cx)? {
                    Poll::Ready(0) => {
                        self.peer_eof = true;
                        progress = true;
                    }
                    Poll::Ready(_) => progress = true,
                    Poll::Pending => {}
                }
            }
            let handled = self.process_input()?;
            if handled > 0 {
                progress = true;
            }
            if self.peer_eof && handled == 0 && !self.closing {
                let clean = self.authenticated && self.rstart == self.rend;
                // Get out whatever we still have (e.g. replies), best effort.
                let _ = self.poll_write_out(cx);
                return Poll::Ready(if clean { Ok(()) } else { Err(Error::Eof) });
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Plenty of work left: yield so other tasks on this thread get to run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Ends the connection for every handle.
    pub(super) fn finish(&mut self, reason: Option<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let wakers = self.shared.lock().mark_closed(reason);
        for w in wakers {
            w.wake();
        }
    }
}
