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
pub mod frame;
pub mod qemu;

use std::borrow::Cow;
use std::fmt;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::{decode_into, ContainerConfig, DecodeError, Map};

/// A command pushed by the host (the VCH / harness) to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    /// Re-read the config (the toolbox `reload` action; `SIGHUP` in the original).
    Reload,
    /// Signal the primary session's process (argument: signal name or number).
    Kill(String),
    /// Signal the primary session's process group.
    GroupKill(String),
    /// Stop the container and power off (`OS_Halt`).
    Halt,
}

impl HostCommand {
    /// Parses the text form (`reload`, `kill SIG`, `group-kill SIG`, `halt`). A kill without a
    /// signal means `TERM`, as in the original toolbox action.
    pub fn parse(text: &str) -> Option<HostCommand> {
        let text = text.trim_end_matches('\0').trim();
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        let signal = || {
            let arg = arg.trim();
            if arg.is_empty() { "TERM" } else { arg }.to_owned()
        };
        match verb {
            "reload" => Some(HostCommand::Reload),
            "halt" => Some(HostCommand::Halt),
            "kill" => Some(HostCommand::Kill(signal())),
            "group-kill" => Some(HostCommand::GroupKill(signal())),
            _ => None,
        }
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostCommand::Reload => f.write_str("reload"),
            HostCommand::Halt => f.write_str("halt"),
            HostCommand::Kill(sig) => write!(f, "kill {sig}"),
            HostCommand::GroupKill(sig) => write!(f, "group-kill {sig}"),
        }
    }
}

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
    Refused { key: String, reply: String },
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

/// Boot-time load with the tether's semantics: [`Transport::get_all`], then
/// [`decode_into`] a default config (the skip-decode fields `started`, `status`,
/// `detail.starttime/stoptime` are not read).
pub fn load_config(t: &dyn Transport) -> Result<ContainerConfig, LoadError> {
    let mut cfg = ContainerConfig::default();
    reload_config(t, &mut cfg)?;
    Ok(cfg)
}

/// Reload: decodes the current keys into `cfg` (maps merge; see [`decode_into`]).
pub fn reload_config(t: &dyn Transport, cfg: &mut ContainerConfig) -> Result<(), LoadError> {
    let map = t.get_all()?;
    decode_into(&map, cfg)?;
    Ok(())
}

/// Writes a list of pairs (e.g. from [`crate::session_writeback`]) in order, skipping
/// read-only keys like the original guest sink. Stops at the first transport error.
pub fn write_pairs(t: &dyn Transport, pairs: &[(String, String)]) -> Result<(), TransportError> {
    for (k, v) in pairs {
        if k.contains('/') {
            continue;
        }
        t.set(k, v)?;
    }
    Ok(())
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
    fn commands_parse() {
        assert_eq!(HostCommand::parse("reload"), Some(HostCommand::Reload));
        assert_eq!(HostCommand::parse("halt\0"), Some(HostCommand::Halt));
        assert_eq!(
            HostCommand::parse("kill KILL"),
            Some(HostCommand::Kill("KILL".to_owned()))
        );
        assert_eq!(
            HostCommand::parse("group-kill"),
            Some(HostCommand::GroupKill("TERM".to_owned()))
        );
        assert_eq!(HostCommand::parse("reboot"), None);
        for c in [
            HostCommand::Reload,
            HostCommand::Halt,
            HostCommand::Kill("9".to_owned()),
            HostCommand::GroupKill("HUP".to_owned()),
        ] {
            assert_eq!(HostCommand::parse(&c.to_string()), Some(c));
        }
    }

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
