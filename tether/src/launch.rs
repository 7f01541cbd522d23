//! Starting a session's process: executable resolution with the original's rules and error
//! texts, then fork and exec with the child's state reset.
//!
//! We fork ourselves rather than use `std::process::Command`: the tether's reaper owns
//! `waitpid(-1)`, and `Command::spawn` reaps a child whose exec failed with its own `waitpid`,
//! which would race the reaper (and panic when it loses).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::user::Identity;

/// Why a launch failed; the text is what the user sees in `started`.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// an explicit path does not exist
    #[error("stat {0}: no such file or directory")]
    NoSuchFile(String),
    /// a bare command name is not in the session's PATH
    #[error("{0}: no such executable in PATH")]
    NotInPath(String),
    /// the file exists but is not an executable file
    #[error("{0}: permission denied")]
    NotExecutable(String),
    /// an argument, variable or path holds a NUL byte
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// the working directory could not be entered
    #[error("chdir {dir}: {errno}")]
    Chdir { dir: String, errno: String },
    /// the user's credentials could not be applied
    #[error("set credentials: {0}")]
    Credentials(String),
    /// exec failed after the file was found
    #[error("fork/exec {path}: {errno}")]
    Exec {
        path: String,
        errno: String,
        code: i32,
    },
    /// creating the process failed
    #[error("fork: {0}")]
    Fork(nix::Error),
    /// creating a pipe failed
    #[error("pipe: {0}")]
    Pipe(nix::Error),
}

impl LaunchError {
    /// The exit status reported for the failed launch, with the shell's meaning: 127 when
    /// there is nothing to run, 126 when it cannot be run.
    pub fn exit_status(&self) -> i64 {
        match self {
            LaunchError::NoSuchFile(_) | LaunchError::NotInPath(_) => 127,
            LaunchError::Exec { code, .. } if *code == libc::ENOENT => 127,
            _ => 126,
        }
    }
}

fn is_executable_file(p: &Path) -> Option<bool> {
    let m = std::fs::metadata(p).ok()?;
    Some(!m.is_dir() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves `file` the way the original did (lifecycle §9.3): `./x` and `../x` against the
/// session's directory, anything with a `/` as is, a bare name through the session's own PATH.
pub fn resolve_executable(file: &str, dir: &str, env: &[String]) -> Result<PathBuf, LaunchError> {
    let dir = if dir.is_empty() { "/" } else { dir };
    let check = |p: PathBuf| match is_executable_file(&p) {
        None => Err(LaunchError::NoSuchFile(p.display().to_string())),
        Some(false) => Err(LaunchError::NotExecutable(p.display().to_string())),
        Some(true) => Ok(p),
    };
    if file.starts_with("./") || file.starts_with("../") {
        return check(Path::new(dir).join(file));
    }
    if file.contains('/') {
        return check(PathBuf::from(file));
    }
    if file.is_empty() {
        return Err(LaunchError::NotInPath(file.into()));
    }
    let path_var = env.iter().rev().find_map(|e| e.strip_prefix("PATH="));
    let mut saw_non_exec = None;
    for elem in path_var
        .map(|p| p.split(':').collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let base = if elem.is_empty() {
            Path::new(dir)
        } else {
            Path::new(elem)
        };
        let cand = base.join(file);
        match is_executable_file(&cand) {
            Some(true) => return Ok(cand),
            Some(false) => saw_non_exec = saw_non_exec.or(Some(cand)),
            None => {}
        }
    }
    match saw_non_exec {
        Some(p) => Err(LaunchError::NotExecutable(p.display().to_string())),
        None => Err(LaunchError::NotInPath(file.into())),
    }
}

/// Where a child's standard stream goes.
#[derive(Debug)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// This descriptor (the child's end of a pipe or pty).
    Fd(OwnedFd),
}

/// Everything needed to start a process.
#[derive(Debug)]
pub struct Spec {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub dir: String,
    pub identity: Identity,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Make stdin the controlling terminal (pty sessions).
    pub controlling_tty: bool,
}

fn cstr(s: &str, what: &'static str) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Nul(what))
}

/// Stages at which the child can fail, reported through the error pipe.
const STAGE_DUP: u8 = 1;
const STAGE_CRED: u8 = 2;
const STAGE_CHDIR: u8 = 3;
const STAGE_EXEC: u8 = 4;
const STAGE_TTY: u8 = 5;

/// Forks and execs. Returns the child's PID once exec has succeeded; on failure the child has
/// exited with 127 and the reaper will collect it.
pub fn spawn(spec: Spec) -> Result<Pid, LaunchError> {
    let path = cstr(&spec.path.to_string_lossy(), "path")?;
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstr(a, "argument"))
        .collect::<Result<_, _>>()?;
    let argv = if argv.is_empty() {
        vec![path.clone()]
    } else {
        argv
    };
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|e| cstr(e, "environment"))
        .collect::<Result<_, _>>()?;
    let dir = cstr(
        if spec.dir.is_empty() { "/" } else { &spec.dir },
        "directory",
    )?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = spec.identity.groups.clone();
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| LaunchError::Credentials(format!("open /dev/null: {e}")))?;
    let fd_of = |s: &Stdio| -> RawFd {
        match s {
            Stdio::Null => null.as_raw_fd(),
            Stdio::Fd(fd) => fd.as_raw_fd(),
        }
    };
    let fds = [fd_of(&spec.stdin), fd_of(&spec.stdout), fd_of(&spec.stderr)];
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
    let err_w_raw = err_w.as_raw_fd();
    let (uid, gid) = (spec.identity.uid, spec.identity.gid);
    let ctty = spec.controlling_tty;

    // SAFETY: between fork and exec the child only calls async-signal-safe libc functions on
    // memory prepared before the fork (CStrings, pointer arrays, the groups vector), which
    // stays valid because the parent's copies are not freed in the child's address space
    // until exec replaces it or `_exit` ends it. No allocation, no locks, no Rust std I/O.
    match unsafe { nix::unistd::fork() }.map_err(LaunchError::Fork)? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: see above; every call is async-signal-safe and every pointer is valid.
            unsafe {
                child_after_fork(
                    fds, ctty, &groups, gid, uid, &dir, &path, &argv_ptrs, &envp_ptrs, err_w_raw,
                )
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(err_w);
            drop(spec.stdin);
            drop(spec.stdout);
            drop(spec.stderr);
            let mut buf = [0u8; 5];
            let n = read_full(&err_r, &mut buf);
            if n == 0 {
                return Ok(child);
            }
            let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
            let text = nix::Error::from_raw(errno).desc().to_lowercase();
            Err(match buf[0] {
                STAGE_CHDIR => LaunchError::Chdir {
                    dir: spec.dir.clone(),
                    errno: text,
                },
                STAGE_CRED => LaunchError::Credentials(text),
                STAGE_EXEC => LaunchError::Exec {
                    path: spec.path.display().to_string(),
                    errno: text,
                    code: errno,
                },
                STAGE_TTY => LaunchError::Credentials(format!("controlling terminal: {text}")),
                _ => LaunchError::Credentials(format!("set up standard streams: {text}")),
            })
        }
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
    }
    got
}

/// The child's side of `spawn`. Never returns.
///
/// # Safety
/// Must only be called in a freshly forked child; all pointers must be valid C strings or
/// null-terminated arrays of them.
#[allow(clippy::too_many_arguments)]
unsafe fn child_after_fork(
    fds: [RawFd; 3],
    ctty: bool,
    groups: &[libc::gid_t],
    gid: u32,
    uid: u32,
    dir: &CString,
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err_w: RawFd,
) -> ! {
    let fail = |stage: u8| -> ! {
        // SAFETY: errno location is thread-local and valid; write/_exit are async-signal-safe.
        unsafe {
            let e = *libc::__errno_location();
            let b = e.to_le_bytes();
            let msg = [stage, b[0], b[1], b[2], b[3]];
            libc::write(err_w, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // SAFETY: plain syscalls on valid arguments in the forked child.
    unsafe {
        // The tether blocks and handles signals for its own purposes; a fresh process must
        // start with an empty mask and default dispositions (SIGPIPE is ignored by Rust's
        // runtime, and an ignored disposition survives exec).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Its own session and process group, so signals to the group reach the whole job
        // and nothing of the tether.
        libc::setsid();
        for (target, fd) in fds.iter().enumerate() {
            let target = target as RawFd;
            if *fd == target {
                let flags = libc::fcntl(target, libc::F_GETFD);
                libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(*fd, target) < 0 {
                fail(STAGE_DUP);
            }
        }
        if ctty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
            fail(STAGE_TTY);
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
            fail(STAGE_CRED);
        }
        if libc::setgid(gid) < 0 {
            fail(STAGE_CRED);
        }
        if libc::setuid(uid) < 0 {
            fail(STAGE_CRED);
        }
        if libc::chdir(dir.as_ptr()) < 0 {
            fail(STAGE_CHDIR);
        }
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(STAGE_EXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(path: &str) -> Vec<String> {
        vec![format!("PATH={path}")]
    }

    #[test]
    fn resolves_through_session_path() {
        assert_eq!(
            resolve_executable("sh", "/", &env("/nonexistent:/bin")).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn error_texts_match_the_original() {
        assert_eq!(
            resolve_executable("/not/there", "/", &[])
                .unwrap_err()
                .to_string(),
            "stat /not/there: no such file or directory"
        );
        assert_eq!(
            resolve_executable("notthere", "/", &env("/bin"))
                .unwrap_err()
                .to_string(),
            "notthere: no such executable in PATH"
        );
        // No PATH in the session's env: nothing is searched (the tether's own PATH is not used).
        assert!(matches!(
            resolve_executable("sh", "/", &[]),
            Err(LaunchError::NotInPath(_))
        ));
        assert!(matches!(
            resolve_executable("/etc/passwd", "/", &[]),
            Err(LaunchError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve_executable("/", "/", &[]),
            Err(LaunchError::NotExecutable(_))
        ));
    }

    #[test]
    fn relative_paths_use_the_session_dir() {
        assert_eq!(
            resolve_executable("./sh", "/bin", &[]).unwrap(),
            PathBuf::from("/bin/./sh")
        );
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(LaunchError::NotInPath("x".into()).exit_status(), 127);
        assert_eq!(LaunchError::NotExecutable("x".into()).exit_status(), 126);
    }
}

#[cfg(test)]
mod spawn_tests {
    use super::*;
    use crate::user::Identity;
    use std::io::Read;

    fn me() -> Identity {
        Identity {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups: vec![],
            home: "/".into(),
        }
    }

    fn spec(path: &str, args: &[&str], dir: &str, stdout: Stdio) -> Spec {
        Spec {
            path: PathBuf::from(path),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["ONLY=this".into()],
            dir: dir.into(),
            identity: me(),
            stdin: Stdio::Null,
            stdout,
            stderr: Stdio::Null,
            controlling_tty: false,
        }
    }

    #[test]
    fn runs_with_exact_env_dir_and_default_sigpipe() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // SIGPIPE must be default in the child even though the test harness (Rust) ignores it.
        let script = "env; pwd; grep -E '^SigIgn' /proc/self/status; exit 3";
        let pid = spawn(spec("/bin/sh", &["sh", "-c", script], "/tmp", Stdio::Fd(w))).unwrap();
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(crate::reaper::exit_code(status).map(|(_, c)| c), Some(3));
        assert!(out.contains("ONLY=this\n"), "{out}");
        assert!(!out.contains("HOME="), "tether's environment leaked: {out}");
        assert!(out.contains("/tmp\n"), "{out}");
        let ign = out.lines().find(|l| l.starts_with("SigIgn")).unwrap();
        let mask = u64::from_str_radix(ign.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(
            mask & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE still ignored: {ign}"
        );
    }

    #[test]
    fn child_errors_come_back_typed() {
        let e = spawn(spec("/bin/true", &[], "/no/such/dir", Stdio::Null)).unwrap_err();
        assert!(matches!(e, LaunchError::Chdir { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "chdir /no/such/dir: no such file or directory"
        );
        let e = spawn(spec("/no/such/binary", &[], "/", Stdio::Null)).unwrap_err();
        assert_eq!(e.exit_status(), 127, "{e}");
        // Reap the failed children so they do not linger in the test process.
        while nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            .is_ok_and(|s| s != nix::sys::wait::WaitStatus::StillAlive)
        {}
    }
}
