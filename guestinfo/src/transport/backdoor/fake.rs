//! A simulated VMX behind the [`Port`] trait: message channels with cookies, low- and
//! high-bandwidth transfers, checkpoint interruptions, an RPCI responder over a key map and a
//! TCLO request queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::channel::*;
use super::port::{Port, Regs};

#[derive(Debug, Default)]
struct Chan {
    protocol: u32,
    cookie: (u32, u32),
    expected: usize,
    incoming: Vec<u8>,
    outgoing: Option<Vec<u8>>,
    out_pos: usize,
}

#[derive(Debug, Default)]
pub struct Vmx {
    chans: HashMap<u16, Chan>,
    next_id: u16,
    /// Offer high-bandwidth transfers.
    pub hb: bool,
    /// Refuse opens that ask for cookies (old VMX).
    pub refuse_cookies: bool,
    /// Interrupt this many transfers with a checkpoint status.
    pub checkpoints: u32,
    /// guestinfo keys (wire values), case-insensitive like the VMX.
    pub keys: BTreeMap<String, String>,
    /// Every RPCI request received.
    pub rpci_log: Vec<Vec<u8>>,
    /// TCLO requests waiting for the guest.
    pub tclo_requests: VecDeque<Vec<u8>>,
    /// Non-empty TCLO responses from the guest.
    pub tclo_responses: Vec<Vec<u8>>,
    /// Every low-bandwidth register call, for protocol assertions.
    pub calls: usize,
}

#[derive(Debug, Default)]
pub struct FakePort {
    vmx: Mutex<Vmx>,
}

fn ok(extra: u32) -> u32 {
    (STATUS_SUCCESS | extra) << 16
}

impl FakePort {
    pub fn new(hb: bool) -> FakePort {
        FakePort {
            vmx: Mutex::new(Vmx {
                hb,
                ..Vmx::default()
            }),
        }
    }

    pub fn vmx(&self) -> MutexGuard<'_, Vmx> {
        self.vmx.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Vmx {
    pub fn chans_open(&self) -> usize {
        self.chans.len()
    }

    /// Forget every channel, as a VMX does across some migrations.
    pub fn drop_channels(&mut self) {
        self.chans.clear();
    }

    fn rpci(&mut self, msg: &[u8]) -> Vec<u8> {
        self.rpci_log.push(msg.to_vec());
        let text = String::from_utf8_lossy(msg).into_owned();
        if let Some(key) = text.strip_prefix("info-get ") {
            return match self.keys.get(&key.to_ascii_lowercase()) {
                Some(v) => format!("1 {v}").into_bytes(),
                None => b"0 No value found".to_vec(),
            };
        }
        if let Some(rest) = text.strip_prefix("info-set ") {
            let Some((k, v)) = rest.split_once(' ') else {
                return b"0 Two and exactly two arguments expected".to_vec();
            };
            if k.contains('/') {
                return b"0 Read-only key".to_vec();
            }
            self.keys.insert(k.to_ascii_lowercase(), v.to_owned());
            return b"1 ".to_vec();
        }
        if text.starts_with("tools.") {
            return b"1 ".to_vec();
        }
        b"0 Unknown command".to_vec()
    }

    /// A complete message arrived on `id`.
    fn deliver(&mut self, id: u16) {
        let Some(chan) = self.chans.get_mut(&id) else {
            return;
        };
        let msg = std::mem::take(&mut chan.incoming);
        let protocol = chan.protocol;
        let reply = if protocol == RPCI_PROTOCOL {
            Some(self.rpci(&msg))
        } else {
            if !msg.is_empty() {
                self.tclo_responses.push(msg);
            }
            self.tclo_requests.pop_front()
        };
        if let Some(chan) = self.chans.get_mut(&id) {
            chan.outgoing = reply;
            chan.out_pos = 0;
        }
    }

    fn checkpoint(&mut self) -> bool {
        if self.checkpoints > 0 {
            self.checkpoints -= 1;
            return true;
        }
        false
    }
}

impl Port for FakePort {
    fn call(&self, r: Regs) -> Regs {
        let mut vmx = self.vmx();
        vmx.calls += 1;
        let mut out = r;
        out.cx = 0;
        if r.ax != MAGIC || r.dx & 0xFFFF != LB_PORT || r.cx & 0xFFFF != CMD_MESSAGE {
            return out;
        }
        let kind = r.cx >> 16;
        if kind == TYPE_OPEN {
            let wants_cookie = r.bx & 0x8000_0000 != 0;
            if wants_cookie && vmx.refuse_cookies {
                return out;
            }
            vmx.next_id += 1;
            let id = vmx.next_id;
            let cookie = (0xC0DE_0000 | u32::from(id), 0x0000_BEEF ^ u32::from(id));
            vmx.chans.insert(
                id,
                Chan {
                    protocol: r.bx & 0x7FFF_FFFF,
                    cookie,
                    ..Chan::default()
                },
            );
            out.cx = ok(0);
            out.dx = u32::from(id) << 16;
            out.si = cookie.0;
            out.di = cookie.1;
            return out;
        }
        let id = (r.dx >> 16) as u16;
        let hb = vmx.hb;
        let Some(chan) = vmx.chans.get_mut(&id) else {
            return out;
        };
        if (r.si, r.di) != chan.cookie {
            return out;
        }
        match kind {
            TYPE_SENDSIZE => {
                chan.expected = r.bx as usize;
                chan.incoming.clear();
                out.cx = ok(if hb { STATUS_HB } else { 0 });
                if chan.expected == 0 {
                    vmx.deliver(id);
                }
            }
            TYPE_SENDPAYLOAD => {
                let want = chan.expected - chan.incoming.len();
                let bytes = r.bx.to_le_bytes();
                chan.incoming.extend_from_slice(&bytes[..want.min(4)]);
                out.cx = ok(0);
                if chan.incoming.len() == chan.expected {
                    vmx.deliver(id);
                }
            }
            TYPE_RECVSIZE => match &chan.outgoing {
                Some(msg) => {
                    out.cx = ok(STATUS_DORECV | if hb { STATUS_HB } else { 0 });
                    out.dx = TYPE_SENDSIZE << 16;
                    out.bx = u32::try_from(msg.len()).unwrap_or(u32::MAX);
                }
                None => out.cx = ok(0),
            },
            TYPE_RECVPAYLOAD => {
                let msg = chan.outgoing.clone().unwrap_or_default();
                let mut word = [0u8; 4];
                let end = (chan.out_pos + 4).min(msg.len());
                let part = &msg[chan.out_pos.min(end)..end];
                word[..part.len()].copy_from_slice(part);
                chan.out_pos = end;
                out.bx = u32::from_le_bytes(word);
                out.dx = TYPE_SENDPAYLOAD << 16;
                out.cx = ok(0);
            }
            TYPE_RECVSTATUS => {
                chan.outgoing = None;
                chan.out_pos = 0;
                out.cx = ok(0);
            }
            TYPE_CLOSE => {
                vmx.chans.remove(&id);
                out.cx = ok(0);
            }
            _ => {}
        }
        out
    }

    fn hb_out(&self, r: Regs, data: &[u8]) -> Regs {
        let mut vmx = self.vmx();
        let mut out = r;
        out.bx = 0;
        if r.dx & 0xFFFF != HB_PORT || r.bx != (STATUS_SUCCESS << 16) {
            return out;
        }
        if vmx.checkpoint() {
            out.bx = STATUS_CPT << 16;
            return out;
        }
        let id = (r.dx >> 16) as u16;
        let Some(chan) = vmx.chans.get_mut(&id) else {
            return out;
        };
        // High-bandwidth out: cookie high in bp, low in di.
        if (r.bp, r.di) != chan.cookie || data.len() != chan.expected {
            return out;
        }
        chan.incoming = data.to_vec();
        vmx.deliver(id);
        out.bx = STATUS_SUCCESS << 16;
        out
    }

    fn hb_in(&self, r: Regs, buf: &mut [u8]) -> Regs {
        let mut vmx = self.vmx();
        let mut out = r;
        out.bx = 0;
        if r.dx & 0xFFFF != HB_PORT || r.bx != (STATUS_SUCCESS << 16) {
            return out;
        }
        if vmx.checkpoint() {
            out.bx = STATUS_CPT << 16;
            return out;
        }
        let id = (r.dx >> 16) as u16;
        let Some(chan) = vmx.chans.get_mut(&id) else {
            return out;
        };
        // High-bandwidth in: cookie high in si, low in bp.
        if (r.si, r.bp) != chan.cookie {
            return out;
        }
        match &chan.outgoing {
            Some(msg) if msg.len() == buf.len() => buf.copy_from_slice(msg),
            _ => return out,
        }
        out.bx = STATUS_SUCCESS << 16;
        out
    }
}
