//! Container operations: create, start, stop, kill, restart, rename, remove, list, inspect,
//! wait and logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guestinfo::store::FileStore;
use guestinfo::ContainerConfig;
use iolog::Stream;
use tokio::sync::mpsc;

use super::events::EventKind;
use super::{lock, now_ns, Engine, EngineError};
use crate::control;
use crate::logs::{LogLine, LogReader};
use crate::state::{self, Meta};
use crate::vm::{self, OutputHandler, RunOptions, RunOutcome};
use crate::volume::{self, VolumeStore};

/// How long `start` waits for the tether to report the launch.
const START_WAIT: Duration = Duration::from_secs(120);
/// Docker's default grace period between the stop signal and SIGKILL.
const DEFAULT_STOP_GRACE: u64 = 10;
/// Beyond the grace period: the tether's own worst case after its SIGKILL (waiting for
/// stuck processes, flushing, the 20 s unmount bound for a slow NFS server, power-off).
const POWER_OFF_MARGIN: Duration = Duration::from_secs(45);
/// How long a keeper started to adopt a running VM may take to serve its control socket.
const KEEPER_ADOPT_WAIT: Duration = Duration::from_secs(20);

/// What `create` is asked for: the run options (whose `spec.command` is the user's CMD,
/// possibly empty) and an entrypoint that replaces the image's.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub run: RunOptions,
    pub entrypoint: Option<Vec<String>>,
}

impl CreateRequest {
    /// A request for `image` running `cmd`.
    pub fn new(run: RunOptions) -> CreateRequest {
        CreateRequest {
            run,
            entrypoint: None,
        }
    }
}

/// What `create` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateResponse {
    pub id: String,
    /// Things asked for that this VCH does not do (as docker's `Warnings`).
    pub warnings: Vec<String>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Made, never started.
    Created,
    /// Its VM runs.
    Running,
    /// Its VM ran and powered off.
    Exited,
}

impl ContainerStatus {
    /// docker's `State.Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Exited => "exited",
        }
    }
}

/// A container as the engine sees it: what the harness keeps and what the tether wrote back.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub meta: Meta,
    /// The VM's config with the tether's write-backs; `None` if it cannot be read.
    pub config: Option<ContainerConfig>,
    pub status: ContainerStatus,
    /// `true`, the tether's launch error, or empty before the launch.
    pub started: String,
    /// The primary process's exit status (128 + signal when signalled).
    pub exit_code: i64,
    /// Unix seconds; 0 when unknown.
    pub started_at: i64,
    pub finished_at: i64,
    /// The VM's folder.
    pub dir: PathBuf,
    /// The kernel's OOM killer acted in the VM while the primary process ran (docker's
    /// `State.OOMKilled`), as the tether wrote back (our `oomkilled` key).
    pub oom_killed: bool,
}

impl ContainerView {
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    pub fn running(&self) -> bool {
        self.status == ContainerStatus::Running
    }

    /// The primary session as the tether sees it.
    pub fn primary(&self) -> Option<&guestinfo::SessionConfig> {
        self.config.as_ref()?.sessions.get(&self.meta.id)
    }

    /// Whether the primary session has a terminal.
    pub fn tty(&self) -> bool {
        self.primary()
            .map(|s| s.tty)
            .unwrap_or(self.meta.settings.tty)
    }

    /// The VM was killed at its hard time limit (the exit code is then 137).
    pub fn timed_out(&self) -> bool {
        self.status == ContainerStatus::Exited && self.meta.timed_out
    }

    /// The launch failed: the tether wrote an error instead of `true`.
    pub fn launch_failed(&self) -> bool {
        !self.started.is_empty() && self.started != "true"
    }
}

/// Which containers `list` returns.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Stopped ones too.
    pub all: bool,
    /// At most this many, newest first (implies `all`, as docker's `-n`).
    pub limit: Option<usize>,
    /// docker's filters: `name`, `id`, `status`, `label` (`KEY` or `KEY=VALUE`); values of
    /// one key are alternatives, different keys must all match.
    pub filters: BTreeMap<String, Vec<String>>,
}

/// How `remove` goes about it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveOptions {
    /// Kill a running container first.
    pub force: bool,
    /// Remove its anonymous volumes too.
    pub volumes: bool,
}

/// What `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitCondition {
    /// Until it is not running (at once if it is not).
    #[default]
    NotRunning,
    /// Until it next exits.
    NextExit,
    /// Until it is removed.
    Removed,
}

impl std::str::FromStr for WaitCondition {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "not-running" => Ok(WaitCondition::NotRunning),
            "next-exit" => Ok(WaitCondition::NextExit),
            "removed" => Ok(WaitCondition::Removed),
            other => Err(EngineError::BadRequest(format!(
                "invalid condition: {other:?}"
            ))),
        }
    }
}

/// Which log lines `logs` returns.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Neither means both.
    pub stdout: bool,
    pub stderr: bool,
    /// Lines read at or after this time (ns since the epoch); 0 = all.
    pub since_ns: u64,
    /// Lines read before this time; 0 = no limit.
    pub until_ns: u64,
    /// Only the last N lines of what is there now.
    pub tail: Option<usize>,
}

/// One item of a log stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogItem {
    Line(LogLine),
    /// The end, with what the reader had to skip.
    End {
        damaged: u64,
        lost: u64,
    },
}

pub(super) use crate::state::{keeper_alive, qemu_alive};

/// Docker's container-name rule.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Validates a signal given by name (`KILL`, `SIGKILL`, any case) or number.
pub(super) fn parse_signal(sig: &str) -> Result<String, EngineError> {
    let bad = || EngineError::BadRequest(format!("Invalid signal: {sig}"));
    let t = sig.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n.to_string())
        } else {
            Err(bad())
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if name.starts_with("RTMIN") || name.starts_with("RTMAX") {
        return Ok(name.to_owned());
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .map(|_| name.to_owned())
        .map_err(|_| bad())
}

impl Engine {
    /// Finds a container by name, full ID or unique ID prefix.
    pub fn resolve(&self, name: &str) -> Result<Meta, EngineError> {
        let name = name.strip_prefix('/').unwrap_or(name);
        self.state()
            .resolve(name)
            .map_err(|_| EngineError::NoSuchContainer(name.to_owned()))
    }

    /// A container's current view.
    pub fn view(&self, meta: Meta) -> ContainerView {
        let dir = self.state().vm_dir(&meta.id);
        let store = FileStore::open(dir.join("config.vmx")).ok();
        let config = store
            .as_ref()
            .and_then(|s| guestinfo::store::read_config(s).ok());
        let (started, exit_code, started_at, finished_at) = match (&config, &store) {
            (Some(cfg), _) => match cfg.sessions.get(&meta.id) {
                Some(s) => (
                    s.started.clone(),
                    s.exit_status,
                    s.detail.start_time,
                    s.detail.stop_time,
                ),
                None => Default::default(),
            },
            // A config the codec refuses still carries the tether's verdict in plain keys.
            (None, Some(store)) => {
                let (started, code) = vm::raw_session_result(store, &meta.id);
                (started, code, 0, 0)
            }
            (None, None) => Default::default(),
        };
        let status = if qemu_alive(&meta) || keeper_alive(&meta) {
            ContainerStatus::Running
        } else if meta.starts == 0 && started.is_empty() {
            ContainerStatus::Created
        } else {
            ContainerStatus::Exited
        };
        // Killed from outside at the time limit: what an OOM or `kill -9` reports.
        let exit_code = if status == ContainerStatus::Exited && meta.timed_out {
            128 + 9
        } else {
            exit_code
        };
        let oom_killed = store
            .as_ref()
            .and_then(|s| {
                guestinfo::store::Store::get(s, &oom_key(&meta.id))
                    .ok()
                    .flatten()
            })
            .is_some_and(|v| v == "true");
        ContainerView {
            meta,
            config,
            status,
            started,
            exit_code,
            started_at,
            finished_at,
            dir,
            oom_killed,
        }
    }

    /// Inspects a container.
    pub fn inspect(&self, name: &str) -> Result<ContainerView, EngineError> {
        let meta = self.resolve(name)?;
        Ok(self.view(meta))
    }

    /// Lists containers, newest first.
    pub fn list(&self, opts: &ListOptions) -> Vec<ContainerView> {
        // `ancestor=IMAGE`: the image it names now, by ID (a container keeps the ID it was
        // made from).
        let store = self.image_store();
        let ancestors: BTreeMap<String, String> = opts
            .filters
            .get("ancestor")
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a.clone(), store.resolve(a).ok()?.to_string())))
            .collect();
        let mut all: Vec<ContainerView> = self
            .state()
            .list()
            .into_iter()
            .rev()
            .map(|m| self.view(m))
            .filter(|v| opts.all || opts.limit.is_some() || v.running())
            .filter(|v| matches_filters(v, &opts.filters, &ancestors))
            .collect();
        if let Some(n) = opts.limit {
            all.truncate(n);
        }
        all
    }

    /// Creates a container: its folder, disk and config. Nothing runs.
    pub async fn create(&self, req: CreateRequest) -> Result<CreateResponse, EngineError> {
        let (created, warnings) = self.create_blocking(req).await?;
        self.publish(self.container_event("create", &created.meta));
        Ok(CreateResponse {
            id: created.meta.id,
            warnings,
        })
    }

    /// `prepare_create` and `vm::create` on a blocking thread: the image may need its disk
    /// built (or the built-in image loaded) first.
    async fn create_blocking(
        &self,
        req: CreateRequest,
    ) -> Result<(vm::Created, Vec<String>), EngineError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let (opts, warnings) = me.prepare_create(req)?;
            Ok((vm::create(me.state(), opts)?, warnings))
        })
        .await
        .map_err(|e| EngineError::Backchannel(format!("create: {e}")))?
    }

    /// Checks a request and turns it into the VM's run options.
    fn prepare_create(&self, req: CreateRequest) -> Result<(RunOptions, Vec<String>), EngineError> {
        let CreateRequest {
            mut run,
            entrypoint,
        } = req;
        let mut warnings = Vec::new();
        if !run.spec.name.is_empty() {
            let name = run.spec.name.trim_start_matches('/').to_owned();
            if !valid_name(&name) {
                return Err(EngineError::BadRequest(format!(
                    "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
            run.spec.name = name;
        }
        // The image and docker's rules for its config: Entrypoint and Cmd (`--entrypoint`
        // drops the image's Cmd), Env under the user's `-e`, WorkingDir, User, StopSignal,
        // ExposedPorts and Labels; its Volumes are made by `vm::create`.
        let image = self.image_resolve(&run.image)?;
        let asked = crate::images::RunRequest {
            entrypoint,
            cmd: run.spec.command.clone(),
            env: run.spec.env.clone(),
            working_dir: Some(run.spec.workdir.clone()),
            user: Some(run.spec.user.clone()),
            volumes: Vec::new(),
            exposed_ports: run.settings.exposed_ports.clone(),
            stop_signal: Some(run.settings.stop_signal.clone()),
            labels: run.settings.labels.clone(),
        };
        let merged = crate::images::merge(image.config.as_ref(), &asked).map_err(|_| {
            EngineError::BadRequest(format!(
                "No command specified: the image {} has no default command (Cmd or Entrypoint)",
                run.image
            ))
        })?;
        for what in &merged.ignored {
            warnings.push(format!("The image's {what} is ignored by this VCH"));
        }
        run.spec.command = merged.argv();
        run.settings.entrypoint = merged.entrypoint;
        run.spec.env = merged.env;
        run.spec.workdir = merged.working_dir;
        run.spec.user = merged.user;
        run.settings.stop_signal = merged.stop_signal.unwrap_or_default();
        run.settings.labels = merged.labels;
        run.settings.exposed_ports = merged.exposed_ports;
        run.resolved = Some(image);
        if !run.settings.stop_signal.is_empty() {
            run.spec.stop_signal = parse_signal(&run.settings.stop_signal)?;
        }
        match run.settings.restart_policy.as_str() {
            "" | "no" => run.spec.restart = false,
            "always" | "unless-stopped" | "on-failure" => run.spec.restart = true,
            other => {
                return Err(EngineError::BadRequest(format!(
                    "invalid restart policy {other:?}: no, always, unless-stopped, on-failure"
                )))
            }
        }
        if run.settings.auto_remove && run.spec.restart {
            return Err(EngineError::Conflict(
                "conflicting options: AutoRemove and a restart policy".into(),
            ));
        }
        if !run.settings.extra_hosts.is_empty() {
            warnings.push(
                "ExtraHosts (--add-host) is not supported by this VCH and was ignored".into(),
            );
        }
        Ok((run, warnings))
    }

    /// Creates a container and runs it in this process until its VM powers off, passing
    /// its output to `out` (`vch run` in the foreground, the tests, the benchmarks).
    pub async fn run_foreground(
        &self,
        req: CreateRequest,
        out: &mut dyn OutputHandler,
    ) -> Result<RunOutcome, EngineError> {
        let (created, _) = self.create_blocking(req).await?;
        self.publish(self.container_event("create", &created.meta));
        self.publish(self.container_event("start", &created.meta));
        let meta = created.meta.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let keeper = tokio::spawn(vm::keep(self.state().clone(), created, Some(tx), None));
        while let Some(item) = rx.recv().await {
            if let iolog::Item::Record(r) = item {
                if let iolog::Body::Data(d) = r.body {
                    out.output(r.stream, &d);
                }
            }
        }
        let outcome = keeper
            .await
            .map_err(|e| EngineError::Backchannel(format!("keeper task: {e}")))??;
        self.publish(
            self.container_event("die", &meta)
                .with("exitCode", outcome.exit_code.to_string()),
        );
        Ok(outcome)
    }

    /// Starts a created or stopped container: a `vch keeper` process boots and keeps its
    /// VM. Returns once the tether has reported the launch: an error when it failed.
    /// When an attachment is waiting for the container, the launch is held until it is
    /// bound (docker's attach-before-start, so no output is lost).
    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        let meta = self.resolve(name)?;
        if qemu_alive(&meta) || keeper_alive(&meta) {
            return Err(EngineError::AlreadyRunning(name.to_owned()));
        }
        let dir = self.state().vm_dir(&meta.id);
        let run_block = self.pending_attachments(&meta.id) > 0;
        reset_for_start(&dir, &meta.id, run_block)?;
        // A disk volume is attached to one running VM at a time, also on a restart.
        for v in &meta.volumes {
            if v.disk.is_some() {
                if let Some(other) = vm::volume_user(self.state(), &v.volume.name) {
                    return Err(EngineError::Conflict(format!(
                        "volume {} is in use by running container {other}",
                        v.volume.name
                    )));
                }
            }
        }
        let keeper = self.spawn_keeper(&meta.id, &dir)?;
        self.watch(&meta.id, Some(keeper));
        let deadline = tokio::time::Instant::now() + START_WAIT;
        let mut announced = false;
        loop {
            let now = self.state().meta(&meta.id).unwrap_or_else(|_| meta.clone());
            if !announced && qemu_alive(&now) {
                self.publish(self.container_event("start", &now));
                announced = true;
            }
            // Read anew each time: the keeper's store writes the file, not our copy.
            let started = FileStore::open(dir.join("config.vmx"))
                .map(|store| vm::raw_session_result(&store, &meta.id).0)
                .unwrap_or_default();
            if started == "true" {
                break;
            }
            if !started.is_empty() {
                return Err(EngineError::StartFailed(docker_start_error(&started)));
            }
            if !state::pid_alive(keeper) {
                let now = self.state().meta(&meta.id).unwrap_or(now);
                if !keeper_alive(&now) && !qemu_alive(&now) {
                    let keeper_log =
                        std::fs::read_to_string(dir.join("keeper.log")).unwrap_or_default();
                    let why = keeper_log.lines().last().unwrap_or("").trim().to_owned();
                    return Err(EngineError::StartFailed(format!(
                        "the container's VM stopped before the process started{}{} (see {})",
                        if why.is_empty() { "" } else { ": " },
                        why,
                        dir.join("tether.debug").display()
                    )));
                }
            }
            if tokio::time::Instant::now() > deadline {
                // Held by runblock for an attachment that never bound, or a slow VM: it
                // runs, docker's start returns.
                tracing::warn!(id = %meta.id, "start: no launch report within {START_WAIT:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !announced {
            self.publish(self.container_event("start", &meta));
        }
        Ok(())
    }

    fn spawn_keeper(&self, id: &str, dir: &Path) -> Result<u32, EngineError> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("keeper.log"))
            .map_err(|source| EngineError::Io {
                what: format!("open {}", dir.join("keeper.log").display()),
                source,
            })?;
        let child = std::process::Command::new(&self.inner.vch_exe)
            .arg("--state")
            .arg(self.state().root())
            .arg("keeper")
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            // Its own process group: a ctrl-c in the terminal of whoever started it, or a
            // signal to the daemon's group, must not reach the VM's keeper.
            .process_group(0)
            .spawn()
            .map_err(|source| EngineError::Io {
                what: format!("start {} keeper", self.inner.vch_exe.display()),
                source,
            })?;
        let pid = child.id();
        // Reaped on a thread: the keeper outlives this process if it must, and a keeper
        // that ends while we run leaves no zombie.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(pid)
    }

    /// Stops a container: its stop signal, then SIGKILL after `grace` seconds (default: the
    /// container's stop timeout, else 10), then a hard power-off if the VM is still there.
    pub async fn stop(&self, name: &str, grace: Option<u64>) -> Result<(), EngineError> {
        let meta = self.resolve(name)?;
        if !qemu_alive(&meta) && !keeper_alive(&meta) {
            return Err(EngineError::AlreadyStopped(name.to_owned()));
        }
        let grace = grace
            .or(meta.settings.stop_timeout)
            .unwrap_or(DEFAULT_STOP_GRACE);
        let asked = self
            .control(&meta, control::REQ_STOP, grace.to_string().as_bytes())
            .await;
        if let Err(e) = asked {
            tracing::warn!(id = %meta.id, error = %e, "stop: keeper unreachable; powering off");
            kill_vm(&meta);
        }
        if !self
            .wait_gone(&meta.id, Duration::from_secs(grace) + POWER_OFF_MARGIN)
            .await
        {
            kill_vm(&meta);
            self.wait_gone(&meta.id, Duration::from_secs(10)).await;
        }
        self.publish(self.container_event("stop", &meta));
        Ok(())
    }

    /// Sends a signal to a container's primary process.
    pub async fn kill(&self, name: &str, signal: &str) -> Result<(), EngineError> {
        let sig = parse_signal(if signal.is_empty() { "KILL" } else { signal })?;
        let meta = self.resolve(name)?;
        if !qemu_alive(&meta) {
            return Err(EngineError::NotRunning(name.to_owned()));
        }
        self.control(&meta, control::REQ_KILL, sig.as_bytes())
            .await?;
        self.publish(self.container_event("kill", &meta).with("signal", sig));
        Ok(())
    }

    /// Stops (if running) and starts a container again.
    pub async fn restart(&self, name: &str, grace: Option<u64>) -> Result<(), EngineError> {
        match self.stop(name, grace).await {
            Ok(()) | Err(EngineError::AlreadyStopped(_)) => {}
            Err(e) => return Err(e),
        }
        self.start(name).await?;
        let meta = self.resolve(name)?;
        self.publish(self.container_event("restart", &meta));
        Ok(())
    }

    /// Drops a running container's back-channel connection, as a VCH restart would (the
    /// VM redials; a test and demo aid).
    pub async fn drop_backchannel(&self, name: &str) -> Result<(), EngineError> {
        let meta = self.resolve(name)?;
        if !qemu_alive(&meta) {
            return Err(EngineError::NotRunning(name.to_owned()));
        }
        self.control(&meta, control::REQ_DROP, &[]).await?;
        Ok(())
    }

    /// Renames a container.
    pub fn rename(&self, name: &str, new_name: &str) -> Result<(), EngineError> {
        let new_name = new_name.trim_start_matches('/');
        if !valid_name(new_name) {
            return Err(EngineError::BadRequest(format!(
                "Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let _lock = self.state().lock()?;
        let mut meta = self.resolve(name)?;
        if meta.name == new_name {
            return Err(EngineError::Conflict(format!(
                "Renaming a container with the same name as its current name: {new_name}"
            )));
        }
        if let Ok(other) = self.state().resolve(new_name) {
            if other.name == new_name {
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.id
                )));
            }
        }
        let old = std::mem::replace(&mut meta.name, new_name.to_owned());
        self.state().save(&meta)?;
        self.publish(
            self.container_event("rename", &meta)
                .with("oldName", format!("/{old}")),
        );
        Ok(())
    }

    /// Removes a container (killing it first with `force`), and its anonymous volumes with
    /// `volumes`.
    pub async fn remove(&self, name: &str, opts: RemoveOptions) -> Result<(), EngineError> {
        let meta = self.resolve(name)?;
        if qemu_alive(&meta) || keeper_alive(&meta) {
            if !opts.force {
                return Err(EngineError::RemoveRunning(name.to_owned()));
            }
            kill_vm(&meta);
            self.wait_gone(&meta.id, Duration::from_secs(10)).await;
        }
        self.remove_stopped(&meta, opts.volumes)
    }

    fn remove_stopped(&self, meta: &Meta, volumes: bool) -> Result<(), EngineError> {
        {
            let _lock = self.state().lock()?;
            match self.state().remove(&meta.id) {
                // Someone else removed it meanwhile (an auto-remove racing a `rm`).
                Err(_) if !self.state().vm_dir(&meta.id).exists() => {
                    return Err(EngineError::NoSuchContainer(meta.id.clone()))
                }
                other => other?,
            }
        }
        if volumes {
            volume::release(&VolumeStore::new(self.state().root()), &meta.volumes);
        }
        // Its addresses are free for the next containers.
        crate::network::release(
            &crate::network::NetworkStore::new(self.state().root()),
            &meta.nics,
            &meta.id,
        );
        lock(&self.inner.execs).retain(|_, e| e.container_id != meta.id);
        self.publish(self.container_event("destroy", meta));
        Ok(())
    }

    /// Waits until the keeper of `id` is gone, up to `limit`; whether it is.
    async fn wait_gone(&self, id: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.state().meta(id) {
                Ok(m) if keeper_alive(&m) || qemu_alive(&m) => {}
                _ => return true,
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for a container to reach `condition`; returns its exit code.
    pub async fn wait(&self, name: &str, condition: WaitCondition) -> Result<i64, EngineError> {
        // Subscribed before looking, so that an exit between the look and the wait is seen.
        let mut events = self.events();
        let meta = self.resolve(name)?;
        let id = meta.id.clone();
        let view = self.view(meta);
        match condition {
            WaitCondition::NotRunning if !view.running() => return Ok(view.exit_code),
            _ => {}
        }
        if view.running() {
            self.watch(&id, None);
        }
        let mut last_code = view.exit_code;
        loop {
            match events.recv().await {
                Ok(e) if e.kind == EventKind::Container && e.id == id => {
                    match (e.action.as_str(), condition) {
                        ("die", WaitCondition::Removed) => {
                            last_code = e
                                .attributes
                                .get("exitCode")
                                .and_then(|c| c.parse().ok())
                                .unwrap_or(last_code);
                        }
                        ("die", _) => {
                            return Ok(e
                                .attributes
                                .get("exitCode")
                                .and_then(|c| c.parse().ok())
                                .unwrap_or(0))
                        }
                        ("destroy", WaitCondition::Removed) => return Ok(last_code),
                        ("destroy", _) => {
                            return Err(EngineError::NoSuchContainer(name.to_owned()))
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed events: look again.
                    match self.state().meta(&id) {
                        Err(_) if condition == WaitCondition::Removed => return Ok(last_code),
                        Err(_) => return Err(EngineError::NoSuchContainer(name.to_owned())),
                        Ok(m) => {
                            let v = self.view(m);
                            if !v.running() && condition == WaitCondition::NotRunning {
                                return Ok(v.exit_code);
                            }
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(EngineError::Backchannel(
                        "the engine is shutting down".into(),
                    ))
                }
            }
        }
    }

    /// Watches a running container's keeper: when it ends, publishes `die` with the exit
    /// code and removes the container if it was started with `--rm`. One watcher per
    /// keeper.
    pub fn watch(&self, id: &str, keeper: Option<u32>) {
        let pid = match keeper {
            Some(p) => p,
            None => match self.state().meta(id) {
                Ok(m) if keeper_alive(&m) => m.keeper_pid.unwrap_or(0),
                _ => return,
            },
        };
        {
            let mut w = lock(&self.inner.watched);
            if w.get(id) == Some(&pid) {
                return;
            }
            w.insert(id.to_owned(), pid);
        }
        let me = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            pid_exit(pid).await;
            {
                let mut w = lock(&me.inner.watched);
                if w.get(&id) == Some(&pid) {
                    w.remove(&id);
                }
            }
            let Ok(meta) = me.state().meta(&id) else {
                return;
            };
            let view = me.view(meta.clone());
            if view.running() {
                // A new keeper took over (a restart); its own watcher reports it.
                return;
            }
            me.publish(
                me.container_event("die", &meta)
                    .with("exitCode", view.exit_code.to_string()),
            );
            if meta.settings.auto_remove {
                if let Err(e) = me.remove_stopped(&meta, true) {
                    tracing::warn!(id = %id, error = %e, "auto-remove");
                }
            }
        });
    }

    /// A running VM whose keeper is gone (killed) gets a new one, which adopts it: the
    /// control socket, the back-channel and guestinfo are served again and the clean-up at
    /// its end happens. Returns whether a keeper was started. The keeper's lock, not its
    /// recorded PID, says whether one lives (a foreground `vch run` keeps its VM itself).
    pub fn readopt(&self, meta: &Meta) -> Result<bool, EngineError> {
        let dir = self.state().vm_dir(&meta.id);
        if !qemu_alive(meta) || state::keeper_lock_held(&dir) {
            return Ok(false);
        }
        let pid = self.spawn_keeper(&meta.id, &dir)?;
        tracing::warn!(id = %meta.id, pid, "the VM's keeper was gone; a new one adopts the VM");
        self.watch(&meta.id, Some(pid));
        Ok(true)
    }

    /// Starts watchers for every running container (adopting VMs whose keeper is gone) and
    /// removes stopped `--rm` ones (a daemon starting over a state directory).
    pub fn adopt(&self) -> usize {
        let mut n = 0;
        for meta in self.state().list() {
            if matches!(self.readopt(&meta), Ok(true)) {
                n += 1;
            } else if keeper_alive(&meta) {
                self.watch(&meta.id, None);
                n += 1;
            } else if meta.settings.auto_remove && meta.starts > 0 {
                let _ = self.remove_stopped(&meta, true);
            }
        }
        n
    }

    /// Sends a control request to a container's keeper.
    pub(super) async fn control(
        &self,
        meta: &Meta,
        request: &str,
        data: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let conn = self.connect(meta).await?;
        control::request(&conn, request, data)
            .await
            .map_err(EngineError::Backchannel)
    }

    /// A control connection to a running container's keeper.
    pub(super) async fn connect(&self, meta: &Meta) -> Result<sshproto::Connection, EngineError> {
        if meta.backchannel.starts_with("tcp://") {
            return Err(EngineError::Conflict(format!(
                "container {}'s back-channel goes to an external port layer ({})",
                meta.name, meta.backchannel
            )));
        }
        let ctl = self.state().vm_dir(&meta.id).join("ctl.sock");
        if self.readopt(meta)? {
            // The new keeper binds its control socket within moments of starting.
            let deadline = tokio::time::Instant::now() + KEEPER_ADOPT_WAIT;
            loop {
                match control::connect(&ctl).await {
                    Ok(c) => return Ok(c),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(EngineError::Backchannel(format!(
                            "connect to container {} (adopted by a new keeper): {e}",
                            meta.name
                        )))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        control::connect(&ctl).await.map_err(|e| {
            EngineError::Backchannel(format!("connect to container {}: {e}", meta.name))
        })
    }

    /// Connects to a container's keeper, waiting (up to `limit`) for a starting one to
    /// open its control socket. `starts` is the container's start count when the caller
    /// began to wait: a start after it that already ended means there is nothing to wait
    /// for any more.
    pub(super) async fn connect_when_up(
        &self,
        id: &str,
        limit: Duration,
        starts: u32,
    ) -> Result<sshproto::Connection, EngineError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let meta = self
                .state()
                .meta(id)
                .map_err(|_| EngineError::NoSuchContainer(id.to_owned()))?;
            if meta.starts > starts && !qemu_alive(&meta) && !keeper_alive(&meta) {
                return Err(EngineError::NotRunning(id.to_owned()));
            }
            if qemu_alive(&meta) {
                match self.connect(&meta).await {
                    Ok(c) => return Ok(c),
                    Err(e @ EngineError::Conflict(_)) => return Err(e),
                    Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                    Err(_) => {}
                }
            } else if tokio::time::Instant::now() > deadline {
                return Err(EngineError::NotRunning(id.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A container's log lines, in the order they were read from the processes; with
    /// `follow`, more as they come until the container stops. The stream ends with
    /// [`LogItem::End`]; dropping the receiver stops the reader.
    pub fn logs(
        &self,
        name: &str,
        opts: LogOptions,
    ) -> Result<(ContainerView, mpsc::Receiver<LogItem>), EngineError> {
        let view = self.inspect(name)?;
        let (tx, rx) = mpsc::channel(256);
        let state = self.state().clone();
        let id = view.meta.id.clone();
        let vic = view.meta.log_format == "vic";
        let path = view.dir.join("output.log");
        // What the log holds now is the past `tail` picks from; anything written from here
        // on is new, however late the reader gets to it (`logs -f --tail 0` lost the first
        // half megabyte of output that began right after it, while the reader read a 50 MB
        // log to find its end).
        let now_at = log_len(&path);
        std::thread::spawn(move || follow_log(&state, &id, &path, vic, &opts, now_at, &tx));
        Ok((view, rx))
    }
}

impl Engine {
    /// A container's output from now on, as an attached client without stdin sees it:
    /// read from the output log the tether sends (so the launch is not held for it, and a
    /// dropped back-channel loses nothing), chunk by chunk as written. Made before the
    /// start, it waits for the next start. It ends when the primary process's streams end
    /// or the VM stops; dropping the receiver stops it.
    pub fn output(
        &self,
        name: &str,
    ) -> Result<(ContainerView, mpsc::Receiver<LogItem>), EngineError> {
        let view = self.inspect(name)?;
        let (tx, rx) = mpsc::channel(256);
        let state = self.state().clone();
        let id = view.meta.id.clone();
        let path = view.dir.join("output.log");
        let vic = view.meta.log_format == "vic";
        let tty = view.tty();
        // What the log holds now is past: this stream starts at its end.
        let start_at = log_len(&path);
        let starts = if view.running() {
            view.meta.starts.saturating_sub(1)
        } else {
            view.meta.starts
        };
        std::thread::spawn(move || {
            follow_output(&state, &id, &path, start_at, starts, vic, tty, &tx)
        });
        Ok((view, rx))
    }
}

/// How long a container's output log is now (0 before it exists): where what is past ends.
fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// How often a follower looks for new output: an attached client should see output about
/// as soon as it is written.
const OUTPUT_POLL: Duration = Duration::from_millis(10);
/// How long an output stream made before the start waits for it.
const OUTPUT_BEFORE_START: Duration = Duration::from_secs(600);

/// The reading side of [`Engine::output`].
#[allow(clippy::too_many_arguments)]
fn follow_output(
    state: &state::State,
    id: &str,
    path: &Path,
    start_at: u64,
    starts: u32,
    vic: bool,
    tty: bool,
    tx: &mpsc::Sender<LogItem>,
) {
    let end = |damaged, lost| {
        let _ = tx.blocking_send(LogItem::End { damaged, lost });
    };
    // Until the run this stream is for has started (a start after `starts`).
    let deadline = std::time::Instant::now() + OUTPUT_BEFORE_START;
    let running = || {
        state
            .meta(id)
            .map(|m| (m.starts > starts, qemu_alive(&m) || keeper_alive(&m)))
            .unwrap_or((true, false))
    };
    loop {
        match running() {
            (true, _) if path.exists() => break,
            (true, false) => return end(0, 0),
            _ => {}
        }
        if tx.is_closed() || std::time::Instant::now() > deadline {
            return end(0, 0);
        }
        std::thread::sleep(OUTPUT_POLL);
    }
    let reader = LogReader::open(path, id).and_then(|mut r| {
        // The file may have been cut and rewritten since (a new container): start at its
        // start then.
        if start_at <= log_len(path) {
            r.seek_to(start_at)?;
        }
        Ok(r.raw())
    });
    let mut reader = match reader {
        Ok(r) if vic => r.vic(),
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "attach output");
            return end(0, 0);
        }
    };
    loop {
        let alive = running().1;
        let lines = reader.poll().unwrap_or_default();
        for l in lines {
            if tx.blocking_send(LogItem::Line(l)).is_err() {
                return;
            }
        }
        let ended = reader.ended.contains(&Stream::Stdout)
            && (tty || reader.ended.contains(&Stream::Stderr));
        if ended || !alive {
            break;
        }
        if tx.is_closed() {
            return;
        }
        std::thread::sleep(OUTPUT_POLL);
    }
    end(reader.damaged, reader.lost);
}

fn matches_filters(
    v: &ContainerView,
    filters: &BTreeMap<String, Vec<String>>,
    ancestors: &BTreeMap<String, String>,
) -> bool {
    filters.iter().all(|(key, values)| {
        // docker's rule: labels must all be there (compose selects a project's service by
        // two labels); the other keys' values are alternatives.
        let matches = |want: &String| match key.as_str() {
            "name" => v.meta.name.contains(want.trim_start_matches('/')),
            "id" => v.meta.id.starts_with(want.as_str()),
            "status" => v.status.as_str() == want,
            "label" => match want.split_once('=') {
                Some((k, val)) => v.meta.settings.labels.get(k).map(String::as_str) == Some(val),
                None => v.meta.settings.labels.contains_key(want.as_str()),
            },
            "ancestor" => {
                v.meta.image == *want
                    || ancestors.get(want).is_some_and(|id| *id == v.meta.image_id)
            }
            // Unknown filters select nothing, as docker refuses them.
            _ => false,
        };
        values.is_empty()
            || if key == "label" {
                values.iter().all(matches)
            } else {
                values.iter().any(matches)
            }
    })
}

/// Kills a container's VM hard (its QEMU, and the keeper if QEMU is not there yet).
fn kill_vm(meta: &Meta) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if qemu_alive(meta) {
        if let Some(pid) = meta.qemu_pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    } else if keeper_alive(meta) {
        if let Some(pid) = meta.keeper_pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

/// Prepares a container's config for a (re)start: the previous run's write-backs (launch
/// result, exit status, times) and execs go, and the primary session is held for an
/// attachment when one is waiting.
fn reset_for_start(dir: &Path, id: &str, run_block: bool) -> Result<(), EngineError> {
    let path = dir.join("config.vmx");
    let config_err = |e: guestinfo::store::StoreError| {
        EngineError::Vm(vm::VmError::Config(format!("{}: {e}", path.display())))
    };
    let store = FileStore::open(&path).map_err(config_err)?;
    let mut cfg = match guestinfo::store::read_config(&store) {
        Ok(c) => c,
        // A config the codec cannot read (the malformed-config scenarios) boots as it is.
        Err(_) => return Ok(()),
    };
    let Some(s) = cfg.sessions.get_mut(id) else {
        return Ok(());
    };
    let fresh = s.started.is_empty() && cfg.execs.is_empty();
    if fresh && s.run_block == run_block {
        return Ok(());
    }
    s.started.clear();
    s.exit_status = 0;
    s.detail.start_time = 0;
    s.detail.stop_time = 0;
    s.run_block = run_block;
    s.attach = s.attach || run_block;
    cfg.execs.clear();
    // Written whole into a new file: keys of the previous run must not survive.
    let tmp = dir.join("config.vmx.new");
    let _ = std::fs::remove_file(&tmp);
    let new = FileStore::open(&tmp).map_err(config_err)?;
    guestinfo::store::write_config(&new, &cfg).map_err(config_err)?;
    drop(new);
    std::fs::rename(&tmp, &path).map_err(|source| EngineError::Io {
        what: format!("rename {}", tmp.display()),
        source,
    })
}

/// The key the tether writes `true` to when the OOM killer acted while the session ran
/// (our extension; a config rewritten for the next start drops it, as docker clears
/// `OOMKilled` on a start).
pub fn oom_key(session: &str) -> String {
    format!("guestinfo.vice..sessions|{session}.oomkilled")
}

/// The tether's launch error in the words docker's client looks for to pick its exit code
/// (127 "executable file not found" / "no such file or directory", 126 "permission
/// denied").
fn docker_start_error(started: &str) -> String {
    match started.strip_suffix(": no such executable in PATH") {
        Some(cmd) => format!(
            "failed to create task for container: exec: \"{cmd}\": executable file not found in $PATH ({started})"
        ),
        None => format!("failed to create task for container: {started}"),
    }
}

/// Waits until process `pid` has exited: a pidfd when the kernel has them, else polling.
async fn pid_exit(pid: u32) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a PID and flags by value and returns a new descriptor or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd >= 0 {
        // SAFETY: the descriptor was just returned to us and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd takes ownership of the descriptor, which stays open and
        // refers to the same pidfd until the AsyncFd (and with it the OwnedFd) is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        };
        if let Ok(afd) = registered {
            // A pidfd turns readable when the process exits.
            let _ = afd.readable().await;
            return;
        }
    }
    while state::pid_alive(pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reading side of [`Engine::logs`] (on its own thread: file reads block).
fn follow_log(
    state: &state::State,
    id: &str,
    path: &Path,
    vic: bool,
    opts: &LogOptions,
    now_at: u64,
    tx: &mpsc::Sender<LogItem>,
) {
    let running = || {
        state
            .meta(id)
            .map(|m| qemu_alive(&m) || keeper_alive(&m))
            .unwrap_or(false)
    };
    let want = |l: &LogLine| {
        let stream_ok = match (opts.stdout, opts.stderr) {
            (true, false) => l.stream == Stream::Stdout,
            (false, true) => l.stream == Stream::Stderr,
            _ => true,
        };
        stream_ok && l.time_ns >= opts.since_ns && (opts.until_ns == 0 || l.time_ns < opts.until_ns)
    };
    let end = |damaged, lost| {
        let _ = tx.blocking_send(LogItem::End { damaged, lost });
    };
    let past_until = || opts.until_ns != 0 && now_ns() >= opts.until_ns;
    if !path.exists() {
        if !(opts.follow && running()) {
            return end(0, 0);
        }
        while !path.exists() {
            if tx.is_closed() || !running() {
                return end(0, 0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut reader = match LogReader::open(path, id) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "logs");
            return end(0, 0);
        }
    };
    if vic {
        reader = reader.vic();
    }
    let send = |lines: Vec<LogLine>| -> bool {
        lines
            .into_iter()
            .filter(|l| want(l))
            .all(|l| tx.blocking_send(LogItem::Line(l)).is_ok())
    };
    let live = opts.follow && running() && !past_until();
    // Following, the past ends where the log ended at the request; without, at its end now.
    let first: Vec<LogLine> = if live {
        reader.poll_upto(now_at).unwrap_or_default()
    } else {
        let mut all = reader.poll().unwrap_or_default();
        all.extend(reader.finish());
        all
    };
    let mut first: Vec<LogLine> = first.into_iter().filter(|l| want(l)).collect();
    if let Some(n) = opts.tail {
        let skip = first.len().saturating_sub(n);
        first.drain(..skip);
    }
    if !send(first) {
        return;
    }
    if live {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if tx.is_closed() {
                return;
            }
            let alive = running() && !past_until();
            if !send(reader.poll().unwrap_or_default()) {
                return;
            }
            if !alive {
                if !send(reader.finish()) {
                    return;
                }
                break;
            }
        }
    }
    end(reader.damaged, reader.lost);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL").unwrap(), "KILL");
        assert_eq!(parse_signal("sigterm").unwrap(), "TERM");
        assert_eq!(parse_signal("SIGUSR1").unwrap(), "USR1");
        assert_eq!(parse_signal("9").unwrap(), "9");
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn container_names_follow_docker() {
        assert!(valid_name("web"));
        assert!(valid_name("a_b.c-d1"));
        assert!(!valid_name("x"));
        assert!(!valid_name("-web"));
        assert!(!valid_name("we b"));
    }

    #[test]
    fn start_errors_carry_dockers_words() {
        assert!(docker_start_error("nosuch: no such executable in PATH")
            .contains("executable file not found"));
        assert!(docker_start_error("stat /x: no such file or directory")
            .contains("no such file or directory"));
        assert!(docker_start_error("/etc: permission denied").contains("permission denied"));
    }

    /// `logs -f --tail N` (and `docker logs -f`): the past `tail` picks from ends where the
    /// log ended at the request, and every line written after it is followed, however far
    /// into the past the reader still is. The running VM is a process whose command line
    /// names the container, as QEMU's does; the log is written as the keeper writes it.
    #[test]
    fn follow_keeps_every_line_written_after_the_request() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let state = state::State::open(tmp.path()).unwrap();
        let id = "0123456789ab".repeat(5) + "cdef";
        let mut vm = std::process::Command::new("sh")
            .args(["-c", "sleep 60; :", &id[..12]])
            .spawn()
            .unwrap();
        let meta = Meta {
            id: id.clone(),
            name: "follower".into(),
            image: "busybox".into(),
            created: 1,
            qemu_pid: Some(vm.id()),
            ..Default::default()
        };
        state.save(&meta).unwrap();
        let dir = state.vm_dir(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut seq = 0;
        let mut records = |lines: std::ops::RangeInclusive<u32>| -> Vec<u8> {
            let mut out = Vec::new();
            for n in lines {
                out.extend(
                    iolog::encode(&iolog::Record {
                        session: id.clone(),
                        stream: Stream::Stdout,
                        seq,
                        time_ns: 1_000 + seq,
                        body: iolog::Body::Data(format!("{n}\n").into_bytes()),
                    })
                    .unwrap(),
                );
                seq += 1;
            }
            out
        };
        // A past long enough that the reader is still in it when the new lines come.
        let mut log = std::fs::File::create(dir.join("output.log")).unwrap();
        log.write_all(&records(1..=200_000)).unwrap();
        let engine = Engine::new(state.clone(), PathBuf::from("vch"));
        let opts = LogOptions {
            follow: true,
            tail: Some(0),
            ..Default::default()
        };
        let (_, mut rx) = engine.logs("follower", opts).unwrap();
        log.write_all(&records(1..=3000)).unwrap();
        let mut got = Vec::new();
        while got.len() < 3000 {
            match rx.blocking_recv() {
                Some(LogItem::Line(l)) => got.push(String::from_utf8(l.bytes).unwrap()),
                other => panic!("after {} lines: {other:?}", got.len()),
            }
        }
        let want: Vec<String> = (1..=3000).map(|n| format!("{n}\n")).collect();
        assert_eq!(got, want);
        // The VM stops: the stream ends, with nothing more and nothing skipped.
        vm.kill().unwrap();
        vm.wait().unwrap();
        assert_eq!(
            rx.blocking_recv(),
            Some(LogItem::End {
                damaged: 0,
                lost: 0
            })
        );
    }
}
