//! Execs: a process run in a running container, as docker's `exec create` / `exec start`.
//! Created here (a record), launched in the guest when started: the keeper writes the exec
//! into the VM's config and reloads the tether (VIC's sequence), held by `runblock` until the
//! front end's attachment is bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backchannel::requests::WindowSize;

use super::attach::{AttachOptions, Attachment};
use super::{lock, Engine, EngineError};
use crate::control::{self, ExecSpec};

/// What an exec runs, as `docker exec` asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecCreate {
    pub command: Vec<String>,
    pub env: Vec<String>,
    /// `user[:group]`; empty = the container's.
    pub user: String,
    pub workdir: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// docker's `DetachKeys` for this exec (front ends use them).
    pub detach_keys: Option<String>,
}

/// When each host-side step of an attached exec's round trip ended (the bench's
/// breakdown; see backchannel/README.md for the sequence).
#[derive(Debug, Clone, Copy)]
pub struct ExecStamps {
    pub start: Instant,
    /// The keeper answered with the exec's ID: the exec's keys written, `reload` pushed,
    /// the tether re-read its config and announced the ID (`container-ids`).
    pub announced: Option<Instant>,
    /// The attach channel to the exec is open.
    pub bound: Option<Instant>,
    /// `unblock` sent.
    pub unblocked: Option<Instant>,
    /// The exec's output ended (EOF).
    pub eof: Option<Instant>,
    /// Its exit status arrived.
    pub finished: Option<Instant>,
}

impl ExecStamps {
    fn new() -> ExecStamps {
        ExecStamps {
            start: Instant::now(),
            announced: None,
            bound: None,
            unblocked: None,
            eof: None,
            finished: None,
        }
    }
}

#[derive(Debug)]
pub(super) struct ExecRecord {
    pub(super) container_id: String,
    spec: ExecCreate,
    started: bool,
    detached: bool,
    exit: Arc<Mutex<Option<i64>>>,
}

/// An exec as `exec inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecView {
    pub id: String,
    pub container_id: String,
    pub spec: ExecCreate,
    pub running: bool,
    /// Known once it ended.
    pub exit_code: Option<i64>,
    /// The tether's launch error, if the launch failed.
    pub launch_error: Option<String>,
}

impl Engine {
    /// Records an exec in a running container; returns its ID.
    pub fn exec_create(&self, name: &str, spec: ExecCreate) -> Result<String, EngineError> {
        let view = self.inspect(name)?;
        if !view.running() {
            return Err(EngineError::NotRunning(view.meta.id.clone()));
        }
        if spec.command.is_empty() || spec.command[0].is_empty() {
            return Err(EngineError::BadRequest("No exec command specified".into()));
        }
        let id = crate::records::new_id();
        lock(&self.inner.execs).insert(
            id.clone(),
            ExecRecord {
                container_id: view.meta.id.clone(),
                spec: spec.clone(),
                started: false,
                detached: false,
                exit: Arc::new(Mutex::new(None)),
            },
        );
        self.publish(
            self.container_event(
                &format!("exec_create: {}", spec.command.join(" ")),
                &view.meta,
            )
            .with("execID", id.clone()),
        );
        Ok(id)
    }

    /// Starts a created exec. Detached, it runs on its own and `None` is returned; else the
    /// attachment to it, whose launch waits for [`super::AttachmentControl::unblock`].
    pub async fn exec_start(
        &self,
        exec_id: &str,
        detach: bool,
    ) -> Result<Option<Attachment>, EngineError> {
        self.exec_start_stamped(exec_id, detach, None).await
    }

    async fn exec_start_stamped(
        &self,
        exec_id: &str,
        detach: bool,
        mut stamps: Option<&mut ExecStamps>,
    ) -> Result<Option<Attachment>, EngineError> {
        let (container_id, spec, exit) = {
            let mut execs = lock(&self.inner.execs);
            let rec = execs
                .get_mut(exec_id)
                .ok_or_else(|| EngineError::NoSuchExec(exec_id.to_owned()))?;
            if rec.started {
                return Err(EngineError::Conflict(format!(
                    "Error: Exec command {exec_id} is already running"
                )));
            }
            rec.started = true;
            rec.detached = detach;
            (rec.container_id.clone(), rec.spec.clone(), rec.exit.clone())
        };
        let meta = self.resolve(&container_id)?;
        if !super::containers::qemu_alive(&meta) {
            return Err(EngineError::NotRunning(container_id));
        }
        let conn = self.connect(&meta).await?;
        let request = ExecSpec {
            id: exec_id.to_owned(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            user: spec.user.clone(),
            workdir: spec.workdir.clone(),
            tty: spec.tty,
            stdin: spec.stdin,
            detach,
        };
        let payload = serde_json::to_vec(&request)
            .map_err(|e| EngineError::BadRequest(format!("exec request: {e}")))?;
        control::request(&conn, control::REQ_EXEC, &payload)
            .await
            .map_err(EngineError::Backchannel)?;
        if let Some(s) = stamps.as_deref_mut() {
            s.announced = Some(Instant::now());
        }
        self.publish(
            self.container_event(&format!("exec_start: {}", spec.command.join(" ")), &meta)
                .with("execID", exec_id.to_owned()),
        );
        if detach {
            return Ok(None);
        }
        let slot = self.register(exec_id, false);
        let opts = AttachOptions { stdin: spec.stdin };
        let att = self
            .bind(conn, exec_id, spec.tty, opts, Some(exit), slot)
            .await?;
        if let Some(s) = stamps {
            s.bound = Some(Instant::now());
        }
        Ok(Some(att))
    }

    /// An exec's state. The exit code is the attachment's as soon as it ended, else what
    /// the tether wrote back (detached execs).
    pub fn exec_inspect(&self, exec_id: &str) -> Result<ExecView, EngineError> {
        let (container_id, spec, started, exit) = {
            let execs = lock(&self.inner.execs);
            let rec = execs
                .get(exec_id)
                .ok_or_else(|| EngineError::NoSuchExec(exec_id.to_owned()))?;
            let exit = *lock(&rec.exit);
            (
                rec.container_id.clone(),
                rec.spec.clone(),
                rec.started,
                exit,
            )
        };
        if let Some(code) = exit.filter(|c| !(125..=127).contains(c)) {
            // Ended, its status known from its channel and not one a failed launch gives:
            // nothing to read (docker's client asks for this right after every exec).
            return Ok(ExecView {
                id: exec_id.to_owned(),
                container_id,
                spec,
                running: false,
                exit_code: Some(code),
                launch_error: None,
            });
        }
        let view = self.state().meta(&container_id).ok().map(|m| self.view(m));
        let written = view
            .as_ref()
            .and_then(|v| v.config.as_ref())
            .and_then(|c| c.execs.get(exec_id))
            .map(|e| (e.started.clone(), e.exit_status, e.detail.stop_time));
        let container_running = view.as_ref().map(|v| v.running()).unwrap_or(false);
        let launch_error = written
            .as_ref()
            .filter(|(s, _, _)| !s.is_empty() && s != "true")
            .map(|(s, _, _)| s.clone());
        let exit_code = exit.or_else(|| match &written {
            Some((s, code, stop)) if *stop != 0 || (!s.is_empty() && s != "true") => Some(*code),
            _ => None,
        });
        let running = started && exit_code.is_none() && launch_error.is_none() && container_running;
        Ok(ExecView {
            id: exec_id.to_owned(),
            container_id,
            spec,
            running,
            exit_code,
            launch_error,
        })
    }

    /// Resizes an exec's terminal.
    pub async fn exec_resize(&self, exec_id: &str, size: WindowSize) -> Result<(), EngineError> {
        let started = lock(&self.inner.execs)
            .get(exec_id)
            .map(|r| r.started)
            .ok_or_else(|| EngineError::NoSuchExec(exec_id.to_owned()))?;
        if !started {
            return Err(EngineError::Conflict(format!(
                "Exec {exec_id} is not running"
            )));
        }
        self.resize_session(exec_id, size).await;
        Ok(())
    }

    /// Waits (up to `limit`) until a resize of `session` was asked for: a tty exec's
    /// first size arrives on its own request just after the start.
    pub async fn wait_for_size(&self, session: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let has = lock(&self.inner.attachments)
                .get(session)
                .map(|r| r.size.is_some())
                .unwrap_or(false);
            if has {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Engine {
    /// Runs an exec to its end without a terminal and collects its output: (exit status,
    /// stdout bytes, time from the first to the last byte). For benchmarks and tools.
    pub async fn exec_collect(
        &self,
        name: &str,
        spec: ExecCreate,
    ) -> Result<(i64, Vec<u8>, Duration), EngineError> {
        self.exec_collect_stamped(name, spec)
            .await
            .map(|(code, out, span, _)| (code, out, span))
    }

    /// [`Engine::exec_collect`], with when each step ended.
    pub async fn exec_collect_stamped(
        &self,
        name: &str,
        spec: ExecCreate,
    ) -> Result<(i64, Vec<u8>, Duration, ExecStamps), EngineError> {
        use tokio::io::AsyncReadExt;
        let mut stamps = ExecStamps::new();
        let id = self.exec_create(name, spec)?;
        let Some(mut att) = self
            .exec_start_stamped(&id, false, Some(&mut stamps))
            .await?
        else {
            return Err(EngineError::Backchannel("the exec did not attach".into()));
        };
        att.control.unblock().await;
        stamps.unblocked = Some(Instant::now());
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut first = None;
        loop {
            let n = att
                .output
                .read(&mut buf)
                .await
                .map_err(|e| EngineError::Backchannel(format!("exec output: {e}")))?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(std::time::Instant::now);
            out.extend_from_slice(&buf[..n]);
        }
        let span = first.map(|f| f.elapsed()).unwrap_or_default();
        stamps.eof = Some(Instant::now());
        let ended = att.control.finish().await;
        stamps.finished = Some(Instant::now());
        match ended {
            super::Ended::Exited(code) => Ok((code, out, span, stamps)),
            _ => {
                let view = self.exec_inspect(&id)?;
                match (view.launch_error, view.exit_code) {
                    (Some(e), _) => Err(EngineError::StartFailed(e)),
                    (None, Some(code)) => Ok((code, out, span, stamps)),
                    (None, None) => Err(EngineError::Backchannel("no exit status".into())),
                }
            }
        }
    }
}
