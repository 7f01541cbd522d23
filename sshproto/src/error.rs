//! Error types.

use std::fmt;

/// A reason code of SSH_MSG_DISCONNECT (RFC 4253 §11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectReason(pub u32);

impl DisconnectReason {
    /// SSH_DISCONNECT_PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: Self = Self(2);
    /// SSH_DISCONNECT_KEY_EXCHANGE_FAILED.
    pub const KEY_EXCHANGE_FAILED: Self = Self(3);
    /// SSH_DISCONNECT_MAC_ERROR.
    pub const MAC_ERROR: Self = Self(5);
    /// SSH_DISCONNECT_SERVICE_NOT_AVAILABLE.
    pub const SERVICE_NOT_AVAILABLE: Self = Self(7);
    /// SSH_DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED.
    pub const VERSION_NOT_SUPPORTED: Self = Self(8);
    /// SSH_DISCONNECT_HOST_KEY_NOT_VERIFIABLE.
    pub const HOST_KEY_NOT_VERIFIABLE: Self = Self(9);
    /// SSH_DISCONNECT_CONNECTION_LOST.
    pub const CONNECTION_LOST: Self = Self(10);
    /// SSH_DISCONNECT_BY_APPLICATION.
    pub const BY_APPLICATION: Self = Self(11);
    /// SSH_DISCONNECT_TOO_MANY_CONNECTIONS.
    pub const TOO_MANY_CONNECTIONS: Self = Self(12);
    /// SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE.
    pub const NO_MORE_AUTH_METHODS: Self = Self(14);
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A reason code of SSH_MSG_CHANNEL_OPEN_FAILURE (RFC 4254 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFailureReason(pub u32);

impl OpenFailureReason {
    /// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED.
    pub const ADMINISTRATIVELY_PROHIBITED: Self = Self(1);
    /// SSH_OPEN_CONNECT_FAILED.
    pub const CONNECT_FAILED: Self = Self(2);
    /// SSH_OPEN_UNKNOWN_CHANNEL_TYPE.
    pub const UNKNOWN_CHANNEL_TYPE: Self = Self(3);
    /// SSH_OPEN_RESOURCE_SHORTAGE.
    pub const RESOURCE_SHORTAGE: Self = Self(4);
}

impl fmt::Display for OpenFailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Everything that can go wrong on a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// I/O error on the underlying stream
    #[error("I/O error on the underlying stream: {0}")]
    Io(#[from] std::io::Error),
    /// the peer closed the byte stream
    #[error("the peer closed the byte stream")]
    Eof,
    /// the connection is closed
    #[error("the connection is closed")]
    ConnectionClosed,
    /// the peer's version line is unusable
    #[error("the peer's version line is unusable: {0}")]
    Version(String),
    /// a protocol rule was broken
    #[error("protocol error: {0}")]
    Protocol(String),
    /// a message could not be parsed
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// a packet length is out of bounds
    #[error("packet length {0} is out of bounds")]
    PacketLength(u32),
    /// a packet failed its integrity check
    #[error("a packet failed its integrity check")]
    Mac,
    /// no algorithm is supported by both sides
    #[error("no common {kind} algorithm (ours: {ours}; theirs: {theirs})")]
    NoCommonAlgorithm {
        /// Which list failed to match.
        kind: &'static str,
        /// What we offered.
        ours: String,
        /// What the peer offered.
        theirs: String,
    },
    /// the key exchange failed
    #[error("key exchange failed: {0}")]
    Kex(&'static str),
    /// the server's host key was rejected
    #[error("the server's host key {0} was rejected")]
    HostKeyRejected(String),
    /// a signature did not verify
    #[error("a signature did not verify")]
    BadSignature,
    /// user authentication failed
    #[error("user authentication failed (server allows: {0})")]
    AuthFailed(String),
    /// the peer disconnected
    #[error("the peer disconnected: {description} (reason {reason})")]
    Disconnected {
        /// The reason code sent.
        reason: DisconnectReason,
        /// The description sent.
        description: String,
    },
    /// an operation timed out
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// the peer stopped answering keep-alives
    #[error("the peer stopped answering keep-alives")]
    KeepaliveTimeout,
    /// the peer refused to open a channel
    #[error("channel open refused: {message} (reason {reason})")]
    ChannelOpenFailed {
        /// The reason code sent.
        reason: OpenFailureReason,
        /// The description sent.
        message: String,
    },
    /// the channel is closed
    #[error("the channel is closed")]
    ChannelClosed,
    /// a key could not be used
    #[error("key error: {0}")]
    Key(#[from] KeyError),
    /// a limit was exceeded
    #[error("limit exceeded: {0}")]
    Limit(&'static str),
    /// the configuration is invalid
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Problems with keys and key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// the key file format is not recognised
    #[error("the key file format is not recognised")]
    UnknownFormat,
    /// the key file could not be parsed
    #[error("the key file could not be parsed: {0}")]
    Parse(String),
    /// the key type is not supported
    #[error("the key type {0} is not supported")]
    UnsupportedType(String),
    /// encrypted key files are not supported
    #[error("encrypted key files are not supported")]
    Encrypted,
    /// the key cannot make this kind of signature
    #[error("the key cannot make {0} signatures")]
    UnsupportedAlgorithm(&'static str),
    /// signing failed
    #[error("signing failed: {0}")]
    Sign(String),
    /// the public key blob is malformed
    #[error("the public key blob is malformed: {0}")]
    Blob(&'static str),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
