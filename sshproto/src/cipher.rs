//! Binary packet protocol (RFC 4253 §6): framing, padding, encryption and integrity.
//!
//! Every primitive comes from RustCrypto (`aes` + `ctr`, `chacha20`, `poly1305`, `hmac` +
//! `sha2`, `subtle`); this module only arranges them the way the SSH specifications say.

use std::fmt;
use std::ops::Range;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use hmac::{Hmac, Mac as _};
use poly1305::universal_hash::KeyInit;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// A cipher for the binary packet protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// `chacha20-poly1305@openssh.com` (AEAD; no separate MAC).
    ChaCha20Poly1305,
    /// `aes256-ctr`.
    Aes256Ctr,
    /// `aes128-ctr`.
    Aes128Ctr,
}

impl Cipher {
    /// Every supported cipher, in default preference order.
    pub const ALL: [Cipher; 3] = [
        Cipher::ChaCha20Poly1305,
        Cipher::Aes256Ctr,
        Cipher::Aes128Ctr,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305@openssh.com",
            Cipher::Aes256Ctr => "aes256-ctr",
            Cipher::Aes128Ctr => "aes128-ctr",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether the cipher authenticates on its own (the MAC list is then ignored).
    pub fn is_aead(self) -> bool {
        matches!(self, Cipher::ChaCha20Poly1305)
    }

    pub(crate) fn key_len(self) -> usize {
        match self {
            Cipher::ChaCha20Poly1305 => 64,
            Cipher::Aes256Ctr => 32,
            Cipher::Aes128Ctr => 16,
        }
    }

    pub(crate) fn iv_len(self) -> usize {
        match self {
            Cipher::ChaCha20Poly1305 => 0,
            Cipher::Aes256Ctr | Cipher::Aes128Ctr => 16,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message authentication code for the non-AEAD ciphers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mac {
    /// `hmac-sha2-256-etm@openssh.com` (encrypt-then-MAC).
    HmacSha256Etm,
    /// `hmac-sha2-256` (MAC over the plaintext).
    HmacSha256,
}

impl Mac {
    /// Every supported MAC, in default preference order.
    pub const ALL: [Mac; 2] = [Mac::HmacSha256Etm, Mac::HmacSha256];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Mac::HmacSha256Etm => "hmac-sha2-256-etm@openssh.com",
            Mac::HmacSha256 => "hmac-sha2-256",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    pub(crate) fn key_len(self) -> usize {
        32
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Keys for one direction, as derived by the key exchange.
pub(crate) struct DirectionKeys {
    pub cipher: Cipher,
    pub mac: Option<Mac>,
    pub iv: Zeroizing<Vec<u8>>,
    pub key: Zeroizing<Vec<u8>>,
    pub mac_key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectionKeys")
            .field("cipher", &self.cipher)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;
type ChaCha = chacha20::ChaCha20Legacy;

pub(crate) enum CtrKind {
    A128(Box<ctr::Ctr128BE<aes::Aes128>>),
    A256(Box<ctr::Ctr128BE<aes::Aes256>>),
}

impl CtrKind {
    fn apply(&mut self, buf: &mut [u8]) {
        match self {
            CtrKind::A128(c) => c.apply_keystream(buf),
            CtrKind::A256(c) => c.apply_keystream(buf),
        }
    }
}

/// The state of one direction of the packet protocol.
pub(crate) enum PacketCipher {
    /// Before the first NEWKEYS.
    None,
    /// AES-CTR with HMAC-SHA-256, MAC over plaintext or (`etm`) over ciphertext.
    Ctr {
        ctr: CtrKind,
        mac: Box<HmacSha256>,
        etm: bool,
    },
    /// chacha20-poly1305@openssh.com: `main` encrypts payloads, `len` the length field.
    ChaCha {
        main: Zeroizing<[u8; 32]>,
        len: Zeroizing<[u8; 32]>,
    },
}

impl fmt::Debug for PacketCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketCipher::None => "PacketCipher::None",
            PacketCipher::Ctr { etm: true, .. } => "PacketCipher::Ctr(etm)",
            PacketCipher::Ctr { .. } => "PacketCipher::Ctr",
            PacketCipher::ChaCha { .. } => "PacketCipher::ChaCha",
        })
    }
}

/// Progress of decoding the packet at the head of the input buffer; only CTR without
/// EtM needs it, because its length field is decrypted (once) before the packet is whole.
#[derive(Debug, Default)]
pub(crate) struct OpenState {
    len: Option<u32>,
}

/// A decoded packet inside the input buffer.
#[derive(Debug)]
pub(crate) struct Opened {
    /// Bytes of the buffer the packet used, MAC included.
    pub consumed: usize,
    /// Where its payload is.
    pub payload: Range<usize>,
}

fn be32(buf: &[u8]) -> Option<u32> {
    let arr: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(arr))
}

fn chacha_nonce(seq: u32) -> [u8; 8] {
    u64::from(seq).to_be_bytes()
}

fn chacha_poly_key(main: &[u8; 32], nonce: &[u8; 8]) -> (ChaCha, Zeroizing<[u8; 32]>) {
    let mut c = ChaCha::new(main.into(), nonce.into());
    let mut poly_key = Zeroizing::new([0u8; 32]);
    c.apply_keystream(poly_key.as_mut());
    // The payload is encrypted from block 1 on; block 0 only yields the Poly1305 key.
    c.seek(64u64);
    (c, poly_key)
}

impl PacketCipher {
    pub fn new(keys: &DirectionKeys) -> Result<Self> {
        let bad = |_| Error::Kex("derived key has the wrong length");
        Ok(match keys.cipher {
            Cipher::ChaCha20Poly1305 => {
                let k: &[u8] = &keys.key;
                let main: [u8; 32] = k
                    .get(..32)
                    .ok_or(Error::Kex("short key"))?
                    .try_into()
                    .map_err(bad)?;
                let len: [u8; 32] = k
                    .get(32..64)
                    .ok_or(Error::Kex("short key"))?
                    .try_into()
                    .map_err(bad)?;
                PacketCipher::ChaCha {
                    main: Zeroizing::new(main),
                    len: Zeroizing::new(len),
                }
            }
            Cipher::Aes128Ctr | Cipher::Aes256Ctr => {
                let mac_alg = keys.mac.ok_or(Error::Kex("no MAC for a non-AEAD cipher"))?;
                let ctr = if keys.cipher == Cipher::Aes128Ctr {
                    CtrKind::A128(Box::new(
                        ctr::Ctr128BE::<aes::Aes128>::new_from_slices(&keys.key, &keys.iv)
                            .map_err(|_| Error::Kex("bad AES key length"))?,
                    ))
                } else {
                    CtrKind::A256(Box::new(
                        ctr::Ctr128BE::<aes::Aes256>::new_from_slices(&keys.key, &keys.iv)
                            .map_err(|_| Error::Kex("bad AES key length"))?,
                    ))
                };
                let mac = <HmacSha256 as hmac::Mac>::new_from_slice(&keys.mac_key)
                    .map_err(|_| Error::Kex("bad MAC key"))?;
                PacketCipher::Ctr {
                    ctr,
                    mac: Box::new(mac),
                    etm: mac_alg == Mac::HmacSha256Etm,
                }
            }
        })
    }

    fn block_size(&self) -> usize {
        match self {
            PacketCipher::None | PacketCipher::ChaCha { .. } => 8,
            PacketCipher::Ctr { .. } => 16,
        }
    }

    fn mac_len(&self) -> usize {
        match self {
            PacketCipher::None => 0,
            PacketCipher::Ctr { .. } => 32,
            PacketCipher::ChaCha { .. } => 16,
        }
    }

    /// Whether the length field is left out of the block alignment.
    fn aligned_without_length(&self) -> bool {
        matches!(
            self,
            PacketCipher::ChaCha { .. } | PacketCipher::Ctr { etm: true, .. }
        )
    }

    /// Frames, pads, encrypts and authenticates `payload`, appending the packet to `out`.
    pub fn seal(&mut self, seq: u32, payload: &[u8], out: &mut Vec<u8>) {
        let bs = self.block_size();
        let covered = if self.aligned_without_length() { 1 } else { 5 } + payload.len();
        let mut pad = bs - covered % bs;
        if pad < 4 {
            pad += bs;
        }
        let packet_len = 1 + payload.len() + pad;
        let start = out.len();
        out.reserve(4 + packet_len + self.mac_len());
        // Payload sizes are bounded by the caller far below u32::MAX.
        out.extend_from_slice(&u32::try_from(packet_len).unwrap_or(u32::MAX).to_be_bytes());
        // pad <= 2 * 16, so it fits a byte.
        out.push(u8::try_from(pad).unwrap_or(u8::MAX));
        out.extend_from_slice(payload);
        let pad_start = out.len();
        out.resize(pad_start + pad, 0);
        if let Some(p) = out.get_mut(pad_start..) {
            // Padding only needs to be unpredictable; zeros remain if the OS RNG fails.
            let _ = OsRng.try_fill_bytes(p);
        }
        let seq_bytes = seq.to_be_bytes();
        match self {
            PacketCipher::None => {}
            PacketCipher::Ctr { ctr, mac, etm } => {
                let mut m = (**mac).clone();
                m.update(&seq_bytes);
                if *etm {
                    if let Some(body) = out.get_mut(start + 4..) {
                        ctr.apply(body);
                    }
                    m.update(out.get(start..).unwrap_or(&[]));
                } else {
                    m.update(out.get(start..).unwrap_or(&[]));
                    if let Some(body) = out.get_mut(start..) {
                        ctr.apply(body);
                    }
                }
                out.extend_from_slice(&m.finalize().into_bytes());
            }
            PacketCipher::ChaCha { main, len } => {
                let nonce = chacha_nonce(seq);
                if let Some(l) = out.get_mut(start..start + 4) {
                    ChaCha::new((&**len).into(), (&nonce).into()).apply_keystream(l);
                }
                let (mut c, poly_key) = chacha_poly_key(main, &nonce);
                if let Some(body) = out.get_mut(start + 4..) {
                    c.apply_keystream(body);
                }
                let tag = poly1305::Poly1305::new((&*poly_key).into())
                    .compute_unpadded(out.get(start..).unwrap_or(&[]));
                out.extend_from_slice(&tag);
            }
        }
    }

    /// Tries to decode one packet from the front of `buf`, decrypting in place.
    /// Returns `None` when more bytes are needed.
    pub fn open(
        &mut self,
        seq: u32,
        buf: &mut [u8],
        state: &mut OpenState,
        max_packet_len: u32,
    ) -> Result<Option<Opened>> {
        let bs = self.block_size();
        let mac_len = self.mac_len();
        let check_len = |len: u32, aligned: usize| -> Result<usize> {
            if len > max_packet_len || len < 5 {
                return Err(Error::PacketLength(len));
            }
            let l = usize::try_from(len).map_err(|_| Error::PacketLength(len))?;
            if !aligned.is_multiple_of(bs) {
                return Err(Error::PacketLength(len));
            }
            Ok(l)
        };
        let len = match self {
            PacketCipher::None => {
                let Some(len) = be32(buf) else {
                    return Ok(None);
                };
                // Alignment is not enforced before encryption starts: some peers do not
                // pad unencrypted packets to 8 bytes.
                if len > max_packet_len || len < 5 {
                    return Err(Error::PacketLength(len));
                }
                let l = usize::try_from(len).map_err(|_| Error::PacketLength(len))?;
                if buf.len() < 4 + l {
                    return Ok(None);
                }
                l
            }
            PacketCipher::Ctr {
                ctr,
                mac,
                etm: false,
            } => {
                let len = match state.len {
                    Some(len) => len,
                    None => {
                        let Some(first) = buf.get_mut(..bs) else {
                            return Ok(None);
                        };
                        ctr.apply(first);
                        let len = be32(first).ok_or(Error::Malformed("short block"))?;
                        state.len = Some(len);
                        len
                    }
                };
                let l = check_len(len, usize::try_from(len).unwrap_or(0).wrapping_add(4))?;
                if buf.len() < 4 + l + mac_len {
                    return Ok(None);
                }
                state.len = None;
                if let Some(rest) = buf.get_mut(bs..4 + l) {
                    ctr.apply(rest);
                }
                let mut m = (**mac).clone();
                m.update(&seq.to_be_bytes());
                m.update(buf.get(..4 + l).unwrap_or(&[]));
                m.verify_slice(buf.get(4 + l..4 + l + mac_len).unwrap_or(&[]))
                    .map_err(|_| Error::Mac)?;
                l
            }
            PacketCipher::Ctr {
                ctr,
                mac,
                etm: true,
            } => {
                let Some(len) = be32(buf) else {
                    return Ok(None);
                };
                let l = check_len(len, usize::try_from(len).unwrap_or(1))?;
                if buf.len() < 4 + l + mac_len {
                    return Ok(None);
                }
                let mut m = (**mac).clone();
                m.update(&seq.to_be_bytes());
                m.update(buf.get(..4 + l).unwrap_or(&[]));
                m.verify_slice(buf.get(4 + l..4 + l + mac_len).unwrap_or(&[]))
                    .map_err(|_| Error::Mac)?;
                if let Some(body) = buf.get_mut(4..4 + l) {
                    ctr.apply(body);
                }
                l
            }
            PacketCipher::ChaCha { main, len: len_key } => {
                let Some(enc_len) = buf.get(..4) else {
                    return Ok(None);
                };
                let mut len_bytes = [0u8; 4];
                len_bytes.copy_from_slice(enc_len);
                let nonce = chacha_nonce(seq);
                ChaCha::new((&**len_key).into(), (&nonce).into()).apply_keystream(&mut len_bytes);
                let len = u32::from_be_bytes(len_bytes);
                let l = check_len(len, usize::try_from(len).unwrap_or(1))?;
                if buf.len() < 4 + l + mac_len {
                    return Ok(None);
                }
                let (mut c, poly_key) = chacha_poly_key(main, &nonce);
                let tag = poly1305::Poly1305::new((&*poly_key).into())
                    .compute_unpadded(buf.get(..4 + l).unwrap_or(&[]));
                let ok = tag
                    .as_slice()
                    .ct_eq(buf.get(4 + l..4 + l + mac_len).unwrap_or(&[]));
                if !bool::from(ok) {
                    return Err(Error::Mac);
                }
                if let Some(body) = buf.get_mut(4..4 + l) {
                    c.apply_keystream(body);
                }
                // Leave the decrypted length readable in the buffer, like the other modes.
                if let Some(h) = buf.get_mut(..4) {
                    h.copy_from_slice(&len_bytes);
                }
                l
            }
        };
        let pad = usize::from(*buf.get(4).ok_or(Error::Malformed("short packet"))?);
        if pad < 4 || pad + 1 > len {
            return Err(Error::Protocol(format!("bad padding length {pad}")));
        }
        Ok(Some(Opened {
            consumed: 4 + len + mac_len,
            payload: 5..4 + len - pad,
        }))
    }
}

impl Drop for DirectionKeys {
    fn drop(&mut self) {
        self.iv.zeroize();
        self.key.zeroize();
        self.mac_key.zeroize();
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test data: byte patterns that wrap on purpose, and packet counts of 20"
)]
mod tests {
    use super::*;

    fn keys(cipher: Cipher, mac: Option<Mac>) -> DirectionKeys {
        DirectionKeys {
            cipher,
            mac,
            iv: Zeroizing::new((0..cipher.iv_len()).map(|i| i as u8).collect()),
            key: Zeroizing::new((0..cipher.key_len()).map(|i| (i * 7) as u8).collect()),
            mac_key: Zeroizing::new(vec![9; 32]),
        }
    }

    #[test]
    fn seal_open_round_trip_all_modes() {
        let combos = [
            (Cipher::ChaCha20Poly1305, None),
            (Cipher::Aes128Ctr, Some(Mac::HmacSha256)),
            (Cipher::Aes128Ctr, Some(Mac::HmacSha256Etm)),
            (Cipher::Aes256Ctr, Some(Mac::HmacSha256)),
            (Cipher::Aes256Ctr, Some(Mac::HmacSha256Etm)),
        ];
        for (c, m) in combos {
            let k = keys(c, m);
            let mut tx = PacketCipher::new(&k).expect("cipher");
            let mut rx = PacketCipher::new(&k).expect("cipher");
            let mut wire = Vec::new();
            let payloads: Vec<Vec<u8>> = (0..20).map(|n| vec![n as u8; n * 13 + 1]).collect();
            for (i, p) in payloads.iter().enumerate() {
                tx.seal(i as u32, p, &mut wire);
            }
            let mut st = OpenState::default();
            let mut off = 0;
            for (i, p) in payloads.iter().enumerate() {
                let end = wire.len();
                let pk = rx
                    .open(i as u32, &mut wire[off..end], &mut st, 35000)
                    .expect("open")
                    .expect("complete packet not decoded");
                assert_eq!(
                    &wire[off + pk.payload.start..off + pk.payload.end],
                    &p[..],
                    "{c:?} {m:?}"
                );
                off += pk.consumed;
            }
            assert_eq!(off, wire.len());
        }
    }

    #[test]
    fn tampering_is_detected() {
        for (c, m) in [
            (Cipher::ChaCha20Poly1305, None),
            (Cipher::Aes128Ctr, Some(Mac::HmacSha256)),
            (Cipher::Aes256Ctr, Some(Mac::HmacSha256Etm)),
        ] {
            let k = keys(c, m);
            let mut tx = PacketCipher::new(&k).expect("cipher");
            let mut wire = Vec::new();
            tx.seal(0, b"hello world", &mut wire);
            let last = wire.len() - 1;
            wire[last] ^= 1;
            let mut rx = PacketCipher::new(&k).expect("cipher");
            let r = rx.open(0, &mut wire, &mut OpenState::default(), 35000);
            assert!(matches!(r, Err(Error::Mac)), "{c:?}: {r:?}");
        }
    }

    #[test]
    fn partial_input_needs_more() {
        let k = keys(Cipher::Aes128Ctr, Some(Mac::HmacSha256));
        let mut tx = PacketCipher::new(&k).expect("cipher");
        let mut wire = Vec::new();
        tx.seal(5, &[1u8; 100], &mut wire);
        let mut rx = PacketCipher::new(&k).expect("cipher");
        let mut st = OpenState::default();
        let mut buf = Vec::new();
        for (i, b) in wire.iter().enumerate() {
            buf.push(*b);
            let r = rx.open(5, &mut buf, &mut st, 35000).expect("open");
            if i + 1 < wire.len() {
                assert!(r.is_none());
            } else {
                let pk = r.expect("whole packet");
                assert_eq!(&buf[pk.payload], &[1u8; 100][..]);
            }
        }
    }
}
