//! The original VIC tether's output log format (`lib/iolog`), for a VIC VCH that reads the
//! VM's `output.log` itself.
//!
//! A stream of entries `header ‖ payload`. The header is 16 ASCII bytes: standard base64
//! (padded) of 10 bytes, a little-endian `u64` timestamp in UTC nanoseconds and a
//! little-endian `u16` holding `payload_len << 4 | stream << 3`. Payloads are at most 4095
//! bytes. Writers cut their input at newlines: each complete line is one entry (longer lines
//! are cut into 4095-byte entries) and a partial line waits for its newline or the end of the
//! stream.
//!
//! Where the original was weak we differ without breaking readers: the stream bit is set for
//! stderr (the original always wrote 0 although the format defines it), and partial lines
//! are buffered per stream (the original shared one buffer between stdout and stderr, so
//! their partial lines could mix).

use base64::Engine;

use crate::Stream;

/// Largest payload of one entry (12-bit size field).
pub const MAX_ENTRY: usize = 4095;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;

/// Encodes one entry. `payload` must be at most [`MAX_ENTRY`] bytes (longer input is cut by
/// [`LineSplitter`]); anything longer is truncated to that size.
pub fn entry(time_ns: u64, stream: Stream, payload: &[u8]) -> Vec<u8> {
    let payload = payload
        .get(..MAX_ENTRY.min(payload.len()))
        .unwrap_or(payload);
    let stream_bit: u16 = match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    };
    // At most MAX_ENTRY (4095) bytes: the length fits the header's 12 bits.
    let len = u16::try_from(payload.len()).unwrap_or(0x0fff);
    let word = len << 4 | stream_bit << 3;
    let mut raw = [0u8; 10];
    raw[..8].copy_from_slice(&time_ns.to_le_bytes());
    raw[8..].copy_from_slice(&word.to_le_bytes());
    let mut out = base64::engine::general_purpose::STANDARD
        .encode(raw)
        .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Cuts one stream's output into entries at newlines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    partial_time: u64,
}

impl LineSplitter {
    /// Adds output read at `time_ns`; returns the encoded entries that are complete.
    pub fn push(&mut self, time_ns: u64, stream: Stream, mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.partial.is_empty() {
                self.partial_time = time_ns;
            }
            let room = MAX_ENTRY - self.partial.len();
            let take = match data.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => nl + 1,
                None => room.min(data.len()),
            };
            let (head, rest) = data.split_at(take);
            self.partial.extend_from_slice(head);
            data = rest;
            if self.partial.last() == Some(&b'\n') || self.partial.len() == MAX_ENTRY {
                out.extend(entry(self.partial_time, stream, &self.partial));
                self.partial.clear();
            }
        }
        out
    }

    /// End of the stream: the buffered partial line, if any.
    pub fn finish(&mut self, stream: Stream) -> Vec<u8> {
        if self.partial.is_empty() {
            return Vec::new();
        }
        let e = entry(self.partial_time, stream, &self.partial);
        self.partial.clear();
        e
    }
}

/// One decoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time_ns: u64,
    pub stream: Stream,
    pub payload: Vec<u8>,
}

/// Decodes a whole VIC log, skipping damaged headers the way the original reader did (to
/// the byte after the first non-base64 byte). Returns the entries and the bytes skipped.
pub fn decode_all(data: &[u8]) -> (Vec<Entry>, usize) {
    let (entries, used, skipped) = decode_prefix(data);
    (entries, skipped + data.len() - used)
}

/// Incremental decoder for a live VIC log stream.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes skipped as damage so far.
    pub skipped: usize,
}

impl Decoder {
    /// Adds input; returns the entries it completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Entry> {
        self.buf.extend_from_slice(bytes);
        let (entries, used, skipped) = decode_prefix(&self.buf);
        self.skipped += skipped;
        self.buf.drain(..used);
        entries
    }
}

/// Decodes complete entries from the front of `data`: (entries, bytes used, of which skipped).
fn decode_prefix(mut data: &[u8]) -> (Vec<Entry>, usize, usize) {
    let total = data.len();
    let mut entries = Vec::new();
    let mut skipped = 0;
    while data.len() >= HEADER_LEN {
        let header = &data[..HEADER_LEN];
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header)
            .ok()
            .filter(|d| d.len() == 10);
        let Some(raw) = decoded else {
            let bad = header.iter().position(|b| {
                !(b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/' || *b == b'=')
            });
            let skip = bad.map(|p| p + 1).unwrap_or(1);
            skipped += skip;
            data = &data[skip..];
            continue;
        };
        let time_ns = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let word = u16::from_le_bytes([raw[8], raw[9]]);
        let len = usize::from(word >> 4);
        let stream = if word & 0b1000 != 0 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let Some(payload) = data.get(HEADER_LEN..HEADER_LEN + len) else {
            // Incomplete: wait for more.
            break;
        };
        entries.push(Entry {
            time_ns,
            stream,
            payload: payload.to_vec(),
        });
        data = &data[HEADER_LEN + len..];
    }
    (entries, total - data.len(), skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: u64 = 1_500_000_000_123_456_789;

    #[test]
    fn matches_the_original_bytes() {
        // The spec's worked example, produced by running the original writer.
        let mut s = LineSplitter::default();
        let mut out = s.push(TS, Stream::Stdout, b"hello\npartial");
        out.extend(s.finish(Stream::Stdout));
        assert_eq!(
            out,
            b"Fc1xgg0S0RRgAA==hello\nFc1xgg0S0RRwAA==partial".to_vec()
        );
    }

    #[test]
    fn stderr_sets_the_stream_bit_and_round_trips() {
        let e = entry(TS, Stream::Stderr, b"oops\n");
        let (entries, skipped) = decode_all(&e);
        assert_eq!(skipped, 0);
        assert_eq!(
            entries,
            vec![Entry {
                time_ns: TS,
                stream: Stream::Stderr,
                payload: b"oops\n".to_vec()
            }]
        );
    }

    #[test]
    fn long_lines_are_cut_at_4095() {
        let mut s = LineSplitter::default();
        let line = vec![b'x'; 10_000];
        let mut out = s.push(TS, Stream::Stdout, &line);
        out.extend(s.push(TS, Stream::Stdout, b"\n"));
        let (entries, _) = decode_all(&out);
        let sizes: Vec<usize> = entries.iter().map(|e| e.payload.len()).collect();
        assert_eq!(sizes, vec![4095, 4095, 1811]);
    }

    #[test]
    fn incremental_decoding_matches_whole() {
        let mut all = Vec::new();
        for i in 0..20 {
            all.extend(entry(
                TS + i,
                if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                format!("line {i}\n").as_bytes(),
            ));
        }
        let (whole, _) = decode_all(&all);
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in all.chunks(7) {
            got.extend(d.push(chunk));
        }
        assert_eq!(got, whole);
        assert_eq!(d.skipped, 0);
    }

    #[test]
    fn garbage_is_skipped() {
        let mut data = b"\x00\x01junk".to_vec();
        data.extend(entry(TS, Stream::Stdout, b"ok\n"));
        let (entries, skipped) = decode_all(&data);
        assert_eq!(entries.len(), 1);
        assert!(skipped > 0);
    }
}
