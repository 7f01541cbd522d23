//! Names and payloads of the back-channel's SSH requests and channel type.
//! SSH wire encoding: `uint32` big endian; `string` = `uint32` length + bytes; a list of IDs
//! is a `name-list` (one string, items joined by `,`).

/// Channel type the port layer opens; its type-specific data is the raw session or exec ID.
pub const CHANNEL_ATTACH: &str = "attach";
/// Global request: the IDs of attachable sessions and execs.
pub const GLOBAL_CONTAINER_IDS: &str = "container-ids";
/// Global request: the tether's protocol version.
pub const GLOBAL_VERSION: &str = "version";
/// Channel request: liveness.
pub const REQ_PING: &str = "ping";
/// Channel request: release a session held by `runblock`.
pub const REQ_UNBLOCK: &str = "unblock";
/// Channel request: close the process's stdin once every attached input has ended.
pub const REQ_CLOSE_STDIN: &str = "close-stdin";
/// Channel request: terminal size.
pub const REQ_WINDOW_CHANGE: &str = "window-change";
/// Channel request: deliver a signal (implemented by us; the original refused it).
pub const REQ_SIGNAL: &str = "signal";

/// Raw payload of `ping` (not an SSH string).
pub const PING_PAYLOAD: &[u8] = b"Ping";
/// Raw payload of `unblock` (not an SSH string).
pub const UNBLOCK_PAYLOAD: &[u8] = b"Unblock";
/// The version the original tether reported (`feature.MaxPluginVersion - 1`), which port
/// layers compare against (≥ 6 enables exec and unblock).
pub const VERSION: u32 = 10;

/// `version` reply payload.
pub fn version_payload() -> Vec<u8> {
    VERSION.to_be_bytes().to_vec()
}

/// Parses a `version` reply payload.
pub fn parse_version(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// A list of IDs as a `name-list`. IDs containing `,` cannot be carried and are left out
/// (the original corrupted the list instead).
pub fn id_list_payload<S: AsRef<str>>(ids: &[S]) -> Vec<u8> {
    let joined = ids
        .iter()
        .map(AsRef::as_ref)
        .filter(|id| !id.contains(','))
        .collect::<Vec<_>>()
        .join(",");
    ssh_string(joined.as_bytes())
}

/// Parses a `name-list` payload.
pub fn parse_id_list(p: &[u8]) -> Option<Vec<String>> {
    let len = u32::from_be_bytes(p.get(..4)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(p.get(4..4 + len)?).ok()?;
    Some(
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// A terminal size (RFC 4254 `window-change` order: columns, rows, width px, height px).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSize {
    pub cols: u32,
    pub rows: u32,
    pub width_px: u32,
    pub height_px: u32,
}

impl WindowSize {
    /// The request payload.
    pub fn payload(&self) -> Vec<u8> {
        [self.cols, self.rows, self.width_px, self.height_px]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }

    /// Parses a request payload.
    pub fn parse(p: &[u8]) -> Option<WindowSize> {
        let w = |i: usize| -> Option<u32> {
            Some(u32::from_be_bytes(
                p.get(i * 4..i * 4 + 4)?.try_into().ok()?,
            ))
        };
        Some(WindowSize {
            cols: w(0)?,
            rows: w(1)?,
            width_px: w(2)?,
            height_px: w(3)?,
        })
    }
}

/// `signal` payload: the signal name without `SIG`, as an SSH string.
pub fn signal_payload(name: &str) -> Vec<u8> {
    ssh_string(name.as_bytes())
}

/// An SSH `string`: a u32 BE length, then the bytes. Payloads here are IDs and signal
/// names, far below the 4 GiB a length can say (an SSH packet holds 256 KiB at most).
fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Parses a `signal` payload.
pub fn parse_signal(p: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(p.get(..4)?.try_into().ok()?) as usize;
    String::from_utf8(p.get(4..4 + len)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte layouts seen on the wire with the original (attach-protocol.md).
    #[test]
    fn wire_snapshots() {
        assert_eq!(version_payload(), [0, 0, 0, 0x0a]);
        assert_eq!(
            id_list_payload(&["abc", "def"]),
            [0, 0, 0, 7, b'a', b'b', b'c', b',', b'd', b'e', b'f']
        );
        assert_eq!(id_list_payload::<&str>(&[]), [0, 0, 0, 0]);
        let ws = WindowSize {
            cols: 80,
            rows: 24,
            width_px: 640,
            height_px: 480,
        };
        assert_eq!(
            ws.payload(),
            [0, 0, 0, 0x50, 0, 0, 0, 0x18, 0, 0, 2, 0x80, 0, 0, 1, 0xe0]
        );
        assert_eq!(signal_payload("TERM"), [0, 0, 0, 4, b'T', b'E', b'R', b'M']);
    }

    #[test]
    fn parse_round_trips_and_rejects_short_input() {
        assert_eq!(parse_version(&version_payload()), Some(10));
        assert_eq!(
            parse_id_list(&id_list_payload(&["a", "b,c", "d"])),
            Some(vec!["a".into(), "d".into()])
        );
        assert_eq!(parse_id_list(&[0, 0, 0, 9, b'x']), None);
        let ws = WindowSize {
            cols: 1,
            rows: 2,
            width_px: 3,
            height_px: 4,
        };
        assert_eq!(WindowSize::parse(&ws.payload()), Some(ws));
        assert_eq!(WindowSize::parse(&[0; 15]), None);
        assert_eq!(parse_signal(&signal_payload("USR1")), Some("USR1".into()));
        assert_eq!(parse_signal(&[0, 0]), None);
    }
}
