//! Frames of the QEMU stand-in protocol.
//!
//! ```text
//! offset  size  field
//!      0     4  sync marker  F5 47 49 01  ("\xF5GI\x01")
//!      4     4  payload length, u32 little endian (≤ MAX_PAYLOAD)
//!      8     4  crc32 of the payload, u32 little endian
//!     12     4  crc32 of bytes 0..12, u32 little endian
//!     16     n  payload: a bincode-2 (standard config) `Message`
//! ```
//!
//! The header has its own checksum so that a corrupted length is caught before we wait for
//! bytes that will never come. On any checksum failure the reader drops one byte and scans for
//! the next marker, so frames following a damaged one are still found. A frame whose payload
//! is still incomplete when a valid header shows up inside it was truncated (the writer died
//! mid-frame): it is dropped at once instead of swallowing the frames behind it.

use bincode::{Decode, Encode};

/// Frame sync marker.
pub const MAGIC: [u8; 4] = [0xF5, b'G', b'I', 0x01];
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest accepted payload: enough for a full `info-get-all` (the VMX caps guest-visible
/// info at 1 MiB by default) with room to spare.
pub const MAX_PAYLOAD: usize = 4 << 20;

const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD>,
> = bincode::config::standard().with_limit::<MAX_PAYLOAD>();

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// Guest → host: an RPCI-style request (`info-get KEY`, `info-set KEY VALUE`,
    /// `info-get-all`).
    Request {
        /// Chosen by the guest; the reply carries it back.
        id: u64,
        /// The request's text.
        command: String,
    },
    /// Host → guest: `1 …` / `0 …`; `entries` (wire values) only for `info-get-all`.
    Reply {
        /// The request answered.
        id: u64,
        /// The RPCI-style reply text.
        reply: String,
        /// Every key and its wire value, for `info-get-all`.
        entries: Vec<(String, String)>,
    },
    /// Host → guest: a [`crate::HostCommand`] in its text form.
    Push {
        /// `reload`, `kill SIG`, `group-kill SIG`, `halt`.
        command: String,
    },
    /// Either way: the peer received something it could not use. `id` names the request
    /// when known; `None` means a damaged frame, whose request (if any) is unknown.
    Error {
        /// The request, when known.
        id: Option<u64>,
        /// What went wrong.
        message: String,
    },
}

/// Frame encoding failures.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// message of {0} bytes exceeds the frame limit
    #[error("message of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
    /// bincode encoding failed: {0}
    #[error("bincode encoding failed: {0}")]
    Encode(String),
}

/// Encodes one message into a complete frame.
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let payload =
        bincode::encode_to_vec(msg, CONFIG).map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge(payload.len()))?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let header_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&header_crc.to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// What the reader found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    /// A whole, intact message.
    Message(Message),
    /// Damaged or undecodable input was skipped.
    Corrupt(String),
}

/// Incremental frame parser: feed bytes with [`FrameReader::push`], drain with
/// [`FrameReader::next_event`].
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Reported the current run of junk already (one error per run, not per byte).
    junk_reported: bool,
    /// How far the incomplete frame at the front has been scanned for an embedded header.
    scanned: usize,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
}

/// A valid header at the start of `b`: its payload length.
fn valid_header(b: &[u8]) -> Option<usize> {
    if b.get(..4)? != MAGIC {
        return None;
    }
    let len = le32(b, 4)? as usize;
    let crc = le32(b, 12)?;
    (crc32fast::hash(b.get(..12)?) == crc && len <= MAX_PAYLOAD).then_some(len)
}

impl FrameReader {
    /// A reader with nothing buffered.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet parsed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.scanned = 0;
    }

    fn junk(&mut self, n: usize, why: &str) -> Option<FrameEvent> {
        self.drop_front(n);
        if self.junk_reported {
            return None;
        }
        self.junk_reported = true;
        Some(FrameEvent::Corrupt(why.to_owned()))
    }

    /// The next complete message or corruption report, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<FrameEvent> {
        loop {
            let Some(start) = self.buf.windows(4).position(|w| w == MAGIC) else {
                // Keep a possible partial marker at the end.
                let keep = self.buf.len().min(3);
                let junk = self.buf.len() - keep;
                if junk > 0 {
                    if let Some(ev) = self.junk(junk, "garbage between frames") {
                        return Some(ev);
                    }
                }
                return None;
            };
            if start > 0 {
                if let Some(ev) = self.junk(start, "garbage between frames") {
                    return Some(ev);
                }
                continue;
            }
            if self.buf.len() < HEADER_LEN {
                return None;
            }
            let Some(len) = valid_header(&self.buf) else {
                if let Some(ev) = self.junk(1, "damaged frame header") {
                    return Some(ev);
                }
                continue;
            };
            let total = HEADER_LEN + len;
            if self.buf.len() < total {
                // Incomplete: was it cut short? Look for a complete valid header after ours.
                let from = self.scanned.max(HEADER_LEN);
                let limit = self.buf.len().saturating_sub(HEADER_LEN - 1);
                let found = (from..limit).find(|&i| {
                    self.buf
                        .get(i..)
                        .is_some_and(|rest| valid_header(rest).is_some())
                });
                if let Some(i) = found {
                    self.junk_reported = false;
                    return self.junk(i, "truncated frame");
                }
                self.scanned = limit.max(HEADER_LEN);
                return None;
            }
            let (Some(payload), Some(crc)) = (self.buf.get(HEADER_LEN..total), le32(&self.buf, 8))
            else {
                return None;
            };
            if crc32fast::hash(payload) != crc {
                self.junk_reported = false;
                if let Some(ev) = self.junk(1, "frame payload checksum mismatch") {
                    return Some(ev);
                }
                continue;
            }
            let decoded = bincode::decode_from_slice::<Message, _>(payload, CONFIG);
            self.drop_front(total);
            self.junk_reported = false;
            return Some(match decoded {
                Ok((msg, used)) if used == len => FrameEvent::Message(msg),
                Ok(_) => FrameEvent::Corrupt("trailing bytes in frame payload".to_owned()),
                Err(e) => FrameEvent::Corrupt(format!("undecodable frame payload: {e}")),
            });
        }
    }

    /// End of stream: reports a frame left incomplete.
    pub fn finish(&mut self) -> Option<FrameEvent> {
        if self.buf.is_empty() {
            return None;
        }
        let n = self.buf.len();
        self.drop_front(n);
        Some(FrameEvent::Corrupt(format!(
            "stream ended inside a frame ({n} bytes)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &Message) -> Vec<u8> {
        match encode_frame(msg) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    fn req(id: u64) -> Message {
        Message::Request {
            id,
            command: format!("info-get guestinfo.vice./key{id}"),
        }
    }

    fn drain(r: &mut FrameReader) -> Vec<FrameEvent> {
        std::iter::from_fn(|| r.next_event()).collect()
    }

    #[test]
    fn layout() {
        let f = frame(&req(1));
        assert_eq!(f[..4], MAGIC);
        let len = u32::from_le_bytes([f[4], f[5], f[6], f[7]]) as usize;
        assert_eq!(f.len(), HEADER_LEN + len);
        assert_eq!(
            u32::from_le_bytes([f[8], f[9], f[10], f[11]]),
            crc32fast::hash(&f[16..])
        );
        assert_eq!(
            u32::from_le_bytes([f[12], f[13], f[14], f[15]]),
            crc32fast::hash(&f[..12])
        );
    }

    #[test]
    fn byte_by_byte() {
        let mut r = FrameReader::new();
        let mut events = Vec::new();
        for m in [req(1), req(2)] {
            for b in frame(&m) {
                r.push(&[b]);
                events.extend(drain(&mut r));
            }
        }
        assert_eq!(
            events,
            [FrameEvent::Message(req(1)), FrameEvent::Message(req(2))]
        );
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn corrupt_payload_resyncs() {
        let mut r = FrameReader::new();
        let mut bad = frame(&req(1));
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        r.push(&bad);
        r.push(&frame(&req(2)));
        let ev = drain(&mut r);
        assert!(matches!(ev[0], FrameEvent::Corrupt(_)), "{ev:?}");
        assert_eq!(ev.last(), Some(&FrameEvent::Message(req(2))));
        assert_eq!(ev.len(), 2, "{ev:?}");
    }

    #[test]
    fn corrupt_length_resyncs_without_waiting() {
        let mut r = FrameReader::new();
        let mut bad = frame(&req(1));
        bad[6] = 0x7F; // length now huge and the header checksum wrong
        r.push(&bad);
        r.push(&frame(&req(2)));
        let ev = drain(&mut r);
        assert!(matches!(ev[0], FrameEvent::Corrupt(_)));
        assert_eq!(ev.last(), Some(&FrameEvent::Message(req(2))));
    }

    #[test]
    fn truncated_frame_is_dropped_when_the_next_arrives() {
        let mut r = FrameReader::new();
        let long = Message::Request {
            id: 9,
            command: "x".repeat(5000),
        };
        let f = frame(&long);
        r.push(&f[..100]);
        assert_eq!(drain(&mut r), []);
        r.push(&frame(&req(3)));
        let ev = drain(&mut r);
        assert_eq!(
            ev,
            [
                FrameEvent::Corrupt("truncated frame".to_owned()),
                FrameEvent::Message(req(3))
            ]
        );
        r.push(&f[..100]);
        assert!(matches!(r.finish(), Some(FrameEvent::Corrupt(_))));
    }

    #[test]
    fn garbage_is_reported_once_per_run() {
        let mut r = FrameReader::new();
        r.push(&[0u8; 1000]);
        r.push(b"more garbage");
        r.push(&frame(&req(4)));
        let ev = drain(&mut r);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[1], FrameEvent::Message(req(4)));
    }

    #[test]
    fn valid_crc_but_bad_payload() {
        let payload = [0xFFu8; 8];
        let mut f = Vec::new();
        f.extend_from_slice(&MAGIC);
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let hcrc = crc32fast::hash(&f);
        f.extend_from_slice(&hcrc.to_le_bytes());
        f.extend_from_slice(&payload);
        let mut r = FrameReader::new();
        r.push(&f);
        r.push(&frame(&req(5)));
        let ev = drain(&mut r);
        assert!(matches!(ev[0], FrameEvent::Corrupt(_)));
        assert_eq!(ev[1], FrameEvent::Message(req(5)));
    }

    #[test]
    fn oversized_length_is_rejected() {
        let mut f = Vec::new();
        f.extend_from_slice(&MAGIC);
        f.extend_from_slice(&(u32::MAX).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        let hcrc = crc32fast::hash(&f);
        f.extend_from_slice(&hcrc.to_le_bytes());
        let mut r = FrameReader::new();
        r.push(&f);
        r.push(&frame(&req(6)));
        let ev = drain(&mut r);
        assert!(matches!(ev[0], FrameEvent::Corrupt(_)));
        assert_eq!(ev.last(), Some(&FrameEvent::Message(req(6))));
    }
}
