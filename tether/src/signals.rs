//! Signal names and numbers as the host sends them (`kill TERM`, `kill 9`, `kill SIGUSR1`).
//! Unlike the original, which knew only 13 names, every signal the kernel has is accepted.

use nix::sys::signal::Signal;

/// A signal that cannot be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    /// the name or number is not a signal
    #[error("unsupported signal name: {0:?}")]
    Unknown(String),
}

/// Parses a signal given by name (case-insensitive, `SIG` prefix optional, `RTMIN+n` too) or
/// number. Returns the raw number so real-time signals work as well.
pub fn parse(s: &str) -> Result<i32, SignalError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(SignalError::Unknown(s.into()))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off = if rest.is_empty() {
            Some(0)
        } else {
            rest.strip_prefix('+').and_then(|r| r.parse::<i32>().ok())
        };
        if let Some(off) = off.filter(|o| *o >= 0) {
            let n = libc::SIGRTMIN() + off;
            if n <= libc::SIGRTMAX() {
                return Ok(n);
            }
        }
        return Err(SignalError::Unknown(s.into()));
    }
    format!("SIG{name}")
        .parse::<Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| SignalError::Unknown(s.into()))
}

/// Sends a raw signal number to a process (`pid > 0`) or process group (`pid < 0`).
pub fn send(pid: i32, signo: i32) -> nix::Result<()> {
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid, signo) };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("TERM"), Ok(15));
        assert_eq!(parse("sigkill"), Ok(9));
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse(" usr1 "), Ok(10));
        assert_eq!(parse("WINCH"), Ok(28));
        assert_eq!(parse("RTMIN+2"), Ok(libc::SIGRTMIN() + 2));
        assert!(parse("NOPE").is_err());
        assert!(parse("0").is_err());
        assert!(parse("99").is_err());
        assert_eq!(
            parse("bogus").unwrap_err().to_string(),
            "unsupported signal name: \"bogus\""
        );
    }
}
