//! Sockets only their owner may use. Whoever can connect to a keeper's control socket can
//! exec in its container, to QEMU's monitor can do anything to the VM, to the daemon's
//! socket can start VMs: each is created with no access for group and others from its
//! first moment (the umask is narrowed around the bind), then set to 0600 in case the file
//! system ignored the umask.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Mutex;

/// The umask is one per process: binds that narrow it take turns, so that one does not
/// restore another's narrowed mask as the process's own.
static UMASK: Mutex<()> = Mutex::new(());

/// The mode every private socket gets.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds a Unix socket at `path` (an old socket file there is removed) that only this
/// process's user may connect to. Non-blocking, ready for tokio's `from_std`.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use nix::sys::stat::{umask, Mode};
    let _ = std::fs::remove_file(path);
    let listener = {
        let _turn = UMASK.lock().unwrap_or_else(|p| p.into_inner());
        let old = umask(Mode::from_bits_truncate(0o177));
        let l = UnixListener::bind(path);
        umask(old);
        l?
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// [`bind_unix`] for tokio.
pub fn bind_tokio(path: &Path) -> io::Result<tokio::net::UnixListener> {
    tokio::net::UnixListener::from_std(bind_unix(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_owner_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("s.sock");
        std::fs::write(&p, b"stale").expect("stale file");
        let _l = bind_unix(&p).expect("bind");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        // The process's umask is what it was.
        let now = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(now);
        assert_ne!(now.bits(), 0o177);
    }
}
