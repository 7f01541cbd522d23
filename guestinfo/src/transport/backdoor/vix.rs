//! The slice of the VIX guest-operations protocol the container needs: a relayed
//! `StartProgram` whose program path names a built-in action (tether-lifecycle.md §13).

use crate::transport::HostCommand;
use crate::value::b64_decode;

/// `VIX_COMMAND_MAGIC_WORD`, first in every request header.
pub const MAGIC: u32 = 0xd00d_0001;
/// `VIX_COMMAND_GET_TOOLS_STATE`.
pub const OP_GET_TOOLS_STATE: u32 = 62;
/// `VIX_COMMAND_START_PROGRAM`: how the VCH asks for `kill`, `group-kill` and `reload`.
pub const OP_START_PROGRAM: u32 = 185;
/// `VIX_USER_CREDENTIAL_NAME_PASSWORD`, the only credential type accepted.
pub const CREDENTIAL_NAME_PASSWORD: u32 = 1;
/// `VIX_COMMAND_GUEST_RETURNS_BINARY`.
pub const RETURNS_BINARY: u8 = 0x80;

/// `VIX_OK`.
pub const OK: u32 = 0;
/// `VIX_E_FAIL`.
pub const FAIL: u32 = 1;
/// The credential was refused: its user may not act.
pub const AUTHENTICATION_FAIL: u32 = 35;
/// `VIX_E_UNRECOGNIZED_COMMAND_IN_GUEST`.
pub const UNRECOGNIZED_COMMAND_IN_GUEST: u32 = 3025;
/// `VIX_E_INVALID_MESSAGE_HEADER`.
pub const INVALID_MESSAGE_HEADER: u32 = 10000;
/// `VIX_E_INVALID_MESSAGE_BODY`.
pub const INVALID_MESSAGE_BODY: u32 = 10001;

/// Packed little-endian request header: common header (23 bytes) + command fields (28).
pub const HEADER_LEN: usize = 51;

/// The fields of `CommandRequestHeader` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Must be [`MAGIC`].
    pub magic: u32,
    /// Bytes of the command body after the header.
    pub body_length: u32,
    /// Bytes of the credential after the body.
    pub credential_length: u32,
    /// Flags, [`RETURNS_BINARY`] among them.
    pub common_flags: u8,
    /// The command ([`OP_START_PROGRAM`], ...).
    pub opcode: u32,
    /// How the credential is encoded.
    pub credential_type: u32,
}

/// A little-endian cursor that never panics.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn trim_nul(b: &[u8]) -> String {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(b.get(..end).unwrap_or_default()).into_owned()
}

impl Header {
    fn parse(c: &mut Cursor<'_>) -> Option<Header> {
        let magic = c.u32()?;
        let _message_version = c.u16()?;
        let _total_length = c.u32()?;
        let _header_length = c.u32()?;
        let body_length = c.u32()?;
        let credential_length = c.u32()?;
        let common_flags = c.u8()?;
        let opcode = c.u32()?;
        let _request_flags = c.u32()?;
        let _timeout = c.u32()?;
        let _cookie = c.u64()?;
        let _client_handle = c.u32()?;
        let credential_type = c.u32()?;
        Some(Header {
            magic,
            body_length,
            credential_length,
            common_flags,
            opcode,
            credential_type,
        })
    }
}

/// `StartProgram` fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartProgram {
    /// The program: here the name of a built-in action ([`HostCommand::from_vix_program`]).
    pub program_path: String,
    /// Its arguments: the action's signal.
    pub arguments: String,
    /// Its working directory (unused).
    pub working_dir: String,
}

fn parse_start_program(body: &[u8]) -> Option<StartProgram> {
    let mut c = Cursor(body);
    let _minimized = c.u8()?;
    let path_len = c.u32()? as usize;
    let args_len = c.u32()? as usize;
    let dir_len = c.u32()? as usize;
    let _num_env = c.u32()?;
    let _env_len = c.u32()?;
    let mut field = |len: usize| -> Option<String> { Some(trim_nul(c.take(len)?)) };
    Some(StartProgram {
        program_path: field(path_len)?,
        arguments: field(args_len)?,
        working_dir: field(dir_len)?,
    })
}

/// The user name of a name/password credential (`{NameLength, PasswordLength}` then
/// base64 of `name\0password\0`).
fn credential_user(cred: &[u8]) -> Option<String> {
    let end = cred.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    let mut c = Cursor(cred.get(..end)?);
    let name_len = c.u32()? as usize;
    let _password_len = c.u32()?;
    let decoded = b64_decode(std::str::from_utf8(c.0).ok()?).ok()?;
    Some(String::from_utf8_lossy(decoded.get(..name_len)?).into_owned())
}

/// `"<rc> <errno> "` + (`#` if binary) + data + (NUL unless binary).
pub fn result(header: &Header, rc: u32, data: &[u8]) -> Vec<u8> {
    let binary = header.common_flags & RETURNS_BINARY != 0;
    let mut out = format!("{rc} 0 ").into_bytes();
    if binary {
        out.push(b'#');
    }
    out.extend_from_slice(data);
    if !binary {
        out.push(0);
    }
    out
}

/// What a relayed VIX command asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply payload (after `OK `).
    pub reply: Vec<u8>,
    /// The action to perform, if any.
    pub command: Option<HostCommand>,
}

/// A VIX request too short to hold its header: it cannot even be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VIX request shorter than its header")]
pub struct ShortRequest;

/// Handles `Vix_1_Relayed_Command` arguments. `authorized(user)` says whether a credential's
/// user may act (the container id or a volume label); `pid` supplies pseudo PIDs.
/// `Err` means the request could not even be parsed (the toolbox then answers `ERR `).
pub fn dispatch(
    data: &[u8],
    authorized: &dyn Fn(&str) -> bool,
    pid: &mut dyn FnMut() -> u64,
) -> Result<Outcome, ShortRequest> {
    // Optional quoted request name, then a NUL.
    let mut data = data.strip_prefix(b"\"").unwrap_or(data);
    if let Some(ix) = data.iter().position(|&b| b == b'"') {
        if ix > 0 {
            data = data.get(ix + 1..).unwrap_or_default();
        }
    }
    let data = data.strip_prefix(&[0u8]).unwrap_or(data);
    let mut c = Cursor(data);
    let header = Header::parse(&mut c).ok_or(ShortRequest)?;
    let reply = |rc: u32, payload: &[u8]| Outcome {
        reply: result(&header, rc, payload),
        command: None,
    };
    if header.magic != MAGIC {
        return Ok(reply(INVALID_MESSAGE_HEADER, b""));
    }
    if header.opcode != OP_START_PROGRAM {
        return Ok(reply(UNRECOGNIZED_COMMAND_IN_GUEST, b""));
    }
    let rest = c.0;
    let body = rest.get(..header.body_length as usize);
    let cred = rest
        .get(header.body_length as usize..)
        .and_then(|r| r.get(..header.credential_length as usize));
    let (Some(body), Some(cred)) = (body, cred) else {
        return Ok(reply(INVALID_MESSAGE_BODY, b""));
    };
    if header.credential_type != CREDENTIAL_NAME_PASSWORD {
        let msg = format!("unsupported UserCredentialType={}", header.credential_type);
        return Ok(reply(AUTHENTICATION_FAIL, msg.as_bytes()));
    }
    match credential_user(cred) {
        Some(user) if authorized(&user) => {}
        Some(user) => {
            let msg = format!("invalid user {user:?}");
            return Ok(reply(AUTHENTICATION_FAIL, msg.as_bytes()));
        }
        None => return Ok(reply(AUTHENTICATION_FAIL, b"malformed credentials")),
    }
    let Some(start) = parse_start_program(body) else {
        return Ok(reply(INVALID_MESSAGE_BODY, b""));
    };
    let Some(command) = HostCommand::from_vix_program(&start.program_path, &start.arguments) else {
        let msg = format!("unknown command {:?}", start.program_path);
        return Ok(reply(FAIL, msg.as_bytes()));
    };
    let mut payload = pid().to_string().into_bytes();
    payload.push(0);
    Ok(Outcome {
        reply: result(&header, OK, &payload),
        command: Some(command),
    })
}

/// Builders for tests (and for anyone who wants to poke a tether by hand).
#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test requests: their lengths are a few bytes"
)]
pub mod build {
    use super::*;
    use crate::value::b64_encode;

    /// A name-password credential.
    pub fn credential(user: &str, password: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(user.len() as u32).to_le_bytes());
        out.extend_from_slice(&(password.len() as u32).to_le_bytes());
        out.extend_from_slice(b64_encode(format!("{user}\0{password}\0").as_bytes()).as_bytes());
        out.push(0);
        out
    }

    /// A `StartProgram` body.
    pub fn start_program(path: &str, args: &str) -> Vec<u8> {
        let mut body = vec![0u8];
        let lens = |s: &str| if s.is_empty() { 0 } else { s.len() as u32 + 1 };
        for l in [lens(path), lens(args), 0, 0, 0] {
            body.extend_from_slice(&l.to_le_bytes());
        }
        for s in [path, args] {
            if !s.is_empty() {
                body.extend_from_slice(s.as_bytes());
                body.push(0);
            }
        }
        body
    }

    /// `"Vix_1_Relayed_Command" "<header><body><credential>"` as the VMX relays it.
    pub fn relayed(opcode: u32, flags: u8, body: &[u8], cred: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC.to_le_bytes());
        h.extend_from_slice(&5u16.to_le_bytes());
        let total = (HEADER_LEN + body.len() + cred.len()) as u32;
        h.extend_from_slice(&total.to_le_bytes());
        h.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h.extend_from_slice(&(body.len() as u32).to_le_bytes());
        h.extend_from_slice(&(cred.len() as u32).to_le_bytes());
        h.push(flags);
        h.extend_from_slice(&opcode.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&CREDENTIAL_NAME_PASSWORD.to_le_bytes());
        assert_eq!(h.len(), HEADER_LEN);
        let mut out = b"Vix_1_Relayed_Command \"".to_vec();
        out.extend_from_slice(b"reqname\"\0");
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.extend_from_slice(cred);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const CID: &str = "0123abcd";

    fn run(req: &[u8]) -> Result<Outcome, ShortRequest> {
        let args = req.splitn(2, |&b| b == b' ').nth(1).unwrap_or_default();
        let mut n = 1000;
        dispatch(args, &|u| u == CID || u == "vol1-label", &mut || {
            n += 1;
            n
        })
    }

    #[test]
    fn start_program_actions() {
        let cred = credential(CID, "ignored");
        for (path, args, want) in [
            ("kill", "KILL", HostCommand::Kill("KILL".to_owned())),
            ("kill", "", HostCommand::Kill("TERM".to_owned())),
            ("group-kill", "15", HostCommand::GroupKill("15".to_owned())),
            ("reload", "", HostCommand::Reload),
        ] {
            let req = relayed(OP_START_PROGRAM, 0, &start_program(path, args), &cred);
            let out = run(&req);
            assert_eq!(
                out,
                Ok(Outcome {
                    reply: b"0 0 1001\0\0".to_vec(),
                    command: Some(want)
                })
            );
        }
        let cred = credential("vol1-label", "");
        let req = relayed(
            OP_START_PROGRAM,
            RETURNS_BINARY,
            &start_program("reload", ""),
            &cred,
        );
        assert_eq!(run(&req).map(|o| o.reply), Ok(b"0 0 #1001\0".to_vec()));
    }

    #[test]
    fn refusals() {
        let good = credential(CID, "");
        let req = relayed(OP_START_PROGRAM, 0, &start_program("rm", "-rf /"), &good);
        assert_eq!(
            run(&req),
            Ok(Outcome {
                reply: b"1 0 unknown command \"rm\"\0".to_vec(),
                command: None
            })
        );
        let bad = credential("root", "");
        let req = relayed(OP_START_PROGRAM, 0, &start_program("kill", ""), &bad);
        let out = run(&req).map(|o| (o.reply.starts_with(b"35 0 "), o.command));
        assert_eq!(out, Ok((true, None)));
        let req = relayed(186, 0, b"", &good);
        assert_eq!(run(&req).map(|o| o.reply), Ok(b"3025 0 \0".to_vec()));
        let mut req = relayed(OP_START_PROGRAM, 0, &start_program("kill", ""), &good);
        let magic_at = req.iter().position(|&b| b == 0x01).unwrap_or(0);
        req[magic_at] = 0x02;
        assert_eq!(run(&req).map(|o| o.reply), Ok(b"10000 0 \0".to_vec()));
        assert!(run(b"Vix_1_Relayed_Command \"x\"\0short").is_err());
        // Lengths pointing past the end are refused, not trusted.
        let req = relayed(OP_START_PROGRAM, 0, &[0xFF; 3], &good);
        assert!(run(&req).is_ok_and(|o| o.command.is_none()));
    }
}
