//! An SSH-2 implementation, client and server, over any async byte stream: what the
//! tether and the VCH port layer speak on the serial back-channel.
//!
//! It exists because the back-channel needs things general-purpose SSH crates do not
//! expose: channel types of any name with type-specific data (`attach` + session ID),
//! global and channel requests of any name with raw payloads and replies (`version`,
//! `container-ids`, `ping`, `unblock`, `close-stdin`), and compatibility with the
//! original port layer (x/crypto of 2017: `ssh-rsa` SHA-1 signatures from a 512-bit host
//! key, `none` auth for `daemon`).
//!
//! The protocol logic is here; every cryptographic primitive comes from RustCrypto
//! crates. See `README.md` for examples, the algorithm list and the limits.
//!
//! * [`Server::accept`] / [`Client::connect`] run the handshake and return a
//!   [`Connection`] handle and a [`Driver`] future that must be polled (spawned) for the
//!   connection to make progress.
//! * [`Connection::open_channel`] opens channels of any type; [`Handlers`] decide on the
//!   peer's channel opens and requests.
//! * A [`Channel`] is an `AsyncRead` + `AsyncWrite` of the channel data, with
//!   [`Channel::stderr`] / [`Channel::stderr_writer`] for extended data 1.
//!
//! The README follows (its examples are compiled as doctests).
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// Layers, each using only those before it (`scripts/import-circles` checks that no two
// files import each other): error, wire, msg, cipher, keys, kex, limits (the codec and
// crypto); reply, requests, shared (connection state); channel, conn (the handles);
// config; session (the driver, which runs it all).
mod channel;
mod cipher;
mod config;
mod conn;
mod error;
mod kex;
mod keys;
mod limits;
mod msg;
mod reply;
mod requests;
mod session;
mod shared;
mod wire;

pub use channel::{
    Channel, ChannelReader, ChannelRequests, ChannelWriter, StderrReader, StderrWriter,
    EXTENDED_DATA_STDERR,
};
pub use cipher::{Cipher, Mac};
pub use config::{
    ClientConfig, Config, Handlers, HostKeyCheck, Keepalive, NoneAuth, ServerAuth, ServerConfig,
};
pub use conn::{ChannelOpenRequest, Connection};
pub use error::{DisconnectReason, Error, KeyError, OpenFailureReason};
pub use kex::{Algorithms, KexAlgorithm, Negotiated};
pub use keys::{PrivateKey, PublicKey, SignatureAlgorithm};
pub use limits::Limits;
pub use requests::{ChannelRequest, ExitSignal, GlobalRequest, PtyRequest, WindowChange};
pub use session::{Client, Driver, Server};
pub use shared::{GlobalReply, SessionInfo};

/// Encodes a list of strings as an SSH `name-list` (one `string` of the items joined by
/// `,`): the payload of `container-ids`.
pub fn encode_name_list<S: AsRef<str>>(items: &[S]) -> Vec<u8> {
    let mut v = Vec::new();
    wire::put_name_list(&mut v, items);
    v
}

/// Decodes an SSH `name-list` payload (empty items are dropped).
pub fn decode_name_list(data: &[u8]) -> Result<Vec<String>, Error> {
    let mut r = wire::Reader::new(data);
    let s = std::str::from_utf8(r.string()?).map_err(|_| Error::Malformed("invalid UTF-8"))?;
    Ok(wire::names(s).map(str::to_string).collect())
}

/// Entry points for fuzzing and known-answer tests; not a stable API.
#[doc(hidden)]
pub mod testing {
    use crate::cipher::{DirectionKeys, OpenState, PacketCipher};
    use crate::error::Error;
    use zeroize::Zeroizing;

    pub use crate::kex::{
        derive_key, derive_session_keys, encode_shared_secret, exchange_hash, HashInputs,
        SessionKeys,
    };

    /// The X25519 public key of a fixed secret scalar.
    pub fn x25519_public(secret: [u8; 32]) -> [u8; 32] {
        let s = x25519_dalek::StaticSecret::from(secret);
        *x25519_dalek::PublicKey::from(&s).as_bytes()
    }

    /// The X25519 shared secret (refusing the all-zero result).
    pub fn x25519_shared(secret: [u8; 32], peer: &[u8]) -> Result<[u8; 32], Error> {
        let s = x25519_dalek::StaticSecret::from(secret);
        crate::kex::x25519_shared(&s, peer).map(|k| *k)
    }

    /// Parses one message payload, discarding the result.
    pub fn parse_message(payload: &[u8]) -> Result<(), Error> {
        crate::msg::Message::parse(payload).map(|_| ())
    }

    /// Decodes packets from `data` with the `none` cipher and with each real cipher
    /// (fixed keys), handing each payload to the message parser.
    pub fn decode_packets(data: &[u8]) -> usize {
        let mut decoded = 0;
        let mut ciphers = vec![PacketCipher::None];
        for (c, m) in [
            (crate::Cipher::ChaCha20Poly1305, None),
            (crate::Cipher::Aes128Ctr, Some(crate::Mac::HmacSha256)),
            (crate::Cipher::Aes256Ctr, Some(crate::Mac::HmacSha256Etm)),
        ] {
            let keys = DirectionKeys {
                cipher: c,
                mac: m,
                iv: Zeroizing::new(vec![1; c.iv_len()]),
                key: Zeroizing::new(vec![2; c.key_len()]),
                mac_key: Zeroizing::new(vec![3; 32]),
            };
            if let Ok(p) = PacketCipher::new(&keys) {
                ciphers.push(p);
            }
        }
        for mut cipher in ciphers {
            let mut buf = data.to_vec();
            let mut start = 0;
            let mut st = OpenState::default();
            let mut seq = 0u32;
            while let Some(b) = buf.get_mut(start..) {
                match cipher.open(seq, b, &mut st, 35000) {
                    Ok(Some(p)) => {
                        if let Some(payload) = b.get(p.payload.clone()) {
                            let _ = parse_message(payload);
                        }
                        start += p.consumed;
                        seq = seq.wrapping_add(1);
                        decoded += 1;
                    }
                    _ => break,
                }
            }
        }
        decoded
    }

    /// Queues a raw connection-layer payload on a connection, bypassing every check
    /// (for tests that send malformed messages).
    pub fn inject(conn: &crate::Connection, payload: Vec<u8>) {
        conn.shared.lock().push(payload);
        conn.shared.wake.wake();
    }

    /// Seals then opens `total` bytes of 32 KiB packets with fixed keys; returns the
    /// seconds each took (the bench's crypto-only figure).
    pub fn seal_open_seconds(
        cipher: crate::Cipher,
        mac: Option<crate::Mac>,
        total: usize,
    ) -> (f64, f64) {
        let keys = DirectionKeys {
            cipher,
            mac,
            iv: Zeroizing::new(vec![1; cipher.iv_len()]),
            key: Zeroizing::new(vec![2; cipher.key_len()]),
            mac_key: Zeroizing::new(vec![3; 32]),
        };
        let (Ok(mut tx), Ok(mut rx)) = (PacketCipher::new(&keys), PacketCipher::new(&keys)) else {
            return (0.0, 0.0);
        };
        let payload = vec![0u8; 32 * 1024];
        let n = total / payload.len();
        let mut wire = Vec::with_capacity(payload.len() + 128);
        let mut st = OpenState::default();
        let (mut seal, mut open) = (0.0, 0.0);
        let mut seq = 0u32;
        for _ in 0..n {
            wire.clear();
            let t0 = std::time::Instant::now();
            tx.seal(seq, &payload, &mut wire);
            let t1 = std::time::Instant::now();
            let ok = matches!(rx.open(seq, &mut wire, &mut st, 300_000), Ok(Some(_)));
            let t2 = std::time::Instant::now();
            if !ok {
                break;
            }
            seal += (t1 - t0).as_secs_f64();
            open += (t2 - t1).as_secs_f64();
            // Sequence numbers wrap, as on a connection.
            seq = seq.wrapping_add(1);
        }
        (seal, open)
    }

    /// Seals `payload` with the `none` cipher (for building fuzz seeds).
    pub fn seal_plain(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketCipher::None.seal(0, payload, &mut out);
        out
    }

    /// The negotiated-keys material for known-answer tests: (c2s iv, key, mac key) and
    /// (s2c iv, key, mac key).
    #[allow(clippy::type_complexity)]
    pub fn key_material(
        keys: &SessionKeys,
    ) -> ((Vec<u8>, Vec<u8>, Vec<u8>), (Vec<u8>, Vec<u8>, Vec<u8>)) {
        let (a, b, c) = keys.c2s_material();
        let (d, e, f) = keys.s2c_material();
        (
            (a.to_vec(), b.to_vec(), c.to_vec()),
            (d.to_vec(), e.to_vec(), f.to_vec()),
        )
    }
}
