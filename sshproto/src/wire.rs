//! SSH wire encoding (RFC 4251 §5): a bounds-checked reader over a byte slice and
//! writer helpers over `Vec<u8>`.

use crate::error::{Error, Result};

/// Reads SSH data types from a byte slice; every read checks the remaining length.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::Malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// A `byte`.
    pub fn u8(&mut self) -> Result<u8> {
        let b = self.take(1)?;
        b.first().copied().ok_or(Error::Malformed("truncated"))
    }

    /// A `boolean`: any non-zero value is true.
    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.u8()? != 0)
    }

    /// A big-endian `uint32`.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        let arr: [u8; 4] = b.try_into().map_err(|_| Error::Malformed("truncated"))?;
        Ok(u32::from_be_bytes(arr))
    }

    /// A `string`: length-prefixed bytes.
    pub fn string(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| Error::Malformed("string length"))?;
        self.take(len)
    }

    /// A `string` that must be UTF-8 (names, descriptions).
    pub fn utf8(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.string()?).map_err(|_| Error::Malformed("invalid UTF-8"))
    }

    /// A `string` that is UTF-8 when possible; otherwise lossily converted. Used for
    /// human-readable texts where rejecting the whole message would be unhelpful.
    pub fn text(&mut self) -> Result<String> {
        Ok(String::from_utf8_lossy(self.string()?).into_owned())
    }

    /// An optional trailing `string` (some peers omit the language tag).
    pub fn opt_text(&mut self) -> Result<String> {
        if self.buf.is_empty() {
            Ok(String::new())
        } else {
            self.text()
        }
    }

    /// A `name-list`, returned unsplit.
    pub fn name_list(&mut self) -> Result<&'a str> {
        let s = self.string()?;
        let s = std::str::from_utf8(s).map_err(|_| Error::Malformed("invalid name-list"))?;
        if !s.is_ascii() {
            return Err(Error::Malformed("non-ASCII name-list"));
        }
        Ok(s)
    }

    /// An `mpint`, returned as its raw two's-complement bytes.
    pub fn mpint(&mut self) -> Result<&'a [u8]> {
        self.string()
    }
}

/// Appends a `boolean`.
pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// Appends a big-endian `uint32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a `string`. Lengths above `u32::MAX` cannot occur: every payload we build
/// is bounded far below that by the packet limits, so saturating is only a guard.
pub fn put_string(out: &mut Vec<u8>, v: &[u8]) {
    let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
    put_u32(out, len);
    out.extend_from_slice(v);
}

/// Appends a `name-list`.
pub fn put_name_list<S: AsRef<str>>(out: &mut Vec<u8>, names: &[S]) {
    let joined = names
        .iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join(",");
    put_string(out, joined.as_bytes());
}

/// Appends an `mpint` holding the non-negative big-endian integer `magnitude`.
pub fn put_mpint_positive(out: &mut Vec<u8>, magnitude: &[u8]) {
    // The encoding rules (strip leading zeros, add a zero byte when the top bit is set)
    // come from ssh-key's Mpint; fall back to doing them here only if it refuses the input.
    use ssh_encoding::Encode;
    if let Ok(m) = ssh_key::Mpint::from_positive_bytes(magnitude) {
        let mut tmp = Vec::with_capacity(magnitude.len() + 5);
        if m.encode(&mut tmp).is_ok() {
            out.extend_from_slice(&tmp);
            return;
        }
    }
    let start = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len());
    let trimmed = magnitude.get(start..).unwrap_or(&[]);
    let pad = trimmed.first().is_some_and(|&b| b & 0x80 != 0);
    let len = trimmed.len() + usize::from(pad);
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

/// Splits a `name-list` into its names, ignoring empty entries.
pub fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpint_encoding() {
        let mut v = Vec::new();
        put_mpint_positive(&mut v, &[0, 0, 0x80, 1]);
        assert_eq!(v, [0, 0, 0, 3, 0, 0x80, 1]);
        v.clear();
        put_mpint_positive(&mut v, &[0, 0x7f]);
        assert_eq!(v, [0, 0, 0, 1, 0x7f]);
        v.clear();
        put_mpint_positive(&mut v, &[0, 0]);
        assert_eq!(v, [0, 0, 0, 0]);
    }

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[0, 0, 0, 5, 1, 2]);
        assert!(r.string().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(r.string().is_err());
        let mut r = Reader::new(&[0, 0, 0, 1, b'a', 1]);
        assert_eq!(r.utf8().unwrap_or_default(), "a");
        assert!(r.bool().unwrap_or(false));
        assert!(r.u8().is_err());
    }
}
