//! The reaper: the one owner of `waitpid(-1)` in the tether.
//!
//! PID 1 inherits every orphan in the VM, so it must collect every exit or zombies pile up.
//! A thread of its own does it. SIGCHLD is blocked in every thread ([`block_sigchld`], first
//! thing in `main`) and read from a signalfd, whose siginfo names the child that exited:
//! `waitpid(pid)` of that child costs the kernel O(1), so a session's exit reaches its
//! launcher at once.
//!
//! SIGCHLD is a standard signal, though: exits that come while one is pending share it, and
//! only the first child is named. A sweep (`waitpid(-1)` until nothing has exited) collects
//! the rest once the exits pause for [`SWEEP_QUIET`], or every [`SWEEP_MAX`] in a storm that
//! does not pause. Sweeping after every signal instead walks every child each time: with
//! 10,000 orphans their exits ended at 34-36 s instead of 28 s under TCG, as they did with a
//! thread blocked in `waitpid(-1)`.
//!
//! The thread runs at a raised priority (the thread only, [`REAPER_NICE`]), so a storm of
//! exiting processes, or a busy process above the workload, cannot starve it: 10,000 orphans
//! exiting together used to leave 9,000 or more zombies behind a reaper that shared the tokio
//! thread at niceness 0, and their last one was collected 0.6 s to 1.3 s after the last exit
//! (the `orphan_storm` scenario); now 0.00-0.05 s. Raising the whole tether instead slowed the
//! output pumps threefold; this thread sleeps unless a child exits.
//!
//! Processes the tether starts are registered through [`Reaper::spawn`], which holds the
//! reaper's lock across the fork and the registration: the reaper may collect the child
//! before it is registered, but it cannot look it up until it is, so no exit is ever lost.
//! Everything else is reaped and forgotten.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

/// Exit status with the shell's convention: the exit code, or 128 + the signal number.
pub type ExitCode = i64;

/// The reaper thread's niceness. Below the workload's 0 so an exit storm cannot starve it;
/// it runs only when a child has exited, so it takes nothing from anyone otherwise.
pub const REAPER_NICE: i32 = -10;

/// How long the exits pause before the reaper sweeps for those whose SIGCHLD was shared
/// with another's (and so named only the other child).
pub const SWEEP_QUIET: Duration = Duration::from_millis(50);

/// The sweeps' period in a storm of exits that never pauses: the longest a zombie whose
/// SIGCHLD was shared waits then. Each sweep walks the whole list of children (10,000 of
/// them cost the guest milliseconds under TCG), so not after every exit.
pub const SWEEP_MAX: Duration = Duration::from_secs(1);

/// The period of the sweeps when no SIGCHLD comes: exits whose signal went to a thread that
/// did not block it are collected all the same.
pub const SAFETY_SWEEP: Duration = Duration::from_secs(5);

/// Blocks SIGCHLD in the calling thread and every thread it creates afterwards, so that it
/// stays pending for the reaper's signalfd. Call before any other thread exists; a thread
/// that still takes SIGCHLD only delays an exit to the next sweep. Children start with an
/// empty mask (the launch resets it).
pub fn block_sigchld() -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigchld()), None)
}

fn sigchld() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set
}

/// Converts a wait status into an exit code; `None` for stop/continue notifications.
pub fn exit_code(status: WaitStatus) -> Option<(Pid, ExitCode)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, i64::from(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, 128 + sig as i64)),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Inner {
    waiters: HashMap<Pid, oneshot::Sender<ExitCode>>,
    /// Counts launches, so a sweep that found no child knows whether one came since.
    launches: u64,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// `true` while the reaper found no child process left at all.
    idle: watch::Sender<bool>,
}

/// Handle to the reaper.
#[derive(Debug, Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
    idle: watch::Receiver<bool>,
    /// The SIGCHLD signalfd until the thread takes it: see [`Reaper::prepare`].
    unstarted: Arc<Mutex<Option<SignalFd>>>,
}

impl Reaper {
    /// Starts the reaper thread. SIGCHLD must be blocked ([`block_sigchld`]).
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::prepare()?;
        reaper.run()?;
        Ok(reaper)
    }

    /// A reaper whose thread [`run`](Self::run) starts later. Processes can be launched and
    /// registered already: their exits stay pending (SIGCHLD is blocked, the children stay
    /// zombies) until the thread's first sweep. The boot starts the entrypoint this way, so
    /// that no thread's start stands between the launch and its first output under TCG.
    pub fn prepare() -> std::io::Result<Reaper> {
        let (idle_tx, idle) = watch::channel(false);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            idle: idle_tx,
        });
        let signals =
            SignalFd::with_flags(&sigchld(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Reaper {
            shared,
            idle,
            unstarted: Arc::new(Mutex::new(Some(signals))),
        })
    }

    /// Starts the thread, if it has not started yet.
    pub fn run(&self) -> std::io::Result<()> {
        let mut unstarted = self.unstarted.lock().unwrap_or_else(|p| p.into_inner());
        let Some(signals) = unstarted.take() else {
            return Ok(());
        };
        let thread_shared = self.shared.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                raise_priority();
                reap_forever(&thread_shared, &signals)
            })
            .map(|_| ())
    }

    /// Starts a process with `launch` and registers it; the receiver resolves with its exit
    /// code. The reaper cannot deliver any exit while `launch` runs, so keep it to the fork.
    pub fn spawn<E>(
        &self,
        launch: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<(Pid, oneshot::Receiver<ExitCode>), E> {
        let mut inner = lock(&self.shared.inner);
        let pid = launch()?;
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(pid, tx);
        inner.launches = inner.launches.wrapping_add(1);
        self.shared.idle.send_replace(false);
        Ok((pid, rx))
    }

    /// Waits until no child process is left, or `timeout` passes. Returns whether none is left.
    pub async fn wait_all_gone(&self, timeout: std::time::Duration) -> bool {
        let mut idle = self.idle.clone();
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        loop {
            if *idle.borrow_and_update() || no_children() {
                return true;
            }
            tokio::select! {
                _ = &mut sleep => return no_children(),
                r = idle.changed() => if r.is_err() { return no_children() },
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when the tether has no child processes (running or zombie). Does not reap.
pub fn no_children() -> bool {
    // waitid can peek (WNOWAIT) where waitpid cannot; ECHILD means nothing is left.
    matches!(
        nix::sys::wait::waitid(
            nix::sys::wait::Id::All,
            WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT | WaitPidFlag::WEXITED
        ),
        Err(nix::Error::ECHILD)
    )
}

fn raise_priority() {
    if let Err(e) = crate::priority::set_thread_nice(REAPER_NICE) {
        // Only PID 1 (root) may raise it; unit tests run as anyone. Reaping still works.
        tracing::debug!(error = %e, "reaper: priority not raised");
    }
}

fn reap_forever(shared: &Shared, signals: &SignalFd) {
    // Children may have exited before the reaper started.
    sweep(shared);
    let mut swept = Instant::now();
    // Whether exits came since the last sweep.
    let mut unswept = false;
    loop {
        let wait = if unswept {
            // A sweep once the exits pause, or every SWEEP_MAX in a storm that does not.
            SWEEP_QUIET.min((swept + SWEEP_MAX).saturating_duration_since(Instant::now()))
        } else {
            SAFETY_SWEEP
        };
        // Rounded up: a poll that returns early would spin until the deadline.
        let timeout =
            PollTimeout::try_from(wait + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let woken = match poll(&mut fds, timeout) {
            Ok(n) => n > 0,
            Err(nix::Error::EINTR) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reaper: poll failed");
                std::thread::sleep(SWEEP_QUIET);
                false
            }
        };
        if woken && read_signals(shared, signals) {
            unswept = true;
        }
        let now = Instant::now();
        let due = if unswept {
            !woken || now >= swept + SWEEP_MAX
        } else {
            !woken && now >= swept + SAFETY_SWEEP
        };
        if due {
            sweep(shared);
            swept = Instant::now();
            unswept = false;
        }
    }
}

/// Collects the children the pending SIGCHLD names. Returns whether there was one.
fn read_signals(shared: &Shared, signals: &SignalFd) -> bool {
    let mut any = false;
    loop {
        match signals.read_signal() {
            Ok(Some(info)) => {
                any = true;
                reap_one(shared, Pid::from_raw(info.ssi_pid.cast_signed()));
            }
            Ok(None) => return any,
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reaper: reading SIGCHLD failed");
                return true;
            }
        }
    }
}

/// Collects the child the signal named, if it exited (it may have been swept already, or
/// only stopped).
fn reap_one(shared: &Shared, pid: Pid) {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some((pid, code)) = exit_code(status) {
                    deliver(shared, pid, code);
                }
                return;
            }
            Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Collects every exited child; on finding none left at all, marks the reaper idle.
fn sweep(shared: &Shared) {
    let launches = lock(&shared.inner).launches;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return,
            Ok(status) => {
                if let Some((pid, code)) = exit_code(status) {
                    deliver(shared, pid, code);
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::ECHILD) => {
                // Under the lock, so a launch that came in between is not hidden by it.
                let inner = lock(&shared.inner);
                if inner.launches == launches {
                    shared.idle.send_replace(true);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return;
            }
        }
    }
}

fn deliver(shared: &Shared, pid: Pid, code: ExitCode) {
    match lock(&shared.inner).waiters.remove(&pid) {
        Some(tx) => {
            tracing::debug!(pid = pid.as_raw(), code, "session process exited");
            let _ = tx.send(code);
        }
        None => tracing::trace!(pid = pid.as_raw(), code, "reaped orphan"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(p, 42)), Some((p, 42)));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((p, 137))
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, true)),
            Some((p, 143))
        );
        assert_eq!(exit_code(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
    }
}
