//! One session or exec at run time: its process, its output fan-outs, its stdin, its pty.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backchannel::requests::WindowSize;
use guestinfo::{ExitLog, SessionConfig};
use iolog::Stream;
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::launch::{self, LaunchError, Stdio};
use crate::output::{self, OutputSink};
use crate::reaper::{ExitCode, Reaper};
use crate::stdio::{self, AsyncStream, Fanout, StdinEnd, StdinMsg};
use crate::user::{self, UserError};

/// Why a session did not start; the text goes to `started`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// user or group lookup failed
    #[error(transparent)]
    User(#[from] UserError),
    /// the process could not be started
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// a pty could not be allocated
    #[error("allocate pty: {0}")]
    Pty(nix::Error),
    /// the tether could not watch the process's output
    #[error("watch process output: {0}")]
    Io(#[from] std::io::Error),
}

impl StartError {
    /// The exit status recorded for a session that never ran: the command's (127 not
    /// found, 126 not executable), else [`launch::START_FAILED`] (an unknown user or
    /// group, no pty), as `docker run` exits for the same errors.
    pub fn exit_status(&self) -> i64 {
        match self {
            StartError::Launch(e) => e.exit_status(),
            StartError::User(_) | StartError::Pty(_) | StartError::Io(_) => launch::START_FAILED,
        }
    }
}

/// Exit records kept per session (the original's unused `MaxDeathRecords`).
const EXIT_LOGS_KEPT: usize = 5;

/// Run-time state of one session or exec, shared between its launcher task, the reload
/// logic and attached clients.
#[derive(Debug)]
pub struct Session {
    pub stdout: Arc<Fanout>,
    pub stderr: Arc<Fanout>,
    /// Input for the process: exists before launch so a client attached under `runblock`
    /// can already send; input for a process without stdin (non-tty, no `openstdin`) is
    /// dropped.
    pub stdin: mpsc::Sender<StdinMsg>,
    /// The receiving end, taken by the launch.
    pub stdin_rx: Option<mpsc::Receiver<StdinMsg>>,
    /// The pty master of a tty session, for resizes.
    pub pty: Option<AsyncStream>,
    /// A size asked for before launch, applied when the pty is created (no resize race).
    pub winsize: Option<WindowSize>,
    /// Held while `runblock` keeps the launch waiting; sending (or dropping) releases it.
    pub latch: Option<oneshot::Sender<()>>,
    /// PID of the running process.
    pub pid: Option<Pid>,
    /// A launcher task exists (running, waiting on the latch, or done).
    pub launched: bool,
    /// `true` once the process exited and its output drained (or it failed to launch).
    pub done: watch::Sender<bool>,
    /// Watches for OOM kills while the process runs (see [`SessionMut::record_oom`]).
    pub oom_watch: Option<crate::services::OomWatch>,
    /// Whether the last run ended with an OOM kill in the VM.
    pub oom_killed: bool,
    /// Whether `oomkilled` = `true` was written back (so a later run writes `false`).
    pub oom_written: bool,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Session {
        let (stdin, stdin_rx) = mpsc::channel(64);
        Session {
            stdout: Arc::new(Fanout::default()),
            stderr: Arc::new(Fanout::default()),
            stdin,
            stdin_rx: Some(stdin_rx),
            pty: None,
            winsize: None,
            latch: None,
            pid: None,
            launched: false,
            done: watch::channel(false).0,
            oom_watch: None,
            oom_killed: false,
            oom_written: false,
        }
    }

    /// New output fan-outs for a relaunch (the previous ones were closed at exit).
    pub fn reset_io(&mut self) {
        self.stdout = Arc::new(Fanout::default());
        self.stderr = Arc::new(Fanout::default());
        let (stdin, stdin_rx) = mpsc::channel(64);
        self.stdin = stdin;
        self.stdin_rx = Some(stdin_rx);
        self.pty = None;
        self.pid = None;
        self.done.send_replace(false);
    }

    /// The session is over (it exited and the host has its status, or it failed to
    /// launch): attached clients are told. Output that a lingering descendant writes later
    /// still reaches the log.
    pub fn finish(&mut self) {
        self.stdout.close();
        self.stderr.close();
        self.done.send_replace(true);
    }

    /// Applies a terminal size: now if the pty exists, at launch otherwise.
    pub fn resize(&mut self, ws: WindowSize) -> Result<(), nix::Error> {
        self.winsize = Some(ws);
        match &self.pty {
            Some(master) => set_winsize(master, ws),
            None => Ok(()),
        }
    }
}

/// A session's config and its run-time state together: where its start, its exit and a
/// failed launch are recorded, in the config the host reads back (write-backs W2 and W4 of
/// executor-config.md) and in the state that attached clients and signals use.
#[derive(Debug)]
pub struct SessionMut<'a> {
    pub cfg: &'a mut SessionConfig,
    pub rt: &'a mut Session,
}

impl SessionMut<'_> {
    /// What a launch takes from the run-time state; the receiving end of stdin goes with it.
    pub fn launch_io(&mut self) -> LaunchIo {
        LaunchIo {
            stdout: self.rt.stdout.clone(),
            stderr: self.rt.stderr.clone(),
            winsize: self.rt.winsize,
            stdin: self.rt.stdin_rx.take(),
        }
    }

    /// The process started at `at` (UTC seconds): `started` = `true`, a new start time, no
    /// stop time or status yet, and `runblock` is over.
    pub fn record_start(&mut self, running: &mut Running, at: i64) {
        self.cfg.started = "true".into();
        self.cfg.detail.start_time = at;
        self.cfg.detail.stop_time = 0;
        self.cfg.exit_status = 0;
        self.cfg.run_block = false;
        self.rt.pid = Some(running.pid);
        self.rt.pty = running.pty.take();
        self.rt.oom_watch = Some(crate::services::OomWatch::start());
        self.rt.oom_killed = false;
    }

    /// Whether the kernel's OOM killer acted in the VM while the process ran. The VM is the
    /// container, so any kill counts, as any kill in a container's cgroup does for docker;
    /// the session's last exit record says so. Returns the victims.
    pub fn record_oom(&mut self) -> Vec<String> {
        let victims = self
            .rt
            .oom_watch
            .take()
            .map(|mut w| w.victims())
            .unwrap_or_default();
        self.rt.oom_killed = !victims.is_empty();
        if self.rt.oom_killed {
            if let Some(last) = self.cfg.diagnostics.exit_logs.last_mut() {
                last.message = if last.message.is_empty() {
                    "out of memory: the OOM killer acted in the container".into()
                } else {
                    format!("{} (out of memory)", last.message)
                };
            }
        }
        victims
    }

    /// The launch failed at `at`: the reason goes to `started` (what the host reports), with
    /// the exit status of a session that never ran; `runblock` is over.
    pub fn record_launch_failure(&mut self, error: &StartError, at: i64) {
        self.cfg.started = error.to_string();
        self.cfg.exit_status = error.exit_status();
        self.cfg.detail.stop_time = at;
        self.cfg.run_block = false;
    }

    /// The process exited with `code` at `at`: its status, stop time and an exit record (the
    /// last [`EXIT_LOGS_KEPT`] are kept).
    pub fn record_exit(&mut self, code: i64, at: i64) {
        self.cfg.exit_status = code;
        self.cfg.detail.stop_time = at;
        let message = if code > 128 {
            format!("killed by signal {}", code - 128)
        } else {
            String::new()
        };
        let logs = &mut self.cfg.diagnostics.exit_logs;
        logs.push(ExitLog {
            time: guestinfo::value::GoTime::from_unix(at, 0),
            exit_status: code,
            message,
        });
        let excess = logs.len().saturating_sub(EXIT_LOGS_KEPT);
        logs.drain(..excess);
        self.rt.pid = None;
        self.rt.pty = None;
    }

    /// SIGKILL could not end the process before the power-off (it sleeps uninterruptibly,
    /// e.g. on an NFS server that is gone): recorded as killed by it (128 + 9) at `at`, as a
    /// reaped one would be, so that its status does not read as the 0 of a running process.
    pub fn record_unreaped_kill(&mut self, at: i64) {
        self.record_exit(128 + i64::from(libc::SIGKILL), at);
        if let Some(last) = self.cfg.diagnostics.exit_logs.last_mut() {
            last.message = "killed by signal 9, still in uninterruptible sleep at power-off".into();
        }
    }

    /// A relaunch by the restart policy: one more resurrection, and new I/O (the previous
    /// fan-outs were closed at the exit). Returns the resurrection count.
    pub fn record_restart(&mut self) -> i64 {
        self.cfg.diagnostics.resurrection_count += 1;
        self.rt.reset_io();
        self.cfg.diagnostics.resurrection_count
    }
}

fn to_winsize(ws: WindowSize) -> libc::winsize {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    libc::winsize {
        ws_row: clamp(ws.rows),
        ws_col: clamp(ws.cols),
        ws_xpixel: clamp(ws.width_px),
        ws_ypixel: clamp(ws.height_px),
    }
}

fn set_winsize(master: &AsyncStream, ws: WindowSize) -> Result<(), nix::Error> {
    let w = to_winsize(ws);
    // SAFETY: TIOCSWINSZ reads a `winsize` from the valid pointer we pass; the descriptor
    // is kept open by `master` for the duration of the call.
    let r = unsafe { libc::ioctl(master.raw_fd(), libc::TIOCSWINSZ, &w) };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// A started process.
#[derive(Debug)]
pub struct Running {
    pub pid: Pid,
    pub exit: oneshot::Receiver<ExitCode>,
    pub pumps: Vec<JoinHandle<()>>,
    pub pty: Option<AsyncStream>,
}

/// The session's environment: exactly its configured `Env`, plus `HOME` if it has none.
pub fn environment(cfg: &SessionConfig, home: &str) -> Vec<String> {
    let mut env = cfg.cmd.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StartError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StartError::Launch(LaunchError::Pipe(e)))
}

/// What the launcher needs from the session's run-time state.
#[derive(Debug)]
pub struct LaunchIo {
    pub stdout: Arc<Fanout>,
    pub stderr: Arc<Fanout>,
    pub winsize: Option<WindowSize>,
    pub stdin: Option<mpsc::Receiver<StdinMsg>>,
}

/// Starts a session's process with its output pumped to the log and its fan-outs.
pub fn launch(
    id: &str,
    cfg: &SessionConfig,
    io: LaunchIo,
    reaper: &Reaper,
    sink: &OutputSink,
    group: crate::cgroup::Group,
) -> Result<Running, StartError> {
    crate::clock::stamp("launch");
    let identity = user::resolve(Path::new("/"), &cfg.user, &cfg.group)?;
    let env = environment(cfg, &identity.home);
    let path = launch::resolve_executable(&cfg.cmd.path, &cfg.cmd.dir, &env)?;
    let args = if cfg.cmd.args.is_empty() {
        vec![cfg.cmd.path.clone()]
    } else {
        cfg.cmd.args.clone()
    };

    let mut pumps: Vec<(Stream, AsyncStream, Arc<Fanout>)> = Vec::new();
    let mut stdin_dest = None;
    let mut pty = None;
    let (stdin, stdout, stderr) = if cfg.tty {
        let ws = io.winsize.map(to_winsize);
        let pair = nix::pty::openpty(ws.as_ref(), None).map_err(StartError::Pty)?;
        for fd in [&pair.master, &pair.slave] {
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        let master = AsyncStream::new(pair.master)?;
        let out = pair.slave.try_clone()?;
        let err = pair.slave.try_clone()?;
        pumps.push((Stream::Stdout, master.clone(), io.stdout.clone()));
        // A tty session has no separate stderr: end that stream for attached clients now.
        io.stderr.close();
        stdin_dest = Some((master.clone(), StdinEnd::Eot));
        pty = Some(master);
        (Stdio::Fd(pair.slave), Stdio::Fd(out), Stdio::Fd(err))
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        pumps.push((Stream::Stderr, AsyncStream::new(err_r)?, io.stderr.clone()));
        pumps.push((Stream::Stdout, AsyncStream::new(out_r)?, io.stdout.clone()));
        let stdin = if cfg.open_stdin {
            let (in_r, in_w) = pipe()?;
            stdin_dest = Some((AsyncStream::new(in_w)?, StdinEnd::ClosePipe));
            Stdio::Fd(in_r)
        } else {
            Stdio::Null
        };
        (stdin, Stdio::Fd(out_w), Stdio::Fd(err_w))
    };
    let spec = launch::Spec {
        path,
        args,
        env,
        dir: cfg.cmd.dir.clone(),
        identity,
        stdin,
        stdout,
        stderr,
        controlling_tty: cfg.tty,
        cgroup_procs: crate::cgroup::procs_fd(group),
    };
    let (pid, exit) = reaper.spawn(|| launch::spawn(spec))?;
    crate::clock::stamp("spawned");
    // It inherited the tether's protection from the OOM killer; the container's processes
    // are ordinary victims.
    crate::services::unprotect(pid.as_raw());
    let pumps = pumps
        .into_iter()
        .map(|(stream, src, fanout)| {
            tokio::spawn(output::pump(
                sink.clone(),
                id.to_owned(),
                stream,
                src,
                fanout,
            ))
        })
        .collect();
    if let (Some((dest, end)), Some(rx)) = (stdin_dest, io.stdin) {
        tokio::spawn(stdio::stdin_writer(dest, end, rx));
    }
    Ok(Running {
        pid,
        exit,
        pumps,
        pty,
    })
}

/// Waits for output pumps to reach EOF, at most `timeout` (descendants may hold the pipes).
/// Returns whether all finished.
pub async fn drain(pumps: &mut Vec<JoinHandle<()>>, timeout: Duration) -> bool {
    let all = async {
        for p in pumps.iter_mut() {
            let _ = p.await;
        }
    };
    let done = tokio::time::timeout(timeout, all).await.is_ok();
    if done {
        pumps.clear();
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_added_only_when_missing() {
        let mut cfg = SessionConfig::default();
        cfg.cmd.env = vec!["PATH=/bin".into()];
        assert_eq!(
            environment(&cfg, "/root"),
            vec!["PATH=/bin".to_owned(), "HOME=/root".to_owned()]
        );
        cfg.cmd.env.push("HOME=/x".into());
        assert_eq!(
            environment(&cfg, "/root"),
            vec!["PATH=/bin".to_owned(), "HOME=/x".to_owned()]
        );
    }

    fn running() -> Running {
        Running {
            pid: Pid::from_raw(42),
            exit: oneshot::channel().1,
            pumps: Vec::new(),
            pty: None,
        }
    }

    #[test]
    fn start_exit_and_failure_are_recorded() {
        let mut cfg = SessionConfig {
            run_block: true,
            exit_status: 7,
            ..SessionConfig::default()
        };
        cfg.detail.stop_time = 5;
        let mut rt = Session::new();
        let mut s = SessionMut {
            cfg: &mut cfg,
            rt: &mut rt,
        };
        s.record_start(&mut running(), 100);
        assert_eq!(
            (
                s.cfg.started.as_str(),
                s.cfg.detail.start_time,
                s.cfg.detail.stop_time,
                s.cfg.exit_status,
                s.cfg.run_block
            ),
            ("true", 100, 0, 0, false)
        );
        assert_eq!(s.rt.pid, Some(Pid::from_raw(42)));
        // Exit records: the last five are kept, a signal is named.
        for (i, code) in [0, 1, 2, 3, 4, 137].into_iter().enumerate() {
            s.record_exit(code, 200 + i64::try_from(i).unwrap());
        }
        assert_eq!((s.cfg.exit_status, s.cfg.detail.stop_time), (137, 205));
        assert_eq!(s.cfg.diagnostics.exit_logs.len(), 5);
        let last = s.cfg.diagnostics.exit_logs.last().unwrap();
        assert_eq!(last.message, "killed by signal 9");
        assert_eq!(s.cfg.diagnostics.exit_logs[0].exit_status, 1);
        assert_eq!(s.rt.pid, None);
        assert_eq!(s.record_restart(), 1);

        let err = StartError::Pty(nix::Error::ENOENT);
        s.record_launch_failure(&err, 300);
        assert_eq!(s.cfg.started, err.to_string());
        assert_eq!(
            (s.cfg.exit_status, s.cfg.detail.stop_time),
            (crate::launch::START_FAILED, 300)
        );
    }

    #[test]
    fn winsize_conversion_clamps() {
        let w = to_winsize(WindowSize {
            cols: 80,
            rows: 24,
            width_px: 70_000,
            height_px: 0,
        });
        assert_eq!(
            (w.ws_col, w.ws_row, w.ws_xpixel, w.ws_ypixel),
            (80, 24, u16::MAX, 0)
        );
    }
}
