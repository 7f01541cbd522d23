//! Session output records carried on the output channel (a virtio-serial port under QEMU,
//! `/dev/ttyS2` on vSphere) from the tether to the host.
//!
//! Every record is one frame:
//!
//! ```text
//! +---------+------------+------------+----------------------------+
//! | MAGIC 4 | len u32 LE | crc u32 LE | body: bincode 2 (Record)   |
//! +---------+------------+------------+----------------------------+
//! ```
//!
//! `crc` is the CRC-32 (IEEE) of `body`. `len` is at most [`MAX_BODY`]. The magic lets a reader
//! that meets a damaged stretch (a flipped byte in a stored log, a torn write) resynchronise on
//! the next frame instead of giving up; each skipped stretch is reported as [`Damage`].
//!
//! The body is encoded with bincode's standard configuration (varint integers). Any change to
//! [`Record`] is a wire change: the snapshot test in this crate pins the bytes.

pub mod vic;

use std::io::{self, Read};

/// Frame sync marker. Chosen to be unlikely in text output (two bytes outside UTF-8's
/// single-byte range and a NUL).
pub const MAGIC: [u8; 4] = [0xC7, 0x7E, 0x00, 0xF1];
/// Largest body a frame may carry.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest payload a writer should put in one record (leaves room for the header fields).
pub const MAX_PAYLOAD: usize = 60 * 1024;
const HEADER: usize = 12;

/// Which output stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum Stream {
    /// The process's standard output (for a tty session, all of its output).
    Stdout,
    /// The process's standard error.
    Stderr,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Body {
    /// Bytes the process wrote.
    Data(Vec<u8>),
    /// The stream reached its end: the process and every descendant closed it.
    Eof,
}

/// One unit of output.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Record {
    /// Session or exec ID the output belongs to.
    pub session: String,
    /// Stream the bytes came from.
    pub stream: Stream,
    /// Per (session, stream) sequence number, starting at 0 and without gaps; a gap seen by a
    /// reader means records were lost to damage.
    pub seq: u64,
    /// Wall-clock time the bytes were read from the process, in nanoseconds since the Unix
    /// epoch (UTC).
    pub time_ns: u64,
    /// The content.
    pub body: Body,
}

/// Errors building a frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// record body is {0} bytes, more than the frame limit
    #[error("record body is {0} bytes, more than the frame limit")]
    TooLarge(usize),
    /// record could not be encoded
    #[error("record could not be encoded: {0}")]
    Bincode(#[from] bincode::error::EncodeError),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// Encodes one record as a complete frame.
pub fn encode(record: &Record) -> Result<Vec<u8>, EncodeError> {
    let body = bincode::encode_to_vec(record, config())?;
    let len = match u32::try_from(body.len()) {
        Ok(len) if body.len() <= MAX_BODY => len,
        _ => return Err(EncodeError::TooLarge(body.len())),
    };
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A stretch of input that did not hold valid frames and was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Number of bytes skipped.
    pub bytes: usize,
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A valid record.
    Record(Record),
    /// Bytes that were skipped before the next valid frame.
    Damage(Damage),
}

/// Incremental frame decoder: push bytes as they arrive, pull records.
///
/// Never fails and never panics: anything that is not a valid frame is skipped and reported as
/// [`Damage`], and memory is bounded by one maximal frame plus the last push.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    pos: usize,
    /// Bytes skipped since the last reported damage.
    skipped: usize,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends input.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Next item, or `None` when more input is needed.
    pub fn next_item(&mut self) -> Option<Item> {
        loop {
            let data = &self.buf[self.pos..];
            // Find the marker; everything before it is damage.
            let Some(at) = find(data, &MAGIC) else {
                // Keep the last bytes that might be the start of a marker.
                let keep = data.len().min(MAGIC.len() - 1);
                let drop = data.len() - keep;
                self.pos += drop;
                self.skipped += drop;
                return self.take_damage_or_none();
            };
            if at > 0 {
                self.pos += at;
                self.skipped += at;
                continue;
            }
            if data.len() < HEADER {
                return self.take_damage_or_none();
            }
            let len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
            let crc = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
            if len > MAX_BODY {
                self.pos += 1;
                self.skipped += 1;
                continue;
            }
            if data.len() < HEADER + len {
                return self.take_damage_or_none();
            }
            let body = &data[HEADER..HEADER + len];
            let decoded = if crc32fast::hash(body) == crc {
                bincode::decode_from_slice::<Record, _>(body, config())
                    .ok()
                    .filter(|(_, used)| *used == len)
            } else {
                None
            };
            match decoded {
                Some((record, _)) => {
                    if self.skipped > 0 {
                        // Report the damage first; the record is decoded again next call.
                        return self.take_damage_or_none();
                    }
                    self.pos += HEADER + len;
                    return Some(Item::Record(record));
                }
                None => {
                    self.pos += 1;
                    self.skipped += 1;
                }
            }
        }
    }

    /// Call at end of input: whatever is left is damage (a truncated last frame).
    pub fn finish(&mut self) -> Option<Damage> {
        let left = self.pending() + self.skipped;
        self.pos = self.buf.len();
        self.skipped = 0;
        (left > 0).then_some(Damage { bytes: left })
    }

    fn take_damage_or_none(&mut self) -> Option<Item> {
        if self.skipped == 0 {
            return None;
        }
        let bytes = std::mem::take(&mut self.skipped);
        Some(Item::Damage(Damage { bytes }))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Blocking reader over any byte source (a stored log file, a socket).
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
    decoder: Decoder,
    eof: bool,
}

impl<R: Read> Reader<R> {
    /// Wraps a byte source.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: Decoder::new(),
            eof: false,
        }
    }

    /// Next item; `Ok(None)` at the end of input.
    pub fn next_item(&mut self) -> io::Result<Option<Item>> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(item) = self.decoder.next_item() {
                return Ok(Some(item));
            }
            if self.eof {
                return Ok(self.decoder.finish().map(Item::Damage));
            }
            match self.inner.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.decoder.push(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(seq: u64, stream: Stream, data: &[u8]) -> Record {
        Record {
            session: "abc".into(),
            stream,
            seq,
            time_ns: 1_500_000_000_123_456_789,
            body: Body::Data(data.to_vec()),
        }
    }

    fn decode_all(bytes: &[u8]) -> Vec<Item> {
        let mut d = Decoder::new();
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(i) = d.next_item() {
            out.push(i);
        }
        if let Some(dmg) = d.finish() {
            out.push(Item::Damage(dmg));
        }
        out
    }

    /// Pins the wire bytes: a failure here means the format changed. Review the change, bump
    /// readers, then update the snapshot.
    #[test]
    fn wire_snapshot() {
        let frame = encode(&rec(7, Stream::Stderr, b"hi\n")).unwrap();
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "c77e00f114000000cedc3bd5036162630107fd15cd71820d12d114000368690a"
        );
    }

    #[test]
    fn round_trip_and_eof() {
        let mut bytes = encode(&rec(0, Stream::Stdout, b"hello\n")).unwrap();
        let eof = Record {
            body: Body::Eof,
            ..rec(1, Stream::Stdout, b"")
        };
        bytes.extend(encode(&eof).unwrap());
        let items = decode_all(&bytes);
        assert_eq!(
            items,
            vec![
                Item::Record(rec(0, Stream::Stdout, b"hello\n")),
                Item::Record(eof)
            ]
        );
    }

    #[test]
    fn flipped_byte_is_skipped_and_counted() {
        let a = encode(&rec(0, Stream::Stdout, b"one\n")).unwrap();
        let b = encode(&rec(1, Stream::Stdout, b"two\n")).unwrap();
        let c = encode(&rec(2, Stream::Stdout, b"three\n")).unwrap();
        let mut bytes = [a.clone(), b.clone(), c.clone()].concat();
        bytes[a.len() + HEADER + 2] ^= 0x40;
        let items = decode_all(&bytes);
        assert_eq!(
            items,
            vec![
                Item::Record(rec(0, Stream::Stdout, b"one\n")),
                Item::Damage(Damage { bytes: b.len() }),
                Item::Record(rec(2, Stream::Stdout, b"three\n")),
            ]
        );
    }

    #[test]
    fn garbage_before_and_truncated_tail() {
        let a = encode(&rec(0, Stream::Stdout, b"x")).unwrap();
        let mut bytes = b"garbage".to_vec();
        bytes.extend(&a);
        bytes.extend(&a[..5]);
        let items = decode_all(&bytes);
        assert_eq!(
            items,
            vec![
                Item::Damage(Damage { bytes: 7 }),
                Item::Record(rec(0, Stream::Stdout, b"x")),
                Item::Damage(Damage { bytes: 5 }),
            ]
        );
    }

    #[test]
    fn byte_at_a_time() {
        let bytes = [
            encode(&rec(0, Stream::Stdout, b"a")).unwrap(),
            encode(&rec(1, Stream::Stderr, b"b")).unwrap(),
        ]
        .concat();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in bytes {
            d.push(&[b]);
            while let Some(i) = d.next_item() {
                got.push(i);
            }
        }
        assert_eq!(got.len(), 2);
        assert!(d.finish().is_none());
    }

    #[test]
    fn oversized_record_is_refused() {
        let big = rec(0, Stream::Stdout, &vec![b'a'; MAX_BODY + 1]);
        assert!(matches!(
            encode(&big),
            Err(EncodeError::TooLarge(_)) | Err(EncodeError::Bincode(_))
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_all(&bytes);
        }

        #[test]
        fn records_survive_chunking(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20), cut in 1usize..97) {
            let recs: Vec<Record> = payloads.iter().enumerate().map(|(i, p)| rec(i as u64, Stream::Stdout, p)).collect();
            let bytes: Vec<u8> = recs.iter().flat_map(|r| encode(r).unwrap()).collect();
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.push(chunk);
                while let Some(Item::Record(r)) = d.next_item() { got.push(r); }
            }
            prop_assert_eq!(got, recs);
        }
    }
}
