//! SSH message numbers and the message parser / encoders.
//!
//! Parsing borrows from the decrypted packet payload; nothing is copied until a layer
//! decides to keep it. Trailing bytes after the fields a message defines are tolerated
//! (older peers, and x/crypto, append data to some messages).

use crate::error::{Error, Result};
use crate::wire::{self, Reader};

pub const DISCONNECT: u8 = 1;
pub const IGNORE: u8 = 2;
pub const UNIMPLEMENTED: u8 = 3;
pub const DEBUG: u8 = 4;
pub const SERVICE_REQUEST: u8 = 5;
pub const SERVICE_ACCEPT: u8 = 6;
pub const EXT_INFO: u8 = 7;
pub const KEXINIT: u8 = 20;
pub const NEWKEYS: u8 = 21;
pub const KEX_ECDH_INIT: u8 = 30;
pub const KEX_ECDH_REPLY: u8 = 31;
pub const USERAUTH_REQUEST: u8 = 50;
pub const USERAUTH_FAILURE: u8 = 51;
pub const USERAUTH_SUCCESS: u8 = 52;
pub const USERAUTH_BANNER: u8 = 53;
pub const USERAUTH_PK_OK: u8 = 60;
pub const GLOBAL_REQUEST: u8 = 80;
pub const REQUEST_SUCCESS: u8 = 81;
pub const REQUEST_FAILURE: u8 = 82;
pub const CHANNEL_OPEN: u8 = 90;
pub const CHANNEL_OPEN_CONFIRMATION: u8 = 91;
pub const CHANNEL_OPEN_FAILURE: u8 = 92;
pub const CHANNEL_WINDOW_ADJUST: u8 = 93;
pub const CHANNEL_DATA: u8 = 94;
pub const CHANNEL_EXTENDED_DATA: u8 = 95;
pub const CHANNEL_EOF: u8 = 96;
pub const CHANNEL_CLOSE: u8 = 97;
pub const CHANNEL_REQUEST: u8 = 98;
pub const CHANNEL_SUCCESS: u8 = 99;
pub const CHANNEL_FAILURE: u8 = 100;

/// The fields of SSH_MSG_KEXINIT (RFC 4253 §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexInit<'a> {
    pub cookie: &'a [u8],
    pub kex: &'a str,
    pub host_key: &'a str,
    pub cipher_c2s: &'a str,
    pub cipher_s2c: &'a str,
    pub mac_c2s: &'a str,
    pub mac_s2c: &'a str,
    pub comp_c2s: &'a str,
    pub comp_s2c: &'a str,
    pub lang_c2s: &'a str,
    pub lang_s2c: &'a str,
    pub first_kex_follows: bool,
}

/// The method-specific part of SSH_MSG_USERAUTH_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod<'a> {
    None,
    PublicKey {
        algorithm: &'a str,
        blob: &'a [u8],
        signature: Option<&'a [u8]>,
    },
    Password,
    Other(&'a str),
}

/// One parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Disconnect {
        reason: u32,
        description: String,
    },
    Ignore,
    Unimplemented {
        seq: u32,
    },
    Debug {
        message: String,
    },
    ServiceRequest {
        name: &'a str,
    },
    ServiceAccept {
        name: &'a str,
    },
    ExtInfo,
    KexInit(KexInit<'a>),
    NewKeys,
    KexEcdhInit {
        q_c: &'a [u8],
    },
    KexEcdhReply {
        k_s: &'a [u8],
        q_s: &'a [u8],
        signature: &'a [u8],
    },
    UserauthRequest {
        user: &'a str,
        service: &'a str,
        method: AuthMethod<'a>,
    },
    UserauthFailure {
        methods: &'a str,
        partial: bool,
    },
    UserauthSuccess,
    UserauthBanner {
        message: String,
    },
    UserauthPkOk {
        algorithm: &'a str,
        blob: &'a [u8],
    },
    GlobalRequest {
        name: &'a str,
        want_reply: bool,
        data: &'a [u8],
    },
    RequestSuccess {
        data: &'a [u8],
    },
    RequestFailure {
        data: &'a [u8],
    },
    ChannelOpen {
        channel_type: &'a str,
        sender: u32,
        window: u32,
        max_packet: u32,
        data: &'a [u8],
    },
    ChannelOpenConfirmation {
        recipient: u32,
        sender: u32,
        window: u32,
        max_packet: u32,
    },
    ChannelOpenFailure {
        recipient: u32,
        reason: u32,
        description: String,
    },
    ChannelWindowAdjust {
        recipient: u32,
        bytes: u32,
    },
    ChannelData {
        recipient: u32,
        data: &'a [u8],
    },
    ChannelExtendedData {
        recipient: u32,
        code: u32,
        data: &'a [u8],
    },
    ChannelEof {
        recipient: u32,
    },
    ChannelClose {
        recipient: u32,
    },
    ChannelRequest {
        recipient: u32,
        name: &'a str,
        want_reply: bool,
        data: &'a [u8],
    },
    ChannelSuccess {
        recipient: u32,
    },
    ChannelFailure {
        recipient: u32,
    },
    /// A message number this implementation does not know.
    Unknown(u8),
}

/// Which layer a message number belongs to, for the rules about what may be sent when.
pub fn is_kex_message(n: u8) -> bool {
    (20..=49).contains(&n)
}

impl<'a> Message<'a> {
    /// Parses a whole packet payload (message number first).
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(payload);
        let n = r.u8().map_err(|_| Error::Malformed("empty payload"))?;
        let m = match n {
            DISCONNECT => Message::Disconnect {
                reason: r.u32()?,
                description: r.opt_text()?,
            },
            IGNORE => Message::Ignore,
            UNIMPLEMENTED => Message::Unimplemented { seq: r.u32()? },
            DEBUG => {
                let _always_display = r.bool()?;
                Message::Debug {
                    message: r.opt_text()?,
                }
            }
            SERVICE_REQUEST => Message::ServiceRequest { name: r.utf8()? },
            SERVICE_ACCEPT => Message::ServiceAccept { name: r.utf8()? },
            EXT_INFO => Message::ExtInfo,
            KEXINIT => Message::KexInit(KexInit {
                cookie: r.take(16)?,
                kex: r.name_list()?,
                host_key: r.name_list()?,
                cipher_c2s: r.name_list()?,
                cipher_s2c: r.name_list()?,
                mac_c2s: r.name_list()?,
                mac_s2c: r.name_list()?,
                comp_c2s: r.name_list()?,
                comp_s2c: r.name_list()?,
                lang_c2s: r.name_list()?,
                lang_s2c: r.name_list()?,
                first_kex_follows: {
                    let f = r.bool()?;
                    let _reserved = r.u32()?;
                    f
                },
            }),
            NEWKEYS => Message::NewKeys,
            KEX_ECDH_INIT => Message::KexEcdhInit { q_c: r.string()? },
            KEX_ECDH_REPLY => Message::KexEcdhReply {
                k_s: r.string()?,
                q_s: r.string()?,
                signature: r.string()?,
            },
            USERAUTH_REQUEST => {
                let user = r.utf8()?;
                let service = r.utf8()?;
                let method_name = r.utf8()?;
                let method = match method_name {
                    "none" => AuthMethod::None,
                    "publickey" => {
                        let has_sig = r.bool()?;
                        let algorithm = r.utf8()?;
                        let blob = r.string()?;
                        let signature = if has_sig { Some(r.string()?) } else { None };
                        AuthMethod::PublicKey {
                            algorithm,
                            blob,
                            signature,
                        }
                    }
                    // The password itself is never parsed, so it can never be logged.
                    "password" => AuthMethod::Password,
                    other => AuthMethod::Other(other),
                };
                Message::UserauthRequest {
                    user,
                    service,
                    method,
                }
            }
            USERAUTH_FAILURE => Message::UserauthFailure {
                methods: r.name_list()?,
                partial: r.bool()?,
            },
            USERAUTH_SUCCESS => Message::UserauthSuccess,
            USERAUTH_BANNER => Message::UserauthBanner { message: r.text()? },
            USERAUTH_PK_OK => Message::UserauthPkOk {
                algorithm: r.utf8()?,
                blob: r.string()?,
            },
            GLOBAL_REQUEST => Message::GlobalRequest {
                name: r.utf8()?,
                want_reply: r.bool()?,
                data: r.rest(),
            },
            REQUEST_SUCCESS => Message::RequestSuccess { data: r.rest() },
            REQUEST_FAILURE => Message::RequestFailure { data: r.rest() },
            CHANNEL_OPEN => Message::ChannelOpen {
                channel_type: r.utf8()?,
                sender: r.u32()?,
                window: r.u32()?,
                max_packet: r.u32()?,
                data: r.rest(),
            },
            CHANNEL_OPEN_CONFIRMATION => Message::ChannelOpenConfirmation {
                recipient: r.u32()?,
                sender: r.u32()?,
                window: r.u32()?,
                max_packet: r.u32()?,
            },
            CHANNEL_OPEN_FAILURE => Message::ChannelOpenFailure {
                recipient: r.u32()?,
                reason: r.u32()?,
                description: r.opt_text()?,
            },
            CHANNEL_WINDOW_ADJUST => Message::ChannelWindowAdjust {
                recipient: r.u32()?,
                bytes: r.u32()?,
            },
            CHANNEL_DATA => Message::ChannelData {
                recipient: r.u32()?,
                data: r.string()?,
            },
            CHANNEL_EXTENDED_DATA => Message::ChannelExtendedData {
                recipient: r.u32()?,
                code: r.u32()?,
                data: r.string()?,
            },
            CHANNEL_EOF => Message::ChannelEof {
                recipient: r.u32()?,
            },
            CHANNEL_CLOSE => Message::ChannelClose {
                recipient: r.u32()?,
            },
            CHANNEL_REQUEST => Message::ChannelRequest {
                recipient: r.u32()?,
                name: r.utf8()?,
                want_reply: r.bool()?,
                data: r.rest(),
            },
            CHANNEL_SUCCESS => Message::ChannelSuccess {
                recipient: r.u32()?,
            },
            CHANNEL_FAILURE => Message::ChannelFailure {
                recipient: r.u32()?,
            },
            other => Message::Unknown(other),
        };
        Ok(m)
    }
}

// Encoders for the messages we send. Each returns a complete payload.

pub fn disconnect(reason: u32, description: &str) -> Vec<u8> {
    let mut v = vec![DISCONNECT];
    wire::put_u32(&mut v, reason);
    wire::put_string(&mut v, description.as_bytes());
    wire::put_string(&mut v, b"");
    v
}

pub fn unimplemented(seq: u32) -> Vec<u8> {
    let mut v = vec![UNIMPLEMENTED];
    wire::put_u32(&mut v, seq);
    v
}

pub fn service_request(name: &str) -> Vec<u8> {
    let mut v = vec![SERVICE_REQUEST];
    wire::put_string(&mut v, name.as_bytes());
    v
}

pub fn service_accept(name: &str) -> Vec<u8> {
    let mut v = vec![SERVICE_ACCEPT];
    wire::put_string(&mut v, name.as_bytes());
    v
}

pub fn kex_ecdh_init(q_c: &[u8]) -> Vec<u8> {
    let mut v = vec![KEX_ECDH_INIT];
    wire::put_string(&mut v, q_c);
    v
}

pub fn kex_ecdh_reply(k_s: &[u8], q_s: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut v = vec![KEX_ECDH_REPLY];
    wire::put_string(&mut v, k_s);
    wire::put_string(&mut v, q_s);
    wire::put_string(&mut v, signature);
    v
}

pub fn userauth_none(user: &str) -> Vec<u8> {
    let mut v = vec![USERAUTH_REQUEST];
    wire::put_string(&mut v, user.as_bytes());
    wire::put_string(&mut v, b"ssh-connection");
    wire::put_string(&mut v, b"none");
    v
}

/// The data a publickey authentication signature covers (RFC 4252 §7).
pub fn userauth_pk_signed_data(session_id: &[u8], user: &str, alg: &str, blob: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(128 + blob.len());
    wire::put_string(&mut v, session_id);
    v.extend_from_slice(&userauth_pk_request(user, alg, blob, None));
    v
}

/// SSH_MSG_USERAUTH_REQUEST for publickey; with `signature` None this is the body the
/// signature covers (flag TRUE, no signature field).
pub fn userauth_pk_request(
    user: &str,
    alg: &str,
    blob: &[u8],
    signature: Option<&[u8]>,
) -> Vec<u8> {
    let mut v = vec![USERAUTH_REQUEST];
    wire::put_string(&mut v, user.as_bytes());
    wire::put_string(&mut v, b"ssh-connection");
    wire::put_string(&mut v, b"publickey");
    wire::put_bool(&mut v, true);
    wire::put_string(&mut v, alg.as_bytes());
    wire::put_string(&mut v, blob);
    if let Some(sig) = signature {
        wire::put_string(&mut v, sig);
    }
    v
}

pub fn userauth_failure(methods: &[&str], partial: bool) -> Vec<u8> {
    let mut v = vec![USERAUTH_FAILURE];
    wire::put_name_list(&mut v, methods);
    wire::put_bool(&mut v, partial);
    v
}

pub fn userauth_pk_ok(alg: &str, blob: &[u8]) -> Vec<u8> {
    let mut v = vec![USERAUTH_PK_OK];
    wire::put_string(&mut v, alg.as_bytes());
    wire::put_string(&mut v, blob);
    v
}

pub fn global_request(name: &str, want_reply: bool, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + name.len() + data.len());
    v.push(GLOBAL_REQUEST);
    wire::put_string(&mut v, name.as_bytes());
    wire::put_bool(&mut v, want_reply);
    v.extend_from_slice(data);
    v
}

pub fn request_reply(success: bool, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + data.len());
    v.push(if success {
        REQUEST_SUCCESS
    } else {
        REQUEST_FAILURE
    });
    v.extend_from_slice(data);
    v
}

pub fn channel_open(ty: &str, sender: u32, window: u32, max_packet: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + ty.len() + data.len());
    v.push(CHANNEL_OPEN);
    wire::put_string(&mut v, ty.as_bytes());
    wire::put_u32(&mut v, sender);
    wire::put_u32(&mut v, window);
    wire::put_u32(&mut v, max_packet);
    v.extend_from_slice(data);
    v
}

pub fn channel_open_confirmation(
    recipient: u32,
    sender: u32,
    window: u32,
    max_packet: u32,
) -> Vec<u8> {
    let mut v = vec![CHANNEL_OPEN_CONFIRMATION];
    wire::put_u32(&mut v, recipient);
    wire::put_u32(&mut v, sender);
    wire::put_u32(&mut v, window);
    wire::put_u32(&mut v, max_packet);
    v
}

pub fn channel_open_failure(recipient: u32, reason: u32, description: &str) -> Vec<u8> {
    let mut v = vec![CHANNEL_OPEN_FAILURE];
    wire::put_u32(&mut v, recipient);
    wire::put_u32(&mut v, reason);
    wire::put_string(&mut v, description.as_bytes());
    wire::put_string(&mut v, b"");
    v
}

pub fn channel_window_adjust(recipient: u32, bytes: u32) -> Vec<u8> {
    let mut v = vec![CHANNEL_WINDOW_ADJUST];
    wire::put_u32(&mut v, recipient);
    wire::put_u32(&mut v, bytes);
    v
}

pub fn channel_data(recipient: u32, ext: Option<u32>, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(13 + data.len());
    match ext {
        None => {
            v.push(CHANNEL_DATA);
            wire::put_u32(&mut v, recipient);
        }
        Some(code) => {
            v.push(CHANNEL_EXTENDED_DATA);
            wire::put_u32(&mut v, recipient);
            wire::put_u32(&mut v, code);
        }
    }
    wire::put_string(&mut v, data);
    v
}

pub fn channel_simple(number: u8, recipient: u32) -> Vec<u8> {
    let mut v = vec![number];
    wire::put_u32(&mut v, recipient);
    v
}

pub fn channel_request(recipient: u32, name: &str, want_reply: bool, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + name.len() + data.len());
    v.push(CHANNEL_REQUEST);
    wire::put_u32(&mut v, recipient);
    wire::put_string(&mut v, name.as_bytes());
    wire::put_bool(&mut v, want_reply);
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let p = channel_open("attach", 7, 100, 200, b"abc");
        assert_eq!(
            Message::parse(&p).ok(),
            Some(Message::ChannelOpen {
                channel_type: "attach",
                sender: 7,
                window: 100,
                max_packet: 200,
                data: b"abc"
            })
        );
        let p = channel_request(3, "ping", true, b"Ping");
        assert_eq!(
            Message::parse(&p).ok(),
            Some(Message::ChannelRequest {
                recipient: 3,
                name: "ping",
                want_reply: true,
                data: b"Ping"
            })
        );
        let p = request_reply(false, b"xyz");
        assert_eq!(
            Message::parse(&p).ok(),
            Some(Message::RequestFailure { data: b"xyz" })
        );
        let p = disconnect(11, "bye");
        assert_eq!(
            Message::parse(&p).ok(),
            Some(Message::Disconnect {
                reason: 11,
                description: "bye".into()
            })
        );
    }

    #[test]
    fn truncated_messages_fail() {
        for p in [
            channel_open("attach", 7, 100, 200, b""),
            channel_data(1, Some(1), b"hello"),
            kex_ecdh_reply(b"a", b"b", b"c"),
        ] {
            for cut in 1..p.len() {
                let r = Message::parse(&p[..cut]);
                if let Ok(Message::ChannelOpen { .. }) = r {
                    // The tail is type-specific data, so shorter opens can still parse.
                    continue;
                }
                assert!(r.is_err(), "cut {cut} of {p:?} parsed");
            }
        }
        assert!(Message::parse(&[]).is_err());
    }
}
