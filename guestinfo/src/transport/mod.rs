//! Moving keys across the hypervisor boundary.
//!
//! One trait, [`Transport`], for the guest side: get a key, set a key, bulk-read every
//! guest-visible key, and receive host-to-guest commands. Implementations:
//! [`qemu::QemuClient`] (virtio-serial stand-in, with its host end [`qemu::HostServer`]) and
//! [`backdoor::Backdoor`] (the VMware backdoor, x86_64 only).
//!
//! Wire rules shared by all transports (guestinfo.md §3): the empty string travels as
//! `<nil>`; a missing key, a `0 ` reply or an empty value reads as absent; keys that do not
//! start with `guestinfo` get `guestinfo.` prepended (so hidden keys are unreachable); keys
//! containing `/` are read-only and are never written.

pub mod backdoor;
mod command;
pub mod frame;
pub mod qemu;

pub use command::HostCommand;

use std::borrow::Cow;
use std::fmt;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::{decode_into, ContainerConfig, DecodeError, Map};

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// key `{0}` is read-only (it contains '/') and cannot be written by the guest
    #[error("key `{0}` is read-only (it contains '/') and cannot be written by the guest")]
    ReadOnlyKey(String),
    /// key `{0}` cannot be sent (empty, or contains whitespace or control characters)
    #[error("key `{0}` cannot be sent (empty, or contains whitespace or control characters)")]
    InvalidKey(String),
    /// `{key}`: the host refused the request: {reply}
    #[error("`{key}`: the host refused the request: {reply}")]
    Refused {
        /// The key of the request.
        key: String,
        /// The host's reply.
        reply: String,
    },
    /// no reply within {0:?}
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// frames kept getting corrupted in transit
    #[error("frames kept getting corrupted in transit")]
    Corrupt,
    /// the connection is closed
    #[error("the connection is closed")]
    Closed,
    /// protocol error: {0}
    #[error("protocol error: {0}")]
    Protocol(String),
    /// not running on a VMware virtual CPU
    #[error("not running on a VMware virtual CPU")]
    NotVmware,
    /// I/O error: {0}
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The guest's view of the key store.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Reads one key. `Ok(None)`: missing or empty; `<nil>` reads as `Some("")`.
    fn get(&self, key: &str) -> Result<Option<String>, TransportError>;
    /// Writes one key (the empty string goes out as `<nil>`). Keys containing `/` are refused.
    fn set(&self, key: &str, value: &str) -> Result<(), TransportError>;
    /// Every guest-visible key with plain values. One round trip on QEMU; on the backdoor,
    /// which cannot list keys, every key of the container schema (one round trip each).
    fn get_all(&self) -> Result<Map, TransportError>;
    /// Writes several keys in order, as [`Transport::set`] on each would; returns the keys
    /// that failed, with why. A transport that can have several requests in flight (QEMU's)
    /// sends them all before it waits for the answers: the host sees the same writes in the
    /// same order, one round trip's latency instead of one per key.
    fn set_many(&self, pairs: &[(String, String)]) -> Vec<(String, TransportError)> {
        pairs
            .iter()
            .filter_map(|(k, v)| self.set(k, v).err().map(|e| (k.clone(), e)))
            .collect()
    }
    /// Host-to-guest commands: `Some` on the first call, `None` afterwards.
    fn commands(&self) -> Option<Receiver<HostCommand>>;
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// reading guestinfo failed: {0}
    #[error("reading guestinfo failed: {0}")]
    Transport(#[from] TransportError),
    /// decoding guestinfo failed: {0}
    #[error("decoding guestinfo failed: {0}")]
    Decode(#[from] DecodeError),
}

/// Loads the config with the tether's semantics: [`Transport::get_all`], then
/// [`decode_into`] `cfg` (maps merge; the skip-decode fields `started`, `status`,
/// `detail.starttime/stoptime` are not read). On an error `cfg` may hold part of the new
/// keys: decode into a copy to keep the previous config whole.
pub fn reload_config(t: &dyn Transport, cfg: &mut ContainerConfig) -> Result<(), LoadError> {
    let map = t.get_all()?;
    decode_into(&map, cfg)?;
    Ok(())
}

/// Writes pairs in order (e.g. from [`crate::session_writeback`]), skipping read-only keys
/// as the original guest sink did. Every pair is tried: a key the host refuses does not
/// keep the others from it. Returns the keys that failed, with why, for the caller to
/// report.
pub fn write_pairs<K, V>(
    t: &dyn Transport,
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Vec<(String, TransportError)>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
        .filter(|(k, _)| !k.contains('/'))
        .collect();
    t.set_many(&pairs)
}

/// The wire form of a plain value (`""` ⇒ `<nil>`).
pub fn to_wire(value: &str) -> &str {
    if value.is_empty() {
        "<nil>"
    } else {
        value
    }
}

/// The plain form of a wire value: `""` is absent, `<nil>` is the empty string.
pub fn from_wire(value: &str) -> Option<String> {
    match value {
        "" => None,
        "<nil>" => Some(String::new()),
        v => Some(v.to_owned()),
    }
}

/// The client library prepends `guestinfo.` to any key not starting with `guestinfo`.
pub fn qualify(key: &str) -> Cow<'_, str> {
    if key.starts_with("guestinfo") {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("guestinfo.{key}"))
    }
}

/// Our extension: the host's clock (Unix time in ns) when it answered, computed for each
/// request and never stored (under QEMU the harness answers it; see
/// [`qemu::HostServer::set_dynamic`]).
pub const HOST_TIME_KEY: &str = "guestinfo.tether.hosttime";
/// Our extension: 32 random bytes from the host (64 hex digits), fresh for each request and
/// never stored, that seed the guest's CRNG at boot.
pub const ENTROPY_SEED_KEY: &str = "guestinfo.tether.seed";

/// Keys must survive `info-set KEY VALUE` parsing (the key ends at the first space).
pub(crate) fn check_key(key: &str) -> Result<(), TransportError> {
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TransportError::InvalidKey(key.to_owned()));
    }
    Ok(())
}

/// Validation shared by every [`Transport::set`].
pub(crate) fn check_writable(key: &str) -> Result<(), TransportError> {
    check_key(key)?;
    if key.contains('/') {
        return Err(TransportError::ReadOnlyKey(key.to_owned()));
    }
    Ok(())
}

/// Parses an RPCI `info-get` reply (`1 value` / `0 error`).
pub(crate) fn parse_get_reply(reply: &str) -> Result<Option<String>, TransportError> {
    if let Some(v) = reply.strip_prefix("1 ") {
        Ok(from_wire(v))
    } else if reply.starts_with("0 ") || reply == "0" {
        Ok(None)
    } else {
        Err(TransportError::Protocol(format!(
            "unexpected reply {:?}",
            reply.chars().take(32).collect::<String>()
        )))
    }
}

/// Checks an RPCI `info-set` reply.
pub(crate) fn check_set_reply(key: &str, reply: &str) -> Result<(), TransportError> {
    if reply.starts_with("1") {
        Ok(())
    } else {
        Err(TransportError::Refused {
            key: key.to_owned(),
            reply: reply.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_rules() {
        assert_eq!(to_wire(""), "<nil>");
        assert_eq!(to_wire("x"), "x");
        assert_eq!(from_wire(""), None);
        assert_eq!(from_wire("<nil>"), Some(String::new()));
        assert_eq!(qualify("vice./x"), "guestinfo.vice./x");
        assert_eq!(qualify("guestinfo.ovfEnv"), "guestinfo.ovfEnv");
        assert_eq!(qualify("common/name"), "guestinfo.common/name");
        assert!(check_writable("guestinfo.vice./x").is_err());
        assert!(check_writable("a b").is_err());
        assert!(check_writable("guestinfo.vice..x").is_ok());
        assert_eq!(parse_get_reply("1 <nil>").ok(), Some(Some(String::new())));
        assert_eq!(parse_get_reply("1 ").ok(), Some(None));
        assert_eq!(parse_get_reply("0 No value found").ok(), Some(None));
        assert!(parse_get_reply("x").is_err());
    }
}
