//! Starting a session's process: executable resolution with the original's rules and error
//! texts, then clone and exec with the child's state reset.
//!
//! We start processes ourselves rather than with `std::process::Command`: the tether's
//! reaper owns `waitpid(-1)`, and `Command::spawn` reaps a child whose exec failed with its
//! own `waitpid`, which would race the reaper (and panic when it loses).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The exit status of a session that could not be started for a reason other than its
/// command: docker's 125 ("the daemon could not run the container"), which `docker run`
/// also exits with for an unknown user or group. The original wrote no status (0) and left
/// the code to the VCH, which maps the `started` text the same way (see README).
pub const START_FAILED: i64 = 125;

impl LaunchError {
    /// The exit status reported for the failed launch, docker's and the shell's: 127 when
    /// there is nothing to run, 126 when the command cannot be executed, [`START_FAILED`]
    /// when the process could not be set up at all.
    pub fn exit_status(&self) -> i64 {
        match self {
            LaunchError::NoSuchFile(_) | LaunchError::NotInPath(_) => 127,
            LaunchError::Exec { code, .. } if *code == libc::ENOENT => 127,
            LaunchError::NotExecutable(_) | LaunchError::Exec { .. } => 126,
            LaunchError::Nul(_)
            | LaunchError::Chdir { .. }
            | LaunchError::Credentials(_)
            | LaunchError::Fork(_)
            | LaunchError::Pipe(_) => START_FAILED,
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
    /// A cgroup's `cgroup.procs`, open for writing, that the process moves itself into
    /// before exec (see [`crate::cgroup`]); -1 for none.
    pub cgroup_procs: RawFd,
}

fn cstr(s: &str, what: &'static str) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Nul(what))
}

/// Stages at which the child can fail, reported back through shared memory.
const STAGE_DUP: u32 = 1;
const STAGE_CRED: u32 = 2;
const STAGE_CHDIR: u32 = 3;
const STAGE_EXEC: u32 = 4;
const STAGE_TTY: u32 = 5;

/// The child's stack. The child runs a few syscalls and nothing else; 64 KiB leaves room for
/// stack probes and the libc wrappers.
const CHILD_STACK: usize = 64 * 1024;

/// What the child needs, prepared by the parent before the clone. The child shares the
/// parent's memory and reads this in place; the parent is suspended until the child has
/// exec'd or exited, so it stays valid and unchanged for the child's whole life.
struct ChildArgs<'a> {
    fds: [RawFd; 3],
    ctty: bool,
    groups: &'a [libc::gid_t],
    gid: u32,
    uid: u32,
    dir: &'a CString,
    path: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// The target cgroup's `cgroup.procs` (see [`crate::cgroup`]), or -1.
    cgroup_procs: RawFd,
    /// Set by a failing child: stage in the high half, errno in the low half; 0 on success.
    failure: AtomicU64,
}

/// Starts the process and returns its PID once exec has succeeded; on failure the child has
/// exited with 127 and the reaper will collect it.
///
/// The child is created with `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: under
/// TCG, copying the tether's page tables for a `fork` costs about 10 ms of a container's
/// start. Sharing memory makes the child's side strict: it only makes raw syscalls on data
/// prepared here, with every signal blocked until its dispositions are reset.
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
    let args = ChildArgs {
        fds: [fd_of(&spec.stdin), fd_of(&spec.stdout), fd_of(&spec.stderr)],
        ctty: spec.controlling_tty,
        groups: &spec.identity.groups,
        gid: spec.identity.gid,
        uid: spec.identity.uid,
        dir: &dir,
        path: &path,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        cgroup_procs: spec.cgroup_procs,
        failure: AtomicU64::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down on x86_64: hand clone the 16-byte aligned top.
    let top = stack
        .as_mut_ptr()
        .wrapping_add(CHILD_STACK)
        .map_addr(|a| a & !15);

    let (pid, clone_error) = {
        let _blocked = SignalsBlocked::new();
        // SAFETY: `child_entry` only reads `args` and writes its atomic; `args`, the CStrings
        // and pointer arrays it refers to and `stack` all outlive the call, because
        // CLONE_VFORK suspends this thread until the child has exec'd or exited. The stack
        // top is inside `stack`, aligned, and used by nobody else. Signals are blocked for
        // the duration so no handler of ours can run on the child's side of shared memory.
        let pid = unsafe {
            libc::clone(
                child_entry,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&args).cast_mut().cast(),
            )
        };
        (pid, nix::Error::last())
    };
    drop(stack);
    drop(spec.stdin);
    drop(spec.stdout);
    drop(spec.stderr);
    if pid < 0 {
        return Err(LaunchError::Fork(clone_error));
    }
    let failure = args.failure.load(Ordering::Acquire);
    if failure == 0 {
        return Ok(Pid::from_raw(pid));
    }
    let errno = (failure & 0xffff_ffff) as i32;
    let text = nix::Error::from_raw(errno).desc().to_lowercase();
    Err(match (failure >> 32) as u32 {
        STAGE_CHDIR => LaunchError::Chdir {
            dir: spec.dir.clone(),
            errno: text,
        },
        STAGE_CRED => LaunchError::Credentials(text),
        STAGE_EXEC => LaunchError::Exec {
            path: spec.path.display().to_string(),
            errno: match missing_interpreter(&spec.path, errno) {
                Some(interp) => format!("{text} (its interpreter {interp} is missing)"),
                None => text,
            },
            code: errno,
        },
        STAGE_TTY => LaunchError::Credentials(format!("controlling terminal: {text}")),
        _ => LaunchError::Credentials(format!("set up standard streams: {text}")),
    })
}

/// A file that exists but whose exec failed with ENOENT names something that does not: a
/// script's `#!` interpreter is the usual one (or an ELF's loader). Returns the interpreter
/// when the file is such a script and the interpreter is absent.
fn missing_interpreter(path: &Path, errno: i32) -> Option<String> {
    use std::io::Read;
    if errno != libc::ENOENT {
        return None;
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head.get(..n)?.strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let interp = String::from_utf8_lossy(line)
        .split_whitespace()
        .next()?
        .to_owned();
    (!Path::new(&interp).exists()).then_some(interp)
}

/// Blocks every signal on this thread until dropped, restoring the previous mask.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        // SAFETY: sigset_t is plain data that sigfillset initialises; pthread_sigmask only
        // reads `all` and writes `old`, both valid locals.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores a mask previously returned by pthread_sigmask.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed to clone, alive and unchanged
    // while this child runs (the parent is suspended by CLONE_VFORK).
    unsafe { child_after_clone(&*arg.cast::<ChildArgs<'_>>()) }
}

/// The kernel's `struct sigaction` for x86_64 (not libc's): all zero is SIG_DFL, no flags,
/// empty mask.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The child's side of `spawn`. Never returns.
///
/// Only raw syscalls: the child shares the parent's memory, so it must not allocate, take
/// locks or run libc code that keeps process-wide state. musl's `setuid` and friends, for
/// one, signal every thread of the (parent's) process to change credentials with it.
///
/// # Safety
/// Must only be called in a child created by `spawn`'s clone, with `a` valid.
unsafe fn child_after_clone(a: &ChildArgs<'_>) -> ! {
    let fail = |stage: u32| -> ! {
        // SAFETY: reading errno is a read of this thread's (the parent's, shared) errno slot,
        // which the failing syscall just set; _exit ends only this child.
        unsafe {
            let errno = (*libc::__errno_location()).unsigned_abs();
            a.failure
                .store(u64::from(stage) << 32 | u64::from(errno), Ordering::Release);
            libc::_exit(127)
        }
    };
    // SAFETY: raw syscalls on valid arguments prepared by the parent.
    unsafe {
        // The tether handles signals for its own purposes and the parent blocked them all;
        // a fresh process must start with default dispositions and an empty mask (an
        // ignored disposition such as Rust's SIGPIPE survives exec). Dispositions first, so
        // no signal unblocked afterwards can reach one of the tether's handlers.
        let dfl = KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        // Into its cgroup before anything of the workload runs: "0" moves the writer. A
        // failure leaves it where the tether is, which only costs the CPU sharing.
        if a.cgroup_procs >= 0 {
            libc::syscall(libc::SYS_write, a.cgroup_procs, b"0".as_ptr(), 1usize);
        }
        // Its own session and process group, so signals to the group reach the whole job
        // and nothing of the tether.
        libc::syscall(libc::SYS_setsid);
        for (target, fd) in (0 as RawFd..).zip(a.fds.iter()) {
            if *fd == target {
                let flags = libc::syscall(libc::SYS_fcntl, target, libc::F_GETFD);
                libc::syscall(
                    libc::SYS_fcntl,
                    target,
                    libc::F_SETFD,
                    flags & !(libc::FD_CLOEXEC as libc::c_long),
                );
            } else if libc::syscall(libc::SYS_dup2, *fd, target) < 0 {
                fail(STAGE_DUP);
            }
        }
        if a.ctty && libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSCTTY, 0) < 0 {
            fail(STAGE_TTY);
        }
        if libc::syscall(libc::SYS_setgroups, a.groups.len(), a.groups.as_ptr()) < 0 {
            fail(STAGE_CRED);
        }
        if libc::syscall(libc::SYS_setgid, a.gid) < 0 {
            fail(STAGE_CRED);
        }
        if libc::syscall(libc::SYS_setuid, a.uid) < 0 {
            fail(STAGE_CRED);
        }
        if libc::syscall(libc::SYS_chdir, a.dir.as_ptr()) < 0 {
            fail(STAGE_CHDIR);
        }
        libc::syscall(
            libc::SYS_execve,
            a.path.as_ptr(),
            a.argv.as_ptr(),
            a.envp.as_ptr(),
        );
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
        assert_eq!(LaunchError::NoSuchFile("x".into()).exit_status(), 127);
        assert_eq!(LaunchError::NotExecutable("x".into()).exit_status(), 126);
        let exec = |code| LaunchError::Exec {
            path: "x".into(),
            errno: String::new(),
            code,
        };
        assert_eq!(exec(libc::ENOENT).exit_status(), 127);
        assert_eq!(exec(libc::EACCES).exit_status(), 126);
        assert_eq!(exec(libc::ENOEXEC).exit_status(), 126);
        let chdir = LaunchError::Chdir {
            dir: "/x".into(),
            errno: "no such file or directory".into(),
        };
        assert_eq!(chdir.exit_status(), START_FAILED);
        assert_eq!(
            LaunchError::Credentials("x".into()).exit_status(),
            START_FAILED
        );
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
            cgroup_procs: -1,
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
    fn child_gets_its_identity_and_an_empty_signal_mask() {
        // Tests run as root here (the e2e suite needs it); the credentials part needs it too.
        assert!(nix::unistd::getuid().is_root(), "launch tests need root");
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut s = spec(
            "/bin/sh",
            &[
                "sh",
                "-c",
                "id -u; id -g; id -G; grep -E '^SigBlk' /proc/self/status",
            ],
            "/",
            Stdio::Fd(w),
        );
        s.identity = Identity {
            uid: 65534,
            gid: 65533,
            groups: vec![65533, 4242],
            home: "/".into(),
        };
        // A blocked signal in the parent must not stay blocked in the child.
        let mut usr1 = nix::sys::signal::SigSet::empty();
        usr1.add(nix::sys::signal::Signal::SIGUSR1);
        let old = usr1
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .unwrap();
        let pid = spawn(s);
        old.thread_set_mask().unwrap();
        let pid = pid.unwrap();
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        nix::sys::wait::waitpid(pid, None).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "65534", "{out}");
        assert_eq!(lines[1], "65533", "{out}");
        assert_eq!(lines[2], "65533 4242", "{out}");
        assert_eq!(
            lines[3].split_whitespace().nth(1),
            Some("0000000000000000"),
            "{out}"
        );
        // The credentials changed in the child only.
        assert!(nix::unistd::getuid().is_root());
        assert!(nix::unistd::geteuid().is_root());
    }

    #[test]
    fn a_script_without_its_interpreter_says_so() {
        let script = std::env::temp_dir().join(format!("tether-script-{}", std::process::id()));
        std::fs::write(&script, b"#!/no/such/interpreter -x\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = spawn(spec(script.to_str().unwrap(), &[], "/", Stdio::Null)).unwrap_err();
        assert_eq!(e.exit_status(), 127, "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "fork/exec {}: no such file or directory (its interpreter /no/such/interpreter is missing)",
                script.display()
            )
        );
        assert_eq!(missing_interpreter(&script, libc::EACCES), None);
        let _ = std::fs::remove_file(&script);
        while nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            .is_ok_and(|s| s != nix::sys::wait::WaitStatus::StillAlive)
        {}
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
