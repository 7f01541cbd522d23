//! Who may reach what. Every socket of the VCH (the daemon's API socket, each keeper's
//! control and guestinfo sockets, QEMU's monitor, each network's switch and control
//! sockets) is its owner's only: no access bits for group and others, and another user's connection is refused by
//! the socket itself (the directories on the way are opened up for the check). The
//! back-channel's own refusals (a stranger's key, `none` when a key is configured) are in
//! `backchannel_auth`. The VIC-compatible 512-bit RSA host key and `none` authentication
//! are used only with `--vic-compat`, and the tether's log says so each time.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::docker::Daemon;

/// The user the refusals are tried as.
const NOBODY: u32 = 65534;

fn sockets(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            sockets(&p, out);
        } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
            out.push(p);
        }
    }
}

/// Connects to the Unix socket `path` as `uid` (in a forked child): 0 if it got in, else the
/// errno.
fn connect_as(uid: u32, path: &Path) -> i32 {
    // SAFETY: a zeroed sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: between fork and _exit the child calls only async-signal-safe functions
    // (setgroups, setgid, setuid, socket, connect, _exit) on memory prepared before.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        // SAFETY: as above: raw syscalls on the prepared address, then _exit.
        nix::unistd::ForkResult::Child => unsafe {
            let code = if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                100
            } else {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                }
            };
            libc::_exit(code)
        },
        nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
            other => panic!("connect child: {other:?}"),
        },
    }
}

#[test]
fn every_socket_is_the_owners_only() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this scenario tries another user's access and needs root (as the NFS ones do)"
    );
    let daemon = Daemon::start();
    let state = daemon.state.path();
    // A container on the default network: a keeper, QEMU's monitor and the network's netd.
    let (code, id, err) = e2e::vch(
        state,
        &["run", "-d", "--name", "sec", "busybox", "sleep", "600"],
    );
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_owned();
    let vm = state.join("vms").join(&id[..12]);
    assert!(
        e2e::docker::eventually(Duration::from_secs(30), || vm.join("qmp.sock").exists()),
        "no monitor socket"
    );
    let mut found = Vec::new();
    sockets(state, &mut found);
    let names: Vec<String> = found
        .iter()
        .map(|p| p.strip_prefix(state).unwrap_or(p).display().to_string())
        .collect();
    for want in ["docker.sock", "ctl.sock", "gi.sock", "qmp.sock", "sw.sock"] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "no {want} among {names:?}"
        );
    }
    // Open the directories on the way, so that only the sockets' own modes decide.
    let mut dirs: Vec<PathBuf> = found
        .iter()
        .filter_map(|p| p.parent().map(Path::to_owned))
        .collect();
    for d in dirs.clone() {
        dirs.extend(
            d.ancestors()
                .skip(1)
                .take_while(|a| a.starts_with(state))
                .map(Path::to_owned),
        );
    }
    for d in &dirs {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).expect("chmod dir");
    }
    for (p, name) in found.iter().zip(&names) {
        // 0600 from the harness, 0700 from QEMU under its 077 umask: nothing for others.
        let mode = std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
        assert_eq!(connect_as(0, p), 0, "the owner cannot connect to {name}");
        let errno = connect_as(NOBODY, p);
        assert_eq!(
            errno,
            libc::EACCES,
            "another user connecting to {name}: errno {errno}"
        );
    }
    eprintln!(
        "security: {} sockets, owner-only and refused to uid {NOBODY}: {names:?}",
        found.len()
    );
    drop(daemon);
}

/// Waits for `needle` in a VM's tether log; returns the log.
fn tether_log_with(dir: &Path, needle: &str) -> String {
    let path = dir.join("tether.debug");
    let mut log = String::new();
    e2e::docker::eventually(Duration::from_secs(60), || {
        log = std::fs::read_to_string(&path).unwrap_or_default();
        log.contains(needle)
    });
    log
}

#[test]
fn weak_rsa_only_when_asked_and_logged() {
    let vch = e2e::Vch::new();
    let plain = vch.run_detached(&[
        "--name",
        "plain",
        "--network",
        "none",
        "busybox",
        "sleep",
        "600",
    ]);
    let vic = vch.run_detached(&[
        "--name",
        "vic",
        "--network",
        "none",
        "--vic-compat",
        "busybox",
        "sleep",
        "600",
    ]);
    let vm = |id: &str| vch.dir.path().join("vms").join(&id[..12]);

    let log = tether_log_with(&vm(&plain), "back-channel host key");
    assert!(log.contains("ssh-ed25519"), "default host key:\n{log}");
    assert!(!log.contains("RSA"), "RSA without --vic-compat:\n{log}");
    assert!(
        !log.contains("`none` authentication"),
        "none without --vic-compat:\n{log}"
    );

    let log = tether_log_with(&vm(&vic), "host key is RSA");
    let line = log
        .lines()
        .find(|l| l.contains("host key is RSA"))
        .unwrap_or_default();
    assert!(line.contains("bits=512"), "{line}");
    assert!(
        log.contains("`none` authentication"),
        "VIC mode's none authentication is not logged:\n{log}"
    );
    // And the mode works: the original port layer's way in.
    let (code, out, err) = vch.cmd(&["exec", "vic", "echo", "vic-mode"]);
    assert_eq!((code, out.as_str()), (0, "vic-mode\n"), "{err}");
}
