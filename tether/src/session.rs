//! Sessions: the container's primary process and (later) execs. Launching one, capturing its
//! output, and the write-backs the port layer waits on.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guestinfo::{ContainerConfig, SessionConfig, Transport};
use iolog::Stream;
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::launch::{self, LaunchError, Stdio};
use crate::output::{self, OutputSink};
use crate::reaper::{ExitCode, Reaper};
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
}

impl StartError {
    /// The exit status recorded for a session that never ran.
    pub fn exit_status(&self) -> i64 {
        match self {
            StartError::User(_) => 126,
            StartError::Launch(e) => e.exit_status(),
        }
    }
}

/// A started process.
#[derive(Debug)]
pub struct Running {
    pub pid: Pid,
    pub exit: oneshot::Receiver<ExitCode>,
    pub pumps: Vec<JoinHandle<()>>,
}

/// Seconds since the Unix epoch (UTC), the unit of `detail.*time`.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The session's environment: exactly its configured `Env`, plus `HOME` if it has none.
pub fn environment(cfg: &SessionConfig, home: &str) -> Vec<String> {
    let mut env = cfg.cmd.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

/// Starts a session's process with its stdout and stderr pumped to the output channel.
/// Must run on the runtime thread (the reaper registration relies on it).
pub fn launch(id: &str, cfg: &SessionConfig, reaper: &Reaper, sink: &OutputSink) -> Result<Running, StartError> {
    let identity = user::resolve(Path::new("/"), &cfg.user, &cfg.group)?;
    let env = environment(cfg, &identity.home);
    let path = launch::resolve_executable(&cfg.cmd.path, &cfg.cmd.dir, &env)?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
    let args = if cfg.cmd.args.is_empty() { vec![cfg.cmd.path.clone()] } else { cfg.cmd.args.clone() };
    let spec = launch::Spec {
        path,
        args,
        env,
        dir: cfg.cmd.dir.clone(),
        identity,
        stdin: Stdio::Null,
        stdout: Stdio::Fd(out_w),
        stderr: Stdio::Fd(err_w),
        controlling_tty: false,
    };
    let pid = launch::spawn(spec)?;
    // No await between fork and here: the reaper cannot have collected the child yet.
    let exit = reaper.watch(pid);
    let pumps = vec![
        tokio::spawn(output::pump(sink.clone(), id.to_owned(), Stream::Stdout, out_r)),
        tokio::spawn(output::pump(sink.clone(), id.to_owned(), Stream::Stderr, err_r)),
    ];
    Ok(Running { pid, exit, pumps })
}

/// Waits for output pumps to reach EOF, at most `timeout` (descendants may hold the pipes).
/// Returns whether all finished.
pub async fn drain(pumps: &mut Vec<JoinHandle<()>>, timeout: Duration) -> bool {
    let all = futures_join(pumps);
    tokio::time::timeout(timeout, all).await.is_ok()
}

async fn futures_join(pumps: &mut Vec<JoinHandle<()>>) {
    for p in pumps.iter_mut() {
        let _ = p.await;
    }
    pumps.clear();
}

/// Writes a session's RW keys back to the host. Failures are logged: the VM keeps running
/// whether or not the host heard us.
pub fn write_back(transport: &dyn Transport, cfg: &ContainerConfig, id: &str) {
    match guestinfo::session_writeback(cfg, id) {
        Ok(kvs) => {
            for (k, v) in kvs {
                if let Err(e) = transport.set(&k, &v) {
                    tracing::error!(key = %k, error = %e, "write-back failed");
                }
            }
        }
        Err(e) => tracing::error!(session = id, error = %e, "cannot encode session write-back"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_added_only_when_missing() {
        let mut cfg = SessionConfig::default();
        cfg.cmd.env = vec!["PATH=/bin".into()];
        assert_eq!(environment(&cfg, "/root"), vec!["PATH=/bin".to_owned(), "HOME=/root".to_owned()]);
        cfg.cmd.env.push("HOME=/x".into());
        assert_eq!(environment(&cfg, "/root"), vec!["PATH=/bin".to_owned(), "HOME=/x".to_owned()]);
    }
}
