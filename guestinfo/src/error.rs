//! Codec errors. Every error that concerns a value names the extraConfig key it belongs to.

use std::fmt::Display;

/// Why a config could not be encoded into the flat map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// `{key}`: map key `{map_key}` cannot be carried: {reason}
    #[error("`{key}`: map key `{map_key}` cannot be carried: {reason}")]
    BadMapKey {
        /// The extraConfig key at fault.
        key: String,
        /// The map key that cannot be part of a key.
        map_key: String,
        /// Why not.
        reason: &'static str,
    },

    /// `{key}`: the literal value `<nil>` cannot be carried (it reads back as the empty string)
    #[error(
        "`{key}`: the literal value `<nil>` cannot be carried (it reads back as the empty string)"
    )]
    NilLiteral {
        /// The extraConfig key at fault.
        key: String,
    },

    /// `{key}`: {what} cannot be encoded
    #[error("`{key}`: {what} cannot be encoded")]
    Unsupported {
        /// The extraConfig key at fault.
        key: String,
        /// The kind of value.
        what: &'static str,
    },

    /// `{key}`: secret fields need the original's NaCl encryption, which this crate does not implement
    #[error("`{key}`: secret fields need the original's NaCl encryption, which this crate does not implement")]
    Secret {
        /// The extraConfig key at fault.
        key: String,
    },

    /// `{key}` and `{other}` are the same VMX key (VMX keys are case-insensitive)
    #[error("`{key}` and `{other}` are the same VMX key (VMX keys are case-insensitive)")]
    Collision {
        /// One spelling.
        key: String,
        /// The other spelling.
        other: String,
    },

    /// no session or exec with id `{id}`
    #[error("no session or exec with id `{id}`")]
    UnknownSession {
        /// The ID asked for.
        id: String,
    },

    /// schema error: {what}
    #[error("schema error: {what}")]
    Schema {
        /// What the serializer reported.
        what: String,
    },
}

impl serde::ser::Error for EncodeError {
    fn custom<T: Display>(msg: T) -> EncodeError {
        EncodeError::Schema {
            what: msg.to_string(),
        }
    }
}

/// Why a flat map could not be decoded into a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `{key}`: invalid {expected} value {value:?}
    #[error("`{}`: invalid {expected} value {}", clip(key), clip_debug(value))]
    InvalidValue {
        /// The extraConfig key at fault.
        key: String,
        /// The value found.
        value: String,
        /// The kind of value expected.
        expected: &'static str,
    },

    /// `{key}`: list length {length} does not match the data present
    #[error(
        "`{}`: list length {} does not match the data present",
        clip(key),
        clip(length)
    )]
    BadLength {
        /// The extraConfig key at fault.
        key: String,
        /// The length key's value.
        length: String,
    },

    /// `{key}`: {message}
    #[error("`{}`: {}", clip(key), clip(message))]
    Value {
        /// The extraConfig key at fault.
        key: String,
        /// What is wrong with its value.
        message: String,
    },

    /// `{key}`: secret values are encrypted with the original's NaCl scheme, which this crate does not implement
    #[error("`{}`: secret values are encrypted with the original's NaCl scheme, which this crate does not implement", clip(key))]
    Secret {
        /// The extraConfig key at fault.
        key: String,
    },

    /// `{key}` and `{other}` are the same key with different values (VMX keys are case-insensitive)
    #[error(
        "`{}` and `{}` are the same key with different values (VMX keys are case-insensitive)",
        clip(key),
        clip(other)
    )]
    Duplicate {
        /// One spelling.
        key: String,
        /// The other spelling.
        other: String,
    },

    /// the in-memory config cannot be merged with the new map: {0}
    #[error("the in-memory config cannot be merged with the new map: {0}")]
    Merge(EncodeError),

    /// schema error: {what}
    #[error("schema error: {what}")]
    Schema {
        /// What the deserializer reported.
        what: String,
    },

    /// {message}
    #[error("{}", clip(message))]
    Custom {
        /// The message, not yet tied to a key (see `DecodeError::at`).
        message: String,
    },
}

impl serde::de::Error for DecodeError {
    fn custom<T: Display>(msg: T) -> DecodeError {
        DecodeError::Custom {
            message: msg.to_string(),
        }
    }
}

/// The most of one key, value or message an error shows, in bytes: a config can hold values
/// of megabytes, and the error's text goes to the host as the container's `started` (one
/// guestinfo value) and into logs.
pub const SHOWN: usize = 160;

/// `s`, cut to [`SHOWN`] bytes (at a character boundary) with its full length after it.
pub(crate) fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match head(s) {
        None => s.into(),
        Some(h) => format!("{h}… ({} bytes)", s.len()).into(),
    }
}

/// Like [`clip`], quoted and escaped (`{:?}`).
pub(crate) fn clip_debug(s: &str) -> String {
    match head(s) {
        None => format!("{s:?}"),
        Some(h) => format!("{h:?}… ({} bytes)", s.len()),
    }
}

fn head(s: &str) -> Option<&str> {
    if s.len() <= SHOWN {
        return None;
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end)
}

impl DecodeError {
    /// Attaches `key` to an error raised by serde or a value adapter without one.
    pub(crate) fn at(self, key: &str) -> DecodeError {
        match self {
            DecodeError::Custom { message } => DecodeError::Value {
                key: key.to_owned(),
                message,
            },
            other => other,
        }
    }
}
