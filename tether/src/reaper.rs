//! The reaper: the one owner of `waitpid(-1)` in the tether.
//!
//! PID 1 inherits every orphan in the VM, so it must collect every exit or zombies pile up.
//! One task waits for `SIGCHLD` and then reaps until nothing is left. Processes the tether
//! started register before the reaper can run (registration happens on the runtime's only
//! thread right after `fork`, with no await in between), so no exit is ever lost to a race;
//! everything else is reaped and forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

/// Exit status with the shell's convention: the exit code, or 128 + the signal number.
pub type ExitCode = i64;

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
}

/// Handle to the reaper.
#[derive(Debug, Clone)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
    /// `true` once a reap pass found no children left at all.
    idle: watch::Receiver<bool>,
}

impl Reaper {
    /// Starts the reaper task on the current runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (idle_tx, idle) = watch::channel(false);
        let task_inner = inner.clone();
        tokio::spawn(async move {
            loop {
                reap_all(&task_inner, &idle_tx);
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(Reaper { inner, idle })
    }

    /// Registers a child the tether started; the receiver resolves with its exit code.
    /// Must be called on the runtime thread before yielding to it after `fork`.
    pub fn watch(&self, pid: Pid) -> oneshot::Receiver<ExitCode> {
        let (tx, rx) = oneshot::channel();
        lock(&self.inner).waiters.insert(pid, tx);
        rx
    }

    /// Waits until no child process is left, or `timeout` passes. Returns whether none is left.
    pub async fn wait_all_gone(&self, timeout: std::time::Duration) -> bool {
        let mut idle = self.idle.clone();
        // The SIGCHLD of the last exit may already have been consumed: reap once ourselves.
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

fn reap_all(inner: &Mutex<Inner>, idle: &watch::Sender<bool>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                let _ = idle.send(false);
                return;
            }
            Ok(status) => {
                if let Some((pid, code)) = exit_code(status) {
                    match lock(inner).waiters.remove(&pid) {
                        Some(tx) => {
                            tracing::debug!(pid = pid.as_raw(), code, "session process exited");
                            let _ = tx.send(code);
                        }
                        None => tracing::trace!(pid = pid.as_raw(), code, "reaped orphan"),
                    }
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECHILD) => {
                let _ = idle.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return;
            }
        }
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
